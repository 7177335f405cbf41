"""The operator's console: what the queue, routes, destinations, models and refused pages
(and their API) show, and the audited actions they offer.

These pages show UIDs, AE titles, addresses and states, never patient data, so viewing
them is not audited; every action is, refused or not. The actions go through the owners
of the rows (``process.queue`` for jobs, ``dispatch.delivery`` for a C-ECHO with the
delivery's own settings); nothing here writes a Job or Delivery row itself.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from fastapi import Request
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from dicom_node.config import Settings
from dicom_node.dispatch import delivery
from dicom_node.process import queue
from dicom_node.route.waits import route_waits
from dicom_node.store.db import Job, Refusal, Series, Study
from dicom_node.store.states import JobState, RefusalKind
from dicom_node.web.audit import audit
from dicom_node.web.context import get_context
from dicom_node.web.schemas import (
    DestinationView,
    EchoAnswer,
    ModelView,
    PauseInfo,
    QueuedJob,
    QueuePage,
    RefusalPage,
    RefusalRow,
    RouteView,
)

# What the queue page lists: "attention" is what an operator watches (waiting, running,
# failed); the others are one state each, or everything.
QueueView = Literal["attention", "queued", "running", "failed", "cancelled", "done", "all"]
QUEUE_VIEWS: dict[str, tuple[JobState, ...]] = {
    "attention": (JobState.RUNNING, JobState.QUEUED, JobState.FAILED),
    "queued": (JobState.QUEUED,),
    "running": (JobState.RUNNING,),
    "failed": (JobState.FAILED,),
    "cancelled": (JobState.CANCELLED,),
    "done": (JobState.DONE,),
    "all": tuple(JobState),
}
_STATE_RANK = {
    JobState.RUNNING: 0,
    JobState.QUEUED: 1,
    JobState.FAILED: 2,
    JobState.CANCELLED: 3,
    JobState.DONE: 4,
}
RefusalView = Literal["all", "connection", "association", "store"]


class ConsoleError(ValueError):
    """An action that does not apply (unknown job or destination, wrong state)."""


def _pages(total: int, page: int, page_size: int) -> tuple[int, int]:
    pages = max(1, math.ceil(total / page_size))
    return min(max(1, page), pages), pages


# -- queue -------------------------------------------------------------------------------------


def queue_page(session: Session, *, view: str, page: int, page_size: int) -> QueuePage:
    """Jobs of a view: running first, then queued in the order workers take them (oldest
    first), then failed and the rest newest first."""
    states = QUEUE_VIEWS.get(view, QUEUE_VIEWS["attention"])
    counts = {str(state): 0 for state in JobState}
    for state, count in session.execute(select(Job.state, func.count(Job.id)).group_by(Job.state)):
        counts[str(state)] = int(count)
    total = sum(counts[str(s)] for s in states)
    page, pages = _pages(total, page, page_size)
    rank = case(*((Job.state == s, r) for s, r in _STATE_RANK.items()), else_=9)
    queue_order = case((Job.state == JobState.QUEUED, Job.id), else_=-Job.id)
    rows = session.execute(
        select(Job, Series.series_uid, Series.modality, Series.body_part, Study.study_uid)
        .join(Series, Series.id == Job.series_id)
        .join(Study, Study.id == Series.study_id)
        .where(Job.state.in_(states))
        .order_by(rank, queue_order)
        .offset((page - 1) * page_size)
        .limit(page_size)
    ).all()
    pause = queue.paused(session)
    return QueuePage(
        paused=PauseInfo(by=pause.by, since=pause.since) if pause else None,
        counts=counts,
        items=[
            QueuedJob(
                id=job.id,
                state=str(job.state),
                study_uid=study_uid,
                series_uid=series_uid,
                modality=modality,
                body_part=body_part,
                route_name=job.route_name,
                generation=job.generation,
                attempts=job.attempts,
                worker=job.worker,
                error=job.error,
                created_at=job.created_at,
                started_at=job.started_at,
                finished_at=job.finished_at,
            )
            for job, series_uid, modality, body_part, study_uid in rows
        ],
        total=total,
        page=page,
        pages=pages,
    )


def job_action(
    db: Session,
    request: Request,
    username: str,
    job_id: int,
    action: Literal["retry", "cancel"],
    *,
    via: str,
) -> None:
    """Retry or cancel a job through ``process.queue`` and audit it, refused or not.

    Raises
    ------
    ConsoleError
        Unknown job, or a job in a state the action does not apply to.
    """
    sessions = get_context(request).sessions
    try:
        if action == "retry":
            queue.retry(sessions, job_id, by=username)
        else:
            queue.cancel(sessions, job_id, by=username)
    except queue.QueueError as exc:
        audit(
            db,
            request,
            username,
            f"{action}_job",
            str(job_id),
            success=False,
            detail={"error": str(exc), "via": via},
        )
        raise ConsoleError(str(exc)) from exc
    audit(db, request, username, f"{action}_job", str(job_id), detail={"via": via})


def set_paused(db: Session, request: Request, username: str, paused: bool, *, via: str) -> bool:
    """Pause or resume processing and audit it; returns whether anything changed."""
    sessions = get_context(request).sessions
    changed = queue.pause(sessions, username) if paused else queue.resume(sessions)
    audit(
        db,
        request,
        username,
        "pause_processing" if paused else "resume_processing",
        detail={"changed": changed, "via": via},
    )
    return changed


# -- refusals ----------------------------------------------------------------------------------


def refusal_page(session: Session, *, kind: str, page: int, page_size: int) -> RefusalPage:
    """Refused connections, associations and C-STOREs, newest first."""
    where = [Refusal.kind == RefusalKind(kind)] if kind in set(RefusalKind) else []
    total = int(session.scalar(select(func.count(Refusal.id)).where(*where)) or 0)
    page, pages = _pages(total, page, page_size)
    rows = session.scalars(
        select(Refusal)
        .where(*where)
        .order_by(Refusal.id.desc())
        .offset((page - 1) * page_size)
        .limit(page_size)
    )
    return RefusalPage(
        items=[
            RefusalRow(
                id=r.id,
                time=r.time,
                kind=str(r.kind),
                calling_ae=r.calling_ae,
                called_ae=r.called_ae,
                address=r.address,
                status=r.status,
                meaning=r.meaning,
                reason=r.reason,
                sop_instance_uid=r.sop_instance_uid,
            )
            for r in rows
        ],
        total=total,
        page=page,
        pages=pages,
    )


# -- models and routes -------------------------------------------------------------------------


def manifests(settings: Settings) -> tuple[dict[str, Any], dict[str, str]]:
    """The model manifests of ``models_dir``, each read on its own: one broken manifest is
    shown with its error instead of hiding the others. Returns (manifests, errors)."""
    from inference.manifest import MANIFEST_NAME, load_manifest

    found: dict[str, Any] = {}
    errors: dict[str, str] = {}
    folder = settings.models_dir
    if not folder.is_dir():
        return found, errors
    for path in sorted(folder.glob(f"*/{MANIFEST_NAME}")):
        try:
            manifest = load_manifest(path)
        except Exception as exc:  # shown on the page, the node said so at start-up too
            errors[path.parent.name] = str(exc)
            continue
        found[manifest.id] = manifest
    return found, errors


def _routes_by_model(settings: Settings) -> dict[str, list[str]]:
    routes: dict[str, list[str]] = {}
    for route in settings.routes:
        for model_id in route.models:
            routes.setdefault(model_id, []).append(
                route.name if route.enabled else f"{route.name} (disabled)"
            )
    return routes


def model_views(settings: Settings) -> list[ModelView]:
    """Every model package: manifest facts, weights present or why they are missing."""
    found, errors = manifests(settings)
    routes = _routes_by_model(settings)
    views = []
    for model_id, manifest in found.items():
        spec = manifest.spec
        reason = manifest.missing_weights_reason()
        views.append(
            ModelView(
                model_id=model_id,
                name=spec.name,
                version=manifest.version,
                description=spec.description,
                intended_use=spec.intended_use,
                weights_format=spec.weights.format,
                weights_present=reason is None,
                missing_reason=reason or "",
                routes=routes.get(model_id, []),
            )
        )
    for model_id, error in errors.items():
        views.append(
            ModelView(
                model_id=model_id,
                name="",
                version="",
                description="",
                intended_use="",
                weights_format="",
                weights_present=False,
                missing_reason="",
                routes=routes.get(model_id, []),
                error=error,
            )
        )
    return sorted(views, key=lambda v: v.model_id)


def route_views(settings: Settings) -> list[RouteView]:
    """Routes in evaluation order, each active, disabled, or waiting for model weights."""
    found, errors = manifests(settings)
    waits: dict[str, list[str]] = {}
    for route_name, model_id, reason in route_waits(settings, found):
        waits.setdefault(route_name, []).append(f"{model_id}: {errors.get(model_id, reason)}")
    views = []
    for position, route in enumerate(settings.routes, start=1):
        waiting = waits.get(route.name, [])
        status = "disabled" if not route.enabled else "waiting" if waiting else "active"
        views.append(
            RouteView(
                position=position,
                name=route.name,
                enabled=route.enabled,
                status=status,
                waiting=waiting,
                match=dict(route.match),
                exclude=dict(route.exclude),
                models=list(route.models),
                destinations=list(route.destinations),
                forward=route.forward,
                pdf=route.pdf,
                key_slices=route.key_slices,
                continue_=route.continue_,
            )
        )
    return views


# -- destinations ------------------------------------------------------------------------------


def destination_views(session: Session, settings: Settings) -> list[DestinationView]:
    """Configured destinations (then any that still have deliveries), with their counts,
    last success and last error."""
    used_by: dict[str, list[str]] = {}
    for route in settings.routes:
        for name in route.destinations:
            used_by.setdefault(name, []).append(route.name)
    configured = {d.name: d for d in settings.destinations}
    views = []
    for summary in delivery.destination_summaries(session, list(configured)):
        dest = configured.get(summary.name)
        views.append(
            DestinationView(
                name=summary.name,
                ae_title=dest.ae_title if dest else "",
                host=dest.host if dest else "",
                port=dest.port if dest else 0,
                tls=dest is not None and dest.tls is not None,
                enabled=dest.enabled if dest else False,
                configured=dest is not None,
                concurrency=dest.concurrency if dest else None,
                timeout=dest.timeout if dest else None,
                max_attempts=dest.max_attempts if dest else None,
                sr_class=dest.sr_class if dest else "",
                routes=used_by.get(summary.name, []),
                pending=summary.pending,
                failed=summary.failed,
                last_success_at=summary.last_success_at,
                last_error_at=summary.last_error_at,
                last_status=summary.last_status,
                last_error=summary.last_error,
            )
        )
    return views


def echo_destination(
    db: Session, request: Request, username: str, name: str, *, via: str
) -> EchoAnswer:
    """C-ECHO a configured destination with the node's AE title and audit the outcome.

    Raises
    ------
    ConsoleError
        The destination is not configured.
    """
    settings = get_context(request).settings
    try:
        dest = settings.destination(name)
    except KeyError:
        audit(
            db,
            request,
            username,
            "echo_destination",
            name[:64],
            success=False,
            detail={"error": "not configured", "via": via},
        )
        raise ConsoleError(f"destination {name!r} is not configured") from None
    result = delivery.echo(dest, settings.node.ae_title)
    audit(
        db,
        request,
        username,
        "echo_destination",
        name,
        success=result.ok,
        detail={"message": result.message, "via": via},
    )
    return EchoAnswer(
        destination=name, ok=result.ok, message=result.message, seconds=result.seconds
    )
