"""Durable storage of received instances.

An SCU that gets a Success status may delete its copy, so a file must be on stable storage
before we answer: write to a temporary name, fsync, link to the final name, fsync the folder.
Paths are built only from UIDs that passed ``valid_uid``, so a dataset cannot choose where it
is written (``../`` in a UID never reaches the file system).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

# PS3.5 9.1: UIDs are digits and dots, at most 64 characters; components must not have
# leading zeros, but real devices get that wrong and the path stays safe either way, so we
# accept them rather than lose the study.
_UID_RE = re.compile(r"^[0-9](?:[0-9.]{0,62}[0-9])?$")


def valid_uid(value: object) -> bool:
    """True for a syntactically valid UID that is safe to use as a path component."""
    return isinstance(value, str) and bool(_UID_RE.match(value)) and ".." not in value


class SpoolFullError(OSError):
    """The spool has no space left (or an I/O error): answer 0xA700, keep nothing partial."""


@dataclass(frozen=True)
class SpoolResult:
    path: Path  # the file on this host (the spool file, or the uploaded incoming file)
    size: int
    created: bool  # False when an identical SOP Instance UID was already stored
    # What the index records: the spool file's path, or s3://bucket/key (ObjectSpool).
    location: str = ""

    def __post_init__(self) -> None:
        if not self.location:
            object.__setattr__(self, "location", str(self.path))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """``<root>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``."""

    def __init__(self, root: Path, incoming: Path | None = None) -> None:
        """``incoming`` is where associations stream their files (default
        ``<root>/.incoming``); receivers that share one spool folder each need their own,
        since a receiver's start-up removes what it finds there."""
        self.root = root
        self.tmp = incoming if incoming is not None else root / ".incoming"
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._known_dirs: set[Path] = set()

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        for uid in (study_uid, series_uid, sop_uid):
            if not valid_uid(uid):
                raise ValueError(f"invalid UID {uid!r}")
        # One join and one Path (three ``/`` would parse the path three times, per instance).
        return Path(os.path.join(self.root, study_uid, series_uid, sop_uid + ".dcm"))

    def _ensure_dir(self, folder: Path) -> None:
        if folder in self._known_dirs:
            return
        created = []
        for parent in (folder.parent, folder):
            if not parent.exists():
                parent.mkdir(exist_ok=True)
                created.append(parent)
        # A new directory entry is only durable once its parent folder is fsynced.
        for made in created:
            _fsync_dir(made.parent)
        self._known_dirs.add(folder)

    def commit(
        self,
        temp_file: Path,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        *,
        synced: bool = False,
        sync_folder: bool = True,
    ) -> SpoolResult:
        """Make ``temp_file`` durable under its final name.

        ``temp_file`` should live in ``self.tmp`` (same file system) so the final step is a
        hard link, which is atomic and refuses to replace an existing file: a duplicate SOP
        Instance UID keeps the first copy.

        With ``sync_folder=False`` the new name is not yet durable: the caller must call
        ``sync_folder(result.path.parent)`` before it answers Success. The receive path
        does so in another thread while it writes the index rows, so the folder's fsync
        (a full disk barrier, ~4 ms whatever the file size) overlaps with useful work.

        Raises
        ------
        SpoolFullError
            No space or an I/O error; no partial file is left under the final name.
        """
        final = self.path_for(study_uid, series_uid, sop_uid)
        try:
            if synced:  # the writer already flushed and fsynced its file
                size = temp_file.stat().st_size
            else:
                fd = os.open(temp_file, os.O_RDONLY)
                try:
                    os.fsync(fd)
                    size = os.fstat(fd).st_size
                finally:
                    os.close(fd)
            self._ensure_dir(final.parent)
            try:
                os.link(temp_file, final)
            except FileExistsError:
                return SpoolResult(final, final.stat().st_size, created=False)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                # Temporary file on another file system: copy, fsync, then link atomically.
                staged = self.tmp / f"{sop_uid}.staged"
                shutil.copyfile(temp_file, staged)
                self._fsync_file(staged)
                try:
                    os.link(staged, final)
                except FileExistsError:
                    return SpoolResult(final, final.stat().st_size, created=False)
                finally:
                    staged.unlink(missing_ok=True)
            if sync_folder:
                _fsync_dir(final.parent)
        except SpoolFullError:
            raise
        except OSError as exc:
            raise SpoolFullError(exc.errno, f"spool write failed: {exc.strerror}") from exc
        return SpoolResult(final, size, created=True)

    @staticmethod
    def sync_folder(folder: Path) -> None:
        """Make the names in ``folder`` durable (after ``commit(..., sync_folder=False)``).

        Raises
        ------
        SpoolFullError
            The fsync failed (an I/O error): the new name may not survive a crash.
        """
        try:
            _fsync_dir(folder)
        except OSError as exc:
            raise SpoolFullError(exc.errno, f"spool folder sync failed: {exc.strerror}") from exc

    def make_durable(self, result: SpoolResult) -> None:
        """Make a stored name durable (after ``commit(..., sync_folder=False)``).

        Raises
        ------
        SpoolFullError
            The fsync failed.
        """
        self.sync_folder(result.path.parent)

    @staticmethod
    def _fsync_file(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def write_bytes(
        self, data: bytes, study_uid: str, series_uid: str, sop_uid: str
    ) -> SpoolResult:
        """Store an in-memory encoded file (used for objects we build ourselves)."""
        temp = self.tmp / f"{sop_uid}.{os.getpid()}.part"
        try:
            with open(temp, "wb") as fh:
                fh.write(data)
            return self.commit(temp, study_uid, series_uid, sop_uid)
        except OSError as exc:
            if isinstance(exc, SpoolFullError):
                raise
            raise SpoolFullError(exc.errno, f"spool write failed: {exc.strerror}") from exc
        finally:
            temp.unlink(missing_ok=True)

    def clean_incoming(self) -> int:
        """Remove temporary files left by a crash (their senders never got Success)."""
        count = 0
        for leftover in self.tmp.iterdir():
            leftover.unlink(missing_ok=True)
            count += 1
        return count

    def iter_files(self) -> list[Path]:
        return [p for p in self.root.glob("*/*/*.dcm") if p.is_file()]


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file so that readers see either nothing or all of it (results, heatmaps)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.part")
    with open(temp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(temp, path)
    _fsync_dir(path.parent)
