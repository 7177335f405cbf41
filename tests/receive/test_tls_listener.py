"""The TLS listener (PS3.15 B.9) beside the plain one, against real TLS peers.

DCMTK ``storescu``/``echoscu +tls`` (OpenSSL), pynetdicom with an ``ssl`` context and Orthanc
with ``DicomTlsEnabled`` connect to a node with both listeners: mutual TLS is accepted and
what arrives is stored byte for byte; a client without a certificate, with a self-signed
one, plain DICOM on the TLS port, an old TLS version and a non-BCP 195 cipher suite are
refused, each with one log line naming the address and the reason; a connection that never
starts its handshake neither blocks the listener nor stays open.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from sqlalchemy import select

from dicom_node.config import StartupError
from dicom_node.store.db import Instance, Series
from dicom_node.tls import client_context
from tests import raw_peer
from tests.commands.test_serve import _config, _serve, _serve_fails, _stop, _wait_ready
from tests.dicom_files import dataset_bytes, pydicom_file
from tests.peers import (
    DCMTK_ENV,
    OrthancTls,
    TlsFiles,
    free_port,
    have_dcmtk,
    have_orthanc,
    pynetdicom_send,
    run_orthanc,
    storescu,
)

dcmtk = pytest.mark.skipif(not have_dcmtk(), reason="DCMTK (storescu) not installed")
SCP_LOG = "dicom_node.receive.scp"


def tls_section(files: TlsFiles, **keys: Any) -> dict[str, Any]:
    """``[scp.tls]`` on a free port with the test CA, the server certificate and mutual TLS."""
    return {
        "tls": {
            "enabled": True,
            "port": free_port(),
            "certificate": str(files.server_cert),
            "private_key": str(files.server_key),
            "ca_certificates": str(files.ca),
            **keys,
        }
    }


def node_with_tls(start_node: Any, files: TlsFiles, **keys: Any) -> Any:
    node = start_node(scp=tls_section(files, **keys))
    node.tls_port = node.node.scp.bound_tls_port
    return node


def dcmtk_tls(files: TlsFiles, cert: Path | None = None, key: Path | None = None) -> list[str]:
    """storescu/echoscu options: TLS with our client certificate (or ``+tla``: none)."""
    if cert is None or key is None:
        return ["+tla", "+cf", str(files.ca)]
    return ["+tls", str(key), str(cert), "+cf", str(files.ca)]


def refusals(caplog: pytest.LogCaptureFixture, expected: int = 1, timeout: float = 10) -> list[str]:
    """The node's refusal lines, once ``expected`` of them are there (or ``timeout`` passed).

    The node logs a refusal in the connection's own thread after its side of the handshake
    fails; the client may see its own failure first (with TLS 1.3 the client finishes before
    the server checks its certificate), so the line can come a moment after the client
    returns."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [
            r.getMessage()
            for r in caplog.records
            if r.name == SCP_LOG and r.getMessage().startswith("TLS connection from")
        ]
        if len(lines) >= expected or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


