"""One node per data folder: an exclusive lock on ``<data_dir>/node.lock``.

Two nodes on one folder would destroy each other's state: at start-up a node removes the
partial files in ``spool/.incoming`` (another node is still writing them, and its senders
get no Success) and requeues the jobs marked running (another node's workers are running
them). So ``serve`` takes this lock before it touches anything and holds it until it stops.

The lock is ``flock(2)`` on an open file, not the file's existence: the kernel drops it
when the process dies, however it dies, so a SIGKILLed node never leaves a stale lock
behind and nobody has to delete a file by hand. The file itself stays; it only tells the
operator who holds the lock (pid, host, start time). The descriptor is close-on-exec and
not inheritable, so the worker processes (spawned, not forked) never hold the lock and an
orphaned one cannot keep the folder locked after the node died.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
import socket
from pathlib import Path

from dicom_node.config import StartupError, env_var

LOCK_NAME = "node.lock"


class DataFolderLock:
    """The exclusive lock of a node on its data folder; :meth:`acquire` then :meth:`release`.

    Parameters
    ----------
    folder
        The node's data folder (``node.data_dir``); created if missing.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """True between a successful :meth:`acquire` and :meth:`release`."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock without waiting and write who holds it into the lock file.

        Raises
        ------
        StartupError
            Another process holds the lock (the message names the folder and that process),
            or the lock file cannot be opened or locked. Nothing in the folder was changed.
        """
        if self._fd is not None:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            # O_CLOEXEC: a process started from this one (exec) never holds the lock.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StartupError(
                f"cannot open the lock file {self.path}: {exc.strerror or exc}"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _describe(_read(fd))
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StartupError(
                    f"data folder {self.folder} is in use by another node ({holder}); stop "
                    f"it first, or give this one another node.data_dir "
                    f"({env_var('node.data_dir')})"
                ) from None
            raise StartupError(
                f"cannot lock the data folder {self.folder} ({self.path}): {exc.strerror or exc}"
            ) from exc
        holder_text = json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
        )
        os.ftruncate(fd, 0)
        os.pwrite(fd, (holder_text + "\n").encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let another node use the folder; does nothing when the lock is not held.

        The file is emptied but not removed: removing it would let a node that opened the
        old file and one that creates a new file both believe they hold the lock.
        """
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the last descriptor drops the flock


def _read(fd: int) -> dict[str, object]:
    """What the holder wrote into the lock file; empty when unreadable or not written yet."""
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(holder: dict[str, object]) -> str:
    """``pid 1234 on host, started 2024-05-01T08:00:00+00:00``, or what is known of it."""
    if "pid" not in holder:
        return "a process that has not written its pid yet"
    text = f"pid {holder['pid']}"
    if holder.get("host"):
        text += f" on {holder['host']}"
    if holder.get("started"):
        text += f", started {holder['started']}"
    return text
