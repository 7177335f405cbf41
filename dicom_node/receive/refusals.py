"""What the receiver refused, kept in the database for the admin page (table ``refusal``).

A PACS administrator who sees "association rejected" on the sending side needs the other
half: which calling AE and address we saw, which called AE they asked for, and why we
said no. Log lines alone scroll away, so every refusal is also a row here: a connection
from a host not allowed, an A-ASSOCIATE-RJ (calling or called AE title not recognised,
too many associations), an association accepted without any usable presentation context,
and a C-STORE answered with a failure status.

Only the newest ``MAX_REFUSALS`` rows are kept: a hostile or misconfigured peer retrying
all night costs a bounded table, not a full disk. Rows hold AE titles, addresses,
statuses and UIDs, never patient data. Recording never raises, and the receiver hands
its refusals to a ``RefusalRecorder`` thread: a refused connection is seen in the
accept loop, which must not wait for the database while a flood goes on (past
``QUEUE_SIZE`` waiting refusals, the extra ones are only logged).
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.store.db import Refusal
from dicom_node.store.states import RefusalKind

log = logging.getLogger(__name__)

MAX_REFUSALS = 10_000
QUEUE_SIZE = 1000

# A-ASSOCIATE-RJ (PS3.8 9.3.4): (source, reason) -> what it means to an operator.
_RJ_REASONS = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognised (not in scp.allowed_calling_aes)",
    (1, 7): "called AE title not recognised (not our node.ae_title)",
    (2, 1): "no reason given (ACSE)",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded (too many associations at once)",
}
_RJ_RESULTS = {1: "rejected (permanent)", 2: "rejected (transient)"}


def rejection_meaning(result: int | None, source: int | None, reason: int | None) -> str:
    """An A-ASSOCIATE-RJ's result, source and reason in words (PS3.8 Table 9-21)."""
    verdict = _RJ_RESULTS.get(result or 0, "rejected")
    why = _RJ_REASONS.get((source or 0, reason or 0), f"source {source}, reason {reason}")
    return f"{verdict}: {why}"


def record(
    sessions: sessionmaker[Session],
    kind: RefusalKind,
    *,
    calling_ae: str = "",
    called_ae: str = "",
    address: str = "",
    status: int | None = None,
    meaning: str = "",
    reason: str = "",
    sop_instance_uid: str = "",
    keep: int = MAX_REFUSALS,
) -> None:
    """Write one refusal and drop the ones older than the newest ``keep``; never raises.

    Values are cut to their columns: they come from the network, and a refusal must be
    recorded even when the peer sent an over-long AE title.
    """
    try:
        with sessions() as session:
            session.add(
                Refusal(
                    kind=kind,
                    calling_ae=calling_ae.strip()[:64],
                    called_ae=called_ae.strip()[:64],
                    address=address[:64],
                    status=status,
                    meaning=meaning[:500],
                    reason=reason[:2000],
                    sop_instance_uid=sop_instance_uid[:64],
                )
            )
            session.flush()
            _prune(session, keep)
            session.commit()
    except Exception:  # the handler answers anyway; the log line says what was refused
        log.exception("could not record a refused %s", kind.value)


def _prune(session: Session, keep: int) -> None:
    """Delete all but the newest ``keep`` rows (ids only grow: the oldest go first)."""
    newest = session.scalar(select(func.max(Refusal.id)))
    if newest is not None and newest > keep:
        session.execute(delete(Refusal).where(Refusal.id <= newest - keep))


def peer(assoc: Any) -> tuple[str, str, str]:
    """(calling AE, called AE as asked, address) of an association's requestor."""
    requestor = assoc.requestor
    primitive = getattr(requestor, "primitive", None)
    called = getattr(primitive, "called_ae_title", None) if primitive is not None else None
    return (
        str(getattr(requestor, "ae_title", "") or ""),
        str(called if called is not None else ""),
        str(getattr(requestor, "address", "") or ""),
    )


class RefusalRecorder:
    """Records refusals in a thread of its own, so the receiver never waits for it.

    ``submit`` takes the arguments of :func:`record` and returns at once; a refusal that
    finds ``QUEUE_SIZE`` others waiting is dropped (counted in ``dropped``; the
    receiver's log line remains). ``stop`` records what is waiting, then ends the thread.
    """

    def __init__(self, sessions: sessionmaker[Session], *, keep: int = MAX_REFUSALS) -> None:
        self.sessions = sessions
        self.keep = keep
        self.dropped = 0
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(QUEUE_SIZE)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, kind: RefusalKind, **fields: Any) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="refusal-recorder", daemon=True
                )
                self._thread.start()
        try:
            self._queue.put_nowait({"kind": kind, **fields})
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            kind = item.pop("kind")
            record(self.sessions, kind, keep=self.keep, **item)

    def stop(self, timeout: float = 10.0) -> None:
        """Record what is waiting and end the thread (a later ``submit`` starts another)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(None)
        thread.join(timeout)
