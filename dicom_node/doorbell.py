"""A wake-up signal that crosses processes: a routed series wakes a worker, queued results
wake the delivery, without waiting for a poll interval.

A ``multiprocessing.Event`` would do it, but setting one takes a lock shared with every
process that waits on it: a worker killed by a signal (out of memory) while it held that lock
would block the completion loop, which rings after every routed series, forever. A pipe has
no lock (the self-pipe trick): ringing writes one byte without blocking, waiting is a
``select`` on the other end with a timeout. A full pipe means the bell has rung already, so a
burst of rings costs nothing and none is lost.

The waiters still poll with that timeout: the bell makes the hot path fast, the poll keeps
everything that does not ring (a retry whose backoff ends, a job requeued at start-up, a
second node on the same database) working.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from multiprocessing import reduction
from typing import Any


def _rebuild(read_fd: Any, write_fd: Any) -> Doorbell:
    """Unpickle in a spawned process: the descriptors were passed to it at spawn time."""
    return Doorbell(_fds=(read_fd.detach(), write_fd.detach()))


class Doorbell:
    """Ring from any thread or process; ``wait`` in one or several others.

    Every waiter that is waiting when the bell rings wakes up (like ``Event.set``); one of
    them drains the pipe, so callers must look for work themselves after waking (a claim in
    the database), never assume there is some.

    A Doorbell passed as an argument to a process started with the ``spawn`` method arrives
    there working (its descriptors are duplicated into the child).
    """

    def __init__(self, *, _fds: tuple[int, int] | None = None) -> None:
        if _fds is None:
            read_fd, write_fd = os.pipe()
            os.set_blocking(read_fd, False)
            os.set_blocking(write_fd, False)
        else:
            read_fd, write_fd = _fds
        self._read_fd = read_fd
        self._write_fd = write_fd
        self._closed = False
        # Only against close() in this process: after a close the descriptor numbers may
        # name another file, which a late ring or drain must never touch.
        self._lock = threading.Lock()

    def ring(self) -> None:
        """Wake the waiters; never blocks and never raises."""
        with self._lock, contextlib.suppress(OSError):  # OSError: full, i.e. already rung
            if not self._closed:
                os.write(self._write_fd, b"\0")

    def wait(self, timeout: float) -> bool:
        """Wait until the bell rings or ``timeout`` seconds pass; True if it rang.

        Rings before the call count: a ring between looking for work and waiting is not lost.
        """
        if self._closed:
            return False
        try:
            ready, _, _ = select.select([self._read_fd], [], [], max(timeout, 0.0))
        except (OSError, ValueError):  # closed meanwhile: behave like an idle poll
            return False
        if ready:
            self._drain()
        return bool(ready)

    def _drain(self) -> None:
        # OSError: empty (BlockingIOError: another waiter drained it first).
        with self._lock, contextlib.suppress(OSError):
            while not self._closed and os.read(self._read_fd, 4096):
                pass

    def close(self) -> None:
        """Close both ends in this process (other processes keep their copies)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for fd in (self._read_fd, self._write_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def __reduce__(self) -> tuple[Any, tuple[Any, Any]]:
        # Only valid while spawning a process (DupFd registers the descriptors with it),
        # which is the one way a Doorbell travels.
        return _rebuild, (reduction.DupFd(self._read_fd), reduction.DupFd(self._write_fd))
