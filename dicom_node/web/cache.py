"""A value recomputed at most once per time-to-live, shared by all requests.

For data that is costly to read and may be a little old: the filter drop-downs need
``SELECT DISTINCT`` over the whole series table, which PostgreSQL answers with a full scan
(about 50 ms each at 100,000 series) while the values change a few times a year.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class TtlValue(Generic[T]):
    """Holds one computed value for ``ttl`` seconds."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._value: T | None = None
        self._expires = 0.0

    def get(self, compute: Callable[[], T]) -> T:
        with self._lock:
            now = self._clock()
            if self._value is None or now >= self._expires:
                self._value = compute()
                self._expires = now + self.ttl
            return self._value

    def clear(self) -> None:
        with self._lock:
            self._value = None
