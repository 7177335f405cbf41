"""Cross-study views: models, deliveries that need attention, and the audit log."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from dicom_node.config import Settings
from dicom_node.store.db import AuditEntry, Delivery, Job, Result, Series
from dicom_node.store.states import DeliveryState
from dicom_node.web.detail import delivery_info
from dicom_node.web.queries import POSITIVE_THRESHOLD
from dicom_node.web.schemas import AuditPage, AuditRow, DeliveryPage, ModelStats

# Latency statistics on the models page cover each model's most recent results: they say how
# fast the model is now, and reading them stays cheap however long the node has run.
LATENCY_WINDOW = 10_000


def total_seconds() -> Any:
    """``timings["total"]`` as a number in SQL (json_extract on SQLite, ->> on PostgreSQL)."""
    return Result.timings["total"].as_float()


def recent_latencies(session: Session, model_id: str, window: int = LATENCY_WINDOW) -> list[float]:
    """``timings["total"]`` of the model's latest ``window`` results (newest first by id)."""
    latency = total_seconds()
    recent = (
        select(latency.label("seconds"))
        .where(Result.model_id == model_id)
        .order_by(Result.id.desc())
        .limit(window)
        .subquery()
    )
    return [float(v) for v in session.scalars(select(recent.c.seconds)) if v is not None]


def p95(values: list[float]) -> float | None:
    """Nearest-rank 95th percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(0.95 * len(ordered))) - 1]


def model_stats(session: Session, settings: Settings) -> list[ModelStats]:
    """Per model: versions seen, routes using it, studies and positives, latency.

    A result is positive when its positive-class probability is at least 0.5 (the result
    table does not keep each model's own threshold). Mean and p95 latency are over the
    latest ``LATENCY_WINDOW`` results of the model.
    """
    rows = session.execute(
        select(
            Result.model_id,
            func.count(Result.id),
            func.count(func.distinct(Series.study_id)),
            func.sum(case((Result.positive_probability >= POSITIVE_THRESHOLD, 1), else_=0)),
        )
        .join(Job, Job.id == Result.job_id)
        .join(Series, Series.id == Job.series_id)
        .group_by(Result.model_id)
    ).all()
    versions: dict[str, list[str]] = defaultdict(list)
    for model_id, version in session.execute(
        select(Result.model_id, Result.model_version).distinct()
    ):
        versions[model_id].append(version)
    routes: dict[str, list[str]] = defaultdict(list)
    for route in settings.routes:
        for model in route.models:
            routes[model].append(route.name)
    stats: dict[str, ModelStats] = {}
    for model_id, results, studies, positives in rows:
        latencies = recent_latencies(session, model_id)
        stats[model_id] = ModelStats(
            model_id=model_id,
            versions=sorted(versions[model_id]),
            routes=routes.get(model_id, []),
            studies=studies,
            results=results,
            positives=int(positives or 0),
            mean_latency_seconds=sum(latencies) / len(latencies) if latencies else None,
            p95_latency_seconds=p95(latencies),
        )
    for model_id, route_names in routes.items():
        stats.setdefault(
            model_id,
            ModelStats(
                model_id=model_id,
                versions=[],
                routes=route_names,
                studies=0,
                results=0,
                positives=0,
                mean_latency_seconds=None,
                p95_latency_seconds=None,
            ),
        )
    return [stats[k] for k in sorted(stats)]


def attention_deliveries(
    session: Session,
    *,
    states: tuple[str, ...] = ("failed", "pending"),
    page: int = 1,
    page_size: int = 50,
) -> DeliveryPage:
    """Deliveries not (yet) done, failed first, then by when they are next due."""
    where = Delivery.state.in_(states)
    total = int(session.scalar(select(func.count(Delivery.id)).where(where)) or 0)
    pages = max(1, math.ceil(total / page_size))
    page = min(max(1, page), pages)
    failed_first = case((Delivery.state == DeliveryState.FAILED, 0), else_=1)
    rows = session.scalars(
        select(Delivery)
        .where(where)
        .order_by(failed_first, Delivery.next_attempt_at, Delivery.id)
        .offset((page - 1) * page_size)
        .limit(page_size)
    )
    return DeliveryPage(items=[delivery_info(d) for d in rows], total=total, page=page, pages=pages)


def audit_log(
    session: Session,
    *,
    username: str = "",
    action: str = "",
    page: int = 1,
    page_size: int = 100,
) -> AuditPage:
    """Audit entries, newest first, optionally for one user or one kind of action."""
    where = []
    if username:
        where.append(AuditEntry.username == username)
    if action:
        where.append(AuditEntry.action == action)
    total = int(session.scalar(select(func.count(AuditEntry.id)).where(*where)) or 0)
    pages = max(1, math.ceil(total / page_size))
    page = min(max(1, page), pages)
    rows = session.scalars(
        select(AuditEntry)
        .where(*where)
        .order_by(AuditEntry.time.desc(), AuditEntry.id.desc())
        .offset((page - 1) * page_size)
        .limit(page_size)
    )
    return AuditPage(
        items=[
            AuditRow(
                id=r.id,
                time=r.time,
                username=r.username,
                action=r.action,
                target=r.target,
                client_address=r.client_address,
                success=r.success,
                detail=dict(r.detail or {}),
            )
            for r in rows
        ],
        total=total,
        page=page,
        pages=pages,
    )


def audit_actions(session: Session) -> list[str]:
    """The kinds of audited actions present, for the audit page's filter."""
    return list(session.scalars(select(AuditEntry.action).distinct().order_by(AuditEntry.action)))
