"""Kill the serving process (SIGKILL) in the middle of a multi-series push, restart it:
nothing that got a Success answer is lost, and every routed series is delivered once."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from dicom_node.store.db import Delivery, Event, Instance
from tests.dicom_files import pydicom_file
from tests.peers import free_port, have_orthanc, run_orthanc, wait_for_port

pytestmark = [
    pytest.mark.skipif(not have_orthanc(), reason="Orthanc not installed"),
    pytest.mark.slow,
]


def _config(tmp_path: Path, port: int, pacs_port: int) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(
        f"""
[node]
ae_title = "DICOM_NODE"
data_dir = "{tmp_path / "data"}"
[scp]
port = {port}
[completion]
quiet_seconds = 1.0
scan_interval = 0.2
[workers]
processes = 1
poll_interval = 0.2
[web]
enabled = false
[[destinations]]
name = "pacs"
ae_title = "ORTHANC"
host = "127.0.0.1"
port = {pacs_port}
backoff_seconds = 0.5
backoff_max = 2
[[routes]]
name = "forward-ct"
match = {{ Modality = "^CT$" }}
forward = true
destinations = ["pacs"]
"""
    )
    return path


def _serve(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DICOM_NODE_LOG_LEVEL": "INFO"}
    with open(log, "ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "dicom_node.cli", "--config", str(config), "serve"],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
        )


def _study(series: int, per_series: int) -> list[Any]:
    base = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    study_uid = generate_uid()
    out = []
    for s in range(series):
        series_uid = generate_uid()
        for i in range(per_series):
            ds = copy.deepcopy(base)
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = s + 1
            ds.InstanceNumber = i + 1
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            out.append(ds)
    return out


def _push(
    port: int, datasets: list[Any], acked: list[str], kill_after: int | None, proc: Any
) -> None:
    """Send one by one; SIGKILL the server right after the ``kill_after``-th Success."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(datasets[0].SOPClassUID, [datasets[0].file_meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_NODE")
    assert assoc.is_established
    for ds in datasets:
        if not assoc.is_established:
            break
        status = assoc.send_c_store(ds)
        if status is not None and status.get("Status") == 0:
            acked.append(str(ds.SOPInstanceUID))
            if kill_after is not None and len(acked) == kill_after:
                proc.send_signal(signal.SIGKILL)
    if assoc.is_established:
        assoc.release()


def test_sigkill_mid_push_loses_nothing_and_delivers_once(tmp_path: Path) -> None:
    with run_orthanc(tmp_path / "orthanc") as pacs:
        port = free_port()
        config = _config(tmp_path, port, pacs.dicom_port)
        log = tmp_path / "serve.log"
        proc = _serve(config, log)
        wait_for_port(port, timeout=60)
        datasets = _study(series=3, per_series=15)
        acked: list[str] = []
        pusher = threading.Thread(target=_push, args=(port, datasets, acked, 20, proc))
        pusher.start()
        pusher.join(timeout=120)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        assert 20 <= len(acked) < len(datasets), "the kill should land mid-push"

        # Every acknowledged instance is on disk and indexed, before any restart.
        engine = create_engine(f"sqlite:///{tmp_path / 'data' / 'dicom-node.db'}")
        with Session(engine) as session:
            rows = {i.sop_instance_uid: i.path for i in session.scalars(select(Instance))}
        engine.dispose()
        for uid in acked:
            assert uid in rows, f"acknowledged instance {uid} not indexed"
            assert Path(rows[uid]).is_file()
            assert pydicom.dcmread(rows[uid]).SOPInstanceUID == uid

        # Restart; the sender (like a PACS) re-sends what was not acknowledged.
        proc = _serve(config, log)
        try:
            wait_for_port(port, timeout=60)
            rest = [ds for ds in datasets if str(ds.SOPInstanceUID) not in set(acked)]
            resent: list[str] = []
            _push(port, rest, resent, None, None)
            assert len(resent) == len(rest)
            pacs.wait_for_instances(len(datasets), timeout=90)
            assert pacs.sop_instance_uids() == {str(ds.SOPInstanceUID) for ds in datasets}
            engine = create_engine(f"sqlite:///{tmp_path / 'data' / 'dicom-node.db'}")
            with Session(engine) as session:

                def all_done() -> bool:
                    states = session.scalars(select(Delivery.state)).all()
                    session.expire_all()
                    return len(states) == len(datasets) and set(states) == {"done"}

                import time

                deadline = time.monotonic() + 60
                while not all_done() and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert all_done()
                done_events = Counter(
                    e.sop_instance_uid
                    for e in session.scalars(select(Event).where(Event.kind == "delivery.done"))
                )
            engine.dispose()
            assert set(done_events) == {str(ds.SOPInstanceUID) for ds in datasets}
            assert max(done_events.values()) == 1, "an instance was delivered twice"
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
