"""Login throttling: a sliding window of failed attempts per key, in bounded memory.

The login form counts failures per (client address, username) pair, and separately per
client address. Not per username alone: then anyone who knows a name could lock that user
out from anywhere by failing on purpose, while here a blocked pair only blocks that
address for that user (the user logs in from their own machine as usual). The per-address
count, with a higher limit, stops one address spraying a password over many usernames.
What this does not stop is guessing one user's password from many addresses at once; the
argon2 cost of every attempt and the audit log (every failure, with its address) are the
answer to that.

Only failures count, so a person who types the password right is never slowed. The window
lives in memory: a restart forgets it, which costs an attacker a restart of the node they
cannot trigger from the login form. An administrator can clear a user's pairs with
``dicom-node users unlock NAME`` (see :meth:`LoginLimiter.forget_before`); blocks of an
address end with the window.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from dicom_node.store.db import utcnow

# Default bound on remembered keys, so a flood of made-up usernames cannot exhaust memory.
MAX_KEYS = 10_000


def pair_key(address: str, username: str) -> str:
    """The throttle key of one address trying one username.

    Usernames are folded to lower case, so ``Alice`` and ``alice`` count together: varying
    the case must not buy an attacker more attempts.
    """
    return f"{address}\x00{username.lower()}"


class LoginLimiter:
    """Counts failures per key within ``window`` seconds; ``limit`` failures block the key.

    Parameters
    ----------
    limit
        Failures allowed within the window; the next attempt is refused.
    window
        Length of the sliding window in seconds.
    max_keys
        Keys remembered at most; when full, the key whose last failure is the oldest is
        forgotten. Each key keeps at most ``limit`` times, so memory is bounded by
        ``max_keys * limit`` entries whatever the callers send.
    clock
        Monotonic time source for the window (tests pass a fake one).
    wall
        Naive-UTC wall clock, compared with the time of an administrator's unlock that
        another process wrote in the database.
    """

    def __init__(
        self,
        limit: int,
        window: float,
        max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._wall = wall
        # key -> (monotonic time, wall time) of its recent failures, oldest key first
        self._failures: OrderedDict[str, deque[tuple[float, dt.datetime]]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """How many keys are remembered (for tests and the memory bound)."""
        return len(self._failures)

    def _recent(self, key: str, now: float) -> int:
        times = self._failures.get(key)
        if times is None:
            return 0
        while times and times[0][0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
        return len(times)

    def blocked(self, key: str) -> bool:
        """Whether the key has reached the limit within the window."""
        now = self._clock()
        with self._lock:
            return self._recent(key, now) >= self.limit

    def failure(self, key: str) -> None:
        """Record one failed attempt for the key."""
        now, wall = self._clock(), self._wall()
        with self._lock:
            times = self._failures.get(key)
            if times is None:
                while len(self._failures) >= self.max_keys:
                    self._failures.popitem(last=False)
                times = self._failures[key] = deque(maxlen=self.limit)
            else:
                self._failures.move_to_end(key)
            times.append((now, wall))

    def reset(self, key: str) -> None:
        """Forget a key's failures (a successful login of that pair)."""
        with self._lock:
            self._failures.pop(key, None)

    def forget_before(self, key: str, when: dt.datetime) -> int:
        """Drop the key's failures recorded up to ``when``: an administrator's unlock.

        The time comes from the database, written by ``dicom-node users unlock`` in another
        process; the login form calls this for a blocked pair before refusing it, so each of
        the user's pairs is freed at its next attempt. Failures after the unlock still count.

        Returns
        -------
        int
            How many failures were dropped.
        """
        dropped = 0
        with self._lock:
            times = self._failures.get(key)
            if times is None:
                return 0
            while times and times[0][1] <= when:
                times.popleft()
                dropped += 1
            if not times:
                del self._failures[key]
        return dropped
