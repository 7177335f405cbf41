"""The studies-list filter, and where it is kept between requests.

Decision (no patient data in URLs): the filter form is POSTed, and the filter is kept on the
server, in memory, under a random key stored in the user's session. Page, sort and direction
stay in the query string (``/studies?page=3&sort=patient_name``): they contain no patient
data, and the back button and reloads work without re-posting a form. The free text (a
patient name, ID or accession number) therefore never appears in a URL, a browser history,
a proxy or access log, or a Referer header, and it is not kept in the cookie either. A node
restart forgets saved filters; the list then shows everything again.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Session key under which the user's filter key is kept.
SESSION_KEY = "studies_filter"

STATES: dict[str, str] = {
    "receiving": "series still receiving",
    "complete": "complete, not yet routed",
    "routed": "routed",
    "unrouted": "no route matched",
    "job_queued": "job queued",
    "job_running": "job running",
    "job_failed": "job failed",
    "job_done": "job done",
    "delivery_pending": "delivery pending",
    "delivery_failed": "delivery failed",
    "delivered": "delivered",
}
SORTS: dict[str, str] = {
    "received": "Received",
    "patient_name": "Patient name",
    "patient_id": "Patient ID",
    "accession": "Accession",
}

StateName = Literal[
    "",
    "receiving",
    "complete",
    "routed",
    "unrouted",
    "job_queued",
    "job_running",
    "job_failed",
    "job_done",
    "delivery_pending",
    "delivery_failed",
    "delivered",
]
SortName = Literal["received", "patient_name", "patient_id", "accession"]
Direction = Literal["asc", "desc"]


class StudyFilter(BaseModel):
    """Which studies the list shows. Empty fields do not filter.

    Dates are UTC days of the first received instance, both ends included.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    date_from: dt.date | None = None
    date_to: dt.date | None = None
    state: StateName = ""
    model: str = Field("", max_length=64)
    modality: str = Field("", max_length=16)
    calling_ae: str = Field("", max_length=16)
    q: str = Field("", max_length=128, description="free text: patient ID, name or accession")

    def is_empty(self) -> bool:
        return self == StudyFilter()

    def describe(self) -> dict[str, str]:
        """Non-empty fields as text, for the audit entry of a list view."""
        return {k: str(v) for k, v in self.model_dump().items() if v not in (None, "")}


class FilterStore:
    """Filters by random key, in memory, expiring with the session that made them.

    Parameters
    ----------
    max_age
        Seconds a filter is kept after it was last used (the session lifetime).
    max_entries
        Bound on stored filters; the least recently used goes first.
    """

    def __init__(self, max_age: float, max_entries: int = 5000) -> None:
        self.max_age = max_age
        self.max_entries = max_entries
        self._items: dict[str, tuple[float, StudyFilter]] = {}
        self._lock = threading.Lock()

    def put(self, filt: StudyFilter, key: str | None = None) -> str:
        """Store a filter (under ``key`` if given and still valid) and return its key."""
        now = time.monotonic()
        with self._lock:
            if key is None or key not in self._items:
                key = secrets.token_urlsafe(16)
            self._items[key] = (now, filt)
            if len(self._items) > self.max_entries:
                self._expire(now)
            while len(self._items) > self.max_entries:
                oldest = min(self._items, key=lambda k: self._items[k][0])
                del self._items[oldest]
        return key

    def get(self, key: str | None) -> StudyFilter:
        """The filter under ``key``; an empty filter if unknown or expired."""
        if not key:
            return StudyFilter()
        now = time.monotonic()
        with self._lock:
            item = self._items.get(key)
            if item is None or item[0] < now - self.max_age:
                self._items.pop(key, None)
                return StudyFilter()
            self._items[key] = (now, item[1])
            return item[1]

    def drop(self, key: str | None) -> None:
        with self._lock:
            self._items.pop(key or "", None)

    def _expire(self, now: float) -> None:
        for key in [k for k, (t, _) in self._items.items() if t < now - self.max_age]:
            del self._items[key]
