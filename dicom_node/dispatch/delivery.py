"""Deliver objects to destinations, with retries and exponential backoff: C-STORE SCU for
``kind = "dimse"`` destinations, STOW-RS (``dispatch.stow``) for ``kind = "dicomweb"``.

Deliveries are rows in the database, so the attempt count, the last status and error and
the next attempt time survive a restart, whichever the kind. Each row is committed right
after its own C-STORE (or its batch's STOW-RS request), so a crash re-sends at most what
was in flight, and a job that is re-run finds its (destination, SOP Instance UID) rows
already done and sends nothing twice. Each attempt
also updates the destination's ``destination_status`` row (last success, last error),
which the destinations page shows. A destination with ``enabled = false`` is held: its
deliveries stay pending until it is enabled again.

Several dispatchers may share the database (cluster mode): each claims the due rows it is
about to send (``delivery.claimed_by``, a conditional UPDATE), so no row is sent by two of
them at once; a claim of a dispatcher whose heartbeat is stale is taken over. The
embedded node claims as ``node`` (one dispatcher: every claim is its own).
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
from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import ConfigError, Destination, LiveSettings, Settings
from dicom_node.dispatch import stow
from dicom_node.dispatch.association import NoAssociationError, Peer, request
from dicom_node.doorbell import Doorbell
from dicom_node.receive.objectstore import storage_for
from dicom_node.store import history
from dicom_node.store.db import ClusterMember, Delivery, DestinationStatus, utcnow
from dicom_node.store.states import DeliveryState, EventKind
from dicom_node.tls import HandshakeRecordingContext, TlsConfigError, client_context

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


def tls_args(dest: Destination) -> tuple[HandshakeRecordingContext, str] | None:
    """pynetdicom's ``tls_args`` for one association to ``dest``; None for plain DICOM.

    A new context per association: its certificate files are read now (a renewed one is
    used without a restart), and it records why its handshake failed.

    Raises
    ------
    TlsConfigError
        A certificate, key or CA bundle of ``dest.tls`` cannot be used.
    """
    if dest.tls is None:
        return None
    context = client_context(
        ca_certificates=dest.tls.ca_certificates,
        certificate=dest.tls.certificate,
        private_key=dest.tls.private_key,
    )
    return context, dest.tls.server_name or dest.host


def check_tls(settings: Settings) -> None:
    """Build every TLS destination's context once, so that a missing or unusable file stops
    start-up with one line instead of failing every delivery later.

    Raises
    ------
    ConfigError
        Naming the destination, the setting and the file.
    """
    for index, dest in enumerate(settings.destinations):
        try:
            tls_args(dest)
        except TlsConfigError as exc:
            raise ConfigError(
                f"destinations[{index}] ({dest.name}).tls.{exc.field} ({settings.source}): {exc}"
            ) from None


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
    association each, in that destination's lane (``_Lanes``).

    Raises
    ------
    ConfigError
        A TLS destination's certificate, key or CA bundle cannot be used (``check_tls``).
    """

    def __init__(
        self,
        settings: Settings | LiveSettings,
        sessions: sessionmaker[Session],
        *,
        on_lane_free: Callable[[], None] | None = None,
        claimer: str = "node",
    ) -> None:
        """``settings`` may be live (``LiveSettings``): destinations edited on the admin
        page apply from the next scan. ``claimer`` names this dispatcher in the rows it
        claims: its cluster member name in cluster mode."""
        self.live = LiveSettings.of(settings)
        self.sessions = sessions
        self.claimer = claimer
        self.counts: dict[str, int] = defaultdict(int)
        self._lanes = _Lanes(on_lane_free)
        check_tls(self.live.current)
        self._known_status: set[str] = set()
        # Objects in a bucket (cluster with S3 storage) are downloaded here to be sent.
        self.storage = storage_for(self.live.current)

    @property
    def settings(self) -> Settings:
        """The settings in force now (one snapshot per scan and per batch)."""
        return self.live.current

    def due(
        self,
        now: dt.datetime,
        limit: int = 500,
        skip: frozenset[int] = frozenset(),
        held: frozenset[str] = frozenset(),
    ) -> dict[str, list[DeliveryItem]]:
        """Pending deliveries due by ``now``, oldest first, by destination, now claimed by
        this dispatcher; those in flight (``skip``) and those of held destinations are left
        out (else a held destination's backlog could fill ``limit`` and starve the others).

        A row is claimable when nobody claims it, this dispatcher does (a batch its lane had
        no room for, or a claim from before a restart), or its claimer is gone (cluster
        mode: no heartbeat for ``cluster.member_timeout``). The claim is one conditional
        UPDATE: of two dispatchers scanning at once, each row goes to one of them."""
        claimable = self._claimable()
        with self.sessions() as session:
            query = (
                select(Delivery.id)
                .where(
                    Delivery.state == DeliveryState.PENDING,
                    Delivery.next_attempt_at <= now,
                    claimable,
                )
                .order_by(Delivery.id)
                .limit(limit)
                # PostgreSQL: rows another dispatcher is claiming right now are skipped,
                # not waited for (that one gets them); SQLite ignores it (one writer).
                .with_for_update(skip_locked=True)
            )
            if skip:
                query = query.where(Delivery.id.not_in(skip))
            if held:
                query = query.where(Delivery.destination.not_in(held))
            candidates = list(session.scalars(query).all())
            if not candidates:
                return {}
            claimed = set(
                session.scalars(
                    update(Delivery)
                    .where(
                        Delivery.id.in_(candidates),
                        Delivery.state == DeliveryState.PENDING,
                        claimable,
                    )
                    .values(claimed_by=self.claimer)
                    .returning(Delivery.id)
                ).all()
            )
            session.commit()
            rows = session.scalars(
                select(Delivery).where(Delivery.id.in_(claimed)).order_by(Delivery.id)
            ).all()
            groups: dict[str, list[DeliveryItem]] = defaultdict(list)
            for row in rows:
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

    def _claimable(self) -> ColumnElement[bool]:
        """Rows this dispatcher may claim (see :meth:`due`)."""
        mine = or_(Delivery.claimed_by.is_(None), Delivery.claimed_by == self.claimer)
        settings = self.settings
        if not settings.clustered:
            return mine
        fresh_after = utcnow() - dt.timedelta(seconds=settings.cluster.member_timeout)
        live = select(ClusterMember.name).where(ClusterMember.seen_at >= fresh_after)
        return or_(mine, Delivery.claimed_by.not_in(live))

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
        settings = self.settings
        held = frozenset(d.name for d in settings.destinations if not d.enabled)
        due = self.due(now or utcnow(), skip=self._lanes.in_flight(), held=held)
        for name, items in due.items():
            try:
                dest = settings.destination(name)
            except KeyError:
                for item in items:
                    self._record(
                        item, None, None, f"destination {name!r} is not configured", final=True
                    )
                continue
            self._ensure_status(name)
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
        """One association (or one STOW-RS request) for the batch, by destination kind."""
        if dest.kind == "dicomweb":
            self._send_stow(dest, items)
        else:
            self._send_dimse(dest, items)

    def _send_stow(self, dest: Destination, items: list[DeliveryItem]) -> None:
        """POST the batch's files in one STOW-RS request; each row gets its own outcome
        (the server answers per instance), retried and backed off like a C-STORE."""
        present = []
        for item in items:
            if Path(item.path).is_file():
                present.append(item)
            else:
                self._record(item, dest, None, f"file missing: {item.path}", final=True)
        if not present:
            return
        started = time.monotonic()
        outcomes = stow.store(
            dest, [stow.StowFile(item.sop_instance_uid, Path(item.path)) for item in present]
        )
        elapsed = time.monotonic() - started
        for item in present:
            outcome = outcomes[item.sop_instance_uid]
            self._record(
                item,
                dest,
                outcome.status,
                outcome.error,
                success=outcome.stored,
                duration_ms=elapsed * 1000,
            )
        log.info("STOW-RS delivery to %s: %d object(s) in %.2f s", dest.name, len(present), elapsed)

    def _send_dimse(self, dest: Destination, items: list[DeliveryItem]) -> None:
        items = [
            DeliveryItem(**{**item.__dict__, "transfer_syntax_uid": _transfer_syntax(item.path)})
            for item in items
        ]
        _config.STORE_SEND_CHUNKED_DATASET = True
        ae = AE(ae_title=self.settings.node.ae_title)
        ae.acse_timeout = dest.timeout
        ae.dimse_timeout = dest.timeout
        ae.network_timeout = dest.timeout
        ae.connection_timeout = dest.timeout  # also bounds the TLS handshake
        contexts = _contexts(items)
        if len(contexts) > MAX_CONTEXTS:  # pragma: no cover - batches are cut to fit
            raise ValueError("too many presentation contexts")
        for sop_class, syntaxes in contexts:
            ae.add_requested_context(sop_class, syntaxes)
        started = time.monotonic()
        try:
            tls = tls_args(dest)
        except TlsConfigError as exc:  # a file changed since start-up
            for item in items:
                self._record(item, dest, None, f"TLS set-up: tls.{exc.field}: {exc}")
            return
        try:
            assoc = request(ae, _peer(dest), calling_option="node.ae_title", tls_args=tls)
        except NoAssociationError as exc:  # refused, no answer, rejected (why), TLS
            for item in items:
                self._record(item, dest, None, str(exc))
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
            row.claimed_by = None  # the attempt is over: the next one may be anyone's
            if row.destination in self._known_status:
                values: dict[str, object] = (
                    {"last_success_at": now}
                    if success
                    else {"last_error_at": now, "last_status": status, "last_error": error}
                )
                session.execute(
                    update(DestinationStatus)
                    .where(DestinationStatus.name == row.destination)
                    .values(**values)
                )
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
                dispatcher=self.claimer,
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

    def _ensure_status(self, name: str) -> None:
        """Make sure the destination has its status row, so attempts only UPDATE it (two
        lanes of one destination never race to INSERT it in their delivery commits)."""
        if name in self._known_status:
            return
        with self.sessions() as session:
            if session.get(DestinationStatus, name) is None:
                session.add(DestinationStatus(name=name, last_error=""))
                try:
                    session.commit()
                except IntegrityError:  # created by another process meanwhile
                    session.rollback()
        self._known_status.add(name)


