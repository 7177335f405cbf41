"""``dicom-node status``: counts per state, the latest results and the most recent failures,
from the database."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select

from dicom_node.config import Settings
from dicom_node.store.db import (
    Delivery,
    Instance,
    Job,
    Result,
    Series,
    Study,
    create_engine,
    session_factory,
)
from dicom_node.store.states import DeliveryState, JobState
from dicom_node.wording import OUT_OF_SCOPE, call_text


def print_status(settings: Settings, *, failures: int = 10, results: int = 10) -> int:
    engine = create_engine(settings.database_url)
    sessions = session_factory(engine)
    with sessions() as session:
        studies = session.scalar(select(func.count(Study.id))) or 0
        instances = session.scalar(select(func.count(Instance.id))) or 0
        print(f"database: {settings.database_url.split('@')[-1]}")
        print(f"studies: {studies}   instances: {instances}")
        for label, column in (
            ("series", Series.state),
            ("jobs", Job.state),
            ("deliveries", Delivery.state),
        ):
            rows = session.execute(select(column, func.count()).group_by(column)).all()
            counts = ", ".join(f"{state} {n}" for state, n in sorted(rows)) or "none"
            print(f"{label}: {counts}")
        recent = session.execute(
            select(
                Result.id,
                Result.model_id,
                Result.model_version,
                Result.predicted_class,
                Result.probabilities,
                Result.out_of_scope,
                Series.series_uid,
            )
            .join(Job, Job.id == Result.job_id)
            .join(Series, Series.id == Job.series_id)
            .order_by(Result.id.desc())
            .limit(results)
        ).all()
        if recent:
            print("last results:")
            for rid, model_id, version, cls, probabilities, outside, series_uid in recent:
                own = probabilities.get(cls) if isinstance(probabilities, dict) else None
                flag = f" [{OUT_OF_SCOPE}]" if outside else ""
                print(
                    f"  result {rid} {model_id} {version} series {series_uid}: "
                    f"{call_text(cls, own if isinstance(own, int | float) else None)}{flag}"
                )
        failed_jobs = session.execute(
            select(Job.id, Job.route_name, Job.finished_at, Job.error, Series.series_uid)
            .join(Series, Series.id == Job.series_id)
            .where(Job.state == JobState.FAILED)
            .order_by(Job.finished_at.desc())
            .limit(failures)
        ).all()
        if failed_jobs:
            print("last failed jobs:")
            for job_id, route, when, error, series_uid in failed_jobs:
                print(f"  job {job_id} [{route}] {when:%Y-%m-%d %H:%M:%S} series {series_uid}")
                print(f"    {error.splitlines()[0] if error else ''}")
        failed_deliveries = session.execute(
            select(
                Delivery.id,
                Delivery.destination,
                Delivery.sop_instance_uid,
                Delivery.attempts,
                Delivery.last_error,
            )
            .where(Delivery.state == DeliveryState.FAILED)
            .order_by(Delivery.id.desc())
            .limit(failures)
        ).all()
        if failed_deliveries:
            print("last failed deliveries:")
            for did, dest, uid, attempts, error in failed_deliveries:
                print(f"  delivery {did} to {dest}: {uid} after {attempts} attempt(s): {error}")
    engine.dispose()
    return 0


def register(subparsers: Any) -> dict[str, Callable[[argparse.Namespace, Settings], int]]:
    """Add ``status``; returns ``{"status": run}``."""
    p = subparsers.add_parser("status", help="counts per state and the last failures")
    p.add_argument("--failures", type=int, default=10, help="how many recent failures to show")
    p.add_argument(
        "--results",
        type=int,
        default=10,
        help="how many recent results to show (class, then P(class))",
    )
    return {"status": run}


def run(args: argparse.Namespace, settings: Settings) -> int:
    return print_status(settings, failures=args.failures, results=args.results)
