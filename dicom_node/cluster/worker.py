"""``dicom-node worker --models ID...``: a Celery worker that holds some models, warm.

It consumes only the queues of its models (:func:`~dicom_node.cluster.queues.worker_queues`),
one task at a time (a pool of one thread in this process, where the models stay loaded; one
inference thread; prefetch 1). A task names a job; the job is claimed in the database
(``process.queue.claim_job``) and run by the same :class:`~dicom_node.process.runner.JobRunner`
as in the embedded mode. A worker whose models cannot be loaded refuses to start, in one line.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from dicom_node.cluster import members
from dicom_node.cluster.broker import TASK_NAME, DeliveryBell, make_app
from dicom_node.cluster.queues import worker_queues
from dicom_node.config import Settings, StartupError
from dicom_node.process import queue
from dicom_node.process.queue import Claim

log = logging.getLogger(__name__)

# After an unexpected error (the database went away mid-job) the task goes back to its
# queue after this pause, so a worker does not spin on it.
_REJECT_PAUSE = 2.0


def check_models(settings: Settings, model_ids: Sequence[str]) -> dict[str, Any]:
    """The manifests of ``model_ids``; one line naming the problem when one cannot serve.

    Raises
    ------
    StartupError
        Not in cluster mode, no model named, an unknown model, or one without weights.
    """
    from inference.registry import load_manifests

    if not settings.clustered:
        raise StartupError(
            "worker: needs cluster.mode = 'cluster' (the embedded node runs its workers "
            "inside 'dicom-node serve')"
        )
    if not model_ids:
        raise StartupError("worker: name the models this host holds with --models ID...")
    manifests = load_manifests(settings.models_dir)
    chosen = {}
    for model_id in model_ids:
        manifest = manifests.get(model_id)
        if manifest is None:
            raise StartupError(
                f"worker: unknown model {model_id!r}; found in {settings.models_dir}: "
                f"{', '.join(sorted(manifests)) or 'none'}"
            )
        reason = manifest.missing_weights_reason()
        if reason is not None:
            raise StartupError(
                f"worker: model {model_id} has no weights on this host ({reason}); "
                "import or train them, or start this worker without it"
            )
        chosen[model_id] = manifest
    return chosen


def job_task(
    settings: Settings,
    sessions: sessionmaker[Session],
    runner: Any,
    worker: str,
) -> Callable[[int], str]:
    """The body of the task: claim the job, run it, say what happened.

    A job running on a member that still sends heartbeats is waited for, up to the member
    timeout: a redelivered task after a SIGKILL arrives before the dead worker's heartbeat
    is stale, and taking the job over then spares the sweep's round trip. A task whose
    job has ended, or is still held by a live worker after the wait, does nothing.
    """
    patience = settings.cluster.member_timeout + 2 * settings.cluster.heartbeat_seconds

    def run(job_id: int) -> str:
        deadline = time.monotonic() + patience
        while True:
            claim = queue.claim_job(
                sessions, job_id, worker, fresh_after=members.fresh_after(settings)
            )
            if claim is not Claim.BUSY or time.monotonic() > deadline:
                break
            time.sleep(min(0.5, settings.cluster.heartbeat_seconds))
        if claim is Claim.PAUSED:
            log.info("job %d: processing is paused; left queued until resumed", job_id)
            return claim.value
        if claim not in (Claim.CLAIMED, Claim.TAKEN_OVER):
            log.info("job %d: %s, nothing to do", job_id, claim.value)
            return claim.value
        log.info("job %d %s by %s", job_id, claim.value, worker)
        try:
            runner.run(job_id, worker=worker)
        except Exception:
            log.exception("job %d broke off; giving it back to its queue", job_id)
            try:
                queue.release(sessions, job_id, worker, "run broke off: given back")
            except Exception:  # the database is away: the message comes back to us
                log.warning("job %d could not be released", job_id)
            from celery.exceptions import Reject

            time.sleep(_REJECT_PAUSE)
            raise Reject("job broke off", requeue=True) from None
        return claim.value

    return run


def run_worker(settings: Settings, model_ids: Sequence[str], *, name: str | None = None) -> int:
    """Load the models, join the cluster and consume their queues until SIGTERM/SIGINT.

    Raises
    ------
    StartupError
        The models cannot serve here (see :func:`check_models`), or cannot be loaded.
    """
    from dicom_node.cluster.health import RoleHealthServer
    from dicom_node.process.runner import JobRunner
    from dicom_node.process.worker import model_cache
    from dicom_node.receive.objectstore import storage_for
    from dicom_node.receive.pynetdicom_ext import configure_pydicom
    from dicom_node.store.db import create_engine, session_factory, upgrade
    from inference.registry import ModelLoadError

    check_models(settings, model_ids)
    configure_pydicom()
    threads = str(settings.workers.inference_threads)
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", threads)
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", threads)
    engine = create_engine(settings.database_url, migrate=False)
    sessions = session_factory(engine)
    upgrade(engine)
    storage = storage_for(settings)
    if storage.objects is not None:
        try:
            storage.objects.ensure_bucket()
        except OSError as exc:
            raise StartupError(f"worker: storage.s3: {exc}") from exc
    models = model_cache(settings)
    for model_id in model_ids:
        started = time.monotonic()
        try:
            models.get(model_id)
        except (ModelLoadError, OSError, ValueError) as exc:
            raise StartupError(f"worker: model {model_id} cannot be loaded: {exc}") from exc
        log.info("model %s loaded in %.1f s", model_id, time.monotonic() - started)
    queues = worker_queues(settings, model_ids)
    membership = members.Membership(
        sessions, settings, "worker", queues=queues, models=list(model_ids), name=name
    )
    app = make_app(settings, queues)
    # A job that queued deliveries wakes a dispatcher on whatever host it runs.
    bell = DeliveryBell(settings, app, membership.member)
    runner = JobRunner(settings, sessions, models, storage=storage, on_deliveries=bell.ring)
    body = job_task(settings, sessions, runner, membership.member)

    @app.task(name=TASK_NAME)
    def run_job(job_id: int) -> str:
        return body(int(job_id))

    membership.join_cluster()
    bell.start()
    health = None
    if settings.cluster.health_port:
        health = RoleHealthServer(
            settings, "worker", sessions, lambda: _status(membership, model_ids), app=app
        )
        health.start()
    log.info("worker %s consumes %s", membership.member, ", ".join(queues))
    print(
        f"dicom-node worker {membership.member}: models {', '.join(model_ids)}; "
        f"queues {', '.join(queues)}. NOT FOR DIAGNOSTIC USE. Ctrl-C stops.",
        flush=True,
    )
    try:
        worker = app.Worker(
            hostname=membership.member.replace(":", "-"),
            queues=queues,
            # One pool thread in this process: the models stay loaded here. Not the solo
            # pool: with late acks and prefetch 1 it fetched the next task seconds late
            # (200 queued no-op tasks drained in 60 s; with one thread, in 0.2 s).
            pool_cls="threads",
            concurrency=1,
            loglevel=os.environ.get("DICOM_NODE_LOG_LEVEL", "INFO"),
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            quiet=True,
            optimization="fair",
        )
        worker.start()
        code = int(getattr(worker, "exitcode", 0) or 0)
    finally:
        bell.stop()
        if health is not None:
            health.stop()
        membership.leave()
        engine.dispose()
    return code


def _status(membership: members.Membership, model_ids: Sequence[str]) -> dict[str, Any]:
    return {
        "member": membership.member,
        "heartbeat_ok": membership.healthy,
        "models": {m: {"ok": True, "loaded": True} for m in model_ids},
    }


def worker_process_main(settings: Settings, model_ids: Sequence[str], name: str) -> None:
    """Entry of a cluster worker spawned by ``serve`` in cluster mode."""
    from dicom_node.logs import setup_logging
    from dicom_node.process.worker import _die_with_parent

    setup_logging(f"worker-{name}")
    _die_with_parent()  # a SIGKILLed serve leaves no worker behind
    try:
        run_worker(settings, model_ids)
    except StartupError as exc:
        log.error("%s", exc)
        raise SystemExit(2) from None
