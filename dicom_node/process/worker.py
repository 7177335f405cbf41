"""Worker processes: run jobs outside the C-STORE path.

TensorFlow competes with the receive threads for the GIL and both cores, so models run in
their own process with a bounded number of threads; a long job never delays the answer to
a sender.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
from collections.abc import Callable
from multiprocessing.context import SpawnContext
from typing import Any

from dicom_node.config import LiveSettings, Settings
from dicom_node.doorbell import Doorbell

log = logging.getLogger(__name__)


class SettingsChannel:
    """Carries the node's settings, as an admin edits routes or destinations, to one
    worker process, so a job started after the edit runs with it (no restart).

    The node ``publish``es every replacement (``LiveSettings.subscribe``) before it puts
    it in force itself: the settings go into a queue and their version into a shared
    number. Before each claim the worker compares the number with its own version and,
    when behind, takes what the queue holds, waiting for it if need be (the queue's
    feeder thread may not have written it yet). So a job that the node queued under new
    settings (a newly added route) never meets a worker still holding the old ones.
    """

    def __init__(self, ctx: SpawnContext, version: int) -> None:
        """``version`` is that of the settings the worker is spawned with."""
        self._queue: Any = ctx.Queue()
        self._version: Any = ctx.Value("q", version)
        # Travels with the channel to the worker: the version of its spawn-time settings.
        # Not the shared number read at the worker's start: edits published while the
        # worker was starting (loading its models) would be taken as already applied.
        self.initial_version = version

    @property
    def version(self) -> int:
        return int(self._version.value)

    def publish(self, settings: Settings, version: int) -> None:
        """In the node: send ``settings`` as ``version`` (never blocks: a feeder thread
        writes the queue)."""
        self._queue.put((version, settings))
        self._version.value = version

    def refresh(self, live: LiveSettings, timeout: float = 10.0) -> None:
        """In the worker: catch up with the node's latest published settings."""
        target = self.version
        while live.version < target:
            try:
                version, settings = self._queue.get(timeout=timeout)
            except queue.Empty:  # the node keeps its own copy; try again before next claim
                log.warning("settings version %d announced but not received", target)
                return
            if version > live.version:
                live.replace(settings, version=version)
                log.info("settings version %d in force (routes or destinations edited)", version)

    def close(self) -> None:
        """In the node, when the worker is gone: do not wait for unread items at exit."""
        self._queue.cancel_join_thread()
        self._queue.close()


def model_cache(settings: Settings) -> Any:
    """The models of ``settings.models_dir``, each loaded once per process on first use."""
    from inference.pixels import PixelLimits
    from inference.registry import ModelCache, load_manifests

    return ModelCache(
        load_manifests(settings.models_dir),
        threads=settings.workers.inference_threads,
        inter_op_threads=1,
        limits=PixelLimits(
            max_frame_pixels=settings.workers.max_frame_pixels,
            max_frames=settings.workers.max_frames,
        ),
    )


