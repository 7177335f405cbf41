"""Serve the admin app with uvicorn in a background thread of the node process.

A thread (not a process) so the page shares the node's database engine and its live
``status`` callable; uvicorn's event loop runs in that thread, and the node's own threads
and worker processes are untouched. ``stop()`` asks uvicorn to finish open requests and
waits for the thread.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import LiveSettings, Settings, cannot_listen
from dicom_node.web.actions import WebActions
from dicom_node.web.app import create_app
from dicom_node.web.context import StatusFn

log = logging.getLogger(__name__)


class WebServer:
    """Handle of a running admin page: ``url``, ``stop()``."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, url: str) -> None:
        self.server = server
        self.thread = thread
        self.url = url

    @property
    def running(self) -> bool:
        return self.thread.is_alive() and self.server.started

    def stop(self, timeout: float = 10.0) -> None:
        """Finish open requests and stop; idempotent."""
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            # A long download keeps the graceful shutdown waiting: cut it.
            self.server.force_exit = True
            self.thread.join(timeout)


def _run(
    server: uvicorn.Server, sockets: list[socket.socket] | None, failure: list[BaseException]
) -> None:
    try:
        server.run(sockets=sockets)
    except BaseException as exc:  # uvicorn exits with SystemExit when it cannot bind
        failure.append(exc)


def bind_web(settings: Settings) -> socket.socket:
    """Bind and listen on ``[web] host:port`` for :func:`start_web`.

    The node binds its ports before its start-up cleanup, so a port in use stops it before
    anything changed, with one line instead of uvicorn's log and exit.

    Raises
    ------
    StartupError
        The address cannot be bound (port in use, host not of this machine); one line
        naming the setting.
    """
    web = settings.web
    # The address family as uvicorn chooses it, so the page listens where it did before.
    sock = socket.socket(socket.AF_INET6 if ":" in web.host else socket.AF_INET)
    try:
        # As uvicorn binds: a restart must not wait for the old connections' TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((web.host, web.port))
        sock.listen(2048)  # uvicorn's default backlog
    except OSError as exc:
        sock.close()
        raise cannot_listen("web", web.host, web.port, exc) from exc
    return sock


def start_web(
    settings: Settings | LiveSettings,
    sessions: sessionmaker[Session],
    actions: WebActions | None = None,
    status: StatusFn | None = None,
    *,
    sock: socket.socket | None = None,
    startup_timeout: float = 15.0,
    model_available: Callable[[str], bool] | None = None,
    on_queued: Callable[[], None] | None = None,
) -> WebServer:
    """Start the admin page on ``[web] host:port`` and return once it accepts connections.

    Parameters
    ----------
    sock
        A socket from :func:`bind_web` to serve on; without one uvicorn binds itself.
    model_available, on_queued
        The node's, for uploads (see :func:`dicom_node.web.create_app`).

    Raises
    ------
    RuntimeError
        uvicorn did not start (port in use, address not available) within the timeout.
    """
    web = LiveSettings.of(settings).current.web
    app = create_app(
        settings,
        sessions,
        actions=actions,
        status=status,
        model_available=model_available,
        on_queued=on_queued,
    )
    options: dict[str, Any] = {
        "host": web.host,
        "port": web.port,
        "log_level": "info",
        "access_log": True,  # paths hold UIDs at most: no patient data in this log
        "lifespan": "off",
        "server_header": False,
        # X-Forwarded-For is believed only from configured proxies; otherwise any local
        # process could pose as another address and dodge the login rate limit.
        "proxy_headers": bool(web.forwarded_allow_ips),
        "forwarded_allow_ips": list(web.forwarded_allow_ips) or None,
    }
    server = uvicorn.Server(uvicorn.Config(app, **options))
    failure: list[BaseException] = []
    thread = threading.Thread(
        target=_run,
        args=(server, [sock] if sock is not None else None, failure),
        name="dicom-node-web",
        daemon=True,
    )
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            reason = repr(failure[0]) if failure else "timeout"
            raise RuntimeError(f"admin page did not start on {web.host}:{web.port}: {reason}")
        time.sleep(0.02)
    host = f"[{web.host}]" if ":" in web.host else web.host
    url = f"http://{host}:{web.port}"
    log.info("admin page listening on %s", url)
    return WebServer(server, thread, url)
