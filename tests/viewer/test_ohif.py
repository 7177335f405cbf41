"""Our results in OHIF, the web viewer radiologists read them in.

Orthanc (with its DICOMweb plugin) is the PACS: it pushes a real chest radiograph to a
node running the real chest model, and receives the SR and the Grad-CAM Secondary Capture
back over DIMSE. The prebuilt OHIF 3 viewer (``scripts/setup.sh --test`` unpacks it) is
served on the same origin as Orthanc's DICOMweb (``tests/viewer/ohif.py``) and opened in
headless Debian Chromium. The tests check what a radiologist sees:

- opening the SR (``initialSeriesInstanceUID``, as a worklist link does; after a
  double-click on its thumbnail OHIF 3.13.2 often misses the render that draws an SR's
  regions, with our SR and with a reference TID 1410 SR alike) shows no error; every
  measurement group places a probability on an image (OHIF throws on a group without a
  SCOORD); and every probability placed on an image is drawn over that image and frame,
  on screen, with a label line giving its class, then its probability (OHIF 3.13 lists SR
  findings in its measurements panel only for its own tool types, so the drawn SVG label
  is what there is to check);
- the Secondary Capture has a thumbnail and its image renders.

The radiograph is pydicom-data's CR chest RG1_UNCI without its Pixel Spacing of 0\\0
(same UIDs): with a zero spacing OHIF draws the image black and every overlay at NaN.
Screenshots (and the SR, for dsrdump) go to ``test-artifacts/ohif/``.
"""

from __future__ import annotations

import io
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from PIL import Image, ImageStat
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicom_node.config import load_settings
from dicom_node.node import Node
from tests.conftest import NodeHandle, make_settings
from tests.dicom_files import pydicom_file
from tests.peers import free_port, have_orthanc_dicomweb, run_orthanc
from tests.test_results_e2e import (
    all_finished,
    download,
    push_from_orthanc,
    real_sections,
    results_in,
    wait_until,
)
from tests.viewer.ohif import (
    ARTIFACTS,
    CHROMIUM,
    OHIF_DIST,
    DrawnLine,
    OhifServer,
    ViewerPage,
    ViewportState,
    have_ohif,
    launch_chromium,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.orthanc,
    pytest.mark.browser,
    pytest.mark.skipif(not have_orthanc_dicomweb(), reason="Orthanc or orthanc-dicomweb missing"),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed"),
    pytest.mark.skipif(not have_ohif(), reason="no OHIF viewer: run scripts/setup.sh --test"),
]

CHEST_MODEL = "chest-xray-pneumonia"
# SR codes (PS3.16): the TID 1500 containers and the concept that names what a
# probability is about.
IMAGING_MEASUREMENTS = ("126010", "DCM")
MEASUREMENT_GROUP = ("125007", "DCM")
FINDING = ("121071", "DCM")
SECONDS_TO_DRAW = 30.0


@dataclass(frozen=True)
class Finding:
    """One probability the SR puts on an image: its class, its value, and where it is."""

    class_name: str
    probability: float
    group: str  # the measurement group's Tracking Identifier, for messages
    sop_instance_uid: str  # the image its SCOORD is selected from
    frame: int

    def __str__(self) -> str:
        return f"{self.class_name} {self.probability:.3f} (group {self.group!r})"

    def labelled_by(self, line: str) -> bool:
        """A label line names the class, then its probability at the precision shown."""
        named = re.search(rf"\b{re.escape(self.class_name)}\b", line, re.IGNORECASE)
        if not named:
            return False
        for number in re.finditer(r"\d+\.(\d+)", line[named.end() :]):
            decimals = len(number.group(1))
            if decimals >= 2 and abs(float(number.group(0)) - self.probability) <= (
                0.5 * 10**-decimals + 1e-9
            ):
                return True
        return False


@dataclass
class Viewer:
    """OHIF on Orthanc, after the node's results for one radiograph came back."""

    server: OhifServer
    browser: Any
    study_uid: str
    source: Dataset
    sr: Dataset
    sc: Dataset


def _code(item: Dataset, attribute: str = "ConceptNameCodeSequence") -> tuple[str, str]:
    code = item[attribute][0] if attribute in item else None
    return (str(code.CodeValue), str(code.CodingSchemeDesignator)) if code else ("", "")


