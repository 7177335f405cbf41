"""/healthz and /metrics: what monitoring sees, without patient data."""

from __future__ import annotations

import shutil
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import Settings
from dicom_node.web import create_app
from tests.web.conftest import FixtureData


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_healthy(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["scp"]["listening"] is True
    assert body["checks"]["models"]["loaded"] == {
        "chest-xray-pneumonia": True,
        "brain-mri-tumor": True,
    }


@pytest.mark.parametrize(
    ("change", "failing"),
    [
        ({"scp_listening": False}, "scp"),
        ({"models": {"chest-xray-pneumonia": {"loaded": False}}}, "models"),
        ({"workers_alive": 0}, "workers"),
    ],
)
def test_unhealthy_node(
    client: TestClient, node_status: dict[str, Any], change: dict[str, Any], failing: str
) -> None:
    node_status.update(change)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["checks"][failing]["ok"] is False


def test_spool_not_writable(client: TestClient, settings: Settings) -> None:
    shutil.rmtree(settings.spool_dir)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["checks"]["spool"]["ok"] is False


def test_status_callable_failure(settings: Settings, sessions: sessionmaker[Session]) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("node gone")

    with TestClient(create_app(settings, sessions, status=broken)) as c:
        assert c.get("/healthz").status_code == 503
        assert c.get("/metrics").status_code == 200


def test_without_status_only_database_and_spool(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    with TestClient(create_app(settings, sessions)) as c:
        response = c.get("/healthz")
        assert response.status_code == 200
        assert response.json()["checks"]["node"]["ok"] is None


def test_metrics(client: TestClient, data: FixtureData) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "PID00" not in response.text and "DOE" not in response.text
    samples = _samples(response.text)
    assert samples[("dicom_node_stored_instances", ())] == 16
    assert samples[("dicom_node_stored_bytes", ())] == 16 * 500_000
    assert samples[("dicom_node_received_instances_total", ())] == 16
    assert samples[("dicom_node_received_associations_total", ())] == 3
    assert samples[("dicom_node_jobs", (("state", "failed"),))] == 1
    assert samples[("dicom_node_jobs", (("state", "done"),))] == 2
    assert samples[("dicom_node_queue_depth", (("queue", "deliveries"),))] == 1
    assert (
        samples[
            (
                "dicom_node_deliveries",
                (("destination", "pacs"), ("state", "done")),
            )
        ]
        == 3
    )
    model = (("model", "brain-mri-tumor"),)
    assert samples[("dicom_node_inference_seconds_count", model)] == 1
    assert samples[("dicom_node_inference_seconds_sum", model)] == 3.5
    assert samples[("dicom_node_inference_seconds_bucket", (("le", "2.5"), *model))] == 0
    assert samples[("dicom_node_inference_seconds_bucket", (("le", "5.0"), *model))] == 1
    assert samples[("dicom_node_scp_listening", ())] == 1


def test_metrics_need_token_off_loopback(
    settings: Settings, sessions: sessionmaker[Session], admin_token: str
) -> None:
    public = settings.model_copy(
        update={"web": settings.web.model_copy(update={"host": "0.0.0.0"})}
    )
    with TestClient(create_app(public, sessions)) as c:
        assert c.get("/metrics").status_code == 401
        assert (
            c.get("/metrics", headers={"Authorization": f"Bearer {admin_token}"}).status_code == 200
        )
        assert c.get("/healthz").status_code == 200


def test_latency_histogram_counts_new_results_once(
    client: TestClient, data: FixtureData, sessions: sessionmaker[Session]
) -> None:
    from dicom_node.store.db import Job, Result

    key = ("dicom_node_inference_seconds_count", (("model", "brain-mri-tumor"),))
    assert _samples(client.get("/metrics").text)[key] == 1
    with sessions() as session:
        job = session.get(Job, data.jobs["failed"])
        assert job is not None
        session.add(
            Result(
                job_id=job.id,
                model_id="brain-mri-tumor",
                model_version="2.1",
                timings={"total": 0.2},
            )
        )
        session.commit()
    samples = _samples(client.get("/metrics").text)
    assert samples[key] == 2
    assert (
        samples[
            ("dicom_node_inference_seconds_bucket", (("le", "0.25"), ("model", "brain-mri-tumor")))
        ]
        == 1
    )
    assert _samples(client.get("/metrics").text)[key] == 2
