"""The JSON API: bearer tokens, the same permissions as the pages, audit entries."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.store import users
from dicom_node.store.db import ApiToken, AuditEntry, Delivery
from tests.web.conftest import ADMIN, FixtureData


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _audit(sessions: sessionmaker[Session], action: str) -> list[AuditEntry]:
    with sessions() as session:
        return list(session.scalars(select(AuditEntry).where(AuditEntry.action == action)))


def test_token_identifies_user(client: TestClient, admin_token: str, viewer_token: str) -> None:
    assert client.get("/api/me", headers=_bearer(admin_token)).json() == {
        "username": "alice",
        "role": "admin",
    }
    assert client.get("/api/me", headers=_bearer(viewer_token)).json()["role"] == "viewer"
    for bad in ["", "dn_nope", "Basic abc", admin_token + "x"]:
        response = client.get("/api/me", headers={"Authorization": f"Bearer {bad}"})
        assert response.status_code == 401, bad


def test_token_stored_as_hash_only(sessions: sessionmaker[Session], admin_token: str) -> None:
    with sessions() as session:
        row = session.scalars(select(ApiToken)).one()
        assert admin_token not in row.token_hash and len(row.token_hash) == 64


def test_revoked_or_disabled_token_refused(
    client: TestClient, sessions: sessionmaker[Session], admin_token: str, viewer_token: str
) -> None:
    assert users.revoke_tokens(sessions, ADMIN[0]) == 1
    assert client.get("/api/me", headers=_bearer(admin_token)).status_code == 401
    users.disable_user(sessions, "victor")
    assert client.get("/api/me", headers=_bearer(viewer_token)).status_code == 401


def test_list_and_filter(
    client: TestClient, viewer_token: str, data: FixtureData, sessions: sessionmaker[Session]
) -> None:
    page = client.get("/api/studies", headers=_bearer(viewer_token)).json()
    assert page["total"] == 5 and page["page"] == 1
    assert page["items"][0]["patient_id"] == "PID005"
    mr = client.get("/api/studies?modality=MR", headers=_bearer(viewer_token)).json()
    assert [s["patient_id"] for s in mr["items"]] == ["PID002"]
    assert mr["items"][0]["models"][0]["model_id"] == "brain-mri-tumor"
    paged = client.get("/api/studies?page_size=2&page=3", headers=_bearer(viewer_token)).json()
    assert paged["pages"] == 3 and len(paged["items"]) == 1
    # the free-text search is a POST: no patient data in the URL
    assert client.get("/api/studies?q=DOE", headers=_bearer(viewer_token)).json()["total"] == 5
    found = client.post(
        "/api/studies/search",
        json={"filter": {"q": "jane doe"}, "sort": "patient_id", "direction": "asc"},
        headers=_bearer(viewer_token),
    ).json()
    assert [s["patient_id"] for s in found["items"]] == ["PID001"]
    entries = _audit(sessions, "api_list_studies")
    assert len(entries) == 5 and entries[-1].detail["q"] == "jane doe"


def test_study_detail(
    client: TestClient, viewer_token: str, data: FixtureData, sessions: sessionmaker[Session]
) -> None:
    uid = data.studies["chest"]
    body = client.get(f"/api/studies/{uid}", headers=_bearer(viewer_token)).json()
    [series] = body["series"]
    [job] = series["jobs"]
    [result] = job["results"]
    assert result["predicted_class"] == "PNEUMONIA" and result["has_gradcam"] and result["has_pdf"]
    assert result["sr"][0]["name"] == "Imaging Measurement Report"
    assert {d["state"] for d in job["deliveries"]} == {"done", "failed", "pending"}
    assert "path" not in str(body)  # no server paths
    assert client.get("/api/studies/1.2.3.4", headers=_bearer(viewer_token)).status_code == 404
    assert client.get("/api/studies/abc", headers=_bearer(viewer_token)).status_code == 422
    assert [e.target for e in _audit(sessions, "api_view_study")] == [uid, "1.2.3.4"]


def test_gradcam_with_token(client: TestClient, viewer_token: str, data: FixtureData) -> None:
    url = f"/studies/{data.studies['chest']}/results/{data.results['chest']}/gradcam.png"
    assert client.get(url).status_code == 401
    assert client.get(url, headers=_bearer(viewer_token)).content.startswith(b"\x89PNG")


def test_models_and_deliveries(client: TestClient, viewer_token: str, data: FixtureData) -> None:
    models = {
        m["model_id"]: m for m in client.get("/api/models", headers=_bearer(viewer_token)).json()
    }
    assert models["brain-mri-tumor"]["p95_latency_seconds"] == 3.5
    assert models["brain-mri-tumor"]["routes"] == ["brain"]
    deliveries = client.get("/api/deliveries", headers=_bearer(viewer_token)).json()
    assert [d["state"] for d in deliveries["items"]] == ["failed", "pending"]
    failed = client.get("/api/deliveries?state=failed", headers=_bearer(viewer_token)).json()
    assert failed["total"] == 1


def test_viewer_token_cannot_act(
    client: TestClient, viewer_token: str, data: FixtureData, sessions: sessionmaker[Session]
) -> None:
    delivery = data.deliveries["chest_sc"]
    assert (
        client.post(f"/api/deliveries/{delivery}/retry", headers=_bearer(viewer_token)).status_code
        == 403
    )
    assert (
        client.post(
            f"/api/studies/{data.studies['chest']}/rerun", headers=_bearer(viewer_token)
        ).status_code
        == 403
    )
    assert client.get("/api/audit", headers=_bearer(viewer_token)).status_code == 403
    with sessions() as session:
        assert session.get(Delivery, delivery).state == "failed"  # type: ignore[union-attr]


def test_admin_token_acts_without_csrf(
    client: TestClient, admin_token: str, data: FixtureData, sessions: sessionmaker[Session]
) -> None:
    delivery = data.deliveries["chest_sc"]
    response = client.post(f"/api/deliveries/{delivery}/retry", headers=_bearer(admin_token))
    assert response.status_code == 200 and response.json()["attempts"] == 8
    again = client.post(f"/api/deliveries/{delivery}/retry", headers=_bearer(admin_token))
    assert again.status_code == 409
    rerun = client.post(f"/api/studies/{data.studies['brain']}/rerun", headers=_bearer(admin_token))
    assert rerun.status_code == 200 and len(rerun.json()["jobs"]) == 1
    assert (
        client.post(
            f"/api/studies/{data.studies['dx']}/rerun", headers=_bearer(admin_token)
        ).status_code
        == 409
    )
    assert client.post("/api/studies/1.2.3/rerun", headers=_bearer(admin_token)).status_code == 404
    audit = client.get("/api/audit?action=retry_delivery", headers=_bearer(admin_token)).json()
    assert [e["success"] for e in audit["items"]] == [False, True]
    assert all(e["detail"]["via"] == "api" for e in audit["items"])
