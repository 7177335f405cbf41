"""``dicom_node.store.users`` and the ``dicom-node users`` sub-command."""

from __future__ import annotations

import argparse
import datetime as dt
import io
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.commands import users as users_command
from dicom_node.config import Settings
from dicom_node.store import users
from dicom_node.store.db import ApiToken, AuditEntry, User, create_engine, session_factory
from tests.web.conftest import make_settings


def test_add_and_authenticate(sessions: sessionmaker[Session]) -> None:
    users.add_user(sessions, "bob", "correct horse", "admin")
    user = users.authenticate(sessions, "bob", "correct horse")
    assert user is not None and user.role == "admin" and user.last_login_at is not None
    assert users.authenticate(sessions, "bob", "wrong horse") is None
    assert users.authenticate(sessions, "nobody", "correct horse") is None
    with sessions() as session:
        stored = session.scalars(select(User)).one().password_hash
    assert stored.startswith("$argon2id$") and "correct horse" not in stored


@pytest.mark.parametrize(
    ("username", "password", "role", "message"),
    [
        ("bob", "short", "viewer", "at least 8"),
        ("bob smith", "long enough", "viewer", "invalid username"),
        ("bob", "long enough", "root", "invalid role"),
    ],
)
def test_add_user_validation(
    sessions: sessionmaker[Session], username: str, password: str, role: str, message: str
) -> None:
    with pytest.raises(users.UserError, match=message):
        users.add_user(sessions, username, password, role)


def test_duplicate_disable_and_passwd(sessions: sessionmaker[Session]) -> None:
    users.add_user(sessions, "carol", "password-1")
    with pytest.raises(users.UserError, match="exists"):
        users.add_user(sessions, "carol", "password-2")
    users.set_password(sessions, "carol", "password-3")
    assert users.authenticate(sessions, "carol", "password-1") is None
    assert users.authenticate(sessions, "carol", "password-3") is not None
    token = users.create_token(sessions, "carol")
    users.disable_user(sessions, "carol")
    assert users.authenticate(sessions, "carol", "password-3") is None
    with sessions() as session:
        assert users.user_for_token(session, token) is None
        assert session.scalars(select(ApiToken)).one().revoked
    with pytest.raises(users.UserError, match="disabled"):
        users.create_token(sessions, "carol")
    with sessions() as session:
        assert session.scalars(select(User)).one().session_epoch == 2  # passwd, disable
    with pytest.raises(users.UserError, match="no user"):
        users.disable_user(sessions, "dave")
    assert [u.username for u in users.list_users(sessions)] == ["carol"]


@pytest.fixture
def cli_settings(tmp_path: Path) -> Settings:
    settings = make_settings(tmp_path)
    create_engine(settings.database_url).dispose()
    return settings


def _run(
    settings: Settings,
    argv: list[str],
    stdin: str = "",
    monkeypatch: pytest.MonkeyPatch | None = None,
) -> int:
    parser = argparse.ArgumentParser(prog="dicom-node")
    users_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    if monkeypatch is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return users_command.run(args, settings)


