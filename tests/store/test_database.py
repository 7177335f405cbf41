"""The database layer on SQLite and on PostgreSQL: migrations, indexing, jobs, deliveries."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pytest
from sqlalchemy import inspect, select

from dicom_node.config import Settings
from dicom_node.dispatch.delivery import Deliverer, backoff_delay, ensure_delivery
from dicom_node.process.queue import claim_next, requeue_interrupted
from dicom_node.receive.index import InstanceMeta, index_instance
from dicom_node.route.completion import complete_due_series
from dicom_node.store.db import (
    Delivery,
    Event,
    Instance,
    Job,
    Series,
    Study,
    create_engine,
    session_factory,
    utcnow,
)
from tests.conftest import make_settings
from tests.dicom_files import pydicom_file

pytestmark = pytest.mark.postgres


def _meta(n: int, series: str = "1.2.3.4.1", study: str = "1.2.3.4") -> InstanceMeta:
    return InstanceMeta(
        study_uid=study,
        series_uid=series,
        sop_instance_uid=f"1.2.3.4.1.{n}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        patient_id="P1",
        patient_name="Test^Patient",
        modality="CT",
        instance_number=n,
    )


def _settings(tmp_path: Path, url: str) -> Settings:
    return make_settings(
        tmp_path,
        storage={"database_url": url},
        completion={"quiet_seconds": 5},
        destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 1}],
        routes=[
            {"name": "ct", "match": {"Modality": "CT"}, "forward": True, "destinations": ["pacs"]}
        ],
    )


def test_migrations_create_every_table(database_url: str) -> None:
    engine = create_engine(database_url)
    tables = set(inspect(engine).get_table_names())
    assert {"study", "series", "instance", "job", "result", "delivery", "event"} <= tables
    create_engine(database_url)  # a second upgrade is a no-op
    engine.dispose()


def test_index_is_idempotent_and_concurrent(database_url: str, tmp_path: Path) -> None:
    engine = create_engine(database_url)
    sessions = session_factory(engine)
    errors: list[BaseException] = []

    def work(start: int) -> None:
        try:
            for n in range(start, 40, 4):
                index_instance(sessions, _meta(n), tmp_path / f"{n}.dcm", 100)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    again = index_instance(sessions, _meta(3), tmp_path / "3.dcm", 100)
    assert not again.created
    with sessions() as session:
        assert session.scalar(select(Study.patient_name)) == "Test^Patient"
        series = session.scalars(select(Series)).one()
        assert series.instance_count == 40
        assert len(session.scalars(select(Instance)).all()) == 40
        kinds = session.scalars(select(Event.kind)).all()
        assert kinds.count("instance.received") == 40
        assert kinds.count("instance.duplicate") == 1
    engine.dispose()


def test_completion_routes_and_jobs_are_claimed_once(database_url: str, tmp_path: Path) -> None:
    settings = _settings(tmp_path, database_url)
    engine = create_engine(database_url)
    sessions = session_factory(engine)
    ct = pydicom_file("CT_small.dcm")
    import pydicom

    ds = pydicom.dcmread(ct)
    meta = InstanceMeta(
        study_uid=ds.StudyInstanceUID,
        series_uid=ds.SeriesInstanceUID,
        sop_instance_uid=ds.SOPInstanceUID,
        sop_class_uid=ds.SOPClassUID,
        transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
        modality="CT",
    )
    index_instance(sessions, meta, ct, ct.stat().st_size)
    # Not quiet long enough yet.
    assert complete_due_series(sessions, settings) == 0
    later = utcnow() + dt.timedelta(seconds=10)
    assert complete_due_series(sessions, settings, now=later) == 1
    assert complete_due_series(sessions, settings, now=later) == 0
    with sessions() as session:
        series = session.scalars(select(Series)).one()
        assert series.state == "routed" and series.route_name == "ct"
    claimed = [claim_next(sessions, "a"), claim_next(sessions, "b")]
    assert claimed[0] is not None and claimed[1] is None
    # A crash while running: the job goes back to the queue on restart.
    assert requeue_interrupted(sessions) == 1
    with sessions() as session:
        assert session.scalars(select(Job.state)).one() == "queued"
    engine.dispose()


def test_deliveries_unique_and_backoff_survives_restart(database_url: str, tmp_path: Path) -> None:
    settings = _settings(tmp_path, database_url)
    engine = create_engine(database_url)
    sessions = session_factory(engine)
    path = pydicom_file("CT_small.dcm")
    with sessions() as session:
        _, created = ensure_delivery(
            session,
            destination="pacs",
            sop_class_uid="1.2",
            sop_instance_uid="1.2.3",
            path=path,
            study_uid="1.2",
            kind="forward",
            job_id=None,
        )
        _, again = ensure_delivery(
            session,
            destination="pacs",
            sop_class_uid="1.2",
            sop_instance_uid="1.2.3",
            path=path,
            study_uid="1.2",
            kind="forward",
            job_id=None,
        )
        session.commit()
    assert created and not again
    Deliverer(settings, sessions).run_once()  # port 1: connection refused
    engine.dispose()
    # "Restart": a new engine sees the attempt count, the error and the next attempt time.
    engine = create_engine(database_url)
    sessions = session_factory(engine)
    with sessions() as session:
        row = session.scalars(select(Delivery)).one()
        assert row.attempts == 1 and row.state == "pending"
        assert "connection refused (nothing listens on port 1 there)" in row.last_error
        assert row.next_attempt_at > utcnow()
    dest = settings.destination("pacs")
    assert [backoff_delay(dest, n) for n in (1, 2, 3)] == [5, 10, 20]
    assert backoff_delay(dest, 30) == dest.backoff_max
    engine.dispose()
