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
import re
import ssl
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
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import ConfigError, Settings, cannot_listen
from dicom_node.receive import pynetdicom_ext, refusals
from dicom_node.receive.guard import PeerLog
from dicom_node.receive.incoming import IncomingFile
from dicom_node.receive.index import IndexCache, InstanceMeta
from dicom_node.receive.ingest import Claim, Ingestor, Origin, inline, refuse
from dicom_node.receive.spool import Spool
from dicom_node.receive.statuses import Status, StoreRejectedError
from dicom_node.store.db import utcnow
from dicom_node.store.states import RefusalKind
from dicom_node.tls import TlsConfigError, server_context

log = logging.getLogger(__name__)

# How long stop() waits for the associations it aborts to end (their peers are not waited
# on; a C-STORE handler still writing keeps its thread until it returns).
STOP_TIMEOUT = 5.0
# A UID from the network is kept on a refusal only when it looks like one (PS3.5 9.1).
_UID_RE = re.compile(r"^[0-9.]{1,64}$")


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
        # Refused connections, associations and C-STOREs, for the admin page.
        self.refusals = refusals.RefusalRecorder(sessions)
        # The plain listener ([scp] port) and the TLS one ([scp.tls]); either may be absent.
        self._server: ThreadedAssociationServer | None = None
        self._tls_server: ThreadedAssociationServer | None = None
        self._acceptors: list[threading.Thread] = []
        # Per association: study/series ids (a series usually arrives on one association)
        # and the series received; weak keys, so an ended association's state goes with it.
        self._associations: weakref.WeakKeyDictionary[Any, _AssociationState] = (
            weakref.WeakKeyDictionary()
        )
        self._associations_lock = threading.Lock()
        # fsyncs run here, overlapped with the handler's CPU work (see _store); from start()
        # to stop(), inline otherwise.
        self._io: futures.ThreadPoolExecutor | None = None
        self.ingestor = Ingestor(settings, sessions, spool, background=self._background)
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
    def start(self) -> ThreadedAssociationServer:
        """Listen and serve: :meth:`bind` then :meth:`serve`."""
        self.bind()
        return self.serve()

    def bind(self) -> ThreadedAssociationServer:
        """Bind and listen on ``[scp] host:port`` and, when enabled, ``[scp.tls]``, without
        serving yet; returns the plain listener (the TLS one with ``tls.only``).

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
            (exit status 2) like any other configuration problem. Or a TLS certificate, key
            or CA bundle cannot be used (the setting and the file named).
        """
        listeners = self.listeners
        if listeners:
            return listeners[0]
        try:
            pynetdicom_ext.install()
        except pynetdicom_ext.UnsupportedVersionError as exc:
            raise ConfigError(str(exc)) from exc
        scp = self.settings.scp
        # Before any port is bound: a bad certificate is the operator's first problem.
        tls_context = self._tls_context() if scp.tls.enabled else None
        try:
            if not scp.tls.only:
                self._server = self._listen("scp", scp.host, scp.port)
            if tls_context is not None:
                self._tls_server = self._listen("scp.tls", scp.tls_host, scp.tls.port, tls_context)
        except BaseException:
            self.stop()
            raise
        return self.listeners[0]

    def _tls_context(self) -> ssl.SSLContext:
        tls = self.settings.scp.tls
        assert tls.certificate is not None and tls.private_key is not None  # validated
        try:
            return server_context(
                tls.certificate,
                tls.private_key,
                ca_certificates=tls.ca_certificates,
                require_client_certificate=tls.require_client_certificate,
            )
        except TlsConfigError as exc:
            raise ConfigError(f"scp.tls.{exc.field} ({self.settings.source}): {exc}") from None

    def _listen(
        self, section: str, host: str, port: int, tls: ssl.SSLContext | None = None
    ) -> ThreadedAssociationServer:
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
                (host, port),
                evt_handlers=handlers,  # type: ignore[arg-type]
                server_class=pynetdicom_ext.server_class(
                    allowed_hosts=scp.allowed_hosts,
                    max_associations=scp.max_associations,
                    max_associations_per_host=scp.max_associations_per_host,
                    on_refused=self._connection_refused,
                    on_message=self._message_arrived,
                    incoming_file=functools.partial(IncomingFile, self.spool.tmp),
                    peer_log=self.peer_log,
                    on_tls_refused=self._tls_refused,
                    tls_handshake_timeout=scp.tls.handshake_timeout,
                ),
                request_handler=pynetdicom_ext.NodeRequestHandler,
                ssl_context=tls,
            )
        except OSError as exc:
            raise cannot_listen(section, host, port, exc) from exc
        self.ae._servers.append(server)  # so AE.shutdown() also stops it
        return server

    @property
    def listeners(self) -> list[ThreadedAssociationServer]:
        """The bound listeners: plain, then TLS."""
        return [s for s in (self._server, self._tls_server) if s is not None]

    def serve(self) -> ThreadedAssociationServer:
        """Start answering associations on the bound addresses (binds first if needed)."""
        server = self.bind()
        if self._acceptors:
            return server
        self._io = futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="spool-sync")
        for listener in self.listeners:
            tls = listener is self._tls_server
            acceptor = threading.Thread(
                target=listener.serve_forever,
                name="scp-tls-acceptor" if tls else "scp-acceptor",
                daemon=True,
            )
            acceptor.start()
            self._acceptors.append(acceptor)
        scp = self.settings.scp
        if self._server is not None:
            log.info(
                "SCP %s listening on %s:%d", self.settings.node.ae_title, scp.host, self.bound_port
            )
        if self._tls_server is not None:
            log.info(
                "SCP %s listening for DICOM over TLS on %s:%d (client certificates %s)",
                self.settings.node.ae_title,
                scp.tls_host,
                self.bound_tls_port,
                "required" if scp.tls.require_client_certificate else "optional",
            )
        return server

    @property
    def bound_port(self) -> int:
        if self._server is None:
            return self.settings.scp.port
        return int(self._server.server_address[1])

    @property
    def bound_tls_port(self) -> int:
        if self._tls_server is None:
            return self.settings.scp.tls.port
        return int(self._tls_server.server_address[1])

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop listening, abort every association and close its connection.

        Bounded whatever the peers do (a peer that stalls, trickles or floods is not waited
        on): the listening sockets close first, then each association's DUL thread sends
        an A-ABORT and closes its socket, and after ``timeout`` the node goes on. Senders
        retry what had no answer; what was answered Success is on disk.
        """
        servers = self.listeners
        self._server = self._tls_server = None
        serving, self._acceptors = bool(self._acceptors), []
        for server in servers:
            if serving:
                server.shutdown()  # ends serve_forever, closes the socket
            else:  # bound but never served: shutdown() would wait for serve_forever
                server.server_close()
                self.ae._servers.remove(server)
        for server in servers:
            if serving and isinstance(server, pynetdicom_ext.NodeAssociationServer):
                left = server.close_associations(timeout)
                if left:
                    log.warning(
                        "%d association(s) still ending after %g s; not waited on",
                        left,
                        timeout,
                    )
        if self._io is not None:
            self._io.shutdown(wait=True)
            self._io = None
        self.refusals.stop()

    # -- handlers (never raise) -------------------------------------------------------
    def _handle_echo(self, event: Event) -> int:
        return Status.SUCCESS

    def _handle_accepted(self, event: Event) -> None:
        self.stats.add(associations=1)
        req = event.assoc.requestor
        log.info("association accepted from %s@%s", req.ae_title, req.address)
        try:
            if not event.assoc.accepted_contexts:
                self._no_usable_context(event.assoc)
        except Exception:  # a notification handler must not raise
            log.exception("could not check the accepted presentation contexts")

    def _no_usable_context(self, assoc: Any) -> None:
        """Accepted, but every proposed presentation context was refused: the peer can
        send nothing. DICOM says "accept" here (PS3.8 9.3.3), yet to the operator of the
        sender it is a refusal, so it is recorded as one, with what was proposed."""
        calling, called, address = refusals.peer(assoc)
        proposed = [
            f"{getattr(cx.abstract_syntax, 'name', cx.abstract_syntax)} "
            f"[{', '.join(str(ts) for ts in cx.transfer_syntax)}]"
            for cx in assoc.rejected_contexts[:5]
        ]
        log.warning(
            "association from %r at %s has no acceptable presentation context", calling, address
        )
        self.refusals.submit(
            RefusalKind.ASSOCIATION,
            calling_ae=calling,
            called_ae=called,
            address=address,
            meaning="no acceptable presentation context (SOP class or transfer syntax "
            "not supported)",
            reason="proposed: " + "; ".join(proposed) if proposed else "nothing proposed",
        )

    def _handle_rejected(self, event: Event) -> None:
        self.stats.add(rejected_associations=1)
        calling, called, address = refusals.peer(event.assoc)
        rj = event.assoc.acceptor.primitive
        meaning = refusals.rejection_meaning(
            getattr(rj, "result", None),
            getattr(rj, "result_source", None),
            getattr(rj, "diagnostic", None),
        )
        # One line per rejection, naming what the peer asked for (its A-ASSOCIATE-RQ's
        # called AE, not ours), who it claims to be and why we said no; bounded per host.
        self.peer_log.warning(
            address,
            "association rejected: %s from %s asked for called AE %s: %s",
            _ae_repr(calling),
            address,
            _ae_repr(called),
            meaning,
        )
        self.refusals.submit(
            RefusalKind.ASSOCIATION,
            calling_ae=calling,
            called_ae=called,
            address=address,
            meaning=meaning,
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

    def _connection_refused(self, address: str, reason: str) -> None:
        """A connection closed at accept (host not allowed, association limits)."""
        self.stats.add(rejected_associations=1)
        self.peer_log.warning(address, "connection from %s refused: %s", address, reason)
        self.refusals.submit(
            RefusalKind.CONNECTION, address=address, meaning=f"{reason}; connection closed"
        )

    def _tls_refused(self, address: str, reason: str) -> None:
        """A connection to the TLS port whose handshake failed: no certificate, one our CAs
        did not sign, plain DICOM, an old TLS version. One line, address and reason."""
        self.stats.add(rejected_associations=1)
        self.peer_log.warning(address, "TLS connection from %s refused: %s", address, reason)

    def _background(self, fn: Callable[..., Any], *args: Any) -> futures.Future[Any]:
        """Run ``fn`` in the I/O pool; inline when there is none (node stopping)."""
        pool = self._io
        if pool is not None:
            try:
                return pool.submit(fn, *args)
            except RuntimeError:  # shut down since the check
                pass
        return inline(fn, *args)

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
        except Exception as exc:  # mapped to a status, never raised (see ingest.refuse)
            self.stats.add(failures=1)
            refusal = refuse("C-STORE", sop_uid, exc)
            return self._refused(event, sop_uid, refusal.status, refusal.reason)

    def _refused(self, event: Event, sop_uid: str, status: Status, reason: str) -> int:
        """Record a refused C-STORE for the admin page and return its status (never raises)."""
        try:
            calling, called, address = refusals.peer(event.assoc)
            self.refusals.submit(
                RefusalKind.STORE,
                calling_ae=calling,
                called_ae=called,
                address=address,
                status=int(status),
                meaning=Status(status).meaning,
                reason=reason,
                sop_instance_uid=sop_uid[:64] if _UID_RE.match(sop_uid) else "",
            )
        except Exception:  # the answer matters more than the record
            log.exception("could not record a refused C-STORE")
        return status

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
        # while it writes the index rows (Ingestor.ingest). Success still waits for both.
        if isinstance(incoming, IncomingFile):
            incoming.finish()  # raises SpoolFullError -> 0xA700 if any write failed
            file_synced = incoming.synced or self._background(incoming.fsync)
        else:  # pragma: no cover - another temp-file factory was installed
            file_synced = None
        requestor = event.assoc.requestor
        state = self._state_for(event.assoc)
        done = self.ingestor.ingest(
            temp,
            Claim(command_class, command_instance),
            Origin(str(requestor.ae_title).strip(), str(requestor.address)),
            file_synced=file_synced,
            cache=state.cache,
        )
        meta = done.meta
        with self._associations_lock:
            state.series.add(meta.series_uid)
        if done.outcome.created:
            self.stats.add(instances=1, bytes=done.stored.size)
        else:
            self.stats.add(duplicates=1)
            log.info("C-STORE %s: duplicate, already stored", meta.sop_instance_uid)
        if self.on_instance is not None:
            self.on_instance(meta)
        return Status.SUCCESS
