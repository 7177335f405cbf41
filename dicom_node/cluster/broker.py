"""Celery on RabbitMQ: the app, the publisher of job tasks, the dispatchers' wake-ups,
and queue depths.

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

from dicom_node.cluster.queues import delivery_queue, job_queue
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


def kombu_queue(settings: Settings, name: str, arguments: dict[str, Any] | None = None) -> Any:
    """A durable queue bound to the cluster's direct exchange with its own name as key;
    ``arguments`` are RabbitMQ's queue arguments (``x-message-ttl``...)."""
    from kombu import Exchange, Queue

    exchange = Exchange(settings.cluster.queue_prefix, type="direct", durable=True)
    return Queue(name, exchange, routing_key=name, durable=True, queue_arguments=arguments)


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


# Wake-ups are worth nothing after a minute (the dispatchers' poll has sent the results by
# then), and a backlog of them while no dispatcher runs is bounded.
_WAKEUP_TTL_MS = 60_000
_WAKEUP_MAX = 1000


def delivery_kombu_queue(settings: Settings) -> Any:
    """The dispatchers' wake-up queue: durable, its messages transient and short-lived."""
    return kombu_queue(
        settings,
        delivery_queue(settings),
        {"x-message-ttl": _WAKEUP_TTL_MS, "x-max-length": _WAKEUP_MAX},
    )


class DeliveryBell:
    """Wakes a dispatcher on any host when a job has queued deliveries (cluster mode).

    The message is a wake-up, not the work: the deliveries are rows, claimed by the
    dispatcher that sends them (``dispatch.delivery.Deliverer.due``), with their per
    destination lanes, batches of up to 128 objects per association and backoff, which a
    task per object would break up. One dispatcher gets each message (the queue is shared)
    and claims everything due. A lost wake-up costs the dispatchers' poll interval (0.5 s),
    nothing else. :meth:`ring` never blocks (the worker calls it after its commit); rings
    that come while one is being published are sent as one.
    """

    def __init__(self, settings: Settings, app: Any, sender: str) -> None:
        self.settings = settings
        self.app = app
        self.sender = sender
        self._wanted = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self.sent = 0
        self.failed = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="delivery-bell", daemon=True)
            self._thread.start()

    def ring(self) -> None:
        self._wanted.set()

    def _run(self) -> None:
        queue = delivery_kombu_queue(self.settings)
        while True:
            self._wanted.wait()
            if self._stopped.is_set():
                return
            self._wanted.clear()
            try:
                with self.app.producer_or_acquire() as producer:
                    producer.publish(
                        {"from": self.sender},
                        exchange=queue.exchange,
                        routing_key=queue.routing_key,
                        declare=[queue],
                        serializer="json",
                        delivery_mode=1,  # transient: a wake-up need not survive the broker
                        retry=True,
                        retry_policy={"max_retries": 1, "interval_start": 0.2},
                    )
                self.sent += 1
                if self._failing:
                    log.info("dispatchers' wake-ups are published again")
                    self._failing = False
            except Exception as exc:  # broker down: the dispatchers' poll sends the results
                self.failed += 1
                if not self._failing:  # one line per outage, not one per job
                    log.warning(
                        "could not wake the dispatchers through %s (%s); they find the "
                        "results by their poll",
                        queue.name,
                        type(exc).__name__,
                    )
                    self._failing = True

    def stop(self, timeout: float = 5.0) -> None:
        self._stopped.set()
        self._wanted.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


class DeliveryBellListener(threading.Thread):
    """A dispatcher's side of :class:`DeliveryBell`: consumes the wake-up queue and calls
    ``on_ring`` (the delivery thread's doorbell) for each message. Reconnects after a
    broker outage, with one log line per outage."""

    def __init__(self, settings: Settings, app: Any, on_ring: Any) -> None:
        super().__init__(name="delivery-bell-listener", daemon=True)
        self.settings = settings
        self.app = app
        self.on_ring = on_ring
        self._stopped = threading.Event()
        self.connected = threading.Event()
        self.rings = 0

    def _message(self, body: Any, message: Any) -> None:
        self.rings += 1
        try:
            self.on_ring()
        except Exception:
            log.exception("delivery wake-up failed")

    def run(self) -> None:
        from kombu import Consumer

        queue = delivery_kombu_queue(self.settings)
        failing = False
        while not self._stopped.is_set():
            try:
                with self.app.connection_for_read() as conn:
                    conn.ensure_connection(max_retries=1, timeout=4.0)
                    with Consumer(
                        conn,
                        queues=[queue],
                        callbacks=[self._message],
                        accept=["json"],
                        no_ack=True,
                    ):
                        self.connected.set()
                        if failing:
                            log.info("listening for delivery wake-ups on %s again", queue.name)
                            failing = False
                        while not self._stopped.is_set():
                            try:
                                conn.drain_events(timeout=1.0)
                            except TimeoutError:
                                conn.heartbeat_check()
            except Exception as exc:
                self.connected.clear()
                if not failing:
                    log.warning(
                        "no delivery wake-ups from %s (%s); polling until the broker is back",
                        queue.name,
                        type(exc).__name__,
                    )
                    failing = True
                self._stopped.wait(2.0)
        self.connected.clear()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopped.set()
        self.join(timeout)


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
