"""The console pages over HTTP: queue (pause, resume, retry, cancel), routes (with a file
test), destinations (C-ECHO against DCMTK storescp, a delivery's last success and error),
models and refused peers; logins, roles, CSRF and the audit of every action."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import Destination, Settings
from dicom_node.dispatch.delivery import Deliverer, ensure_delivery
from dicom_node.process import queue
from dicom_node.receive import refusals
from dicom_node.store.db import AuditEntry, Delivery, Instance, Job, Study
from dicom_node.store.states import DeliveryState, JobState, RefusalKind
from dicom_node.web import create_app
from tests.dicom_files import pydicom_file
from tests.peers import free_port, have_dcmtk, run_storescp
from tests.web.conftest import ADMIN, FixtureData, csrf_token, log_in

NOTICE_TEXT = "Not for diagnostic use"

CONSOLE = ["/queue", "/routes", "/destinations", "/models", "/refused"]


def _audit(sessions: sessionmaker[Session], action: str) -> list[AuditEntry]:
    with sessions() as session:
        return list(
            session.scalars(
                select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)
            )
        )


def _job_state(sessions: sessionmaker[Session], job_id: int) -> JobState:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.state


def test_console_pages_need_a_login(client: TestClient) -> None:
    for path in [*CONSOLE, "/routes/new", "/destinations/new", "/routes/chest/edit"]:
        response = client.get(path)
        assert (response.status_code, response.headers["location"]) == (303, "/login"), path
    assert client.post("/queue/pause").status_code == 403  # no session, no CSRF token


@pytest.mark.parametrize("who", ["admin", "viewer"])
def test_console_pages_render_with_the_notice(
    who: str, request: pytest.FixtureRequest, data: FixtureData
) -> None:
    client: TestClient = request.getfixturevalue(who)
    for path in CONSOLE:
        response = client.get(path)
        assert response.status_code == 200, path
        assert NOTICE_TEXT in response.text, path
        assert f'href="{path}" class="active"' in response.text, path
    pages = "".join(client.get(path).text for path in CONSOLE)
    actions = ["Pause processing", ">Retry<", "C-ECHO</button>"]
    if who == "viewer":
        assert not any(action in pages for action in actions)
    else:
        assert all(action in pages for action in actions)
    # The pages hold UIDs, not patient data.
    assert "DOE^JANE" not in pages and "PID001" not in pages


def test_queue_shows_jobs_with_their_errors(admin: TestClient, data: FixtureData) -> None:
    page = admin.get("/queue").text
    assert "ValueError: model crashed" in page
    assert f'action="/jobs/{data.jobs["failed"]}/retry"' in page
    assert f"/studies/{data.studies['failed']}" in page
    assert "failed 1" in page and "done 2" in page
    done = admin.get("/queue?view=done").text
    assert f'href="/studies/{data.studies["chest"]}"' in done
    assert "model crashed" not in done


def test_pause_and_resume_are_audited(
    admin: TestClient, viewer: TestClient, sessions: sessionmaker[Session], data: FixtureData
) -> None:
    token = csrf_token(admin, "/queue")
    response = admin.post("/queue/pause", data={"csrf_token": token, "view": "failed"})
    assert (response.status_code, response.headers["location"]) == (303, "/queue?view=failed")
    page = admin.get("/queue").text
    assert "Processing is paused</strong> by alice" in page
    assert "Resume processing" in page
    with sessions() as session:
        assert queue.claim_next(sessions, "w1") is None  # the workers see it
        assert queue.paused(session) is not None
    # A viewer may not, and the attempt is audited; no token, no change.
    viewer_token = csrf_token(viewer, "/queue")
    assert viewer.post("/queue/resume", data={"csrf_token": viewer_token}).status_code == 403
    assert admin.post("/queue/resume", data={}).status_code == 403
    assert "Processing is paused" in admin.get("/queue").text
    admin.post("/queue/resume", data={"csrf_token": token})
    assert "Processing is paused" not in admin.get("/queue").text
    assert [e.detail["changed"] for e in _audit(sessions, "pause_processing")] == [True]
    assert [e.detail["changed"] for e in _audit(sessions, "resume_processing")] == [True]
    [forbidden] = _audit(sessions, "forbidden")
    assert (forbidden.username, forbidden.target) == ("victor", "/queue/resume")


def test_retry_and_cancel_jobs(
    admin: TestClient, sessions: sessionmaker[Session], data: FixtureData
) -> None:
    [queued] = queue.rerun_series(sessions, data.series["brain"], reason="test")
    token = csrf_token(admin, "/queue")
    assert f'action="/jobs/{queued}/cancel"' in admin.get("/queue").text
    admin.post(f"/jobs/{queued}/cancel", data={"csrf_token": token})
    assert _job_state(sessions, queued) is JobState.CANCELLED
    assert f"Job {queued} cancelled." in admin.get("/queue").text

    failed = data.jobs["failed"]
    admin.post(f"/jobs/{failed}/retry", data={"csrf_token": token})
    assert _job_state(sessions, failed) is JobState.QUEUED
    # A done job can be neither retried nor cancelled: one line says why.
    done = data.jobs["chest"]
    admin.post(f"/jobs/{done}/cancel", data={"csrf_token": token})
    assert f"job {done} is done, not queued" in admin.get("/queue").text
    assert _job_state(sessions, done) is JobState.DONE

    cancels = _audit(sessions, "cancel_job")
    assert [(e.target, e.success) for e in cancels] == [(str(queued), True), (str(done), False)]
    assert cancels[1].detail["error"] == f"job {done} is done, not queued"
    [retry] = _audit(sessions, "retry_job")
    assert (retry.target, retry.username, retry.detail["via"]) == (str(failed), "alice", "page")


def test_refused_page(
    admin: TestClient, sessions: sessionmaker[Session], data: FixtureData
) -> None:
    refusals.record(
        sessions,
        RefusalKind.ASSOCIATION,
        calling_ae="STRANGER",
        called_ae="DICOM_NODE",
        address="10.1.2.3",
        meaning=refusals.rejection_meaning(1, 1, 3),
    )
    refusals.record(
        sessions,
        RefusalKind.STORE,
        calling_ae="CT1",
        called_ae="DICOM_NODE",
        address="10.1.2.4",
        status=0xA900,
        meaning="dataset does not match the SOP class of the request",
        reason="CT sent as MR",
        sop_instance_uid="1.2.3.4",
    )
    page = admin.get("/refused").text
    assert "2</small>" in page
    assert "STRANGER" in page and "10.1.2.3" in page and "calling AE title not recognised" in page
    assert "0xA900" in page and "CT sent as MR" in page and "1.2.3.4" in page
    stores = admin.get("/refused?kind=store").text
    assert "CT1" in stores and "STRANGER" not in stores
    assert admin.get("/refused?kind=nonsense").status_code == 422


def test_models_page_shows_intended_use_and_weights(admin: TestClient, data: FixtureData) -> None:
    page = admin.get("/models").text
    assert "Research and demonstration only. Not for diagnostic use." in page
    assert "Brain MRI tumour" in page or "brain-mri-tumor" in page
    assert page.count("<strong>") >= 2


def test_routes_page_and_test_a_file(
    admin: TestClient, viewer: TestClient, sessions: sessionmaker[Session], data: FixtureData
) -> None:
    page = admin.get("/routes").text
    assert "<strong>chest</strong>" in page and "<strong>brain</strong>" in page
    assert page.index("<strong>chest</strong>") < page.index("<strong>brain</strong>")
    # These test settings were not read from a file: editing says so.
    assert "These settings were not read from a configuration file." in page
    assert "Add a route" not in page

    with sessions() as session:
        before = session.scalar(select(func.count(Instance.id)))
    token = csrf_token(viewer, "/routes")
    ct = pydicom_file("CT_small.dcm")
    response = viewer.post(
        "/routes/test",
        data={"csrf_token": token, "calling_ae": "PACS_A"},
        files={"file": ("CT_small.dcm", ct.read_bytes(), "application/dicom")},
    )
    assert response.status_code == 200
    # The first route matches everything (no patterns): taken, or waiting for weights.
    assert "CT_small.dcm</strong>:" in response.text
    assert ("routed: chest" in response.text) or ("waiting for weights" in response.text)
    assert "<li>chest: " in response.text
    response = viewer.post(
        "/routes/test",
        data={"csrf_token": token},
        files={"file": ("notes.txt", b"not an image", "text/plain")},
    )
    assert "notes.txt: not a DICOM file" in response.text
    with sessions() as session:
        assert session.scalar(select(func.count(Instance.id))) == before  # nothing stored
        assert session.scalar(select(func.count(Study.id))) == len(data.studies)
    tests = _audit(sessions, "test_route")
    assert [e.success for e in tests] == [True, False]
    assert tests[0].username == "victor" and tests[0].target.startswith("1.3.6.1.4.1.5962")


def test_route_test_upload_is_bounded(
    viewer: TestClient, monkeypatch: pytest.MonkeyPatch, sessions: sessionmaker[Session]
) -> None:
    """A form body over the bound is refused before it is read (413), upload or not."""
    from dicom_node.web import csrf

    token = csrf_token(viewer, "/routes")
    monkeypatch.setattr(csrf, "MAX_FORM_BYTES", 4096)
    response = viewer.post(
        "/routes/test",
        data={"csrf_token": token},
        files={"file": ("big.dcm", b"\0" * 8192, "application/dicom")},
    )
    assert response.status_code == 413
    assert _audit(sessions, "test_route") == []


def test_routes_page_shows_match_exclude_and_waiting(
    tmp_path: Path, sessions: sessionmaker[Session], accounts: None
) -> None:
    from tests.web.conftest import make_settings

    base = make_settings(tmp_path)
    waiting_model = tmp_path / "models" / "bone-xray-cnn"
    waiting_model.mkdir(parents=True)
    source = Path(__file__).resolve().parents[2] / "models" / "bone-xray-cnn" / "model.toml"
    (waiting_model / "model.toml").write_text(source.read_text())
    settings = Settings.model_validate(
        {
            **base.model_dump(exclude={"routes"}),
            "routes": [
                {
                    "name": "bones",
                    "match": {"Modality": "^(CR|DX)$"},
                    "exclude": {"ImageType": "LOCALIZER"},
                    "models": ["bone-xray-cnn"],
                    "destinations": ["pacs"],
                },
                {"name": "off", "enabled": False, "models": ["chest-xray-pneumonia"]},
            ],
        }
    )
    with TestClient(create_app(settings, sessions), follow_redirects=False) as client:
        page = log_in(client, *ADMIN).get("/routes").text
    assert "<code>Modality</code> ~ <code>/^(CR|DX)$/</code>" in page
    assert "<code>ImageType</code> ~ <code>/LOCALIZER/</code>" in page
    assert 'step-wait">waiting</span>' in page and "waiting for weights of bone-xray-cnn" in page
    assert 'step-none">disabled</span>' in page


@pytest.fixture
def destinations_app(
    tmp_path: Path,
    settings: Settings,
    sessions: sessionmaker[Session],
    accounts: None,
    data: FixtureData,
) -> Iterator[tuple[TestClient, int]]:
    """The fixture node's "pacs" is a real DCMTK storescp; "dead" is a closed port."""
    with run_storescp(tmp_path / "pacs") as port:
        live = settings.model_copy(
            update={
                "destinations": (
                    Destination(name="pacs", ae_title="STORESCP", host="127.0.0.1", port=port),
                    Destination(
                        name="dead",
                        ae_title="NOBODY",
                        host="127.0.0.1",
                        port=free_port(),
                        timeout=5,
                    ),
                )
            }
        )
        with TestClient(create_app(live, sessions), follow_redirects=False) as client:
            yield log_in(client, *ADMIN), port