@dataclass(frozen=True)
class DestinationSummary:
    """What the destinations page shows of one destination, from the database."""

    name: str
    pending: int
    failed: int
    last_success_at: dt.datetime | None
    last_error_at: dt.datetime | None
    last_status: int | None
    last_error: str


def destination_summaries(session: Session, names: Sequence[str]) -> list[DestinationSummary]:
    """Pending and failed counts, last success and last error of each named destination
    (also of ones not configured any more that still have deliveries, after ``names``)."""
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for name, state, count in session.execute(
        select(Delivery.destination, Delivery.state, func.count(Delivery.id))
        .where(Delivery.state.in_((DeliveryState.PENDING, DeliveryState.FAILED)))
        .group_by(Delivery.destination, Delivery.state)
    ):
        counts[name][str(state)] = int(count)
    status = {row.name: row for row in session.scalars(select(DestinationStatus))}
    ordered = list(dict.fromkeys([*names, *sorted(counts)]))
    summaries = []
    for name in ordered:
        row = status.get(name)
        summaries.append(
            DestinationSummary(
                name=name,
                pending=counts[name].get(DeliveryState.PENDING, 0),
                failed=counts[name].get(DeliveryState.FAILED, 0),
                last_success_at=row.last_success_at if row else None,
                last_error_at=row.last_error_at if row else None,
                last_status=row.last_status if row else None,
                last_error=row.last_error if row else "",
            )
        )
    return summaries


