"""The node's DICOM service: C-ECHO and C-STORE into the spool and the index.

The C-STORE handler does two things only: make the instance durable and answer. Everything
slow (completion, routing, models, delivery) happens elsewhere, so a busy model never stalls a
scanner. The handler never raises: pynetdicom would turn an exception into 0xC211 without a
reason in our log, so every failure is mapped to a status here and logged with UIDs only (no
patient data in log lines).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import weakref
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import _STORAGE_CLASSES, Verification  # type: ignore[attr-defined]
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import ConfigError, Settings
from dicom_node.receive import pynetdicom_ext
from dicom_node.receive.guard import PeerLog
from dicom_node.receive.incoming import IncomingFile
from dicom_node.receive.index import IndexCache, InstanceMeta, index_instance
from dicom_node.receive.meta import read_meta
from dicom_node.receive.spool import Spool, SpoolFullError
from dicom_node.receive.statuses import Status, StoreRejectedError

log = logging.getLogger(__name__)

# How long stop() waits for the associations it aborts to end (their peers are not waited
# on; a C-STORE handler still writing keeps its thread until it returns).
STOP_TIMEOUT = 5.0


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


def storage_sop_classes() -> list[str]:
    """Every storage SOP class pynetdicom knows (the standard's list, incl. retired ones)."""
    return sorted({str(uid) for uid in _STORAGE_CLASSES.values()})


def _ae_repr(value: Any) -> str:
    """An AE title from the network for a log line: quoted and escaped (no control
    characters reach the log), at most 16 characters as the standard allows."""
    if value is None:
        return "?"
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return repr(str(value).strip()[:16])


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
        self._server: pynetdicom_ext.NodeAssociationServer | None = None
        # Study/series ids per association (a series usually arrives on one association);
        # weak keys, so an ended association's cache goes with it.
        self._caches: weakref.WeakKeyDictionary[Any, IndexCache] = weakref.WeakKeyDictionary()
        self._caches_lock = threading.Lock()
        # fsyncs run here, overlapped with the handler's CPU work (see _store); from start()
        # to stop(), inline otherwise.
        self._io: futures.ThreadPoolExecutor | None = None
        # Every warning a peer causes goes through its host's budget (guard.PeerLog).
        self.peer_log = PeerLog(log)
        self.ae = self._build_ae()

    def _build_ae(self) -> AE:
        scp = self.settings.scp
        ae = AE(ae_title=self.settings.node.ae_title)
        ae.maximum_pdu_size = scp.max_pdu_size
        ae.network_timeout = scp.network_timeout
        ae.acse_timeout = scp.acse_timeout  # also the ARTIM timer
        ae.dimse_timeout = scp.network_timeout
        # The server refuses over these first (per host too); pynetdicom's own check of
        # the total then never fires.
        ae.maximum_associations = scp.max_associations
        ae.require_called_aet = scp.require_called_ae
        if scp.allowed_calling_aes:
            ae.require_calling_aet = list(scp.allowed_calling_aes)
        ae.add_supported_context(Verification)
        for sop_class in storage_sop_classes():
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        return ae

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> pynetdicom_ext.NodeAssociationServer:
        """Install the receive path's pynetdicom extensions and start listening.

        Raises
        ------
        ConfigError
            The installed pynetdicom is not a version the extensions were checked against:
            a problem of the installation, which the command line reports in one line
            (exit status 2) like any other configuration problem.
        """
        try:
            pynetdicom_ext.install()
        except pynetdicom_ext.UnsupportedVersionError as exc:
            raise ConfigError(str(exc)) from exc
        self._io = futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="spool-sync")
        handlers = [
            (evt.EVT_C_ECHO, self._handle_echo),
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_ACCEPTED, self._handle_accepted),
            (evt.EVT_REJECTED, self._handle_rejected),
        ]
        # Each incoming dataset is streamed to a file in this spool's own folder instead
        # of RAM: memory stays flat for 500 MB instances and the final step is a same-disk
        # link. The folder rides on the association, so receivers do not share a global.
        server = self.ae.make_server(
            (self.settings.scp.host, self.settings.scp.port),
            evt_handlers=handlers,  # type: ignore[arg-type]
            server_class=pynetdicom_ext.server_class(
                allowed_hosts=self.settings.scp.allowed_hosts,
                max_associations=self.settings.scp.max_associations,
                max_associations_per_host=self.settings.scp.max_associations_per_host,
                on_refused=self._connection_refused,
                on_message=self._message_arrived,
                incoming_file=functools.partial(IncomingFile, self.spool.tmp),
                peer_log=self.peer_log,
            ),
            request_handler=pynetdicom_ext.NodeRequestHandler,
        )
        assert isinstance(server, pynetdicom_ext.NodeAssociationServer)
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

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop listening, abort every association and close its connection.

        Bounded whatever the peers do (a peer that stalls, trickles or floods is not waited
        on): the listening socket closes first, then each association's DUL thread sends
        an A-ABORT and closes its socket, and after ``timeout`` the node goes on. Senders
        retry what had no answer; what was answered Success is on disk.
        """
        server = self._server
        if server is not None:
            self._server = None
            server.shutdown()
            left = server.close_associations(timeout)
            if left:
                log.warning(
                    "%d association(s) still ending after %g s; not waited on", left, timeout
                )
        if self._io is not None:
            self._io.shutdown(wait=True)
            self._io = None

    # -- handlers (never raise) -------------------------------------------------------
    def _handle_echo(self, event: Event) -> int:
        return Status.SUCCESS

    def _handle_accepted(self, event: Event) -> None:
        self.stats.add(associations=1)
        req = event.assoc.requestor
        log.info("association accepted from %s@%s", req.ae_title, req.address)

    def _handle_rejected(self, event: Event) -> None:
        """One line per rejection, naming what the peer asked for (its A-ASSOCIATE-RQ's
        called AE, not ours), who it claims to be and why we said no; bounded per host."""
        self.stats.add(rejected_associations=1)
        assoc = event.assoc
        request = assoc.requestor.primitive
        answer = assoc.acceptor.primitive
        reason = "unknown reason"
        if answer is not None:
            with contextlib.suppress(Exception):  # never raise in a handler
                reason = f"{answer.reason_str.lower()} ({answer.result_str.lower()})"
        self.peer_log.warning(
            str(assoc.requestor.address),
            "association rejected: %s from %s asked for called AE %s: %s",
            _ae_repr(getattr(request, "calling_ae_title", None)),
            assoc.requestor.address,
            _ae_repr(getattr(request, "called_ae_title", None)),
            reason,
        )

    def _connection_refused(self, address: str, reason: str) -> None:
        """A connection closed at accept (host not allowed, association limits)."""
        self.stats.add(rejected_associations=1)
        self.peer_log.warning(address, "connection from %s refused: %s", address, reason)

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
            return Status.OUT_OF_RESOURCES
        except SQLAlchemyError as exc:
            # The file is durable but not indexed: answer a failure so the sender retries;
            # the retry (or start-up reconciliation) completes the index.
            self.stats.add(failures=1)
            log.error("C-STORE %s: database error: %s", sop_uid[:64], type(exc).__name__)
            return Status.OUT_OF_RESOURCES
        except Exception:
            self.stats.add(failures=1)
            log.exception("C-STORE %s: unexpected error", sop_uid[:64])
            return Status.INTERNAL_ERROR

    def _store(self, event: Event) -> int:
        request = event.request
        try:
            temp = Path(event.dataset_path)
        except AttributeError as exc:  # pragma: no cover - chunked mode is always on
            raise StoreRejectedError(Status.CANNOT_UNDERSTAND, "no dataset in the request") from exc
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
            meta = read_meta(
                temp,
                command_class,
                command_instance,
                max_inflated_size=self.settings.scp.max_inflated_size,
            )
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
        return Status.SUCCESS
