"""One study in full: series, every job with its results and deliveries, and the timeline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import or_, select, union
from sqlalchemy.orm import Session

from dicom_node.store.db import Delivery, Event, Instance, Job, Result, Series, Study
from dicom_node.web import render
from dicom_node.web.queries import POSITIVE_THRESHOLD, class_probability
from dicom_node.web.schemas import (
    DeliveryInfo,
    EventInfo,
    JobInfo,
    ResultInfo,
    ResultObject,
    SeriesInfo,
    SliceScore,
    StudyDetail,
)
from dicom_node.wording import call_text

# A 2,000-slice CT has 2,000 instance.received events; consecutive events of one kind are
# collapsed into one row, and at most this many rows are read.
MAX_EVENTS = 5000


def delivery_info(row: Delivery) -> DeliveryInfo:
    return DeliveryInfo(
        id=row.id,
        job_id=row.job_id,
        study_uid=row.study_uid,
        destination=row.destination,
        kind=row.kind,
        sop_class_uid=row.sop_class_uid,
        sop_instance_uid=row.sop_instance_uid,
        state=row.state,
        attempts=row.attempts,
        last_status=row.last_status,
        last_error=row.last_error,
        created_at=row.created_at,
        next_attempt_at=row.next_attempt_at,
        delivered_at=row.delivered_at,
    )


def _slice_scores(raw: Sequence[Any]) -> list[SliceScore]:
    scores = []
    for i, item in enumerate(raw or []):
        if isinstance(item, dict):
            score = item.get("score", item.get("positive_score", 0.0))
            uid = str(item.get("sop_instance_uid", ""))
            frame = item.get("frame")
        else:
            score, uid, frame = item, "", None
        if not isinstance(score, int | float):
            continue
        value = float(score)
        scores.append(
            SliceScore(
                index=i + 1,
                sop_instance_uid=uid,
                frame=frame if isinstance(frame, int) else None,
                score=value,
            )
        )
    return scores


def _numbers(raw: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in (raw or {}).items():
        if isinstance(value, int | float):
            out[str(key)] = float(value)
    return out


def result_info(row: Result, *, with_sr: bool) -> ResultInfo:
    """A result as shown; the SR file is read only when asked (it costs a file read)."""
    objects = [o for o in row.objects or [] if isinstance(o, dict)]
    sr, sr_error = render.read_sr(objects) if with_sr else (None, "")
    probabilities = dict(sorted(_numbers(row.probabilities).items(), key=lambda kv: -kv[1]))
    prob = row.positive_probability
    own = class_probability(probabilities, row.predicted_class)
    return ResultInfo(
        id=row.id,
        model_id=row.model_id,
        model_version=row.model_version,
        predicted_class=row.predicted_class,
        positive_probability=prob,
        positive=None if prob is None else prob >= POSITIVE_THRESHOLD,
        probabilities=probabilities,
        class_probability=own,
        text=call_text(row.predicted_class, own),
        out_of_scope=bool(row.out_of_scope),
        scope_reasons=[str(r) for r in row.scope_reasons or []],
        slice_scores=_slice_scores(row.slice_scores),
        timings=_numbers(row.timings),
        objects=[
            ResultObject(
                kind=str(o.get("kind", "")),
                sop_instance_uid=str(o.get("sop_instance_uid", "")),
                sop_class_uid=str(o.get("sop_class_uid", "")),
            )
            for o in objects
        ],
        has_gradcam=render.has_gradcam(row.heatmap_path, objects),
        has_pdf=render.has_pdf(objects),
        sr=sr,
        sr_error=sr_error,
        created_at=row.created_at,
    )


def _job_latency(series: Series, deliveries: list[Delivery]) -> float | None:
    if not deliveries or any(d.state != "done" or d.delivered_at is None for d in deliveries):
        return None
    last = max(d.delivered_at for d in deliveries if d.delivered_at is not None)
    return max(0.0, (last - series.last_received_at).total_seconds())


def _events(
    session: Session, study: Study, series_uids: list[str], job_ids: list[int]
) -> tuple[list[EventInfo], bool]:
    """The study's events, oldest first, with runs of one kind collapsed."""
    # One indexed query per way an event names the study, combined with UNION: an OR of the
    # three would make the database scan the whole event table in time order.
    parts = [select(Event.id).where(Event.study_uid == study.study_uid)]
    if series_uids:
        parts.append(select(Event.id).where(Event.series_uid.in_(series_uids)))
    if job_ids:
        parts.append(select(Event.id).where(Event.job_id.in_(job_ids)))
    ids = union(*parts).subquery()
    rows = list(
        session.scalars(
            select(Event)
            .where(Event.id.in_(select(ids.c.id)))
            .order_by(Event.time, Event.id)
            .limit(MAX_EVENTS + 1)
        )
    )
    truncated = len(rows) > MAX_EVENTS
    out: list[EventInfo] = []
    for event in rows[:MAX_EVENTS]:
        last = out[-1] if out else None
        if (
            last is not None
            and last.kind == event.kind
            and last.series_uid == event.series_uid
            and event.kind in ("instance.received", "instance.duplicate")
        ):
            last.count += 1
            last.last_time = event.time
            continue
        out.append(
            EventInfo(
                time=event.time,
                last_time=event.time,
                count=1,
                kind=event.kind,
                series_uid=event.series_uid,
                sop_instance_uid=event.sop_instance_uid,
                job_id=event.job_id,
                delivery_id=event.delivery_id,
                duration_ms=event.duration_ms,
                detail=dict(event.detail or {}),
            )
        )
    return out, truncated


