"""Migrations 0003 to 0007 upgrade an existing database; the database refuses
unknown states."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.exc import IntegrityError, StatementError

from dicom_node.store import users
from dicom_node.store.db import (
    ApiToken,
    Delivery,
    Job,
    Result,
    Series,
    User,
    create_engine,
    downgrade,
    make_engine,
    session_factory,
    upgrade,
)
from dicom_node.store.states import DeliveryState, JobState, SeriesState

pytestmark = pytest.mark.postgres

NOW = dt.datetime(2026, 12, 1, 12, 0, 0)


def _fill_at_0002(engine: Engine) -> None:
    """Rows as a node of the previous release wrote them (states as plain text)."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO study (id, study_uid, patient_id, patient_name, accession_number,"
                " study_date, study_description, first_received_at, last_received_at)"
                " VALUES (1, '1.2.3', 'P', 'N', '', '', '', :t, :t)"
            ),
            {"t": NOW},
        )
        conn.execute(
            text(
                "INSERT INTO series (id, series_uid, study_id, modality, body_part,"
                " series_description, series_number, calling_ae, instance_count,"
                " first_received_at, last_received_at, state, generation, route_reason)"
                " VALUES (1, '1.2.3.1', 1, 'CR', 'CHEST', '', '', 'PACS', 1, :t, :t,"
                " 'routed', 0, 'r')"
            ),
            {"t": NOW},
        )
        conn.execute(
            text(
                "INSERT INTO instance (id, sop_instance_uid, sop_class_uid, transfer_syntax_uid,"
                " series_id, path, size, calling_ae, remote_address, received_at, generation)"
                " VALUES (1, '1.2.3.1.1', '1.2', '1.2.840.10008.1.2.1', 1, '/x', 1, 'PACS',"
                " '127.0.0.1', :t, 0)"
            ),
            {"t": NOW},
        )
        conn.execute(
            text(
                "INSERT INTO job (id, series_id, generation, route_name, state, attempts,"
                " worker, error, created_at) VALUES (1, 1, 0, 'chest', 'done', 1, 'w1', '', :t)"
            ),
            {"t": NOW},
        )
        conn.execute(
            text(
                "INSERT INTO delivery (id, job_id, destination, kind, sop_class_uid,"
                " sop_instance_uid, study_uid, path, state, attempts, last_error, created_at,"
                " next_attempt_at) VALUES (1, 1, 'pacs', 'sr', '1.2', '1.2.3.9', '1.2.3', '/y',"
                " 'pending', 2, 'refused', :t, :t)"
            ),
            {"t": NOW},
        )


def test_0003_upgrades_existing_rows_and_refuses_unknown_states(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine, "0002")
    _fill_at_0002(engine)
    upgrade(engine)  # to head: adds the CHECK constraints, rows kept

    sessions = session_factory(engine)
    with sessions() as session:
        series = session.scalars(select(Series)).one()
        job = session.scalars(select(Job)).one()
        delivery = session.scalars(select(Delivery)).one()
        # Loaded as the enums; the rows and their other columns survived the table copy.
        assert series.state is SeriesState.ROUTED and series.route_reason == "r"
        assert job.state is JobState.DONE and job.worker == "w1"
        assert delivery.state is DeliveryState.PENDING and delivery.attempts == 2

    # The database itself refuses a state no code knows (raw SQL, past the ORM).
    for table in ("series", "job", "delivery"):
        with (
            pytest.raises(IntegrityError, match=f"ck_{table}_state|CHECK constraint"),
            engine.begin() as conn,
        ):
            conn.execute(text(f"UPDATE {table} SET state = 'finished' WHERE id = 1"))

    # The ORM refuses it before the database does.
    with sessions() as session:
        job = session.scalars(select(Job)).one()
        job.state = "finished"  # type: ignore[assignment]
        with pytest.raises(StatementError, match="finished"):
            session.commit()
    engine.dispose()


def test_downgrade_to_0001_and_up_again(database_url: str) -> None:
    """Every migration can be undone and redone (0002's tables and indexes, 0003's checks)."""
    engine = create_engine(database_url)
    downgrade(engine, "0001")
    assert "api_token" not in inspect(engine).get_table_names()
    with engine.begin() as conn:  # no CHECK any more: the old free-text state is accepted
        conn.execute(
            text(
                "INSERT INTO study (study_uid, patient_id, patient_name, accession_number,"
                " study_date, study_description, first_received_at, last_received_at)"
                " VALUES ('9.9', '', '', '', '', '', :t, :t)"
            ),
            {"t": NOW},
        )
    upgrade(engine)
    inspector = inspect(engine)
    assert "api_token" in inspector.get_table_names()
    assert "ix_study_patient_name" in {i["name"] for i in inspector.get_indexes("study")}
    assert {c["name"] for c in inspector.get_check_constraints("job")} >= {"ck_job_state"}
    engine.dispose()