def _selected_from(scoord: Dataset | None) -> tuple[str, int] | None:
    """The image and frame (1 when not given) a SCOORD is SELECTED FROM."""
    for child in scoord.get("ContentSequence", []) if scoord is not None else []:
        if child.ValueType == "IMAGE":
            reference = child.ReferencedSOPSequence[0]
            frames = reference.get("ReferencedFrameNumber")
            if isinstance(frames, MultiValue):
                frames = frames[0]
            return str(reference.ReferencedSOPInstanceUID), int(frames or 1)
    return None


def _scoord(items: Any) -> Dataset | None:
    return next((i for i in items if i.ValueType == "SCOORD"), None)


def placed_findings(sr: Dataset) -> tuple[list[Finding], list[str]]:
    """The probabilities the SR places on an image, and the groups that place none.

    A probability is a NUM in UCUM "1" in a TID 1501 measurement group. It has a place
    when it is INFERRED FROM a SCOORD, or when its group is a region (TID 1410: a SCOORD
    in the group itself); a viewer can draw only those. Its class is its "Finding"
    concept modifier, or else its group's "Finding". Probabilities without a place (the
    other classes of a series-level result) are the SR's business, not the viewer's.
    """
    findings: list[Finding] = []
    unplaced: list[str] = []
    for container in sr.get("ContentSequence", []):
        if _code(container) != IMAGING_MEASUREMENTS:
            continue
        for group in container.get("ContentSequence", []):
            if _code(group) != MEASUREMENT_GROUP:
                continue
            items = list(group.get("ContentSequence", []))
            tracking = next(
                (str(i.TextValue) for i in items if i.ValueType == "TEXT" and "TextValue" in i), ""
            )
            group_finding = next(
                (i.ConceptCodeSequence[0].CodeMeaning for i in items if _code(i) == FINDING), None
            )
            group_place = _selected_from(_scoord(items))
            placed = 0
            for item in items:
                if item.ValueType != "NUM" or not item.get("MeasuredValueSequence"):
                    continue
                value = item.MeasuredValueSequence[0]
                if _code(value, "MeasurementUnitsCodeSequence") != ("1", "UCUM"):
                    continue
                modifiers = list(item.get("ContentSequence", []))
                place = _selected_from(_scoord(modifiers)) or group_place
                if place is None:
                    continue
                about = next(
                    (
                        m.ConceptCodeSequence[0].CodeMeaning
                        for m in modifiers
                        if _code(m) == FINDING and m.ValueType == "CODE"
                    ),
                    group_finding,
                )
                assert about, f"no class named for probability {value.NumericValue} in {tracking}"
                findings.append(Finding(str(about), float(value.NumericValue), tracking, *place))
                placed += 1
            if not placed:
                unplaced.append(tracking)
    return findings, unplaced


def drawn_on_its_image(states: list[ViewportState], finding: Finding) -> bool:
    """Whether a viewport showing the finding's image has its label line wholly on screen."""
    return any(
        state.shows(finding.sop_instance_uid, finding.frame)
        and any(
            line.visible and finding.labelled_by(line.text) for box in state.texts for line in box
        )
        for state in states
    )


def describe(states: list[ViewportState]) -> str:
    """What the viewports show, for failure messages."""

    def shown(line: DrawnLine) -> str:
        return line.text if line.visible else f"{line.text} (cut off)"

    return "; ".join(
        f"{s.viewport_id} shows {s.image_id.rsplit('/instances/', 1)[-1] or 'nothing'}, "
        f"labels {[[shown(line) for line in box] for box in s.texts]}"
        for s in states
    )


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chest_model() -> Any:
    """The real chest model only (the node loads it on the first job)."""
    from inference.registry import ModelCache, load_manifests

    manifest = load_manifests(load_settings(environ={}).models_dir)[CHEST_MODEL]
    if not manifest.weights_available():
        pytest.skip(f"weights of {CHEST_MODEL} are not installed")
    return ModelCache({CHEST_MODEL: manifest}, threads=2)


def radiograph(folder: Path) -> Path:
    """RG1_UNCI (a CR chest) as a PACS would hold it, without its zero Pixel Spacing."""
    ds = pydicom.dcmread(pydicom_file("RG1_UNCI.dcm"))
    del ds.PixelSpacing
    path = folder / "RG1_UNCI.dcm"
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)
    return path


