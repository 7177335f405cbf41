"""The cluster of the issue with the real models: two receivers, a worker holding the chest
model, a worker holding the brain model, two dispatchers; PostgreSQL, RabbitMQ, SeaweedFS (S3)
and Orthanc as the PACS. Studies pushed by DCMTK ``storescu`` to both receivers come back as
SR + SC exactly once, each processed on the host that holds its model.

The real models load once per worker process (TensorFlow's Xception, onnxruntime's VGG16):
this is the one cluster test that pays for them.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from dicom_node.store.db import Job, Result, Series
from dicom_node.store.states import JobState
from tests.cluster.conftest import Cluster, delivered_once
from tests.cluster.fixtures import brain_study, chest_study
from tests.peers import have_orthanc, run_orthanc, storescu

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.postgres,
    pytest.mark.orthanc,
    pytest.mark.dcmtk,
    pytest.mark.slow,
    pytest.mark.skipif(not have_orthanc(), reason="Orthanc not installed"),
]

SR_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.33"}
SC_CLASSES = {"1.2.840.10008.5.1.4.1.1.7"}


def test_studies_through_two_receivers_are_processed_where_their_model_is(
    cluster: Cluster, tmp_path: Path
) -> None:
    from inference.registry import load_manifests

    manifests = load_manifests(cluster.models_dir)
    for model_id in ("chest-xray-pneumonia", "brain-mri-tumor"):
        if not manifests[model_id].weights_available():
            pytest.skip(f"weights of {model_id} are not installed")
    with run_orthanc(tmp_path / "pacs", aet="ORTHANC") as pacs:
        cluster.pacs_port = pacs.dicom_port
        receivers = [cluster.start(f"receiver-{i}", ["receive"]) for i in (1, 2)]
        chest = cluster.start("gpu-chest", ["worker", "--models", "chest-xray-pneumonia"])
        brain = cluster.start("gpu-brain", ["worker", "--models", "brain-mri-tumor"])
        # Two dispatchers: each delivery is claimed by one of them (sent once, below).
        cluster.start("dispatcher-1", ["dispatch"])
        cluster.start("dispatcher-2", ["dispatch"])
        pushes = [
            (receivers[0], chest_study(tmp_path / "in", "chest-1"), chest),
            (receivers[1], chest_study(tmp_path / "in", "chest-2"), chest),
            (receivers[1], brain_study(tmp_path / "in", "brain-1"), brain),
        ]
        for receiver, path, _ in pushes:
            sent = storescu(receiver.scp_port or 0, [path], aet="MODALITY")
            assert sent.returncode == 0, sent.stderr

        def finished() -> bool:
            jobs = cluster.scalars(select(Job))
            return len(jobs) == 3 and all(j.state == JobState.DONE for j in jobs)

        cluster.wait_until(finished, 300, "three jobs")

        def delivered() -> bool:
            objects = {
                o["sop_instance_uid"] for r in cluster.scalars(select(Result)) for o in r.objects
            }
            return bool(objects) and objects <= set(delivered_once(cluster))

        cluster.wait_until(delivered, 120, "every result delivered")

        with cluster.sessions()() as session:
            for _, path, worker in pushes:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                series = session.scalar(
                    select(Series).where(Series.series_uid == ds.SeriesInstanceUID)
                )
                assert series is not None
                (job,) = series.jobs
                # Processed on the host that holds its model, and only there.
                assert job.worker.endswith(worker.member), (job.worker, worker.member)
                assert job.attempts == 1
                (result,) = job.results
                kinds = {o["sop_class_uid"] for o in result.objects}
                assert kinds & SR_CLASSES and kinds & SC_CLASSES
        sends = delivered_once(cluster)
        assert sends and all(count == 1 for count in sends.values()), sends
        held = pacs.instance_tags()
        for _, path, _ in pushes:
            study = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
            classes = [t["SOPClassUID"] for t in held if t.get("StudyInstanceUID") == study]
            assert len([c for c in classes if c in SR_CLASSES]) == 1, classes
            assert len([c for c in classes if c in SC_CLASSES]) >= 1, classes
            # Exactly once in Orthanc: no SOP Instance UID twice, per study.
        uids = [t["SOPInstanceUID"] for t in held]
        assert len(uids) == len(set(uids))
