"""The one writer of the ``audit`` table: who did or looked at what, from where.

The web app (``dicom_node.web.audit``) and the ``dicom-node users`` command both record
here, so an account change made in a shell is as visible on the audit page as one made in
a browser.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from dicom_node.store.db import AuditEntry

# Client address recorded for actions taken with the command-line interface.
CLI_ADDRESS = "cli"


def record(
    session: Session,
    username: str,
    action: str,
    target: str = "",
    *,
    client_address: str = "",
    success: bool = True,
    detail: dict[str, Any] | None = None,
) -> None:
    """Write one audit entry and commit it.

    Committed on its own: an entry is kept even if what follows fails. Values are cut to
    their column widths rather than refused, so an over-long username typed at the login
    form is still recorded (in part) instead of losing the entry.
    """
    session.add(
        AuditEntry(
            username=username[:64],
            action=action[:32],
            target=target,
            client_address=client_address[:64],
            success=success,
            detail=detail or {},
        )
    )
    session.commit()
