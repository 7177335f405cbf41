"""Audit entries of the web app: who logged in, looked at which study, and did what."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from sqlalchemy.orm import Session

from dicom_node.store.audit import record
from dicom_node.web.auth import client_address


def audit(
    db: Session,
    request: Request,
    username: str,
    action: str,
    target: str = "",
    *,
    success: bool = True,
    detail: dict[str, Any] | None = None,
) -> None:
    """Write one audit entry with the request's client address and commit it.

    Committed on its own, before the response: a view is recorded even if rendering the page
    fails afterwards, and a failed action is recorded with ``success=False``.
    """
    record(
        db,
        username,
        action,
        target,
        client_address=client_address(request),
        success=success,
        detail=detail,
    )