def test_0004_adds_session_epoch_to_existing_users(database_url: str) -> None:
    """Users of a 0003 database keep their rows, start at epoch 0, and the web session check
    works on them; the downgrade drops the two columns and keeps the users."""
    engine = make_engine(database_url)
    upgrade(engine, "0003")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO user_account (id, username, password_hash, role, active,"
                " created_at) VALUES (1, 'alice', 'hash', 'admin', :yes, :t)"
            ),
            {"yes": True, "t": NOW},
        )
    upgrade(engine)
    sessions = session_factory(engine)
    with sessions() as session:
        user = session.scalars(select(User)).one()
        assert (user.username, user.role, user.session_epoch) == ("alice", "admin", 0)
        assert user.login_unlocked_at is None
        users.end_sessions(session, user.id)
    users.unlock_logins(sessions, "alice")
    with sessions() as session:
        user = session.scalars(select(User)).one()
        assert user.session_epoch == 1 and user.login_unlocked_at is not None

    downgrade(engine, "0003")
    columns = {c["name"] for c in inspect(engine).get_columns("user_account")}
    assert "session_epoch" not in columns and "login_unlocked_at" not in columns
    with engine.connect() as conn:
        assert conn.execute(text("SELECT username FROM user_account")).scalar_one() == "alice"
    upgrade(engine)
    with sessions() as session:
        assert session.scalars(select(User)).one().session_epoch == 0
    engine.dispose()


def test_0005_adds_the_scope_flag_to_existing_results(database_url: str) -> None:
    """Results of a 0004 database were not checked: they come out in scope, without reasons;
    new rows keep their flag and reasons; the downgrade drops both columns, not the rows."""
    engine = make_engine(database_url)
    upgrade(engine, "0004")
    _fill_at_0002(engine)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO result (job_id, model_id, model_version, predicted_class,"
                " probabilities, slice_scores, timings, heatmap_path, objects, created_at)"
                " VALUES (1, 'm', '1', 'NORMAL', '{}', '[]', '{}', '', '[]', :t)"
            ),
            {"t": NOW},
        )
    upgrade(engine)
    sessions = session_factory(engine)
    with sessions() as session:
        old = session.scalars(select(Result).where(Result.model_id == "m")).one()
        assert (old.out_of_scope, old.scope_reasons) == (False, [])
        session.add(
            Result(
                job_id=1,
                model_id="n",
                model_version="1",
                out_of_scope=True,
                scope_reasons=["patient age 64 years, intended 0-17 years"],
            )
        )
        session.commit()
    with sessions() as session:
        new = session.scalars(select(Result).where(Result.model_id == "n")).one()
        assert new.out_of_scope and new.scope_reasons == [
            "patient age 64 years, intended 0-17 years"
        ]
    downgrade(engine, "0004")
    columns = {c["name"] for c in inspect(engine).get_columns("result")}
    assert "out_of_scope" not in columns and "scope_reasons" not in columns
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM result")).scalar_one() == 2


def test_0006_allows_cancelled_jobs_and_adds_console_tables(database_url: str) -> None:
    """A 0005 database keeps its jobs; a job may then be cancelled (and nothing else new);
    the downgrade turns cancelled jobs into failed ones with the reason, and drops the
    refusal and destination status tables."""
    engine = make_engine(database_url)
    upgrade(engine, "0005")
    _fill_at_0002(engine)
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text("UPDATE job SET state = 'cancelled' WHERE id = 1"))
    upgrade(engine)
    tables = set(inspect(engine).get_table_names())
    assert {"refusal", "destination_status"} <= tables
    with engine.begin() as conn:
        conn.execute(text("UPDATE job SET state = 'cancelled' WHERE id = 1"))
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text("UPDATE job SET state = 'finished' WHERE id = 1"))
    sessions = session_factory(engine)
    with sessions() as session:
        job = session.scalars(select(Job)).one()
        assert job.state is JobState.CANCELLED and job.worker == "w1"

    downgrade(engine, "0005")
    assert "refusal" not in set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        state, error = conn.execute(text("SELECT state, error FROM job")).one()
    assert (state, error) == ("failed", "cancelled by an operator")
    upgrade(engine)
    engine.dispose()


def test_0007_adds_token_expiry_and_its_downgrade_revokes_expiring_tokens(
    database_url: str,
) -> None:
    """A 0006 database keeps its tokens, valid until revoked (no expiry); a token may then
    expire; the downgrade drops the column and revokes the tokens that had an end, so a
    token meant to die does not live forever on the older schema."""
    engine = make_engine(database_url)
    upgrade(engine, "0006")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO user_account (id, username, password_hash, role, active,"
                " created_at, session_epoch) VALUES (1, 'ines', 'hash', 'viewer', :yes, :t, 0)"
            ),
            {"yes": True, "t": NOW},
        )
    sessions = session_factory(engine)
    with sessions() as session:
        # at 0006 the ORM's new column does not exist yet: insert the row by hand
        session.execute(
            text(
                "INSERT INTO api_token (user_id, token_hash, name, created_at, revoked)"
                " VALUES (1, :h, 'old', :t, :no)"
            ),
            {"h": users._token_hash("dn_old"), "t": NOW, "no": False},
        )
        session.commit()
    upgrade(engine)
    with sessions() as session:
        old = session.scalars(select(ApiToken)).one()
        assert old.expires_at is None and not old.revoked
        assert users.check_token(session, "dn_old").user is not None  # still valid
    expiring = users.create_token(sessions, "ines", "script", expires_in_days=1)
    with sessions() as session:
        assert users.check_token(session, expiring).user is not None

    downgrade(engine, "0006")
    assert "expires_at" not in {c["name"] for c in inspect(engine).get_columns("api_token")}
    with engine.connect() as conn:
        rows = dict(conn.execute(text("SELECT name, revoked FROM api_token")).all())
    assert {name: bool(revoked) for name, revoked in rows.items()} == {
        "old": False,
        "script": True,
    }
    upgrade(engine)
    with sessions() as session:
        assert users.check_token(session, expiring).user is None  # revoked stays revoked
        assert users.check_token(session, "dn_old").user is not None
    engine.dispose()
