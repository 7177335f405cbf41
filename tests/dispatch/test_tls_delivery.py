"""Destinations over TLS (PS3.15 B.9): the node as a TLS client of real peers.

Orthanc with ``DicomTlsEnabled`` and ``DicomTlsRemoteCertificateRequired``, and DCMTK
``storescp +tls`` (which requires a client certificate by default), receive a forwarded
series over mutual TLS. A destination without the client certificate, or trusting the
wrong CA, stays pending with the TLS reason as its error; a missing certificate file stops
start-up with one line. ``dicom-node echo``/``send --tls...`` talk to the node's own TLS
listener.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import select

from dicom_node.cli import main
from dicom_node.config import ConfigError
from dicom_node.node import Node
from dicom_node.store.db import Delivery, Instance
from tests.conftest import make_settings
from tests.dicom_files import dataset_bytes, pydicom_file
from tests.dispatch.test_forward import forward_sections
from tests.peers import (
    DCMTK_ENV,
    OrthancTls,
    TlsFiles,
    free_port,
    have_dcmtk,
    have_orthanc,
    run_orthanc,
    storescu,
    wait_for_port,
)
from tests.receive.test_tls_listener import tls_section

orthanc = pytest.mark.skipif(not have_orthanc(), reason="Orthanc not installed")
dcmtk = pytest.mark.skipif(not have_dcmtk(), reason="DCMTK not installed")
CT = pydicom_file("CT_small.dcm")


def mutual(files: TlsFiles, **keys: str) -> dict[str, Any]:
    """A destination's ``tls`` table: our CA, our client certificate."""
    return {
        "ca_certificates": str(files.ca),
        "certificate": str(files.client_cert),
        "private_key": str(files.client_key),
        **keys,
    }


@pytest.fixture
def tls_orthanc(tls_files: TlsFiles, tmp_path: Path) -> Iterator[Any]:
    """Orthanc whose DICOM port speaks TLS only and requires a client certificate."""
    with run_orthanc(
        tmp_path / "orthanc",
        tls=OrthancTls(tls_files.server_cert, tls_files.server_key, tls_files.ca),
    ) as pacs:
        yield pacs


def deliveries(node: Any) -> list[Delivery]:
    return list(node.query(select(Delivery)))


@orthanc
@pytest.mark.orthanc
@dcmtk
def test_forward_to_orthanc_over_mutual_tls(
    start_node: Any, tls_files: TlsFiles, tls_orthanc: Any
) -> None:
    node = start_node(**forward_sections(tls_orthanc.dicom_port, tls=mutual(tls_files)))
    assert storescu(node.port, [CT]).returncode == 0
    node.wait_until(
        lambda: [d.state for d in deliveries(node)] == ["done"], what="delivery over TLS"
    )
    assert tls_orthanc.sop_instance_uids() == {pydicom.dcmread(CT).SOPInstanceUID}


@orthanc
@pytest.mark.orthanc
@dcmtk
@pytest.mark.parametrize(
    ("keys", "reason"),
    [
        (
            {"certificate": "", "private_key": ""},
            "certificate required (the peer wants our client certificate)",
        ),
        (
            {"ca_certificates": "UNTRUSTED"},
            "certificate verify failed: ",  # then OpenSSL's verify message
        ),
        ({"server_name": "pacs.example.org"}, "certificate verify failed: Hostname mismatch"),
    ],
    ids=["no-client-certificate", "wrong-ca", "wrong-name"],
)
def test_tls_failures_keep_the_delivery_pending_with_the_reason(
    start_node: Any, tls_files: TlsFiles, tls_orthanc: Any, keys: dict[str, str], reason: str
) -> None:
    if keys.get("ca_certificates") == "UNTRUSTED":
        keys = {"ca_certificates": str(tls_files.untrusted_cert)}
    tls = {k: v for k, v in mutual(tls_files, **keys).items() if v}
    node = start_node(**forward_sections(tls_orthanc.dicom_port, tls=tls, max_attempts=100))
    assert storescu(node.port, [CT]).returncode == 0
    node.wait_until(
        lambda: any(d.attempts >= 1 for d in deliveries(node)), what="a failed TLS attempt"
    )
    (delivery,) = deliveries(node)
    assert delivery.state == "pending"
    assert "TLS handshake with ORTHANC@127.0.0.1" in delivery.last_error
    assert reason in delivery.last_error
    assert tls_orthanc.instances() == []


@dcmtk
def test_forward_to_dcmtk_storescp_over_mutual_tls(
    start_node: Any, tls_files: TlsFiles, tmp_path: Path
) -> None:
    port, out = free_port(), tmp_path / "storescp"
    out.mkdir()
    scp = subprocess.Popen(
        [
            "storescp",
            "+B",  # bit-preserving: the file holds exactly what arrived
            "+tls",
            str(tls_files.server_key),
            str(tls_files.server_cert),
            "+cf",
            str(tls_files.ca),
            "-aet",
            "ORTHANC",  # forward_sections' destination AE title
            "-od",
            str(out),
            str(port),
        ],
        env=DCMTK_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        node = start_node(**forward_sections(port, tls=mutual(tls_files)))
        assert storescu(node.port, [CT]).returncode == 0
        node.wait_until(
            lambda: [d.state for d in deliveries(node)] == ["done"], what="delivery to storescp"
        )
        (received,) = out.iterdir()
        (sent,) = node.query(select(Instance))  # as the node stored it from storescu
        assert dataset_bytes(received) == dataset_bytes(Path(sent.path))
    finally:
        scp.terminate()
        scp.wait(timeout=30)


def test_unusable_destination_certificate_stops_start_up(
    tls_files: TlsFiles, tmp_path: Path
) -> None:
    missing = tmp_path / "gone.pem"
    settings = make_settings(
        tmp_path,
        **forward_sections(free_port(), tls=mutual(tls_files, ca_certificates=str(missing))),
    )
    with pytest.raises(ConfigError) as info:
        Node(settings, web=False)
    message = str(info.value)
    assert message.startswith("destinations[0] (pacs).tls.ca_certificates (")
    assert message.endswith(f"{missing}: cannot read: No such file or directory")
    assert "\n" not in message


def test_cli_echo_and_send_over_tls(
    start_node: Any,
    tls_files: TlsFiles,
    capsys: pytest.CaptureFixture[str],
) -> None:
    node = start_node(scp=tls_section(tls_files))
    port = str(node.node.scp.bound_tls_port)
    ca = ["--tls-ca", str(tls_files.ca)]
    client = [*ca, "--tls-cert", str(tls_files.client_cert), "--tls-key", str(tls_files.client_key)]
    assert main(["echo", "127.0.0.1", port, "--aec", "DICOM_NODE", *client]) == 0
    assert main(["send", str(CT), "--to", f"DICOM_NODE@127.0.0.1:{port}", "-q", *client]) == 0
    assert "0x0000 Success: 1" in capsys.readouterr().out
    # Without our certificate: the node refuses it, and echo says so.
    assert main(["echo", "127.0.0.1", port, "--aec", "DICOM_NODE", *ca]) == 1
    assert "association failed" in capsys.readouterr().err
    # A file that cannot be used: one line, exit status 2, the option named.
    assert main(["echo", "127.0.0.1", port, "--tls-ca", str(tls_files.client_key)]) == 2
    err = capsys.readouterr().err
    assert err == f"dicom-node: --tls-ca: {tls_files.client_key}: no PEM certificate in it\n"
