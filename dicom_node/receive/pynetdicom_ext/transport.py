"""The node's association server: connection filtering and per-association switches.

Each accepted association is switched, before its threads start, to the event-driven
loops and non-blocking PDU reads (``reactors``) and the direct C-STORE responses
(``encoding``); pynetdicom's per-PDU debug log handlers are unbound; and the association
is told where its incoming datasets go (``incoming_file``), which the temp-file factory
installed by ``install()`` reads. Nothing here is process-wide.

The server also keeps what one peer may hold (``guard.ConnectionLimits``): a connection
over the total or per-host bound is answered with an A-ASSOCIATE-RJ (transient, local limit
exceeded) and closed in the accepting thread, before any association thread starts; and
``close_associations`` ends every association at shutdown without waiting on its peer.

On a TLS listener the handshake runs in the connection's own thread, with a time limit,
not in the accepting thread as pynetdicom does it: there, one peer that connects and sends
nothing would stop the listener from accepting anyone, and a failed handshake would vanish
without a word. Here each failure is reported once, with the peer's address and OpenSSL's
reason (no certificate, an untrusted one, plain DICOM on the TLS port). A TLS connection
therefore keeps socketserver's thread per connection; a plain one is set up in the
accepting thread (``NodeAssociationServer.process_request``).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from pynetdicom import evt
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.association import Association
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from dicom_node.receive.guard import ConnectionLimits, PeerLog, Slot
from dicom_node.receive.pynetdicom_ext import encoding
from dicom_node.receive.pynetdicom_ext.reactors import EventDrivenDUL, accept_with_events
from dicom_node.tls import failure_reason

log = logging.getLogger(__name__)

# The attribute of an Association that names its incoming-file factory (see install()).
INCOMING_FILE_ATTR = "_dn_incoming_file"

# A-ASSOCIATE-RJ PDU (PS3.8 9.3.4): result 2 rejected-transient, source 3 DICOM UL
# service-provider (presentation related function), reason 2 local-limit-exceeded. A
# requestor retries a transient rejection later, as it would a busy node.
LIMIT_EXCEEDED_RJ = bytes([0x03, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x02, 0x03, 0x02])


_STANDARD_LOG_HANDLERS = (
    (evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
    (evt.EVT_PDU_RECV, standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, standard_pdu_sent_handler),
)


class NodeRequestHandler(RequestHandler):
    """pynetdicom's connection handler, switching each new association (module docstring)."""

    server: NodeAssociationServer
    _dn_slot: Slot | None = None

    def handle(self) -> None:
        """pynetdicom's ``handle``, with the connection's slot freed if it fails before the
        association thread starts (which frees it when it ends)."""
        self._dn_slot = self.server.claim_slot(self.request)
        try:
            if isinstance(self.request, ssl.SSLSocket) and not self._tls_handshake(self.request):
                if self._dn_slot is not None:
                    self._dn_slot.release()
                return
            super().handle()
        except BaseException:
            if self._dn_slot is not None:
                self._dn_slot.release()
            raise

    def _tls_handshake(self, sock: ssl.SSLSocket) -> bool:
        """Complete the TLS handshake within the server's time limit; on failure report
        it, close the connection and return False (no association starts)."""
        blocking = sock.gettimeout()
        sock.settimeout(self.server.tls_handshake_timeout)
        try:
            sock.do_handshake()
        except (OSError, ValueError) as exc:
            address = str(self.client_address[0])
            reason = failure_reason(exc)
            if self.server.on_tls_refused is not None:
                self.server.on_tls_refused(address, reason)
            else:
                log.warning("TLS connection from %s refused: %s", address, reason)
            with contextlib.suppress(OSError):
                sock.close()
            return False
        sock.settimeout(blocking)  # pynetdicom's reads block; its timers end idle peers
        return True

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        slot = self._dn_slot
        switched = accept_with_events(
            assoc,
            self.server.on_message,
            peer_log=self.server.peer_log,
            on_end=slot.release if slot is not None else None,
        )
        if slot is not None:
            if switched:
                slot.assoc = assoc
            else:  # only the switched loops free the slot as they end: do not count it
                slot.release()
        # pynetdicom's standard handlers only format debug lines for every PDU and message
        # (and an INFO line per C-STORE); our log has a line per association and failure.
        for event, handler in _STANDARD_LOG_HANDLERS:
            assoc.unbind(event, handler)
        encoding.use_direct_responses(assoc.dimse)
        if self.server.incoming_file is not None:
            setattr(assoc, INCOMING_FILE_ATTR, self.server.incoming_file)
        return assoc


class NodeAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the node's per-association settings.

    ``allowed_hosts``: the calling AE title is trivially spoofed, so sites that care also
    restrict addresses; a refused host gets no association at all (the TCP connection is
    closed). ``max_associations`` / ``max_associations_per_host``: a connection over either
    gets an A-ASSOCIATE-RJ (``LIMIT_EXCEEDED_RJ``) and is closed. Either way
    ``on_refused(address, reason)`` is told. ``on_message`` sees each complete DIMSE
    message in the DUL thread (``accept_with_events``); ``incoming_file`` makes the file
    each incoming dataset is streamed into; ``peer_log`` takes the lines each peer causes.
    With an ``ssl_context``, ``on_tls_refused`` is told the address and the reason of each
    failed TLS handshake, and a handshake not done after ``tls_handshake_timeout`` seconds
    fails.
    """

    # socketserver listens with a backlog of 5: a burst of connections (ten modalities
    # after a network outage, or a scan) overflows it while the accepting thread waits for
    # the GIL, and each dropped SYN costs its sender a 1 s retransmission.
    request_queue_size = 256

    allowed_hosts: frozenset[str] = frozenset()
    max_associations: int = 32
    max_associations_per_host: int = 32
    on_refused: Callable[[str, str], None] | None = None
    on_message: Callable[[Any], None] | None = None
    incoming_file: Callable[..., Any] | None = None
    peer_log: PeerLog | None = None
    on_tls_refused: Callable[[str, str], None] | None = None
    tls_handshake_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Before the base class: it starts nothing, but verify_request must find these.
        self.limits = ConnectionLimits(self.max_associations, self.max_associations_per_host)
        self._pending: dict[Any, Slot] = {}
        self._pending_lock = threading.Lock()
        super().__init__(*args, **kwargs)
        self.contexts = _SharedContexts(self.contexts)

    def process_request(self, request: Any, client_address: Any) -> None:
        """pynetdicom's handling of a connection, in the accepting thread instead of a new
        one (socketserver's ThreadingMixIn): it only builds the association and starts its
        threads, about a millisecond, and a third thread start per association (each a
        GIL hand-over) was 9 % of the node's CPU per C-ECHO with ten clients (py-spy).

        A TLS connection keeps its own thread: its handshake (``NodeRequestHandler``) must
        not hold up the accepting thread.
        """
        if self.ssl_context:
            super().process_request(request, client_address)
        else:
            self.process_request_thread(request, client_address)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """pynetdicom's, but a TLS socket is only wrapped here: the handshake happens in
        the connection's thread (``NodeRequestHandler._tls_handshake``)."""
        listener = cast(socket.socket, self.socket)
        client, address = listener.accept()
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        return client, address

    def service_actions(self) -> None:
        """Nothing (pynetdicom runs a full ``gc.collect()`` here every 60 passes of the
        accept loop: 60-70 ms holding the GIL in the node's process, which every
        association waits out; the interpreter's own collector frees dead associations).
        """

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """In the accepting thread: admit the connection (and hold its slot) or refuse it."""
        host = str(client_address[0])
        if self.allowed_hosts and host not in self.allowed_hosts:
            self._refused(host, "host not in scp.allowed_hosts")
            return False
        slot = self.limits.acquire(host)
        if isinstance(slot, str):
            # Nothing is read: a peer that never sends its A-ASSOCIATE-RQ costs nothing.
            # 10 bytes into a fresh socket's empty buffer do not block.
            with contextlib.suppress(OSError, ValueError):  # ValueError: a TLS socket
                request.send(LIMIT_EXCEEDED_RJ, socket.MSG_DONTWAIT)
            self._refused(host, slot)
            return False
        with self._pending_lock:
            self._pending[request] = slot
        return True

    def _refused(self, host: str, reason: str) -> None:
        if self.on_refused is not None:
            self.on_refused(host, reason)

    def claim_slot(self, request: Any) -> Slot | None:
        """The slot ``verify_request`` holds for ``request`` (the handler takes it over)."""
        with self._pending_lock:
            return self._pending.pop(request, None)

    def shutdown_request(self, request: Any) -> None:
        """socketserver's: also frees the slot of a connection whose handler never ran."""
        slot = self.claim_slot(request)
        if slot is not None:
            slot.release()
        super().shutdown_request(request)

    def close_associations(self, timeout: float = 5.0) -> int:
        """Abort every association of this server and close its connection, without
        waiting on any peer; returns how many threads were still running at ``timeout``.

        Each DUL thread sends an A-ABORT if associated and closes its socket at its next
        pass (it never blocks on a read). What has not ended after half the time gets its
        socket shut down from here, which also ends a blocked send. A C-STORE handler
        still running keeps its thread until it returns; its answer goes nowhere.
        """
        deadline = time.monotonic() + timeout
        with self._pending_lock:  # accepted, association not created yet: it will see EOF
            pending = list(self._pending)
        for request in pending:
            with contextlib.suppress(OSError):
                request.shutdown(socket.SHUT_RDWR)
        for slot in self.limits.held():
            dul = getattr(slot.assoc, "dul", None)
            if isinstance(dul, EventDrivenDUL):
                dul.close_now()
        forced = False
        while self.limits.count():
            now = time.monotonic()
            if now >= deadline:
                break
            if not forced and now >= deadline - timeout / 2:
                forced = True
                for slot in self.limits.held():
                    _force_close(slot.assoc)
            time.sleep(0.02)
        return self.limits.count()


class _SharedContexts(list[Any]):
    """The server's presentation contexts, shared by its associations instead of copied.

    pynetdicom deep-copies the supported contexts into every new association (8 ms for the
    node's 171 storage and verification contexts, most of an echo's time on the server),
    although negotiation only reads them. A deep copy of this list is a new list of the
    same context objects; nothing in the node changes them.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return list(self)


def _force_close(assoc: Any) -> None:
    transport = getattr(getattr(assoc, "dul", None), "socket", None)
    sock = getattr(transport, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def server_class(
    *,
    allowed_hosts: tuple[str, ...] = (),
    max_associations: int = 32,
    max_associations_per_host: int = 32,
    on_refused: Callable[[str, str], None] | None = None,
    on_message: Callable[[Any], None] | None = None,
    incoming_file: Callable[..., Any] | None = None,
    peer_log: PeerLog | None = None,
    on_tls_refused: Callable[[str, str], None] | None = None,
    tls_handshake_timeout: float = 10.0,
) -> type[NodeAssociationServer]:
    """A server class carrying these settings, for ``AE.make_server(server_class=...)``.

    pynetdicom builds the server itself from the class, so the settings ride on a subclass.
    Callables become staticmethods, so reading them from an instance does not bind them.
    """
    return type(
        "NodeAssociationServerWithSettings",
        (NodeAssociationServer,),
        {
            "allowed_hosts": frozenset(allowed_hosts),
            "max_associations": max_associations,
            "max_associations_per_host": max_associations_per_host,
            "on_refused": staticmethod(on_refused) if on_refused else None,
            "on_message": staticmethod(on_message) if on_message else None,
            "incoming_file": staticmethod(incoming_file) if incoming_file else None,
            "peer_log": peer_log,
            "on_tls_refused": staticmethod(on_tls_refused) if on_tls_refused else None,
            "tls_handshake_timeout": tls_handshake_timeout,
        },
    )
