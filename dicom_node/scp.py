"""The node's DICOM service: C-ECHO and C-STORE into the spool and the index.

The C-STORE handler does two things only: make the instance durable and answer. Everything
slow (completion, routing, models, delivery) happens elsewhere, so a busy model never stalls a
scanner. The handler never raises: pynetdicom would turn an exception into 0xC211 without a
reason in our log, so every failure is mapped to a status here and logged with UIDs only (no
patient data in log lines).
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import threading
import weakref
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pydicom.uid import (
    JPEGLossless as JPEGLosslessP14,
)
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
from pynetdicom import dimse_messages as _dimse_messages
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.sop_class import _STORAGE_CLASSES, Verification  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import scp_encoding
from dicom_node.config import Settings
from dicom_node.header import Header, read_header, tag_text
from dicom_node.index import IndexCache, InstanceMeta, index_instance
from dicom_node.scp_reactors import accept_with_events
from dicom_node.spool import Spool, SpoolFullError, valid_uid

log = logging.getLogger(__name__)

# Transfer syntaxes we accept: uncompressed, deflated and every compressed syntax that our
# decoder plugins (pylibjpeg, openjpeg, pyjpegls, RLE) can read, so a model can use them.
TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessP14,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    RLELossless,
)
assert set(TRANSFER_SYNTAXES) <= set(ALL_TRANSFER_SYNTAXES) | {
    HTJ2K,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
}

# C-STORE statuses (PS3.4 Annex B.2.3 and PS3.7 C.4.2.1.4).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
CANNOT_PARSE = 0xC210  # the dataset could not be decoded (truncated, not DICOM)
INVALID_UID = 0xC220  # a required UID is missing or not a valid UID
UID_MISMATCH = 0xC221  # command and dataset disagree on the SOP Instance UID
INTERNAL_ERROR = 0xC2FF

# Only these header attributes are read at receive time; pixel data stays on disk.
_DEFER = 64 * 1024


def storage_sop_classes() -> list[str]:
    """Every storage SOP class pynetdicom knows (the standard's list, incl. retired ones)."""
    return sorted({str(uid) for uid in _STORAGE_CLASSES.values()})


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


class StoreRejectedError(Exception):
    """Carries the status and the reason for a refused C-STORE."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _check_not_truncated(ds: Dataset, size: int) -> None:
    """Refuse a file whose last element claims more bytes than were received.

    pydicom reads a truncated value without complaint (it just returns fewer bytes), and a
    model would later fail on it; the sender can still fix it now.
    """
    for raw in ds._dict.values():
        if not isinstance(raw, RawDataElement) or raw.length in (0, 0xFFFFFFFF):
            continue
        if raw.value is None:
            if raw.value_tell + raw.length > size:
                raise StoreRejectedError(
                    CANNOT_PARSE,
                    f"element {raw.tag} is truncated: needs {raw.length} bytes, "
                    f"{max(size - raw.value_tell, 0)} received",
                )
        elif len(raw.value) < raw.length:
            raise StoreRejectedError(
                CANNOT_PARSE,
                f"element {raw.tag} is truncated: needs {raw.length} bytes, "
                f"{len(raw.value)} received",
            )


# InstanceMeta's text fields and the header attributes they come from.
_META_FIELDS = (
    ("study_uid", "StudyInstanceUID"),
    ("series_uid", "SeriesInstanceUID"),
    ("sop_instance_uid", "SOPInstanceUID"),
    ("sop_class_uid", "SOPClassUID"),
    ("patient_id", "PatientID"),
    ("patient_name", "PatientName"),
    ("accession_number", "AccessionNumber"),
    ("study_date", "StudyDate"),
    ("study_description", "StudyDescription"),
    ("modality", "Modality"),
    ("body_part", "BodyPartExamined"),
    ("series_description", "SeriesDescription"),
    ("series_number", "SeriesNumber"),
)
# Every header attribute the index keeps (what the fast header read collects).
_META_KEYWORDS = (*(keyword for _field, keyword in _META_FIELDS), "InstanceNumber")


def _meta(text: Callable[[str], str], transfer_syntax_uid: str, ds: Dataset) -> InstanceMeta:
    """The header values the index keeps, ``text`` giving each as text."""
    return InstanceMeta(
        **{field: text(keyword) for field, keyword in _META_FIELDS},
        transfer_syntax_uid=transfer_syntax_uid,
        instance_number=_int_or_none(ds.get("InstanceNumber")),
    )


def meta_from_dataset(ds: Dataset) -> InstanceMeta:
    """The header values the index keeps, as text (multi-values joined like DICOM)."""
    return _meta(functools.partial(tag_text, ds), str(ds.file_meta.TransferSyntaxUID), ds)


def meta_from_header(header: Header) -> InstanceMeta:
    """``meta_from_dataset`` for the fast header read: simple ASCII values are decoded
    without pydicom (``Header.text``); the tests check both give the same for every file."""
    return _meta(header.text, header.transfer_syntax_uid, header.dataset)


def read_meta(path: Path, command_sop_class: str, command_sop_instance: str) -> InstanceMeta:
    """Read and check the header of a received file.

    The fast path (``header.read_header``: one structural pass, pydicom decodes only the
    values we keep) answers for well-formed files; anything it cannot vouch for (deflated,
    or any structural complaint) is read again by pydicom, whose verdict stands, so the
    fast path never refuses what pydicom would accept.

    Raises
    ------
    StoreRejectedError
        With the status to answer and the reason to log.
    """
    try:
        header = read_header(path, _META_KEYWORDS)
        if header is not None:
            meta = meta_from_header(header)
            return _check_meta(meta, command_sop_class, command_sop_instance)
    except Exception as exc:
        log.debug("fast header read of %s failed (%s); reading with pydicom", path.name, exc)
    return _check_meta(_read_meta_pydicom(path), command_sop_class, command_sop_instance)


def _read_meta_pydicom(path: Path) -> InstanceMeta:
    size = path.stat().st_size
    try:
        ds = dcmread(path, defer_size=_DEFER)
        # Touch the header attributes we need: decoding errors surface here, not later.
        meta = meta_from_dataset(ds)
    except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError, OSError) as exc:
        raise StoreRejectedError(CANNOT_PARSE, f"dataset cannot be parsed: {exc}") from exc
    except Exception as exc:  # pydicom raises many kinds of errors on corrupt data
        raise StoreRejectedError(CANNOT_PARSE, f"dataset cannot be parsed: {exc!r}") from exc
    if meta.transfer_syntax_uid != DeflatedExplicitVRLittleEndian:
        # Offsets in a deflated file refer to the inflated stream, not the file size.
        _check_not_truncated(ds, size)
    return meta


def _check_meta(
    meta: InstanceMeta, command_sop_class: str, command_sop_instance: str
) -> InstanceMeta:
    sop_uid, sop_class = meta.sop_instance_uid, meta.sop_class_uid
    for name, uid in (
        ("SOPClassUID", sop_class),
        ("SOPInstanceUID", sop_uid),
        ("StudyInstanceUID", meta.study_uid),
        ("SeriesInstanceUID", meta.series_uid),
    ):
        if not uid:
            raise StoreRejectedError(INVALID_UID, f"{name} is missing")
        if not valid_uid(uid):
            raise StoreRejectedError(INVALID_UID, f"{name} {uid[:80]!r} is not a valid UID")
    if sop_class != command_sop_class:
        raise StoreRejectedError(
            DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"dataset SOP Class {sop_class} differs from the request's {command_sop_class}",
        )
    if sop_uid != command_sop_instance:
        raise StoreRejectedError(
            UID_MISMATCH,
            f"dataset SOP Instance UID {sop_uid} differs from the request's "
            f"{command_sop_instance[:80]!r}",
        )
    return meta


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


@dataclass
class ReceiveStats:
    """Counters for /metrics; updated under a lock from the association threads."""

    instances: int = 0
    bytes: int = 0
    duplicates: int = 0
    failures: int = 0
    associations: int = 0
    rejected_associations: int = 0

    def __post_init__(self) -> None:
        self.lock = threading.Lock()

    def add(self, **counts: int) -> None:
        with self.lock:
            for key, value in counts.items():
                setattr(self, key, getattr(self, key) + value)


class StoreSCP:
    """The node's Application Entity in the SCP role."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        spool: Spool,
        *,
        on_instance: Callable[[InstanceMeta], None] | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.spool = spool
        self.on_instance = on_instance
        self.stats = ReceiveStats()
        self._server: ThreadedAssociationServer | None = None
        # Study/series ids per association (a series usually arrives on one association);
        # weak keys, so an ended association's cache goes with it.
        self._caches: weakref.WeakKeyDictionary[Any, IndexCache] = weakref.WeakKeyDictionary()
        self._caches_lock = threading.Lock()
        # fsyncs run here, overlapped with the handler's CPU work (see _store); from start()
        # to stop(), inline otherwise.
        self._io: futures.ThreadPoolExecutor | None = None
        self.ae = self._build_ae()

    def _build_ae(self) -> AE:
        scp = self.settings.scp
        ae = AE(ae_title=self.settings.node.ae_title)
        ae.maximum_pdu_size = scp.max_pdu_size
        ae.network_timeout = scp.network_timeout
        ae.acse_timeout = 30
        ae.dimse_timeout = scp.network_timeout
        ae.maximum_associations = 32
        ae.require_called_aet = scp.require_called_ae
        if scp.allowed_calling_aes:
            ae.require_calling_aet = list(scp.allowed_calling_aes)
        ae.add_supported_context(Verification)
        for sop_class in storage_sop_classes():
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        return ae

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> ThreadedAssociationServer:
        # Stream each incoming dataset to a file in the spool's own folder instead of RAM:
        # memory stays flat for 500 MB instances and the final step is a same-disk link.
        self._io = futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="spool-sync")
        # We validate the UIDs that matter ourselves (valid_uid); pydicom's per-value
        # validation of every element read costs ~0.5 ms per instance and would only warn.
        pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
        _config.STORE_RECV_CHUNKED_DATASET = True
        _dimse_messages.NamedTemporaryFile = functools.partial(  # type: ignore[assignment]
            IncomingFile, self.spool.tmp
        )
        # The incoming file's File Meta, written with struct (scp_encoding, byte-identical).
        _dimse_messages.create_file_meta = scp_encoding.create_file_meta  # type: ignore[assignment]
        _dimse_messages.write_file_meta_info = scp_encoding.write_file_meta_info
        handlers = [
            (evt.EVT_C_ECHO, self._handle_echo),
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_ACCEPTED, self._handle_accepted),
            (evt.EVT_REJECTED, self._handle_rejected),
        ]
        server_class = _host_filtering_server(
            self.settings.scp.allowed_hosts, self.stats, self._message_arrived
        )
        server = self.ae.make_server(
            (self.settings.scp.host, self.settings.scp.port),
            evt_handlers=handlers,  # type: ignore[arg-type]
            server_class=server_class,
            request_handler=_RequestHandler,
        )
        thread = threading.Thread(target=server.serve_forever, name="scp-acceptor", daemon=True)
        thread.start()
        self.ae._servers.append(server)  # so AE.shutdown() also stops it
        self._server = server
        log.info(
            "SCP %s listening on %s:%d",
            self.settings.node.ae_title,
            self.settings.scp.host,
            self.bound_port,
        )
        return server

    @property
    def bound_port(self) -> int:
        if self._server is None:
            return self.settings.scp.port
        return int(self._server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._io is not None:
            self._io.shutdown(wait=True)
            self._io = None

    # -- handlers (never raise) -------------------------------------------------------
    def _handle_echo(self, event: Event) -> int:
        return SUCCESS

    def _handle_accepted(self, event: Event) -> None:
        self.stats.add(associations=1)
        req = event.assoc.requestor
        log.info("association accepted from %s@%s", req.ae_title, req.address)

    def _handle_rejected(self, event: Event) -> None:
        self.stats.add(rejected_associations=1)
        req = event.assoc.requestor
        log.warning(
            "association rejected: calling AE %r from %s, called AE %r",
            req.ae_title,
            req.address,
            event.assoc.acceptor.ae_title,
        )

    def _background(self, fn: Callable[..., Any], *args: Any) -> futures.Future[Any]:
        """Run ``fn`` in the I/O pool; inline when there is none (node stopping)."""
        pool = self._io
        if pool is not None:
            try:
                return pool.submit(fn, *args)
            except RuntimeError:  # shut down since the check
                pass
        done: futures.Future[Any] = futures.Future()
        try:
            done.set_result(fn(*args))
        except Exception as exc:
            done.set_exception(exc)
        return done

    def _message_arrived(self, item: Any) -> None:
        """In the DUL thread, as a request is complete: start its file's fsync there
        (``IncomingFile.start_sync``). Never raises: it runs inside pynetdicom's loop."""
        try:
            incoming = getattr(item[1], "_dataset_file", None)
            if isinstance(incoming, IncomingFile) and incoming.synced is None:
                incoming.start_sync(self._background)
        except Exception:  # the handler starts the fsync itself then
            log.exception("could not start an incoming file's fsync early")

    def _cache_for(self, assoc: Any) -> IndexCache:
        with self._caches_lock:
            cache = self._caches.get(assoc)
            if cache is None:
                cache = self._caches[assoc] = IndexCache()
            return cache

    def _handle_store(self, event: Event) -> int:
        request = event.request
        sop_uid = str(getattr(request, "AffectedSOPInstanceUID", "") or "")
        try:
            return self._store(event)
        except StoreRejectedError as exc:
            self.stats.add(failures=1)
            log.warning("C-STORE %s refused 0x%04X: %s", sop_uid[:64], exc.status, exc.reason)
            return exc.status
        except SpoolFullError as exc:
            self.stats.add(failures=1)
            log.error("C-STORE %s: out of resources: %s", sop_uid[:64], exc)
            return OUT_OF_RESOURCES
        except SQLAlchemyError as exc:
            # The file is durable but not indexed: answer a failure so the sender retries;
            # the retry (or start-up reconciliation) completes the index.
            self.stats.add(failures=1)
            log.error("C-STORE %s: database error: %s", sop_uid[:64], type(exc).__name__)
            return OUT_OF_RESOURCES
        except Exception:
            self.stats.add(failures=1)
            log.exception("C-STORE %s: unexpected error", sop_uid[:64])
            return INTERNAL_ERROR

    def _store(self, event: Event) -> int:
        request = event.request
        try:
            temp = Path(event.dataset_path)
        except AttributeError as exc:  # pragma: no cover - chunked mode is always on
            raise StoreRejectedError(CANNOT_UNDERSTAND, "no dataset in the request") from exc
        incoming = getattr(request, "_dataset_file", None)
        command_class = str(getattr(request, "AffectedSOPClassUID", "") or "")
        command_instance = str(getattr(request, "AffectedSOPInstanceUID", "") or "")
        # An fsync is a disk barrier (1-5 ms here, whatever the size) that releases the GIL:
        # run the file's fsync while this thread parses the header, and the folder's fsync
        # while it writes the index rows. Success still waits for both.
        if isinstance(incoming, IncomingFile):
            incoming.finish()  # raises SpoolFullError -> 0xA700 if any write failed
            file_synced = incoming.synced or self._background(incoming.fsync)
            synced = True
        else:  # pragma: no cover - another temp-file factory was installed
            file_synced = None
            synced = False
        try:
            meta = read_meta(temp, command_class, command_instance)
        finally:
            # Always wait: pynetdicom closes the file after we return.
            if file_synced is not None:
                futures.wait([file_synced])
        if file_synced is not None:
            file_synced.result()  # raises SpoolFullError -> 0xA700 if the fsync failed
        stored = self.spool.commit(
            temp,
            meta.study_uid,
            meta.series_uid,
            meta.sop_instance_uid,
            synced=synced,
            sync_folder=False,
        )
        folder_synced = self._background(self.spool.sync_folder, stored.path.parent)
        requestor = event.assoc.requestor
        try:
            outcome = index_instance(
                self.sessions,
                meta,
                stored.path,
                stored.size,
                calling_ae=str(requestor.ae_title).strip(),
                remote_address=str(requestor.address),
                late_rule=self.settings.completion.late_instances,
                cache=self._cache_for(event.assoc),
                before_commit=folder_synced.result,
            )
        finally:
            futures.wait([folder_synced])
        folder_synced.result()  # Success needs the name durable, whatever index_instance did
        if outcome.created:
            self.stats.add(instances=1, bytes=stored.size)
        else:
            self.stats.add(duplicates=1)
            log.info("C-STORE %s: duplicate, already stored", meta.sop_instance_uid)
        if self.on_instance is not None:
            self.on_instance(meta)
        return SUCCESS


# PDUs up to this length are read into one preallocated buffer (DCMTK sends 128 KiB).
_PREALLOCATE_MAX = 4 * 1024 * 1024


class _BulkRecvSocket(AssociationSocket):
    """pynetdicom's socket, reading each PDU with few large reads.

    pynetdicom's own ``recv`` reads 4 KiB at a time and appends to a growing bytearray:
    for a 0.5 MB CT image that is ~130 Python iterations and two extra copies, about 15 %
    of pynetdicom's CPU per instance. Here the PDU's length is known, so one buffer is
    allocated and filled in place. Same contract: returns fewer bytes only when the peer
    closed the connection.

    The length comes from the peer: a PDU longer than ``_PREALLOCATE_MAX`` is read by
    pynetdicom's loop, whose memory grows only with the bytes that actually arrive.
    """

    def recv(self, nr_bytes: int) -> bytearray:
        if nr_bytes > _PREALLOCATE_MAX:
            return super().recv(nr_bytes)
        sock = self.socket
        assert sock is not None
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        received = 0
        while received < nr_bytes:
            count = sock.recv_into(view[received:], nr_bytes - received)
            if not count:  # connection closed: return what arrived
                view.release()
                del buffer[received:]
                return buffer
            received += count
        view.release()
        return buffer


class _RequestHandler(RequestHandler):
    """pynetdicom's connection handler, with ``_BulkRecvSocket`` for the association."""

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        socket = assoc.dul.socket
        if type(socket) is AssociationSocket:  # not a subclass we do not know
            socket.__class__ = _BulkRecvSocket
        accept_with_events(assoc, getattr(self.server, "on_message", None))
        # pynetdicom's standard handlers only format debug lines for every PDU and message
        # (and an INFO line per C-STORE); our log has a line per association and failure.
        for event, handler in _STANDARD_LOG_HANDLERS:
            assoc.unbind(event, handler)
        scp_encoding.use_direct_responses(assoc.dimse)
        return assoc


_STANDARD_LOG_HANDLERS = (
    (evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
    (evt.EVT_PDU_RECV, standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, standard_pdu_sent_handler),
)


def _host_filtering_server(
    allowed_hosts: tuple[str, ...],
    stats: ReceiveStats,
    on_message: Callable[[Any], None] | None = None,
) -> type[ThreadedAssociationServer]:
    """A server class that drops connections from addresses not in the allow-list.

    The calling AE title is trivially spoofed, so sites that care also restrict addresses;
    a refused host gets no association at all (the TCP connection is closed).
    """
    allowed = frozenset(allowed_hosts)

    class _Server(ThreadedAssociationServer):
        # Read by _RequestHandler for each association (see accept_with_events).
        on_message: Callable[[Any], None] | None = None

        def verify_request(self, request: Any, client_address: Any) -> bool:
            if allowed and client_address[0] not in allowed:
                stats.add(rejected_associations=1)
                log.warning("connection from %s refused: host not allowed", client_address[0])
                return False
            return True

    # A staticmethod, so that reading it from a server instance does not bind it.
    _Server.on_message = staticmethod(on_message) if on_message else None
    return _Server