def test_cli(
    cli_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        _run(
            cli_settings,
            ["users", "add", "erin", "--role", "admin", "--password-stdin"],
            "secret-pass\n",
            monkeypatch,
        )
        == 0
    )
    assert "user erin added (admin)" in capsys.readouterr().out
    assert (
        _run(
            cli_settings, ["users", "add", "erin", "--password-stdin"], "secret-pass\n", monkeypatch
        )
        == 1
    )
    assert "exists" in capsys.readouterr().err
    assert _run(cli_settings, ["users", "list"]) == 0
    assert "erin" in capsys.readouterr().out
    assert _run(cli_settings, ["users", "token", "erin", "--name", "grafana"]) == 0
    token = capsys.readouterr().out.strip()
    sessions = session_factory(create_engine(cli_settings.database_url))
    with sessions() as session:
        user = users.user_for_token(session, token)
        assert user is not None and user.username == "erin"
    assert (
        _run(
            cli_settings,
            ["users", "passwd", "erin", "--password-stdin"],
            "other-pass\n",
            monkeypatch,
        )
        == 0
    )
    assert users.authenticate(sessions, "erin", "other-pass") is not None
    assert _run(cli_settings, ["users", "token", "erin", "--revoke"]) == 0
    assert "1 token(s) of erin revoked" in capsys.readouterr().out
    assert _run(cli_settings, ["users", "unlock", "erin"]) == 0
    assert "login throttle of erin cleared" in capsys.readouterr().out
    with sessions() as session:
        unlocked = users.login_unlocked_at(session, "ERIN")  # throttle keys ignore case
        assert unlocked is not None
    assert _run(cli_settings, ["users", "disable", "erin"]) == 0
    assert users.authenticate(sessions, "erin", "other-pass") is None
    assert _run(cli_settings, ["users", "disable", "nobody"]) == 1
    assert _run(cli_settings, ["users", "unlock", "nobody"]) == 1
    assert "no user 'nobody'" in capsys.readouterr().err
    # every change is audited, by the OS login that ran it, from "cli"; failures change
    # nothing and are not
    with sessions() as session:
        entries = list(session.scalars(select(AuditEntry).order_by(AuditEntry.id)))
    assert [(e.action, e.target) for e in entries] == [
        ("user_add", "erin"),
        ("token_create", "erin"),
        ("user_passwd", "erin"),
        ("token_revoke", "erin"),
        ("login_unlock", "erin"),
        ("user_disable", "erin"),
    ]
    assert {e.client_address for e in entries} == {"cli"}
    assert all(e.username.startswith("cli:") and e.success for e in entries)
    assert entries[3].detail == {"count": 1}
    with sessions() as session:
        erin = session.scalars(select(User)).one()
        assert erin.session_epoch == 2  # passwd and disable each ended the sessions


def test_cli_password_prompt_mismatch(
    cli_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = iter(["first-password", "second-password"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)  # as if typed at a terminal
    assert _run(cli_settings, ["users", "add", "frank"]) == 1
    assert "do not match" in capsys.readouterr().err


def test_token_expiry_from_the_cli(
    cli_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """``users token NAME --expires-in DAYS``: the token alone on stdout, its end on
    stderr and in the audit; valid until then, refused after with the reason."""
    sessions = session_factory(create_engine(cli_settings.database_url))
    users.add_user(sessions, "gina", "secret-pass", "uploader")
    before = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    assert _run(cli_settings, ["users", "token", "gina", "--expires-in", "2"]) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert token.startswith(users.TOKEN_PREFIX) and "\n" not in token
    assert "the token expires at" in err
    with sessions() as session:
        row = session.scalars(select(ApiToken)).one()
        assert row.expires_at is not None
        assert abs((row.expires_at - before) - dt.timedelta(days=2)) < dt.timedelta(minutes=1)
        entry = session.scalars(select(AuditEntry)).one()
        assert entry.action == "token_create"
        assert entry.detail["expires_at"] == row.expires_at.isoformat(timespec="seconds")
        check = users.check_token(session, token)
        assert check.user is not None and check.user.username == "gina"
        # two days later (the clock moved on): refused, and the reason says why
        row.expires_at = before - dt.timedelta(minutes=1)
        session.commit()
        check = users.check_token(session, token)
        assert check.user is None and "expired" in check.reason
        assert users.user_for_token(session, token) is None
    # a token without --expires-in never ends; a nonsense expiry is one line, exit 1
    assert _run(cli_settings, ["users", "token", "gina"]) == 0
    assert "expires" not in capsys.readouterr().err
    assert _run(cli_settings, ["users", "token", "gina", "--expires-in", "0"]) == 1
    assert "--expires-in must be between" in capsys.readouterr().err
    with sessions() as session:
        assert [t.expires_at is None for t in session.scalars(select(ApiToken))] == [False, True]
