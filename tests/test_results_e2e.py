"""Results end to end: Orthanc pushes studies, the real models run, SR and SC come back.

Orthanc plays the hospital PACS: it holds real images (pydicom-data's CR chest RG1_UNCI,
a DX chest made from the pneumonia package's JPEGs, pydicom's Enhanced MR brain
emri_small, an ultrasound that no route takes) and pushes them to the node with
``POST /modalities/node/store``. What Orthanc ends up holding is read back over its REST
API and checked: the predicted class in the SR, the SC's reference to its source,
dciodvfy and dsrdump on every object, no duplicates when the same study comes again, and
no loop when Orthanc forwards everything it receives back to the node. The last test runs
``dicom-node demo --exit`` itself.

The models are loaded once for the module and run in the node's process
(``workers.processes = 0``); the Xception model alone takes seconds to load.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from dicom_node.config import Route, load_settings
from dicom_node.demo.minipacs import BuiltinPacs
from dicom_node.demo.run import DemoOptions, Ports, demo_copy, demo_settings, series_finished
from dicom_node.demo.studymaker import make_chest_study, pneumonia_package_pictures
from dicom_node.dispatch.sender import send_paths
from dicom_node.identity import MANUFACTURER
from dicom_node.node import Node
from dicom_node.process.queue import requeue_interrupted
from dicom_node.store.db import Delivery, Event, Job, Result, Series
from inference.types import PRIVATE_SCHEME
from tests.conftest import NodeHandle, make_settings
from tests.dicom_files import pydicom_file
from tests.dicom_validate import assert_dciodvfy_clean, assert_dsrdump_ok
from tests.peers import Orthanc, free_port, have_orthanc, run_orthanc

pytestmark = [pytest.mark.slow]

needs_orthanc = pytest.mark.skipif(not have_orthanc(), reason="Orthanc not installed")

CHEST_MODEL = "chest-xray-pneumonia"
BRAIN_MODEL = "brain-mri-tumor"
PREDICTED_CLASS = hd.sr.CodedConcept("PREDCLASS", PRIVATE_SCHEME, "Predicted class")
# What Lua makes Orthanc do with every instance it stores, whatever its origin: a PACS
# that forwards everything is exactly the set-up in which results could loop.
FORWARD_EVERYTHING = """
function OnStoredInstance(instanceId, tags, metadata, origin)
   SendToModality(instanceId, 'node')
