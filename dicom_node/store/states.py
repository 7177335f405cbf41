"""The states of series, jobs and deliveries, and the kinds of history events.

States are enums (``StrEnum``: they compare equal to their text, which is what the
database stores) and the database refuses any other value (CHECK constraints, migration
0003). Each state has one owner that moves it:

* ``SeriesState``: ``receive.index`` (RECEIVING, and back to it when a late instance
  reopens a series) and ``route.completion`` (COMPLETE, then ROUTED, UNROUTED or IGNORED);
* ``JobState``: ``process.queue`` alone;
* ``DeliveryState``: ``dispatch.delivery`` alone.

``EventKind`` names every event written to the history, so a grep for a kind finds the
line that writes it.
"""

from __future__ import annotations

from enum import StrEnum


class SeriesState(StrEnum):
    """receiving -> complete -> routed | unrouted | ignored (-> receiving, late instance)."""

    RECEIVING = "receiving"
    COMPLETE = "complete"
    ROUTED = "routed"
    UNROUTED = "unrouted"
    IGNORED = "ignored"  # our own objects (a PACS forwarded our results back)


# Series states after which a new instance is "late" (the series was already processed).
PROCESSED_SERIES_STATES = frozenset({SeriesState.ROUTED, SeriesState.UNROUTED, SeriesState.IGNORED})


class JobState(StrEnum):
    """queued -> running -> done | failed (running -> queued when its worker died).

    An operator may cancel a queued job (queued -> cancelled) and retry a failed or
    cancelled one (-> queued); both from the admin page, through ``process.queue``.
    """

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"  # migration 0005


OPEN_JOB_STATES = frozenset({JobState.QUEUED, JobState.RUNNING})


class DeliveryState(StrEnum):
    """pending -> done | failed (failed -> pending on a retry or a re-run)."""

    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class RefusalKind(StrEnum):
    """What the receiver refused (``receive.refusals``, table ``refusal``, migration 0005)."""

    CONNECTION = "connection"  # the TCP connection, before any PDU: host not allowed
    ASSOCIATION = "association"  # A-ASSOCIATE-RJ, or accepted with no usable context
    STORE = "store"  # a C-STORE answered with a failure status


class EventKind(StrEnum):
    """What an ``event`` row records; the text is what the database and the API show."""

    INSTANCE_RECEIVED = "instance.received"
    INSTANCE_DUPLICATE = "instance.duplicate"
    SERIES_REOPENED = "series.reopened"
    SERIES_COMPLETED = "series.completed"
    # A clean release of a release AE did not complete the series (the quiet period will).
    SERIES_RELEASE_IGNORED = "series.release_ignored"
    SERIES_ROUTED = "series.routed"
    SERIES_UNROUTED = "series.unrouted"
    SERIES_IGNORED = "series.ignored"
    SERIES_ROUTE_FAILED = "series.route_failed"
    JOB_QUEUED = "job.queued"
    JOB_STARTED = "job.started"
    JOB_REQUEUED = "job.requeued"
    JOB_FORWARD_QUEUED = "job.forward_queued"
    JOB_DONE = "job.done"
    JOB_FAILED = "job.failed"
    JOB_CANCELLED = "job.cancelled"
    JOB_RETRY_REQUESTED = "job.retry_requested"
    MODEL_RESULT = "model.result"
    DELIVERY_DONE = "delivery.done"
    DELIVERY_RETRY = "delivery.retry"
    DELIVERY_FAILED = "delivery.failed"
    DELIVERY_RETRY_REQUESTED = "delivery.retry_requested"


# The event written when a series reaches each of its routing outcomes.
SERIES_OUTCOME_EVENTS = {
    SeriesState.ROUTED: EventKind.SERIES_ROUTED,
    SeriesState.UNROUTED: EventKind.SERIES_UNROUTED,
    SeriesState.IGNORED: EventKind.SERIES_IGNORED,
}
