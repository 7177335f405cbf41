"""Series completion: a series is complete after a quiet period, then it is routed.

DICOM has no "series complete" message, so, like Orthanc's StableAge and mercure, we wait
until no instance has arrived for ``completion.quiet_seconds``.

Per-sender policy (like MONAI Deploy's per-AE rules): for calling AE titles in
``completion.release_aes``, senders that send each series whole on one association (a PACS
forwarding a study), the clean release of that association ends its series, after
``completion.release_grace_seconds``. The quiet period stays the fallback: an aborted
association reports nothing, a series that another open association was also sending is left
to the quiet period, and an instance received after the release (on any association) makes
the release claim fail, because it is checked in the same UPDATE that completes the series.
Release notices live in memory only; after a restart the quiet period applies.

Late instances (documented rule): with ``late_instances = "rerun"`` an instance that arrives
after its series was routed reopens the series (``index.py`` bumps ``Series.generation``);
after a new quiet period the series is routed again and a new job runs on all instances. The
new results get new SOP Instance UIDs, keep the result series, and the SR names its
predecessor, so the PACS shows the newest version and history keeps both. With
``late_instances = "ignore"`` the instance is stored and indexed and nothing is re-run.
"""

from __future__ import annotations

import datetime as dt
import heapq
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import LiveSettings, Settings
from dicom_node.process import queue
from dicom_node.receive.objectstore import storage_for
from dicom_node.route.rules import RouteDecision, evaluate, tags_for
from dicom_node.store import history
from dicom_node.store.db import Instance, Series, Study, utcnow
from dicom_node.store.states import SERIES_OUTCOME_EVENTS, EventKind, SeriesState

if TYPE_CHECKING:
    from dicom_node.receive.scp import ReleasedAssociation

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
        # A file, or an object that another receiver of the cluster stored.
        ds = storage_for(settings).read_dataset(first.path, stop_before_pixels=True)
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
    on_queued: Callable[[], None] | None = None,
    not_before: dt.datetime | None = None,
) -> int:
    """Complete and route every series that has been quiet long enough; returns how many.

    ``on_queued`` is called after each commit that queued jobs (the node wakes a worker).
    ``not_before`` is when this node started: a series that was receiving when the node
    stopped may have had its push cut by the stop itself (the sender retries once it can
    reach us), so its quiet period counts from the restart, not from its last instance.
    Series received since the restart are not held back by that: only one whose last
    instance is older than the restart can be due before ``not_before`` + quiet period.
    """
    now = now or utcnow()
    cutoff = now - dt.timedelta(seconds=settings.completion.quiet_seconds)
    if not_before is not None and cutoff < not_before:
        return 0
    with sessions() as session:
        due = session.scalars(
            select(Series.id).where(
                Series.state == SeriesState.RECEIVING, Series.last_received_at <= cutoff
            )
        ).all()
    return sum(
        _claim_and_route(
            sessions,
            settings,
            series_id,
            cutoff,
            now,
            model_available,
            policy="quiet",
            on_queued=on_queued,
        )
        for series_id in due
    )


@dataclass(frozen=True, order=True)
class ReleaseNotice:
    """A series whose sender said it is whole, waiting for its grace to end: an
    association released cleanly (``policy`` "release"), or an upload that ended
    (``policy`` "upload", no grace: the upload's request held every instance)."""

    due: dt.datetime
    series_uid: str
    released_at: dt.datetime = field(compare=False)
    calling_ae: str = field(compare=False)
    policy: str = field(default="release", compare=False)


def release_notices(
    released: ReleasedAssociation, settings: Settings
) -> tuple[list[ReleaseNotice], list[str]]:
    """Apply the per-sender policy to a released association.

    Returns
    -------
    notices
        One per series to complete after the grace (the sender is in ``release_aes``).
    kept_open
        Series left to the quiet period because another open association was sending them.
    """
    if released.calling_ae not in settings.completion.release_aes:
        return [], []
    due = released.released_at + dt.timedelta(seconds=settings.completion.release_grace_seconds)
    notices = [
        ReleaseNotice(due, uid, released.released_at, released.calling_ae)
        for uid in sorted(released.series_uids - released.open_elsewhere)
    ]
    return notices, sorted(released.open_elsewhere)


