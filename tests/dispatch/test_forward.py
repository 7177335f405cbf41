"""Completion, routing, jobs and delivery end to end, with Orthanc as the destination PACS.

A `forward` route sends the received series as it is (a real router feature), so the whole
data path (receive -> complete -> route -> job -> deliver) is tested without any model.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import select

from dicom_node.demo.minipacs import BuiltinPacs
from dicom_node.store.db import Delivery, Event, Job, Series
from tests.conftest import make_settings
from tests.dicom_files import pydicom_file
from tests.peers import free_port, have_dcmtk, have_orthanc, pynetdicom_send, run_orthanc, storescu

pytestmark = [
    pytest.mark.skipif(not have_orthanc(), reason="Orthanc not installed"),
    pytest.mark.orthanc,
]


def forward_sections(pacs_port: int, **destination: Any) -> dict[str, Any]:
    dest = {
        "name": "pacs",
        "ae_title": "ORTHANC",
        "host": "127.0.0.1",
        "port": pacs_port,
        "backoff_seconds": 0.2,
        "backoff_max": 1.0,
        **destination,
    }
    return {
        "destinations": [dest],
        "routes": [
            {
                "name": "ct-forward",
                "match": {"Modality": "^CT$"},
                "forward": True,
                "destinations": ["pacs"],
            }
        ],
    }


@pytest.mark.skipif(not have_dcmtk(), reason="DCMTK not installed")
def test_routed_series_forwarded_unrouted_not(start_node: Any, tmp_path: Path) -> None:
    with run_orthanc(tmp_path / "orthanc") as pacs:
        node = start_node(**forward_sections(pacs.dicom_port))
        ct = pydicom_file("CT_small.dcm")
        mr = pydicom_file("MR_small.dcm")
        assert storescu(node.port, [ct, mr]).returncode == 0
        node.wait_until(
            lambda: [d.state for d in node.query(select(Delivery))] == ["done"],
            what="the CT delivery",
        )
        assert pacs.sop_instance_uids() == {pydicom.dcmread(ct).SOPInstanceUID}
        states = {s.modality: s.state for s in node.query(select(Series))}
        assert states == {"CT": "routed", "MR": "unrouted"}
        (job,) = node.query(select(Job))
        assert job.state == "done" and job.route_name == "ct-forward"
        kinds = [e.kind for e in node.query(select(Event).order_by(Event.id))]
        for step in (
            "instance.received",
            "series.completed",
            "series.routed",
            "series.unrouted",
            "job.queued",
            "job.started",
            "job.done",
            "delivery.done",
        ):
            assert step in kinds, step


def test_orthanc_pushes_study_to_node_and_gets_it_back(start_node: Any, tmp_path: Path) -> None:
    """Orthanc as a real PACS: its REST API makes it C-STORE a study to the node."""
    node_port = free_port()
    with run_orthanc(
        tmp_path / "orthanc", modalities={"node": ("DICOM_NODE", "127.0.0.1", node_port)}
    ) as pacs:
        node = start_node(scp={"port": node_port}, **forward_sections(pacs.dicom_port))
        pacs.upload(pydicom_file("CT_small.dcm"))
        study_id = pacs.get("/studies")[0]
        pacs.post("/modalities/node/store", {"Resources": [study_id], "Synchronous": True})
        node.wait_until(
            lambda: any(d.state == "done" for d in node.query(select(Delivery))),
            what="forward back to Orthanc",
        )
        (series,) = node.query(select(Series))
        assert series.calling_ae == "ORTHANC"
        # Same SOP Instance UID: Orthanc keeps one instance (no duplicate).
        assert len(pacs.instances()) == 1


def test_destination_down_then_up_receives_everything(start_node: Any, tmp_path: Path) -> None:
    pacs_port = free_port()  # nothing listens here yet
    node = start_node(**forward_sections(pacs_port, max_attempts=100))
    datasets = _ct_series(5)
    assert pynetdicom_send(node.port, datasets, chunked=False) == [0] * 5
    node.wait_until(
        lambda: (
            all(d.attempts >= 2 for d in node.query(select(Delivery)))
            and len(node.query(select(Delivery))) == 5
        ),
        what="failed attempts while the destination is down",
    )
    pending = node.query(select(Delivery))
    assert {d.state for d in pending} == {"pending"}
    assert all("connection refused (nothing listens on port" in d.last_error for d in pending)
    with run_orthanc(tmp_path / "orthanc", dicom_port=pacs_port) as pacs:
        node.wait_until(
            lambda: {d.state for d in node.query(select(Delivery))} == {"done"},
            timeout=30,
            what="deliveries after the destination came up",
        )
        assert pacs.sop_instance_uids() == {str(ds.SOPInstanceUID) for ds in datasets}


def test_delivery_fails_after_max_attempts_and_stays_visible(start_node: Any) -> None:
    node = start_node(**forward_sections(free_port(), max_attempts=2))
    assert pynetdicom_send(node.port, _ct_series(1), chunked=False) == [0]
    node.wait_until(
        lambda: [d.state for d in node.query(select(Delivery))] == ["failed"],
        what="the delivery to give up",
    )
    (delivery,) = node.query(select(Delivery))
    assert delivery.attempts == 2
    assert delivery.last_error
    events = [e.kind for e in node.query(select(Event).where(Event.delivery_id == delivery.id))]
    assert events == ["delivery.retry", "delivery.failed"]


def _ct_series(count: int) -> list[Any]:
    import copy

    from pydicom.uid import generate_uid

    base = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    series_uid = generate_uid()
    out = []
    for i in range(count):
        ds = copy.deepcopy(base)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        out.append(ds)
    return out


def test_late_instance_reopens_series_as_new_generation(start_node: Any) -> None:
    node = start_node(
        **forward_sections(free_port(), max_attempts=1),
    )
    first, late = _ct_series(2)
    assert pynetdicom_send(node.port, [first], chunked=False) == [0]
    node.wait_until(lambda: len(node.query(select(Job))) == 1, what="first job")
    assert pynetdicom_send(node.port, [late], chunked=False) == [0]
    node.wait_until(lambda: len(node.query(select(Job))) == 2, what="second job")
    jobs = node.query(select(Job).order_by(Job.id))
    assert [j.generation for j in jobs] == [0, 1]
    (series,) = node.query(select(Series))
    assert series.generation == 1 and series.instance_count == 2
    assert node.query(select(Event).where(Event.kind == "series.reopened"))


def test_own_objects_are_never_routed(start_node: Any) -> None:
    from dicom_node.identity import MANUFACTURER, MANUFACTURER_MODEL_NAME

    node = start_node(**forward_sections(free_port()))
    (ds,) = _ct_series(1)
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MANUFACTURER_MODEL_NAME
    assert pynetdicom_send(node.port, [ds], chunked=False) == [0]
    node.wait_until(
        lambda: [s.state for s in node.query(select(Series))] == ["ignored"],
        what="series ignored",
    )
    assert node.query(select(Job)) == []
    assert node.query(select(Delivery)) == []


def test_a_black_hole_destination_does_not_delay_a_healthy_one(tmp_path: Path) -> None:
    """A destination that accepts TCP and never answers holds its own lane only."""
    from dicom_node.dispatch.delivery import Deliverer, ensure_delivery
    from dicom_node.store.db import Delivery, create_engine, session_factory
    from dicom_node.store.states import DeliveryState

    black_hole = socket.socket()
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(8)  # the kernel completes handshakes; nobody ever reads
    healthy = BuiltinPacs(tmp_path / "pacs", free_port(), ae_title="HEALTHY")
    healthy.start()
    try:
        settings = make_settings(
            tmp_path,
            destinations=[
                {
                    "name": "hole",
                    "ae_title": "HOLE",
                    "host": "127.0.0.1",
                    "port": black_hole.getsockname()[1],
                    "timeout": 60,
                },
                {"name": "ok", "ae_title": "HEALTHY", "host": "127.0.0.1", "port": healthy.port},
            ],
        )
        sessions = session_factory(create_engine(settings.database_url))
        source = pydicom_file("CT_small.dcm")
        with sessions() as session:
            # The black hole's delivery is older: a sequential loop would try it first.
            for name in ("hole", "ok"):
                ensure_delivery(
                    session,
                    destination=name,
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    sop_instance_uid="1.2.3.4.5",
                    path=source,
                    study_uid="1.2.3",
                    kind="forward",
                    job_id=None,
                )
            session.commit()
        deliverer = Deliverer(settings, sessions)
        assert deliverer.run_once(wait=False) == 2

        def state(name: str) -> tuple[DeliveryState, int]:
            with sessions() as session:
                row = session.scalars(select(Delivery).where(Delivery.destination == name)).one()
                return row.state, row.attempts

        deadline = time.monotonic() + 20
        while state("ok")[0] != DeliveryState.DONE and time.monotonic() < deadline:
            time.sleep(0.1)
        assert state("ok") == (DeliveryState.DONE, 1)
        # Still waiting on the black hole (60 s timeout): not attempted to the end yet,
        # and not started a second time while its lane is busy.
        assert state("hole") == (DeliveryState.PENDING, 0)
        assert deliverer.run_once(wait=False) == 0
    finally:
        black_hole.close()
        healthy.stop()
