"""What one peer may hold and write: association slots and log lines.

The DICOM port is open to whatever reaches it. A peer that opens connections and goes
silent, or sends garbage, must neither take every association slot (other modalities then
get no association) nor fill the disk with log lines. Two small bounds, both per peer host:

* ``ConnectionLimits``: a slot per TCP connection, from accept to the end of its association
  thread, at most ``total`` in all and ``per_host`` per address. A connection over either
  bound is refused before any thread starts for it.
* ``PeerLog``: the warnings a peer causes (refusals, rejections, invalid PDUs, pynetdicom's
  own error lines for its associations) pass a token bucket per host, so a peer that repeats
  the same mistake a thousand times a second writes a bounded number of lines, and the next
  line that passes says how many were suppressed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)  # identity: two connections from one host are two slots
class Slot:
    """One admitted connection's place in ``ConnectionLimits``; ``release`` is idempotent.

    Attributes
    ----------
    host
        The peer's address, as the per-host count knows it.
    assoc
        The association running on the connection, once it exists (``close_all`` needs it).
    """

    host: str
    limits: ConnectionLimits = field(repr=False)
    assoc: Any = field(default=None, repr=False)
    released: bool = False

    def release(self) -> None:
        self.limits._release(self)


class ConnectionLimits:
    """Association slots: ``total`` in all, ``per_host`` per peer address.

    A slot is held from the TCP accept until the association's thread ends, whatever the
    peer does meanwhile: a connection that never sends an A-ASSOCIATE-RQ still costs two
    threads and a socket until the ARTIM timer (``scp.acse_timeout``) closes it.
    """

    def __init__(self, total: int, per_host: int) -> None:
        if total < 1 or per_host < 1:
            raise ValueError("association limits must be at least 1")
        self.total = total
        self.per_host = per_host
        self._lock = threading.Lock()
        self._slots: set[Slot] = set()
        self._per_host: dict[str, int] = {}

    def acquire(self, host: str) -> Slot | str:
        """A slot for a new connection from ``host``, or why there is none (a short phrase
        naming the setting, for the log line)."""
        with self._lock:
            if len(self._slots) >= self.total:
                return f"{self.total} associations open (scp.max_associations)"
            held = self._per_host.get(host, 0)
            if held >= self.per_host:
                return f"{held} associations open from this host (scp.max_associations_per_host)"
            slot = Slot(host, self)
            self._slots.add(slot)
            self._per_host[host] = held + 1
            return slot

    def _release(self, slot: Slot) -> None:
        with self._lock:
            if slot.released:
                return
            slot.released = True
            self._slots.discard(slot)
            left = self._per_host.get(slot.host, 1) - 1
            if left > 0:
                self._per_host[slot.host] = left
            else:
                self._per_host.pop(slot.host, None)

    def held(self) -> list[Slot]:
        """The slots held now (a copy)."""
        with self._lock:
            return list(self._slots)

    def count(self, host: str | None = None) -> int:
        """Slots held in all, or by ``host``."""
        with self._lock:
            return len(self._slots) if host is None else self._per_host.get(host, 0)


class _Bucket:
    __slots__ = ("stamp", "suppressed", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp
        self.suppressed = 0


class PeerLog:
    """Warnings caused by a peer, rate-limited per peer host (a token bucket).

    Each host may write ``burst`` lines at once and ``burst`` more per ``window`` seconds;
    lines over that are counted, not written, and the next line that passes ends with how
    many were suppressed. At most ``max_hosts`` buckets are kept (least recently used
    first out), so a scan from many addresses costs bounded memory, not a bucket per address.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = 10,
        window: float = 60.0,
        max_hosts: int = 4096,
    ) -> None:
        self.logger = logger
        self.burst = burst
        self.window = window
        self.max_hosts = max_hosts
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def admit(self, host: str) -> tuple[bool, int]:
        """Take a token for one line about ``host``: (whether to write it, lines suppressed
        since the last written one, which the caller reports and which restart at 0)."""
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.get(host)
            if bucket is None:
                bucket = self._buckets[host] = _Bucket(float(self.burst), now)
                while len(self._buckets) > self.max_hosts:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(host)
                refill = (now - bucket.stamp) * self.burst / self.window
                bucket.tokens = min(float(self.burst), bucket.tokens + refill)
                bucket.stamp = now
            if bucket.tokens < 1.0:
                bucket.suppressed += 1
                return False, 0
            bucket.tokens -= 1.0
            suppressed, bucket.suppressed = bucket.suppressed, 0
            return True, suppressed

    def log(self, level: int, host: str, msg: str, *args: Any, exc_info: Any = None) -> bool:
        """Write ``msg % args`` at ``level`` if ``host`` has a token; returns whether it did."""
        admitted, suppressed = self.admit(host)
        if not admitted:
            return False
        if suppressed:
            msg += " (%d similar lines from this host suppressed)"
            args = (*args, suppressed)
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True

    def warning(self, host: str, msg: str, *args: Any) -> bool:
        return self.log(logging.WARNING, host, msg, *args)