@pytest.mark.skipif(not have_dcmtk(), reason="DCMTK storescp not installed")
def test_destinations_echo_and_delivery_status(
    destinations_app: tuple[TestClient, int],
    settings: Settings,
    sessions: sessionmaker[Session],
    data: FixtureData,
) -> None:
    client, port = destinations_app
    page = client.get("/destinations").text
    assert f"<code>STORESCP@127.0.0.1:{port}</code>" in page
    assert "<td>no</td>" in page  # TLS
    token = csrf_token(client, "/destinations")
    client.post("/destinations/pacs/echo", data={"csrf_token": token})
    page = client.get("/destinations").text
    assert f"C-ECHO STORESCP@127.0.0.1:{port}: success" in page
    client.post("/destinations/dead/echo", data={"csrf_token": token})
    assert "connection refused (nothing listens on port" in client.get("/destinations").text
    assert client.post("/destinations/nowhere/echo", data={"csrf_token": token}).status_code == 303
    assert "destination &#39;nowhere&#39; is not configured" in client.get("/destinations").text
    echoes = _audit(sessions, "echo_destination")
    assert [(e.target, e.success) for e in echoes] == [
        ("pacs", True),
        ("dead", False),
        ("nowhere", False),
    ]

    # A real delivery to each: the pending PDF reaches storescp; one to "dead" fails.
    app_settings = client.app.state.web.settings  # type: ignore[attr-defined]
    with sessions() as session:
        pdf = session.get(Delivery, data.deliveries["chest_pdf"])
        assert pdf is not None
        ensure_delivery(
            session,
            destination="dead",
            sop_class_uid=pdf.sop_class_uid,
            sop_instance_uid=pdf.sop_instance_uid,
            path=Path(pdf.path),
            study_uid=pdf.study_uid,
            kind="pdf",
            job_id=pdf.job_id,
        )
        session.commit()
    Deliverer(app_settings, sessions).run_once()
    with sessions() as session:
        assert session.get(Delivery, data.deliveries["chest_pdf"]).state is DeliveryState.DONE  # type: ignore[union-attr]
    page = client.get("/destinations").text
    rows = {
        name: page.split(f"<strong>{name}</strong>", 1)[1].split("</tr>", 1)[0]
        for name in ("pacs", "dead")
    }
    assert "Z</td>" in rows["pacs"]  # last success, a UTC time
    assert (
        "connection refused" in rows["dead"]
        and 'class="num"><a href="/deliveries?state=pending">1</a>' in rows["dead"]
    )
    # The fixture's failed SC delivery to pacs counts as failed.
    assert '<a href="/deliveries?state=failed">1</a>' in rows["pacs"]


