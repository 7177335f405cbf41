"""Series completion: a series is complete after a quiet period, then it is routed.

DICOM has no "series complete" message, so, like Orthanc's StableAge and mercure, we wait
until no instance has arrived for ``completion.quiet_seconds``.

Late instances (documented rule): with ``late_instances = "rerun"`` an instance that arrives
after its series was routed reopens the series (``index.py`` bumps ``Series.generation``);
after a new quiet period the series is routed again and a new job runs on all instances. The
new results get new SOP Instance UIDs, keep the result series, and the SR names its
predecessor, so the PACS shows the newest version and history keeps both. With
``late_instances = "ignore"`` the instance is stored and indexed and nothing is re-run.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import Settings
from dicom_node.process import queue
from dicom_node.route.rules import RouteDecision, evaluate, tags_for
from dicom_node.store import history
from dicom_node.store.db import Instance, Series, Study, utcnow
from dicom_node.store.states import SERIES_OUTCOME_EVENTS, EventKind, SeriesState

log = logging.getLogger(__name__)


def _first_instance(session: Session, series_id: int) -> Instance | None:
    return session.scalar(
        select(Instance)
        .where(Instance.series_id == series_id)
        .order_by(Instance.instance_number.is_(None), Instance.instance_number, Instance.id)
        .limit(1)
    )


def route_series(
    session: Session,
    series: Series,
    settings: Settings,
    model_available: Callable[[str], bool],
) -> RouteDecision:
    """Decide the route of a complete series and queue its jobs (same transaction)."""
    first = _first_instance(session, series.id)
    study_uid = session.scalar(select(Study.study_uid).where(Study.id == series.study_id)) or ""
    if first is None:
        decision = RouteDecision((), ("series has no instances",))
    else:
        ds = dcmread(Path(first.path), stop_before_pixels=True)
        decision = evaluate(
            settings.routes, tags_for(ds, series.calling_ae), model_available=model_available
        )
    series.route_reason = "\n".join(decision.reasons)
    if decision.own_object:
        series.state = SeriesState.IGNORED
    elif not decision.routed:
        series.state = SeriesState.UNROUTED
    else:
        series.state = SeriesState.ROUTED
        series.route_name = ",".join(r.name for r in decision.routes)
    history.record(
        session,
        SERIES_OUTCOME_EVENTS[series.state],
        study_uid=study_uid,
        series_uid=series.series_uid,
        generation=series.generation,
        reasons=list(decision.reasons),
    )
    for route in decision.routes:
        queue.enqueue(session, series, route.name, study_uid=study_uid)
    return decision


def complete_due_series(
    sessions: sessionmaker[Session],
    settings: Settings,
    *,
    now: dt.datetime | None = None,
    model_available: Callable[[str], bool] = lambda _m: True,
) -> int:
    """Complete and route every series that has been quiet long enough; returns how many."""
    now = now or utcnow()
    cutoff = now - dt.timedelta(seconds=settings.completion.quiet_seconds)
    done = 0
    with sessions() as session:
        due = session.scalars(
            select(Series.id).where(
                Series.state == SeriesState.RECEIVING, Series.last_received_at <= cutoff
            )
        ).all()
    for series_id in due:
        with sessions() as session:
            # Claim atomically: an instance that arrived since the query moved
            # last_received_at and the series stays open.
            claimed = session.execute(
                update(Series)
                .where(
                    Series.id == series_id,
                    Series.state == SeriesState.RECEIVING,
                    Series.last_received_at <= cutoff,
                )
                .values(state=SeriesState.COMPLETE, completed_at=now)
            ).rowcount  # type: ignore[attr-defined]
            if not claimed:
                session.rollback()
                continue
            series = session.get(Series, series_id)
            assert series is not None
            study_uid = session.scalar(select(Study.study_uid).where(Study.id == series.study_id))
            quiet = (now - series.last_received_at).total_seconds()
            history.record(
                session,
                EventKind.SERIES_COMPLETED,
                study_uid=study_uid or "",
                series_uid=series.series_uid,
                instances=series.instance_count,
                generation=series.generation,
                quiet_seconds=round(quiet, 3),
            )
            try:
                decision = route_series(session, series, settings, model_available)
            except Exception as exc:  # an unreadable first file must not block the others
                session.rollback()
                log.exception("routing series %s failed", series.series_uid)
                _mark_route_failed(sessions, series_id, f"{type(exc).__name__}: {exc}")
                continue
            session.commit()
            done += 1
            log.info("series %s %s", series.series_uid, decision.summary)
    return done


def _mark_route_failed(sessions: sessionmaker[Session], series_id: int, error: str) -> None:
    with sessions() as session:
        series = session.get(Series, series_id)
        if series is None:
            return
        series.state = SeriesState.UNROUTED
        series.route_reason = f"routing failed: {error}"
        history.record(
            session, EventKind.SERIES_ROUTE_FAILED, series_uid=series.series_uid, error=error
        )
        session.commit()


class CompletionThread(threading.Thread):
    """Runs ``complete_due_series`` every ``scan_interval`` seconds until stopped."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        model_available: Callable[[str], bool],
    ) -> None:
        super().__init__(name="completion", daemon=True)
        self.sessions = sessions
        self.settings = settings
        self.model_available = model_available
        self.stopped = threading.Event()
        self.wakeup = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                complete_due_series(
                    self.sessions, self.settings, model_available=self.model_available
                )
            except Exception:
                log.exception("completion scan failed; retrying")
            self.wakeup.wait(self.settings.completion.scan_interval)
            self.wakeup.clear()

    def stop(self) -> None:
        self.stopped.set()
        self.wakeup.set()
