"""Editing routes and destinations on the admin page, over HTTP: the node's own TOML file
is changed (comments kept), each edit validated like the file and audited with its diff,
and the settings in force change at once."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import LiveSettings, load_settings
from dicom_node.store.db import AuditEntry, Delivery
from dicom_node.store.states import DeliveryState
from dicom_node.web import create_app
from tests.web.conftest import ADMIN, VIEWER, csrf_token, log_in
from tests.web.test_config_edit import comment_lines, write_config

VERSION_RE = re.compile(r'name="version" value="([0-9a-f]{64})"')


@pytest.fixture
def live(tmp_path: Path) -> LiveSettings:
    return LiveSettings(load_settings(write_config(tmp_path), environ={}))


@pytest.fixture
def config(live: LiveSettings) -> Path:
    assert live.current.origin is not None
    return live.current.origin.path


@pytest.fixture
def admin(
    live: LiveSettings, sessions: sessionmaker[Session], accounts: None
) -> Iterator[TestClient]:
    app = create_app(live, sessions)
    app.state.web.editor.environ = {}  # as the settings were read: no environment
    with TestClient(app, follow_redirects=False) as client:
        yield log_in(client, *ADMIN)


def _version(client: TestClient, path: str) -> str:
    match = VERSION_RE.search(client.get(path).text)
    assert match, f"no file version on {path}"
    return match.group(1)


def _audit(sessions: sessionmaker[Session], action: str) -> list[AuditEntry]:
    with sessions() as session:
        return list(
            session.scalars(
                select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)
            )
        )


def _route_form(client: TestClient, path: str, **values: Any) -> dict[str, Any]:
    form = {
        "csrf_token": csrf_token(client, path),
        "version": _version(client, path),
        "name": "ct-forward",
        "enabled": "true",
        "match": "Modality = ^CT$\nBodyPartExamined = ^CHEST$",
        "exclude": "ImageType = LOCALIZER",
        "destinations": ["pacs"],
        "forward": "true",
        "key_slices": "1",
    }
    form.update(values)
    return form


def test_add_a_route(
    admin: TestClient, live: LiveSettings, config: Path, sessions: sessionmaker[Session]
) -> None:
    before = config.read_text()
    page = admin.get("/routes/new").text
    assert "chest-xray-pneumonia" in page and 'value="pacs"' in page
    response = admin.post("/routes/new", data=_route_form(admin, "/routes/new"))
    assert (response.status_code, response.headers["location"]) == (303, "/routes")
    assert "Route ct-forward saved" in admin.get("/routes").text
    route = live.current.routes[-1]
    assert route.name == "ct-forward" and route.forward
    assert dict(route.match) == {"Modality": "^CT$", "BodyPartExamined": "^CHEST$"}
    assert load_settings(config, environ={}).routes == live.current.routes
    assert comment_lines(config.read_text()) == comment_lines(before)
    [entry] = _audit(sessions, "add_route")
    assert (entry.username, entry.target, entry.success) == ("alice", "ct-forward", True)
    assert '+name = "ct-forward"' in entry.detail["diff"]
    audit_page = admin.get("/audit?action=add_route").text
    assert "diff of the configuration file" in audit_page


def test_refused_edits_show_why_and_change_nothing(
    admin: TestClient, live: LiveSettings, config: Path, sessions: sessionmaker[Session]
) -> None:
    before = config.read_text()
    form = _route_form(admin, "/routes/new", destinations=[], forward="true")
    response = admin.post("/routes/new", data=form)
    assert response.status_code == 422
    assert "forward = true needs at least one destination" in response.text
    assert f"invalid configuration in {config}" in response.text
    assert 'value="ct-forward"' in response.text  # the form keeps what was typed
    response = admin.post("/routes/new", data=_route_form(admin, "/routes/new", match="Modality"))
    assert "match line 1: write Keyword = pattern" in response.text
    # Written on an old page: someone changed the file meanwhile.
    stale = _route_form(admin, "/routes/new")
    config.write_text(config.read_text() + "\n# a note by hand\n")
    before = config.read_text()
    response = admin.post("/routes/new", data=stale)
    assert "changed since this page was opened" in response.text
    assert config.read_text() == before and live.version == 0
    assert [e.success for e in _audit(sessions, "add_route")] == [False, False]


def test_edit_move_disable_and_delete_routes(
    admin: TestClient, live: LiveSettings, config: Path, sessions: sessionmaker[Session]
) -> None:
    page = admin.get("/routes/brain-mri/edit").text
    assert "Modality = ^MR$" in page and 'name="pdf" value="true" checked' in page
    form = _route_form(
        admin,
        "/routes/brain-mri/edit",
        name="ignored-renamed",
        match="Modality = ^MR$\nBodyPartExamined = ^(BRAIN|HEAD|SKULL)$",
        exclude="ImageType = LOCALIZER",
        models=["brain-mri-tumor"],
        forward="",
        pdf="true",
    )
    del form["forward"]
    response = admin.post("/routes/brain-mri/edit", data=form)
    assert response.status_code == 303, response.text
    route = live.current.route("brain-mri")  # the name in the URL wins
    assert route.match["BodyPartExamined"] == "^(BRAIN|HEAD|SKULL)$" and route.pdf
    assert "key_slices = 1  # occlusion maps cost" in config.read_text()

    token = csrf_token(admin, "/routes")
    admin.post(
        "/routes/brain-mri/move",
        data={"csrf_token": token, "version": _version(admin, "/routes"), "direction": "up"},
    )
    assert [r.name for r in live.current.routes[:2]] == ["brain-mri", "chest-xray"]
    admin.post(
        "/routes/chest-xray/disable",
        data={"csrf_token": token, "version": _version(admin, "/routes")},
    )
    assert live.current.route("chest-xray").enabled is False
    assert 'step-none">disabled</span>' in admin.get("/routes").text
    admin.post(
        "/routes/chest-xray/enable",
        data={"csrf_token": token, "version": _version(admin, "/routes")},
    )
    assert live.current.route("chest-xray").enabled is True
    admin.post(
        "/routes/breast-mg/delete",
        data={"csrf_token": token, "version": _version(admin, "/routes")},
    )
    assert "breast-mg" not in [r.name for r in live.current.routes]
    assert "breast-mg" not in config.read_text()
    actions = ["edit_route", "move_route", "disable_route", "enable_route", "delete_route"]
    for action in actions:
        [entry] = _audit(sessions, action)
        assert entry.success and entry.detail["diff"], action
    assert live.version == 5


def test_destinations_are_edited_held_and_protected(
    admin: TestClient, live: LiveSettings, config: Path, sessions: sessionmaker[Session]
) -> None:
    path = "/destinations/pacs/edit"
    page = admin.get(path).text
    assert 'name="ae_title" value="ORTHANC"' in page
    form = {
        "csrf_token": csrf_token(admin, path),
        "version": _version(admin, path),
        "enabled": "true",
        "ae_title": "PACS2",
        "host": "127.0.0.1",
        "port": "abc",
        "max_attempts": "8",
        "backoff_seconds": "5",
        "backoff_max": "600",
        "timeout": "30",
        "concurrency": "1",
        "sr_class": "comprehensive",
    }
    response = admin.post(path, data=form)
    assert response.status_code == 422
    assert "destinations.0.port: Input should be a valid integer" in response.text
    assert "(got &#39;abc&#39;)" in response.text
    response = admin.post(path, data={**form, "port": "11112"})
    assert response.status_code == 303
    dest = live.current.destination("pacs")
    assert (dest.ae_title, dest.port, dest.sr_class) == ("PACS2", 11112, "comprehensive")
    text = config.read_text()
    assert 'sr_class = "comprehensive"   # or "comprehensive" / "enhanced"' in text

    # Add a second one, hold it, and refuse to delete one with pending deliveries.
    new = {
        **form,
        "version": _version(admin, "/destinations/new"),
        "name": "archive",
        "port": "104",
        "ae_title": "ARCHIVE",
        "sr_class": "comprehensive3d",
    }
    assert admin.post("/destinations/new", data=new).status_code == 303
    token = csrf_token(admin, "/destinations")
    admin.post(
        "/destinations/archive/disable",
        data={"csrf_token": token, "version": _version(admin, "/destinations")},
    )
    assert live.current.destination("archive").enabled is False
    assert 'step-wait">held</span>' in admin.get("/destinations").text
    with sessions() as session:
        session.add(
            Delivery(
                destination="archive",
                sop_class_uid="1.2",
                sop_instance_uid="1.2.3",
                path="/x",
                state=DeliveryState.PENDING,
            )
        )
        session.commit()
    admin.post(
        "/destinations/archive/delete",
        data={"csrf_token": token, "version": _version(admin, "/destinations")},
    )
    assert "has 1 pending deliveries" in admin.get("/destinations").text
    assert live.current.destination("archive").name == "archive"
    # A destination that routes name cannot go: the file's own rule.
    admin.post(
        "/destinations/pacs/delete",
        data={"csrf_token": token, "version": _version(admin, "/destinations")},
    )
    assert "unknown destination &#39;pacs&#39;" in admin.get("/destinations").text
    assert [e.success for e in _audit(sessions, "delete_destination")] == [False, False]


def test_viewers_cannot_edit(
    live: LiveSettings, sessions: sessionmaker[Session], accounts: None, config: Path
) -> None:
    before = config.read_text()
    with TestClient(create_app(live, sessions), follow_redirects=False) as client:
        log_in(client, *VIEWER)
        assert client.get("/routes/new").status_code == 403
        assert "/routes/chest-xray/edit" not in client.get("/routes").text
        token = csrf_token(client, "/routes")
        response = client.post(
            "/routes/chest-xray/disable", data={"csrf_token": token, "version": "x"}
        )
        assert response.status_code == 403
    assert config.read_text() == before


def test_embedded_configuration_says_how_to_edit(
    sessions: sessionmaker[Session], accounts: None, tmp_path: Path
) -> None:
    settings = load_settings(environ={}, overrides={"node": {"data_dir": str(tmp_path)}})
    with TestClient(create_app(settings, sessions), follow_redirects=False) as client:
        log_in(client, *ADMIN)
        for path in ("/routes", "/destinations", "/routes/new"):
            page = client.get(path).text
            assert "embedded default configuration, which is read-only" in page, path
            assert "dicom-node --config /etc/dicom-node.toml serve" in page, path
        assert "Add a route" not in client.get("/routes").text
        token = csrf_token(client, "/routes")
        response = client.post(
            "/routes/chest-xray/disable", data={"csrf_token": token, "version": ""}
        )
        assert response.status_code == 303
        assert "embedded default configuration" in client.get("/routes").text
    assert settings.route("chest-xray").enabled
