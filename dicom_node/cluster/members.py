"""Who is in the cluster: one ``cluster_member`` row per role process, with a heartbeat.

The one module that writes ``cluster_member`` rows. A worker's row says which queues it
consumes and which models it holds (for ``/metrics`` and for routing: a model is available
when some member holds it). A row not refreshed for ``cluster.member_timeout`` seconds
means the process is gone (SIGKILL, a lost host): its running jobs are abandoned and may be
taken over (``process.queue.claim_job``, ``requeue_abandoned``).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import Settings
from dicom_node.store.db import ClusterMember, utcnow

log = logging.getLogger(__name__)

# Rows of members gone for this long are removed by the sweep (they only fill the table).
FORGET_AFTER = dt.timedelta(days=1)


def member_name(role: str) -> str:
    """``role@host:pid``: unique while the process lives, never reused by its successor."""
    suffix = f":{os.getpid()}"
    head = f"{role}@{socket.gethostname()}"
    return head[: 64 - len(suffix)] + suffix


def fresh_after(settings: Settings, now: dt.datetime | None = None) -> dt.datetime:
    """Heartbeats older than this are of members that are gone."""
    return (now or utcnow()) - dt.timedelta(seconds=settings.cluster.member_timeout)


def live_members(sessions: sessionmaker[Session], settings: Settings) -> list[ClusterMember]:
    with sessions() as session:
        return list(
            session.scalars(
                select(ClusterMember)
                .where(ClusterMember.seen_at >= fresh_after(settings))
                .order_by(ClusterMember.name)
            ).all()
        )


def forget_gone(sessions: sessionmaker[Session]) -> int:
    """Delete rows of members not seen for ``FORGET_AFTER``; returns how many."""
    with sessions() as session:
        gone = session.execute(
            delete(ClusterMember).where(ClusterMember.seen_at < utcnow() - FORGET_AFTER)
        ).rowcount  # type: ignore[attr-defined]
        session.commit()
    return int(gone or 0)


class Membership(threading.Thread):
    """This process's row: registered by :meth:`join`, refreshed by the thread, removed by
    :meth:`leave` (a clean stop: its jobs are then no longer taken for running)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        role: str,
        *,
        queues: Sequence[str] = (),
        models: Sequence[str] = (),
        name: str | None = None,
    ) -> None:
        super().__init__(name=f"heartbeat-{role}", daemon=True)
        self.sessions = sessions
        self.settings = settings
        self.role = role
        self.member = name or member_name(role)
        self.queues = list(queues)
        self.models = list(models)
        self.stopped = threading.Event()
        self.last_beat: float | None = None  # time.monotonic() of the last good heartbeat

    def join_cluster(self) -> None:
        """Write the row (replacing one of the same name) and start the heartbeat."""
        self._upsert()
        self.start()

    def _upsert(self) -> None:
        now = utcnow()
        with self.sessions() as session:
            session.execute(delete(ClusterMember).where(ClusterMember.name == self.member))
            session.add(
                ClusterMember(
                    name=self.member,
                    role=self.role,
                    host=socket.gethostname(),
                    pid=os.getpid(),
                    queues=self.queues,
                    models=self.models,
                    started_at=now,
                    seen_at=now,
                )
            )
            session.commit()
        self.last_beat = time.monotonic()

    def beat(self) -> None:
        with self.sessions() as session:
            found = session.execute(
                update(ClusterMember)
                .where(ClusterMember.name == self.member)
                .values(seen_at=utcnow())
            ).rowcount  # type: ignore[attr-defined]
            session.commit()
        if not found:  # removed meanwhile (forgotten after a long partition): come back
            self._upsert()
        self.last_beat = time.monotonic()

    def run(self) -> None:
        while not self.stopped.wait(self.settings.cluster.heartbeat_seconds):
            try:
                self.beat()
            except Exception as exc:  # the database is away: keep trying
                log.warning("heartbeat of %s failed: %s", self.member, type(exc).__name__)

    @property
    def healthy(self) -> bool:
        """The last heartbeat reached the database recently enough to count."""
        if self.last_beat is None:
            return False
        return time.monotonic() - self.last_beat < self.settings.cluster.member_timeout

    def leave(self) -> None:
        self.stopped.set()
        if self.ident is not None:
            super().join(timeout=5)
        try:
            with self.sessions() as session:
                session.execute(delete(ClusterMember).where(ClusterMember.name == self.member))
                session.commit()
        except Exception as exc:  # the row ages out instead
            log.warning("could not remove member %s: %s", self.member, type(exc).__name__)


def held_models(sessions: sessionmaker[Session]) -> set[str]:
    """Models some member ever declared (live or not): a model whose worker restarts
    keeps its routes, its jobs wait in the queue meanwhile."""
    with sessions() as session:
        rows = session.scalars(select(ClusterMember.models)).all()
    return {str(m) for models in rows for m in (models or [])}


def cluster_availability(
    sessions: sessionmaker[Session], local: Callable[[str], bool], ttl: float = 5.0
) -> Callable[[str], bool]:
    """Routing's "is this model available": weights here, or a worker that holds it.

    A receiver need not hold any weights itself; the answer is cached for ``ttl`` seconds.
    """
    cache: dict[str, object] = {"at": -1e9, "models": set()}
    lock = threading.Lock()

    def available(model_id: str) -> bool:
        if local(model_id):
            return True
        with lock:
            if time.monotonic() - float(cache["at"]) > ttl:  # type: ignore[arg-type]
                try:
                    cache["models"] = held_models(sessions)
                except Exception:  # keep the last answer while the database is away
                    log.warning("cannot read the cluster's models")
                cache["at"] = time.monotonic()
            return model_id in cache["models"]  # type: ignore[operator]

    return available
