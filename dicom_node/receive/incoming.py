"""The file an incoming dataset is streamed into while it arrives.

pynetdicom (``STORE_RECV_CHUNKED_DATASET``) writes each C-STORE dataset to a file object
instead of RAM, so memory stays flat for 500 MB instances. The receiver's file lives in the
spool's own temporary folder, so the final step is a same-disk hard link. Which folder is
decided per association (``pynetdicom_ext``), never by a process-wide setting.
"""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

from dicom_node.receive.spool import SpoolFullError

# Names of incoming temporary files: "<pid>-<n>.part" in the spool's temporary folder.
_incoming_names = itertools.count()


class IncomingFile:
    """Where pynetdicom streams a dataset while it arrives (``STORE_RECV_CHUNKED_DATASET``).

    A write error (disk full, I/O error) is remembered instead of raised: raised inside
    pynetdicom's reactor thread it would kill the association without a status, whereas
    remembered, the handler answers 0xA700 and the sender knows to retry later. Flushing
    happens once, in ``finish``, instead of after every PDU.
    """

    def __init__(self, folder: Path, **_ignored: Any) -> None:
        # pynetdicom passes NamedTemporaryFile's arguments (delete, mode, suffix): ours
        # are fixed, so they are ignored. A name from a counter (not NamedTemporaryFile's
        # random one) costs less per instance; O_EXCL still refuses to reuse a name.
        self.error: OSError | None = None
        for _attempt in range(100):
            self.name: str = str(folder / f"{os.getpid()}-{next(_incoming_names)}.part")
            try:
                fd = os.open(self.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue
            except OSError as exc:
                self.error = exc
                break
            self._fh: Any = open(fd, "wb")  # noqa: SIM115 - closed by pynetdicom
            break
        else:  # pragma: no cover - 100 leftovers with our pid and counter
            self.error = FileExistsError(errno.EEXIST, "no free temporary name")
        if self.error is not None:
            # Swallow the bytes; the handler answers 0xA700. ``name`` stays a path we did
            # not create, so pynetdicom's unlink of it afterwards removes nothing.
            self._fh = open(os.devnull, "wb")  # noqa: SIM115
        self.file = self  # pynetdicom calls ``.file.flush()`` after each fragment
        self.synced: futures.Future[Any] | None = None  # the fsync, once started

    def write(self, data: bytes) -> int:
        if self.error is None:
            try:
                return int(self._fh.write(data))
            except OSError as exc:
                self.error = exc
        return len(data)

    def flush(self) -> None:
        """Per-fragment flush: deferred to ``finish``."""

    def finish(self) -> None:
        """Hand the buffered bytes to the OS, so that a reader of ``name`` sees them all.

        Runs in the handler's thread before the header is parsed; ``fsync`` may then run in
        another thread while the parse reads the file.
        """
        if self.error is not None:
            raise SpoolFullError(self.error.errno, f"spool write failed: {self.error.strerror}")
        try:
            self._fh.flush()
        except OSError as exc:
            self.error = exc
            raise SpoolFullError(exc.errno, f"spool write failed: {exc.strerror}") from exc

    def start_sync(self, run: Callable[[Callable[[], None]], futures.Future[Any]]) -> None:
        """As soon as the last fragment is written: flush, and start the fsync in ``run``.

        Called in pynetdicom's DUL thread, before the association thread even wakes for
        the request, so the disk barrier overlaps that hand-over too. Never raises: a
        write error stays remembered and ``finish`` reports it to the handler.
        """
        try:
            self.finish()
        except SpoolFullError:
            return
        self.synced = run(self.fsync)

    def fsync(self) -> None:
        """After ``finish``: wait until the bytes survive a crash or power loss."""
        try:
            os.fsync(self._fh.fileno())
        except OSError as exc:
            self.error = exc
            raise SpoolFullError(exc.errno, f"spool write failed: {exc.strerror}") from exc

    def close(self) -> None:
        try:
            self._fh.close()
        except OSError as exc:
            self.error = self.error or exc
