"""The node's DICOM service: C-ECHO and C-STORE into the spool and the index.

The C-STORE handler does two things only: make the instance durable and answer. Everything
slow (completion, routing, models, delivery) happens elsewhere, so a busy model never stalls a
scanner. The handler never raises: pynetdicom would turn an exception into 0xC211 without a
reason in our log, so every failure is mapped to a status here and logged with UIDs only (no
patient data in log lines).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
import weakref
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
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
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import ConfigError, Settings, cannot_listen
from dicom_node.receive import pynetdicom_ext
from dicom_node.receive.incoming import IncomingFile
from dicom_node.receive.index import IndexCache, InstanceMeta, index_instance
from dicom_node.receive.meta import read_meta
from dicom_node.receive.spool import Spool, SpoolFullError
from dicom_node.receive.statuses import Status, StoreRejectedError
from dicom_node.store.db import utcnow

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


def storage_sop_classes() -> list[str]:
    """Every storage SOP class pynetdicom knows (the standard's list, incl. retired ones)."""
    return sorted({str(uid) for uid in _STORAGE_CLASSES.values()})


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


@dataclass(frozen=True)
class ReleasedAssociation:
    """An association that ended with a clean A-RELEASE, and the series it carried.

    DICOM has no "series complete" message, but a sender that releases its association
    cleanly has said it has nothing more to send on it; for senders known to send whole
    series per association this is the end of the series (``dicom_node.route.completion``
    decides whom to believe). An A-ABORT or a dropped connection says nothing of the kind
    and is not reported.
    """

    calling_ae: str
    series_uids: frozenset[str]
    # Those of ``series_uids`` that other associations, still open at the release, have
    # also sent instances of: more of them may be on the way there.
    open_elsewhere: frozenset[str]
    released_at: dt.datetime  # after every instance of the association was indexed


@dataclass
class _AssociationState:
    """What the SCP keeps per association while it lasts."""

    cache: IndexCache = field(default_factory=IndexCache)
    series: set[str] = field(default_factory=set)


class StoreSCP:
    """The node's Application Entity in the SCP role.

    ``on_instance`` is called after each stored instance and ``on_released`` after each
    cleanly released association that stored something, both in the association's thread:
    they must be quick and must not raise (an exception is logged and ignored).
    """

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        spool: Spool,
        *,
        on_instance: Callable[[InstanceMeta], None] | None = None,
        on_released: Callable[[ReleasedAssociation], None] | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.spool = spool
        self.on_instance = on_instance
        self.on_released = on_released
        self.stats = ReceiveStats()
        self._server: ThreadedAssociationServer | None = None
        self._acceptor: threading.Thread | None = None
        # Per association: study/series ids (a series usually arrives on one association)
        # and the series received; weak keys, so an ended association's state goes with it.
        self._associations: weakref.WeakKeyDictionary[Any, _AssociationState] = (
            weakref.WeakKeyDictionary()
        )
        self._associations_lock = threading.Lock()
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
        """Listen and serve: :meth:`bind` then :meth:`serve`."""
        self.bind()
        return self.serve()

    def bind(self) -> ThreadedAssociationServer:
        """Bind and listen on ``[scp] host:port``, without serving yet.

        The node binds before its start-up cleanup, so that a port in use stops it before
        anything changed; connections that arrive meanwhile wait in the listen backlog and
        are served once :meth:`serve` runs (after the cleanup of ``.incoming``, which would
        otherwise remove files being received).

        Raises
        ------
        StartupError
            The address cannot be bound (port in use, host not of this machine); one line
            naming the setting.
        ConfigError
            The installed pynetdicom is not a version the extensions were checked against:
            a problem of the installation, which the command line reports in one line
            (exit status 2) like any other configuration problem.
        """
        if self._server is not None:
            return self._server
        try:
            pynetdicom_ext.install()
        except pynetdicom_ext.UnsupportedVersionError as exc:
            raise ConfigError(str(exc)) from exc
        handlers = [
            (evt.EVT_C_ECHO, self._handle_echo),
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_ACCEPTED, self._handle_accepted),
            (evt.EVT_REJECTED, self._handle_rejected),
            (evt.EVT_RELEASED, self._handle_released),
            (evt.EVT_ABORTED, self._handle_aborted),
        ]
        scp = self.settings.scp
        # Each incoming dataset is streamed to a file in this spool's own folder instead
        # of RAM: memory stays flat for 500 MB instances and the final step is a same-disk
        # link. The folder rides on the association, so receivers do not share a global.
        try:
            server = self.ae.make_server(
                (scp.host, scp.port),
                evt_handlers=handlers,  # type: ignore[arg-type]
                server_class=pynetdicom_ext.server_class(
                    allowed_hosts=scp.allowed_hosts,
                    on_refused=self._host_refused,
                    on_message=self._message_arrived,
                    incoming_file=functools.partial(IncomingFile, self.spool.tmp),
                ),
                request_handler=pynetdicom_ext.NodeRequestHandler,
            )
        except OSError as exc:
            raise cannot_listen("scp", scp.host, scp.port, exc) from exc
        self.ae._servers.append(server)  # so AE.shutdown() also stops it
        self._server = server
        return server

    def serve(self) -> ThreadedAssociationServer:
        """Start answering associations on the bound address (binds first if needed)."""
        server = self.bind()
        if self._acceptor is not None:
            return server
        self._io = futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="spool-sync")
        self._acceptor = threading.Thread(
            target=server.serve_forever, name="scp-acceptor", daemon=True
        )
        self._acceptor.start()
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
        server, self._server = self._server, None
        if server is not None:
            if self._acceptor is not None:
                server.shutdown()  # ends serve_forever, closes the socket
                self._acceptor = None
            else:  # bound but never served: shutdown() would wait for serve_forever
                server.server_close()
                self.ae._servers.remove(server)
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
        self.stats.add(rejected_associations=1)
        req = event.assoc.requestor
        log.warning(
            "association rejected: calling AE %r from %s, called AE %r",
            req.ae_title,
            req.address,
            event.assoc.acceptor.ae_title,
        )

    def _handle_released(self, event: Event) -> None:
        """A clean A-RELEASE: report the series of the association (never raises)."""
        try:
            released = self._released(event.assoc)
            if released is not None and self.on_released is not None:
                self.on_released(released)
        except Exception:  # pynetdicom logs and swallows it too; say which step failed
            log.exception("could not report a released association")

    def _released(self, assoc: Any) -> ReleasedAssociation | None:
        released_at = utcnow()
        with self._associations_lock:
            state = self._associations.pop(assoc, None)
            if state is None or not state.series:
                return None
            series = frozenset(state.series)
            elsewhere: set[str] = set()
            for other, other_state in list(self._associations.items()):
                if other.is_established and other.is_alive():
                    elsewhere |= series & other_state.series
        return ReleasedAssociation(
            calling_ae=str(assoc.requestor.ae_title).strip(),
            series_uids=series,
            open_elsewhere=frozenset(elsewhere),
            released_at=released_at,
        )

    def _handle_aborted(self, event: Event) -> None:
        """An A-ABORT: nothing is reported, the series wait for their quiet period."""
        with self._associations_lock:
            state = self._associations.pop(event.assoc, None)
        if state is not None and state.series:
            req = event.assoc.requestor
            log.info(
                "association from %s aborted after instances of %d series",
                req.ae_title,
                len(state.series),
            )

    def _host_refused(self, address: str) -> None:
        self.stats.add(rejected_associations=1)
        log.warning("connection from %s refused: host not allowed", address)

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

    def _state_for(self, assoc: Any) -> _AssociationState:
        with self._associations_lock:
            state = self._associations.get(assoc)
            if state is None:
                state = self._associations[assoc] = _AssociationState()
            return state

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
        folder_synced = self._background(self.spool.make_durable, stored)
        requestor = event.assoc.requestor
        state = self._state_for(event.assoc)
        try:
            outcome = index_instance(
                self.sessions,
                meta,
                stored.location,
                stored.size,
                calling_ae=str(requestor.ae_title).strip(),
                remote_address=str(requestor.address),
                late_rule=self.settings.completion.late_instances,
                cache=state.cache,
                before_commit=folder_synced.result,
            )
        finally:
            futures.wait([folder_synced])
        folder_synced.result()  # Success needs the name durable, whatever index_instance did
        with self._associations_lock:
            state.series.add(meta.series_uid)
        if outcome.created:
            self.stats.add(instances=1, bytes=stored.size)
        else:
            self.stats.add(duplicates=1)
            log.info("C-STORE %s: duplicate, already stored", meta.sop_instance_uid)
        if self.on_instance is not None:
            self.on_instance(meta)
        return Status.SUCCESS
