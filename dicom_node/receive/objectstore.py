"""Received instances and result objects in an S3 bucket, or in folders.

In a cluster the receiver that accepted an instance, the worker that reads it, the host that
stores its results and the dispatcher that sends them are different machines: they share
the bytes through S3-compatible object storage (``storage.backend = "s3"``) or through one
shared POSIX path (``"local"`` with ``spool_dir`` and ``results_dir`` on a shared mount).

A stored object is named by a *location*, the text the index keeps in ``Instance.path``,
``Result.objects`` and ``Delivery.path``: a file path, or ``s3://<bucket>/<key>``. Every
reader goes through :class:`Storage`, which opens either.

The receiver's guarantee is unchanged: an SCU that gets Success may delete its copy, so
:class:`ObjectSpool` answers only after the PUT returned (S3 acknowledges a PUT once the
object is durable) and the index row is committed.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.dataset import FileDataset

from dicom_node.config import S3Settings, Settings
from dicom_node.receive.spool import Spool, SpoolFullError, SpoolResult, write_atomic

log = logging.getLogger(__name__)

SCHEME = "s3://"
# How much of an object a header read fetches first (see Storage.read_dataset).
HEADER_BYTES = 256 * 1024
# (7FE0,0010) Pixel Data, little endian: the header ends before it.
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"
# Below this size a received file is sent in one PUT; above it, in parts (boto3's transfer).
_SINGLE_PUT_LIMIT = 64 * 1024 * 1024


class ObjectStoreError(OSError):
    """The object store cannot be reached or refused a request."""


def is_object_location(location: str) -> bool:
    """True for ``s3://bucket/key``, False for a file path."""
    return location.startswith(SCHEME)


def split_location(location: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``.

    Raises
    ------
    ValueError
        Not an object location, or one without a key.
    """
    if not is_object_location(location):
        raise ValueError(f"not an object location: {location!r}")
    bucket, _, key = location[len(SCHEME) :].partition("/")
    if not bucket or not key:
        raise ValueError(f"object location without bucket or key: {location!r}")
    return bucket, key


class ObjectStore:
    """One bucket of an S3-compatible store, through boto3 (thread-safe client).

    Parameters
    ----------
    settings
        ``[storage.s3]``: endpoint, bucket, credentials, key prefix, timeout.
    """

    def __init__(self, settings: S3Settings) -> None:
        import boto3
        from botocore.config import Config

        self.settings = settings
        self.bucket = settings.bucket
        self.prefix = settings.prefix
        credentials: dict[str, Any] = {}
        if settings.access_key_id:
            credentials = {
                "aws_access_key_id": settings.access_key_id,
                "aws_secret_access_key": settings.secret_access_key,
            }
        self.client = boto3.client(
            "s3",
            endpoint_url=settings.endpoint_url or None,
            region_name=settings.region,
            config=Config(
                connect_timeout=settings.timeout,
                read_timeout=settings.timeout,
                # A C-STORE waits for the PUT: a few quick retries, then 0xA700 and the
                # sender's own retry, rather than a scanner stalled for minutes.
                retries={"max_attempts": 3, "mode": "standard"},
                s3={"addressing_style": "path"},
                max_pool_connections=32,
            ),
            **credentials,
        )

    def location(self, key: str) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}{key}"

    def _key(self, location: str) -> str:
        bucket, key = split_location(location)
        if bucket != self.bucket:
            raise ObjectStoreError(f"object {location} is not in bucket {self.bucket}")
        return key

    def ensure_bucket(self) -> None:
        """Create the bucket when it is missing (``[storage.s3] create_bucket``).

        Raises
        ------
        ObjectStoreError
            The store cannot be reached, or the bucket is missing and may not be created.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code not in ("404", "NoSuchBucket", "NotFound") or not self.settings.create_bucket:
                raise ObjectStoreError(f"bucket {self.bucket}: {code or exc}") from exc
        except BotoCoreError as exc:
            raise ObjectStoreError(f"object store unreachable: {exc}") from exc
        try:
            self.client.create_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise ObjectStoreError(f"cannot create bucket {self.bucket}: {code}") from exc
        except BotoCoreError as exc:
            raise ObjectStoreError(f"object store unreachable: {exc}") from exc

    def exists(self, location: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(location))
            return True
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                return False
            raise ObjectStoreError(f"{location}: {code}") from exc
        except BotoCoreError as exc:
            raise ObjectStoreError(f"object store unreachable: {exc}") from exc

    def put_file(self, key: str, path: Path) -> str:
        """Store a file under ``<prefix><key>``; returns its location once it is durable."""
        from botocore.exceptions import BotoCoreError, ClientError

        full = self.prefix + key
        try:
            if path.stat().st_size <= _SINGLE_PUT_LIMIT:
                with open(path, "rb") as body:
                    self.client.put_object(Bucket=self.bucket, Key=full, Body=body)
            else:
                self.client.upload_file(str(path), self.bucket, full)
        except (ClientError, BotoCoreError) as exc:
            raise ObjectStoreError(f"cannot store {full}: {exc}") from exc
        return self.location(key)

    def put_bytes(self, key: str, data: bytes) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        full = self.prefix + key
        try:
            self.client.put_object(Bucket=self.bucket, Key=full, Body=data)
        except (ClientError, BotoCoreError) as exc:
            raise ObjectStoreError(f"cannot store {full}: {exc}") from exc
        return self.location(key)

    def get_bytes(self, location: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(location))
            return bytes(response["Body"].read())
        except (ClientError, BotoCoreError) as exc:
            raise ObjectStoreError(f"cannot read {location}: {exc}") from exc

    def get_range(self, location: str, length: int) -> bytes:
        """The first ``length`` bytes of an object (all of it when it is shorter)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.get_object(
                Bucket=self.bucket, Key=self._key(location), Range=f"bytes=0-{length - 1}"
            )
            return bytes(response["Body"].read())
        except (ClientError, BotoCoreError) as exc:
            raise ObjectStoreError(f"cannot read {location}: {exc}") from exc

    def download(self, location: str, path: Path) -> None:
        """Stream an object into a file (one GET; no transfer manager threads)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(location))
            with open(path, "wb") as fh:
                shutil.copyfileobj(response["Body"], fh, 1024 * 1024)
        except (ClientError, BotoCoreError) as exc:
            raise ObjectStoreError(f"cannot read {location}: {exc}") from exc

    def delete(self, location: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(location))
        except (ClientError, BotoCoreError) as exc:
            raise ObjectStoreError(f"cannot delete {location}: {exc}") from exc