@dataclass(frozen=True)
class EchoResult:
    """The outcome of a C-ECHO: whether it worked, and what happened in one line."""

    ok: bool
    message: str
    seconds: float


def echo(dest: Destination, calling_ae: str) -> EchoResult:
    """C-ECHO a destination as the delivery would reach it (same AE titles, TLS, timeout).

    The operator's first question about a PACS that does not take results: is it there,
    and does it accept us? The answer says which: connection refused or timed out,
    association rejected (and why), a failed TLS handshake, or the Verification status.
    """
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    if dest.kind != "dimse":
        return EchoResult(False, f"{dest.name} is a DICOMweb destination: C-ECHO is DIMSE", 0.0)
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = ae.acse_timeout = dest.timeout
    ae.dimse_timeout = ae.network_timeout = dest.timeout
    ae.add_requested_context(Verification)
    started = time.monotonic()
    try:
        assoc = request(ae, _peer(dest), calling_option="node.ae_title", tls_args=tls_args(dest))
    except TlsConfigError as exc:
        return EchoResult(False, f"TLS set-up: tls.{exc.field}: {exc}", 0.0)
    except NoAssociationError as exc:
        return EchoResult(False, str(exc), time.monotonic() - started)
    try:
        status_ds = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    elapsed = time.monotonic() - started
    status = int(getattr(status_ds, "Status", -1)) if status_ds is not None else -1
    where = dest.where
    if status == 0:
        return EchoResult(True, f"C-ECHO {where}: success in {elapsed * 1000:.0f} ms", elapsed)
    if status < 0:
        return EchoResult(False, f"C-ECHO {where}: no response (timeout or abort)", elapsed)
    return EchoResult(False, f"C-ECHO {where}: status 0x{status:04X}", elapsed)


def _peer(dest: Destination) -> Peer:
    return Peer(dest.ae_title, dest.host, dest.port)


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
