"""A held destination (``enabled = false``) keeps its deliveries pending, untouched, while
the others deliver; enabled again (a live settings edit), it delivers them. DCMTK storescp
is the PACS. Each attempt updates the destination's last success or last error."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from dicom_node.config import Destination, LiveSettings
from dicom_node.dispatch.delivery import Deliverer, destination_summaries, ensure_delivery
from dicom_node.store.db import (
    Delivery,
    DestinationStatus,
    create_engine,
    session_factory,
    utcnow,
)
from dicom_node.store.states import DeliveryState
from tests.conftest import make_settings
from tests.dicom_files import pydicom_file
from tests.peers import free_port, have_dcmtk, run_storescp

pytestmark = pytest.mark.skipif(not have_dcmtk(), reason="DCMTK storescp not installed")


def _file(folder: Path, index: int) -> tuple[Path, str]:
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = folder / f"ct{index}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, str(ds.SOPInstanceUID)


def test_held_destination_waits_and_does_not_starve_the_others(tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    with (
        run_storescp(tmp_path / "archive") as archive_port,
        run_storescp(tmp_path / "pacs") as pacs_port,
    ):
        settings = make_settings(
            tmp_path,
            destinations=[
                {
                    "name": "archive",
                    "ae_title": "STORESCP",
                    "host": "127.0.0.1",
                    "port": archive_port,
                    "enabled": False,
                },
                {"name": "pacs", "ae_title": "STORESCP", "host": "127.0.0.1", "port": pacs_port},
                {
                    "name": "gone",
                    "ae_title": "NOBODY",
                    "host": "127.0.0.1",
                    "port": free_port(),
                    "max_attempts": 1,
                    "timeout": 5,
                },
            ],
        )
        engine = create_engine(settings.database_url)
        sessions = session_factory(engine)
        live = LiveSettings(settings)
        with sessions() as session:
            # The held destination's backlog comes first (oldest ids).
            for i, name in enumerate(["archive", "archive", "archive", "pacs", "gone"]):
                path, uid = _file(files, i)
                ensure_delivery(
                    session,
                    destination=name,
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    sop_instance_uid=uid,
                    path=path,
                    study_uid="1.2.3",
                    kind="forward",
                    job_id=None,
                )
            session.commit()
        deliverer = Deliverer(live, sessions)
        held = frozenset({"archive"})
        # Two at most, the held ones left out: the others are not starved by its backlog.
        assert set(deliverer.due(utcnow(), limit=2, held=held)) == {"pacs", "gone"}
        assert deliverer.run_once() == 2

        def states(name: str) -> list[tuple[DeliveryState, int]]:
            with sessions() as session:
                return [
                    (d.state, d.attempts)
                    for d in session.scalars(
                        select(Delivery).where(Delivery.destination == name).order_by(Delivery.id)
                    )
                ]

        assert states("archive") == [(DeliveryState.PENDING, 0)] * 3
        assert states("pacs") == [(DeliveryState.DONE, 1)]
        assert states("gone") == [(DeliveryState.FAILED, 1)]
        with sessions() as session:
            status = {s.name: s for s in session.scalars(select(DestinationStatus))}
            summaries = {
                s.name: s for s in destination_summaries(session, ["archive", "pacs", "gone"])
            }
        assert status["pacs"].last_success_at is not None and status["pacs"].last_error_at is None
        assert status["gone"].last_error_at is not None and status["gone"].last_success_at is None
        assert "connection refused" in status["gone"].last_error
        assert (summaries["archive"].pending, summaries["archive"].last_success_at) == (3, None)
        assert summaries["gone"].failed == 1

        # Enabled on the page: the next scan sends the backlog.
        enabled = Destination(**{**settings.destinations[0].model_dump(), "enabled": True})
        live.replace(
            settings.model_copy(update={"destinations": (enabled, *settings.destinations[1:])})
        )
        assert deliverer.run_once() == 3
        assert states("archive") == [(DeliveryState.DONE, 1)] * 3
        assert len(list((tmp_path / "archive").iterdir())) == 3
        engine.dispose()
