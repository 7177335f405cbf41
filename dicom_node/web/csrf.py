"""CSRF protection: a per-session token that every state-changing request must carry.

SameSite=Strict cookies already stop most cross-site posts; the token also covers browsers
and proxies that do not honour SameSite. Forms send it as the hidden field ``csrf_token``,
API clients that use the session cookie as the header ``X-CSRF-Token``. Requests
authenticated with a bearer token need none: a foreign site cannot make a browser send an
Authorization header. The DICOMweb door (``/dicomweb/``) never reads the session, only
bearer tokens, so it needs none either: without a token it answers 401, not 403.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

from fastapi import HTTPException, Request

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# The largest form body read to find the token: a form is parsed (an upload spooled to a
# temporary file) before any handler runs, so a bound here is the only one. The largest
# form is "test the routes on a file", one DICOM file.
MAX_FORM_BYTES = 512 * 1024 * 1024
SESSION_KEY = "csrf"
FIELD = "csrf_token"
HEADER = "x-csrf-token"
# Doors that authenticate by bearer token only (see ``web.stow``).
NO_SESSION_PREFIX = "/dicomweb/"
# Uploads whose form the handler streams itself (``web.upload``): parsing it here would
# read every file before the handler could bound it. Without the header, the token is
# checked by the handler from the form's field, before anything is stored (``verify``).
STREAMED_FORMS = frozenset({"/upload", "/api/predict"})


def ensure_token(session: dict[str, Any]) -> str:
    """The session's token, created on first use (also for the anonymous login page)."""
    token = session.get(SESSION_KEY)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        session[SESSION_KEY] = token
    return token


def has_bearer(request: Request) -> bool:
    return request.headers.get("authorization", "").lower().startswith("bearer ")


async def csrf_protect(request: Request) -> None:
    """App-wide dependency: refuse unsafe requests without the session's token (403)."""
    if (
        request.method in SAFE_METHODS
        or has_bearer(request)
        or request.url.path.startswith(NO_SESSION_PREFIX)
    ):
        return
    sent = request.headers.get(HEADER, "")
    if not sent and request.url.path in STREAMED_FORMS:
        request.state.csrf_deferred = True
        return
    if not sent:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            length = request.headers.get("content-length", "")
            if length.isdigit() and int(length) > MAX_FORM_BYTES:
                raise HTTPException(status_code=413, detail="request body too large")
            form = await request.form()
            value = form.get(FIELD)
            sent = value if isinstance(value, str) else ""
    verify(request, sent)


def verify(request: Request, sent: str) -> None:
    """Refuse (403) when ``sent`` is not the session's CSRF token."""
    expected = request.session.get(SESSION_KEY)
    if (
        not isinstance(expected, str)
        or not expected
        or not hmac.compare_digest(sent.encode(), expected.encode())
    ):
        raise HTTPException(status_code=403, detail="missing or invalid CSRF token")