end
"""


# -- fixtures ----------------------------------------------------------------------------


def real_manifests() -> dict[str, Any]:
    """The manifests of the bundled models; skips the test when their weights are missing."""
    from inference.registry import load_manifests

    manifests = load_manifests(load_settings(environ={}).models_dir)
    for model_id in (CHEST_MODEL, BRAIN_MODEL):
        if not manifests[model_id].weights_available():
            pytest.skip(f"weights of {model_id} are not installed")
    return manifests


@pytest.fixture(scope="module")
def models() -> Any:
    """The real models, loaded once for the module (in this process)."""
    from inference.registry import ModelCache

    return ModelCache(real_manifests(), threads=2)


def real_sections(pacs_port: int, node_port: int) -> dict[str, Any]:
    """Node settings with the embedded routes to the real models and Orthanc as ``pacs``."""
    embedded = load_settings(environ={})
    return {
        "scp": {"port": node_port},
        "completion": {"quiet_seconds": 1.0, "scan_interval": 0.2},
        "routes": [route.model_dump(by_alias=True) for route in embedded.routes],
        "destinations": [
            {
                "name": "pacs",
                "ae_title": "ORTHANC",
                "host": "127.0.0.1",
                "port": pacs_port,
                "backoff_seconds": 0.2,
                "backoff_max": 1.0,
            }
        ],
    }


@dataclass(frozen=True)
class Source:
    """One study Orthanc holds before the push (one image each)."""

    path: Path
    model: str | None  # the model its route runs; None: no route takes it

    @property
    def dataset(self) -> Dataset:
        return pydicom.dcmread(self.path)


@dataclass
class Scenario:
    """Orthanc and a node after Orthanc pushed every source and all results came back."""

    pacs: Orthanc
    node: NodeHandle
    sources: dict[str, Source]
    models: Any


def make_sources(folder: Path) -> dict[str, Source]:
    """CR chest (as is), a DX chest from a JPEG, a multi-frame brain MR, and an ultrasound."""
    pictures = [p for p in pneumonia_package_pictures() if "bacteria" in p.name]
    if not pictures:
        pytest.skip("pneumonia-model-package is not installed")
    (dx,) = make_chest_study(folder / "dx", pictures[:1])
    mr = folder / "mr" / "emri_small.dcm"  # Enhanced MR of the brain, 10 frames, HEAD
    demo_copy(pydicom_file("emri_small.dcm"), mr, "e2e", "TEST^BRAIN", {})
    us = folder / "us" / "US1_UNCI.dcm"
    demo_copy(pydicom_file("US1_UNCI.dcm"), us, "e2e", "TEST^US", {})
    return {
        "cr": Source(pydicom_file("RG1_UNCI.dcm"), CHEST_MODEL),
        "dx": Source(dx, CHEST_MODEL),
        "mr": Source(mr, BRAIN_MODEL),
        "us": Source(us, None),
    }


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def all_finished(node: NodeHandle, series_uids: list[str]) -> bool:
    with node.node.sessions() as session:
        return all(series_finished(session, uid) for uid in series_uids)


def push_from_orthanc(pacs: Orthanc, paths: list[Path]) -> list[str]:
    """Upload files to Orthanc and have it C-STORE their studies to the node."""
    studies = list(dict.fromkeys(pacs.upload(path)["ParentStudy"] for path in paths))
    pacs.post("/modalities/node/store", {"Resources": studies, "Synchronous": True})
    return studies


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory, models: Any) -> Iterator[Scenario]:
    """Orthanc holds the sources, pushes them to the node, and the results come back."""
    if not have_orthanc():
        pytest.skip("Orthanc not installed")
    folder = tmp_path_factory.mktemp("results-e2e")
    sources = make_sources(folder / "sources")
    node_port = free_port()
    with run_orthanc(
        folder / "orthanc", modalities={"node": ("DICOM_NODE", "127.0.0.1", node_port)}
    ) as pacs:
        settings = make_settings(folder, **real_sections(pacs.dicom_port, node_port))
        node = Node(settings, models=models, web=False)
        node.start()
        try:
            handle = NodeHandle(node)
            push_from_orthanc(pacs, [s.path for s in sources.values()])
            series = [str(s.dataset.SeriesInstanceUID) for s in sources.values()]
            wait_until(lambda: all_finished(handle, series), 300, "results of every series")
            yield Scenario(pacs, handle, sources, models)
        finally:
            node.stop()


# -- helpers on what Orthanc holds ------------------------------------------------------


def study_instances(pacs: Orthanc, study_uid: str) -> list[dict[str, Any]]:
    """Simplified tags of every instance Orthanc holds in a study (with their Orthanc ids)."""
    matches = pacs.post("/tools/lookup", study_uid.encode()) or []
    (study,) = [m for m in matches if m["Type"] == "Study"]
    instances = pacs.get(f"/studies/{study['ID']}/instances")
    return [
        {**pacs.get(f"/instances/{i['ID']}/simplified-tags"), "OrthancId": i["ID"]}
        for i in instances
    ]


def download(pacs: Orthanc, orthanc_id: str, folder: Path) -> Path:
    """The file Orthanc stored, byte for byte, written to ``folder``."""
    with urllib.request.urlopen(f"{pacs.url}/instances/{orthanc_id}/file", timeout=30) as resp:
        data = resp.read()
    path = folder / f"{orthanc_id}.dcm"
    path.write_bytes(data)
    return path


def results_in(pacs: Orthanc, study_uid: str) -> dict[str, list[dict[str, Any]]]:
    """The node's objects in a study, by modality (SR, OT for the SC, DOC for the PDF)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for tags in study_instances(pacs, study_uid):
        if tags.get("Manufacturer") == MANUFACTURER:
            found.setdefault(tags["Modality"], []).append(tags)
    return found


