"""The console in headless Chromium at 1280 px: queue (pause, resume, retry), routes (test
a file, add a route, a refused edit), destinations (C-ECHO against DCMTK storescp, hold),
models and refused peers. Each page must carry the notice, fit the window and load with
no console error (CSP). Screenshots go to ``test-artifacts/web/console-*.png``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import LiveSettings, load_settings
from dicom_node.receive import refusals
from dicom_node.store.states import JobState, RefusalKind
from dicom_node.web import WebServer, start_web
from tests.dicom_files import pydicom_file
from tests.peers import free_port, have_dcmtk, run_storescp
from tests.web.conftest import ADMIN, FixtureData
from tests.web.test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS
from tests.web.test_config_edit import write_config

WIDTH = 1280

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed"),
    pytest.mark.skipif(not have_dcmtk(), reason="DCMTK storescp not installed"),
]


@pytest.fixture
def server(
    tmp_path: Path, sessions: sessionmaker[Session], accounts: None, data: FixtureData
) -> Iterator[tuple[WebServer, LiveSettings]]:
    """The admin page of a node configured by its own file (so it can be edited), with a
    DCMTK storescp as its PACS and a few refused peers on record."""
    with run_storescp(tmp_path / "pacs") as pacs_port:
        config = write_config(tmp_path)
        text = config.read_text().replace("port = 4242", f"port = {pacs_port}")
        config.write_text(f"{text}\n[web]\nport = {free_port()}\n")
        live = LiveSettings(load_settings(config, environ={}))
        for calling, meaning in (
            ("STRANGER", refusals.rejection_meaning(1, 1, 3)),
            ("CT_SCANNER_2", refusals.rejection_meaning(1, 1, 7)),
        ):
            refusals.record(
                sessions,
                RefusalKind.ASSOCIATION,
                calling_ae=calling,
                called_ae="DICOM_NODE" if calling == "STRANGER" else "PACS",
                address="10.20.30.40",
                meaning=meaning,
            )
        refusals.record(
            sessions,
            RefusalKind.STORE,
            calling_ae="CT1",
            called_ae="DICOM_NODE",
            address="10.20.30.41",
            status=0xC220,
            meaning="a required UID is missing or invalid",
            reason="SeriesInstanceUID '1.2.3/../../evil' is not a valid UID",
            sop_instance_uid="1.2.826.0.1.3680043.8.498.77",
        )
        web = start_web(live, sessions, status=lambda: {"scp_listening": True, "workers_alive": 1})
        web.server.config.app.state.web.editor.environ = {}  # type: ignore[attr-defined]
        yield web, live
        web.stop()


def _check_page(page: Any, name: str) -> None:
    """The notice is there, nothing is wider than the window; then a screenshot."""
    assert page.locator("text=Not for diagnostic use").first.is_visible(), name
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= WIDTH, f"{name} is {width} px wide"
    page.screenshot(path=str(ARTIFACTS / f"console-{name}.png"), full_page=True)


def test_console_in_chromium(
    server: tuple[WebServer, LiveSettings],
    data: FixtureData,
    sessions: sessionmaker[Session],
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    web, live = server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": 900})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(f"{web.url}/queue")
            page.fill("input[name=username]", ADMIN[0])
            page.fill("input[name=password]", ADMIN[1])
            page.click("button[type=submit]")
            page.goto(f"{web.url}/queue")

            # Queue: pause, see it, resume; retry the failed job.
            assert page.locator("td.error", has_text="ValueError: model crashed").is_visible()
            page.click("text=Pause processing")
            page.wait_for_selector("text=Processing is paused")
            _check_page(page, "01-queue-paused")
            page.click("text=Resume processing")
            page.wait_for_selector("text=Processing resumed")
            page.locator("button.retry").first.click()
            page.wait_for_selector(f"text=Job {data.jobs['failed']} queued again.")
            assert page.locator(f"tr.job-{JobState.QUEUED}").count() == 1
            _check_page(page, "02-queue")

            # Routes: test a file, then add a route (first refused, then saved).
            page.goto(f"{web.url}/routes")
            assert page.locator("table.routes tbody tr").count() == len(live.current.routes)
            page.set_input_files("input[name=file]", str(pydicom_file("CT_small.dcm")))
            page.click("section#test button[type=submit]")
            page.wait_for_selector("ol.reasons li")
            assert "unrouted: no route matched" in page.locator(".test-result").inner_text()
            assert page.locator("ol.reasons li").count() == len(live.current.routes)
            _check_page(page, "03-routes-test")
            page.click("text=Add a route")
            page.fill("input[name=name]", "ct-forward")
            page.fill("textarea[name=match]", "Modality = ^CT$")
            page.check("input[name=forward]")
            page.click("button:text('Save')")
            page.wait_for_selector("text=forward = true needs at least one destination")
            _check_page(page, "04-route-refused")
            page.check("input[name=destinations][value=pacs]")
            page.click("button:text('Save')")
            page.wait_for_selector("text=Route ct-forward saved")
            assert live.current.routes[-1].name == "ct-forward"
            page.locator("tr", has_text="ct-forward").locator("button:text('↑')").click()
            page.wait_for_selector("text=Route ct-forward moved up")
            assert live.current.routes[-2].name == "ct-forward"
            _check_page(page, "05-routes")
            page.goto(f"{web.url}/routes/brain-mri/edit")
            _check_page(page, "06-route-form")

            # Destinations: C-ECHO the storescp, hold the destination.
            page.goto(f"{web.url}/destinations")
            page.click("button:text('C-ECHO')")
            page.wait_for_selector("text=success in")
            page.click("button:text('Hold')")
            page.wait_for_selector("text=Its deliveries wait until it is enabled.")
            assert live.current.destination("pacs").enabled is False
            _check_page(page, "07-destinations")
            page.goto(f"{web.url}/destinations/pacs/edit")
            _check_page(page, "08-destination-form")

            page.goto(f"{web.url}/models")
            assert page.locator("text=Research and demonstration only.").first.is_visible()
            _check_page(page, "09-models")
            page.goto(f"{web.url}/refused")
            assert page.locator("table.refused tbody tr").count() == 3
            _check_page(page, "10-refused")
            page.goto(f"{web.url}/audit")
            added = page.locator("tr", has_text="add_route")
            added.locator("summary", has_text="diff of the configuration file").click()
            assert re.search(r'\+name = "ct-forward"', added.locator("pre.diff").inner_text())
            _check_page(page, "11-audit-diff")
            # The one refused edit answered 422 (Unprocessable Entity), which Chromium logs.
            assert errors == [
                "Failed to load resource: the server responded with a status of 422 "
                "(Unprocessable Entity)"
            ]
        finally:
            browser.close()
