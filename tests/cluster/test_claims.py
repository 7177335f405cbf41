"""The database side of cluster mode, on SQLite and PostgreSQL (no broker needed): jobs are
published only after their commit, a task claims its job once, a job whose worker is gone
is taken over, and an outcome is written only by the worker that holds the job."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.cluster.members import Membership
from dicom_node.cluster.queues import all_queues, job_queue, worker_queues
from dicom_node.cluster.sweep import sweep_once
from dicom_node.process import queue
from dicom_node.process.queue import Claim
from dicom_node.store.db import Event, Job, Series, Study, create_engine, session_factory, utcnow
from dicom_node.store.states import EventKind, JobState, SeriesState
from tests.conftest import make_settings


@pytest.fixture
def sessions(database_url: str) -> sessionmaker[Session]:
    return session_factory(create_engine(database_url))


def _series(session: Session, uid: str = "1.2.3.4") -> Series:
    now = utcnow()
    study = Study(study_uid=uid + ".0", first_received_at=now, last_received_at=now)
    session.add(study)
    session.flush()
    series = Series(
        series_uid=uid,
        study_id=study.id,
        first_received_at=now,
        last_received_at=now,
        state=SeriesState.ROUTED,
    )
    session.add(series)
    session.flush()
    return series


def _queued_job(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        job = queue.enqueue(session, _series(session), "chest", study_uid="1.2.3.4.0")
        assert job is not None
        session.commit()
        return job.id


def _two_queued_jobs(sessions: sessionmaker[Session]) -> list[int]:
    with sessions() as session:
        first, second = _series(session, "1.2.3.4"), _series(session, "1.2.3.5")
        jobs = [queue.enqueue(session, s, "chest", study_uid="1.0") for s in (first, second)]
        session.commit()
    return [job.id for job in jobs if job is not None]


def _member(sessions: sessionmaker[Session], tmp_path: Path, name: str) -> Membership:
    member = Membership(sessions, make_settings(tmp_path), "worker", name=name)
    member._upsert()  # the row, without the heartbeat thread
    return member


def test_jobs_are_published_after_their_commit_and_never_after_a_rollback(
    sessions: sessionmaker[Session],
) -> None:
    published: list[list[tuple[int, str]]] = []
    queue.publish_on_commit(sessions, lambda jobs: published.append(list(jobs)))
    with sessions() as session:
        series = _series(session)
        job = queue.enqueue(session, series, "chest", study_uid="1.2.3.4.0")
        assert job is not None
        assert published == []  # flushed, not committed: no worker may see it yet
        session.commit()
    assert published == [[(job.id, "chest")]]
    with sessions() as session:
        series = session.scalars(select(Series)).one()
        series.generation += 1
        assert queue.enqueue(session, series, "chest", study_uid="1.2.3.4.0") is not None
        session.rollback()
        session.commit()  # nothing queued any more: nothing to publish
    assert len(published) == 1
    with sessions() as session:  # a broken publisher never breaks the commit
        queue.publish_on_commit(sessions, lambda jobs: 1 / 0)  # type: ignore[func-returns-value]
        series = session.scalars(select(Series)).one()
        series.generation += 1
        queue.enqueue(session, series, "chest", study_uid="1.2.3.4.0")
        session.commit()
    assert len(published) == 2


def test_a_job_is_claimed_once_and_taken_over_when_its_worker_is_gone(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    job_id = _queued_job(sessions)
    alive = _member(sessions, tmp_path, "worker@a:1")
    fresh = utcnow() - dt.timedelta(seconds=10)
    assert queue.claim_job(sessions, job_id, "worker@a:1", fresh_after=fresh) is Claim.CLAIMED
    # A copy of the task (a redelivery, a republish) while its worker lives: nothing to do.
    assert queue.claim_job(sessions, job_id, "worker@b:2", fresh_after=fresh) is Claim.BUSY
    # The heartbeat is stale: the job was abandoned and another worker takes it over.
    later = utcnow() + dt.timedelta(seconds=1)
    assert queue.claim_job(sessions, job_id, "worker@b:2", fresh_after=later) is Claim.TAKEN_OVER
    # The first worker comes back to life and ends "its" job: its outcome is dropped.
    assert not queue.finish(sessions, job_id, JobState.FAILED, error="late", worker="worker@a:1")
    assert queue.finish(sessions, job_id, JobState.DONE, worker="worker@b:2")
    assert queue.claim_job(sessions, job_id, "worker@c:3", fresh_after=fresh) is Claim.ENDED
    assert queue.claim_job(sessions, 999, "worker@c:3", fresh_after=fresh) is Claim.MISSING
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.state, job.worker, job.attempts, job.error) == (
            JobState.DONE,
            "worker@b:2",
            2,
            "",
        )
        kinds = session.scalars(select(Event.kind).where(Event.job_id == job_id)).all()
    assert kinds.count(EventKind.JOB_STARTED) == 2 and kinds.count(EventKind.JOB_REQUEUED) == 1
    alive.leave()


def test_the_sweep_requeues_only_jobs_of_members_that_are_gone(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    fresh = utcnow() - dt.timedelta(seconds=10)
    ids = _two_queued_jobs(sessions)
    _member(sessions, tmp_path, "worker@live:1")
    assert queue.claim_job(sessions, ids[0], "worker@live:1", fresh_after=fresh) is Claim.CLAIMED
    assert queue.claim_job(sessions, ids[1], "worker@dead:2", fresh_after=fresh) is Claim.CLAIMED
    assert queue.requeue_abandoned(sessions, fresh_after=fresh) == [(ids[1], "chest")]
    assert queue.queued_before(sessions, utcnow() + dt.timedelta(seconds=1)) == [(ids[1], "chest")]
    # A job whose run broke off goes back to the queue, if its worker still holds it.
    assert not queue.release(sessions, ids[0], "worker@other:3", "broke off")
    assert queue.release(sessions, ids[0], "worker@live:1", "broke off")


def test_a_pause_holds_every_claim_and_resume_publishes_the_queued_jobs(
    sessions: sessionmaker[Session], database_url: str, tmp_path: Path
) -> None:
    """The console's pause in cluster mode: a task for a queued job (or for one to take
    over) leaves it queued; the sweep republishes nothing meanwhile; resuming publishes
    every queued job, and a retried job is published like a new one."""
    published: list[list[tuple[int, str]]] = []
    queue.publish_on_commit(sessions, lambda jobs: published.append(list(jobs)))
    fresh = utcnow() - dt.timedelta(seconds=10)
    ids = _two_queued_jobs(sessions)
    assert queue.claim_job(sessions, ids[1], "worker@dead:2", fresh_after=fresh) is Claim.CLAIMED
    published.clear()
    assert queue.pause(sessions, "admin")
    assert queue.claim_job(sessions, ids[0], "worker@a:1", fresh_after=fresh) is Claim.PAUSED
    # worker@dead:2 has no heartbeat row: its job would be taken over, but not while paused.
    assert queue.claim_job(sessions, ids[1], "worker@a:1", fresh_after=fresh) is Claim.PAUSED

    class Publisher:
        app = None

        def publish_now(self, jobs: list[tuple[int, str]]) -> int:
            published.append(list(jobs))
            return len(jobs)

    settings = make_settings(tmp_path, storage={"database_url": database_url})
    report = sweep_once(settings, create_engine(database_url), sessions, Publisher())  # type: ignore[arg-type]
    assert report.skipped == "processing paused"
    assert report.requeued == [(ids[1], "chest")]  # back to queued, for after the pause
    published.clear()
    with sessions() as session:
        states = session.scalars(select(Job.state).order_by(Job.id)).all()
    assert states == [JobState.QUEUED, JobState.QUEUED]
    assert queue.resume(sessions)
    assert published == [[(ids[0], "chest"), (ids[1], "chest")]]
    assert queue.claim_job(sessions, ids[0], "worker@a:1", fresh_after=fresh) is Claim.CLAIMED
    # A cancelled job's task ends at once (it used to wait as if the job were busy).
    queue.cancel(sessions, ids[1], by="admin")
    assert queue.claim_job(sessions, ids[1], "worker@a:1", fresh_after=fresh) is Claim.ENDED
    published.clear()
    queue.retry(sessions, ids[1], by="admin")
    assert published == [[(ids[1], "chest")]]


def test_each_model_has_its_queue_and_a_worker_consumes_those_of_its_models(
    tmp_path: Path,
) -> None:
    settings = make_settings(
        tmp_path,
        cluster={"queue_prefix": "site"},
        destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}],
        routes=[
            {"name": "chest", "models": ["chest-xray-pneumonia"], "destinations": ["pacs"]},
            {"name": "brain", "models": ["brain-mri-tumor"], "destinations": ["pacs"]},
            {"name": "fwd", "forward": True, "destinations": ["pacs"]},
        ],
    )
    assert job_queue(settings, "chest") == "site.model.chest-xray-pneumonia"
    assert job_queue(settings, "fwd") == "site.forward"
    assert worker_queues(settings, ["chest-xray-pneumonia"]) == [
        "site.forward",
        "site.model.chest-xray-pneumonia",
    ]
    assert all_queues(settings) == [
        "site.forward",
        "site.model.brain-mri-tumor",
        "site.model.chest-xray-pneumonia",
    ]


def test_cluster_mode_needs_postgresql(tmp_path: Path) -> None:
    from dicom_node.config import ConfigError

    with pytest.raises(ConfigError, match=r"needs storage\.database_url = 'postgresql"):
        make_settings(tmp_path, cluster={"mode": "cluster"})
