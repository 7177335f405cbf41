"""The queue's operator actions: pause and resume processing (honoured by every claim,
kept in the database), cancel a queued job, retry a failed or cancelled one; on SQLite and
PostgreSQL, with the events they write."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.process import queue
from dicom_node.process.worker import run_jobs
from dicom_node.store.db import Event, Job, Series, Study, create_engine, session_factory
from dicom_node.store.states import EventKind, JobState, SeriesState

pytestmark = pytest.mark.postgres


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = create_engine(database_url)
    yield session_factory(engine)
    engine.dispose()


def _jobs(sessions: sessionmaker[Session], count: int) -> list[int]:
    """``count`` queued jobs, one per series of one study."""
    ids = []
    with sessions() as session:
        study = Study(study_uid="1.2.3")
        session.add(study)
        session.flush()
        for i in range(count):
            series = Series(
                series_uid=f"1.2.3.{i}",
                study_id=study.id,
                state=SeriesState.ROUTED,
                route_name="chest",
            )
            session.add(series)
            session.flush()
            job = queue.enqueue(session, series, "chest", study_uid="1.2.3")
            assert job is not None
            ids.append(job.id)
        session.commit()
    return ids


def _state(sessions: sessionmaker[Session], job_id: int) -> JobState:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.state


def _events(sessions: sessionmaker[Session], kind: EventKind) -> list[Event]:
    with sessions() as session:
        return list(session.scalars(select(Event).where(Event.kind == kind)))


def test_pause_stops_claims_until_resumed(sessions: sessionmaker[Session]) -> None:
    first, second = _jobs(sessions, 2)
    assert queue.pause(sessions, "alice") is True
    assert queue.pause(sessions, "bob") is False  # the first pause is kept
    with sessions() as session:
        pause = queue.paused(session)
    assert pause is not None and pause.by == "alice" and pause.since.endswith("Z")
    assert queue.claim_next(sessions, "w1") is None
    assert _state(sessions, first) is JobState.QUEUED
    assert queue.resume(sessions) is True
    assert queue.resume(sessions) is False
    assert queue.claim_next(sessions, "w1") == first
    assert queue.claim_next(sessions, "w1") == second


def test_a_running_worker_loop_honours_the_pause(sessions: sessionmaker[Session]) -> None:
    """The worker loop itself (``run_jobs``): paused, it runs nothing; resumed, it runs
    the queued job at its next poll."""
    [job_id] = _jobs(sessions, 1)
    queue.pause(sessions, "alice")
    ran: list[int] = []
    stop = threading.Event()

    class Runner:
        def run(self, claimed: int) -> None:
            ran.append(claimed)
            queue.finish(sessions, claimed, JobState.DONE)
            stop.set()

    loop = threading.Thread(target=run_jobs, args=(Runner(), sessions, "w1", stop, 0.05))
    loop.start()
    try:
        stop.wait(0.5)
        assert ran == [] and _state(sessions, job_id) is JobState.QUEUED
        queue.resume(sessions)
        assert stop.wait(10)
    finally:
        stop.set()
        loop.join(10)
    assert ran == [job_id] and _state(sessions, job_id) is JobState.DONE


def test_cancel_a_queued_job(sessions: sessionmaker[Session]) -> None:
    first, second = _jobs(sessions, 2)
    queue.cancel(sessions, first, by="alice")
    assert _state(sessions, first) is JobState.CANCELLED
    # No worker takes it; the next job is claimed instead.
    assert queue.claim_next(sessions, "w1") == second
    with pytest.raises(queue.QueueError, match="is cancelled, not queued"):
        queue.cancel(sessions, first, by="alice")
    with pytest.raises(queue.QueueError, match="is running, not queued"):
        queue.cancel(sessions, second, by="alice")
    with pytest.raises(queue.QueueError, match="unknown job 999"):
        queue.cancel(sessions, 999, by="alice")
    [event] = _events(sessions, EventKind.JOB_CANCELLED)
    assert event.job_id == first and event.detail["requested_by"] == "alice"
    assert event.series_uid == "1.2.3.0" and event.study_uid == "1.2.3"
    with sessions() as session:
        job = session.get(Job, first)
        assert job is not None and job.error == "cancelled by alice" and job.finished_at


def test_retry_failed_and_cancelled_jobs(sessions: sessionmaker[Session]) -> None:
    failed, cancelled, done = _jobs(sessions, 3)
    assert queue.claim_next(sessions, "w1") == failed
    queue.finish(sessions, failed, JobState.FAILED, error="model crashed")
    queue.cancel(sessions, cancelled, by="alice")
    assert queue.claim_next(sessions, "w1") == done
    queue.finish(sessions, done, JobState.DONE)

    with pytest.raises(queue.QueueError, match="is done, not failed or cancelled"):
        queue.retry(sessions, done, by="alice")
    queue.retry(sessions, failed, by="alice")
    queue.retry(sessions, cancelled, by="bob")
    assert _state(sessions, failed) is JobState.QUEUED
    assert _state(sessions, cancelled) is JobState.QUEUED
    # The same job runs again, its attempts go on, and a success clears the old error.
    assert queue.claim_next(sessions, "w2") == failed
    queue.finish(sessions, failed, JobState.DONE)
    with sessions() as session:
        job = session.get(Job, failed)
        assert job is not None
        assert (job.attempts, job.error, job.generation) == (2, "", 0)
    requested = _events(sessions, EventKind.JOB_RETRY_REQUESTED)
    assert sorted((e.job_id, e.detail["requested_by"]) for e in requested) == [
        (failed, "alice"),
        (cancelled, "bob"),
    ]


def test_cancel_and_claim_race_for_the_same_job(sessions: sessionmaker[Session]) -> None:
    """Cancelling and claiming are the same conditional UPDATE: exactly one wins."""
    job_ids = _jobs(sessions, 20)
    claimed: list[int] = []
    cancelled: list[int] = []

    def claim() -> None:
        while (job := queue.claim_next(sessions, "w1")) is not None:
            claimed.append(job)

    def cancel() -> None:
        for job_id in reversed(job_ids):
            try:
                queue.cancel(sessions, job_id, by="alice")
                cancelled.append(job_id)
            except queue.QueueError:
                pass

    threads = [threading.Thread(target=claim), threading.Thread(target=cancel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(claimed + cancelled) == job_ids  # each job exactly once
    for job_id in cancelled:
        assert _state(sessions, job_id) is JobState.CANCELLED
    for job_id in claimed:
        assert _state(sessions, job_id) is JobState.RUNNING