def route_of(ds: Dataset) -> Route:
    """The embedded route a source takes (chest X-ray or brain MR)."""
    name = "brain-mri" if ds.Modality == "MR" else "chest-xray"
    return load_settings(environ={}).route(name)


def expected_scs(ds: Dataset) -> int:
    """Secondary Captures for a source: one per key slice, at most one per frame."""
    return min(route_of(ds).key_slices, int(ds.get("NumberOfFrames", 1) or 1))


def predicted_code(path: Path) -> str:
    """Code value of the SR's "Predicted class" evaluation (in the series-level group; the
    image-level findings of the key slices do not repeat it)."""
    report = cast(hd.sr.MeasurementReport, hd.sr.srread(path).content)
    (item,) = [
        evaluation
        for group in report.get_image_measurement_groups()
        for evaluation in group.get_qualitative_evaluations(name=PREDICTED_CLASS)
    ]
    return str(item.value.value)


def stable_count(pacs: Orthanc, settle: float, limit: float = 90.0) -> int:
    """Orthanc's instance count once it has not changed for ``settle`` seconds.

    A count still growing after ``limit`` seconds (a loop) is returned as it is, for the
    caller's assertion to show.
    """
    deadline = time.monotonic() + limit
    count = len(pacs.instances())
    while time.monotonic() < deadline:
        time.sleep(settle)
        now = len(pacs.instances())
        if now == count:
            break
        count = now
    return count


# -- tests on the pushed studies --------------------------------------------------------


@needs_orthanc
@pytest.mark.orthanc
@pytest.mark.parametrize("name", ["cr", "dx", "mr"])
def test_routed_study_gets_sr_and_sc_with_the_runtime_class(
    scenario: Scenario, name: str, tmp_path: Path
) -> None:
    source = scenario.sources[name]
    original = source.dataset
    results = results_in(scenario.pacs, str(original.StudyInstanceUID))
    assert len(results["SR"]) == 1
    assert len(results["OT"]) == expected_scs(original)  # one per key slice
    assert len(results.get("DOC", [])) == (1 if name == "mr" else 0)  # pdf = true on brain

    model = scenario.models.get(source.model)
    expected = model.predict_series([original], explain=False).predicted_class
    sr_path = download(scenario.pacs, results["SR"][0]["OrthancId"], tmp_path)
    assert predicted_code(sr_path) == model.info.class_concepts[expected].value
    (stored,) = scenario.node.query(
        select(Result).join(Job).join(Series).where(Series.series_uid == original.SeriesInstanceUID)
    )
    assert stored.predicted_class == expected

    for tags in results["OT"]:
        sc = pydicom.dcmread(download(scenario.pacs, tags["OrthancId"], tmp_path))
        assert sc.StudyInstanceUID == original.StudyInstanceUID
        (reference,) = sc.SourceImageSequence
        assert reference.ReferencedSOPInstanceUID == original.SOPInstanceUID
        assert reference.ReferencedSOPClassUID == original.SOPClassUID


@needs_orthanc
@pytest.mark.orthanc
@pytest.mark.dcmtk
def test_every_result_in_orthanc_passes_dciodvfy_and_dsrdump(
    scenario: Scenario, tmp_path: Path
) -> None:
    checked: dict[str, int] = {}
    scs = sum(expected_scs(scenario.sources[n].dataset) for n in ("cr", "dx", "mr"))
    for name in ("cr", "dx", "mr"):
        study_uid = str(scenario.sources[name].dataset.StudyInstanceUID)
        for modality, objects in results_in(scenario.pacs, study_uid).items():
            for tags in objects:
                path = download(scenario.pacs, tags["OrthancId"], tmp_path)
                assert_dciodvfy_clean(path)
                if modality == "SR":
                    assert "Predicted class" in assert_dsrdump_ok(path)
                checked[modality] = checked.get(modality, 0) + 1
    assert checked == {"SR": 3, "OT": scs, "DOC": 1}


