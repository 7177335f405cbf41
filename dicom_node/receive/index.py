"""Index received instances in the database (study, series, instance, event).

Called from the C-STORE handler after the file is durable, inside one transaction, so an
instance is either fully indexed or not at all; a retry by the sender (or ``reconcile``)
completes a half-done receive.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Connection, Engine, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.store.db import Event, Instance, Series, Study, utcnow
from dicom_node.store.states import PROCESSED_SERIES_STATES, EventKind, SeriesState

# How often one association rewrites a study's last_received_at (see IndexCache).
STUDY_TOUCH_SECONDS = 1.0


@dataclass(frozen=True)
class InstanceMeta:
    """What the index needs from an instance header; text values are already str."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    patient_id: str = ""
    patient_name: str = ""
    accession_number: str = ""
    study_date: str = ""
    study_description: str = ""
    modality: str = ""
    body_part: str = ""
    series_description: str = ""
    series_number: str = ""
    instance_number: int | None = None


@dataclass(frozen=True)
class IndexOutcome:
    created: bool  # False: the SOP Instance UID was already indexed
    series_state: str
    reopened: bool  # a late instance reopened a processed series


@dataclass
class IndexCache:
    """Study and series row ids already looked up on one association.

    A modality sends a whole series over one association, so after the first instance the
    study and series rows are known: caching their ids saves two SELECTs per instance (and
    the ORM objects they would load). Keep one cache per association, not per process: an
    id held for minutes could outlive a row that an operator deletes; a stale id is caught
    anyway (no row updated, or a foreign-key error) and the cache is then cleared.

    ``touched`` keeps when this association last wrote a study's ``last_received_at``: it
    is written at most once per ``STUDY_TOUCH_SECONDS`` (the study list shows it to the
    second; nothing else reads it), which saves an UPDATE on almost every instance. The
    series' ``last_received_at``, which completion reads, is written for every instance.
    """

    studies: dict[str, int] = field(default_factory=dict)
    series: dict[str, int] = field(default_factory=dict)
    touched: dict[str, float] = field(default_factory=dict)

    def clear(self) -> None:
        self.studies.clear()
        self.series.clear()
        self.touched.clear()


class _StaleCacheError(Exception):
    """A cached series id matched no row: look it up again."""


# The statements of the receive path, built once: building a statement and its cache key
# costs more than running it on SQLite, and this runs for every instance received.
_DUPLICATE_STATE = (
    select(Series.state)
    .join(Instance, Instance.series_id == Series.id)
    .where(Instance.sop_instance_uid == bindparam("b_sop_uid"))
)
_TOUCH_STUDY = (
    update(Study).where(Study.id == bindparam("b_id")).values(last_received_at=bindparam("b_now"))
)
_TOUCH_STUDY_BY_UID = (
    update(Study)
    .where(Study.study_uid == bindparam("b_uid"))
    .values(last_received_at=bindparam("b_now"))
    .returning(Study.id)
)
_INSERT_STUDY = insert(Study).returning(Study.id)
_FIND_SERIES = select(Series.id).where(Series.series_uid == bindparam("b_uid"))
_INSERT_SERIES = insert(Series).returning(Series.id)
# Count in SQL (instance_count + 1), not in Python: concurrent associations adding to the
# same series must not overwrite each other's count.
_COUNT_INSTANCE = (
    update(Series)
    .where(Series.id == bindparam("b_id"))
    .values(instance_count=Series.instance_count + 1, last_received_at=bindparam("b_now"))
    .returning(Series.state, Series.generation)
)
_REOPEN_SERIES = (
    update(Series)
    .where(Series.id == bindparam("b_id"))
    .values(state=SeriesState.RECEIVING, generation=Series.generation + 1)
    .returning(Series.generation)
)
_INSERT_INSTANCE = insert(Instance)
_INSERT_EVENT = insert(Event)


def _study_id(conn: Connection, meta: InstanceMeta, now: dt.datetime, cache: IndexCache) -> int:
    cached = cache.studies.get(meta.study_uid)
    if cached is not None:
        clock = time.monotonic()
        if clock - cache.touched.get(meta.study_uid, -STUDY_TOUCH_SECONDS) >= STUDY_TOUCH_SECONDS:
            conn.execute(_TOUCH_STUDY, {"b_id": cached, "b_now": now})
            cache.touched[meta.study_uid] = clock
        return cached
    found = conn.execute(_TOUCH_STUDY_BY_UID, {"b_uid": meta.study_uid, "b_now": now}).scalar()
    if found is None:
        found = conn.execute(
            _INSERT_STUDY,
            {
                "study_uid": meta.study_uid,
                "patient_id": meta.patient_id[:64],
                "patient_name": meta.patient_name[:324],
                "accession_number": meta.accession_number[:16],
                "study_date": meta.study_date[:8],
                "study_description": meta.study_description[:64],
                "first_received_at": now,
                "last_received_at": now,
            },
        ).scalar_one()
    cache.studies[meta.study_uid] = found
    cache.touched[meta.study_uid] = time.monotonic()
    return found


def _series_id(
    conn: Connection,
    meta: InstanceMeta,
    study_id: int,
    calling_ae: str,
    now: dt.datetime,
    cache: IndexCache,
) -> int:
    cached = cache.series.get(meta.series_uid)
    if cached is not None:
        return cached
    found = conn.execute(_FIND_SERIES, {"b_uid": meta.series_uid}).scalar()
    if found is None:
        # Created with no instance; the caller counts this one like every other.
        found = conn.execute(
            _INSERT_SERIES,
            {
                "series_uid": meta.series_uid,
                "study_id": study_id,
                "modality": meta.modality[:16],
                "body_part": meta.body_part[:64],
                "series_description": meta.series_description[:64],
                "series_number": meta.series_number[:12],
                "calling_ae": calling_ae,
                "instance_count": 0,
                "first_received_at": now,
                "last_received_at": now,
                "state": SeriesState.RECEIVING,
                "generation": 0,
            },
        ).scalar_one()
    cache.series[meta.series_uid] = found
    return found


