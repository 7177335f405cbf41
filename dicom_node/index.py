"""Index received instances in the database (study, series, instance, event).

Called from the C-STORE handler after the file is durable, inside one transaction, so an
instance is either fully indexed or not at all; a retry by the sender (or ``reconcile``)
completes a half-done receive.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import history
from dicom_node.db import Instance, Series, Study, utcnow

# Series states after which a new instance is "late" (the series was already processed).
PROCESSED_STATES = frozenset({"routed", "unrouted", "ignored"})


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


def _get_or_create_study(session: Session, meta: InstanceMeta, now: dt.datetime) -> Study:
    study = session.scalar(select(Study).where(Study.study_uid == meta.study_uid))
    if study is None:
        study = Study(
            study_uid=meta.study_uid,
            patient_id=meta.patient_id[:64],
            patient_name=meta.patient_name[:324],
            accession_number=meta.accession_number[:16],
            study_date=meta.study_date[:8],
            study_description=meta.study_description[:64],
            first_received_at=now,
            last_received_at=now,
        )
        session.add(study)
        session.flush()
    else:
        study.last_received_at = now
    return study


def _get_or_create_series(
    session: Session, meta: InstanceMeta, study: Study, calling_ae: str, now: dt.datetime
) -> Series:
    series = session.scalar(select(Series).where(Series.series_uid == meta.series_uid))
    if series is None:
        series = Series(
            series_uid=meta.series_uid,
            study_id=study.id,
            modality=meta.modality[:16],
            body_part=meta.body_part[:64],
            series_description=meta.series_description[:64],
            series_number=meta.series_number[:12],
            calling_ae=calling_ae,
            instance_count=0,
            first_received_at=now,
            last_received_at=now,
            state="receiving",
            generation=0,
        )
        session.add(series)
        session.flush()
    return series


def _index_once(
    session: Session,
    meta: InstanceMeta,
    path: Path,
    size: int,
    calling_ae: str,
    remote_address: str,
    late_rule: str,
) -> IndexOutcome:
    now = utcnow()
    existing = session.scalar(
        select(Instance.id).where(Instance.sop_instance_uid == meta.sop_instance_uid)
    )
    if existing is not None:
        series_state = session.scalar(
            select(Series.state).join(Instance).where(Instance.id == existing)
        )
        history.record(
            session,
            "instance.duplicate",
            study_uid=meta.study_uid,
            series_uid=meta.series_uid,
            sop_instance_uid=meta.sop_instance_uid,
            calling_ae=calling_ae,
        )
        return IndexOutcome(False, series_state or "", False)

    study = _get_or_create_study(session, meta, now)
    series = _get_or_create_series(session, meta, study, calling_ae, now)
    reopened = False
    if series.state in PROCESSED_STATES and late_rule == "rerun":
        # Late instance: reopen the series; after a new quiet period it is routed and
        # processed again as the next generation, whose results replace the old ones.
        series.state = "receiving"
        series.generation += 1
        reopened = True
        history.record(
            session,
            "series.reopened",
            study_uid=meta.study_uid,
            series_uid=meta.series_uid,
            generation=series.generation,
        )
    series.instance_count += 1
    series.last_received_at = now
    session.add(
        Instance(
            sop_instance_uid=meta.sop_instance_uid,
            sop_class_uid=meta.sop_class_uid,
            transfer_syntax_uid=meta.transfer_syntax_uid,
            series_id=series.id,
            instance_number=meta.instance_number,
            path=str(path),
            size=size,
            calling_ae=calling_ae,
            remote_address=remote_address,
            received_at=now,
            generation=series.generation,
        )
    )
    history.record(
        session,
        "instance.received",
        study_uid=meta.study_uid,
        series_uid=meta.series_uid,
        sop_instance_uid=meta.sop_instance_uid,
        calling_ae=calling_ae,
        size=size,
    )
    return IndexOutcome(True, series.state, reopened)


def index_instance(
    sessions: sessionmaker[Session],
    meta: InstanceMeta,
    path: Path,
    size: int,
    *,
    calling_ae: str = "",
    remote_address: str = "",
    late_rule: str = "rerun",
) -> IndexOutcome:
    """Record one instance; safe to call twice for the same SOP Instance UID.

    Two associations may create the same study or series at the same moment; the loser of
    that race gets an IntegrityError and simply tries again, finding the winner's row.
    """
    for attempt in range(3):
        with sessions() as session:
            try:
                outcome = _index_once(
                    session, meta, path, size, calling_ae, remote_address, late_rule
                )
                session.commit()
                return outcome
            except IntegrityError:
                session.rollback()
                if attempt == 2:
                    raise
    raise AssertionError("unreachable")
