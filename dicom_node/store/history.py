"""Event rows: the history every admin view and audit question is answered from."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from dicom_node.store.db import Event
from dicom_node.store.states import EventKind


def record(
    session: Session,
    kind: EventKind,
    *,
    study_uid: str = "",
    series_uid: str = "",
    sop_instance_uid: str = "",
    job_id: int | None = None,
    delivery_id: int | None = None,
    duration_ms: float | None = None,
    **detail: Any,
) -> Event:
    """Add an event to the session; the caller's transaction commits it with the change it
    describes, so history never claims a step that did not happen."""
    event = Event(
        kind=kind,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_instance_uid=sop_instance_uid,
        job_id=job_id,
        delivery_id=delivery_id,
        duration_ms=duration_ms,
        detail=detail,
    )
    session.add(event)
    return event
