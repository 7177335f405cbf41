"""``start_web``: uvicorn in a thread on a real loopback port, and a clean stop."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.web import start_web
from tests.web.conftest import make_settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_start_and_stop(tmp_path: Path, sessions: sessionmaker[Session]) -> None:
    settings = make_settings(tmp_path, port=free_port())
    server = start_web(
        settings, sessions, status=lambda: {"scp_listening": True, "workers_alive": 1}
    )
    try:
        assert server.running
        health = httpx.get(f"{server.url}/healthz", timeout=5)
        assert health.status_code == 200
        assert "server" not in health.headers  # no version banner
        login = httpx.get(f"{server.url}/studies", timeout=5)
        assert login.status_code == 303 and login.headers["location"] == "/login"
    finally:
        server.stop()
    assert not server.thread.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/healthz", timeout=2)


def test_port_in_use(tmp_path: Path, sessions: sessionmaker[Session]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        settings = make_settings(tmp_path, port=port)
        with pytest.raises(RuntimeError, match="did not start"):
            start_web(settings, sessions)
