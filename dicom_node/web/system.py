"""``/healthz`` and ``/metrics``: the endpoints monitoring reads, outside the login.

``/healthz`` answers anyone, from a cache, with no paths, ports, versions or model names
(see ``health``); a logged-in user or a bearer token also gets the details.

Decision on ``/metrics``: it carries counts only (no patient data), so it answers without
login when the page listens on loopback only (``[web] host`` = 127.0.0.1, ::1 or localhost:
only this machine, e.g. a local Prometheus agent, can reach it). On any other bind address
it needs a bearer token or a session, like the API. A reverse proxy in front of a loopback
bind should not forward ``/metrics``.
"""

from __future__ import annotations

import ipaddress

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.orm import Session

from dicom_node.web import health
from dicom_node.web.auth import SESSION_USER, optional_user
from dicom_node.web.context import get_context, get_db
from dicom_node.web.metrics import render_metrics

router = APIRouter(include_in_schema=False)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@router.get("/healthz")
def healthz(request: Request, db: Session = Depends(get_db)) -> Response:
    """The cached health report: the state and booleans for anyone, details for a user.

    An anonymous call without a cookie or an Authorization header touches neither the
    database nor the disk (the report is at most ``health_cache_seconds`` old); the user is
    looked up only when the caller sends credentials.
    """
    ctx = get_context(request)
    report = ctx.health.get(lambda: health.check(ctx.settings, ctx.sessions, ctx.status))
    identified = SESSION_USER in request.session or "authorization" in request.headers
    body = report.full() if identified and optional_user(request, db) else report.public()
    return JSONResponse(body, status_code=report.state.http_status)


@router.get("/metrics")
def metrics(request: Request, db: Session = Depends(get_db)) -> Response:
    ctx = get_context(request)
    if not is_loopback(ctx.settings.web.host) and optional_user(request, db) is None:
        return JSONResponse(
            {"detail": "authentication required"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    body = render_metrics(ctx.sessions, ctx.status, ctx.latency)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
