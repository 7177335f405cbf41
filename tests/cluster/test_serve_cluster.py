"""``dicom-node serve`` in cluster mode still runs everything in one process tree: the
receiver, the dispatcher and, as child processes, cluster workers for the routed models
whose weights are here; a SIGTERM stops them all."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import select

from dicom_node.store.db import ClusterMember, Job
from dicom_node.store.states import JobState
from tests.cluster.conftest import ROUTES, Cluster, delivered_once
from tests.cluster.fixtures import phantom_series
from tests.peers import have_orthanc, run_orthanc, storescu

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.postgres,
    pytest.mark.orthanc,
    pytest.mark.dcmtk,
    pytest.mark.skipif(not have_orthanc(), reason="Orthanc not installed"),
]


def test_serve_in_cluster_mode_runs_every_role(cluster: Cluster, tmp_path: Path) -> None:
    routes = [r for r in ROUTES if r["name"] == "phantom-fast"]
    with run_orthanc(tmp_path / "pacs", aet="ORTHANC") as pacs:
        cluster.pacs_port = pacs.dicom_port
        node = cluster.start("serve", ["serve"], health=True, routes=routes)
        paths = phantom_series(tmp_path / "push", "serve", 2, "PHANTOMFAST")
        assert storescu(node.scp_port or 0, paths, aet="MODALITY").returncode == 0

        def delivered() -> bool:
            jobs = cluster.scalars(select(Job))
            return (
                len(jobs) == 1
                and jobs[0].state == JobState.DONE
                and len(delivered_once(cluster)) >= 2
            )

        cluster.wait_until(delivered, 120, "the job and its deliveries")
        (job,) = cluster.scalars(select(Job))
        roles = {m.role: m for m in cluster.scalars(select(ClusterMember))}
        assert set(roles) == {"serve", "worker"}
        # The job ran in a worker child of this serve, not in serve itself.
        assert job.worker == roles["worker"].name and roles["worker"].pid != node.proc.pid
        with urllib.request.urlopen(f"http://127.0.0.1:{node.health_port}/healthz") as resp:
            health = json.loads(resp.read())
        assert health["role"] == "serve" and health["status"] == "ok", health
        assert all(count == 1 for count in delivered_once(cluster).values())
        node.stop()
        assert node.proc.returncode == 0
        # Every member left cleanly (the worker child too): nobody's jobs look abandoned.
        assert cluster.scalars(select(ClusterMember)) == []
