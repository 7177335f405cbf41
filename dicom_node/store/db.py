"""Database schema: what was received, what each job did, what was delivered, and when.

Every arrow of the data path (receive -> complete -> route -> infer -> deliver) is a state
change here, so a restarted node resumes where it stopped and the admin page can show each
step. The spool on disk stays the source of truth for pixel data; the database is the index
and the history.

The schema is created and upgraded by Alembic (``dicom_node/migrations``); ``create_engine``
below runs the upgrade, so SQLite and PostgreSQL get the same tables.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy import (
    Enum as SAEnum,
)
from sqlalchemy import (
    create_engine as sa_create_engine,
)
from sqlalchemy import (
    event as sa_event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker

from dicom_node.store.states import DeliveryState, JobState, RefusalKind, SeriesState

UID = String(64)


def _state_type(states: type[StrEnum]) -> SAEnum:
    """A state column: text in the database, the enum in Python.

    ``validate_strings`` refuses an unknown value when it is written, in Python, before
    the database's CHECK constraint (``state_check``) would.
    """
    return SAEnum(
        states,
        native_enum=False,
        create_constraint=False,  # the named CHECK below, created by migration 0003
        length=16,
        validate_strings=True,
        values_callable=lambda members: [m.value for m in members],
    )


def state_check(table: str, states: type[StrEnum]) -> CheckConstraint:
    """``CHECK (state IN (...))`` named ``ck_<table>_state`` (migration 0003)."""
    values = ", ".join(f"'{member.value}'" for member in states)
    return CheckConstraint(f"state IN ({values})", name=f"ck_{table}_state")


def utcnow() -> dt.datetime:
    """Naive UTC timestamps: SQLite has no time zones, so store UTC everywhere."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Study(Base):
    __tablename__ = "study"
    # Sort keys of the admin studies list (migration 0002): without them, sorting 100,000
    # studies by patient or accession reads and sorts the whole table for every page.
    __table_args__ = (
        Index("ix_study_patient_id", "patient_id"),
        Index("ix_study_patient_name", "patient_name"),
        Index("ix_study_accession_number", "accession_number"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(324), default="")
    accession_number: Mapped[str] = mapped_column(String(16), default="")
    study_date: Mapped[str] = mapped_column(String(8), default="")
    study_description: Mapped[str] = mapped_column(String(64), default="")
    first_received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    last_received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    """A series and its processing state.

    ``state`` moves receiving -> complete -> routed | unrouted | ignored; ``generation``
    counts how often the series was completed (late instances reopen it, see
    ``completion.py``).
    """

    __tablename__ = "series"
    __table_args__ = (
        Index("ix_series_state_last", "state", "last_received_at"),
        state_check("series", SeriesState),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    series_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="", index=True)
    body_part: Mapped[str] = mapped_column(String(64), default="")
    series_description: Mapped[str] = mapped_column(String(64), default="")
    series_number: Mapped[str] = mapped_column(String(12), default="")
    calling_ae: Mapped[str] = mapped_column(String(16), default="", index=True)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    state: Mapped[SeriesState] = mapped_column(
        _state_type(SeriesState), default=SeriesState.RECEIVING
    )
    generation: Mapped[int] = mapped_column(Integer, default=0)
    completed_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    route_name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    route_reason: Mapped[str] = mapped_column(Text, default="")

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")
    jobs: Mapped[list[Job]] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instance"

    id: Mapped[int] = mapped_column(primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    instance_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    remote_address: Mapped[str] = mapped_column(String(64), default="")
    received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # generation of the series when this instance arrived (late instances have a higher one)
    generation: Mapped[int] = mapped_column(Integer, default=0)

    series: Mapped[Series] = relationship(back_populates="instances")


class Job(Base):
    """One processing run of a routed series (one generation of it)."""

    __tablename__ = "job"
    __table_args__ = (
        UniqueConstraint("series_id", "generation", "route_name", name="uq_job_series_gen"),
        Index("ix_job_state", "state", "id"),
        state_check("job", JobState),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    route_name: Mapped[str] = mapped_column(String(64))
    state: Mapped[JobState] = mapped_column(_state_type(JobState), default=JobState.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str] = mapped_column(String(64), default="")
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)

    series: Mapped[Series] = relationship(back_populates="jobs")
    results: Mapped[list[Result]] = relationship(back_populates="job")
    deliveries: Mapped[list[Delivery]] = relationship(back_populates="job")


class Result(Base):
    """What one model said about one series (one row per job and model)."""

    __tablename__ = "result"
    __table_args__ = (UniqueConstraint("job_id", "model_id", name="uq_result_job_model"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id"), index=True)
    model_id: Mapped[str] = mapped_column(String(64), index=True)
    model_version: Mapped[str] = mapped_column(String(64))
    predicted_class: Mapped[str] = mapped_column(String(64), default="")
    positive_probability: Mapped[float | None] = mapped_column(Float, nullable=True)
    probabilities: Mapped[dict[str, Any]] = mapped_column(default=dict)
    slice_scores: Mapped[list[Any]] = mapped_column(default=list)
    timings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    heatmap_path: Mapped[str] = mapped_column(Text, default="")
    # result objects: [{"kind": "sr", "sop_instance_uid": ..., "path": ...}, ...]
    objects: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # Outside the model's stated intended use (migration 0005): the result is still stored
    # and sent, flagged; the reasons as shown to people.
    out_of_scope: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    scope_reasons: Mapped[list[Any]] = mapped_column(default=list, server_default="[]")

    job: Mapped[Job] = relationship(back_populates="results")


class Delivery(Base):
    """One object to send to one destination.

    Unique per (destination, SOP Instance UID): a job re-run after a crash derives the same
    UIDs, finds the row and does not send it again.
    """

    __tablename__ = "delivery"
    __table_args__ = (
        UniqueConstraint("destination", "sop_instance_uid", name="uq_delivery_dest_sop"),
        Index("ix_delivery_due", "state", "next_attempt_at"),
        state_check("delivery", DeliveryState),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("job.id"), nullable=True, index=True)
    destination: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16), default="forward")  # forward sr sc pdf
    sop_class_uid: Mapped[str] = mapped_column(UID)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    study_uid: Mapped[str] = mapped_column(UID, default="", index=True)
    path: Mapped[str] = mapped_column(Text)
    state: Mapped[DeliveryState] = mapped_column(
        _state_type(DeliveryState), default=DeliveryState.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    # The dispatcher sending it now (migration 0009): claimed by a conditional UPDATE,
    # cleared with the attempt's outcome; see ``dispatch.delivery.Deliverer.due``.
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True, default=None)

    job: Mapped[Job | None] = relationship(back_populates="deliveries")


class DestinationStatus(Base):
    """The last success and the last error of each destination (migration 0005).

    Kept by ``dispatch.delivery`` with every attempt, so the destinations page answers
    "when did this PACS last take something, and what did it last say" with one row per
    destination, whatever the size of the delivery and event tables. A success does not
    clear the last error: both are shown with their times.
    """

    __tablename__ = "destination_status"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_success_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    last_error_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")


class Refusal(Base):
    """A connection, association or C-STORE the receiver refused (migration 0005).

    Written by ``receive.refusals`` only, which keeps the newest ``MAX_REFUSALS`` rows: a
    hostile or misconfigured peer retrying all night must not fill the disk. Holds AE
    titles, addresses, statuses and UIDs, never patient data.
    """

    __tablename__ = "refusal"

    id: Mapped[int] = mapped_column(primary_key=True)
    time: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    kind: Mapped[RefusalKind] = mapped_column(_state_type(RefusalKind))
    calling_ae: Mapped[str] = mapped_column(String(64), default="")
    called_ae: Mapped[str] = mapped_column(String(64), default="")
    address: Mapped[str] = mapped_column(String(64), default="")
    # The C-STORE status answered; None for connections and associations.
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    meaning: Mapped[str] = mapped_column(Text, default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    sop_instance_uid: Mapped[str] = mapped_column(UID, default="")


class Event(Base):
    """Append-only history: one row per step, for the timeline and the audit."""

    __tablename__ = "event"
    __table_args__ = (
        Index("ix_event_study_time", "study_uid", "time"),
        # migration 0002: the study timeline also collects events that name only a job
        Index("ix_event_job_id", "job_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    time: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    study_uid: Mapped[str] = mapped_column(UID, default="")
    series_uid: Mapped[str] = mapped_column(UID, default="", index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, default="")
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    delivery_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    duration_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class User(Base):
    """An admin-page account (owner: ``dicom_node.store.users``).

    ``session_epoch`` (migration 0004) is the server-side half of a web session: a cookie
    is valid only while it carries the row's current epoch, and logout, a password change
    or disabling the user increments it. ``login_unlocked_at`` is when an administrator
    last cleared the user's login throttle.
    """

    __tablename__ = "user_account"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(String(16), default="viewer")  # store.users.ROLES
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    session_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    login_unlocked_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class ApiToken(Base):
    """A bearer token for the JSON API (migration 0002).

    Only a SHA-256 of the token is stored: tokens are 256-bit random strings, so a fast hash
    is enough (no dictionary to attack) and lets a request be checked with one index lookup.
    ``expires_at`` (migration 0007, UTC) ends a token without anyone revoking it; None:
    valid until revoked.
    """

    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)

    user: Mapped[User] = relationship()


class AuditEntry(Base):
    """Who did or looked at what: logins, study views, actions."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(primary_key=True)
    time: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    username: Mapped[str] = mapped_column(String(64), default="", index=True)
    action: Mapped[str] = mapped_column(String(32), index=True)
    target: Mapped[str] = mapped_column(Text, default="")
    client_address: Mapped[str] = mapped_column(String(64), default="")
    success: Mapped[bool] = mapped_column(Boolean, default=True)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class ClusterMember(Base):
    """One role process of a cluster (receive, worker, dispatch, web), with its heartbeat.

    A job whose worker is not here, or was last seen longer ago than
    ``cluster.member_timeout``, was abandoned (SIGKILL, a lost host): another worker of its
    model may take it. Written by ``dicom_node.cluster.members`` alone.
    """

    __tablename__ = "cluster_member"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)  # role@host:pid
    role: Mapped[str] = mapped_column(String(16))
    host: Mapped[str] = mapped_column(String(255), default="")
    pid: Mapped[int] = mapped_column(Integer, default=0)
    queues: Mapped[list[Any]] = mapped_column(default=list)
    models: Mapped[list[Any]] = mapped_column(default=list)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    seen_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)


class Setting(Base):
    """Small persistent values the node generates once (e.g. the web session secret)."""

    __tablename__ = "node_setting"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


# --------------------------------------------------------------------------------------------


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the admin page and the workers read while the receive threads write.
    # synchronous=NORMAL: a commit survives a process crash (SIGKILL) but could be lost on
    # power failure; the spool files themselves are fsynced, and start-up reconciles spool
    # files that have no index row (spool.reconcile), so nothing accepted is lost.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(url: str) -> Engine:
    """Engine with the settings our concurrency needs (threads in the SCP, other processes)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa_create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=10
        )
        sa_event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa_create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


# PostgreSQL advisory lock key held while migrating (any constant unique to this purpose).
_MIGRATION_LOCK = 0x44434D4E  # "DCMN"


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (the newest by default); idempotent."""
    _migrate(engine, "upgrade", revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Take the schema back to ``revision`` (for an operator undoing an upgrade)."""
    _migrate(engine, "downgrade", revision)


def _migrate(engine: Engine, direction: str, revision: str) -> None:
    """Run Alembic on one connection of ``engine``.

    On SQLite, foreign keys are switched off for the migration: a migration that changes a
    table copies it (Alembic's batch mode), and dropping the old copy of a table that rows
    of another table reference would otherwise fail. Switched off outside the transaction
    (SQLite ignores the pragma inside one) and back on after it.
    """
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    run = command.upgrade if direction == "upgrade" else command.downgrade
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        try:
            with connection.begin():
                if connection.dialect.name == "postgresql":
                    # Cluster roles start together on one database: one migrates, the
                    # others wait here and then find the schema at its head.
                    connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
                cfg.attributes["connection"] = connection
                run(cfg, revision)
        finally:
            if sqlite:
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                connection.commit()


def create_engine(url: str, *, migrate: bool = True) -> Engine:
    engine = make_engine(url)
    if migrate:
        upgrade(engine)
    return engine


def session_factory(engine: Engine) -> sessionmaker[Any]:
    return sessionmaker(engine, expire_on_commit=False)
