"""/healthz and /metrics: what monitoring sees, without patient data, paths or versions."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

import dicom_node
from dicom_node.config import Settings, load_settings
from dicom_node.route.waits import model_availability, route_model_status
from dicom_node.web import create_app, health
from dicom_node.web.cache import TtlValue
from tests.web.conftest import FixtureData


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


# What an anonymous /healthz body must never contain: where things are, what listens where,
# which versions and model files run.
def _leaks(body: str, settings: Settings, node_status: dict[str, Any]) -> list[str]:
    secrets = [
        str(settings.spool_dir),
        str(settings.data_dir),
        str(settings.models_dir),
        str(settings.scp.port),
        str(settings.web.port),
        dicom_node.__version__,
        "version",
        "path",
        "port",
        *(str(m) for m in node_status.get("models", {})),
    ]
    return [s for s in secrets if s in body]


def test_healthy_anonymous_gets_state_and_booleans_only(
    client: TestClient, settings: Settings, node_status: dict[str, Any]
) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {
            "database": True,
            "storage": True,
            "receiver": True,
            "workers": True,
            "models": True,
        },
    }
    assert _leaks(response.text, settings, node_status) == []


def test_details_for_a_user_or_token(
    admin: TestClient, viewer_token: str, client: TestClient, settings: Settings
) -> None:
    for response in (
        admin.get("/healthz"),
        client.get("/healthz", headers={"Authorization": f"Bearer {viewer_token}"}),
    ):
        details = response.json()["details"]
        assert details["scp"] == {"ok": True, "listening": True, "port": settings.scp.port}
        assert details["spool"]["path"] == str(settings.spool_dir)
        assert details["models"]["loaded"] == {
            "chest-xray-pneumonia": True,
            "brain-mri-tumor": True,
        }
    # a made-up token or a forged cookie gets the anonymous answer, not an error
    forged = client.get("/healthz", headers={"Authorization": "Bearer dn_" + "x" * 43})
    assert forged.status_code == 200 and "details" not in forged.json()
    client.cookies.set("dicom_node_session", "eyJ1aWQiOiAxfQ==.fake.signature")
    assert "details" not in client.get("/healthz").json()


@pytest.mark.parametrize(
    ("change", "failing"),
    [
        ({"scp_listening": False}, "receiver"),
        ({"models": {"chest-xray-pneumonia": {"loaded": False}}}, "models"),
        ({"workers_alive": 0}, "workers"),
    ],
)
def test_unhealthy_node(
    client: TestClient,
    settings: Settings,
    node_status: dict[str, Any],
    change: dict[str, Any],
    failing: str,
) -> None:
    node_status.update(change)
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy" and body["checks"][failing] is False
    assert [k for k, ok in body["checks"].items() if not ok] == [failing]
    assert _leaks(response.text, settings, node_status) == []


def test_degraded_when_routes_only_wait_for_weights(
    app: FastAPI, settings: Settings, node_status: dict[str, Any], admin: TestClient
) -> None:
    """The embedded configuration's seed routes wait for weights: 200 "degraded", so a load
    balancer keeps the node; a model that failed otherwise still makes it 503."""
    node_status["models"] = {
        "chest-xray-pneumonia": {"ok": True, "waiting_for_weights": False},
        "bone-xray-cnn": {"ok": False, "waiting_for_weights": True},
        "lung-ct-cnn": {"ok": False, "waiting_for_weights": True},
    }
    with TestClient(app) as anonymous:
        response = anonymous.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert [k for k, ok in body["checks"].items() if not ok] == ["models"]
    assert _leaks(response.text, settings, node_status) == []
    details = admin.get("/healthz").json()["details"]["models"]
    assert details["waiting_for_weights"] == ["bone-xray-cnn", "lung-ct-cnn"]

    node_status["models"]["brain-mri-tumor"] = {"loaded": False}  # failed, not waiting
    app.state.web.health.clear()
    response = admin.get("/healthz")
    assert response.status_code == 503 and response.json()["status"] == "unhealthy"
    assert response.json()["details"]["models"]["failed"] == ["brain-mri-tumor"]


def test_embedded_defaults_are_degraded_not_unhealthy(
    tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    """The embedded configuration routes seed models that have no weights. With the node's
    real model status for it, /healthz said 503 "unhealthy"; it says 200 "degraded"."""
    embedded = load_settings(environ={}, overrides={"node": {"data_dir": str(tmp_path / "d")}})
    embedded.spool_dir.mkdir(parents=True)
    models = route_model_status(embedded, model_availability(embedded))
    waiting = sorted(m for m, s in models.items() if s["waiting_for_weights"])
    assert {"bone-xray-cnn", "lung-ct-cnn", "breast-vgg16"} <= set(waiting)
    node = {"scp_listening": True, "workers_alive": 1, "workers_configured": 1, "models": models}
    with TestClient(create_app(embedded, sessions, status=lambda: node)) as c:
        response = c.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "degraded"
    assert _leaks(response.text, embedded, node) == []


def test_spool_not_writable(
    client: TestClient, settings: Settings, node_status: dict[str, Any]
) -> None:
    shutil.rmtree(settings.spool_dir)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["checks"]["storage"] is False
    assert _leaks(response.text, settings, node_status) == []


def test_status_callable_failure(settings: Settings, sessions: sessionmaker[Session]) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("node gone")

    with TestClient(create_app(settings, sessions, status=broken)) as c:
        response = c.get("/healthz")
        assert response.status_code == 503
        assert response.json()["checks"] == {"database": True, "storage": True, "node": False}
        assert c.get("/metrics").status_code == 200


def test_without_status_only_database_and_spool(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    with TestClient(create_app(settings, sessions)) as c:
        response = c.get("/healthz")
        assert response.status_code == 200
        assert response.json() == {
            "status": "ok",
            "checks": {"database": True, "storage": True},
        }


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_anonymous_flood_costs_one_probe_per_ttl(
    app: FastAPI,
    client: TestClient,
    engine: Engine,
    node_status: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """200 anonymous calls within the cache time: one spool write (with its fsync), one
    call of the node status, one database statement; the next after the TTL: one more."""
    probes: list[Path] = []
    real_probe = health.probe_spool

    def counting_probe(path: Path) -> str | None:
        probes.append(path)
        return real_probe(path)

    monkeypatch.setattr(health, "probe_spool", counting_probe)
    fsyncs: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])
    status_calls: list[int] = []
    ctx = app.state.web
    ctx.status = lambda: (status_calls.append(1), node_status)[1]
    clock = FakeClock()
    ctx.health = TtlValue(app.state.web.settings.web.health_cache_seconds, clock=clock)
    statements: list[str] = []

    def count_sql(*args: Any) -> None:
        statements.append(str(args[2]))

    event.listen(engine, "before_cursor_execute", count_sql)
    try:
        for _ in range(200):
            assert client.get("/healthz").status_code == 200
        assert (len(probes), len(fsyncs), len(status_calls)) == (1, 1, 1)
        assert statements == ["SELECT 1"]
        clock.now += 4.9
        client.get("/healthz")
        assert len(probes) == 1
        clock.now += 0.1  # 5 s (the default) after the first run
        client.get("/healthz")
        assert (len(probes), len(fsyncs), len(status_calls), len(statements)) == (2, 2, 2, 2)
    finally:
        event.remove(engine, "before_cursor_execute", count_sql)


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
    assert samples[("dicom_node_model_loaded", (("model", "chest-xray-pneumonia"),))] == 1
    chest = (("model", "chest-xray-pneumonia"),)
    assert samples[("dicom_node_results", chest)] == 1
    assert samples[("dicom_node_results_out_of_scope", chest)] == 1  # the adult's film
    assert samples[("dicom_node_results_out_of_scope", model)] == 0
    assert samples[("dicom_node_results", model)] == 1


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


def test_model_gauge_reads_the_node_status_keys() -> None:
    """The node reports ``ok`` / ``waiting_for_weights`` per model (route.waits); the gauge
    is 0 for a model whose routes wait, 1 for one whose weights are there."""
    from dicom_node.web.metrics import LatencyHistogram, NodeCollector

    status = {
        "scp_listening": True,
        "models": {
            "chest-xray-pneumonia": {"ok": True, "waiting_for_weights": False},
            "bone-xray-cnn": {"ok": False, "waiting_for_weights": True},
        },
    }
    collector = NodeCollector(None, lambda: status, LatencyHistogram())  # type: ignore[arg-type]
    families = {f.name: f for f in collector._node()}
    samples = {s.labels["model"]: s.value for s in families["dicom_node_model_loaded"].samples}
    assert samples == {"chest-xray-pneumonia": 1.0, "bone-xray-cnn": 0.0}