def complete_released_series(
    sessions: sessionmaker[Session],
    settings: Settings,
    notices: Iterable[ReleaseNotice],
    *,
    now: dt.datetime | None = None,
    model_available: Callable[[str], bool] = lambda _m: True,
    on_queued: Callable[[], None] | None = None,
) -> int:
    """Complete and route the series of released associations (or ended uploads);
    returns how many.

    A series is claimed only if it is still receiving and nothing of it arrived after the
    release; otherwise it stays with the quiet period (an event says why when it is still
    receiving).
    """
    now = now or utcnow()
    done = 0
    for notice in notices:
        with sessions() as session:
            row = session.execute(
                select(Series.id, Series.state).where(Series.series_uid == notice.series_uid)
            ).first()
        if row is None or row.state != SeriesState.RECEIVING:
            continue  # already completed by its quiet period, or removed
        grace = (now - notice.released_at).total_seconds()
        if _claim_and_route(
            sessions,
            settings,
            int(row.id),
            notice.released_at,
            now,
            model_available,
            policy=notice.policy,
            on_queued=on_queued,
            calling_ae=notice.calling_ae,
            grace_seconds=round(grace, 3),
        ):
            done += 1
        else:
            _record_kept_open(
                sessions,
                notice.series_uid,
                f"an instance arrived after the {notice.policy}",
                notice,
            )
    return done


def complete_uploaded_series(
    sessions: sessionmaker[Session],
    settings: Settings,
    series_uids: Iterable[str],
    *,
    uploaded_at: dt.datetime,
    calling_ae: str,
    model_available: Callable[[str], bool] = lambda _m: True,
    on_queued: Callable[[], None] | None = None,
) -> int:
    """Complete and route the series of an upload that has ended; returns how many.

    An upload (the upload page, ``POST /api/predict``) is a sender that says when it is
    done: every instance was in the one request, so its series are treated like those of
    a clean release with no grace, instead of waiting for the quiet period. The same
    claim applies: a series that got an instance after ``uploaded_at`` (from another
    sender) stays with the quiet period. ``uploaded_at`` must be taken after the last
    instance of the upload was indexed.
    """
    notices = [
        ReleaseNotice(uploaded_at, uid, uploaded_at, calling_ae, policy="upload")
        for uid in sorted(set(series_uids))
    ]
    return complete_released_series(
        sessions,
        settings,
        notices,
        model_available=model_available,
        on_queued=on_queued,
    )


def _record_kept_open(
    sessions: sessionmaker[Session], series_uid: str, reason: str, notice: ReleaseNotice | None
) -> None:
    """Say in the history why a released series waits for its quiet period after all."""
    with sessions() as session:
        series = session.scalar(select(Series).where(Series.series_uid == series_uid))
        if series is None or series.state != SeriesState.RECEIVING:
            return
        study_uid = session.scalar(select(Study.study_uid).where(Study.id == series.study_id))
        history.record(
            session,
            EventKind.SERIES_RELEASE_IGNORED,
            study_uid=study_uid or "",
            series_uid=series_uid,
            generation=series.generation,
            reason=reason,
            calling_ae=notice.calling_ae if notice else "",
        )
        session.commit()


def _claim_and_route(
    sessions: sessionmaker[Session],
    settings: Settings,
    series_id: int,
    received_by: dt.datetime,
    now: dt.datetime,
    model_available: Callable[[str], bool],
    *,
    policy: str,
    on_queued: Callable[[], None] | None = None,
    **detail: Any,
) -> bool:
    """Complete one series if it is receiving and got nothing after ``received_by``; route it.

    The claim is one UPDATE with both conditions, so an instance indexed since the caller
    looked (it moves ``last_received_at``) keeps the series open, and two completion loops
    (or the two policies) never complete the same series twice. Returns whether it was
    completed and routed.
    """
    with sessions() as session:
        claimed = session.execute(
            update(Series)
            .where(
                Series.id == series_id,
                Series.state == SeriesState.RECEIVING,
                Series.last_received_at <= received_by,
            )
            .values(state=SeriesState.COMPLETE, completed_at=now)
        ).rowcount  # type: ignore[attr-defined]
        if not claimed:
            session.rollback()
            return False
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
            policy=policy,
            **detail,
        )
        try:
            decision = route_series(session, series, settings, model_available)
        except Exception as exc:  # an unreadable first file must not block the others
            session.rollback()
            log.exception("routing series %s failed", series.series_uid)
            _mark_route_failed(sessions, series_id, f"{type(exc).__name__}: {exc}")
            return False
        session.commit()
        log.info("series %s complete (%s): %s", series.series_uid, policy, decision.summary)
    if decision.routes and on_queued is not None:
        try:
            on_queued()
        except Exception:  # the workers' poll finds the job anyway
            log.exception("could not wake a worker")
    return True


