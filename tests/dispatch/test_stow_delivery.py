"""STOW-RS delivery (``kind = "dicomweb"`` destinations) against real DICOMweb servers:
Orthanc with its DICOMweb plugin (Debian orthanc-dicomweb), and a second node's STOW-RS
door. Same rows, retries, backoff and visibility as C-STORE destinations."""

from __future__ import annotations

import base64
import json
import socket
import urllib.request
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import select

from dicom_node.dispatch.delivery import Deliverer, ensure_delivery
from dicom_node.store import users
from dicom_node.store.db import Delivery, Event, Instance, create_engine, session_factory
from dicom_node.store.states import DeliveryState
from tests.conftest import make_settings
from tests.dicom_files import pydicom_file
from tests.dispatch.test_forward import _ct_series
from tests.peers import free_port, have_orthanc_dicomweb, pynetdicom_send, run_orthanc

orthanc_dicomweb = pytest.mark.skipif(
    not have_orthanc_dicomweb(), reason="Orthanc with its DICOMweb plugin not installed"
)


def stow_sections(url: str, **destination: Any) -> dict[str, Any]:
    """A dicomweb destination and a route forwarding every CT to it."""
    return {
        "destinations": [
            {
                "name": "web",
                "kind": "dicomweb",
                "url": url,
                "backoff_seconds": 0.2,
                "backoff_max": 1.0,
                **destination,
            }
        ],
        "routes": [
            {"name": "fwd", "match": {"Modality": "^CT$"}, "forward": True, "destinations": ["web"]}
        ],
    }


def _orthanc_file(pacs: Any, sop_uid: str, auth: str | None = None) -> bytes:
    """The file Orthanc stored for a SOP Instance UID, through its REST API."""

    def get(path: str) -> bytes:
        request = urllib.request.Request(pacs.url + path)
        if auth:
            request.add_header("Authorization", auth)
        with urllib.request.urlopen(request, timeout=30) as resp:
            return bytes(resp.read())

    for orthanc_id in json.loads(get("/instances")):
        tags = json.loads(get(f"/instances/{orthanc_id}/simplified-tags"))
        if tags["SOPInstanceUID"] == sop_uid:
            return get(f"/instances/{orthanc_id}/file")
    raise KeyError(sop_uid)


@orthanc_dicomweb
@pytest.mark.orthanc
def test_forwarded_series_arrives_in_orthanc_byte_for_byte(start_node: Any, tmp_path: Path) -> None:
    with run_orthanc(tmp_path / "orthanc", dicomweb=True) as pacs:
        node = start_node(**stow_sections(pacs.url + "/dicom-web"))
        datasets = _ct_series(3)
        assert pynetdicom_send(node.port, datasets, chunked=False) == [0] * 3
        node.wait_until(
            lambda: [d.state for d in node.query(select(Delivery))] == ["done"] * 3,
            what="three STOW-RS deliveries",
        )
        assert pacs.sop_instance_uids() == {str(ds.SOPInstanceUID) for ds in datasets}
        for row in node.query(select(Delivery)):
            assert (row.attempts, row.last_status, row.last_error) == (1, 0, "")
            # Sent as stored: Orthanc keeps exactly the bytes of the node's spool file.
            assert _orthanc_file(pacs, row.sop_instance_uid) == Path(row.path).read_bytes()
        done = node.query(select(Event).where(Event.kind == "delivery.done"))
        assert {e.detail["destination"] for e in done} == {"web"}


@orthanc_dicomweb
@pytest.mark.orthanc
def test_stow_destination_down_is_retried_then_delivered(start_node: Any, tmp_path: Path) -> None:
    # Bound, not listening: connections are refused, and no other free_port() (the node's
    # own ports) can be handed this one before Orthanc takes it.
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    http_port = holder.getsockname()[1]
    node = start_node(**stow_sections(f"http://127.0.0.1:{http_port}/dicom-web", max_attempts=100))
    datasets = _ct_series(2)
    assert pynetdicom_send(node.port, datasets, chunked=False) == [0] * 2
    node.wait_until(
        lambda: (
            len(rows := node.query(select(Delivery))) == 2 and all(d.attempts >= 2 for d in rows)
        ),
        what="failed attempts while the destination is down",
    )
    pending = node.query(select(Delivery))
    assert {d.state for d in pending} == {"pending"}
    assert all(d.last_error.startswith("cannot send to http://127.0.0.1") for d in pending)
    assert node.query(select(Event).where(Event.kind == "delivery.retry"))
    holder.close()
    with run_orthanc(tmp_path / "orthanc", http_port=http_port, dicomweb=True) as pacs:
        node.wait_until(
            lambda: {d.state for d in node.query(select(Delivery))} == {"done"},
            timeout=60,
            what="deliveries after the destination came up",
        )
        assert pacs.sop_instance_uids() == {str(ds.SOPInstanceUID) for ds in datasets}


