"""``dicom-node status``: counts per state, the latest results and the most recent failures,
from the database.

It only reads: a configuration that points at no database (a mistyped data folder, a node
that never ran) is said so in one line, instead of creating an empty database and
reporting zero of everything.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import func, inspect, make_url, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from dicom_node.config import OperatorError, Settings
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


def open_existing(settings: Settings) -> Engine:
    """The node's database, without creating or migrating it.

    Raises
    ------
    OperatorError
        No SQLite file at the configured place, a server that cannot be reached, or a
        database without the node's tables.
    """
    url = make_url(settings.database_url)
    shown = url.render_as_string(hide_password=True)
    change = (
        "point DICOM_NODE__NODE__DATA_DIR or --config at the node's data folder (or "
        "DICOM_NODE__STORAGE__DATABASE_URL at its database), or start the node first "
        "with `dicom-node serve`"
    )
    if url.get_backend_name() == "sqlite":
        path = Path(url.database or "")
        if not path.is_file():
            raise OperatorError(
                f"no database at {path}: no node has run with this configuration; {change}"
            )
    engine = create_engine(settings.database_url, migrate=False)
    try:
        if not inspect(engine).has_table(Study.__tablename__):
            raise OperatorError(f"{shown} has no dicom-node tables; {change}")
    except SQLAlchemyError as exc:
        engine.dispose()
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise OperatorError(f"cannot open the database {shown}: {reason}") from None
    return engine


def print_status(settings: Settings, *, failures: int = 10, results: int = 10) -> int:
    engine = open_existing(settings)
    try:
        return _print_counts(engine, settings, failures, results)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise OperatorError(
            f"cannot read the database ({reason}); if the node was upgraded, start it once "
            "with `dicom-node serve` to migrate it"
        ) from None
    finally:
        engine.dispose()


def _print_counts(engine: Engine, settings: Settings, failures: int, results: int) -> int:
    sessions = session_factory(engine)
    with sessions() as session:
        studies = session.scalar(select(func.count(Study.id))) or 0
        instances = session.scalar(select(func.count(Instance.id))) or 0
        print(f"database: {make_url(settings.database_url).render_as_string(hide_password=True)}")
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
