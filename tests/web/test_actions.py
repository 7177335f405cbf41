"""Admin actions: retry a delivery, re-run a study, export the list; each audited."""

from __future__ import annotations

import csv
import io
import json

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import Settings
from dicom_node.store.db import AuditEntry, Delivery, Event, Job, Series, utcnow
from dicom_node.web import create_app
from dicom_node.web.actions import ActionError, DefaultActions, WebActions
from tests.web.conftest import ADMIN, FixtureData, csrf_token, log_in


def _audit(sessions: sessionmaker[Session], action: str) -> list[AuditEntry]:
    with sessions() as session:
        return list(
            session.scalars(
                select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)
            )
        )


def test_retry_failed_delivery(
    admin: TestClient, data: FixtureData, sessions: sessionmaker[Session]
) -> None:
    delivery_id = data.deliveries["chest_sc"]
    study = data.studies["chest"]
    token = csrf_token(admin)
    response = admin.post(
        f"/deliveries/{delivery_id}/retry", data={"csrf_token": token, "back": study}
    )
    assert response.status_code == 303
    assert response.headers["location"] == f"/studies/{study}"
    assert (
        f"Delivery {delivery_id} queued for another attempt." in admin.get(f"/studies/{study}").text
    )
    with sessions() as session:
        delivery = session.get(Delivery, delivery_id)
        assert delivery is not None
        assert delivery.state == "pending"
        assert delivery.attempts == 8  # history kept
        assert delivery.last_error.startswith("C-STORE status 0xA700")
        assert delivery.next_attempt_at <= utcnow()
        event = session.scalars(select(Event).where(Event.kind == "delivery.retry_requested")).one()
        assert event.delivery_id == delivery_id and event.detail["requested_by"] == "alice"
    [entry] = _audit(sessions, "retry_delivery")
    assert (entry.username, entry.target, entry.success) == ("alice", str(delivery_id), True)


def test_retry_refuses_delivery_not_failed(
    admin: TestClient, data: FixtureData, sessions: sessionmaker[Session]
) -> None:
    token = csrf_token(admin)
    done = data.deliveries["chest_sr"]
    response = admin.post(
        f"/deliveries/{done}/retry", data={"csrf_token": token, "back": "deliveries"}
    )
    assert response.headers["location"] == "/deliveries"
    assert "is done, not failed" in admin.get("/deliveries").text
    with sessions() as session:
        assert session.get(Delivery, done).state == "done"  # type: ignore[union-attr]
    [entry] = _audit(sessions, "retry_delivery")
    assert not entry.success and "not failed" in entry.detail["error"]


def test_rerun_study(admin: TestClient, data: FixtureData, sessions: sessionmaker[Session]) -> None:
    study = data.studies["chest"]
    token = csrf_token(admin)
    response = admin.post(f"/studies/{study}/rerun", data={"csrf_token": token})
    assert response.status_code == 303
    with sessions() as session:
        series = session.scalars(
            select(Series).where(Series.series_uid == data.series["chest"])
        ).one()
        assert series.generation == 1
        jobs = session.scalars(select(Job).where(Job.series_id == series.id).order_by(Job.id)).all()
        assert [(j.generation, j.state, j.route_name) for j in jobs] == [
            (0, "done", "chest"),
            (1, "queued", "chest"),
        ]
        event = session.scalars(
            select(Event).where(Event.kind == "job.queued", Event.job_id == jobs[1].id)
        ).one()
        assert event.study_uid == study
    page = admin.get(f"/studies/{study}").text
    assert f"Queued job(s) {jobs[1].id}." in page
    # the old results stay visible while the new job is queued
    assert "PNEUMONIA P(PNEUMONIA) = 0.91" in admin.get("/studies").text
    [entry] = _audit(sessions, "rerun_study")
    assert entry.target == study and entry.success and entry.detail["jobs"] == [jobs[1].id]


def test_rerun_unrouted_study_is_refused(
    admin: TestClient, data: FixtureData, sessions: sessionmaker[Session]
) -> None:
    study = data.studies["dx"]
    admin.post(f"/studies/{study}/rerun", data={"csrf_token": csrf_token(admin)})
    assert "no routed series" in admin.get(f"/studies/{study}").text
    [entry] = _audit(sessions, "rerun_study")
    assert not entry.success


def test_custom_actions_are_used(
    settings: Settings, sessions: sessionmaker[Session], accounts: None, data: FixtureData
) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def rerun_series(self, series_uid: str) -> int:
            self.calls.append(series_uid)
            return 4242

    recorder = Recorder()
    assert isinstance(recorder, WebActions)
    with TestClient(create_app(settings, sessions, actions=recorder), follow_redirects=False) as c:
        log_in(c, *ADMIN)
        c.post(f"/studies/{data.studies['brain']}/rerun", data={"csrf_token": csrf_token(c)})
        assert "Queued job(s) 4242." in c.get(f"/studies/{data.studies['brain']}").text
    assert recorder.calls == [data.series["brain"]]


def test_default_actions_errors(sessions: sessionmaker[Session], data: FixtureData) -> None:
    actions = DefaultActions(sessions)
    for uid in ("1.2.3.4", data.series["dx"]):
        try:
            actions.rerun_series(uid)
        except ActionError:
            continue
        raise AssertionError(f"rerun of {uid} should be refused")


def _filter(client: TestClient, **fields: str) -> None:
    client.post("/studies", data={"csrf_token": csrf_token(client), **fields})


def test_export_csv_follows_filter(
    admin: TestClient, data: FixtureData, sessions: sessionmaker[Session]
) -> None:
    _filter(admin, modality="CR")
    response = admin.get("/export/studies.csv?sort=patient_id&direction=asc")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["patient_id"] for r in rows] == ["PID001", "PID005"]
    assert rows[0]["models"] == (
        "chest-xray-pneumonia 0.3.0: PNEUMONIA P(PNEUMONIA) = 0.91"
        " [OUTSIDE INTENDED USE: patient age 64 years, intended 0-17 years]"
    )
    assert rows[0]["delivery"] == "1 failed, 1 pending, 1 done"
    assert rows[1]["job"] == "failed"
    # a formula-like name cannot run in a spreadsheet
    assert rows[1]["patient_name"] == "'=CMD^EVIL"
    [entry] = _audit(sessions, "export_csv")
    assert entry.detail == {"modality": "CR"}


def test_export_json(admin: TestClient, data: FixtureData, sessions: sessionmaker[Session]) -> None:
    response = admin.get("/export/studies.json")
    assert response.status_code == 200
    rows = json.loads(response.text)
    assert len(rows) == 5
    brain = next(r for r in rows if r["patient_id"] == "PID002")
    assert brain["models"][0]["predicted_class"] == "glioma"
    assert brain["latency_seconds"] == 36.0
    assert brain["steps"]["delivery"]["state"] == "done"
    assert len(_audit(sessions, "export_json")) == 1