@dataclass(frozen=True)
class Storage:
    """Reads any location and writes result objects where the settings say.

    ``objects`` is None with ``backend = "local"``: then every location is a file and
    results go under ``results_dir`` as before.
    """

    results_dir: Path
    objects: ObjectStore | None = None

    def read_bytes(self, location: str) -> bytes:
        if is_object_location(location):
            return self._store(location).get_bytes(location)
        return Path(location).read_bytes()

    def exists(self, location: str) -> bool:
        if is_object_location(location):
            return self._store(location).exists(location)
        return Path(location).is_file()

    def read_dataset(self, location: str, **kwargs: Any) -> FileDataset:
        """``pydicom.dcmread`` of a file or an object (kwargs go to dcmread).

        With ``stop_before_pixels`` an object's header is read from its first
        ``HEADER_BYTES`` (routing needs a few tags, not megabytes of pixels) when that much
        reaches the Pixel Data element; otherwise, or when that prefix does not parse, the
        whole object is read.
        """
        source: str | BinaryIO = location
        if is_object_location(location):
            if kwargs.get("stop_before_pixels"):
                head = self._store(location).get_range(location, HEADER_BYTES)
                if len(head) < HEADER_BYTES or _PIXEL_DATA_TAG in head:
                    try:
                        return dcmread(io.BytesIO(head), **kwargs)
                    except Exception:  # a header longer than the prefix: read it all
                        pass
            source = io.BytesIO(self.read_bytes(location))
        return dcmread(source, **kwargs)

    def write_result(self, relative: str, data: bytes) -> str:
        """Store a result object (SR, SC, PDF, heatmap) under ``results/<relative>``.

        Returns its location: a file under ``results_dir``, or an object in the bucket.
        """
        if self.objects is not None:
            return self.objects.put_bytes(f"results/{relative}", data)
        path = self.results_dir / relative
        write_atomic(path, data)
        return str(path)

    @contextmanager
    def local_files(
        self, locations: Sequence[str], folder: Path
    ) -> Iterator[dict[str, Path | ObjectStoreError]]:
        """Files for the given locations, for a sender that reads files (C-STORE SCU).

        A file location maps to itself; an object is downloaded into ``folder`` for the
        duration of the block, or maps to the error that kept it from being read.
        """
        found: dict[str, Path | ObjectStoreError] = {}
        made: list[Path] = []
        try:
            for location in dict.fromkeys(locations):
                if not is_object_location(location):
                    found[location] = Path(location)
                    continue
                folder.mkdir(parents=True, exist_ok=True)
                fd, name = tempfile.mkstemp(prefix="send-", suffix=".dcm", dir=folder)
                os.close(fd)
                target = Path(name)
                made.append(target)
                try:
                    self._store(location).download(location, target)
                    found[location] = target
                except ObjectStoreError as exc:
                    found[location] = exc
            yield found
        finally:
            for target in made:
                target.unlink(missing_ok=True)

    def _store(self, location: str) -> ObjectStore:
        if self.objects is None:
            raise ObjectStoreError(
                f"{location} is in an object store, but storage.backend is 'local'"
            )
        return self.objects


