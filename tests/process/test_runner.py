"""A routed chest X-ray through the real model: result rows, objects, idempotent re-runs and
late instances, delivered to DCMTK's storescp as the destination."""

from __future__ import annotations

import copy
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from PIL import Image
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid
from sqlalchemy import select

from dicom_node.process.heatmap import display_size
from dicom_node.store.db import Delivery, Job, Result, Series
from tests.dicom_files import pydicom_file
from tests.dicom_validate import assert_dciodvfy_clean, assert_dsrdump_ok
from tests.peers import DCMTK_ENV, free_port, have_dcmtk, pynetdicom_send, wait_for_port

pytestmark = [pytest.mark.skipif(not have_dcmtk(), reason="DCMTK not installed"), pytest.mark.slow]


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """DCMTK storescp as the destination PACS, writing what it receives to a folder."""
    port = free_port()
    folder = tmp_path / "received"
    folder.mkdir()
    proc = subprocess.Popen(
        ["storescp", "-aet", "STORESCP", "-od", str(folder), "+xa", str(port)],
        env=DCMTK_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield port, folder
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def chest_models() -> Any:
    """The real chest model, loaded once for the module (it takes seconds)."""
    from dicom_node.config import PACKAGE_ROOT
    from inference.registry import ModelCache, load_manifests

    return ModelCache(load_manifests(PACKAGE_ROOT / "models"), threads=2)


def _sections(port: int) -> dict[str, Any]:
    return {
        "destinations": [
            {
                "name": "pacs",
                "ae_title": "STORESCP",
                "host": "127.0.0.1",
                "port": port,
                "backoff_seconds": 0.2,
                "backoff_max": 1,
            }
        ],
        "routes": [
            {
                "name": "chest-xray",
                "match": {"Modality": "^(CR|DX)$", "BodyPartExamined": "CHEST"},
                "models": ["chest-xray-pneumonia"],
                "destinations": ["pacs"],
            }
        ],
    }


def _received(folder: Path) -> dict[str, pydicom.Dataset]:
    out = {}
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        out[str(ds.SOPInstanceUID)] = ds
    return out


def test_chest_job_results_rerun_and_late_instance(
    start_node: Any, storescp: tuple[int, Path], chest_models: Any, tmp_path: Path
) -> None:
    port, folder = storescp
    node = start_node(models=chest_models, **_sections(port))
    source = pydicom.dcmread(pydicom_file("RG1_UNCI.dcm"))
    assert pynetdicom_send(node.port, [source], chunked=False) == [0]
    # Deliveries start as soon as the results are committed, before the job writes the
    # web heatmap and ends: wait for both.
    node.wait_until(
        lambda: (
            len(node.query(select(Delivery))) == 2
            and {d.state for d in node.query(select(Delivery))} == {"done"}
            and {j.state for j in node.query(select(Job))} <= {"done", "failed"}
        ),
        timeout=120,
        what="SR and SC delivered and the job ended",
    )
    (job,) = node.query(select(Job))
    assert job.state == "done", job.error
    (result,) = node.query(select(Result))
    assert result.model_id == "chest-xray-pneumonia" and result.model_version == "0.3.0"
    assert set(result.probabilities) == {"NORMAL", "PNEUMONIA"}
    assert abs(sum(result.probabilities.values()) - 1) < 1e-4
    assert result.predicted_class == max(result.probabilities, key=result.probabilities.get)
    assert result.positive_probability == pytest.approx(result.probabilities["PNEUMONIA"])
    assert [s["sop_instance_uid"] for s in result.slice_scores] == [source.SOPInstanceUID]
    assert {"decode", "preprocess", "infer", "explain", "total"} <= set(result.timings)
    # The admin page's picture is the SC's labelled picture at display size (longest side
    # 1024, aspect kept); the SC itself keeps the source's pixel grid.
    [sc_object] = [o for o in result.objects if o["kind"] == "sc"]
    sc = pydicom.dcmread(sc_object["path"], stop_before_pixels=True)
    rows, columns = display_size(int(sc.Rows), int(sc.Columns))
    with Image.open(result.heatmap_path) as picture:
        assert picture.format == "PNG"
        assert picture.size == (columns, rows)
    kinds = sorted(o["kind"] for o in result.objects)
    assert kinds == ["sc", "sr:comprehensive3d"]

    received = _received(folder)
    assert set(received) == {o["sop_instance_uid"] for o in result.objects}
    for ds in received.values():
        if ds.SOPClassUID == SecondaryCaptureImageStorage:  # full size, plus a text band
            assert ds.Columns == source.Columns and ds.Rows > source.Rows
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert_dciodvfy_clean(ds)
    sr_path = next(Path(o["path"]) for o in result.objects if o["kind"].startswith("sr"))
    assert "NOT FOR DIAGNOSTIC USE" in assert_dsrdump_ok(sr_path).upper()

    # Re-run the same job (as after a crash): same UIDs, nothing delivered twice.
    first_uids = {o["sop_instance_uid"] for o in result.objects}
    with node.node.sessions() as session:
        session.get(Job, job.id).state = "queued"
        session.commit()
    node.wait_until(lambda: node.query(select(Job))[0].state == "done", what="re-run")
    (rerun,) = node.query(select(Result))
    assert {o["sop_instance_uid"] for o in rerun.objects} == first_uids
    deliveries = node.query(select(Delivery))
    assert len(deliveries) == 2 and all(d.attempts == 1 for d in deliveries)
    assert len(list(folder.iterdir())) == 2

    # A late instance: new generation, new SR that names its predecessor.
    late = copy.deepcopy(source)
    late.SOPInstanceUID = generate_uid()
    late.file_meta.MediaStorageSOPInstanceUID = late.SOPInstanceUID
    late.InstanceNumber = 2
    assert pynetdicom_send(node.port, [late], chunked=False) == [0]
    node.wait_until(
        lambda: (
            len(node.query(select(Job))) == 2
            and all(j.state == "done" for j in node.query(select(Job)))
            and {d.state for d in node.query(select(Delivery))} == {"done"}
            and len(node.query(select(Delivery))) == 4
        ),
        timeout=120,
        what="second generation delivered",
    )
    (series,) = node.query(select(Series))
    assert series.generation == 1
    new = _received(folder)
    new_srs = [ds for uid, ds in new.items() if uid not in first_uids and ds.Modality == "SR"]
    assert len(new_srs) == 1
    predecessor = new_srs[0].PredecessorDocumentsSequence[0]
    old_sr_uid = next(o["sop_instance_uid"] for o in result.objects if o["kind"].startswith("sr"))
    assert (
        predecessor.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        == old_sr_uid
    )
    shutil.rmtree(folder, ignore_errors=True)
