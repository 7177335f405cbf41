"""Operations an admin can start from the page: re-run a series, retry a delivery.

They only change rows (a queued job, a pending delivery) that the workers and the delivery
loop already poll for, so the page never runs a model or opens an association itself and a
click cannot stall the node. ``WebActions`` is the seam for the node: it can pass its own
implementation (for example one that also wakes a worker) to ``create_app``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.store import history
from dicom_node.store.db import Delivery, Job, Series, Study, utcnow


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
    """Re-run by inserting a queued job for a new generation of the series.

    A new generation (not a second job of the same one) because results are per generation:
    the new SR replaces the previous one and references it as its predecessor, exactly as
    when late instances reopen a series.
    """

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def rerun_series(self, series_uid: str) -> int:
        with self.sessions() as session:
            series = session.scalar(
                select(Series).where(Series.series_uid == series_uid).with_for_update()
            )
            if series is None:
                raise ActionError(f"unknown series {series_uid}")
            if not series.route_name:
                raise ActionError(f"series {series_uid} has no route (state {series.state})")
            study_uid = session.scalar(select(Study.study_uid).where(Study.id == series.study_id))
            series.generation += 1
            # A series taken by several routes (``continue = true``) records them all,
            # comma-separated; each gets its own job, as at completion.
            job_ids = []
            for route_name in series.route_name.split(","):
                job = Job(
                    series_id=series.id,
                    generation=series.generation,
                    route_name=route_name,
                    state="queued",
                )
                session.add(job)
                session.flush()
                job_ids.append(job.id)
                history.record(
                    session,
                    "job.queued",
                    study_uid=study_uid or "",
                    series_uid=series_uid,
                    job_id=job.id,
                    generation=series.generation,
                    route=route_name,
                    reason="re-run requested on the admin page",
                )
            session.commit()
            return job_ids[0]


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
    """Put a failed delivery back in the queue, due now.

    The attempt count and the last error are kept (the history of what failed stays
    visible); the delivery loop makes one more attempt, and the Event says who asked.

    Raises
    ------
    ActionError
        Unknown delivery, or one that has not failed.
    """
    delivery = session.get(Delivery, delivery_id)
    if delivery is None:
        raise ActionError(f"unknown delivery {delivery_id}")
    if delivery.state != "failed":
        raise ActionError(f"delivery {delivery_id} is {delivery.state}, not failed")
    delivery.state = "pending"
    delivery.next_attempt_at = utcnow()
    history.record(
        session,
        "delivery.retry_requested",
        study_uid=delivery.study_uid,
        sop_instance_uid=delivery.sop_instance_uid,
        job_id=delivery.job_id,
        delivery_id=delivery.id,
        destination=delivery.destination,
        attempts=delivery.attempts,
        requested_by=username,
    )
    session.commit()
    return delivery


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
