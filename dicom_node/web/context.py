"""What every request handler needs, kept on ``app.state`` by the app factory.

One object instead of module globals, so several apps (tests, two nodes in one process)
never share a rate limiter, a filter store or a database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import LiveSettings, Settings
from dicom_node.receive.spool import Spool
from dicom_node.web.actions import WebActions
from dicom_node.web.cache import TtlValue
from dicom_node.web.config_edit import ConfigEditor
from dicom_node.web.filters import FilterStore
from dicom_node.web.health import HealthReport
from dicom_node.web.metrics import LatencyHistogram
from dicom_node.web.ratelimit import LoginLimiter

StatusFn = Callable[[], dict[str, Any]]


@dataclass
class WebContext:
    # The node's settings in force; routes and destinations change when an admin edits them.
    live: LiveSettings
    sessions: sessionmaker[Session]
    actions: WebActions
    status: StatusFn | None
    templates: Jinja2Templates
    # failed logins per (address, username) pair, and per address (see ``ratelimit``)
    pair_limiter: LoginLimiter
    address_limiter: LoginLimiter
    filters: FilterStore
    latency: LatencyHistogram
    # drop-down values of the studies filter (models, modalities, calling AEs), 60 s old at most
    choices: TtlValue[dict[str, list[str]]]
    # the last /healthz answer, ``[web] health_cache_seconds`` old at most
    health: TtlValue[HealthReport]
    # where the STOW-RS door stores instances (the node's spool; ``web.stow``)
    spool: Spool
    # edits of routes and destinations in the configuration file (one at a time)
    editor: ConfigEditor
    # which models have weights (routing an upload, as completion does; ``web.upload``)
    model_available: Callable[[str], bool]
    # wakes a worker when an upload's series queued jobs (None: the workers' poll finds them)
    on_queued: Callable[[], None] | None = None

    @property
    def settings(self) -> Settings:
        """The settings in force now (read once per request)."""
        return self.live.current


def get_context(request: Request) -> WebContext:
    """The app's context (a FastAPI dependency)."""
    ctx: WebContext = request.app.state.web
    return ctx


def get_db(request: Request) -> Iterator[Session]:
    """A database session for one request, closed when the response is sent."""
    with get_context(request).sessions() as session:
        yield session
