"""What a :class:`~dicom_node.node.Node` adds in cluster mode, whatever its roles.

* publishing: every commit that queued jobs publishes them (``process.queue.publish_on_commit``),
  from a thread, so the completion loop never waits for the broker;
* routing: a model is available when its weights are here or some worker holds it;
* membership: a heartbeat row for this process;
* the sweep, in the receive and dispatch roles;
* in the dispatch role, the wake-ups that workers on any host publish when a job queued
  deliveries (``cluster.broker.DeliveryBell``), rung into the delivery thread's doorbell;
* the role's own /healthz and /metrics, when ``cluster.health_port`` is set;
* for ``serve`` in cluster mode (the process role in this process tree): cluster workers
  in spawned processes, one per ``workers.processes``, holding every routed model whose
  weights are here.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading
from typing import Any, Protocol

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.cluster import members
from dicom_node.cluster.broker import DeliveryBellListener, JobPublisher, make_app
from dicom_node.cluster.health import RoleHealthServer
from dicom_node.cluster.sweep import Sweeper
from dicom_node.cluster.worker import worker_process_main
from dicom_node.config import Settings, StartupError
from dicom_node.process.queue import publish_on_commit
from dicom_node.receive.objectstore import storage_for

log = logging.getLogger(__name__)


class NodeLike(Protocol):
    """What this module needs of the node (which imports it, not the other way)."""

    @property
    def settings(self) -> Settings: ...

    roles: frozenset[str]
    engine: Engine
    sessions: sessionmaker[Session]
    model_available: Any
    results_queued: Any  # the delivery thread's doorbell

    def status(self) -> dict[str, Any]: ...


class ClusterRoles:
    def __init__(self, node: NodeLike) -> None:
        self.node = node
        settings = node.settings
        self.settings = settings
        self.app = make_app(settings)
        self.publisher = JobPublisher(settings, self.app)
        publish_on_commit(node.sessions, self.publisher.publish)
        self.model_available = members.cluster_availability(node.sessions, node.model_available)
        all_roles = {"receive", "process", "dispatch", "web"}
        label = "serve" if set(node.roles) == all_roles else "+".join(sorted(node.roles))
        self.membership = members.Membership(node.sessions, settings, label[:16])
        self.sweeper: Sweeper | None = None
        if {"receive", "dispatch"} & set(node.roles):
            self.sweeper = Sweeper(settings, node.engine, node.sessions, self.publisher)
        self.health: RoleHealthServer | None = None
        self.wakeups: DeliveryBellListener | None = None
        self._workers: dict[str, mp.process.BaseProcess] = {}
        self._running = threading.Event()
        self._stopped = threading.Event()
        self._supervisor: threading.Thread | None = None

    def start(self) -> None:
        """Join the cluster (after the schema upgrade, before serving)."""
        storage = storage_for(self.settings)
        if storage.objects is not None:
            try:
                storage.objects.ensure_bucket()
            except OSError as exc:
                raise StartupError(f"storage.s3: {exc}") from exc
        if self.settings.cluster.health_port:
            self.health = RoleHealthServer(
                self.settings,
                self.membership.role,
                self.node.sessions,
                self._status,
                app=self.app,
            )
            self.health.start()
        self._running.set()
        self.publisher.start()
        self.membership.join_cluster()
        if self.sweeper is not None:
            self.sweeper.start()
        if "dispatch" in self.node.roles:
            self.wakeups = DeliveryBellListener(
                self.settings, self.app, self.node.results_queued.ring
            )
            self.wakeups.start()

    def _status(self) -> dict[str, Any]:
        status = self.node.status()
        status["heartbeat_ok"] = self.membership.healthy
        if "receive" not in self.node.roles:
            status.pop("scp_listening", None)
        if "process" not in self.node.roles:
            status.pop("models", None)
        return status

    # -- workers of `serve` in cluster mode -------------------------------------------
    def start_workers(self) -> None:
        from dicom_node.route.waits import model_availability

        local = model_availability(self.settings)
        models = sorted(
            {m for r in self.settings.routes if r.enabled for m in r.models if local(m)}
        )
        if not models:
            log.warning("no routed model has its weights here: this serve runs no worker")
            return
        for i in range(max(self.settings.workers.processes, 1)):
            self._spawn(f"w{i + 1}", models)
        self._supervisor = threading.Thread(
            target=self._supervise, args=(models,), name="supervisor", daemon=True
        )
        self._supervisor.start()

    def _spawn(self, name: str, models: list[str]) -> None:
        # The children share serve's health endpoint (its status counts them), not its port.
        cluster = self.settings.cluster.model_copy(update={"health_port": 0})
        settings = self.settings.model_copy(update={"cluster": cluster})
        proc = mp.get_context("spawn").Process(
            target=worker_process_main, args=(settings, models, name), name=f"worker-{name}"
        )
        proc.daemon = False  # a Celery worker forks nothing, but must stop on its own
        proc.start()
        self._workers[name] = proc

    def _supervise(self, models: list[str]) -> None:
        while self._running.is_set():
            for name, proc in list(self._workers.items()):
                if not proc.is_alive() and self._running.is_set():
                    log.error("cluster worker %s exited with %s; restarting", name, proc.exitcode)
                    self._spawn(name, models)
            self._stopped.wait(2.0)

    def workers_alive(self) -> int:
        return sum(p.is_alive() for p in self._workers.values())

    def status(self) -> dict[str, Any]:
        return {
            "member": self.membership.member,
            "heartbeat_ok": self.membership.healthy,
            "published": self.publisher.published,
            "publish_failures": self.publisher.failed,
            **({"sweep": self.sweeper.status()} if self.sweeper is not None else {}),
            **(
                {
                    "delivery_wakeups": self.wakeups.rings,
                    "wakeups_connected": self.wakeups.connected.is_set(),
                }
                if self.wakeups is not None
                else {}
            ),
        }

    def stop(self) -> None:
        self._running.clear()
        self._stopped.set()
        for proc in self._workers.values():
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)  # Celery's warm shutdown: the job ends
        for proc in self._workers.values():
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
        if self.sweeper is not None:
            self.sweeper.stop()
        if self.wakeups is not None:
            self.wakeups.stop()
        self.publisher.stop()
        self.membership.leave()
        if self.health is not None:
            self.health.stop()