def test_console_api(
    app: object,
    admin_token: str,
    viewer_token: str,
    sessions: sessionmaker[Session],
    data: FixtureData,
) -> None:
    with TestClient(app, follow_redirects=False) as client:  # type: ignore[arg-type]
        admin = {"Authorization": f"Bearer {admin_token}"}
        viewer = {"Authorization": f"Bearer {viewer_token}"}
        page = client.get("/api/queue?view=failed", headers=viewer).json()
        assert page["paused"] is None and page["counts"]["failed"] == 1
        assert [j["id"] for j in page["items"]] == [data.jobs["failed"]]
        assert page["items"][0]["error"] == "ValueError: model crashed"
        assert client.post("/api/queue/pause", headers=viewer).status_code == 403
        assert client.post("/api/queue/pause", headers=admin).json() == {
            "paused": True,
            "changed": True,
        }
        assert client.get("/api/queue", headers=admin).json()["paused"]["by"] == "alice"
        assert client.post("/api/queue/resume", headers=admin).json()["changed"] is True
        retried = client.post(f"/api/jobs/{data.jobs['failed']}/retry", headers=admin)
        assert retried.json() == {"job_id": data.jobs["failed"], "state": "queued"}
        again = client.post(f"/api/jobs/{data.jobs['failed']}/retry", headers=admin)
        assert again.status_code == 409 and "not failed or cancelled" in again.json()["detail"]
        assert client.post("/api/jobs/999/cancel", headers=admin).status_code == 409

        routes = client.get("/api/routes", headers=viewer).json()
        assert [(r["position"], r["name"]) for r in routes] == [(1, "chest"), (2, "brain")]
        assert routes[0]["continue"] is False
        destinations = client.get("/api/destinations", headers=viewer).json()
        assert destinations[0]["name"] == "pacs" and destinations[0]["failed"] == 1
        assert destinations[0]["pending"] == 1 and destinations[0]["tls"] is False
        assert client.post("/api/destinations/nowhere/echo", headers=admin).status_code == 404
        packages = {
            m["model_id"]: m for m in client.get("/api/model-packages", headers=viewer).json()
        }
        assert packages["chest-xray-pneumonia"]["version"] == "0.3.0"
        assert packages["chest-xray-pneumonia"]["intended_use"].startswith("Research")
        refusals.record(
            sessions, RefusalKind.CONNECTION, address="10.9.9.9", meaning="host not allowed"
        )
        refused = client.get("/api/refusals", headers=viewer).json()
        assert refused["total"] == 1 and refused["items"][0]["address"] == "10.9.9.9"
    assert [e.detail["via"] for e in _audit(sessions, "pause_processing")] == ["api"]
