"""The admin page in headless Chromium: log in, filter, open a study, see Grad-CAM, retry.

Uses Debian's /usr/bin/chromium through Playwright (no browser download). Screenshots go to
``test-artifacts/web/`` for a person to look at.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.store.db import Delivery
from dicom_node.web import WebServer, start_web
from tests.web.conftest import ADMIN, FixtureData, make_settings
from tests.web.test_server import free_port

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed"),
]


@pytest.fixture
def server(
    tmp_path: Path, sessions: sessionmaker[Session], accounts: None, data: FixtureData
) -> Iterator[WebServer]:
    settings = make_settings(tmp_path, port=free_port())
    # the fixture data's result files live under the default settings' results folder
    assert (tmp_path / "data" / "results").is_dir()
    web = start_web(settings, sessions, status=lambda: {"scp_listening": True, "workers_alive": 1})
    yield web
    web.stop()


def test_admin_workflow(
    server: WebServer, data: FixtureData, sessions: sessionmaker[Session]
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            # 1280 px: the width of a common hospital workstation window.
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

            page.goto(f"{server.url}/studies")
            assert page.url.endswith("/login")
            page.screenshot(path=str(ARTIFACTS / "01-login.png"))
            page.fill("input[name=username]", ADMIN[0])
            page.fill("input[name=password]", ADMIN[1])
            page.click("button[type=submit]")
            page.wait_for_url(re.compile(r"/studies"))
            assert page.locator("text=Not for diagnostic use").first.is_visible()
            assert page.locator("table.studies tbody tr").count() == 5
            # the list fits the window: no sideways scrolling to reach a study's progress
            assert page.evaluate("document.documentElement.scrollWidth") <= 1280
            page.screenshot(path=str(ARTIFACTS / "02-studies.png"), full_page=True)

            page.select_option("select[name=modality]", "CR")
            page.click("button[value=apply]")
            page.wait_for_selector("text=2 found")
            assert page.locator("table.studies tbody tr").count() == 2
            assert "CR" not in page.url  # the filter is not in the URL
            page.screenshot(path=str(ARTIFACTS / "03-studies-filtered.png"), full_page=True)

            # the study opens from its patient
            page.click(f"td.patient a[href='/studies/{data.studies['chest']}']")
            page.wait_for_selector("img.gradcam-img")
            image = page.locator("img.gradcam-img").first
            image.scroll_into_view_if_needed()
            page.wait_for_function(
                "() => [...document.images].every(i => i.complete)", timeout=10_000
            )
            assert image.evaluate("img => img.naturalWidth") > 0
            # the Grad-CAM thumbnail opens the picture at its own size in a new tab
            with page.context.expect_page() as opened:
                image.click()
            full = opened.value
            full.wait_for_load_state()
            assert full.url.endswith("/gradcam.png")
            natural = full.evaluate("document.images[0].naturalWidth")
            assert natural == image.evaluate("img => img.naturalWidth") > 0
            full.close()
            assert page.locator("ul.sr").first.is_visible()
            page.screenshot(path=str(ARTIFACTS / "04-study.png"), full_page=True)

            page.click("button.retry")
            page.wait_for_selector("text=queued for another attempt")
            page.screenshot(path=str(ARTIFACTS / "05-retried.png"), full_page=True)

            # a multi-slice series: per-slice plot, Grad-CAM from the Secondary Capture
            page.goto(f"{server.url}/studies/{data.studies['brain']}")
            page.wait_for_function(
                "() => [...document.images].every(i => i.complete)", timeout=10_000
            )
            assert page.locator("svg.slices rect.bar-pos").count() == 3
            assert page.locator("img.gradcam-img").first.evaluate("i => i.naturalWidth") > 0
            page.screenshot(path=str(ARTIFACTS / "06-study-mr.png"), full_page=True)
            page.goto(f"{server.url}/models")
            page.screenshot(path=str(ARTIFACTS / "07-models.png"))
            page.goto(f"{server.url}/audit")
            page.screenshot(path=str(ARTIFACTS / "08-audit.png"), full_page=True)
            assert errors == []  # no CSP violations or failed loads
        finally:
            browser.close()
    with sessions() as session:
        delivery = session.get(Delivery, data.deliveries["chest_sc"])
        assert delivery is not None and delivery.state == "pending"
