"""Upload and predict end to end, as the original apps were used: a real node with its admin
app and the real chest model, a real chest X-ray JPEG from the pneumonia package.

* A script POSTs the picture to ``/api/predict`` (httpx over a real socket, as curl would)
  and gets the class, P(class), the probabilities, the model and version and the links;
  each link is downloaded, and the SR, the Secondary Capture and the Encapsulated PDF
  pass dciodvfy (and dsrdump).
* A person uploads a picture on the upload page in headless Chromium (Playwright) and sees
  the route, then the result appear on the study page without a reload.

The quiet period is set to 10 minutes: a result within the test's time proves that the
upload's end completed its series (``route.completion``, policy "upload"). The model is
loaded once for the module, in this process (``workers.processes = 0``).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pydicom
import pytest
from PIL import Image
from sqlalchemy import select

from dicom_node.config import load_settings
from dicom_node.demo.studymaker import pneumonia_package_pictures
from dicom_node.node import Node
from dicom_node.process import queue
from dicom_node.store import users
from dicom_node.store.db import AuditEntry, Event
from dicom_node.wording import call_text
from tests.conftest import NodeHandle, make_settings
from tests.dicom_validate import assert_dciodvfy_clean, assert_dsrdump_ok
from tests.peers import free_port
from tests.web.test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS

pytestmark = [pytest.mark.slow]

CHEST_MODEL = "chest-xray-pneumonia"
UPLOADER = ("ursula", "uploader-password-1")
# Two of the package's validation pictures of bacterial pneumonia.
PICTURES = [p for p in pneumonia_package_pictures() if "bacteria" in p.name]


@dataclass
class Served:
    node: NodeHandle
    url: str
    token: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A node with its admin app, the embedded chest route (with a PDF, no destination)
    and the real chest model; an uploader account with a token."""
    if not PICTURES:
        pytest.skip("pneumonia-model-package is not installed")
    from inference.registry import ModelCache, load_manifests

    manifests = load_manifests(load_settings(environ={}).models_dir)
    if not manifests[CHEST_MODEL].weights_available():
        pytest.skip(f"weights of {CHEST_MODEL} are not installed")
    chest = next(r for r in load_settings(environ={}).routes if CHEST_MODEL in r.models)
    folder = tmp_path_factory.mktemp("upload-e2e")
    settings = make_settings(
        folder,
        web={"enabled": True, "port": free_port()},
        completion={"quiet_seconds": 600, "scan_interval": 1.0},
        routes=[{**chest.model_dump(by_alias=True), "destinations": [], "pdf": True}],
        upload={"predict_timeout": 300},
    )
    node = Node(settings, models=ModelCache({CHEST_MODEL: manifests[CHEST_MODEL]}, threads=2))
    node.start()
    try:
        users.add_user(node.sessions, UPLOADER[0], UPLOADER[1], "uploader")
        token = users.create_token(node.sessions, UPLOADER[0], "e2e")
        assert node.web_url is not None
        yield Served(NodeHandle(node), node.web_url, token)
    finally:
        node.stop()