@pytest.fixture(scope="module")
def viewer(tmp_path_factory: pytest.TempPathFactory, chest_model: Any) -> Iterator[Viewer]:
    """Orthanc pushes the radiograph, the node's results come back, OHIF serves them."""
    sync_api = pytest.importorskip("playwright.sync_api")
    folder = tmp_path_factory.mktemp("ohif")
    source_path = radiograph(folder / "source")
    source = pydicom.dcmread(source_path, stop_before_pixels=True)
    study_uid = str(source.StudyInstanceUID)
    node_port = free_port()
    with run_orthanc(
        folder / "orthanc",
        modalities={"node": ("DICOM_NODE", "127.0.0.1", node_port)},
        dicomweb=True,
    ) as pacs:
        settings = make_settings(folder, **real_sections(pacs.dicom_port, node_port))
        node = Node(settings, models=chest_model, web=False)
        node.start()
        try:
            push_from_orthanc(pacs, [source_path])
            handle = NodeHandle(node)
            series = [str(source.SeriesInstanceUID)]
            wait_until(lambda: all_finished(handle, series), 300, "the node's results")
        finally:
            node.stop()
        results = results_in(pacs, study_uid)
        assert len(results.get("SR", [])) == 1 and len(results.get("OT", [])) == 1, results
        sr_path = download(pacs, results["SR"][0]["OrthancId"], folder)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sr_path, ARTIFACTS / "sr.dcm")
        sr = pydicom.dcmread(sr_path)
        sc = pydicom.dcmread(download(pacs, results["OT"][0]["OrthancId"], folder))
        server = OhifServer(OHIF_DIST, pacs).start()
        playwright = sync_api.sync_playwright().start()
        try:
            browser = launch_chromium(playwright)
            yield Viewer(server, browser, study_uid, source, sr, sc)
            browser.close()
        finally:
            playwright.stop()
            server.stop()


@pytest.fixture
def page(viewer: Viewer) -> Iterator[ViewerPage]:
    opened = ViewerPage(viewer.browser, viewer.server)
    yield opened
    opened.close()


# -- tests -------------------------------------------------------------------------------


def test_sr_findings_are_drawn_on_the_source_image_with_class_and_probability(
    viewer: Viewer, page: ViewerPage
) -> None:
    findings, unplaced = placed_findings(viewer.sr)
    assert findings, "the SR places no probability on an image"
    assert unplaced == [], f"measurement groups with no probability on an image: {unplaced}"
    source_uid = str(viewer.source.SOPInstanceUID)
    assert {(f.sop_instance_uid, f.frame) for f in findings} == {(source_uid, 1)}
    page.open_series(viewer.study_uid, str(viewer.sr.SeriesInstanceUID))

    # OHIF draws the SR's regions once it has loaded the SR and the images it references.
    deadline = time.monotonic() + SECONDS_TO_DRAW
    states = page.viewports()
    while time.monotonic() < deadline and not page.error_toasts():
        states = page.viewports()
        if all(drawn_on_its_image(states, f) for f in findings):
            break
        time.sleep(0.25)
    page.screenshot("01-sr-findings.png")

    problems = page.problems()
    missing = [str(f) for f in findings if not drawn_on_its_image(states, f)]
    assert problems == [] and missing == [], (
        f"errors: {problems}; not drawn on the source image {source_uid} with class and "
        f"probability: {missing}; the viewer shows: {describe(states)}"
    )


def test_secondary_capture_thumbnail_and_image_render(viewer: Viewer, page: ViewerPage) -> None:
    page.open_study(viewer.study_uid)
    thumbnail = page.thumbnail(int(viewer.sc.SeriesNumber))
    picture = thumbnail.locator("img")
    picture.wait_for(timeout=30_000)
    assert picture.evaluate("img => img.complete && img.naturalWidth") > 0

    thumbnail.dblclick()
    sc_uid = str(viewer.sc.SOPInstanceUID)
    canvas = page.page.locator('[data-cy="viewport-pane"] canvas').first
    deadline = time.monotonic() + SECONDS_TO_DRAW
    spread = 0.0
    while time.monotonic() < deadline and not page.error_toasts():
        if any(state.shows(sc_uid) for state in page.viewports()):
            grey = Image.open(io.BytesIO(canvas.screenshot())).convert("L")
            spread = ImageStat.Stat(grey).stddev[0]
            if spread > 10:  # an image, not an empty black viewport
                break
        time.sleep(0.25)
    page.screenshot("02-secondary-capture.png")

    assert page.problems() == []
    states = page.viewports()
    assert any(state.shows(sc_uid) for state in states), describe(states)
    assert spread > 10, f"the Secondary Capture's viewport is blank (grey stddev {spread:.1f})"
