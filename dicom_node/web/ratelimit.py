"""Login rate limiting: a sliding window of failed attempts per key.

Keys are a client address and a username, counted separately: one address trying many
users (spraying) and many addresses trying one user (distributed guessing) are both
stopped. Only failures count, so a person who types the password right is never slowed.
The window lives in memory: a restart forgets it, which costs an attacker a restart of the
node they cannot trigger from the login form.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

# Bound on remembered keys, so a flood of made-up usernames cannot exhaust memory.
MAX_KEYS = 10_000


class LoginLimiter:
    """Counts failures per key within ``window`` seconds; ``limit`` failures block the key.

    Parameters
    ----------
    limit
        Failures allowed within the window; the next attempt is refused.
    window
        Length of the sliding window in seconds.
    clock
        Monotonic time source (tests pass a fake one).
    """

    def __init__(
        self, limit: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def blocked(self, keys: Iterable[str]) -> bool:
        """Whether any of the keys has reached the limit."""
        now = self._clock()
        with self._lock:
            return any(len(self._recent(key, now)) >= self.limit for key in keys)

    def failure(self, keys: Iterable[str]) -> None:
        """Record one failed attempt for each key."""
        now = self._clock()
        with self._lock:
            for key in keys:
                if key not in self._failures and len(self._failures) >= MAX_KEYS:
                    # Drop the key whose last failure is oldest.
                    oldest = min(self._failures, key=lambda k: self._failures[k][-1])
                    del self._failures[oldest]
                self._failures.setdefault(key, deque()).append(now)

    def reset(self, key: str) -> None:
        """Forget a key's failures (a successful login of that user)."""
        with self._lock:
            self._failures.pop(key, None)
