"""The node's association server: connection filtering and per-association switches.

Each accepted association is switched, before its threads start, to the event-driven
loops (``reactors``), the bulk-reading socket below and the direct C-STORE responses
(``encoding``); pynetdicom's per-PDU debug log handlers are unbound; and the association
is told where its incoming datasets go (``incoming_file``), which the temp-file factory
installed by ``install()`` reads. Nothing here is process-wide.

On a TLS listener the handshake runs in the connection's own thread, with a time limit,
not in the accepting thread as pynetdicom does it: there, one peer that connects and sends
nothing would stop the listener from accepting anyone, and a failed handshake would vanish
without a word. Here each failure is reported once, with the peer's address and OpenSSL's
reason (no certificate, an untrusted one, plain DICOM on the TLS port).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
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
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from dicom_node.receive.pynetdicom_ext import encoding
from dicom_node.receive.pynetdicom_ext.reactors import accept_with_events
from dicom_node.tls import failure_reason

log = logging.getLogger(__name__)

# The attribute of an Association that names its incoming-file factory (see install()).
INCOMING_FILE_ATTR = "_dn_incoming_file"

# PDUs up to this length are read into one preallocated buffer (DCMTK sends 128 KiB).
_PREALLOCATE_MAX = 4 * 1024 * 1024


class BulkRecvSocket(AssociationSocket):
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


_STANDARD_LOG_HANDLERS = (
    (evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
    (evt.EVT_PDU_RECV, standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, standard_pdu_sent_handler),
)


class NodeRequestHandler(RequestHandler):
    """pynetdicom's connection handler, switching each new association (module docstring)."""

    server: NodeAssociationServer

    def handle(self) -> None:
        if isinstance(self.request, ssl.SSLSocket) and not self._tls_handshake(self.request):
            return
        super().handle()

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
        socket = assoc.dul.socket
        if type(socket) is AssociationSocket:  # not a subclass we do not know
            socket.__class__ = BulkRecvSocket
        accept_with_events(assoc, self.server.on_message)
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
    closed) and ``on_refused`` is told its address. ``on_message`` sees each complete DIMSE
    message in the DUL thread (``accept_with_events``); ``incoming_file`` makes the file
    each incoming dataset is streamed into. With an ``ssl_context``, ``on_tls_refused`` is
    told the address and the reason of each failed TLS handshake, and a handshake not done
    after ``tls_handshake_timeout`` seconds fails.
    """

    allowed_hosts: frozenset[str] = frozenset()
    on_refused: Callable[[str], None] | None = None
    on_message: Callable[[Any], None] | None = None
    incoming_file: Callable[..., Any] | None = None
    on_tls_refused: Callable[[str, str], None] | None = None
    tls_handshake_timeout: float = 10.0

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

    def verify_request(self, request: Any, client_address: Any) -> bool:
        if self.allowed_hosts and client_address[0] not in self.allowed_hosts:
            if self.on_refused is not None:
                self.on_refused(str(client_address[0]))
            return False
        return True


def server_class(
    *,
    allowed_hosts: tuple[str, ...] = (),
    on_refused: Callable[[str], None] | None = None,
    on_message: Callable[[Any], None] | None = None,
    incoming_file: Callable[..., Any] | None = None,
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
            "on_refused": staticmethod(on_refused) if on_refused else None,
            "on_message": staticmethod(on_message) if on_message else None,
            "incoming_file": staticmethod(incoming_file) if incoming_file else None,
            "on_tls_refused": staticmethod(on_tls_refused) if on_tls_refused else None,
            "tls_handshake_timeout": tls_handshake_timeout,
        },
    )
