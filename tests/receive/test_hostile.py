"""Hostile input at the DICOM door, sent over real sockets: each refusal is checked for its
status, the memory it cost the node and the log lines it wrote."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite, write_file_meta_info
from pydicom.uid import CTImageStorage, DeflatedExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config

from dicom_node.receive.pynetdicom_ext import transport
from dicom_node.receive.statuses import Status
from tests import raw_peer
from tests.peers import free_port, wait_for_port

GIB = 1024**3
REPO = Path(__file__).resolve().parents[2]


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM (the peak resident size) to VmRSS."""
    Path("/proc/self/clear_refs").write_text("5")


def _deflate_bomb(folder: Path, inflated: int) -> tuple[Path, str]:
    """A Part 10 file of a deflated dataset whose private OB element is ``inflated`` zero
    bytes: about 1 MB on the wire per GiB once inflated."""
    sop_uid = generate_uid()
    head, tail = Dataset(), Dataset()
    head.SOPClassUID = CTImageStorage
    head.SOPInstanceUID = sop_uid
    head.Modality = "CT"
    head.add_new(0x00090010, "LO", "BOMB")
    tail.PatientID = "BOMB"
    tail.StudyInstanceUID = generate_uid()
    tail.SeriesInstanceUID = generate_uid()

    def body(ds: Dataset) -> bytes:
        buffer = io.BytesIO()
        dcmwrite(buffer, ds, implicit_vr=False, little_endian=True)
        return buffer.getvalue()

    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = io.BytesIO()
    out.write(deflater.compress(body(head)))
    out.write(deflater.compress(b"\x09\x00\x10\x10OB\x00\x00" + inflated.to_bytes(4, "little")))
    zeros = bytes(16 * 1024 * 1024)
    for _ in range(inflated // len(zeros)):
        out.write(deflater.compress(zeros))
    out.write(deflater.compress(body(tail)))
    out.write(deflater.flush())

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = folder / "bomb.dcm"
    with open(path, "wb") as fh:
        fh.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(fh, meta)
        fh.write(out.getvalue())
    return path, sop_uid


def _send_raw(port: int, path: Path) -> list[int]:
    """C-STORE a deflated CT file as its bytes stand (pynetdicom's chunked sending), without
    reading the dataset here: the sender shares the node's process and memory figure."""
    ae = AE(ae_title="BOMBER")
    ae.add_requested_context(CTImageStorage, [DeflatedExplicitVRLittleEndian])
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_NODE")
        assert assoc.is_established
        status = assoc.send_c_store(path)
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
    return [int(status.Status)]


def test_a_deflate_bomb_is_refused_without_inflating_it(
    start_node: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = start_node()
    bomb, sop_uid = _deflate_bomb(tmp_path, GIB)
    assert bomb.stat().st_size < 2 * 1024 * 1024  # 1 GiB inflated, ~1 MB sent

    caplog.set_level(logging.INFO, logger="dicom_node")
    _reset_peak_rss()
    before = _rss_kib("VmRSS")
    [status] = _send_raw(node.port, bomb)
    growth_mib = (_rss_kib("VmHWM") - before) / 1024

    assert status == Status.CANNOT_PARSE
    assert growth_mib < 64, f"receiving the bomb grew the node by {growth_mib:.0f} MiB"
    refusals = [r for r in caplog.records if sop_uid in r.getMessage()]
    assert len(refusals) == 1
    assert "inflates past 268435456 bytes (scp.max_inflated_size)" in refusals[0].getMessage()
    # Nothing of it was kept, and the node still serves.
    assert not list(node.settings.spool_dir.glob("*/*/*.dcm"))
    assert not list((node.settings.spool_dir / ".incoming").iterdir())


def test_a_deflated_dataset_under_the_bound_is_stored(start_node: Any, tmp_path: Path) -> None:
    node = start_node(scp={"max_inflated_size": 64 * 1024 * 1024})
    small, sop_uid = _deflate_bomb(tmp_path, 16 * 1024 * 1024)
    assert _send_raw(node.port, small) == [Status.SUCCESS]
    [stored] = node.settings.spool_dir.glob(f"*/*/{sop_uid}.dcm")
    assert _dataset_bytes(stored) == _dataset_bytes(small)  # as sent, still deflated


def _dataset_bytes(path: Path) -> bytes:
    """What follows the File Meta (the node writes its own, with its implementation UID)."""
    data = path.read_bytes()
    return data[144 + int.from_bytes(data[140:144], "little") :]


# -- peers that stall, trickle, flood or send garbage (raw sockets) -----------------------
#
# Each test starts a node with short timeouts (network 2 s, ARTIM 2 s), lets one hostile
# peer (or 32) hold its connections, checks that a C-ECHO from another address still
# succeeds meanwhile, and bounds what the peer cost: time until the node closed it
# (generous: 10 s), memory, and log lines.

SHORT = {"network_timeout": 2, "acse_timeout": 2}
CLOSE_WITHIN = 10.0


def _peer_lines(caplog: pytest.LogCaptureFixture, host: str, expected: int = 1) -> list[str]:
    """Every line the node wrote about ``host`` but the ordinary "association accepted",
    and any pynetdicom warning or error (which do not name the peer: all of them count).

    Waits (up to CLOSE_WITHIN) until ``expected`` lines are there: the node writes a line
    in the association's thread, which may come a moment after the peer saw the answer
    (an A-ASSOCIATE-RJ is sent, then logged)."""
    deadline = time.monotonic() + CLOSE_WITHIN
    while True:
        lines = []
        for record in caplog.records:
            message = record.getMessage()
            if record.name.startswith("pynetdicom") and record.levelno >= logging.WARNING:
                lines.append(f"{record.name}: {message}")
            elif (
                record.name.startswith("dicom_node")
                and host in message
                and not message.startswith("association accepted")
            ):
                lines.append(message)
        if len(lines) >= expected or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


def _echo_ok(port: int, source: str = "127.0.0.2") -> bool:
    try:
        raw_peer.echo(port, source)
    except OSError:
        return False
    return True


def _send_forever(sock: socket.socket, chunk: bytes, pause: float = 0.0) -> threading.Thread:
    """Send ``chunk`` again and again (sleeping ``pause`` between) until the node closes."""

    def run() -> None:
        try:
            while True:
                sock.sendall(chunk)
                if pause:
                    time.sleep(pause)
        except OSError:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("sent", [0, 10], ids=["silent", "10-bytes-of-rq"])
def test_stalled_connections_keep_slots_for_other_peers(
    start_node: Any, caplog: pytest.LogCaptureFixture, sent: int
) -> None:
    """32 connections stay silent, or send 10 bytes of an A-ASSOCIATE-RQ and go silent:
    8 hold slots (scp.max_associations_per_host) until the ARTIM timer closes them, the
    other 24 get an A-ASSOCIATE-RJ at once, and a C-ECHO from another host succeeds
    meanwhile."""
    node = start_node(scp=SHORT)
    caplog.set_level(logging.INFO, logger="dicom_node")
    started = time.monotonic()
    stalled = [raw_peer.connect(node.port) for _ in range(32)]
    for sock in stalled:
        sock.sendall(raw_peer.associate_rq()[:sent])
    server = node.node.scp._server
    limits = server.limits
    per_host = node.settings.scp.max_associations_per_host
    assert per_host == 8
    assert _wait(lambda: limits.count("127.0.0.1") == per_host)
    assert _echo_ok(node.port)

    answers = []
    for sock in stalled:
        closed, data = raw_peer.closed_within(sock, CLOSE_WITHIN - (time.monotonic() - started))
        assert closed, "a stalled connection is still open"
        answers.append(data)
        sock.close()
    assert answers.count(transport.LIMIT_EXCEEDED_RJ) == 32 - per_host
    assert answers.count(b"") == per_host  # closed by the ARTIM timer, nothing to say
    assert _wait(lambda: limits.count() == 0)
    # 24 refusals and 8 ARTIM closings, within 2 s: the host's budget writes 10 of them.
    lines = _peer_lines(caplog, "127.0.0.1", expected=10)
    assert len(lines) == node.node.scp.peer_log.burst == 10, lines


def test_a_connection_closed_before_its_request_frees_its_slot_at_once(start_node: Any) -> None:
    """pynetdicom kept the acceptor thread (here: the slot) waiting for the A-ASSOCIATE-RQ
    for the whole ACSE timeout (30 s) after the peer had gone; a port probe of a load
    balancer does exactly that every few seconds."""
    node = start_node()
    assert node.settings.scp.acse_timeout == 30
    limits = node.node.scp._server.limits
    for _ in range(node.settings.scp.max_associations_per_host + 2):
        raw_peer.connect(node.port).close()
    assert _wait(lambda: limits.count() == 0, seconds=5)
    assert _echo_ok(node.port, "127.0.0.1")


def _associated_peer(node: Any, source: str) -> socket.socket:
    sock = raw_peer.associate(node.port, source)
    assert node.node.scp._server.limits.count(source) == 1
    return sock


@pytest.mark.parametrize("kind", ["partial", "trickle"])
def test_a_pdu_that_never_completes_is_dropped(
    start_node: Any, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """Inside an association: a P-DATA-TF header and 10 of its 1000 bytes, or a byte every
    0.5 s (each restarts pynetdicom's idle timer). The PDU must be whole within
    scp.network_timeout (2 s): A-ABORT, connection closed."""
    node = start_node(scp=SHORT)
    caplog.set_level(logging.INFO, logger="dicom_node")
    host = "127.0.0.3"
    sock = _associated_peer(node, host)
    pdu = raw_peer.pdu_header(raw_peer.PDATA, 1000) + bytes(1000)
    if kind == "partial":
        sock.sendall(pdu[:16])
    else:

        def trickle() -> None:
            with contextlib.suppress(OSError):
                for byte in pdu:
                    sock.send(bytes([byte]))
                    time.sleep(0.5)

        threading.Thread(target=trickle, daemon=True).start()
    time.sleep(0.5)
    assert _echo_ok(node.port)
    closed, data = raw_peer.closed_within(sock, CLOSE_WITHIN)
    sock.close()
    assert closed
    assert data[:1] == bytes([raw_peer.ABORT])
    [line] = _peer_lines(caplog, host)
    assert "scp.network_timeout" in line
    if kind == "trickle":  # every byte restarts the idle timer: only the PDU's deadline
        assert "PDU incomplete after 2 s" in line
    assert _wait(lambda: node.node.scp._server.limits.count() == 0)


@pytest.mark.parametrize(
    ("pdu_type", "length"),
    [
        (0x01, 0xFFFFFFFF),  # A-ASSOCIATE-RQ of 4 GiB, before any association
        (0x05, 0xFFFFFFFF),  # A-RELEASE-RQ of 4 GiB (its body is 4 bytes)
    ],
)
def test_a_huge_length_header_is_refused_from_the_header(
    start_node: Any, caplog: pytest.LogCaptureFixture, pdu_type: int, length: int
) -> None:
    node = start_node(scp=SHORT)
    caplog.set_level(logging.INFO, logger="dicom_node")
    host = "127.0.0.4"
    sock = raw_peer.connect(node.port, host)
    sock.sendall(raw_peer.pdu_header(pdu_type, length) + bytes(100))
    closed, data = raw_peer.closed_within(sock, CLOSE_WITHIN)
    sock.close()
    assert closed
    assert data[:1] == bytes([raw_peer.ABORT])
    [line] = _peer_lines(caplog, host)
    assert f"PDU type 0x{pdu_type:02X} of {length} bytes, over the" in line
    assert _echo_ok(node.port)


def test_an_oversized_pdata_is_aborted_before_it_is_read(
    start_node: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A 96 MiB P-DATA-TF against the 4 MiB maximum (scp.max_pdu_size): A-ABORT from its
    header, nothing of it allocated (the node's memory is this process's)."""
    node = start_node(scp=SHORT)
    max_pdu = node.settings.scp.max_pdu_size
    assert max_pdu == 4 * 1024 * 1024
    caplog.set_level(logging.INFO, logger="dicom_node")
    host = "127.0.0.5"
    sock = _associated_peer(node, host)
    zeros = bytes(1024 * 1024)

    _reset_peak_rss()
    before = _rss_kib("VmRSS")
    sock.sendall(raw_peer.pdu_header(raw_peer.PDATA, 96 * 1024 * 1024))
    sender = _send_forever(sock, zeros)
    closed, data = raw_peer.closed_within(sock, CLOSE_WITHIN)
    growth_mib = (_rss_kib("VmHWM") - before) / 1024
    sock.close()
    sender.join(timeout=CLOSE_WITHIN)

    assert closed
    assert data[:1] == bytes([raw_peer.ABORT])
    assert growth_mib < 16, f"the oversized PDU grew the node by {growth_mib:.0f} MiB"
    [line] = _peer_lines(caplog, host)
    assert f"PDU type 0x04 of {96 * 1024 * 1024} bytes, over the {max_pdu} accepted" in line
    assert "scp.max_pdu_size" in line
    assert _echo_ok(node.port)


@pytest.mark.parametrize("kind", ["0x9F", "random", "random-associated"])
def test_garbage_is_closed_at_the_first_invalid_pdu_with_one_line(
    start_node: Any, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """4 MiB of 0x9F, or of random bytes (before or inside an association): the first
    invalid PDU is one line, an A-ABORT and the connection closed."""
    node = start_node(scp=SHORT)
    caplog.set_level(logging.INFO, logger="dicom_node")
    host = "127.0.0.6"
    if kind == "0x9F":
        garbage = b"\x9f" * (4 * 1024 * 1024)
    else:
        garbage = random.Random(kind).randbytes(4 * 1024 * 1024)
    if kind.endswith("associated"):
        sock = _associated_peer(node, host)
    else:
        sock = raw_peer.connect(node.port, host)
    sender = _send_forever(sock, garbage)
    closed, data = raw_peer.closed_within(sock, CLOSE_WITHIN)
    sock.close()
    sender.join(timeout=CLOSE_WITHIN)
    assert closed
    assert data[:1] == bytes([raw_peer.ABORT])
    lines = _peer_lines(caplog, host)
    assert len(lines) == 1, lines
    assert _echo_ok(node.port)
    assert _wait(lambda: node.node.scp._server.limits.count() == 0)


def test_log_lines_per_bad_peer_are_bounded(
    start_node: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer that sends garbage on 100 connections writes at most the burst of its log
    budget; another bad peer still gets its first line written."""
    node = start_node(scp=SHORT)
    caplog.set_level(logging.INFO, logger="dicom_node")
    for _ in range(100):
        with raw_peer.connect(node.port, "127.0.0.7") as sock:
            sock.sendall(b"\x9f" * 64)
            assert raw_peer.closed_within(sock, CLOSE_WITHIN)[0]
    burst = node.node.scp.peer_log.burst
    assert len(_peer_lines(caplog, "127.0.0.7", expected=burst)) == burst
    with raw_peer.connect(node.port, "127.0.0.8") as sock:
        sock.sendall(b"\x9f" * 64)
        assert raw_peer.closed_within(sock, CLOSE_WITHIN)[0]
    assert len(_peer_lines(caplog, "127.0.0.8")) == 1


def test_a_rejected_association_is_one_line_naming_what_was_asked(
    start_node: Any, caplog: pytest.LogCaptureFixture
) -> None:
    node = start_node()
    caplog.set_level(logging.INFO, logger="dicom_node")
    host = "127.0.0.9"
    with raw_peer.connect(node.port, host) as sock:
        sock.sendall(raw_peer.associate_rq(called="SOMEONE_ELSE", calling="MODALITY7"))
        pdu_type, body = raw_peer.read_pdu(sock)
    assert pdu_type == raw_peer.ASSOCIATE_RJ
    assert body[1:4] == bytes([0x01, 0x01, 0x07])  # permanent, service user, called AE
    [line] = _peer_lines(caplog, host)
    assert line == (
        f"association rejected: 'MODALITY7' from {host} asked for called AE "
        "'SOMEONE_ELSE': rejected (permanent): called AE title not recognised "
        "(not our node.ae_title)"
    )


def _wait(condition: Any, seconds: float = CLOSE_WITHIN) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


def test_sigterm_stops_the_node_whatever_its_peers_do(tmp_path: Path) -> None:
    """``dicom-node serve`` with the default timeouts (60 s network, 30 s ARTIM), held by a
    silent connection, a half A-ASSOCIATE-RQ, an association inside a P-DATA-TF and one
    trickling a byte a second: SIGTERM ends it within seconds, each peer's connection
    closed (the associated ones after an A-ABORT)."""
    port = free_port()
    config = tmp_path / "node.toml"
    config.write_text(
        f"""
[node]
data_dir = "{tmp_path / "data"}"
[scp]
port = {port}
[workers]
processes = 0
[web]
enabled = false
"""
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(tmp_path / "node.log", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dicom_node.cli", "--config", str(config), "serve"],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, timeout=60)
        silent = raw_peer.connect(port)
        half_rq = raw_peer.connect(port)
        half_rq.sendall(raw_peer.associate_rq()[:10])
        in_pdu = raw_peer.associate(port)
        in_pdu.sendall(raw_peer.pdu_header(raw_peer.PDATA, 1000) + bytes(10))
        trickler = raw_peer.associate(port)
        _send_forever(trickler, b"\x04", pause=1.0)
        assert _echo_ok(port, "127.0.0.2")

        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=60)
        took = time.monotonic() - signalled
        log = (tmp_path / "node.log").read_text(errors="replace")
        assert returncode == 0, log
        assert took < CLOSE_WITHIN, f"SIGTERM took {took:.1f} s\n{log}"
        for sock in (silent, half_rq):
            assert raw_peer.closed_within(sock, 1)[0]
        for sock in (in_pdu, trickler):
            closed, data = raw_peer.closed_within(sock, 1)
            assert closed and data[:1] == bytes([raw_peer.ABORT])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
