"""Sessions (ended on the server), CSRF, login throttling, headers, and who may do what."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import Settings
from dicom_node.store import users
from dicom_node.store.db import AuditEntry, Delivery, Setting, User
from dicom_node.web import create_app
from dicom_node.web.secret import SECRET_SETTING
from tests.web.conftest import ADMIN, VIEWER, FixtureData, csrf_token, log_in


def _audit(sessions: sessionmaker[Session], action: str) -> list[AuditEntry]:
    with sessions() as session:
        return list(
            session.scalars(
                select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)
            )
        )


def test_session_cookie_flags(client: TestClient) -> None:
    token = csrf_token(client, "/login")
    response = client.post(
        "/login", data={"username": ADMIN[0], "password": ADMIN[1], "csrf_token": token}
    )
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "max-age=28800" in cookie
    assert "secure" not in cookie  # https_only is off by default


def test_secure_cookie_when_https_only(
    sessions: sessionmaker[Session], accounts: None, settings: Settings
) -> None:
    secure = settings.model_copy(
        update={"web": settings.web.model_copy(update={"https_only": True})}
    )
    with TestClient(create_app(secure, sessions), follow_redirects=False) as c:
        response = c.get("/login")
        assert "secure" in response.headers["set-cookie"].lower()
        assert response.headers["strict-transport-security"] == "max-age=31536000"


def test_security_headers(admin: TestClient, client: TestClient) -> None:
    for response in (admin.get("/studies"), client.get("/login"), client.get("/healthz")):
        headers = response.headers
        assert headers["content-security-policy"].startswith("default-src 'self'")
        assert headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["cache-control"] == "no-store"
        assert "strict-transport-security" not in headers  # plain HTTP by default
    css = client.get("/static/admin.css")
    assert css.status_code == 200 and "no-store" not in css.headers["cache-control"]


def test_login_page_has_no_data_and_login_needs_csrf(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    client.get("/login")
    response = client.post("/login", data={"username": ADMIN[0], "password": ADMIN[1]})
    assert response.status_code == 403
    response = client.post(
        "/login", data={"username": ADMIN[0], "password": ADMIN[1], "csrf_token": "forged"}
    )
    assert response.status_code == 403
    assert client.get("/studies").status_code == 303  # still not logged in


def test_failed_and_successful_logins_are_audited(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    token = csrf_token(client, "/login")
    bad = client.post(
        "/login", data={"username": ADMIN[0], "password": "wrong", "csrf_token": token}
    )
    assert bad.status_code == 401
    assert "Wrong username or password" in bad.text
    log_in(client, *ADMIN)
    entries = _audit(sessions, "login")
    assert [(e.username, e.success, e.client_address) for e in entries] == [
        ("alice", False, "testclient"),
        ("alice", True, "testclient"),
    ]
    assert entries[0].detail == {"reason": "bad credentials"}


def test_csrf_token_renewed_at_login(client: TestClient) -> None:
    before = csrf_token(client, "/login")
    log_in(client, *ADMIN)
    assert csrf_token(client) != before


def test_actions_need_csrf(
    admin: TestClient, data: FixtureData, sessions: sessionmaker[Session]
) -> None:
    delivery = data.deliveries["chest_sc"]
    assert admin.post(f"/deliveries/{delivery}/retry").status_code == 403
    assert (
        admin.post(f"/deliveries/{delivery}/retry", data={"csrf_token": "x" * 43}).status_code
        == 403
    )
    assert admin.post(f"/studies/{data.studies['chest']}/rerun", data={}).status_code == 403
    assert admin.post("/logout").status_code == 403
    assert admin.post("/studies", data={"q": "doe"}).status_code == 403
    with sessions() as session:
        assert session.get(Delivery, delivery).state == "failed"  # type: ignore[union-attr]
    # the token of another session does not work either
    with TestClient(admin.app, follow_redirects=False) as other:
        foreign = csrf_token(log_in(other, *ADMIN))
    assert (
        admin.post(f"/deliveries/{delivery}/retry", data={"csrf_token": foreign}).status_code == 403
    )


def test_api_with_session_needs_csrf_header(admin: TestClient, data: FixtureData) -> None:
    delivery = data.deliveries["chest_sc"]
    assert admin.post(f"/api/deliveries/{delivery}/retry").status_code == 403
    token = csrf_token(admin)
    response = admin.post(f"/api/deliveries/{delivery}/retry", headers={"X-CSRF-Token": token})
    assert response.status_code == 200
    assert response.json()["state"] == "pending"


def _attempt(c: TestClient, token: str, username: str, password: str) -> int:
    r = c.post("/login", data={"username": username, "password": password, "csrf_token": token})
    return r.status_code


def _from(app: FastAPI, address: str) -> TestClient:
    """A client whose requests come from ``address`` (what uvicorn would put in scope)."""
    return TestClient(app, follow_redirects=False, client=(address, 50000))


def test_throttle_per_address_and_user_pair(app: FastAPI, sessions: sessionmaker[Session]) -> None:
    """20 bad logins from A lock A out for that user only: the right password still works
    from B, and from A for another user; `users unlock` clears A."""
    with _from(app, "10.0.0.1") as a, _from(app, "10.0.0.2") as b:
        token_a, token_b = csrf_token(a, "/login"), csrf_token(b, "/login")
        codes = [_attempt(a, token_a, VIEWER[0], f"guess-{i}") for i in range(20)]
        assert codes == [401] * 5 + [429] * 15  # login_rate_limit = 5 in the tests
        # locked from A, even with the right password (so guessing stays slow) ...
        assert _attempt(a, token_a, VIEWER[0], VIEWER[1]) == 429
        # ... and the case of the name buys no more attempts
        assert _attempt(a, token_a, VIEWER[0].upper(), VIEWER[1]) == 429
        # not from B: the attacker at A cannot lock victor out of his own machine
        assert _attempt(b, token_b, VIEWER[0], VIEWER[1]) == 303
        # A is not locked for other users (5 failures are far below the address limit)
        with _from(app, "10.0.0.1") as a2:
            assert _attempt(a2, csrf_token(a2, "/login"), ADMIN[0], ADMIN[1]) == 303

        users.unlock_logins(sessions, VIEWER[0])  # what `dicom-node users unlock` does
        assert _attempt(a, token_a, VIEWER[0], "still-wrong") == 401
        assert _attempt(a, token_a, VIEWER[0], VIEWER[1]) == 303
    limited = [e for e in _audit(sessions, "login") if e.detail.get("reason") == "rate limited"]
    assert len(limited) == 17 and {e.client_address for e in limited} == {"10.0.0.1"}


def test_throttle_per_address_stops_spraying(
    settings: Settings, sessions: sessionmaker[Session], accounts: None
) -> None:
    """Many usernames from one address: after login_address_limit failures the address is
    blocked for every username, another address is not."""
    spraying = settings.model_copy(
        update={"web": settings.web.model_copy(update={"login_address_limit": 8})}
    )
    app = create_app(spraying, sessions)
    with _from(app, "10.0.0.9") as c, _from(app, "10.0.0.10") as other:
        token = csrf_token(c, "/login")
        codes = [_attempt(c, token, f"guess{i}", "password-1") for i in range(10)]
        assert codes == [401] * 8 + [429] * 2
        assert _attempt(c, token, ADMIN[0], ADMIN[1]) == 429
        assert _attempt(other, csrf_token(other, "/login"), ADMIN[0], ADMIN[1]) == 303


def test_viewer_cannot_act(
    viewer: TestClient, data: FixtureData, sessions: sessionmaker[Session]
) -> None:
    token = csrf_token(viewer)
    delivery = data.deliveries["chest_sc"]
    study = data.studies["chest"]
    assert (
        viewer.post(f"/deliveries/{delivery}/retry", data={"csrf_token": token}).status_code == 403
    )
    assert viewer.post(f"/studies/{study}/rerun", data={"csrf_token": token}).status_code == 403
    assert viewer.get("/export/studies.csv").status_code == 403
    assert viewer.get("/export/studies.json").status_code == 403
    assert viewer.get("/audit").status_code == 403
    page = viewer.get(f"/studies/{study}").text
    assert "Re-run" not in page and "Retry" not in page and "export" not in page.lower()
    with sessions() as session:
        assert session.get(Delivery, delivery).state == "failed"  # type: ignore[union-attr]
    refused = _audit(sessions, "forbidden")
    assert {e.target for e in refused} == {
        f"/deliveries/{delivery}/retry",
        f"/studies/{study}/rerun",
        "/export/studies.csv",
        "/export/studies.json",
        "/audit",
    }
    assert all(e.username == "victor" and not e.success for e in refused)


def _replay(app: FastAPI, cookie: str) -> TestClient:
    """A fresh client holding a copy of a session cookie (what a thief would have)."""
    c = TestClient(app, follow_redirects=False)
    c.cookies.set("dicom_node_session", cookie)
    return c


def _captured(client: TestClient) -> str:
    cookie = client.cookies.get("dicom_node_session")
    assert cookie
    return cookie


def _refused(app: FastAPI, cookie: str) -> None:
    with _replay(app, cookie) as c:
        page = c.get("/studies")
        assert page.status_code == 303 and page.headers["location"] == "/login"
        assert c.get("/api/me").status_code == 401
        assert c.get("/healthz").json().get("details") is None


def test_cookie_copied_before_logout_is_refused_after(
    app: FastAPI, admin: TestClient, sessions: sessionmaker[Session]
) -> None:
    cookie = _captured(admin)
    with _replay(app, cookie) as thief:
        assert thief.get("/studies").status_code == 200  # a copy works while logged in
    assert admin.post("/logout", data={"csrf_token": csrf_token(admin)}).status_code == 303
    assert admin.get("/studies").status_code == 303
    _refused(app, cookie)
    assert [e.username for e in _audit(sessions, "logout")] == ["alice"]
    # a new login works and gets a cookie of the new epoch
    log_in(admin, *ADMIN)
    assert admin.get("/studies").status_code == 200


def test_disable_ends_sessions_and_tokens(
    app: FastAPI, admin: TestClient, admin_token: str, sessions: sessionmaker[Session]
) -> None:
    cookie = _captured(admin)
    bearer = {"Authorization": f"Bearer {admin_token}"}
    assert admin.get("/api/me", headers=bearer).status_code == 200
    users.disable_user(sessions, ADMIN[0])
    assert admin.get("/studies").status_code == 303
    _refused(app, cookie)
    with TestClient(app) as c:
        assert c.get("/api/me", headers=bearer).status_code == 401
        assert c.get("/api/studies", headers=bearer).status_code == 401


def test_password_change_ends_sessions(
    app: FastAPI, viewer: TestClient, viewer_token: str, sessions: sessionmaker[Session]
) -> None:
    cookie = _captured(viewer)
    assert viewer.get("/studies").status_code == 200
    users.set_password(sessions, VIEWER[0], "a-new-password")
    assert viewer.get("/studies").status_code == 303
    _refused(app, cookie)
    # API tokens are separate credentials: a password change keeps them
    with TestClient(app) as c:
        me = c.get("/api/me", headers={"Authorization": f"Bearer {viewer_token}"})
        assert me.status_code == 200


def test_session_epoch_is_checked_not_just_the_signature(
    app: FastAPI, admin: TestClient, sessions: sessionmaker[Session]
) -> None:
    """A validly signed cookie of an older epoch is refused (the server-side record wins)."""
    cookie = _captured(admin)
    with sessions() as session:
        user = session.scalars(select(User).where(User.username == ADMIN[0])).one()
        users.end_sessions(session, user.id)
    _refused(app, cookie)


def test_forged_cookie_is_ignored(app: FastAPI) -> None:
    with TestClient(app, follow_redirects=False) as c:
        c.cookies.set("dicom_node_session", "eyJ1aWQiOiAxfQ==.fake.signature")
        assert c.get("/studies").status_code == 303


def test_secret_key_generated_once_and_kept(
    settings: Settings, sessions: sessionmaker[Session], accounts: None
) -> None:
    first = create_app(settings, sessions)
    with sessions() as session:
        stored = session.get(Setting, SECRET_SETTING)
        assert stored is not None and len(stored.value) >= 48
    with TestClient(first, follow_redirects=False) as c:
        log_in(c, *ADMIN)
        cookie = c.cookies.get("dicom_node_session")
    # a restarted node (a new app) accepts the session made before the restart
    with TestClient(create_app(settings, sessions), follow_redirects=False) as c:
        c.cookies.set("dicom_node_session", cookie or "")
        assert c.get("/studies").status_code == 200


def test_configured_secret_key_wins(settings: Settings, sessions: sessionmaker[Session]) -> None:
    configured = settings.model_copy(
        update={"web": settings.web.model_copy(update={"secret_key": "k" * 40})}
    )
    create_app(configured, sessions)
    with sessions() as session:
        assert session.get(Setting, SECRET_SETTING) is None


def test_no_patient_data_in_links(admin: TestClient, data: FixtureData) -> None:
    """Every href/src/action on every page holds UIDs and fixed words only."""
    token = csrf_token(admin)
    admin.post("/studies", data={"csrf_token": token, "q": "PID001"})
    pages = [
        "/studies",
        "/models",
        "/deliveries",
        "/audit",
        *(f"/studies/{u}" for u in data.studies.values()),
    ]
    patient_values = ["PID00", "DOE", "JANE", "ROE", "ACC00", "SMITH", "BRIEN", "EVIL"]
    for path in pages:
        html = admin.get(path).text
        for link in re.findall(r'(?:href|src|action)="([^"]*)"', html):
            assert not any(v.lower() in link.lower() for v in patient_values), (path, link)


def test_openapi_needs_authentication(client: TestClient, admin: TestClient) -> None:
    assert client.get("/api/openapi.json").status_code == 401
    assert client.get("/docs").status_code in (303, 404)
    schema = admin.get("/api/openapi.json").json()
    assert "/api/studies/search" in schema["paths"]
    assert not any(p.startswith("/studies") for p in schema["paths"])


@pytest.mark.parametrize("path", ["/api/studies", "/api/models", "/api/deliveries", "/api/me"])
def test_api_anonymous_401(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
