"""One node per data folder, and ports in use: a ``serve`` that cannot start says so in one
line, exits with 2 and changes nothing.

Real ``dicom-node serve`` processes on loopback ports: the first node holds its data folder
while a second one tries the same folder, then the same port; after a SIGKILL of the first,
the kernel has dropped its lock and a new node starts on the folder.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, select
from sqlalchemy.orm import Session

from dicom_node.config import StartupError
from dicom_node.node import Node
from dicom_node.store.db import Job, Series, Study
from dicom_node.store.lock import DataFolderLock
from tests.conftest import make_settings
from tests.peers import free_port

READY = "Ctrl-C stops."


def _config(folder: Path, data_dir: Path, port: int, processes: int = 0) -> Path:
    """A node with nothing to load (no routes, no destinations), so it starts fast."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "node.toml"
    path.write_text(
        f"""
routes = []
destinations = []
[node]
data_dir = "{data_dir}"
[scp]
host = "127.0.0.1"
port = {port}
[workers]
processes = {processes}
poll_interval = 0.2
[web]
enabled = false
"""
    )
    return path


def _serve(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "dicom_node.cli", "--config", str(config), "serve"],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )


def _wait_ready(proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    """Until ``serve`` printed its banner: start() returned, the recovery is over."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if READY in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            pytest.fail(f"serve exited with {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.1)
    pytest.fail(f"serve not ready after {timeout} s:\n{log.read_text()}")


def _serve_fails(config: Path) -> str:
    """Run a ``serve`` that must refuse to start; its stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "--config", str(config), "serve"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("dicom-node: ") and done.stderr.count("\n") == 1, done.stderr
    return done.stderr


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    data_dir: Path
    port: int
    config: Path
    log: Path


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A node with one worker process, caught in the middle of its work: a file being
    received in ``spool/.incoming`` and a job marked running."""
    folder = tmp_path_factory.mktemp("serve")
    data_dir = (folder / "data").resolve()
    port = free_port()
    config = _config(folder, data_dir, port, processes=1)
    log = folder / "first.log"
    proc = _serve(config, log)
    try:
        _wait_ready(proc, log)
        (data_dir / "spool" / ".incoming" / "receiving.part").write_bytes(b"\x00" * 64)
        engine = create_engine(f"sqlite:///{data_dir / 'dicom-node.db'}")
        with Session(engine) as session:
            study = Study(study_uid="1.2.3")
            series = Series(series_uid="1.2.3.4", study=study, state="routed")
            session.add_all([study, series])
            session.flush()
            session.add(Job(series_id=series.id, route_name="r", state="running", worker="w9"))
            session.commit()
        engine.dispose()
        yield Running(proc, data_dir, port, config, log)
    finally:
        _stop(proc)


def test_second_node_on_a_folder_in_use_refuses_and_touches_nothing(
    running: Running, tmp_path: Path
) -> None:
    config = _config(tmp_path, running.data_dir, free_port())
    err = _serve_fails(config)
    assert f"data folder {running.data_dir} is in use" in err
    assert f"pid {running.proc.pid}" in err and "started " in err
    # The first node's partial file and running job are as it left them.
    assert (running.data_dir / "spool" / ".incoming" / "receiving.part").is_file()
    engine = create_engine(f"sqlite:///{running.data_dir / 'dicom-node.db'}")
    with Session(engine) as session:
        assert session.scalars(select(Job.state)).all() == ["running"]
    engine.dispose()
    assert running.proc.poll() is None


def test_port_in_use_names_the_setting(running: Running, tmp_path: Path) -> None:
    config = _config(tmp_path, tmp_path / "other-data", running.port)
    err = _serve_fails(config)
    assert f"scp.port {running.port} on 127.0.0.1 is already in use" in err
    assert "DICOM_NODE__SCP__PORT" in err
    # It let go of its own folder on the way out.
    DataFolderLock(tmp_path / "other-data").acquire()


def test_after_sigkill_the_folder_is_free(running: Running, tmp_path: Path) -> None:
    """The kernel drops the lock with the process (and its worker never held it)."""
    running.proc.send_signal(signal.SIGKILL)
    running.proc.wait(timeout=30)
    log = tmp_path / "second.log"
    proc = _serve(running.config, log)
    try:
        _wait_ready(proc, log)
        # This start is a real restart: it recovers what the killed node left.
        assert list((running.data_dir / "spool" / ".incoming").iterdir()) == []
        holder = (running.data_dir / "node.lock").read_text()
        assert f'"pid": {proc.pid}' in holder
    finally:
        _stop(proc)
    assert proc.returncode == 0, log.read_text()
    assert (running.data_dir / "node.lock").read_text() == ""


# -- in this process: cheaper checks of the parts ----------------------------------------


def test_lock_is_exclusive_and_not_inherited(tmp_path: Path) -> None:
    """A second lock on the folder fails with the holder; a child process started while the
    lock was held (even with ``close_fds=False``) does not keep it after release."""
    first = DataFolderLock(tmp_path)
    first.acquire()
    with pytest.raises(StartupError, match=rf"in use by another node \(pid {os.getpid()} on "):
        DataFolderLock(tmp_path).acquire()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], close_fds=False)
    try:
        first.release()
        second = DataFolderLock(tmp_path)
        second.acquire()
        second.release()
    finally:
        child.kill()
        child.wait()


def test_web_port_in_use_stops_everything_started(tmp_path: Path) -> None:
    """A taken admin page port: one line naming ``web.port``, and the SCP port and the
    folder are free again (nothing half-started)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        web_port = taken.getsockname()[1]
        settings = make_settings(tmp_path, web={"enabled": True, "port": web_port})
        node = Node(settings, web=True)
        with pytest.raises(StartupError) as caught:
            node.start()
    message = str(caught.value)
    assert message == (
        f"web.port {web_port} on 127.0.0.1 is already in use; choose another with web.port "
        "in the configuration file or DICOM_NODE__WEB__PORT"
    )
    assert not node.lock.held
    with socket.socket() as probe:
        probe.bind((settings.scp.host, settings.scp.port))  # the SCP let its port go
    # Nothing ran: not even the schema was created.
    engine = create_engine(settings.database_url)
    assert inspect(engine).get_table_names() == []
    engine.dispose()
