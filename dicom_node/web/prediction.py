"""Where the processing of a study stands, for a script (``predict``) and the study page.

:func:`prediction` answers ``POST /api/predict`` and its poll link: for each series, the
route it took and the newest job's state and results (class, P(class) in the one
probability format, every probability, model and version, links to the heatmap, the SR,
the Secondary Capture and the PDF). :func:`progress` is the small answer the study page
polls (``static/live.js``): a version that changes whenever something the page shows
changes, and whether anything is still under way.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_node.identity import NOT_FOR_DIAGNOSTIC_USE
from dicom_node.store.db import Delivery, Job, Result, Series, Study
from dicom_node.store.states import JobState, SeriesState
from dicom_node.web import render
from dicom_node.web.queries import class_probability
from dicom_node.wording import call_text

Status = Literal["done", "pending", "failed", "unrouted"]
# A series in these states is not processed yet; a job in these is under way.
_SERIES_WAITING = frozenset({SeriesState.RECEIVING, SeriesState.COMPLETE})
_JOB_WAITING = frozenset({JobState.QUEUED, JobState.RUNNING})


class ResultLinks(BaseModel):
    """Paths (on the node's web address) of a result's pictures and objects; None when the
    result has no such object. Each needs the same token or session."""

    heatmap: str | None = Field(None, description="labelled Grad-CAM picture (PNG)")
    sr: str | None = Field(None, description="the Structured Report (DICOM)")
    sc: str | None = Field(None, description="the Grad-CAM Secondary Capture (DICOM)")
    pdf: str | None = Field(None, description="the PDF report")
    pdf_dicom: str | None = Field(None, description="the Encapsulated PDF (DICOM)")


class PredictedResult(BaseModel):
    """One model's result on a series."""

    model: str
    model_version: str
    predicted_class: str
    probability: float | None = Field(description="P(predicted class)")
    text: str = Field(description="the class, then its probability: NORMAL P(NORMAL) = 0.95")
    probabilities: dict[str, float]
    out_of_scope: bool
    scope_reasons: list[str]
    links: ResultLinks


class JobRef(BaseModel):
    id: int
    state: str
    error: str = ""


class PredictedSeries(BaseModel):
    series_uid: str
    modality: str
    body_part: str
    instances: int
    state: str = Field(description="receiving, complete, routed, unrouted or ignored")
    route: str | None
    route_reasons: list[str]
    job: JobRef | None = Field(description="the newest job of the series")
    results: list[PredictedResult]


class PredictAnswer(BaseModel):
    """Where an upload stands: ``done`` when every routed series has its results,
    ``pending`` while one is processed (poll ``poll_url``), ``failed`` when a job failed,
    ``unrouted`` when no series has a route."""

    status: Status
    study_uid: str
    study_url: str
    poll_url: str
    series: list[PredictedSeries]
    notice: str = NOT_FOR_DIAGNOSTIC_USE


def _links(study_uid: str, row: Result) -> ResultLinks:
    objects = [o for o in row.objects or [] if isinstance(o, dict)]
    kinds = {str(o.get("kind", "")).split(":")[0] for o in objects}
    base = f"/studies/{study_uid}/results/{row.id}"
    return ResultLinks(
        heatmap=f"{base}/gradcam.png" if render.has_gradcam(row.heatmap_path, objects) else None,
        sr=f"{base}/sr.dcm" if "sr" in kinds else None,
        sc=f"{base}/sc.dcm" if "sc" in kinds else None,
        pdf=f"{base}/report.pdf" if "pdf" in kinds else None,
        pdf_dicom=f"{base}/pdf.dcm" if "pdf" in kinds else None,
    )


def _result(study_uid: str, row: Result) -> PredictedResult:
    probabilities = {
        str(k): float(v) for k, v in (row.probabilities or {}).items() if isinstance(v, int | float)
    }
    own = class_probability(probabilities, row.predicted_class)
    return PredictedResult(
        model=row.model_id,
        model_version=row.model_version,
        predicted_class=row.predicted_class,
        probability=own,
        text=call_text(row.predicted_class, own),
        probabilities=probabilities,
        out_of_scope=bool(row.out_of_scope),
        scope_reasons=[str(r) for r in row.scope_reasons or []],
        links=_links(study_uid, row),
    )


def _newest_jobs(db: Session, series_ids: list[int]) -> dict[int, Job]:
    newest: dict[int, Job] = {}
    for job in db.scalars(
        select(Job)
        .where(Job.series_id.in_(series_ids))
        .order_by(Job.generation.desc(), Job.id.desc())
    ):
        newest.setdefault(job.series_id, job)
    return newest


def prediction(
    db: Session, study_uid: str, series_uids: list[str] | None = None
) -> PredictAnswer | None:
    """The answer for a study (its series in ``series_uids``, all when None); None when
    the study is unknown."""
    study = db.scalar(select(Study).where(Study.study_uid == study_uid))
    if study is None:
        return None
    query = select(Series).where(Series.study_id == study.id).order_by(Series.id)
    if series_uids:
        query = query.where(Series.series_uid.in_(series_uids))
    rows = list(db.scalars(query))
    jobs = _newest_jobs(db, [s.id for s in rows])
    results: dict[int, list[Result]] = {}
    if jobs:
        for result in db.scalars(
            select(Result)
            .where(Result.job_id.in_([j.id for j in jobs.values()]))
            .order_by(Result.model_id)
        ):
            results.setdefault(result.job_id, []).append(result)
    out: list[PredictedSeries] = []
    states: list[str] = []
    for series in rows:
        job = jobs.get(series.id)
        state = _series_status(series, job)
        states.append(state)
        out.append(
            PredictedSeries(
                series_uid=series.series_uid,
                modality=series.modality,
                body_part=series.body_part,
                instances=series.instance_count,
                state=str(series.state),
                route=series.route_name,
                route_reasons=[r for r in (series.route_reason or "").splitlines() if r],
                job=JobRef(id=job.id, state=str(job.state), error=job.error or "")
                if job is not None
                else None,
                results=[_result(study_uid, r) for r in results.get(job.id, [])] if job else [],
            )
        )
    poll = f"/api/predict/{study_uid}"
    if series_uids:
        poll += "?" + "&".join(f"series={uid}" for uid in series_uids)
    return PredictAnswer(
        status=_overall(states),
        study_uid=study_uid,
        study_url=f"/studies/{study_uid}",
        poll_url=poll,
        series=out,
    )


def _series_status(series: Series, job: Job | None) -> str:
    if series.state in _SERIES_WAITING:
        return "pending"
    if series.state != SeriesState.ROUTED:
        return "unrouted"
    if job is None or job.generation < series.generation or job.state in _JOB_WAITING:
        return "pending"  # routed, its (new generation's) job not written or not ended
    return "done" if job.state == JobState.DONE else "failed"


def _overall(states: list[str]) -> Status:
    if "pending" in states:
        return "pending"
    if "failed" in states:
        return "failed"
    if "done" in states:
        return "done"
    return "unrouted"


def progress(db: Session, study_uid: str) -> dict[str, Any] | None:
    """What the study page polls: ``version`` changes when a series, job, result or
    delivery the page shows changes; ``pending`` says whether to look again."""
    study = db.scalar(select(Study).where(Study.study_uid == study_uid))
    if study is None:
        return None
    series = list(
        db.execute(
            select(Series.id, Series.state, Series.generation, Series.instance_count).where(
                Series.study_id == study.id
            )
        )
    )
    ids = [s.id for s in series]
    jobs = list(db.execute(select(Job.id, Job.series_id, Job.state).where(Job.series_id.in_(ids))))
    job_ids = [j.id for j in jobs]
    results = list(
        db.execute(select(Result.id, Result.heatmap_path).where(Result.job_id.in_(job_ids)))
    )
    deliveries = list(
        db.execute(select(Delivery.id, Delivery.state).where(Delivery.job_id.in_(job_ids)))
    )
    facts = repr(
        (
            sorted((s.id, str(s.state), s.generation, s.instance_count) for s in series),
            sorted((j.id, str(j.state)) for j in jobs),
            sorted((r.id, bool(r.heatmap_path)) for r in results),
            sorted((d.id, str(d.state)) for d in deliveries),
        )
    )
    newest: dict[int, tuple[int, str]] = {}
    for job in sorted(jobs, key=lambda j: j.id):
        newest[job.series_id] = (job.id, str(job.state))
    pending = any(s.state in _SERIES_WAITING for s in series) or any(
        state in _JOB_WAITING for _id, state in newest.values()
    )
    return {
        "version": hashlib.sha256(facts.encode()).hexdigest()[:16],
        "pending": pending,
    }