def test_predict_returns_the_result_of_the_real_model(served: Served) -> None:
    auth = {"Authorization": f"Bearer {served.token}"}
    picture = PICTURES[0]
    response = httpx.post(
        f"{served.url}/api/predict",
        headers=auth,
        files=[("file", (picture.name, picture.read_bytes(), "image/jpeg"))],
        data={"modality": "DX", "body_part": "CHEST", "anonymous": "yes"},
        timeout=360,
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["status"] == "done"
    (series,) = answer["series"]
    assert series["route"] == "chest-xray" and series["job"]["state"] == "done"
    (result,) = series["results"]
    assert (result["model"], result["model_version"]) == (CHEST_MODEL, "0.3.0")
    probabilities = result["probabilities"]
    assert set(probabilities) == {"NORMAL", "PNEUMONIA"}
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert result["predicted_class"] == max(probabilities, key=probabilities.__getitem__)
    assert result["probability"] == probabilities[result["predicted_class"]]
    assert result["text"] == call_text(result["predicted_class"], result["probability"])
    # the package's label for this picture (the model classes 13 of its 16 right)
    assert result["predicted_class"] == "PNEUMONIA"

    links = result["links"]
    assert set(links) == {"heatmap", "sr", "sc", "pdf", "pdf_dicom"}
    heatmap = httpx.get(served.url + links["heatmap"], headers=auth)
    assert heatmap.status_code == 200 and heatmap.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(heatmap.content)).width > 0
    pdf = httpx.get(served.url + links["pdf"], headers=auth)
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    folder = served.node.settings.data_dir / "downloads"
    folder.mkdir(exist_ok=True)
    for kind in ("sr", "sc", "pdf_dicom"):
        got = httpx.get(served.url + links[kind], headers=auth)
        assert got.status_code == 200 and got.headers["content-type"] == "application/dicom"
        path = folder / f"{kind}.dcm"
        path.write_bytes(got.content)
        ds = pydicom.dcmread(path)
        assert ds.StudyInstanceUID == answer["study_uid"]
        assert_dciodvfy_clean(path)
        if kind == "sr":
            assert_dsrdump_ok(path)
    # the uploaded image itself, as stored
    (source,) = served.node.settings.spool_dir.glob(f"{answer['study_uid']}/*/*.dcm")
    assert_dciodvfy_clean(source)

    with served.node.node.sessions() as session:
        completed = session.scalars(
            select(Event).where(
                Event.kind == "series.completed", Event.series_uid == series["series_uid"]
            )
        ).one()
        audits = list(
            session.scalars(select(AuditEntry).where(AuditEntry.target == answer["study_uid"]))
        )
    assert completed.detail["policy"] == "upload"  # not the 10-minute quiet period
    predicted = [a for a in audits if a.action == "predict"]
    assert len(predicted) == 1 and predicted[0].username == UPLOADER[0]
    assert predicted[0].client_address == "127.0.0.1"
    assert sorted(a.detail["kind"] for a in audits if a.action == "download_object") == [
        "pdf",
        "sc",
        "sr",
    ]


def test_upload_page_shows_the_result_without_a_reload(served: Served) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{served.url}/login")
            page.fill("input[name=username]", UPLOADER[0])
            page.fill("input[name=password]", UPLOADER[1])
            page.click("button[type=submit]")
            page.wait_for_url(re.compile(r"/studies"))
            page.click("nav a[href='/upload']")
            page.wait_for_url(re.compile(r"/upload$"))
            page.set_input_files("input[name=file]", str(PICTURES[1]))
            page.select_option("select[name=modality]", "DX")
            page.select_option("select[name=body_part]", "CHEST")
            page.check("input[name=anonymous]")
            assert page.evaluate("document.documentElement.scrollWidth") <= 1280
            page.screenshot(path=str(ARTIFACTS / "upload-01-form.png"), full_page=True)
            # Processing paused (as an operator may): the page is shown before the job
            # can run, so the result must come into this page, not with it.
            assert queue.pause(served.node.node.sessions, "test")
            try:
                page.click("form.upload-form button[type=submit]")
                page.wait_for_url(re.compile(r"/studies/[0-9.]+$"))
                # the route is there at once, the result is not yet
                assert page.locator("text=route chest-xray").first.is_visible()
                assert page.locator("#live-status").inner_text().startswith("Processing")
                assert page.locator(".result").count() == 0
                page.screenshot(path=str(ARTIFACTS / "upload-02-routed.png"), full_page=True)
                # a mark on this document: a reload would make a new one without it
                page.evaluate("window.notReloaded = true")
            finally:
                queue.resume(served.node.node.sessions)
            page.wait_for_selector(".result img.gradcam-img", timeout=300_000)
            assert page.evaluate("window.notReloaded === true")
            page.wait_for_function(
                "() => [...document.images].every(i => i.complete && i.naturalWidth > 0)",
                timeout=20_000,
            )
            heading = page.locator(".result h4").first.inner_text()
            assert re.search(r"(NORMAL|PNEUMONIA) P\((NORMAL|PNEUMONIA)\) = [01]\.\d\d", heading)
            assert page.locator("a", has_text="Download the PDF report").count() == 1
            assert page.locator("#live-status").inner_text() == ""
            assert page.evaluate("document.documentElement.scrollWidth") <= 1280
            page.screenshot(path=str(ARTIFACTS / "upload-03-result.png"), full_page=True)
            assert errors == []  # no CSP violation, no failed script
        finally:
            browser.close()
