"""The job queue: the one module that creates Job rows and moves their state.

A job is one processing run of a routed series (one generation of it, one route). Its
life is ``queued -> running -> done | failed``, and ``running -> queued`` again when the
worker that ran it died. Every change goes through a function here, in the caller's or
its own transaction, with the event that records it; nothing else writes ``Job.state``
(the database refuses values outside ``JobState``).

Claiming is an atomic ``UPDATE ... WHERE state = 'queued'``: several worker processes
(and later several hosts) can race for a job, and exactly one wins.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.store import history
from dicom_node.store.db import Job, Series, Study, utcnow
from dicom_node.store.states import EventKind, JobState

# How many queued jobs one claim looks at: the oldest first; a lost race tries the next.
_CLAIM_CANDIDATES = 5


class QueueError(ValueError):
    """A request the queue cannot honour (unknown series, no route to run)."""


def enqueue(
    session: Session,
    series: Series,
    route_name: str,
    *,
    study_uid: str,
    reason: str = "",
) -> Job | None:
    """Queue a job for the series' current generation and this route, in ``session``.

    Idempotent: a job for the same (series, generation, route) is not queued twice
    (completion may run again after a crash). The caller commits.

    Returns
    -------
    Job or None
        The new job, or None when that job exists already.
    """
    exists = session.scalar(
        select(Job.id).where(
            Job.series_id == series.id,
            Job.generation == series.generation,
            Job.route_name == route_name,
        )
    )
    if exists is not None:
        return None
    job = Job(
        series_id=series.id,
        generation=series.generation,
        route_name=route_name,
        state=JobState.QUEUED,
    )
    session.add(job)
    session.flush()
    detail: dict[str, Any] = {"reason": reason} if reason else {}
    history.record(
        session,
        EventKind.JOB_QUEUED,
        study_uid=study_uid,
        series_uid=series.series_uid,
        job_id=job.id,
        route=route_name,
        generation=series.generation,
        **detail,
    )
    return job


def rerun_series(sessions: sessionmaker[Session], series_uid: str, reason: str) -> list[int]:
    """Queue the series again as a new generation, one job per route it was routed to.

    A new generation (not a second job of the same one) because results are per
    generation: the new SR replaces the previous one and references it as its
    predecessor, exactly as when late instances reopen a series.

    Raises
    ------
    QueueError
        The series is unknown or has no route.
    """
    with sessions() as session:
        series = session.scalar(
            select(Series).where(Series.series_uid == series_uid).with_for_update()
        )
        if series is None:
            raise QueueError(f"unknown series {series_uid}")
        if not series.route_name:
            raise QueueError(f"series {series_uid} has no route (state {series.state})")
        study_uid = session.scalar(select(Study.study_uid).where(Study.id == series.study_id))
        series.generation += 1
        # A series taken by several routes (``continue = true``) records them all,
        # comma-separated; each gets its own job, as at completion.
        jobs = [
            enqueue(session, series, route_name, study_uid=study_uid or "", reason=reason)
            for route_name in series.route_name.split(",")
        ]
        session.commit()
        return [job.id for job in jobs if job is not None]


def claim_next(sessions: sessionmaker[Session], worker: str) -> int | None:
    """Atomically take the oldest queued job for ``worker``; None when there is none."""
    with sessions() as session:
        candidates = session.scalars(
            select(Job.id)
            .where(Job.state == JobState.QUEUED)
            .order_by(Job.id)
            .limit(_CLAIM_CANDIDATES)
        ).all()
        for job_id in candidates:
            claimed = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == JobState.QUEUED)
                .values(
                    state=JobState.RUNNING,
                    worker=worker,
                    started_at=utcnow(),
                    attempts=Job.attempts + 1,
                )
            ).rowcount  # type: ignore[attr-defined]
            if claimed:
                job = session.get(Job, job_id)
                assert job is not None
                series = session.get(Series, job.series_id)
                history.record(
                    session,
                    EventKind.JOB_STARTED,
                    series_uid=series.series_uid if series else "",
                    study_uid=series.study.study_uid if series else "",
                    job_id=job_id,
                    worker=worker,
                    attempt=job.attempts,
                )
                session.commit()
                return job_id
            session.rollback()
    return None


def finish(
    sessions: sessionmaker[Session],
    job_id: int,
    state: JobState,
    *,
    error: str = "",
    started: float | None = None,
) -> None:
    """End a running job as DONE or FAILED, with its error text and duration.

    ``started`` is the ``time.monotonic()`` at which the runner began, for the event's
    duration.
    """
    if state not in (JobState.DONE, JobState.FAILED):
        raise ValueError(f"a job ends done or failed, not {state}")
    with sessions() as session:
        job = session.get(Job, job_id)
        if job is None:
            return
        job.state = state
        job.error = error[:4000]
        job.finished_at = utcnow()
        series = session.get(Series, job.series_id)
        study_uid = ""
        if series is not None:
            study_uid = (
                session.scalar(select(Study.study_uid).where(Study.id == series.study_id)) or ""
            )
        history.record(
            session,
            EventKind.JOB_DONE if state is JobState.DONE else EventKind.JOB_FAILED,
            study_uid=study_uid,
            series_uid=series.series_uid if series else "",
            job_id=job_id,
            duration_ms=(
                round((time.monotonic() - started) * 1000, 1) if started is not None else None
            ),
            error=error,
        )
        session.commit()


def requeue_interrupted(sessions: sessionmaker[Session], worker: str | None = None) -> int:
    """Put jobs that were running when their worker died (or the node stopped) back in
    the queue; only those of ``worker`` when given. Returns how many."""
    with sessions() as session:
        query = select(Job).where(Job.state == JobState.RUNNING)
        if worker is not None:
            query = query.where(Job.worker == worker)
        jobs = session.scalars(query).all()
        for job in jobs:
            job.state = JobState.QUEUED
            history.record(
                session,
                EventKind.JOB_REQUEUED,
                job_id=job.id,
                reason="worker stopped while running",
            )
        session.commit()
        return len(jobs)
