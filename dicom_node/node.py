"""The serving process: SCP, completion, delivery, worker processes (and the admin app).

Receiving, routing, processing and delivering are separate loops (as in mercure), so one
failing or slow does not stop the others. All state is in the database: a restart requeues
interrupted jobs, keeps pending deliveries with their attempt counts, and indexes any spool
file that a crash left without an index row. That recovery assumes the node is alone on its
data folder, so ``start`` first takes the folder's lock (:mod:`dicom_node.store.lock`) and
binds its ports, and only then changes anything.

Roles: ``serve`` runs all of them (``ROLES``); in cluster mode (``[cluster] mode``) each
can run alone, on its own host and data folder: ``receive`` (SCP, completion, routing),
``dispatch`` (deliveries), ``web`` (the admin page) and ``process`` (the workers; alone,
that is ``dicom-node worker``, :mod:`dicom_node.cluster.worker`). Then PostgreSQL holds
every state, Celery on RabbitMQ carries the jobs, and each role process keeps a heartbeat
row, runs the sweep (receive, dispatch) and may serve its own /healthz and /metrics.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import socket
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from dicom_node.config import LiveSettings, Settings
from dicom_node.dispatch.delivery import Deliverer, DeliveryThread
from dicom_node.doorbell import Doorbell
from dicom_node.process.queue import requeue_interrupted
from dicom_node.process.worker import (
    InProcessWorker,
    SettingsChannel,
    model_cache,
    worker_main,
)
from dicom_node.receive.objectstore import spool_for
from dicom_node.receive.reconcile import reconcile_incoming, reconcile_spool
from dicom_node.receive.scp import StoreSCP
from dicom_node.route.completion import CompletionThread
from dicom_node.route.waits import model_availability, route_model_status
from dicom_node.store.db import create_engine, session_factory, upgrade
from dicom_node.store.lock import DataFolderLock

log = logging.getLogger(__name__)

RECEIVE, PROCESS, DISPATCH, WEB = "receive", "process", "dispatch", "web"
ROLES = frozenset({RECEIVE, PROCESS, DISPATCH, WEB})


class Node:
    """Everything ``dicom-node serve`` runs (or some roles of it), startable and stoppable
    from tests."""

    def __init__(
        self,
        settings: Settings,
        *,
        models: Any | None = None,
        web: bool = True,
        roles: Iterable[str] = ROLES,
    ) -> None:
        # Routes and destinations edited on the admin page replace these while the node
        # runs (``LiveSettings``); completion, delivery and the workers read through it.
        self.live = LiveSettings(settings)
        self.roles = frozenset(roles)
        if not self.roles or not self.roles <= ROLES:
            raise ValueError(f"roles must be some of {sorted(ROLES)}, not {sorted(self.roles)}")
        if self.roles != ROLES and not settings.clustered:
            raise ValueError("single roles run in cluster mode only ([cluster] mode)")
        self.lock = DataFolderLock(settings.data_dir)
        # Migrated in start(), under the lock: a second node must not touch the database.
        self.engine: Engine = create_engine(settings.database_url, migrate=False)
        self.sessions = session_factory(self.engine)
        self.spool = spool_for(settings)
        self.model_available = model_availability(settings)
        self.cluster: Any = None
        if settings.clustered:
            from dicom_node.cluster.roles import ClusterRoles

            # Publishes the jobs a commit queued (completion, re-runs from the admin page),
            # and routes to models that a worker elsewhere holds.
            self.cluster = ClusterRoles(self)
            self.model_available = self.cluster.model_available
        # The hot path has no poll waits: a routed series rings the workers' doorbell, a job
        # that queued results rings the delivery's (the polls stay, as safety nets).
        self.jobs_queued = Doorbell()
        self.results_queued = Doorbell()
        self.completion = CompletionThread(
            self.sessions, self.live, self.model_available, on_queued=self.jobs_queued.ring
        )
        # A clean release from a sender that sends whole series ends them (per-sender
        # completion policy); the receiver only reports it, the route stage decides.
        self.scp = StoreSCP(
            settings,
            self.sessions,
            self.spool,
            on_released=self.completion.association_released,
        )
        self.deliverer = Deliverer(
            self.live,
            self.sessions,
            on_lane_free=self.results_queued.ring,
            # Several dispatchers claim deliveries in the database under their member name.
            claimer=self.cluster.membership.member if self.cluster is not None else "node",
        )
        self.delivery = DeliveryThread(self.deliverer, wakeup=self.results_queued)
        self._models = models
        self._web_enabled = web
        self._web: Any = None
        self._web_socket: socket.socket | None = None
        self._stop = mp.get_context("spawn").Event()
        self._workers: dict[str, mp.process.BaseProcess] = {}
        # One settings channel per worker process; guarded so that a worker spawned while
        # an edit is published gets either the old settings and the edit, or the new ones.
        self._channels: dict[str, SettingsChannel] = {}
        self._channels_lock = threading.Lock()
        self.live.subscribe(self._publish_settings)
        self._inproc: InProcessWorker | None = None
        self._supervisor: threading.Thread | None = None
        self._running = threading.Event()

    @property
    def settings(self) -> Settings:
        """The settings in force now."""
        return self.live.current

    def _publish_settings(self, settings: Settings, version: int) -> None:
        """Forward edited settings to every worker process (``LiveSettings.subscribe``)."""
        with self._channels_lock:
            for channel in self._channels.values():
                channel.publish(settings, version)
        try:
            self.jobs_queued.ring()  # idle workers take them now, not at their next poll
        except Exception:  # stopped node: the settings are in force for the next start
            log.debug("could not wake the workers after a settings edit", exc_info=True)

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        """Start everything; on failure stop what was started and re-raise.

        The order is the point: first the data folder's lock (another node there must not
        lose its partial files and running jobs to our cleanup), then the ports (a port in
        use must stop us before we changed anything), then the schema, the recovery of what
        a crash left, and only then serving.

        Raises
        ------
        StartupError
            The data folder is in use by another node, or a port cannot be bound; nothing
            in the folder or the database was changed.
        """
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self.lock.acquire()
        if RECEIVE in self.roles:
            self.scp.bind()
        if self._web_wanted():
            from dicom_node.web.server import bind_web

            self._web_socket = bind_web(self.settings)
        upgrade(self.engine)
        if self.cluster is not None:
            self.cluster.start()
        self._recover()
        if RECEIVE in self.roles:
            self._log_waiting_routes()
            self.scp.serve()
            self.completion.start()
        if DISPATCH in self.roles:
            self.delivery.start()
        self._running.set()
        if PROCESS in self.roles:
            self._start_workers()
        if self._web_socket is not None:
            self._start_web(self._web_socket)

    def _start_workers(self) -> None:
        if self.cluster is not None:
            self.cluster.start_workers()
            return
        if self.settings.workers.processes == 0 or self._models is not None:
            models = self._models if self._models is not None else model_cache(self.settings)
            self._inproc = InProcessWorker(
                self.live,
                self.sessions,
                models,
                jobs_queued=self.jobs_queued,
                results_queued=self.results_queued,
            )
            self._inproc.start()
        else:
            for i in range(self.settings.workers.processes):
                self._spawn_worker(f"w{i + 1}")
            self._supervisor = threading.Thread(
                target=self._supervise, name="supervisor", daemon=True
            )
            self._supervisor.start()

    def _recover(self) -> None:
        """Undo what a stop or crash left half done (safe only while we hold the lock).

        In cluster mode the running jobs belong to workers on other hosts: the sweep
        requeues those of members that are gone, never all of them here.
        """
        if RECEIVE in self.roles:
            reconcile_incoming(self.spool, self.sessions)  # objects stored, not indexed (S3)
            left = self.spool.clean_incoming()
            if left:
                log.warning("removed %d partial file(s) left by an interrupted receive", left)
        if self.cluster is None:
            requeued = requeue_interrupted(self.sessions)
            if requeued:
                log.warning("requeued %d job(s) interrupted by a stop or crash", requeued)
        if RECEIVE in self.roles:
            reconcile_spool(self.spool, self.sessions)

    def _log_waiting_routes(self) -> None:
        """Say at start-up which routes wait for which model weights."""
        from dicom_node.route.waits import describe_waits, route_waits
        from inference.registry import load_manifests

        for line in describe_waits(
            route_waits(self.settings, load_manifests(self.settings.models_dir))
        ):
            log.warning("%s", line)

    def _web_wanted(self) -> bool:
        """The admin page runs when this node was built with it and ``[web]`` enables it."""
        if not (self._web_enabled and self.settings.web.enabled and WEB in self.roles):
            return False
        try:
            import dicom_node.web.server  # noqa: F401
        except ImportError:  # pragma: no cover - web app not installed
            log.warning("admin web app not available")
            return False
        return True

    def _start_web(self, sock: socket.socket) -> None:
        from dicom_node.web.server import start_web

        # An upload is routed in the web request, as completion routes a series: with the
        # same weights known, and the workers woken for its jobs. The page alone (web role)
        # checks the database and storage, not a receiver.
        self._web = start_web(
            self.live,
            self.sessions,
            None,
            self.status if RECEIVE in self.roles else None,
            sock=sock,
            model_available=self.model_available,
            on_queued=self.jobs_queued.ring,
        )

    def _spawn_worker(self, name: str) -> None:
        ctx = mp.get_context("spawn")
        # No replacement while the channel is made (the live settings' lock, then the
        # channels' lock: the order of a replacement too): these settings and this version
        # belong together, and the next edit goes to this channel.
        with self.live.held() as (settings, version), self._channels_lock:
            old = self._channels.pop(name, None)
            if old is not None:
                old.close()
            channel = self._channels[name] = SettingsChannel(ctx, version)
        proc = ctx.Process(
            target=worker_main,
            args=(settings, name, self._stop, self.jobs_queued, self.results_queued, channel),
            name=f"worker-{name}",
        )
        proc.daemon = True
        proc.start()
        self._workers[name] = proc

    def _supervise(self) -> None:
        """Restart a worker that died (out of memory, a crash in a native library)."""
        while self._running.is_set():
            for name, proc in list(self._workers.items()):
                if not proc.is_alive() and self._running.is_set():
                    log.error("worker %s exited with %s; restarting", name, proc.exitcode)
                    requeue_interrupted(self.sessions, worker=name)
                    self._spawn_worker(name)
            self._stop.wait(2.0)

    @property
    def web_url(self) -> str | None:
        """Where the admin page listens, when it runs."""
        return getattr(self._web, "url", None) if self._web is not None else None

    def stop(self) -> None:
        self._running.clear()
        # Setting a multiprocessing Event takes a lock shared with the workers; a worker
        # that died holding it (killed by a signal) would block us forever, so set it from
        # a helper thread and go on after a while: the workers are then terminated below.
        setter = threading.Thread(target=self._stop.set, daemon=True)
        setter.start()
        setter.join(timeout=5)
        self.jobs_queued.ring()  # idle workers see the stop now, not after their poll
        self.scp.stop()
        self.completion.stop()
        self.delivery.stop()
        if self._inproc is not None:
            self._inproc.stop()
            self._inproc.join(timeout=30)
        for proc in self._workers.values():
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
        with self._channels_lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()
        if self.cluster is not None:
            self.cluster.stop()
        if self._web is not None:
            self._web.stop()
        if self._web_socket is not None:
            self._web_socket.close()  # bound but never served when start failed
        for thread, timeout in ((self.completion, 10), (self.delivery, 30)):
            if thread.ident is not None:  # a failed start may not have started it
                thread.join(timeout=timeout)
        self.jobs_queued.close()
        self.results_queued.close()
        self.engine.dispose()
        # Last: another node may take the folder once we no longer write to it.
        self.lock.release()

    # -- status for health checks and metrics ------------------------------------------
    def status(self) -> dict[str, Any]:
        stats = self.scp.stats
        spool_ok = _writable(self.spool.tmp)
        alive = sum(p.is_alive() for p in self._workers.values())
        alive += int(self._inproc is not None and self._inproc.is_alive())
        if self.cluster is not None:
            alive += self.cluster.workers_alive()
        return {
            "roles": sorted(self.roles),
            "scp_listening": bool(self.scp.listeners),
            "spool_writable": spool_ok,
            "workers_alive": alive,
            # Workers of a cluster run in other processes, on other hosts: the role's
            # /healthz counts them per queue; here only those this process started.
            "workers_configured": (
                max(self.settings.workers.processes, 1) if PROCESS in self.roles else 0
            ),
            "receive": {
                "instances": stats.instances,
                "bytes": stats.bytes,
                "duplicates": stats.duplicates,
                "failures": stats.failures,
                "associations": stats.associations,
                "rejected_associations": stats.rejected_associations,
            },
            "deliveries": dict(self.deliverer.counts),
            **({"cluster": self.cluster.status()} if self.cluster is not None else {}),
            # Models of enabled routes; one without weights waits (route.waits).
            "models": route_model_status(self.settings, self.model_available),
        }


def _writable(folder: Path) -> bool:
    probe = folder / ".healthz"
    try:
        probe.write_bytes(b"ok")
        probe.unlink()
        return True
    except OSError:
        return False
