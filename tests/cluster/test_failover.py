"""The cluster survives its parts failing: a receiver or a worker SIGKILLed, RabbitMQ
stopped and started again. Each role is a real ``dicom-node`` process with its own data
folder; PostgreSQL, RabbitMQ, SeaweedFS (S3) and Orthanc (the PACS) are the real programs.
The small ONNX fixture models stand in for the real ones (the same code path, less CPU).
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from sqlalchemy import select

from dicom_node.store.db import Event, Instance, Job, Result, Series
from dicom_node.store.states import EventKind, JobState, SeriesState
from tests.cluster.conftest import Cluster, delivered_once
from tests.cluster.fixtures import phantom_series
from tests.peers import have_orthanc, run_orthanc, storescu

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.postgres,
    pytest.mark.orthanc,
    pytest.mark.dcmtk,
    pytest.mark.skipif(not have_orthanc(), reason="Orthanc not installed"),
]


def _jobs_done(cluster: Cluster, count: int) -> bool:
    jobs = cluster.scalars(select(Job))
    return len(jobs) >= count and all(j.state == JobState.DONE for j in jobs)


def _series_settled(cluster: Cluster) -> bool:
    """Every series routed (none still receiving or complete-but-unrouted)."""
    series = cluster.scalars(select(Series))
    return bool(series) and all(s.state == SeriesState.ROUTED for s in series)


def _result_objects(cluster: Cluster) -> set[str]:
    uids = set()
    for result in cluster.scalars(select(Result)):
        uids |= {obj["sop_instance_uid"] for obj in result.objects}
    return uids


def _all_delivered(cluster: Cluster) -> bool:
    objects = _result_objects(cluster)
    return bool(objects) and objects <= set(delivered_once(cluster))


def _assert_each_result_delivered_once(cluster: Cluster, pacs: object) -> set[str]:
    objects = _result_objects(cluster)
    sends = delivered_once(cluster)
    assert objects and set(sends) == objects
    assert all(count == 1 for count in sends.values()), sends
    held = pacs.sop_instance_uids()  # type: ignore[attr-defined]
    assert objects <= held
    return objects


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _send_until_killed(
    port: int, paths: list[Path], kill_after: int, victim: object
) -> tuple[set[str], list[Path]]:
    """Send one by one over one association; SIGKILL ``victim`` after ``kill_after``
    successes. Returns the SOP UIDs answered Success and the files not acknowledged."""
    ae = AE(ae_title="MODALITY")
    ds0 = pydicom.dcmread(paths[0], stop_before_pixels=True)
    ae.add_requested_context(ds0.SOPClassUID, [ds0.file_meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_NODE")
    assert assoc.is_established
    succeeded: set[str] = set()
    left: list[Path] = []
    for path in paths:
        if not assoc.is_established:
            left.append(path)
            continue
        status = assoc.send_c_store(path)
        if status is not None and int(getattr(status, "Status", -1)) == 0:
            succeeded.add(str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID))
            if len(succeeded) == kill_after:
                victim.kill()  # type: ignore[attr-defined]
        else:
            left.append(path)
    if assoc.is_established:
        assoc.release()
    return succeeded, left


def test_receiver_killed_during_a_push_loses_no_acknowledged_instance(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Two receivers behind one "address": the first is SIGKILLed in the middle of an
    association; the sender sends the rest to the second. Every instance that got Success
    (from either) is stored in S3, indexed and processed, and every result is delivered
    once. The last processing of the series saw every acknowledged instance: when the
    sender's switch to the second receiver outlasts the quiet period, the series completes
    on its first instances and the rest reopen it (late instances, a new generation, as
    documented), so the series is waited on until nothing of it is receiving any more.
    Also: each role's /healthz and /metrics report the role and the queues."""
    with run_orthanc(tmp_path / "pacs", aet="ORTHANC") as pacs:
        cluster.pacs_port = pacs.dicom_port
        first = cluster.start("receiver-1", ["receive"])
        second = cluster.start("receiver-2", ["receive"], health=True)
        worker = cluster.start("worker", ["worker", "--models", "phantom-fast"], health=True)
        cluster.start("dispatcher", ["dispatch"])
        paths = phantom_series(tmp_path / "push", "killrcv", 8, "PHANTOMFAST")
        succeeded, left = _send_until_killed(first.scp_port or 0, paths, 3, first)
        assert len(succeeded) >= 3 and left
        rest = storescu(second.scp_port or 0, left, aet="MODALITY")
        assert rest.returncode == 0, rest.stderr
        succeeded |= {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in left}
        cluster.wait_until(
            lambda: _series_settled(cluster) and _jobs_done(cluster, 1), 120, "the series' jobs"
        )
        cluster.wait_until(lambda: _all_delivered(cluster), 60, "deliveries")

        instances = cluster.scalars(select(Instance))
        stored = {i.sop_instance_uid: i.path for i in instances}
        assert succeeded <= set(stored)
        assert all(path.startswith(f"s3://{cluster.bucket}/spool/") for path in stored.values())
        job = max(cluster.scalars(select(Job)), key=lambda j: j.generation)
        (result,) = cluster.scalars(select(Result).where(Result.job_id == job.id))
        # The last job saw every acknowledged instance, whichever receiver took it.
        assert {s["sop_instance_uid"] for s in result.slice_scores} >= succeeded
        assert job.worker.startswith("worker@") and job.worker.endswith(worker.member)
        objects = _assert_each_result_delivered_once(cluster, pacs)
        assert all(o["path"].startswith(f"s3://{cluster.bucket}/results/") for o in result.objects)
        assert len(objects) >= 2  # an SR and a Secondary Capture

        code, body = _get(f"http://127.0.0.1:{second.health_port}/healthz")
        health = json.loads(body)
        assert code == 200 and health["role"] == "receive" and health["checks"]["receiver"]
        code, body = _get(f"http://127.0.0.1:{worker.health_port}/healthz")
        health = json.loads(body)
        assert code == 200 and health["role"] == "worker"
        assert health["checks"]["model:phantom-fast"] and health["checks"]["broker"]
        code, body = _get(f"http://127.0.0.1:{worker.health_port}/metrics")
        text = body.decode()
        queue = f'queue="{cluster.prefix}.model.phantom-fast"'
        assert code == 200
        assert f"dicom_node_queue_workers{{{queue}}} 1.0" in text
        assert f"dicom_node_queue_messages{{{queue}}} 0.0" in text
        assert f'dicom_node_queue_jobs{{{queue},state="queued"}} 0.0' in text
        assert 'dicom_node_cluster_members{role="receive"} 1.0' in text  # one was killed


