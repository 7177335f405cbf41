"""The app factory: one FastAPI application per node (or per test), no globals.

Layers, outermost first: security headers on every response; the signed session cookie;
an app-wide CSRF check on every unsafe request; then the routers (login, pages, admin
operations, JSON API, health and metrics, the DICOMweb door ``/dicomweb`` and the upload
door ``/upload`` + ``/api/predict``). Every route except ``/login``, ``/healthz``,
``/metrics`` (see ``system``) and the static files needs a user; ``/dicomweb`` takes
only bearer tokens (``stow``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import HTTPException
from starlette.middleware.sessions import SessionMiddleware

from dicom_node.config import LiveSettings, Settings
from dicom_node.receive.spool import Spool
from dicom_node.route.waits import model_availability
from dicom_node.web import (
    api,
    console_pages,
    editor,
    login,
    operations,
    pages,
    predict,
    stow,
    system,
    upload_pages,
)
from dicom_node.web.actions import DefaultActions, WebActions
from dicom_node.web.audit import audit
from dicom_node.web.auth import AdminRequiredError, LoginRequiredError
from dicom_node.web.cache import TtlValue
from dicom_node.web.config_edit import ConfigEditor
from dicom_node.web.context import StatusFn, WebContext
from dicom_node.web.csrf import csrf_protect
from dicom_node.web.filters import FilterStore
from dicom_node.web.metrics import LatencyHistogram
from dicom_node.web.ratelimit import LoginLimiter
from dicom_node.web.secret import session_secret
from dicom_node.web.security import SecurityHeaders
from dicom_node.web.templating import make_templates, render

STATIC_DIR = Path(__file__).parent / "static"
SESSION_COOKIE = "dicom_node_session"


async def _login_required(request: Request, exc: Exception) -> Response:
    return RedirectResponse("/login", status_code=303)


def _admin_required(request: Request, exc: Exception) -> Response:
    """403 for a viewer; the refused attempt is audited (it may be probing)."""
    ctx: WebContext = request.app.state.web
    user = getattr(request.state, "user", None)
    with ctx.sessions() as db:
        audit(
            db,
            request,
            user.username if user else "",
            "forbidden",
            request.url.path,
            success=False,
            detail={"method": request.method},
        )
    return render(request, "error.html", {"message": "This needs the admin role."}, status_code=403)


async def _http_error(request: Request, exc: Exception) -> Response:
    """HTML error pages for the browser, JSON for the API and other clients."""
    assert isinstance(exc, HTTPException)
    wants_html = "text/html" in request.headers.get("accept", "")
    if request.url.path.startswith("/api") or not wants_html or exc.status_code == 401:
        return await http_exception_handler(request, exc)
    return render(request, "error.html", {"message": str(exc.detail)}, status_code=exc.status_code)


def create_app(
    settings: Settings | LiveSettings,
    sessions: sessionmaker[Session],
    *,
    actions: WebActions | None = None,
    status: StatusFn | None = None,
    model_available: Callable[[str], bool] | None = None,
    on_queued: Callable[[], None] | None = None,
) -> FastAPI:
    """Build the admin application.

    Parameters
    ----------
    settings
        Node settings; ``settings.web`` configures sessions and rate limits, ``routes``
        feed the models page, ``spool_dir`` the health check. The node passes its
        ``LiveSettings``: routes and destinations edited on the page go into force there.
    sessions
        Session factory of the node's database (schema at the newest migration).
    actions
        What re-run does; default: insert a queued job (``DefaultActions``).
    status
        Called by ``/healthz`` and ``/metrics`` for live node state: a dict with
        ``scp_listening``, ``models``, ``workers_alive`` and optionally ``receive``
        (``instances``, ``bytes``, ``associations``).
    model_available, on_queued
        The node's: which models have weights (an upload is routed as completion routes
        a series), and the workers' doorbell, rung when an upload queued jobs. Default:
        the weights found in ``models_dir`` now, and no doorbell (the workers' poll).
    """
    live = LiveSettings.of(settings)
    web = live.current.web
    app = FastAPI(
        title="dicom-node admin API",
        version="1",
        description="History, results and operations of a dicom-node. Not for diagnostic use.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served by api.openapi, behind authentication
        dependencies=[Depends(csrf_protect)],
    )
    app.state.web = WebContext(
        live=live,
        sessions=sessions,
        actions=actions if actions is not None else DefaultActions(sessions),
        status=status,
        templates=make_templates(),
        pair_limiter=LoginLimiter(
            web.login_rate_limit, web.login_rate_window, web.login_throttle_entries
        ),
        address_limiter=LoginLimiter(
            web.login_address_limit, web.login_rate_window, web.login_throttle_entries
        ),
        filters=FilterStore(max_age=web.session_max_age),
        latency=LatencyHistogram(),
        choices=TtlValue(60.0),
        health=TtlValue(web.health_cache_seconds),
        spool=Spool(live.current.spool_dir),
        editor=ConfigEditor(live),
        model_available=model_available or model_availability(live.current),
        on_queued=on_queued,
    )
    app.add_middleware(
        SessionMiddleware,
        secret_key=session_secret(web.secret_key, sessions),
        session_cookie=SESSION_COOKIE,
        max_age=web.session_max_age,
        same_site="strict",
        https_only=web.https_only,
    )
    app.add_middleware(SecurityHeaders, hsts=web.https_only)
    app.add_exception_handler(LoginRequiredError, _login_required)
    app.add_exception_handler(AdminRequiredError, _admin_required)
    app.add_exception_handler(HTTPException, _http_error)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    for module in (login, pages, console_pages, editor, operations, api, system):
        app.include_router(module.router)
    if live.current.dicomweb.enabled:
        app.include_router(stow.router)
    if live.current.upload.enabled:
        app.include_router(upload_pages.router)
        app.include_router(predict.router)
    return app