@needs_orthanc
@pytest.mark.orthanc
def test_unrouted_study_gets_nothing_back(scenario: Scenario) -> None:
    original = scenario.sources["us"].dataset
    held = study_instances(scenario.pacs, str(original.StudyInstanceUID))
    assert [t["SOPInstanceUID"] for t in held] == [original.SOPInstanceUID]
    (series,) = scenario.node.query(
        select(Series).where(Series.series_uid == original.SeriesInstanceUID)
    )
    assert series.state == "unrouted"
    assert scenario.node.query(select(Job).where(Job.series_id == series.id)) == []
    study_uid = str(original.StudyInstanceUID)
    assert scenario.node.query(select(Delivery).where(Delivery.study_uid == study_uid)) == []


@needs_orthanc
@pytest.mark.orthanc
def test_same_study_again_and_a_rerun_leave_no_duplicates(scenario: Scenario) -> None:
    """A second push is recorded as duplicates; a job re-run after a crash sends nothing."""
    pacs, node = scenario.pacs, scenario.node
    before = stable_count(pacs, 1.0)
    deliveries = len(node.query(select(Delivery)))
    uids_before = {o["sop_instance_uid"] for r in node.query(select(Result)) for o in r.objects}
    duplicates = len(node.query(select(Event).where(Event.kind == "instance.duplicate")))

    chest = [scenario.sources[n] for n in ("cr", "dx")]
    push_from_orthanc(pacs, [s.path for s in chest])
    wait_until(
        lambda: (
            len(node.query(select(Event).where(Event.kind == "instance.duplicate")))
            == duplicates + len(chest)
        ),
        30,
        "the duplicates to be recorded",
    )
    # As if the worker died while running the chest jobs: the start-up path requeues them.
    with node.node.sessions() as session:
        jobs = session.scalars(select(Job).where(Job.route_name == "chest-xray")).all()
        for job in jobs:
            job.state = "running"
        session.commit()
    assert requeue_interrupted(node.node.sessions) == len(chest)
    wait_until(
        lambda: all(
            j.state == "done" and j.attempts == 2
            for j in node.query(select(Job).where(Job.route_name == "chest-xray"))
        ),
        120,
        "the re-run chest jobs",
    )
    series = [str(s.dataset.SeriesInstanceUID) for s in chest]
    wait_until(lambda: all_finished(node, series), 60, "deliveries after the re-run")

    assert stable_count(pacs, 1.0) == before
    assert len(node.query(select(Delivery))) == deliveries
    uids_after = {o["sop_instance_uid"] for r in node.query(select(Result)) for o in r.objects}
    assert uids_after == uids_before
    assert len(node.query(select(Job))) == 3  # cr, dx, mr: no new job for a duplicate


# -- a PACS that forwards everything back ------------------------------------------------


@needs_orthanc
@pytest.mark.orthanc
def test_results_forwarded_back_by_orthanc_do_not_loop(
    start_node: Any, models: Any, tmp_path: Path
) -> None:
    node_port = free_port()
    with run_orthanc(
        tmp_path / "orthanc",
        modalities={"node": ("DICOM_NODE", "127.0.0.1", node_port)},
        lua=FORWARD_EVERYTHING,
    ) as pacs:
        node = start_node(models=models, **real_sections(pacs.dicom_port, node_port))
        original = pydicom.dcmread(pydicom_file("RG1_UNCI.dcm"))
        pacs.upload(pydicom_file("RG1_UNCI.dcm"))  # Lua forwards it to the node
        node.wait_until(
            lambda: (
                sorted(s.state for s in node.query(select(Series)))
                == ["ignored", "ignored", "routed"]
            ),
            timeout=180,
            what="the results to come back and be ignored",
        )
        # Several quiet periods: time for a loop to show, if there were one.
        count = stable_count(pacs, 3.0)
        assert count == 3  # the radiograph, its SR and its SC
        (job,) = node.query(select(Job))
        assert job.state == "done"
        assert {d.state for d in node.query(select(Delivery))} == {"done"}
        ignored = node.query(select(Series).where(Series.state == "ignored"))
        assert {s.modality for s in ignored} == {"SR", "OT"}
        assert all("created by this node" in s.route_reason for s in ignored)
        routed = node.query(select(Series).where(Series.state == "routed"))
        assert [s.series_uid for s in routed] == [original.SeriesInstanceUID]


# -- the built-in receiver and the demo command -----------------------------------------


