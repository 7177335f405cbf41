"""A DICOM peer made of raw bytes, for hostile-input tests and latency measurements.

pynetdicom's own requestor cannot send half a PDU, a wrong length or garbage, and its
1 ms polling loops and two threads per association would be measured along with the node.
These helpers write the PDUs with pynetdicom's encoders and read the answers from a plain
socket, so what a test or ``scripts/bench_echo.py`` times is the node.
"""

from __future__ import annotations

import socket
import struct
import time

from pynetdicom import build_context
from pynetdicom.dimse_messages import C_ECHO_RQ
from pynetdicom.dimse_primitives import C_ECHO
from pynetdicom.pdu import A_ASSOCIATE_RQ, A_RELEASE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

# PDU types (PS3.8 9.3)
ASSOCIATE_AC, ASSOCIATE_RJ, PDATA, RELEASE_RP, ABORT = 0x02, 0x03, 0x04, 0x06, 0x07


def associate_rq(called: str = "DICOM_NODE", calling: str = "RAWPEER") -> bytes:
    """An A-ASSOCIATE-RQ offering Verification (context 1, Implicit VR Little Endian)."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    context = build_context(Verification)
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16382
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.0"
    primitive.user_information = [max_length, implementation]
    return bytes(A_ASSOCIATE_RQ(primitive).encode())


def echo_rq(message_id: int = 1) -> bytes:
    """A C-ECHO-RQ on context 1, as one P-DATA-TF PDU."""
    primitive = C_ECHO()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = Verification
    message = C_ECHO_RQ()
    message.primitive_to_message(primitive)
    return b"".join(bytes(P_DATA_TF(pdata).encode()) for pdata in message.encode_msg(1, 16382))


def release_rq() -> bytes:
    return bytes(A_RELEASE_RQ().encode())


def pdu_header(pdu_type: int, length: int) -> bytes:
    """The 6 bytes that announce a PDU: type, reserved, length (big endian)."""
    return struct.pack(">BBL", pdu_type, 0, length)


def connect(port: int, source: str = "127.0.0.1", timeout: float = 30.0) -> socket.socket:
    """A TCP connection to the node on 127.0.0.1 from ``source`` (any 127.x address works
    on Linux loopback: a different "host" for the node's per-host limits)."""
    sock = socket.create_connection(
        ("127.0.0.1", port), timeout=timeout, source_address=(source, 0)
    )
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """The next whole PDU: (type, body); (0, b"") once the peer has closed."""
    head = _read_exactly(sock, 6)
    if len(head) < 6:
        return 0, b""
    pdu_type, _, length = struct.unpack(">BBL", head)
    return pdu_type, _read_exactly(sock, length)


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def associate(port: int, source: str = "127.0.0.1", called: str = "DICOM_NODE") -> socket.socket:
    """An established association (raises if the node does not accept)."""
    sock = connect(port, source)
    sock.sendall(associate_rq(called))
    pdu_type, body = read_pdu(sock)
    if pdu_type != ASSOCIATE_AC:
        sock.close()
        raise ConnectionError(f"association not accepted: PDU type {pdu_type:#04x} {body!r}")
    return sock


def echo(port: int, source: str = "127.0.0.1") -> float:
    """A whole C-ECHO as echoscu does it (connect, associate, echo, release, close);
    returns its seconds. Raises unless every answer is the expected one with Success."""
    start = time.perf_counter()
    sock = associate(port, source)
    try:
        sock.sendall(echo_rq())
        pdu_type, body = read_pdu(sock)
        # The status (0000,0900) is the command set's last element: Success is 0x0000.
        if pdu_type != PDATA or not body.endswith(b"\x00\x00\x00\x09\x02\x00\x00\x00\x00\x00"):
            raise ConnectionError(f"no C-ECHO success: PDU type {pdu_type:#04x}")
        sock.sendall(release_rq())
        if read_pdu(sock)[0] != RELEASE_RP:
            raise ConnectionError("no A-RELEASE-RP")
    finally:
        sock.close()
    return time.perf_counter() - start


def closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the peer closed ``sock`` within ``seconds`` (reading and keeping whatever it
    sent first, e.g. an A-ABORT), and those bytes."""
    deadline = time.monotonic() + seconds
    received = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False, bytes(received)
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return False, bytes(received)
        except ConnectionError:
            return True, bytes(received)
        if not chunk:
            return True, bytes(received)
        received += chunk
