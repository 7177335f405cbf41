"""The job queue: the one module that creates Job rows and moves their state.

A job is one processing run of a routed series (one generation of it, one route). Its
life is ``queued -> running -> done | failed``, and ``running -> queued`` again when the
worker that ran it died. An operator may cancel a queued job (``queued -> cancelled``)
and retry a failed or cancelled one (``-> queued``). Every change goes through a function
here, in the caller's or its own transaction, with the event that records it; nothing
else writes ``Job.state`` (the database refuses values outside ``JobState``).

Claiming is an atomic ``UPDATE ... WHERE state = 'queued'``: several worker processes
(and later several hosts) can race for a job, and exactly one wins; cancelling is the
same kind of UPDATE, so a job is either claimed or cancelled, never both.

Processing can be paused: a row in ``node_setting`` that every claim reads, so every
worker of every process honours it, and it outlives a restart (an operator who paused
the node for a PACS maintenance does not want a reboot to resume it). Running jobs
finish; nothing new starts.

In cluster mode (``dicom_node.cluster``) a job is also a Celery task: the job row is
written first, and the task is published after the commit that wrote it
(:func:`publish_on_commit`), so a worker never gets a task whose row it cannot see. The
task claims its job by id (:func:`claim_job`); a task whose job is done, or running on a
live worker, does nothing, and a job whose worker is gone is taken over.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, event, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.store import history
from dicom_node.store.db import ClusterMember, Job, Series, Setting, Study, utcnow
from dicom_node.store.states import EventKind, JobState

log = logging.getLogger(__name__)

# Jobs queued in a session and not yet committed: (job id, route name), in Session.info.
_UNPUBLISHED = "dicom_node.unpublished_jobs"

QueuedJob = tuple[int, str]  # (job id, route name)
JobPublisher = Callable[[Sequence[QueuedJob]], None]

# How many queued jobs one claim looks at: the oldest first; a lost race tries the next.
_CLAIM_CANDIDATES = 5


# The ``node_setting`` key of the pause flag; its value says who paused and when (JSON).
PAUSE_KEY = "processing_paused"
# States an operator may retry from.
RETRYABLE_STATES = frozenset({JobState.FAILED, JobState.CANCELLED})


class QueueError(ValueError):
    """A request the queue cannot honour (unknown series or job, a job in the wrong state)."""


@dataclass(frozen=True)
class Pause:
    """Processing is paused: by whom and since when (ISO 8601, UTC)."""

    by: str
    since: str


def paused(session: Session) -> Pause | None:
    """Whether processing is paused (read by every claim), and by whom."""
    row = session.get(Setting, PAUSE_KEY)
    if row is None:
        return None
    try:
        value = json.loads(row.value)
        return Pause(by=str(value.get("by", "")), since=str(value.get("since", "")))
    except (ValueError, AttributeError):  # an unreadable flag still pauses
        return Pause(by="", since="")


def pause(sessions: sessionmaker[Session], by: str) -> bool:
    """Stop claiming new jobs, in every worker; running jobs finish. Returns False when
    processing was paused already (the first pause, and who made it, is kept)."""
    with sessions() as session:
        if session.get(Setting, PAUSE_KEY) is not None:
            return False
        value = json.dumps({"by": by, "since": utcnow().isoformat(timespec="seconds") + "Z"})
        session.add(Setting(key=PAUSE_KEY, value=value))
        try:
            session.commit()
        except IntegrityError:  # paused by someone else meanwhile
            return False
        return True


def resume(sessions: sessionmaker[Session]) -> bool:
    """Claim jobs again; returns False when processing was not paused. The caller rings
    the workers' doorbell, so queued jobs start now rather than after a poll.

    In cluster mode the tasks that reached a worker while paused were dropped (the job
    stayed queued, see :func:`claim_job`): every queued job is published again after the
    commit (:func:`publish_on_commit`; a copy of a message still held is a no-op)."""
    with sessions() as session:
        row = session.get(Setting, PAUSE_KEY)
        if row is None:
            return False
        session.delete(row)
        queued = session.execute(
            select(Job.id, Job.route_name).where(Job.state == JobState.QUEUED).order_by(Job.id)
        ).all()
        session.info.setdefault(_UNPUBLISHED, []).extend(
            (job_id, route_name) for job_id, route_name in queued
        )
        session.commit()
        return True


def _job_and_uids(session: Session, job_id: int) -> tuple[Job, str, str]:
    job = session.get(Job, job_id)
    if job is None:
        raise QueueError(f"unknown job {job_id}")
    series = session.get(Series, job.series_id)
    study_uid = ""
    if series is not None:
        study_uid = session.scalar(select(Study.study_uid).where(Study.id == series.study_id)) or ""
    return job, series.series_uid if series is not None else "", study_uid


def cancel(sessions: sessionmaker[Session], job_id: int, *, by: str) -> None:
    """Cancel a queued job: no worker will run it (``queued -> cancelled``).

    Atomic against a worker's claim: the same ``UPDATE ... WHERE state = 'queued'``, so
    exactly one of the two wins. A running job cannot be cancelled (its model call is
    not interruptible); it is left to finish.

    Raises
    ------
    QueueError
        Unknown job, or one that is not queued.
    """
    with sessions() as session:
        job, series_uid, study_uid = _job_and_uids(session, job_id)
        cancelled = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.QUEUED)
            .values(state=JobState.CANCELLED, finished_at=utcnow(), error=f"cancelled by {by}")
        ).rowcount  # type: ignore[attr-defined]
        if not cancelled:
            session.rollback()
            session.refresh(job)
            raise QueueError(f"job {job_id} is {job.state}, not queued")
        history.record(
            session,
            EventKind.JOB_CANCELLED,
            study_uid=study_uid,
            series_uid=series_uid,
            job_id=job_id,
            requested_by=by,
        )
        session.commit()


def retry(sessions: sessionmaker[Session], job_id: int, *, by: str) -> None:
    """Queue a failed or cancelled job again, as it is (same generation and route).

    The same job rather than a re-run's new generation: its outputs are idempotent
    (``process.runner``), so a retry after a transient failure (a model file being
    replaced, the database restarting) produces what the first run would have. The
    error text is kept until the job runs again; the attempt count goes on.

    Raises
    ------
    QueueError
        Unknown job, or one that is neither failed nor cancelled.
    """
    with sessions() as session:
        job, series_uid, study_uid = _job_and_uids(session, job_id)
        retried = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state.in_(RETRYABLE_STATES))
            .values(state=JobState.QUEUED, finished_at=None)
        ).rowcount  # type: ignore[attr-defined]
        if not retried:
            session.rollback()
            session.refresh(job)
            raise QueueError(f"job {job_id} is {job.state}, not failed or cancelled")
        # Cluster mode: its task is published after the commit, as for a new job.
        session.info.setdefault(_UNPUBLISHED, []).append((job_id, job.route_name))
        history.record(
            session,
            EventKind.JOB_RETRY_REQUESTED,
            study_uid=study_uid,
            series_uid=series_uid,
            job_id=job_id,
            requested_by=by,
        )
        session.commit()


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
    # Published (cluster mode) only once the row is committed: see publish_on_commit.
    session.info.setdefault(_UNPUBLISHED, []).append((job.id, route_name))
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


def publish_on_commit(sessions: sessionmaker[Session], publish: JobPublisher) -> None:
    """Hand the jobs queued in a session of ``sessions`` to ``publish`` after its commit.

    The cluster's outbox rule: the row first, then the message. A message published before
    the commit could reach a worker that does not see the row yet (or ever: a rollback); a
    commit whose publish fails (broker down, process killed between the two) leaves a
    queued job without a message, which the sweep republishes. ``publish`` must not block
    (the completion loop calls it); exceptions are logged, never raised to the committer.
    """

    def committed(session: Session) -> None:
        jobs = session.info.pop(_UNPUBLISHED, None)
        if not jobs:
            return
        try:
            publish(list(jobs))
        except Exception:  # the sweep republishes what no broker holds
            log.exception("could not publish %d job(s); the sweep will", len(jobs))

    def rolled_back(session: Session) -> None:
        session.info.pop(_UNPUBLISHED, None)

    event.listen(sessions, "after_commit", committed)
    event.listen(sessions, "after_soft_rollback", lambda s, _t: rolled_back(s))


def _record_started(session: Session, job: Job, worker: str) -> None:
    series = session.get(Series, job.series_id)
    history.record(
        session,
        EventKind.JOB_STARTED,
        series_uid=series.series_uid if series else "",
        study_uid=series.study.study_uid if series else "",
        job_id=job.id,
        worker=worker,
        attempt=job.attempts,
    )


def _claim_values(worker: str) -> dict[str, Any]:
    return {
        "state": JobState.RUNNING,
        "worker": worker,
        "started_at": utcnow(),
        "attempts": Job.attempts + 1,
    }


def claim_next(sessions: sessionmaker[Session], worker: str) -> int | None:
    """Atomically take the oldest queued job for ``worker``; None when there is none or
    processing is paused."""
    with sessions() as session:
        if paused(session) is not None:
            return None
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
                .values(**_claim_values(worker))
            ).rowcount  # type: ignore[attr-defined]
            if claimed:
                job = session.get(Job, job_id)
                assert job is not None
                _record_started(session, job, worker)
                session.commit()
                return job_id
            session.rollback()
    return None


class Claim(StrEnum):
    """What :func:`claim_job` found (cluster mode: a task names its job)."""

    CLAIMED = "claimed"  # was queued; now running here
    TAKEN_OVER = "taken_over"  # was running on a member that is gone; now running here
    BUSY = "busy"  # running on a live member: that one finishes it
    PAUSED = "paused"  # processing is paused: left as it is, published again on resume
    ENDED = "ended"  # done or failed already: the task is a duplicate
    MISSING = "missing"  # no such job (deleted)


def _member_alive(session: Session, name: str, fresh_after: dt.datetime) -> bool:
    return (
        session.scalar(
            select(ClusterMember.name).where(
                ClusterMember.name == name, ClusterMember.seen_at >= fresh_after
            )
        )
        is not None
    )


def claim_job(
    sessions: sessionmaker[Session], job_id: int, worker: str, *, fresh_after: dt.datetime
) -> Claim:
    """Take job ``job_id`` for ``worker`` if nobody alive holds it (cluster mode).

    Several messages may name one job (a redelivery after a worker died, a republish by
    the sweep); the job runs once because the claim is a conditional UPDATE. A job
    ``running`` on a member whose heartbeat is older than ``fresh_after`` (or that has no
    row) was abandoned, and is taken over with a ``job.requeued`` event.

    While processing is paused (the console's pause) no job starts here, neither a queued
    one nor one taken over: the answer is :attr:`Claim.PAUSED`, the task ends without
    running it, and :func:`resume` publishes the queued jobs again.
    """
    for _ in range(3):  # a lost race is looked at again: the winner may have ended already
        with sessions() as session:
            row = session.execute(select(Job.state, Job.worker).where(Job.id == job_id)).first()
            if row is None:
                return Claim.MISSING
            state, owner = JobState(row.state), str(row.worker or "")
            if state in (JobState.DONE, JobState.FAILED, JobState.CANCELLED):
                return Claim.ENDED
            condition: ColumnElement[bool]
            if state is JobState.RUNNING:
                if owner != worker and _member_alive(session, owner, fresh_after):
                    return Claim.BUSY
                if paused(session) is not None:
                    return Claim.PAUSED
                condition = (Job.state == JobState.RUNNING) & (Job.worker == owner)
            else:
                if paused(session) is not None:
                    return Claim.PAUSED
                condition = Job.state == JobState.QUEUED
            claimed = session.execute(
                update(Job).where(Job.id == job_id, condition).values(**_claim_values(worker))
            ).rowcount  # type: ignore[attr-defined]
            if not claimed:
                session.rollback()
                continue
            job = session.get(Job, job_id)
            assert job is not None
            if state is JobState.RUNNING:
                history.record(
                    session,
                    EventKind.JOB_REQUEUED,
                    job_id=job_id,
                    reason=f"worker {owner} gone while running",
                )
            _record_started(session, job, worker)
            session.commit()
            return Claim.TAKEN_OVER if state is JobState.RUNNING else Claim.CLAIMED
    return Claim.BUSY


def requeue_abandoned(
    sessions: sessionmaker[Session], *, fresh_after: dt.datetime
) -> list[QueuedJob]:
    """Put running jobs whose member is gone (no heartbeat since ``fresh_after``) back in
    the queue (cluster mode); returns them, for the caller to publish."""
    requeued: list[QueuedJob] = []
    with sessions() as session:
        live = select(ClusterMember.name).where(ClusterMember.seen_at >= fresh_after)
        rows = session.execute(
            select(Job.id, Job.worker, Job.route_name).where(
                Job.state == JobState.RUNNING, Job.worker.not_in(live)
            )
        ).all()
        for job_id, owner, route_name in rows:
            done = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == JobState.RUNNING, Job.worker == owner)
                .values(state=JobState.QUEUED)
            ).rowcount  # type: ignore[attr-defined]
            if done:
                history.record(
                    session,
                    EventKind.JOB_REQUEUED,
                    job_id=job_id,
                    reason=f"worker {owner} gone while running",
                )
                requeued.append((job_id, route_name))
        session.commit()
    return requeued


def release(sessions: sessionmaker[Session], job_id: int, worker: str, reason: str) -> bool:
    """Give a running job of ``worker`` back to the queue (its run broke off without an
    outcome: the database went away mid-job). Returns whether it was released."""
    with sessions() as session:
        done = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.RUNNING, Job.worker == worker)
            .values(state=JobState.QUEUED)
        ).rowcount  # type: ignore[attr-defined]
        if done:
            history.record(session, EventKind.JOB_REQUEUED, job_id=job_id, reason=reason)
        session.commit()
        return bool(done)


def queued_before(sessions: sessionmaker[Session], before: dt.datetime) -> list[QueuedJob]:
    """Queued jobs created before ``before``, oldest first (the sweep's candidates)."""
    with sessions() as session:
        rows = session.execute(
            select(Job.id, Job.route_name)
            .where(Job.state == JobState.QUEUED, Job.created_at < before)
            .order_by(Job.id)
        ).all()
    return [(int(job_id), str(route)) for job_id, route in rows]


def finish(
    sessions: sessionmaker[Session],
    job_id: int,
    state: JobState,
    *,
    error: str = "",
    started: float | None = None,
    worker: str | None = None,
) -> bool:
    """End a running job as DONE or FAILED, with its error text and duration.

    ``started`` is the ``time.monotonic()`` at which the runner began, for the event's
    duration. With ``worker`` (cluster mode) the job ends only while that worker still
    holds it: a worker that was taken for gone and taken over must not overwrite the
    outcome of the one that took over. Returns whether the job was ended.
    """
    if state not in (JobState.DONE, JobState.FAILED):
        raise ValueError(f"a job ends done or failed, not {state}")
    with sessions() as session:
        job = session.get(Job, job_id, with_for_update=worker is not None)
        if job is None:
            return False
        if worker is not None and (job.state != JobState.RUNNING or job.worker != worker):
            log.warning("job %d is no longer held by %s; its outcome is dropped", job_id, worker)
            return False
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
    return True


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