def _die_with_parent() -> None:
    """Ask Linux to kill this worker when the serving process dies (PR_SET_PDEATHSIG).

    After a SIGKILL of the node an orphaned worker would otherwise finish its job while the
    restarted node runs the same job again; outputs are idempotent, but work is wasted.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent-pid check below still works
        pass


def _preload(models: Any, settings: Settings) -> None:
    """Load and warm up the models of enabled routes now, so the first series does not
    wait for TensorFlow to start (the Xception model takes seconds)."""
    wanted = {m for r in settings.routes if r.enabled for m in r.models}
    for model_id in sorted(wanted):
        manifest = models.manifests.get(model_id)
        if manifest is None or not manifest.weights_available():
            continue
        try:
            models.get(model_id)
            log.info("model %s %s loaded", model_id, manifest.version)
        except Exception:  # the job will fail with the reason; keep the worker alive
            log.exception("model %s could not be loaded", model_id)


def run_jobs(
    runner: Any,
    sessions: Any,
    name: str,
    stop: Any,
    poll_interval: float,
    keep_going: Callable[[], bool] = lambda: True,
    jobs_queued: Doorbell | None = None,
    before_claim: Callable[[], None] | None = None,
) -> None:
    """Claim and run jobs until ``stop`` (a threading or multiprocessing Event) is set.

    The one job loop of both the worker processes and the in-process worker. With nothing
    to claim it waits for ``jobs_queued`` (rung when completion queues a job, and when the
    node stops), at most ``poll_interval`` seconds: the poll is the safety net for jobs
    queued without a ring (requeued at start-up, re-runs from the admin page).
    ``before_claim`` runs before each claim (a worker process takes edited settings).
    """
    from dicom_node.process import queue as job_queue

    while not stop.is_set() and keep_going():
        try:
            if before_claim is not None:
                before_claim()
            job_id = job_queue.claim_next(sessions, name)
        except Exception:
            log.exception("cannot claim a job; retrying")
            job_id = None
        if job_id is None:
            if jobs_queued is not None:
                jobs_queued.wait(poll_interval)
            else:
                stop.wait(poll_interval)
            continue
        log.info("job %d started", job_id)
        runner.run(job_id)


def worker_main(
    settings: Settings,
    name: str,
    stop: Any,
    jobs_queued: Doorbell | None = None,
    results_queued: Doorbell | None = None,
    channel: SettingsChannel | None = None,
) -> None:
    """Entry point of a worker process (multiprocessing, spawn start method).

    ``jobs_queued`` wakes this worker when a job is queued; the worker rings
    ``results_queued`` when a job has queued deliveries, to wake the delivery thread.
    ``channel`` brings the settings an admin edits while the worker runs.
    """
    from dicom_node.logs import setup_logging
    from dicom_node.process.runner import JobRunner
    from dicom_node.receive.pynetdicom_ext import configure_pydicom
    from dicom_node.store.db import create_engine, session_factory

    setup_logging(f"worker-{name}")
    # A spawned process starts with pydicom's defaults: read the received files with the
    # settings the receiver and the tests use (pydicom's settings only, not pynetdicom's
    # receive path, which a worker does not run).
    configure_pydicom()
    _die_with_parent()
    # The parent decides when we stop: Ctrl-C, `timeout` or systemd signal the whole process
    # group, and a worker killed by that signal could die holding the stop event's lock.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threads = str(settings.workers.inference_threads)
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", threads)
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", threads)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    engine = create_engine(settings.database_url, migrate=False)
    sessions = session_factory(engine)
    models = model_cache(settings)
    _preload(models, settings)
    live = LiveSettings(settings, version=channel.initial_version if channel is not None else 0)
    runner = JobRunner(
        live,
        sessions,
        models,
        on_deliveries=results_queued.ring if results_queued is not None else None,
    )
    log.info("worker %s started (pid %d)", name, os.getpid())
    parent = os.getppid()

    def parent_alive() -> bool:
        if os.getppid() == parent:
            return True
        # The serving process was killed (SIGKILL leaves no chance to stop us): exit, the
        # next start requeues whatever we were doing.
        log.warning("worker %s: parent process gone, exiting", name)
        return False

    run_jobs(
        runner,
        sessions,
        name,
        stop,
        settings.workers.poll_interval,
        parent_alive,
        jobs_queued=jobs_queued,
        before_claim=(lambda: channel.refresh(live)) if channel is not None else None,
    )
    engine.dispose()
    log.info("worker %s stopped", name)


class InProcessWorker(threading.Thread):
    """Runs jobs in a thread of the current process (``workers.processes = 0``; tests)."""

    def __init__(
        self,
        settings: Settings | LiveSettings,
        sessions: Any,
        models: Any,
        name: str = "inproc",
        *,
        jobs_queued: Doorbell | None = None,
        results_queued: Doorbell | None = None,
    ) -> None:
        super().__init__(name=f"worker-{name}", daemon=True)
        from dicom_node.process.runner import JobRunner

        self.live = LiveSettings.of(settings)
        self.sessions = sessions
        self.runner = JobRunner(
            self.live,
            sessions,
            models,
            on_deliveries=results_queued.ring if results_queued is not None else None,
        )
        self.worker_name = name
        self.stopped = threading.Event()
        self.jobs_queued = jobs_queued

    def run(self) -> None:
        run_jobs(
            self.runner,
            self.sessions,
            self.worker_name,
            self.stopped,
            self.live.current.workers.poll_interval,
            jobs_queued=self.jobs_queued,
        )

    def stop(self) -> None:
        self.stopped.set()
        if self.jobs_queued is not None:
            self.jobs_queued.ring()
