"""The sweep: nothing queued is forgotten, whatever the broker or a worker did.

Two things can leave a job without a message that will run it:

* its worker is gone while running it (SIGKILL, a lost host). RabbitMQ delivers the
  unacknowledged task again, and the next worker takes the job over once the dead one's
  heartbeat is stale; but a task may also have been acknowledged already (a worker cut from
  the broker finishes a task whose ack cannot be sent, and its redelivery found the job
  running). The sweep puts every running job of a gone member back to ``queued`` and
  publishes it.
* its message was never published or was lost (the broker was down at the commit, the
  process died between the commit and the publish, a broker lost its disk). The sweep
  compares, per queue, the queued jobs older than ``republish_after`` with what the broker
  holds (ready messages, plus one in flight per consumer); when the broker holds fewer, it
  publishes those jobs again. Copies are harmless: a task whose job is not queued does
  nothing (``process.queue.claim_job``). While processing is paused it republishes nothing
  (workers leave queued jobs alone then, and resuming publishes every queued job).

Several receivers and dispatchers sweep; a PostgreSQL advisory lock lets one at a time.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.cluster import members
from dicom_node.cluster.broker import JobPublisher, queue_depths
from dicom_node.cluster.queues import job_queue
from dicom_node.config import Settings
from dicom_node.process import queue
from dicom_node.process.queue import QueuedJob
from dicom_node.store.db import utcnow

log = logging.getLogger(__name__)

_SWEEP_LOCK = 0x44434E53  # "DCNS": the advisory lock key of the sweep


@dataclass
class SweepReport:
    requeued: list[QueuedJob] = field(default_factory=list)
    republished: list[QueuedJob] = field(default_factory=list)
    skipped: str = ""  # why nothing was done (another sweeper, broker down)


def sweep_once(
    settings: Settings,
    engine: Engine,
    sessions: sessionmaker[Session],
    publisher: JobPublisher,
) -> SweepReport:
    """One sweep; safe to run from several processes at once (one does the work)."""
    report = SweepReport()
    with engine.connect() as lock_conn:
        postgres = lock_conn.dialect.name == "postgresql"
        if (
            postgres
            and not lock_conn.execute(text(f"SELECT pg_try_advisory_lock({_SWEEP_LOCK})")).scalar()
        ):
            report.skipped = "another process is sweeping"
            return report
        try:
            _sweep(settings, sessions, publisher, report)
        finally:
            if postgres:
                lock_conn.execute(text(f"SELECT pg_advisory_unlock({_SWEEP_LOCK})"))
                lock_conn.commit()
    return report


def _sweep(
    settings: Settings,
    sessions: sessionmaker[Session],
    publisher: JobPublisher,
    report: SweepReport,
) -> None:
    now = utcnow()
    report.requeued = queue.requeue_abandoned(
        sessions, fresh_after=members.fresh_after(settings, now)
    )
    if report.requeued:
        log.warning(
            "requeued %d job(s) of workers that are gone: %s",
            len(report.requeued),
            [job_id for job_id, _ in report.requeued],
        )
        publisher.publish_now(report.requeued)
    with sessions() as session:
        if queue.paused(session) is not None:
            # Workers leave queued jobs alone while paused; resume publishes them all.
            report.skipped = "processing paused"
            members.forget_gone(sessions)
            return
    candidates = queue.queued_before(
        sessions, now - dt.timedelta(seconds=settings.cluster.republish_after)
    )
    requeued = {job_id for job_id, _ in report.requeued}
    by_queue: dict[str, list[QueuedJob]] = defaultdict(list)
    for job in candidates:
        if job[0] not in requeued:
            by_queue[job_queue(settings, job[1])].append(job)
    if by_queue:
        try:
            depths = queue_depths(settings, publisher.app, by_queue)
        except Exception as exc:  # broker down: nothing can be published now anyway
            report.skipped = f"broker unreachable: {type(exc).__name__}"
            return
        for name, jobs in by_queue.items():
            ready, consumers = depths.get(name, (0, 0))
            if len(jobs) > ready + consumers:
                log.warning(
                    "queue %s holds %d message(s) for %d queued job(s): republishing",
                    name,
                    ready,
                    len(jobs),
                )
                publisher.publish_now(jobs)
                report.republished.extend(jobs)
    members.forget_gone(sessions)


class Sweeper(threading.Thread):
    """Runs :func:`sweep_once` every ``cluster.sweep_interval`` seconds until stopped."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        sessions: sessionmaker[Session],
        publisher: JobPublisher,
    ) -> None:
        super().__init__(name="sweep", daemon=True)
        self.settings = settings
        self.engine = engine
        self.sessions = sessions
        self.publisher = publisher
        self.stopped = threading.Event()
        self.last: SweepReport | None = None

    def run(self) -> None:
        while not self.stopped.wait(self.settings.cluster.sweep_interval):
            try:
                self.last = sweep_once(self.settings, self.engine, self.sessions, self.publisher)
            except Exception as exc:  # the database is away: the next sweep tries again
                log.warning("sweep failed: %s", type(exc).__name__)

    def stop(self) -> None:
        self.stopped.set()

    def status(self) -> dict[str, Any]:
        last = self.last
        return {
            "requeued": len(last.requeued) if last else 0,
            "republished": len(last.republished) if last else 0,
            "skipped": last.skipped if last else "",
        }
