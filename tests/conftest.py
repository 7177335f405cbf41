"""Shared fixtures: settings in a temporary folder, databases (SQLite and PostgreSQL), a
running node on a free port."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dicom_node.config import Settings, load_settings
from dicom_node.receive.pynetdicom_ext import configure_pydicom
from tests.peers import TlsFiles, free_port, make_tls_files

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tests read DICOM with the settings of the receiver and the workers, whether or not a
# test has started a receiver yet.
configure_pydicom()

POSTGRES_ADMIN_URL = os.environ.get(
    "DICOM_NODE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def make_settings(tmp_path: Path, **sections: Any) -> Settings:
    """Settings for a test: everything under tmp_path, a free port, short quiet period."""
    overrides: dict[str, Any] = {
        "node": {"data_dir": str(tmp_path / "data")},
        "scp": {"port": free_port()},
        "completion": {"quiet_seconds": 0.5, "scan_interval": 0.1},
        "workers": {"processes": 0, "poll_interval": 0.1},
        # Tests name their own routes and destinations; the embedded ones need models.
        "routes": [],
        "destinations": [],
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(overrides.get(key), dict):
            overrides[key] = {**overrides[key], **value}
        else:
            overrides[key] = value
    if "web" not in overrides and "web" in Settings.model_fields:
        overrides["web"] = {"enabled": False}
    return load_settings(environ={}, overrides=overrides)


def _postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3):
            return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A CA, a server and a client certificate it signed, and an untrusted one (PEM)."""
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    if not _postgres_available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL} (CI must start it)")
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}")
    import psycopg

    name = f"dn_test_{uuid.uuid4().hex[:10]}"
    conn = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Run a database test once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    url: str = request.getfixturevalue("postgres_url")
    # Each test gets empty tables: drop everything Alembic created in earlier tests.
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    return url


class NodeHandle:
    """A node started in this process, with helpers to look into its database."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.settings: Settings = node.settings
        self.port: int = node.scp.bound_port

    def query(self, statement: Any) -> list[Any]:
        with self.node.sessions() as session:
            return list(session.scalars(statement).all())

    def wait_until(self, predicate: Any, timeout: float = 30.0, what: str = "condition") -> None:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.1)
        raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Any]:
    """Factory: ``start_node(**sections)`` starts a node with test settings; all stop at the
    end of the test. The admin app (and its DICOMweb door) runs when the sections enable
    it, e.g. ``web={"enabled": True, "port": free_port()}``."""
    from dicom_node.node import Node

    started: list[Any] = []

    def _start(models: Any = None, **sections: Any) -> NodeHandle:
        settings = make_settings(tmp_path, **sections)
        node = Node(settings, models=models, web=settings.web.enabled)
        node.start()
        started.append(node)
        return NodeHandle(node)

    yield _start
    for node in started:
        node.stop()