def _ct(path: Path, rows: int = 64, seed: int = 0) -> Path:
    """A CT instance with random pixels (incompressible: each one is real TLS traffic)."""
    pixels = np.random.default_rng(seed).integers(0, 4096, (rows, rows), dtype=np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["tls-study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["tls-series"])
    ds.PatientID, ds.Modality = "TLS1", "CT"
    ds.Rows = ds.Columns = rows
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation, ds.SamplesPerPixel = 0, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def stored_bytes(node: Any, path: Path) -> bytes:
    uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    (row,) = node.query(select(Instance).where(Instance.sop_instance_uid == uid))
    return dataset_bytes(Path(row.path))


# -- accepted ------------------------------------------------------------------------------


@dcmtk
def test_dcmtk_mutual_tls_and_plain_side_by_side(
    start_node: Any, tls_files: TlsFiles, tmp_path: Path
) -> None:
    node = node_with_tls(start_node, tls_files)
    files = [_ct(tmp_path / f"{i}.dcm", seed=i) for i in range(12)]
    mutual = dcmtk_tls(tls_files, tls_files.client_cert, tls_files.client_key)
    done = storescu(node.tls_port, files[:10], extra=mutual)
    assert done.returncode == 0, done.stderr
    echo = subprocess.run(
        ["echoscu", *mutual, "-aec", "DICOM_NODE", "127.0.0.1", str(node.tls_port)],
        env=DCMTK_ENV,
        capture_output=True,
        timeout=60,
    )
    assert echo.returncode == 0, echo.stderr
    # The plain listener still answers plain DICOM, and does not speak TLS.
    assert storescu(node.port, files[10:]).returncode == 0
    assert storescu(node.port, [files[0]], extra=mutual).returncode != 0
    for path in files:
        assert stored_bytes(node, path) == dataset_bytes(path)


@dcmtk
def test_large_instance_and_many_pdus_over_tls(
    start_node: Any, tls_files: TlsFiles, tmp_path: Path
) -> None:
    """Byte-exact storage through the event-driven DUL over TLS: one 8 MiB instance in
    DCMTK's 128 KiB PDUs, and 30 instances in 4 KiB PDUs from pynetdicom, so that a TLS
    record often holds several PDUs that OpenSSL has decrypted before select() looks (the
    reactor checks ``pending()``; were it not to, each such wait would last one tick)."""
    node = node_with_tls(start_node, tls_files)
    big = _ct(tmp_path / "big.dcm", rows=2048, seed=99)  # 8 MiB of pixels
    done = storescu(
        node.tls_port,
        [big],
        extra=dcmtk_tls(tls_files, tls_files.client_cert, tls_files.client_key),
    )
    assert done.returncode == 0, done.stderr
    assert stored_bytes(node, big) == dataset_bytes(big)
    small = [_ct(tmp_path / f"s{i}.dcm", rows=40, seed=200 + i) for i in range(30)]
    context = client_context(
        ca_certificates=tls_files.ca,
        certificate=tls_files.client_cert,
        private_key=tls_files.client_key,
    )
    statuses = pynetdicom_send(node.tls_port, small, max_pdu=4096, tls_args=(context, "127.0.0.1"))
    assert statuses == [0x0000] * len(small)
    for path in small:
        assert stored_bytes(node, path) == dataset_bytes(path)


@pytest.mark.skipif(not have_orthanc(), reason="Orthanc not installed")
@pytest.mark.orthanc
def test_orthanc_pushes_over_mutual_tls(
    start_node: Any, tls_files: TlsFiles, tmp_path: Path
) -> None:
    section = tls_section(tls_files)
    tls_port = section["tls"]["port"]
    node_entry = {"AET": "DICOM_NODE", "Host": "127.0.0.1", "Port": tls_port, "UseDicomTls": True}
    orthanc_tls = OrthancTls(tls_files.client_cert, tls_files.client_key, tls_files.ca)
    with run_orthanc(
        tmp_path / "orthanc", modalities={"node": node_entry}, tls=orthanc_tls
    ) as pacs:
        node = start_node(scp=section)
        pacs.upload(pydicom_file("CT_small.dcm"))
        study = pacs.get("/studies")[0]
        pacs.post("/modalities/node/store", {"Resources": [study], "Synchronous": True})
        (series,) = node.query(select(Series))
        assert series.calling_ae == "ORTHANC"
        (instance,) = node.query(select(Instance))
        assert (
            instance.sop_instance_uid
            == pydicom.dcmread(pydicom_file("CT_small.dcm")).SOPInstanceUID
        )


def test_optional_client_certificate(
    start_node: Any, tls_files: TlsFiles, caplog: pytest.LogCaptureFixture
) -> None:
    """``require_client_certificate = false``: a sender without a certificate is accepted;
    one with a certificate our CAs did not sign is still refused."""
    caplog.set_level(logging.INFO)
    node = node_with_tls(start_node, tls_files, require_client_certificate=False)
    anonymous = client_context(ca_certificates=tls_files.ca)
    assert _echo(node.tls_port, anonymous) == 0x0000
    untrusted = client_context(
        ca_certificates=tls_files.ca,
        certificate=tls_files.untrusted_cert,
        private_key=tls_files.untrusted_key,
    )
    assert _echo(node.tls_port, untrusted) is None
    assert refusals(caplog) == [
        "TLS connection from 127.0.0.1 refused: certificate verify failed: self-signed certificate"
    ]


def _echo(port: int, context: ssl.SSLContext) -> int | None:
    """C-ECHO over TLS with pynetdicom: the status, None when no association came up."""
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(Verification)
    ae.connection_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_NODE", tls_args=(context, "localhost"))
    if not assoc.is_established:
        return None
    status = assoc.send_c_echo()
    assoc.release()
    return int(status.Status)


# -- refused, one line each ------------------------------------------------------------------


@dcmtk
def test_refused_clients_are_logged_with_address_and_reason(
    start_node: Any, tls_files: TlsFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    node = node_with_tls(start_node, tls_files)
    ct = pydicom_file("CT_small.dcm")
    cases = [
        (dcmtk_tls(tls_files), "peer did not return a certificate"),
        (
            dcmtk_tls(tls_files, tls_files.untrusted_cert, tls_files.untrusted_key),
            "certificate verify failed: self-signed certificate",
        ),
        ([], "wrong version number (the peer does not speak TLS: plain DICOM on a TLS port?)"),
    ]
    for options, reason in cases:
        caplog.clear()
        done = storescu(node.tls_port, [ct], extra=options)
        assert done.returncode != 0, options
        assert refusals(caplog) == [f"TLS connection from 127.0.0.1 refused: {reason}"], options
    assert node.query(select(Instance)) == []
    assert node.node.scp.stats.rejected_associations == len(cases)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_old_tls_and_weak_ciphers_refused(
    start_node: Any, tls_files: TlsFiles, caplog: pytest.LogCaptureFixture
) -> None:
    """The BCP 195 non-downgrading profile: no TLS 1.1, and in TLS 1.2 no suite without
    forward secrecy or AEAD, even when the client offers nothing else."""
    caplog.set_level(logging.INFO)
    node = node_with_tls(start_node, tls_files, require_client_certificate=False)

    def handshake(configure: Any) -> str | None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(tls_files.ca)
        configure(context)
        with socket.create_connection(("127.0.0.1", node.tls_port), timeout=30) as raw:
            try:
                with context.wrap_socket(raw, server_hostname="localhost") as tls:
                    return str(tls.version())
            except ssl.SSLError:
                return None

    def tls11(context: ssl.SSLContext) -> None:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let our client offer TLS 1.1 at all
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1

    def rsa_cbc(context: ssl.SSLContext) -> None:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers("AES128-SHA256")  # RSA key exchange, CBC: not BCP 195

    def tls12_bcp195(context: ssl.SSLContext) -> None:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers("ECDHE-RSA-AES256-GCM-SHA384")

    assert handshake(tls11) is None
    assert handshake(rsa_cbc) is None
    assert handshake(tls12_bcp195) == "TLSv1.2"
    assert handshake(lambda context: None) == "TLSv1.3"
    # Each handshake fails in its connection's own thread: the two lines may come in
    # either order.
    assert sorted(refusals(caplog, expected=2)) == [
        "TLS connection from 127.0.0.1 refused: no shared cipher",
        "TLS connection from 127.0.0.1 refused: unsupported protocol",
    ]


@dcmtk
def test_silent_connection_neither_blocks_nor_stays(
    start_node: Any, tls_files: TlsFiles, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer that connects and sends nothing: others are served meanwhile (pynetdicom
    would do the handshake in the accepting thread, blocked), and it is closed after
    ``handshake_timeout`` with a line saying so."""
    caplog.set_level(logging.INFO)
    node = node_with_tls(start_node, tls_files, handshake_timeout=1)
    with socket.create_connection(("127.0.0.1", node.tls_port), timeout=30) as silent:
        done = storescu(
            node.tls_port,
            [pydicom_file("CT_small.dcm")],
            extra=["-to", "20", *dcmtk_tls(tls_files, tls_files.client_cert, tls_files.client_key)],
        )
        assert done.returncode == 0, done.stderr
        assert silent.recv(1) == b""  # closed by the node, not by our 30 s timeout
    assert refusals(caplog) == [
        "TLS connection from 127.0.0.1 refused: no TLS handshake within the time allowed"
    ]


def test_tls_only_opens_no_plain_port(start_node: Any, tls_files: TlsFiles) -> None:
    node = node_with_tls(start_node, tls_files, only=True)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", node.settings.scp.port), timeout=5).close()
    context = client_context(
        ca_certificates=tls_files.ca,
        certificate=tls_files.client_cert,
        private_key=tls_files.client_key,
    )
    assert _echo(node.tls_port, context) == 0x0000
    assert node.node.status()["scp_listening"] is True


# -- start-up: one line naming the setting and the file -------------------------------------


def test_tls_port_in_use_names_its_setting(start_node: Any, tls_files: TlsFiles) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        section = tls_section(tls_files)
        section["tls"]["port"] = busy.getsockname()[1]
        with pytest.raises(StartupError) as info:
            start_node(scp=section)
    assert str(info.value).startswith(f"scp.tls.port {section['tls']['port']} on 127.0.0.1 is")
    assert "DICOM_NODE__SCP__TLS__PORT" in str(info.value)


def test_unusable_certificate_stops_serve_in_one_line(tls_files: TlsFiles, tmp_path: Path) -> None:
    config = _config(tmp_path, tmp_path / "data", free_port())
    tls_port = free_port()
    base = config.read_text()

    def fails_with(**keys: str) -> str:
        files = {
            "certificate": str(tls_files.server_cert),
            "private_key": str(tls_files.server_key),
            "ca_certificates": str(tls_files.ca),
            **keys,
        }
        table = "\n".join(f'{k} = "{v}"' for k, v in files.items())
        config.write_text(f"{base}\n[scp.tls]\nenabled = true\nport = {tls_port}\n{table}\n")
        return _serve_fails(config)

    missing = tmp_path / "missing.pem"
    message = fails_with(certificate=str(missing))
    assert f"scp.tls.certificate ({config})" in message
    assert f"{missing}: cannot read: No such file or directory" in message
    message = fails_with(private_key=str(tls_files.client_key))
    assert "scp.tls.private_key" in message and "is not the key of the certificate" in message
    message = fails_with(ca_certificates=str(tls_files.server_key))
    assert "scp.tls.ca_certificates" in message and "no PEM certificate in it" in message
    # Nothing was bound or created: the node stopped before it touched its folder.
    assert not (tmp_path / "data" / "dicom-node.db").exists()


@dcmtk
def test_serve_tls_only(tls_files: TlsFiles, tmp_path: Path) -> None:
    """A real ``dicom-node serve`` with only the TLS door: its banner names it, DCMTK sends
    over mutual TLS, the plain port stays closed. A forward route sends the series back to
    the node over TLS trusting the wrong CA: the attempt fails with the reason in one log
    line each side, and no traceback (pynetdicom's is filtered)."""
    plain, tls_port = free_port(), free_port()
    config = _config(tmp_path, tmp_path / "data", plain)
    text = config.read_text().replace("routes = []\ndestinations = []\n", "")
    config.write_text(
        f"""
[[destinations]]
name = "self"
ae_title = "DICOM_NODE"
host = "127.0.0.1"
port = {tls_port}
backoff_seconds = 60
tls = {{ ca_certificates = "{tls_files.untrusted_cert}" }}

[[routes]]
name = "back"
match = {{ Modality = "^CT$" }}
forward = true
destinations = ["self"]
{text}
[completion]
quiet_seconds = 0.5
[scp.tls]
enabled = true
only = true
port = {tls_port}
certificate = "{tls_files.server_cert}"
private_key = "{tls_files.server_key}"
ca_certificates = "{tls_files.ca}"
"""
    )
    log = tmp_path / "serve.log"
    proc = _serve(config, log)
    try:
        _wait_ready(proc, log)
        assert f"on TLS 127.0.0.1:{tls_port}; data in" in log.read_text()
        mutual = dcmtk_tls(tls_files, tls_files.client_cert, tls_files.client_key)
        assert storescu(tls_port, [pydicom_file("CT_small.dcm")], extra=mutual).returncode == 0
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", plain), timeout=5).close()
        wait_for_text(log, "failed, attempt 1: TLS handshake with DICOM_NODE@127.0.0.1")
        text = log.read_text()
        assert "certificate verify failed: self-signed certificate in certificate chain" in text
        assert "refused: tlsv1 alert unknown ca (the peer does not trust the CA of our" in text
        assert "Traceback" not in text
    finally:
        _stop(proc)


def wait_for_text(path: Path, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        if time.monotonic() > deadline:
            pytest.fail(f"{text!r} not in {path} after {timeout} s:\n{path.read_text()}")
        time.sleep(0.2)


# -- hostile peers over TLS: the same bounds as on the plain port ---------------------------


def _tls_associate(node: Any, files: TlsFiles) -> ssl.SSLSocket:
    """An established association over TLS from a raw socket (no client certificate)."""

    raw = raw_peer.connect(node.tls_port, "127.0.0.1")
    sock = client_context(ca_certificates=files.ca).wrap_socket(raw, server_hostname="localhost")
    sock.sendall(raw_peer.associate_rq())
    pdu_type, _ = raw_peer.read_pdu(sock)
    assert pdu_type == raw_peer.ASSOCIATE_AC
    return sock


def _closed_within(sock: ssl.SSLSocket, seconds: float) -> tuple[bool, bytes]:
    """Whether the node closed the TLS connection within ``seconds``, and what it sent."""
    deadline = time.monotonic() + seconds
    received = bytearray()
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except (ConnectionError, ssl.SSLError):
            return True, bytes(received)
        if not chunk:
            return True, bytes(received)
        received += chunk
    return False, bytes(received)


def _pdu_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("dicom_node") and "PDU" in r.getMessage()
    ]


@pytest.mark.parametrize("kind", ["oversized", "trickle"])
def test_hostile_pdus_over_tls_are_bounded_like_plain_ones(
    start_node: Any, tls_files: TlsFiles, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """Inside a TLS association: a P-DATA-TF header announcing 96 MiB (over
    scp.max_pdu_size) is refused from its header, and a PDU sent a byte every 0.5 s is
    dropped at its deadline (scp.network_timeout); A-ABORT, one line each, and a
    well-behaved TLS peer is served meanwhile (the reads never block the connection's
    thread)."""

    caplog.set_level(logging.INFO, logger="dicom_node")
    node = start_node(
        scp={
            **tls_section(tls_files, require_client_certificate=False),
            "network_timeout": 2,
            "acse_timeout": 2,
        }
    )
    node.tls_port = node.node.scp.bound_tls_port
    sock = _tls_associate(node, tls_files)
    if kind == "oversized":
        # One TLS record (under 16 KiB): it is written whole before the node, which aborts
        # as soon as it has read the header, can close the connection under a longer write.
        sock.sendall(raw_peer.pdu_header(raw_peer.PDATA, 96 * 1024 * 1024) + bytes(8192))
    else:
        pdu = raw_peer.pdu_header(raw_peer.PDATA, 1000) + bytes(1000)

        def trickle() -> None:
            with contextlib.suppress(OSError, ValueError):
                for byte in pdu:
                    sock.send(bytes([byte]))
                    time.sleep(0.5)

        threading.Thread(target=trickle, daemon=True).start()
        time.sleep(0.5)
        assert _echo(node.tls_port, client_context(ca_certificates=tls_files.ca)) == 0x0000
    closed, data = _closed_within(sock, 10.0)
    sock.close()
    assert closed
    assert data[:1] == bytes([raw_peer.ABORT])
    [line] = _pdu_lines(caplog)
    if kind == "oversized":
        assert f"PDU type 0x04 of {96 * 1024 * 1024} bytes, over the" in line
        assert "scp.max_pdu_size" in line
    else:
        assert "PDU incomplete after 2 s" in line and "scp.network_timeout" in line
    assert _echo(node.tls_port, client_context(ca_certificates=tls_files.ca)) == 0x0000