def test_builtin_pacs_stores_what_it_receives(tmp_path: Path) -> None:
    pacs = BuiltinPacs(tmp_path / "pacs", free_port()).start()
    try:
        ct = pydicom_file("CT_small.dcm")
        summary = send_paths(
            [ct],
            calling_ae="TEST",
            called_ae="ANY",
            host="127.0.0.1",
            port=pacs.port,
            progress=False,
        )
        assert summary.ok, summary.describe()
        original = pydicom.dcmread(ct)
        uid = str(original.SOPInstanceUID)
        assert pacs.holds([uid, "1.2.3"]) == {uid}
        stored = tmp_path / "pacs" / str(original.StudyInstanceUID) / f"{uid}.dcm"
        assert pydicom.dcmread(stored).PixelData == original.PixelData
    finally:
        pacs.stop()


def test_demo_settings_keep_routes_and_point_pacs_at_the_demo(tmp_path: Path) -> None:
    base = load_settings(
        environ={"DICOM_NODE__STORAGE__DATABASE_URL": "postgresql://u@db.example/prod"}
    )
    pacs = BuiltinPacs(tmp_path / "pacs", 4343)
    options = DemoOptions(data_dir=tmp_path / "demo-data", quiet_seconds=2.0)
    settings = demo_settings(base, options, Ports(scp=11200, web=8181), pacs)
    assert settings.routes == base.routes
    dest = settings.destination("pacs")
    assert (dest.ae_title, dest.host, dest.port) == ("DEMO_PACS", "127.0.0.1", 4343)
    # Never the production database: SQLite and a spool in the demo folder.
    assert settings.database_url == f"sqlite:///{tmp_path / 'demo-data' / 'dicom-node.db'}"
    assert settings.spool_dir == tmp_path / "demo-data" / "spool"
    assert (settings.scp.port, settings.web.port) == (11200, 8181)
    assert settings.completion.quiet_seconds == 2.0


def test_demo_exit_prints_the_table(tmp_path: Path) -> None:
    """``dicom-node demo --exit`` end to end, as ``scripts/run.sh`` runs it (fewer images)."""
    real_manifests()
    if not pneumonia_package_pictures():
        pytest.skip("pneumonia-model-package is not installed")
    command = [
        sys.executable,
        "-m",
        "dicom_node.cli",
        "demo",
        "--exit",
        "--data-dir",
        str(tmp_path / "demo-data"),
        "--chest-images",
        "2",
        "--quiet-seconds",
        "1",
    ]
    done = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=540, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "NOT FOR DIAGNOSTIC USE" in out
    rows = parse_table(out)
    for patient in ("DEMO^CHEST001", "DEMO^CHEST002"):
        row = rows[patient]
        assert (row["modality"], row["body part"], row["route"], row["model"]) == (
            "DX",
            "CHEST",
            "chest-xray",
            CHEST_MODEL,
        )
        assert row["class"] in ("NORMAL", "PNEUMONIA")
        assert 0.5 <= float(row["p(class)"]) <= 1.0
        assert row["PACS received"] == "SR+SC"
    assert rows["DEMO^CR CHEST"]["PACS received"] == "SR+SC"
    brain = pydicom.dcmread(pydicom_file("emri_small.dcm"), stop_before_pixels=True)
    scs = expected_scs(brain)
    assert rows["DEMO^MR BRAIN"]["PACS received"] == f"SR+{'SC' if scs == 1 else f'SCx{scs}'}+PDF"
    assert rows["DEMO^ULTRASOUND"]["route"] == "unrouted"
    assert rows["DEMO^ULTRASOUND"]["PACS received"] == "nothing"


def parse_table(out: str) -> dict[str, dict[str, str]]:
    """The demo's table by patient, cut into columns where the dashed rule puts them."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("patient "))
    header, rule = lines[start], lines[start + 1]
    spans, position = [], 0
    for dashes in rule.split("  "):
        spans.append((position, position + len(dashes)))
        position += len(dashes) + 2
    names = [header[a:b].strip() for a, b in spans]
    rows: dict[str, dict[str, str]] = {}
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        cells = [line[a:b].strip() for a, b in spans]
        rows[cells[0]] = dict(zip(names, cells, strict=True))
    return rows