def study_detail(session: Session, study_uid: str, *, with_sr: bool = True) -> StudyDetail | None:
    """Everything the node knows about a study, or None if it never received it."""
    study = session.scalar(select(Study).where(Study.study_uid == study_uid))
    if study is None:
        return None
    series_rows = list(
        session.scalars(select(Series).where(Series.study_id == study.id).order_by(Series.id))
    )
    series_ids = [s.id for s in series_rows]
    jobs = list(
        session.scalars(
            select(Job)
            .where(Job.series_id.in_(series_ids))
            .order_by(Job.generation.desc(), Job.id.desc())
        )
    )
    job_ids = [j.id for j in jobs]
    results = list(
        session.scalars(select(Result).where(Result.job_id.in_(job_ids)).order_by(Result.model_id))
    )
    deliveries = list(
        session.scalars(
            select(Delivery)
            .where(or_(Delivery.study_uid == study_uid, Delivery.job_id.in_(job_ids)))
            .order_by(Delivery.id)
        )
    )
    addresses: dict[int, list[str]] = {}
    for series_id, address in session.execute(
        select(Instance.series_id, Instance.remote_address)
        .where(Instance.series_id.in_(series_ids))
        .distinct()
    ):
        if address:
            addresses.setdefault(series_id, []).append(address)

    # The SR is read for the newest job of each series only: older generations were replaced.
    newest_job: dict[int, int] = {}
    for job in jobs:
        newest_job.setdefault(job.series_id, job.id)
    series_out = []
    for series in series_rows:
        job_infos = []
        for job in (j for j in jobs if j.series_id == series.id):
            job_deliveries = [d for d in deliveries if d.job_id == job.id]
            job_infos.append(
                JobInfo(
                    id=job.id,
                    generation=job.generation,
                    route_name=job.route_name,
                    state=job.state,
                    attempts=job.attempts,
                    worker=job.worker,
                    error=job.error,
                    created_at=job.created_at,
                    started_at=job.started_at,
                    finished_at=job.finished_at,
                    latency_seconds=_job_latency(series, job_deliveries),
                    results=[
                        result_info(r, with_sr=with_sr and newest_job[series.id] == job.id)
                        for r in results
                        if r.job_id == job.id
                    ],
                    deliveries=[delivery_info(d) for d in job_deliveries],
                )
            )
        series_out.append(
            SeriesInfo(
                series_uid=series.series_uid,
                modality=series.modality,
                body_part=series.body_part,
                series_description=series.series_description,
                series_number=series.series_number,
                calling_ae=series.calling_ae,
                remote_addresses=sorted(addresses.get(series.id, [])),
                instance_count=series.instance_count,
                state=series.state,
                generation=series.generation,
                first_received_at=series.first_received_at,
                last_received_at=series.last_received_at,
                completed_at=series.completed_at,
                route_name=series.route_name,
                route_reason=series.route_reason,
                jobs=job_infos,
            )
        )
    events, truncated = _events(session, study, [s.series_uid for s in series_rows], job_ids)
    return StudyDetail(
        study_uid=study.study_uid,
        patient_id=study.patient_id,
        patient_name=study.patient_name,
        accession_number=study.accession_number,
        study_date=study.study_date,
        study_description=study.study_description,
        first_received_at=study.first_received_at,
        last_received_at=study.last_received_at,
        series=series_out,
        other_deliveries=[delivery_info(d) for d in deliveries if d.job_id not in job_ids],
        events=events,
        events_truncated=truncated,
    )


def result_for_study(session: Session, study_uid: str, result_id: int) -> Result | None:
    """A result, only if it belongs to the study named in the URL (no guessing across)."""
    return session.scalar(
        select(Result)
        .join(Job, Job.id == Result.job_id)
        .join(Series, Series.id == Job.series_id)
        .join(Study, Study.id == Series.study_id)
        .where(Result.id == result_id, Study.study_uid == study_uid)
    )
