"""An edit on the admin page takes effect in a running node, without a restart.

A node started from its own configuration file (no routes), its admin page on a real
socket, DCMTK storescp as the PACS and storescu as the modality: a CT sent before the
edit stays unrouted; then an admin adds a destination and a route forwarding CT to it on
the page, and the next CT is routed, processed (in a worker process, or in the node's own
thread) and delivered to storescp.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from dicom_node.config import load_settings
from dicom_node.node import Node
from dicom_node.store import users
from dicom_node.store.db import Series
from dicom_node.store.states import SeriesState
from tests.dicom_files import pydicom_file
from tests.peers import free_port, have_dcmtk, run_storescp, storescu

pytestmark = [pytest.mark.skipif(not have_dcmtk(), reason="DCMTK not installed"), pytest.mark.slow]

FIELD_RE = r'name="{}" value="([^"]+)"'


def _config(folder: Path, scp_port: int, web_port: int, pacs_port: int, processes: int) -> Path:
    (folder / "models").mkdir()
    path = folder / "node.toml"
    path.write_text(
        f"""# A test node: no routes until an admin adds one on the page.
[node]
data_dir = "{folder / "data"}"

[scp]
port = {scp_port}

[completion]
quiet_seconds = 0.5  # short, for the test
scan_interval = 0.1

[workers]
processes = {processes}
poll_interval = 0.1

[models]
dir = "{folder / "models"}"

[web]
port = {web_port}

# The hospital PACS.
[[destinations]]
name = "pacs"
ae_title = "STORESCP"
host = "127.0.0.1"
port = {pacs_port}
""",
        encoding="utf-8",
    )
    return path


def _ct(folder: Path, name: str) -> Path:
    """CT_small with UIDs of its own: a new study, series and instance."""
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = folder / name
    ds.save_as(path, enforce_file_format=True)
    return path


def _wait(predicate: Any, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


def _field(page: str, name: str) -> str:
    match = re.search(FIELD_RE.format(name), page)
    assert match, f"no {name} on the page"
    return match.group(1)


@pytest.mark.parametrize("processes", [0, 1], ids=["in-process worker", "worker process"])
def test_a_route_added_on_the_page_routes_the_next_series(tmp_path: Path, processes: int) -> None:
    with (
        run_storescp(tmp_path / "pacs") as pacs_port,
        run_storescp(tmp_path / "archive", aet="ARCHIVE") as archive_port,
    ):
        config = _config(tmp_path, free_port(), free_port(), pacs_port, processes)
        node = Node(load_settings(config, environ={}))
        node.start()
        try:
            users.add_user(node.sessions, "alice", "admin-password-1", "admin")
            scp_port = node.scp.bound_port

            before = _ct(tmp_path, "before.dcm")
            assert storescu(scp_port, [before], aet="CT1").returncode == 0
            series_before = str(pydicom.dcmread(before).SeriesInstanceUID)

            def state(series_uid: str) -> SeriesState | None:
                with node.sessions() as session:
                    return session.scalar(
                        select(Series.state).where(Series.series_uid == series_uid)
                    )

            _wait(lambda: state(series_before) is SeriesState.UNROUTED, "unrouted series")

            assert node.web_url is not None
            with httpx.Client(base_url=node.web_url, follow_redirects=False) as web:
                login = web.get("/login").text
                web.post(
                    "/login",
                    data={
                        "username": "alice",
                        "password": "admin-password-1",
                        "csrf_token": _field(login, "csrf_token"),
                    },
                )
                form = web.get("/destinations/new").text
                response = web.post(
                    "/destinations/new",
                    data={
                        "csrf_token": _field(form, "csrf_token"),
                        "version": _field(form, "version"),
                        "name": "archive",
                        "enabled": "true",
                        "ae_title": "ARCHIVE",
                        "host": "127.0.0.1",
                        "port": str(archive_port),
                        "max_attempts": "3",
                        "backoff_seconds": "1",
                        "backoff_max": "5",
                        "timeout": "10",
                        "concurrency": "1",
                        "sr_class": "comprehensive3d",
                    },
                )
                assert response.status_code == 303, response.text
                form = web.get("/routes/new").text
                response = web.post(
                    "/routes/new",
                    data={
                        "csrf_token": _field(form, "csrf_token"),
                        "version": _field(form, "version"),
                        "name": "ct-archive",
                        "enabled": "true",
                        "match": "Modality = ^CT$",
                        "exclude": "",
                        "destinations": "archive",
                        "forward": "true",
                        "key_slices": "1",
                    },
                )
                assert response.status_code == 303, response.text
            # In force in the node, and in the file for its next start.
            assert node.settings.route("ct-archive").destinations == ("archive",)
            assert load_settings(config, environ={}).route("ct-archive").forward
            assert "# The hospital PACS." in config.read_text()

            after = _ct(tmp_path, "after.dcm")
            assert storescu(scp_port, [after], aet="CT1").returncode == 0
            sop_uid = str(pydicom.dcmread(after).SOPInstanceUID)
            received = tmp_path / "archive"
            _wait(
                lambda: any(
                    str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) == sop_uid
                    for p in received.iterdir()
                ),
                "the forwarded CT in the archive's storescp",
            )
            # The series before the edit stays as it was routed then; nothing went to pacs.
            assert state(series_before) is SeriesState.UNROUTED
            assert not any((tmp_path / "pacs").iterdir())
        finally:
            node.stop()
