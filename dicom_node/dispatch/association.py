"""Ask a peer for an association, and say in one line why there is none.

pynetdicom answers a failed ``associate()`` with an association that is not established and
logs the cause. An operator needs the cause itself, because each has another fix: nothing
listens on the port (start the peer, check the port), no answer (host down, firewall), a
rejection (PS3.8 9.3.4 A-ASSOCIATE-RJ: our calling AE title is not allowed there, or the
called AE title is not the peer's), or an association accepted with none of the proposed
presentation contexts (the peer does not take this SOP class or transfer syntax). This
module collects what pynetdicom knows (the A-ASSOCIATE-RJ result, source and reason, the
rejected contexts) and, only when no TCP connection was made, tries one plain connection to
tell a refused connection from an unreachable or unknown host.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Any

from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.association import Association

from dicom_node.tls import HandshakeRecordingContext

# (result source, reason) of an A-ASSOCIATE-RJ (PS3.8 Table 9-21): what it means, and what
# the operator can change. ``{calling}``, ``{called}`` and ``{calling_option}`` are filled in.
_REJECTIONS: dict[tuple[int, int], str] = {
    (1, 1): "the peer gave no reason; check its log and its list of known AEs",
    (1, 2): "the peer does not support the DICOM application context",
    (1, 3): "calling AE title {calling!r} is not allowed there; have the peer accept it, or "
    "call as an AE it knows ({calling_option})",
    (1, 7): "called AE title {called!r} is not recognised there; use the AE title the peer "
    "is configured with",
    (2, 1): "the peer's association layer gave no reason",
    (2, 2): "the peer does not support DICOM protocol version 1",
    (3, 1): "the peer is busy (temporary congestion); try again later",
    (3, 2): "the peer has reached its limit of associations; try again later",
}

# Presentation context results (PS3.8 Table 9-18) other than acceptance.
_CONTEXT_RESULTS = {
    1: "refused by the peer",
    2: "refused by the peer",
    3: "SOP class not supported",
    4: "transfer syntax not supported",
}


class NoAssociationError(Exception):
    """No association with the peer; the message says why and what to change, in one line."""


@dataclass(frozen=True)
class Peer:
    """Where an association goes: the called AE title, host and port."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def request(
    ae: AE,
    peer: Peer,
    *,
    calling_option: str = "--aet",
    tls_args: tuple[HandshakeRecordingContext, str] | None = None,
) -> Association:
    """Request an association; an established one, or an error saying why there is none.

    Parameters
    ----------
    ae
        The requesting AE, with its presentation contexts and timeouts set.
    peer
        The called AE title and its address.
    calling_option
        What changes our calling AE title, named in the advice when the peer does not
        accept it (``--aet`` on the command line, ``node.ae_title`` for the node).
    tls_args
        pynetdicom's ``tls_args`` for an association over TLS; a failed handshake is
        then the reason given.

    Raises
    ------
    NoAssociationError
        Not connected (refused, no answer, unknown host), rejected (with the reason of the
        A-ASSOCIATE-RJ), no presentation context accepted, or aborted by the peer.
    """
    connected: list[bool] = []

    def _on_open(_event: Any) -> None:
        connected.append(True)

    started = time.monotonic()
    try:
        assoc = ae.associate(
            peer.host,
            peer.port,
            ae_title=peer.ae_title,
            evt_handlers=[(evt.EVT_CONN_OPEN, _on_open)],
            tls_args=tls_args,
        )
    except socket.gaierror:  # pynetdicom resolves the host before it makes an association
        raise NoAssociationError(
            f"cannot connect to {peer}: host name {peer.host!r} cannot be resolved; check the host"
        ) from None
    if assoc.is_established:
        return assoc
    if tls_args is not None and tls_args[0].handshake_error:
        raise NoAssociationError(
            f"TLS handshake with {peer} failed: {tls_args[0].handshake_error}; check the "
            "certificates (--tls-ca, --tls-cert, --tls-key) and the peer's TLS settings"
        )
    elapsed = time.monotonic() - started
    raise NoAssociationError(_why(assoc, peer, ae, bool(connected), elapsed, calling_option))


def _why(
    assoc: Association, peer: Peer, ae: AE, connected: bool, elapsed: float, calling_option: str
) -> str:
    """Why ``assoc`` is not established, in one line."""
    calling = str(ae.ae_title).strip()
    if assoc.is_rejected:
        return _rejected(assoc, peer, calling, calling_option)
    if not connected:
        return _not_connected(peer, elapsed, ae.connection_timeout)
    if assoc.acceptor.primitive is not None and assoc.rejected_contexts:
        return _no_context(assoc, peer)
    acse_timeout = ae.acse_timeout
    if acse_timeout is not None and elapsed >= acse_timeout * 0.95:
        return (
            f"{peer} accepted the connection but did not answer the association request "
            f"within {acse_timeout:g} s; check that the port is the peer's DICOM port"
        )
    return (
        f"{peer} closed the connection without accepting the association; check that the "
        "port is the peer's DICOM port and that the peer accepts this address"
    )


def _rejected(assoc: Association, peer: Peer, calling: str, calling_option: str) -> str:
    rj = assoc.acceptor.primitive
    source = int(getattr(rj, "result_source", 0) or 0)
    reason = int(getattr(rj, "diagnostic", 0) or 0)
    permanence = "permanently" if getattr(rj, "result", 1) == 1 else "for now"
    known = _REJECTIONS.get((source, reason))
    if known is None:
        what = f"{getattr(rj, 'source_str', '?')}: {getattr(rj, 'reason_str', '?')}"
    else:
        what = known.format(calling=calling, called=peer.ae_title, calling_option=calling_option)
    return f"association rejected by {peer} ({permanence}): {what}"


def _no_context(assoc: Association, peer: Peer) -> str:
    refused = []
    for cx in assoc.rejected_contexts:
        name = UID(str(cx.abstract_syntax)).name
        refused.append(f"{name} ({_CONTEXT_RESULTS.get(int(cx.result or 0), 'refused')})")
    shown = "; ".join(dict.fromkeys(refused))
    return (
        f"{peer} accepted no presentation context: {shown}; have the peer accept this SOP "
        "class and transfer syntax, or convert the files"
    )


def _not_connected(peer: Peer, elapsed: float, timeout: float | None) -> str:
    where = f"cannot connect to {peer}"
    if timeout is not None and elapsed >= timeout * 0.95:
        return _no_answer(where, timeout)
    # pynetdicom only logs why the connection failed; one plain connection tells the
    # operator which of the usual causes it is (each fails at once, except a timeout).
    try:
        with socket.create_connection((peer.host, peer.port), timeout=timeout or 10.0):
            pass
    except socket.gaierror:
        return f"{where}: host name {peer.host!r} cannot be resolved; check the host"
    except ConnectionRefusedError:
        return (
            f"{where}: connection refused (nothing listens on port {peer.port} there); "
            "check the host and port, or start the peer"
        )
    except TimeoutError:
        return _no_answer(where, timeout or 10.0)
    except OSError as exc:
        return f"{where}: {exc.strerror or exc}; check the host and the network"
    except OverflowError:
        return f"{where}: port {peer.port} is out of range 1-65535"
    return f"{where}: the connection failed, but the port answers now; try again"


def _no_answer(where: str, timeout: float) -> str:
    return (
        f"{where}: no answer within {timeout:g} s (host down, or a firewall drops the "
        "connection); check the host, port and firewall, or wait longer with --timeout"
    )