def _queue(settings: Any, destination: str, path: Path, sop_uid: str) -> Any:
    sessions = session_factory(create_engine(settings.database_url))
    with sessions() as session:
        ensure_delivery(
            session,
            destination=destination,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            sop_instance_uid=sop_uid,
            path=path,
            study_uid="1.2.3",
            kind="forward",
            job_id=None,
        )
        session.commit()
    return sessions


def _rows(sessions: Any) -> dict[str, Delivery]:
    with sessions() as session:
        return {
            (row.destination + ":" + row.sop_instance_uid): row
            for row in session.scalars(select(Delivery))
        }


@orthanc_dicomweb
@pytest.mark.orthanc
def test_basic_auth_wrong_password_is_retried_right_one_delivers(tmp_path: Path) -> None:
    ct = pydicom_file("CT_small.dcm")
    sop_uid = str(pydicom.dcmread(ct).SOPInstanceUID)
    extra = {"AuthenticationEnabled": True, "RegisteredUsers": {"node": "right-password"}}
    with run_orthanc(tmp_path / "orthanc", dicomweb=True, extra=extra) as pacs:
        common = {"kind": "dicomweb", "url": pacs.url + "/dicom-web/", "auth": "basic"}
        settings = make_settings(
            tmp_path,
            destinations=[
                {"name": "good", "username": "node", "password": "right-password", **common},
                {"name": "bad", "username": "node", "password": "wrong-password", **common},
            ],
        )
        _queue(settings, "bad", ct, sop_uid)
        sessions = _queue(settings, "good", ct, sop_uid)
        Deliverer(settings, sessions).run_once()

        rows = _rows(sessions)
        good, bad = rows[f"good:{sop_uid}"], rows[f"bad:{sop_uid}"]
        assert (good.state, good.last_status) == (DeliveryState.DONE, 0)
        assert bad.state == DeliveryState.PENDING and bad.attempts == 1
        assert bad.last_error.startswith("STOW-RS HTTP 401")
        auth = "Basic " + base64.b64encode(b"node:right-password").decode()
        assert _orthanc_file(pacs, sop_uid, auth) == ct.read_bytes()


def test_bearer_token_to_another_node_per_instance_outcomes(
    start_node: Any, tmp_path: Path
) -> None:
    """A second node's STOW-RS door as the destination: a valid file is stored there, a
    corrupt one is refused by it (Failure Reason 0xC210), a wrong token gets HTTP 401;
    each row shows its own outcome and the failures wait for their retry."""
    receiver = start_node(
        node={"data_dir": str(tmp_path / "receiver")}, web={"enabled": True, "port": free_port()}
    )
    users.add_user(receiver.node.sessions, "sender-node", "sender-password", "sender")
    token = users.create_token(receiver.node.sessions, "sender-node")
    url = receiver.node.web_url + "/dicomweb"
    settings = make_settings(
        tmp_path / "sender",
        destinations=[
            {"name": "peer", "kind": "dicomweb", "url": url, "auth": "bearer", "token": token},
            {"name": "stale", "kind": "dicomweb", "url": url, "auth": "bearer", "token": "dn_x"},
        ],
    )
    ct = pydicom_file("CT_small.dcm")
    sop_uid = str(pydicom.dcmread(ct).SOPInstanceUID)
    (other,) = _ct_series(1)
    other.SOPInstanceUID = other.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5.6"
    corrupt = tmp_path / "corrupt.dcm"
    other.save_as(corrupt, enforce_file_format=True)
    corrupt.write_bytes(corrupt.read_bytes()[:-1000])  # pixels cut short: cannot be parsed
    _queue(settings, "peer", corrupt, "1.2.3.4.5.6")
    _queue(settings, "stale", ct, sop_uid)
    sessions = _queue(settings, "peer", ct, sop_uid)
    Deliverer(settings, sessions).run_once()

    rows = _rows(sessions)
    good, bad, stale = rows[f"peer:{sop_uid}"], rows["peer:1.2.3.4.5.6"], rows[f"stale:{sop_uid}"]
    assert (good.state, good.attempts, good.last_status) == (DeliveryState.DONE, 1, 0)
    assert (bad.state, bad.last_status) == (DeliveryState.PENDING, 0xC210)
    assert bad.last_error == "STOW-RS HTTP 202 Accepted: Failure Reason 0xC210"
    assert stale.state == DeliveryState.PENDING and stale.last_status is None
    assert stale.last_error.startswith("STOW-RS HTTP 401 Unauthorized")
    # The receiving node stored the good one, from our token's user, over STOW-RS.
    (stored,) = receiver.query(select(Instance))
    assert (stored.sop_instance_uid, stored.calling_ae) == (sop_uid, "STOW")
    assert Path(stored.path).read_bytes() == ct.read_bytes()
    (received,) = receiver.query(select(Event).where(Event.kind == "instance.received"))
    assert received.detail["user"] == "sender-node"
