"""Deliver objects to destinations: C-STORE SCU with retries and exponential backoff.

Deliveries are rows in the database, so the attempt count, the last error and the next
attempt time survive a restart. Each row is committed right after its own C-STORE, so a
crash re-sends at most the one object that was in flight, and a job that is re-run finds its
(destination, SOP Instance UID) rows already done and sends nothing twice.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.association import Association
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import Destination, Settings
from dicom_node.doorbell import Doorbell
from dicom_node.receive.objectstore import storage_for
from dicom_node.store import history
from dicom_node.store.db import Delivery, utcnow
from dicom_node.store.states import DeliveryState, EventKind

log = logging.getLogger(__name__)

# A-ASSOCIATE-RQ carries at most 128 presentation contexts (PS3.8 9.3.2: odd IDs 1..255).
MAX_CONTEXTS = 128
# C-STORE warning statuses mean "stored, with remarks" (coercion, elements discarded).
_STORED_WARNINGS = {0xB000, 0xB006, 0xB007}


@dataclass(frozen=True)
class DeliveryItem:
    id: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    path: str
    attempts: int
    study_uid: str
    kind: str


def backoff_delay(dest: Destination, attempts: int) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones (1, 2, 4, ... x base)."""
    return min(dest.backoff_seconds * (2 ** max(attempts - 1, 0)), dest.backoff_max)


