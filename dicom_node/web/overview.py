"""Cross-study views: models, deliveries that need attention, and the audit log."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from dicom_node.config import Settings
from dicom_node.db import AuditEntry, Delivery, Job, Result, Series
from dicom_node.web.detail import delivery_info
from dicom_node.web.queries import POSITIVE_THRESHOLD
from dicom_node.web.schemas import AuditPage, AuditRow, DeliveryPage, ModelStats


def total_seconds() -> Any:
    """``timings["total"]`` as a number in SQL (json_extract on SQLite, ->> on PostgreSQL)."""
    return Result.timings["total"].as_float()


def _p95(session: Session, model_id: str, count: int) -> float | None:
    """Nearest-rank 95th percentile, computed in the database (no rows are fetched)."""
    if count == 0:
        return None
    rank = max(1, math.ceil(0.95 * count))
    latency = total_seconds()
    value = session.scalar(
        select(latency)
        .where(Result.model_id == model_id, latency.is_not(None))
        .order_by(latency)
        .offset(rank - 1)
        .limit(1)
    )
    return None if value is None else float(value)


def model_stats(session: Session, settings: Settings) -> list[ModelStats]:
    """Per model: versions seen, routes using it, studies and positives, latency.

    A result is positive when its positive-class probability is at least 0.5 (the result
    table does not keep each model's own threshold).
    """
    latency = total_seconds()
    rows = session.execute(
        select(
            Result.model_id,
            func.count(Result.id),
            func.count(func.distinct(Series.study_id)),
            func.sum(case((Result.positive_probability >= POSITIVE_THRESHOLD, 1), else_=0)),
            func.avg(latency),
            func.count(latency),
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
    stats = {
        model_id: ModelStats(
            model_id=model_id,
            versions=sorted(versions[model_id]),
            routes=routes.get(model_id, []),
            studies=studies,
            results=results,
            positives=int(positives or 0),
            mean_latency_seconds=None if mean is None else float(mean),
            p95_latency_seconds=_p95(session, model_id, int(timed)),
        )
        for model_id, results, studies, positives, mean, timed in rows
    }
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
    failed_first = case((Delivery.state == "failed", 0), else_=1)
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