_storages: dict[tuple[Any, ...], Storage] = {}
_storages_lock = threading.Lock()


def storage_for(settings: Settings) -> Storage:
    """The process's :class:`Storage` for these settings (one boto3 client per process)."""
    s3 = settings.storage.s3 if settings.storage.backend == "s3" else None
    key = (settings.results_dir, s3)
    with _storages_lock:
        storage = _storages.get(key)
        if storage is None:
            objects = ObjectStore(s3) if s3 is not None else None
            storage = _storages[key] = Storage(settings.results_dir, objects)
        return storage


def reader_for(location: str) -> Storage:
    """A :class:`Storage` that reads ``location``: a file, or an object in a bucket this
    process was configured with (by :func:`storage_for`, which every role calls at start).

    For readers that get locations from the database but no settings (the admin page).

    Raises
    ------
    ObjectStoreError
        An object in a bucket this process does not know.
    """
    if not is_object_location(location):
        return Storage(Path("."))
    bucket = split_location(location)[0]
    with _storages_lock:
        for storage in _storages.values():
            if storage.objects is not None and storage.objects.bucket == bucket:
                return storage
    raise ObjectStoreError(f"{location}: bucket {bucket} is not configured here")


class ObjectSpool(Spool):
    """The spool of ``storage.backend = "s3"``: each received instance becomes the object
    ``<prefix>spool/<StudyUID>/<SeriesUID>/<SOPUID>.dcm``.

    The association streams the instance into a local incoming file as before
    (``<spool_dir>/.incoming``); :meth:`commit` stores it and returns once the store has
    acknowledged it, so the C-STORE handler answers Success only for a durable object. A
    SOP Instance UID already stored keeps its first copy, as on disk.
    """

    def __init__(self, root: Path, objects: ObjectStore, incoming: Path | None = None) -> None:
        super().__init__(root, incoming)
        self.objects = objects

    def key_for(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        # path_for validates the UIDs: a dataset cannot choose its key either.
        relative = self.path_for(study_uid, series_uid, sop_uid).relative_to(self.root)
        return f"spool/{relative.as_posix()}"

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
        """Store ``temp_file`` as an object; durable when this returns.

        Raises
        ------
        SpoolFullError
            The store cannot be reached or refused the object (the handler answers 0xA700,
            out of resources, and the sender retries).
        """
        key = self.key_for(study_uid, series_uid, sop_uid)
        location = self.objects.location(key)
        try:
            size = temp_file.stat().st_size
            if self.objects.exists(location):
                return SpoolResult(temp_file, size, created=False, location=location)
            self.objects.put_file(key, temp_file)
        except OSError as exc:  # ObjectStoreError is one
            raise SpoolFullError(exc.errno, f"object store write failed: {exc}") from exc
        return SpoolResult(temp_file, size, created=True, location=location)

    def make_durable(self, result: SpoolResult) -> None:
        """Nothing left to do: the store acknowledged the PUT."""

    def write_bytes(
        self, data: bytes, study_uid: str, series_uid: str, sop_uid: str
    ) -> SpoolResult:
        key = self.key_for(study_uid, series_uid, sop_uid)
        try:
            location = self.objects.put_bytes(key, data)
        except OSError as exc:
            raise SpoolFullError(exc.errno, f"object store write failed: {exc}") from exc
        return SpoolResult(self.tmp / f"{sop_uid}.dcm", len(data), created=True, location=location)

    def iter_files(self) -> list[Path]:
        """No spool files on disk: an object whose index commit did not happen is found
        from its incoming file instead (``receive.reconcile.reconcile_incoming``)."""
        return []


def incoming_folder(settings: Settings) -> Path | None:
    """A cluster receiver's own incoming folder, ``<spool>/.incoming/<host>-<data folder>``.

    Receivers of a cluster may share one spool folder (a shared POSIX path); each removes
    the partial files of its own crashed receives at start-up, never another's files in
    flight. Stable across restarts of the same receiver (host and data folder), on the
    spool's file system (the final step stays a hard link). None: the embedded default.
    """
    if not settings.clustered:
        return None
    digest = hashlib.sha1(str(settings.data_dir).encode(), usedforsecurity=False).hexdigest()
    return settings.spool_dir / ".incoming" / f"{socket.gethostname()}-{digest[:10]}"


def spool_for(settings: Settings) -> Spool:
    """The receiver's spool: folders, or the bucket of ``[storage.s3]``."""
    storage = storage_for(settings)
    incoming = incoming_folder(settings)
    if storage.objects is None:
        return Spool(settings.spool_dir, incoming)
    return ObjectSpool(settings.spool_dir, storage.objects, incoming)