def ensure_delivery(
    session: Session,
    *,
    destination: str,
    sop_class_uid: str,
    sop_instance_uid: str,
    path: Path | str,
    study_uid: str,
    kind: str,
    job_id: int | None,
) -> tuple[Delivery, bool]:
    """Queue an object for a destination unless that exact object is already queued.

    Returns the row and whether it was created. A failed row for the same object is
    re-armed (a re-run is the operator's way of saying "try again").
    """
    row = session.scalar(
        select(Delivery).where(
            Delivery.destination == destination, Delivery.sop_instance_uid == sop_instance_uid
        )
    )
    if row is not None:
        if row.state == DeliveryState.FAILED:
            row.state = DeliveryState.PENDING
            row.next_attempt_at = utcnow()
            row.path = str(path)
        return row, False
    row = Delivery(
        job_id=job_id,
        destination=destination,
        kind=kind,
        sop_class_uid=sop_class_uid,
        sop_instance_uid=sop_instance_uid,
        study_uid=study_uid,
        path=str(path),
        state=DeliveryState.PENDING,
        attempts=0,
        next_attempt_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row, True


class DeliveryError(ValueError):
    """A request this module cannot honour (unknown delivery, one that has not failed)."""


def retry_failed(session: Session, delivery_id: int, *, requested_by: str) -> Delivery:
    """Put a failed delivery back in the queue, due now; the caller's session commits.

    The attempt count and the last error are kept (the history of what failed stays
    visible); the delivery loop makes one more attempt, and the event says who asked.

    Raises
    ------
    DeliveryError
        Unknown delivery, or one that has not failed.
    """
    row = session.get(Delivery, delivery_id)
    if row is None:
        raise DeliveryError(f"unknown delivery {delivery_id}")
    if row.state != DeliveryState.FAILED:
        raise DeliveryError(f"delivery {delivery_id} is {row.state}, not failed")
    row.state = DeliveryState.PENDING
    row.next_attempt_at = utcnow()
    history.record(
        session,
        EventKind.DELIVERY_RETRY_REQUESTED,
        study_uid=row.study_uid,
        sop_instance_uid=row.sop_instance_uid,
        job_id=row.job_id,
        delivery_id=row.id,
        destination=row.destination,
        attempts=row.attempts,
        requested_by=requested_by,
    )
    session.commit()
    return row


def _transfer_syntax(path: str) -> str:
    from pydicom import dcmread

    try:
        meta = dcmread(path, stop_before_pixels=True, specific_tags=[]).file_meta
        return str(meta.TransferSyntaxUID)
    except Exception:  # unreadable file: the send will fail and be recorded
        return ExplicitVRLittleEndian


def _contexts(items: Sequence[DeliveryItem]) -> list[tuple[str, list[str]]]:
    """One presentation context per (SOP class, transfer syntax) the objects need.

    Objects are sent as stored (pynetdicom's chunked sending: no decode and re-encode, so
    what the PACS gets is byte for byte what we received or built, and memory stays flat),
    which needs a context accepted with exactly the file's own transfer syntax.
    """
    pairs = dict.fromkeys((item.sop_class_uid, item.transfer_syntax_uid) for item in items)
    return [(sop_class, [syntax]) for sop_class, syntax in pairs]


class _Lanes:
    """One lane per destination: at most ``Destination.concurrency`` associations at once.

    Each batch (one association) runs in a daemon thread of its destination's lane, so a
    destination that does not answer (a black hole holds an association until its
    ``timeout``) delays nobody else, and a stopping node never waits for it. The ids in
    flight are skipped by the next scan, so nothing is sent twice at once.
    """

    def __init__(self, on_free: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._busy: dict[str, int] = defaultdict(int)
        self._in_flight: set[int] = set()
        # Called when a batch ends: deliveries that found their lane full go out now.
        self._on_free = on_free

    def in_flight(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._in_flight)

    def busy(self, name: str) -> int:
        with self._lock:
            return self._busy[name]

    def start(
        self,
        dest: Destination,
        items: list[DeliveryItem],
        work: Callable[[Destination, list[DeliveryItem]], None],
    ) -> threading.Thread | None:
        """Run ``work`` for the batch in the destination's lane; None when the lane is full."""
        ids = {item.id for item in items}
        with self._lock:
            if self._busy[dest.name] >= dest.concurrency:
                return None
            self._busy[dest.name] += 1
            self._in_flight |= ids

        def run() -> None:
            try:
                work(dest, items)
            except Exception:  # a batch must never take the lane down with it
                log.exception("delivery batch to %s failed", dest.name)
            finally:
                with self._lock:
                    self._busy[dest.name] -= 1
                    self._in_flight -= ids
                if self._on_free is not None:
                    self._on_free()

        thread = threading.Thread(target=run, name=f"deliver-{dest.name}", daemon=True)
        thread.start()
        return thread


class Deliverer:
    """Sends due deliveries: per destination, batches of up to 128 objects over one
    association each, in that destination's lane (``_Lanes``)."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        *,
        on_lane_free: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.counts: dict[str, int] = defaultdict(int)
        self._lanes = _Lanes(on_lane_free)
        # Objects in a bucket (cluster with S3 storage) are downloaded here to be sent.
        self.storage = storage_for(settings)

    def due(
        self, now: dt.datetime, limit: int = 500, skip: frozenset[int] = frozenset()
    ) -> dict[str, list[DeliveryItem]]:
        with self.sessions() as session:
            query = (
                select(Delivery)
                .where(Delivery.state == DeliveryState.PENDING, Delivery.next_attempt_at <= now)
                .order_by(Delivery.id)
                .limit(limit)
            )
            if skip:
                query = query.where(Delivery.id.not_in(skip))
            groups: dict[str, list[DeliveryItem]] = defaultdict(list)
            for row in session.scalars(query).all():
                groups[row.destination].append(
                    DeliveryItem(
                        id=row.id,
                        sop_class_uid=row.sop_class_uid,
                        sop_instance_uid=row.sop_instance_uid,
                        transfer_syntax_uid="",
                        path=row.path,
                        attempts=row.attempts,
                        study_uid=row.study_uid,
                        kind=row.kind,
                    )
                )
        return groups

    def run_once(self, now: dt.datetime | None = None, *, wait: bool = True) -> int:
        """Start every due delivery whose destination's lane has room.

        Parameters
        ----------
        now
            The time deliveries are due by (default: now).
        wait
            Wait for the batches started here to finish (tests, ``dicom-node`` tools);
            the delivery loop does not wait, so one destination never holds up another.

        Returns
        -------
        int
            How many deliveries were started.
        """
        started = 0
        threads: list[threading.Thread] = []
        for name, items in self.due(now or utcnow(), skip=self._lanes.in_flight()).items():
            try:
                dest = self.settings.destination(name)
            except KeyError:
                for item in items:
                    self._record(
                        item, None, None, f"destination {name!r} is not configured", final=True
                    )
                continue
            for start in range(0, len(items), MAX_CONTEXTS):
                batch = items[start : start + MAX_CONTEXTS]
                thread = self._lanes.start(dest, batch, self._send_stored)
                if thread is None:  # the lane is full: the next scan takes the rest
                    break
                threads.append(thread)
                started += len(batch)
        if wait:
            for thread in threads:
                thread.join()
        return started

    def _send_stored(self, dest: Destination, items: list[DeliveryItem]) -> None:
        """Send a batch whose objects may be in a bucket: each is downloaded to a local
        file for the C-STORE (sent as stored, byte for byte); one that cannot be read now
        is retried later, like a destination that does not answer."""
        folder = self.settings.data_dir / "outgoing"
        with self.storage.local_files([item.path for item in items], folder) as files:
            ready = []
            for item in items:
                local = files[item.path]
                if isinstance(local, Exception):
                    self._record(item, dest, None, f"cannot read from storage: {local}")
                else:
                    ready.append(replace(item, path=str(local)))
            if ready:
                self._send_batch(dest, ready)

    def _send_batch(self, dest: Destination, items: list[DeliveryItem]) -> None:
        items = [
            DeliveryItem(**{**item.__dict__, "transfer_syntax_uid": _transfer_syntax(item.path)})
            for item in items
        ]
        _config.STORE_SEND_CHUNKED_DATASET = True
        ae = AE(ae_title=self.settings.node.ae_title)
        ae.acse_timeout = dest.timeout
        ae.dimse_timeout = dest.timeout
        ae.network_timeout = dest.timeout
        contexts = _contexts(items)
        if len(contexts) > MAX_CONTEXTS:  # pragma: no cover - batches are cut to fit
            raise ValueError("too many presentation contexts")
        for sop_class, syntaxes in contexts:
            ae.add_requested_context(sop_class, syntaxes)
        started = time.monotonic()
        try:
            assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
        except Exception as exc:  # resolver or socket errors
            for item in items:
                self._record(item, dest, None, f"cannot connect: {exc}")
            return
        if not assoc.is_established:
            reason = _association_failure(assoc, dest)
            for item in items:
                self._record(item, dest, None, reason)
            return
        try:
            for item in items:
                if not assoc.is_established:
                    self._record(item, dest, None, "association ended before this object was sent")
                    continue
                self._send_one(assoc, dest, item)
        finally:
            if assoc.is_established:
                assoc.release()
        log.info(
            "delivery to %s: %d object(s) in %.2f s",
            dest.name,
            len(items),
            time.monotonic() - started,
        )

    def _send_one(self, assoc: Association, dest: Destination, item: DeliveryItem) -> None:
        t0 = time.monotonic()
        if not Path(item.path).is_file():
            self._record(item, dest, None, f"file missing: {item.path}", final=True)
            return
        try:
            status_ds = assoc.send_c_store(Path(item.path))
        except Exception as exc:  # no accepted context, unreadable file, network error
            self._record(item, dest, None, f"{type(exc).__name__}: {exc}")
            return
        elapsed = (time.monotonic() - t0) * 1000
        status = int(getattr(status_ds, "Status", -1)) if status_ds is not None else None
        if status is None or status == -1:
            self._record(item, dest, None, "no response (timeout or abort)", duration_ms=elapsed)
        elif status == 0x0000 or status in _STORED_WARNINGS:
            self._record(item, dest, status, "", success=True, duration_ms=elapsed)
        else:
            comment = str(getattr(status_ds, "ErrorComment", "") or "")
            self._record(
                item,
                dest,
                status,
                f"C-STORE status 0x{status:04X} {comment}".strip(),
                duration_ms=elapsed,
            )

    def _record(
        self,
        item: DeliveryItem,
        dest: Destination | None,
        status: int | None,
        error: str,
        *,
        success: bool = False,
        final: bool = False,
        duration_ms: float | None = None,
    ) -> None:
        now = utcnow()
        with self.sessions() as session:
            row = session.get(Delivery, item.id)
            if row is None:
                return
            row.attempts += 1
            row.last_status = status
            row.last_error = error
            if success:
                row.state = DeliveryState.DONE
                row.delivered_at = now
                kind = EventKind.DELIVERY_DONE
            elif final or dest is None or row.attempts >= dest.max_attempts:
                row.state = DeliveryState.FAILED
                kind = EventKind.DELIVERY_FAILED
            else:
                row.next_attempt_at = now + dt.timedelta(seconds=backoff_delay(dest, row.attempts))
                kind = EventKind.DELIVERY_RETRY
            self.counts[kind.removeprefix("delivery.")] += 1
            history.record(
                session,
                kind,
                study_uid=row.study_uid,
                sop_instance_uid=row.sop_instance_uid,
                job_id=row.job_id,
                delivery_id=row.id,
                duration_ms=duration_ms,
                destination=row.destination,
                attempt=row.attempts,
                status=status,
                error=error,
            )
            session.commit()
        if not success:
            log.warning(
                "delivery %d (%s %s) to %s failed, attempt %d: %s",
                item.id,
                item.kind,
                item.sop_instance_uid,
                dest.name if dest else "?",
                item.attempts + 1,
                error,
            )


def _association_failure(assoc: Association, dest: Destination) -> str:
    where = f"{dest.ae_title}@{dest.host}:{dest.port}"
    if assoc.is_rejected:
        rj = assoc.acceptor.primitive
        result = getattr(rj, "result_str", "") if rj is not None else ""
        reason = getattr(rj, "reason_str", "") if rj is not None else ""
        return f"association rejected by {where}: {result} {reason}".strip()
    # pynetdicom reports a refused TCP connection as an aborted association.
    return f"cannot associate with {where}: connection refused, aborted or timed out"


class DeliveryThread(threading.Thread):
    """Runs the deliverer in the serving process.

    It sleeps on a doorbell that the workers ring when a job has queued deliveries (and a
    lane rings when it frees up), so results leave as soon as they are written; the
    ``interval`` poll is the safety net, and the timer of retries whose backoff ends.
    """

    def __init__(
        self, deliverer: Deliverer, interval: float = 0.5, wakeup: Doorbell | None = None
    ) -> None:
        super().__init__(name="delivery", daemon=True)
        self.deliverer = deliverer
        self.interval = interval
        self.stopped = threading.Event()
        self._own_wakeup = wakeup is None
        self.wakeup = wakeup if wakeup is not None else Doorbell()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.deliverer.run_once(wait=False)
            except Exception:
                log.exception("delivery loop failed; retrying")
            self.wakeup.wait(self.interval)
        if self._own_wakeup:
            self.wakeup.close()

    def stop(self) -> None:
        self.stopped.set()
        self.wakeup.ring()
