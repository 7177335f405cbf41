"""Operations an admin can start from the page: re-run a series, retry a delivery.

They go through the owners of those rows (``process.queue`` for jobs, ``dispatch.delivery``
for deliveries), so the page never runs a model or opens an association itself and a click
cannot stall the node. ``WebActions`` is the seam for the node: it can pass its own
implementation (for example one that also wakes a worker) to ``create_app``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.dispatch import delivery
from dicom_node.process import queue
from dicom_node.store.db import Delivery, Series, Study


class ActionError(ValueError):
    """The action does not apply (unknown series, not routed, delivery not failed...)."""


@runtime_checkable
class WebActions(Protocol):
    """What the page asks the node to do."""

    def rerun_series(self, series_uid: str) -> int:
        """Queue the series for processing again; returns the new job's id.

        Raises
        ------
        ActionError
            The series is unknown or has no route to run.
        """
        ...


class DefaultActions:
    """Re-run through the job queue (``process.queue.rerun_series``): a new generation."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def rerun_series(self, series_uid: str) -> int:
        try:
            jobs = queue.rerun_series(
                self.sessions, series_uid, reason="re-run requested on the admin page"
            )
        except queue.QueueError as exc:
            raise ActionError(str(exc)) from exc
        if not jobs:
            raise ActionError(f"series {series_uid}: its jobs are queued already")
        return jobs[0]


def routed_series(session: Session, study_uid: str) -> list[str]:
    """Series of a study that have a route (the ones a re-run can process)."""
    return list(
        session.scalars(
            select(Series.series_uid)
            .join(Study, Study.id == Series.study_id)
            .where(Study.study_uid == study_uid, Series.route_name.is_not(None))
            .order_by(Series.id)
        )
    )


def retry_delivery(session: Session, delivery_id: int, username: str) -> Delivery:
    """Put a failed delivery back in the queue, due now (``dispatch.delivery.retry_failed``).

    Raises
    ------
    ActionError
        Unknown delivery, or one that has not failed.
    """
    try:
        return delivery.retry_failed(session, delivery_id, requested_by=username)
    except delivery.DeliveryError as exc:
        raise ActionError(str(exc)) from exc


def rerun_study(
    web_actions: WebActions, session: Session, study_uid: str
) -> tuple[list[int], list[str]]:
    """Re-run every routed series of a study; returns the new job ids and the errors.

    Raises
    ------
    ActionError
        The study is unknown.
    """
    if session.scalar(select(Study.id).where(Study.study_uid == study_uid)) is None:
        raise ActionError(f"unknown study {study_uid}")
    jobs: list[int] = []
    errors: list[str] = []
    for series_uid in routed_series(session, study_uid):
        try:
            jobs.append(web_actions.rerun_series(series_uid))
        except ActionError as exc:
            errors.append(str(exc))
    if not jobs and not errors:
        errors.append("the study has no routed series to re-run")
    return jobs, errors
