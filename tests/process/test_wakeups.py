"""No poll waits on the hot path: a routed series wakes a worker, queued results wake the
delivery. The polls are set to a minute here, so anything done within the (generous)
timeouts below was started by a wake-up, not by a poll.
"""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from dicom_node.dispatch.delivery import Deliverer, DeliveryThread, ensure_delivery
from dicom_node.doorbell import Doorbell
from dicom_node.store.db import Delivery, Job, create_engine, session_factory
from tests.conftest import NodeHandle, make_settings
from tests.dicom_files import pydicom_file
from tests.peers import DCMTK_ENV, free_port, have_dcmtk, pynetdicom_send, wait_for_port

pytestmark = pytest.mark.skipif(not have_dcmtk(), reason="DCMTK not installed")

LONG_POLL = 60.0  # a wake-up that did not happen would show as a timeout below
WITHIN = 30.0


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[int]:
    """DCMTK storescp as the destination; returns its port."""
    port = free_port()
    folder = tmp_path / "received"
    folder.mkdir()
    proc = subprocess.Popen(
        ["storescp", "-aet", "STORESCP", "-od", str(folder), str(port)],
        env=DCMTK_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _destination(port: int) -> dict[str, Any]:
    return {"name": "pacs", "ae_title": "STORESCP", "host": "127.0.0.1", "port": port}


def _new_series(template: pydicom.Dataset) -> pydicom.Dataset:
    ds = copy.deepcopy(template)
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


@pytest.mark.parametrize("processes", [0, 1], ids=["in-process", "worker-process"])
def test_a_routed_series_wakes_an_idle_worker(
    start_node: Any, storescp: int, processes: int
) -> None:
    node: NodeHandle = start_node(
        workers={"processes": processes, "poll_interval": LONG_POLL},
        destinations=[_destination(storescp)],
        routes=[
            {
                "name": "ct-forward",
                "match": {"Modality": "^CT$"},
                "forward": True,
                "destinations": ["pacs"],
            }
        ],
    )
    template = pydicom.dcmread(pydicom_file("CT_small.dcm"))

    def jobs_done(count: int) -> bool:
        jobs = node.query(select(Job))
        return len(jobs) == count and all(j.state == "done" for j in jobs)

    # The first job may be found by the worker's first look at start-up; after running it
    # the worker finds nothing and waits: the second job can only come from a wake-up.
    for count in (1, 2):
        assert pynetdicom_send(node.port, [_new_series(template)], chunked=False) == [0]
        node.wait_until(lambda c=count: jobs_done(c), timeout=WITHIN + 30, what=f"job {count}")
    node.wait_until(
        lambda: [d.state for d in node.query(select(Delivery))] == ["done", "done"],
        timeout=WITHIN,
        what="both forwarded",
    )


def test_queued_results_wake_the_delivery(tmp_path: Path, storescp: int) -> None:
    settings = make_settings(tmp_path, destinations=[_destination(storescp)])
    engine = create_engine(settings.database_url)
    sessions = session_factory(engine)
    bell = Doorbell()
    thread = DeliveryThread(Deliverer(settings, sessions), interval=LONG_POLL, wakeup=bell)
    thread.start()  # its first scan finds nothing, then it sleeps for a minute
    try:
        ct = pydicom_file("CT_small.dcm")
        ds = pydicom.dcmread(ct, stop_before_pixels=True)
        with sessions() as session:
            ensure_delivery(
                session,
                destination="pacs",
                sop_class_uid=str(ds.SOPClassUID),
                sop_instance_uid=str(ds.SOPInstanceUID),
                path=ct,
                study_uid=str(ds.StudyInstanceUID),
                kind="forward",
                job_id=None,
            )
            session.commit()
        bell.ring()  # what a worker does after committing the deliveries of a job
        NodeHandle.wait_until(
            None,  # type: ignore[arg-type]
            lambda: _delivery_states(sessions) == ["done"],
            timeout=WITHIN,
            what="the delivery",
        )
    finally:
        thread.stop()
        thread.join(timeout=30)
        bell.close()
        engine.dispose()


def _delivery_states(sessions: Any) -> list[str]:
    with sessions() as session:
        return [str(s) for s in session.scalars(select(Delivery.state))]