def test_worker_killed_mid_job_the_job_completes_on_the_other_worker(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Two workers of the same (slow) model; the one running the job is SIGKILLed. The
    broker gives the unacknowledged task to the other, which takes the job over once the
    dead one's heartbeat is stale; the results are delivered once. Storage here is the
    other option: one shared POSIX folder for the spool and the results."""
    cluster.shared = tmp_path / "shared"
    with run_orthanc(tmp_path / "pacs", aet="ORTHANC") as pacs:
        cluster.pacs_port = pacs.dicom_port
        receiver = cluster.start("receiver", ["receive"])
        workers = {
            name: cluster.start(name, ["worker", "--models", "phantom-slow"])
            for name in ("worker-a", "worker-b")
        }
        cluster.start("dispatcher", ["dispatch"])
        paths = phantom_series(tmp_path / "push", "killwrk", 12, "PHANTOMSLOW")
        assert storescu(receiver.scp_port or 0, paths, aet="MODALITY").returncode == 0

        def running() -> bool:
            return any(j.state == JobState.RUNNING for j in cluster.scalars(select(Job)))

        cluster.wait_until(running, 60, "the job to start")
        (job,) = cluster.scalars(select(Job))
        (victim,) = [w for w in workers.values() if job.worker.endswith(w.member)]
        (survivor,) = [w for w in workers.values() if w is not victim]
        victim.kill()
        cluster.wait_until(lambda: _jobs_done(cluster, 1), 120, "the job on the other worker")
        cluster.wait_until(lambda: _all_delivered(cluster), 60, "deliveries")

        (job,) = cluster.scalars(select(Job))
        assert job.worker.endswith(survivor.member) and job.attempts == 2
        requeued = cluster.scalars(select(Event).where(Event.kind == EventKind.JOB_REQUEUED))
        assert len(requeued) == 1 and victim.member in requeued[0].detail["reason"]
        assert {r.model_id for r in cluster.scalars(select(Result))} == {"phantom-slow"}
        _assert_each_result_delivered_once(cluster, pacs)
        assert all(
            str(i.path).startswith(str(cluster.shared / "spool"))
            for i in cluster.scalars(select(Instance))
        )


def _rabbitmq(action: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", action], check=True, capture_output=True, timeout=120)


def test_rabbitmq_stopped_and_started_again_loses_nothing_and_sends_nothing_twice(
    cluster: Cluster, tmp_path: Path
) -> None:
    """RabbitMQ is stopped while series are being processed and while new ones arrive
    (their jobs are committed but cannot be published), then started again: every job runs
    (the durable queue kept what it held; the sweep republishes what it never got) and every
    result is delivered exactly once."""
    with run_orthanc(tmp_path / "pacs", aet="ORTHANC") as pacs:
        cluster.pacs_port = pacs.dicom_port
        receiver = cluster.start("receiver", ["receive"])
        cluster.start("worker", ["worker", "--models", "phantom-fast"])
        cluster.start("dispatcher", ["dispatch"])
        before = [phantom_series(tmp_path / "a", f"before{i}", 2, "PHANTOMFAST") for i in range(3)]
        for paths in before:
            assert storescu(receiver.scp_port or 0, paths, aet="MODALITY").returncode == 0
        cluster.wait_until(lambda: len(cluster.scalars(select(Job))) >= 1, 30, "a first job")
        stopped = False
        try:
            _rabbitmq("stop_app")
            stopped = True
            during = [
                phantom_series(tmp_path / "b", f"during{i}", 2, "PHANTOMFAST") for i in range(2)
            ]
            for paths in during:
                assert storescu(receiver.scp_port or 0, paths, aet="MODALITY").returncode == 0
            cluster.wait_until(
                lambda: len(cluster.scalars(select(Job))) == 5, 30, "the jobs of the outage"
            )
            time.sleep(3)  # past republish_after: the sweep finds them but the broker is away
        finally:
            if stopped:
                _rabbitmq("start_app")
        cluster.wait_until(lambda: _jobs_done(cluster, 5), 120, "every job after the restart")
        cluster.wait_until(lambda: _all_delivered(cluster), 60, "deliveries")
        time.sleep(3)  # copies of tasks still in the queue must change nothing
        jobs = cluster.scalars(select(Job))
        assert len(jobs) == 5 and all(j.state == JobState.DONE for j in jobs)
        assert len(cluster.scalars(select(Result))) == 5
        _assert_each_result_delivered_once(cluster, pacs)


def test_worker_for_a_model_without_weights_refuses_to_start(cluster: Cluster) -> None:
    for models, expected in (
        (["bone-xray-cnn"], "worker: model bone-xray-cnn has no weights on this host"),
        (["no-such-model"], "worker: unknown model 'no-such-model'"),
    ):
        role = cluster.start(f"worker-{models[0]}", ["worker", "--models", *models], wait=False)
        assert role.proc.wait(timeout=60) == 2
        lines = role.output().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"dicom-node: {expected}"), lines
        assert "Traceback" not in role.output()