def next_quiet_due(sessions: sessionmaker[Session], settings: Settings) -> dt.datetime | None:
    """When the quietest receiving series' quiet period ends (None: nothing is receiving)."""
    with sessions() as session:
        oldest = session.scalar(
            select(func.min(Series.last_received_at)).where(Series.state == SeriesState.RECEIVING)
        )
    if oldest is None:
        return None
    return oldest + dt.timedelta(seconds=settings.completion.quiet_seconds)


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
    """Completes series as their quiet period or release grace ends, until stopped.

    The loop sleeps until the next moment a series can become complete (the oldest receiving
    series' quiet period, the next release grace), so a series is routed when it is due,
    not up to a scan later; ``scan_interval`` bounds the sleep as a safety net (a clock
    step, a series written by another process).
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings | LiveSettings,
        model_available: Callable[[str], bool],
        *,
        on_queued: Callable[[], None] | None = None,
    ) -> None:
        """``on_queued`` is called after a routed series queued jobs (wake a worker).
        ``settings`` may be live (``LiveSettings``): routes edited on the admin page apply
        from the next scan."""
        super().__init__(name="completion", daemon=True)
        self.sessions = sessions
        self.live = LiveSettings.of(settings)
        self.model_available = model_available
        self.on_queued = on_queued
        self.stopped = threading.Event()
        self.wakeup = threading.Event()
        self._notices: list[ReleaseNotice] = []  # a heap, earliest due first
        self._kept_open: list[tuple[str, str]] = []  # (series UID, calling AE) to record
        self._lock = threading.Lock()
        self.started_at: dt.datetime | None = None  # see complete_due_series(not_before)

    @property
    def settings(self) -> Settings:
        """The settings in force now (read once per scan: one snapshot per scan)."""
        return self.live.current

    def start(self) -> None:
        self.started_at = utcnow()
        super().start()

    def association_released(self, released: ReleasedAssociation) -> None:
        """The SCP's ``on_released``: queue the series of a release AE (never blocks long)."""
        notices, kept_open = release_notices(released, self.settings)
        if not notices and not kept_open:
            return
        with self._lock:
            for notice in notices:
                heapq.heappush(self._notices, notice)
            self._kept_open.extend((uid, released.calling_ae) for uid in kept_open)
        self.wakeup.set()

    def _take_due(self, now: dt.datetime) -> tuple[list[ReleaseNotice], list[tuple[str, str]]]:
        with self._lock:
            due = []
            while self._notices and self._notices[0].due <= now:
                due.append(heapq.heappop(self._notices))
            kept_open, self._kept_open = self._kept_open, []
        return due, kept_open

    def run_once(self, now: dt.datetime | None = None) -> float:
        """Complete what is due; return how long to sleep before the next look."""
        now = now or utcnow()
        settings = self.settings
        due, kept_open = self._take_due(now)
        for series_uid, calling_ae in kept_open:
            notice = ReleaseNotice(now, series_uid, now, calling_ae)
            _record_kept_open(
                self.sessions, series_uid, "another open association is sending it", notice
            )
        complete_released_series(
            self.sessions,
            settings,
            due,
            now=now,
            model_available=self.model_available,
            on_queued=self.on_queued,
        )
        complete_due_series(
            self.sessions,
            settings,
            now=now,
            model_available=self.model_available,
            on_queued=self.on_queued,
            not_before=self.started_at,
        )
        wait = settings.completion.scan_interval
        quiet_due = next_quiet_due(self.sessions, settings)
        if quiet_due is not None and self.started_at is not None:
            quiet = dt.timedelta(seconds=settings.completion.quiet_seconds)
            quiet_due = max(quiet_due, self.started_at + quiet)
        candidates = [quiet_due]
        with self._lock:
            if self._notices:
                candidates.append(self._notices[0].due)
        for when in candidates:
            # Something due at ``now`` that is still there could not be completed (it is
            # retried after scan_interval, never in a busy loop).
            if when is not None and when > now:
                wait = min(wait, (when - utcnow()).total_seconds())
        # A millisecond past the due time: the claim compares against "now".
        return max(wait, 0.0) + 0.001

    def run(self) -> None:
        while not self.stopped.is_set():
            self.wakeup.clear()  # before looking: a release reported meanwhile sets it again
            wait = self.settings.completion.scan_interval
            try:
                wait = self.run_once()
            except Exception:
                log.exception("completion scan failed; retrying")
            self.wakeup.wait(wait)

    def stop(self) -> None:
        self.stopped.set()
        self.wakeup.set()
