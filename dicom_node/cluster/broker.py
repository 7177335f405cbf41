"""Celery on RabbitMQ: the app, the publisher of job tasks, and queue depths.

The settings that make delivery at-least-once (DESIGN.md, section 5): ``task_acks_late``
(a task is acknowledged after it ran, so a worker that dies mid-job leaves it unacked),
``task_reject_on_worker_lost`` (a pool child that dies gives its task back), prefetch 1
(a worker holds no second job that another worker could run meanwhile), durable queues and
persistent messages with publisher confirms (a broker restart loses nothing it confirmed).
RabbitMQ's ``consumer_timeout`` (30 min by default) closes the channel of a task unacked
for longer: keep a job well below it, or raise it in rabbitmq.conf for long CT jobs.
"""

from __future__ import annotations

import contextlib
import logging
import queue as stdlib_queue
import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from dicom_node.cluster.queues import job_queue
from dicom_node.config import Settings
from dicom_node.process.queue import QueuedJob

log = logging.getLogger(__name__)

TASK_NAME = "dicom_node.run_job"


def make_app(settings: Settings, queues: Iterable[str] = ()) -> Any:
    """A Celery app for this cluster; ``queues`` are those a worker consumes."""
    from celery import Celery

    app = Celery("dicom_node", broker=settings.cluster.broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_delivery_mode="persistent",
        task_queues=[kombu_queue(settings, name) for name in queues],
        task_create_missing_queues=False,
        broker_transport_options={"confirm_publish": True},
        broker_connection_retry_on_startup=True,
        # A worker waits for the broker as long as it takes (a broker restart); the
        # publisher has its own short retry policy (below) and the sweep as a fallback.
        broker_connection_max_retries=None,
        broker_connection_timeout=4.0,
        broker_heartbeat=30,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        worker_enable_remote_control=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


def kombu_queue(settings: Settings, name: str) -> Any:
    """A durable queue bound to the cluster's direct exchange with its own name as key."""
    from kombu import Exchange, Queue

    exchange = Exchange(settings.cluster.queue_prefix, type="direct", durable=True)
    return Queue(name, exchange, routing_key=name, durable=True)


class JobPublisher:
    """Publishes job tasks from a thread of its own, so a committer never waits for the
    broker (the completion loop commits routed series; a broker that is down must not
    stall it). A publish that fails is logged and left to the sweep, which republishes
    queued jobs that no queue holds.
    """

    def __init__(self, settings: Settings, app: Any | None = None) -> None:
        self.settings = settings
        self.app = app if app is not None else make_app(settings)
        self._pending: stdlib_queue.Queue[list[QueuedJob] | None] = stdlib_queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.published = 0
        self.failed = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
            self._thread.start()

    def publish(self, jobs: Sequence[QueuedJob]) -> None:
        """Queue ``jobs`` for publishing; never blocks (``process.queue.JobPublisher``)."""
        self._pending.put(list(jobs))

    def publish_now(self, jobs: Sequence[QueuedJob]) -> int:
        """Publish in this thread; returns how many were confirmed by the broker."""
        by_queue: dict[str, list[int]] = defaultdict(list)
        for job_id, route_name in jobs:
            by_queue[job_queue(self.settings, route_name)].append(job_id)
        done = 0
        with self._lock:  # one producer connection per publisher
            for name, ids in by_queue.items():
                target = kombu_queue(self.settings, name)
                for job_id in ids:
                    try:
                        self.app.send_task(
                            TASK_NAME,
                            args=[job_id],
                            queue=target,
                            routing_key=name,
                            declare=[target],
                            retry=True,
                            retry_policy={
                                "max_retries": 2,
                                "interval_start": 0.2,
                                "interval_step": 0.5,
                                "interval_max": 1.0,
                            },
                        )
                        done += 1
                    except Exception as exc:  # broker down: the sweep republishes
                        self.failed += 1
                        log.warning("job %d not published to %s: %s", job_id, name, exc)
        self.published += done
        return done

    def _run(self) -> None:
        while True:
            jobs = self._pending.get()
            if jobs is None:
                return
            try:
                self.publish_now(jobs)
            except Exception:
                log.exception("publishing failed")

    def stop(self, timeout: float = 10.0) -> None:
        """Publish what is pending (up to ``timeout``), then stop."""
        if self._thread is not None:
            self._pending.put(None)
            self._thread.join(timeout)
            self._thread = None


def queue_depths(settings: Settings, app: Any, names: Iterable[str]) -> dict[str, tuple[int, int]]:
    """``{queue: (ready messages, consumers)}`` from the broker (declaring missing queues).

    Messages a worker holds unacknowledged (the job it runs) are not "ready".

    Raises
    ------
    Exception
        The broker cannot be reached (kombu's connection errors).
    """
    found: dict[str, tuple[int, int]] = {}
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=settings.cluster.heartbeat_seconds + 2)
        channel = conn.channel()
        try:
            for name in names:
                bound = kombu_queue(settings, name)(channel)
                bound.declare()
                ok = bound.queue_declare(passive=True)
                found[name] = (int(ok.message_count), int(ok.consumer_count))
        finally:
            channel.close()
    return found


def delete_queues(settings: Settings, names: Iterable[str]) -> None:
    """Remove queues (tests and decommissioning); missing ones are fine."""
    app = make_app(settings)
    with app.connection_for_write() as conn:
        channel = conn.channel()
        for name in names:
            try:
                channel.queue_delete(name)
            except Exception:  # already gone: the channel is closed, take another
                channel = conn.channel()
        with contextlib.suppress(Exception):
            channel.exchange_delete(settings.cluster.queue_prefix)
        channel.close()