def _event(
    conn: Connection, kind: EventKind, meta: InstanceMeta, now: dt.datetime, **detail: object
) -> None:
    """What history.record adds, as one Core INSERT (no ORM object to flush)."""
    conn.execute(
        _INSERT_EVENT,
        {
            "time": now,
            "kind": kind,
            "study_uid": meta.study_uid,
            "series_uid": meta.series_uid,
            "sop_instance_uid": meta.sop_instance_uid,
            "detail": detail,
        },
    )


def _index_once(
    conn: Connection,
    meta: InstanceMeta,
    path: Path | str,
    size: int,
    calling_ae: str,
    remote_address: str,
    late_rule: str,
    cache: IndexCache,
    user: str = "",
) -> IndexOutcome:
    """One transaction of prebuilt Core statements: this runs for every instance received,
    and ORM objects (load, track, flush) cost more than the SQL itself.

    A duplicate SOP Instance UID is not looked up first: the unique key refuses its
    INSERT (IntegrityError), the caller rolls back and records the duplicate. Duplicates
    are rare, so the common path saves a SELECT.
    """
    now = utcnow()
    study_id = _study_id(conn, meta, now, cache)
    series_id = _series_id(conn, meta, study_id, calling_ae, now, cache)
    row = conn.execute(_COUNT_INSTANCE, {"b_id": series_id, "b_now": now}).first()
    if row is None:
        raise _StaleCacheError(meta.series_uid)
    state, generation = str(row.state), int(row.generation)
    reopened = False
    if state in PROCESSED_SERIES_STATES and late_rule == "rerun":
        # Late instance: reopen the series; after a new quiet period it is routed and
        # processed again as the next generation, whose results replace the old ones.
        generation = conn.execute(_REOPEN_SERIES, {"b_id": series_id}).scalar_one()
        state, reopened = SeriesState.RECEIVING, True
        _event(conn, EventKind.SERIES_REOPENED, meta, now, generation=generation)
    conn.execute(
        _INSERT_INSTANCE,
        {
            "sop_instance_uid": meta.sop_instance_uid,
            "sop_class_uid": meta.sop_class_uid,
            "transfer_syntax_uid": meta.transfer_syntax_uid,
            "series_id": series_id,
            "instance_number": meta.instance_number,
            "path": str(path),
            "size": size,
            "calling_ae": calling_ae,
            "remote_address": remote_address,
            "received_at": now,
            "generation": generation,
        },
    )
    _event(
        conn, EventKind.INSTANCE_RECEIVED, meta, now, calling_ae=calling_ae, size=size, **_by(user)
    )
    return IndexOutcome(True, state, reopened)


def _by(user: str) -> dict[str, str]:
    """The web user in an event's detail, when a token stored the instance (STOW-RS)."""
    return {"user": user} if user else {}


def _record_duplicate(
    conn: Connection, meta: InstanceMeta, calling_ae: str, user: str = ""
) -> IndexOutcome | None:
    """If the SOP Instance UID is indexed already: an event, and its series' state."""
    existing = conn.execute(_DUPLICATE_STATE, {"b_sop_uid": meta.sop_instance_uid}).first()
    if existing is None:
        return None
    _event(conn, EventKind.INSTANCE_DUPLICATE, meta, utcnow(), calling_ae=calling_ae, **_by(user))
    return IndexOutcome(False, existing.state or "", False)


def index_instance(
    sessions: sessionmaker[Session],
    meta: InstanceMeta,
    path: Path | str,
    size: int,
    *,
    calling_ae: str = "",
    remote_address: str = "",
    user: str = "",
    late_rule: str = "rerun",
    cache: IndexCache | None = None,
    before_commit: Callable[[], object] | None = None,
) -> IndexOutcome:
    """Record one instance; safe to call twice for the same SOP Instance UID (the second
    call records an ``instance.duplicate`` event and changes nothing else).

    Two associations may create the same study or series at the same moment; the loser of
    that race gets an IntegrityError and simply tries again, finding the winner's row.
    ``cache`` (one per association) remembers study and series ids between calls.
    ``user`` names the web user whose token stored the instance (STOW-RS) in its event.
    ``before_commit`` runs just before the commit (maybe more than once, on a retry); if it
    raises, nothing is committed. The receive path waits there for the spool folder's
    fsync, so an index row never exists for a file whose name is not yet durable.
    """
    cache = cache if cache is not None else IndexCache()
    engine: Engine = sessions.kw["bind"]
    for attempt in range(3):
        try:
            with engine.begin() as conn:  # commits when the block ends without an error
                outcome = _index_once(
                    conn, meta, path, size, calling_ae, remote_address, late_rule, cache, user
                )
                if before_commit is not None:
                    before_commit()
            return outcome
        except (IntegrityError, _StaleCacheError):
            # A duplicate, a race on a new study or series, or a stale cached id.
            cache.clear()
            with engine.begin() as conn:
                duplicate = _record_duplicate(conn, meta, calling_ae, user)
            if duplicate is not None:
                return duplicate
            if attempt == 2:
                raise
    raise AssertionError("unreachable")
