"""The upload door over real HTTP against the app: the upload page and ``POST /api/predict``.

No worker runs here, so an accepted upload is stored, routed and queued, and the API
answers 202 with its poll link (the end-to-end run with the real chest model is in
``test_upload_e2e.py``). Every refusal is checked for its status, its reason, that it was
audited with the user and client address, and that nothing of it was stored.
"""

from __future__ import annotations

import datetime as dt
import io
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pydicom
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import Settings
from dicom_node.demo.studymaker import jpeg_to_dicom, pneumonia_package_pictures
from dicom_node.identity import NOT_FOR_DIAGNOSTIC_USE_SHORT, UPLOAD_MODEL_NAME
from dicom_node.store import users
from dicom_node.store.db import ApiToken, AuditEntry, Event, Instance, Series, User
from dicom_node.web import create_app
from tests.dicom_files import pydicom_file
from tests.dicom_validate import assert_dciodvfy_clean
from tests.web.conftest import FixtureData, csrf_token, log_in

UPLOADER = ("ursula", "uploader-password-1")
PICTURES = pneumonia_package_pictures()
needs_pictures = pytest.mark.skipif(not PICTURES, reason="pneumonia-model-package not installed")


@pytest.fixture(scope="session")
def uploader_hash() -> str:
    return users.hash_password(UPLOADER[1])


@pytest.fixture
def uploader(sessions: sessionmaker[Session], accounts: None, uploader_hash: str) -> str:
    """An ``uploader`` account (a viewer who may upload) and its API token."""
    with sessions() as session:
        session.add(User(username=UPLOADER[0], password_hash=uploader_hash, role="uploader"))
        session.commit()
    return users.create_token(sessions, UPLOADER[0], "script")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def png(width: int, height: int, mode: str = "L") -> bytes:
    image = Image.new(mode, (width, height), 128 if mode == "L" else (200, 40, 40))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def dicom_bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def chest_dicom(study_uid: str | None = None) -> bytes:
    """A DX chest X-ray (a real JPEG of the pneumonia package, wrapped as DICOM)."""
    return dicom_bytes(jpeg_to_dicom(PICTURES[0], study_uid=study_uid))


PICTURE_FIELDS = {"modality": "DX", "body_part": "CHEST", "anonymous": "yes"}


class Door:
    """The app, its database and what a refusal must leave untouched."""

    def __init__(self, app: FastAPI, sessions: sessionmaker[Session], settings: Settings) -> None:
        self.app = app
        self.sessions = sessions
        self.settings = settings
        self.client = TestClient(app, follow_redirects=False)
        self.instances_before = self.count(Instance)

    def count(self, table: Any) -> int:
        with self.sessions() as session:
            return int(session.scalar(select(func.count()).select_from(table)) or 0)

    def predict(
        self, token: str, files: list[tuple[str, tuple[str, bytes, str]]], **fields: str
    ) -> Any:
        return self.client.post("/api/predict", headers=bearer(token), files=files, data=fields)

    def audits(self, action: str) -> list[AuditEntry]:
        with self.sessions() as session:
            return list(
                session.scalars(
                    select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)
                )
            )

    def assert_nothing_stored(self) -> None:
        spool = self.settings.spool_dir
        assert not list(spool.glob("*/*/*.dcm"))
        assert self.count(Instance) == self.instances_before
        assert not list((spool / ".incoming").iterdir())  # no part file left behind


def make_door(
    settings: Settings, sessions: sessionmaker[Session], **changes: Any
) -> Iterator[Door]:
    upload = settings.upload.model_copy(update=changes.pop("upload", {}))
    settings = settings.model_copy(update={"upload": upload, **changes})
    app = create_app(settings, sessions, status=lambda: {"scp_listening": True})
    door = Door(app, sessions, settings)
    with door.client:
        yield door


@pytest.fixture
def door(
    settings: Settings, sessions: sessionmaker[Session], data: FixtureData, uploader: str
) -> Iterator[Door]:
    # No wait for a result: no worker runs in these tests.
    yield from make_door(settings, sessions, upload={"predict_timeout": 0})


def picture_part(data: bytes, name: str = "chest.jpeg", kind: str = "image/jpeg") -> Any:
    return [("file", (name, data, kind))]


# -- accepted uploads -----------------------------------------------------------------------


@needs_pictures
def test_api_picture_becomes_a_routed_secondary_capture(door: Door, uploader: str) -> None:
    """A JPEG with modality, body part and anonymous: stored as a Secondary Capture in a new
    study through the durable path, completed by the upload's end (no quiet period),
    routed, its job queued; 202 with the poll link because no worker runs."""
    response = door.predict(uploader, picture_part(PICTURES[0].read_bytes()), **PICTURE_FIELDS)
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["status"] == "pending"
    assert response.headers["location"] == answer["poll_url"]
    assert answer["poll_url"].startswith(f"/api/predict/{answer['study_uid']}?series=")
    (series,) = answer["series"]
    assert (series["modality"], series["body_part"], series["state"]) == ("DX", "CHEST", "routed")
    assert series["route"] == "chest"
    assert series["job"]["state"] == "queued" and series["results"] == []
    assert answer["notice"].startswith("NOT FOR DIAGNOSTIC USE")

    with door.sessions() as session:
        instance = session.scalars(select(Instance).order_by(Instance.id.desc())).first()
        assert instance is not None and instance.calling_ae == "UPLOAD"
        assert instance.remote_address == "testclient"
        stored = pydicom.dcmread(instance.path)
        completed = session.scalars(
            select(Event).where(
                Event.kind == "series.completed", Event.series_uid == series["series_uid"]
            )
        ).one()
        received = session.scalars(
            select(Event).where(
                Event.kind == "instance.received", Event.series_uid == series["series_uid"]
            )
        ).one()
    assert completed.detail["policy"] == "upload"
    assert received.detail.get("user") == UPLOADER[0]
    assert stored.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
    assert stored.StudyInstanceUID == answer["study_uid"]
    assert (stored.Modality, stored.BodyPartExamined) == ("DX", "CHEST")
    assert str(stored.PatientName) == "ANONYMOUS^" and stored.PatientIdentityRemoved == "YES"
    assert stored.ManufacturerModelName == UPLOAD_MODEL_NAME
    assert NOT_FOR_DIAGNOSTIC_USE_SHORT in stored.ImageComments
    with Image.open(PICTURES[0]) as picture:
        assert (stored.Columns, stored.Rows) == picture.size
        # the pixels as uploaded: the model sees the picture itself
        assert np.array_equal(stored.pixel_array, np.asarray(picture))
    assert_dciodvfy_clean(instance.path)
    assert not list((door.settings.spool_dir / ".incoming").iterdir())

    (entry,) = door.audits("predict")
    assert entry.success and entry.username == UPLOADER[0]
    assert entry.client_address == "testclient" and entry.target == answer["study_uid"]
    assert entry.detail["kind"] == "picture" and entry.detail["stored"] == 1

    # the poll link says the same until a worker has run the job
    polled = door.client.get(answer["poll_url"], headers=bearer(uploader))
    assert polled.status_code == 202 and polled.json()["series"] == answer["series"]


@needs_pictures
def test_api_dicom_files_and_a_second_upload_of_the_same(door: Door, uploader: str) -> None:
    data = chest_dicom()
    files = [("file", ("chest.dcm", data, "application/dicom"))]
    first = door.predict(uploader, files)
    assert first.status_code == 202, first.text
    (series,) = first.json()["series"]
    assert series["route"] == "chest" and series["instances"] == 1
    # the same file again: stored once, the series keeps its job (nothing new to run)
    again = door.predict(uploader, [("file", ("again.dcm", data, "application/octet-stream"))])
    assert again.status_code == 202
    assert again.json()["series"][0]["job"]["id"] == series["job"]["id"]
    assert door.count(Instance) == door.instances_before + 1
    assert [e.detail["duplicates"] for e in door.audits("predict")] == [0, 1]


@needs_pictures
def test_page_upload_goes_to_the_study_page_with_its_route(door: Door, uploader: str) -> None:
    client = log_in(door.client, *UPLOADER)
    page = client.get("/upload")
    assert page.status_code == 200 and 'name="body_part"' in page.text
    assert "chest" in page.text  # the routes in force are listed
    token = csrf_token(client, "/upload")
    fields = {
        "csrf_token": token,
        "modality": "DX",
        "body_part": "CHEST",
        "family_name": "Müller",
        "given_name": "Jürgen",
        "patient_id": "PID-UP-1",
        "birth_date": "2015-03-02",
        "sex": "M",
    }
    response = client.post("/upload", files=picture_part(PICTURES[1].read_bytes()), data=fields)
    assert response.status_code == 303, response.text
    study_uid = response.headers["location"].rsplit("/", 1)[-1]
    page = client.get(response.headers["location"])
    assert page.status_code == 200
    assert "Uploaded 1 picture as a Secondary Capture in a new study" in page.text
    assert "route chest" in page.text
    assert f'data-progress="/studies/{study_uid}/progress.json"' in page.text
    assert 'data-pending="yes"' in page.text
    assert '<script src="/static/live.js" defer></script>' in page.text
    progress = client.get(f"/studies/{study_uid}/progress.json").json()
    assert progress["pending"] is True and len(progress["version"]) == 16
    fragment = client.get(f"/studies/{study_uid}/live.html")
    assert fragment.status_code == 200 and "<html" not in fragment.text
    assert "queued" in fragment.text
    with door.sessions() as session:
        series = session.scalars(select(Series).order_by(Series.id.desc())).first()
        assert series is not None and series.route_name == "chest"
        path = session.scalars(select(Instance.path).where(Instance.series_id == series.id)).one()
    stored = pydicom.dcmread(path)
    assert str(stored.PatientName) == "Müller^Jürgen" and stored.PatientID == "PID-UP-1"
    assert (stored.PatientBirthDate, stored.PatientSex) == ("20150302", "M")
    (entry,) = door.audits("upload")
    assert entry.username == UPLOADER[0] and entry.client_address == "testclient"
    assert entry.detail["via"] == "page"


def test_viewer_and_sender_may_not_upload(
    door: Door, viewer_token: str, sessions: sessionmaker[Session]
) -> None:
    users.add_user(sessions, "modality", "sender-password", "sender")
    sender = users.create_token(sessions, "modality")
    for token, reason in ((viewer_token, "role viewer may not upload"), (sender, "may only store")):
        response = door.predict(token, picture_part(png(200, 200), "x.png", "image/png"))
        assert response.status_code == 403 and reason in response.json()["detail"]
    refused = door.audits("predict")
    assert [(e.username, e.detail["status"], e.success) for e in refused] == [
        ("victor", 403, False),
        ("modality", 403, False),
    ]
    anonymous = door.client.post("/api/predict", files=picture_part(png(200, 200)))
    assert anonymous.status_code == 401
    assert door.audits("predict")[-1].username == ""
    viewer = log_in(TestClient(door.app, follow_redirects=False), "victor", "viewer-password-1")
    assert viewer.get("/upload").status_code == 403
    assert "/upload" not in viewer.get("/studies").text  # no Upload link for a viewer
    door.assert_nothing_stored()


# -- refused uploads: a 4xx with the reason, nothing stored, audited -------------------------


def _refused(door: Door, response: Any, status: int, reason: str) -> None:
    assert response.status_code == status, response.text
    assert reason in response.json()["detail"]
    door.assert_nothing_stored()
    entry = door.audits("predict")[-1]
    assert not entry.success and entry.detail["status"] == status
    assert entry.username == UPLOADER[0] and entry.client_address == "testclient"


@needs_pictures
@pytest.mark.parametrize(
    ("files", "fields", "status", "reason"),
    [
        ([("file", ("notes.txt", b"hello", "text/plain"))], {}, 415, "sent as text/plain"),
        (
            [("file", ("fake.dcm", b"\0" * 300, "application/dicom"))],
            {},
            415,
            "neither a DICOM file",
        ),
        ([("file", ("a.gif", b"GIF89a" + b"\0" * 64, "image/gif"))], {}, 415, "image/gif"),
        ([], {"modality": "DX"}, 400, "no file in the upload"),
        (
            [("file", ("chest.png", png(200, 200), "image/png"))],
            {"anonymous": "yes"},
            400,
            "needs the fields modality and body_part",
        ),
        (
            [("file", ("chest.png", png(200, 200), "image/png"))],
            {"modality": "DX", "body_part": "CHEST"},
            422,
            "give the patient's family name or ID",
        ),
        (
            [("file", ("chest.png", png(200, 200), "image/png"))],
            {
                "modality": "DX",
                "body_part": "CHEST",
                "patient_id": "P1",
                "birth_date": "2150-01-01",
            },
            422,
            "in the future",
        ),
        (
            [("file", ("chest.png", png(200, 200), "image/png"))],
            {"modality": "D<X>", "body_part": "CHEST", "anonymous": "yes"},
            422,
            "not a DICOM code string",
        ),
        (
            [("file", ("tiny.png", png(40, 300), "image/png"))],
            PICTURE_FIELDS,
            422,
            "too small: 40 x 300 pixels, at least 64",
        ),
        (
            [("file", ("small.png", png(120, 120), "image/png"))],
            PICTURE_FIELDS,
            422,
            "too small for model chest-xray-pneumonia: 120 x 120 pixels, its input is 150 x 150",
        ),
        (
            [
                ("file", ("chest.png", png(200, 200), "image/png")),
                ("file", ("more.png", png(200, 200, "RGB"), "image/png")),
            ],
            PICTURE_FIELDS,
            400,
            "not both or several pictures",
        ),
    ],
    ids=[
        "text-part",
        "not-dicom",
        "gif",
        "no-file",
        "no-modality",
        "no-patient",
        "future-birth",
        "bad-modality",
        "below-minimum",
        "below-model-input",
        "two-pictures",
    ],
)
def test_bad_input_is_refused_whole(
    door: Door,
    uploader: str,
    files: list[Any],
    fields: dict[str, str],
    status: int,
    reason: str,
) -> None:
    if not files:  # an empty file input, as a browser sends it
        files = [("file", ("", b"", "application/octet-stream"))]
    _refused(door, door.predict(uploader, files, **fields), status, reason)


@needs_pictures
def test_refused_dicom_files(door: Door, uploader: str) -> None:
    truncated = pydicom_file("MR_truncated.dcm").read_bytes()
    files = [
        ("file", ("good.dcm", chest_dicom(), "application/dicom")),
        ("file", ("cut.dcm", truncated, "application/dicom")),
    ]
    # the good file is not stored either: everything is checked before anything is stored
    _refused(door, door.predict(uploader, files), 422, "'cut.dcm' is refused: 0xC210")
    two_studies = [
        ("file", ("a.dcm", chest_dicom(), "application/dicom")),
        ("file", ("b.dcm", chest_dicom(), "application/dicom")),
    ]
    _refused(door, door.predict(uploader, two_studies), 400, "belong to 2 studies")
    mixed = [
        ("file", ("a.dcm", chest_dicom(), "application/dicom")),
        ("file", ("b.jpeg", PICTURES[0].read_bytes(), "image/jpeg")),
    ]
    _refused(door, door.predict(uploader, mixed, **PICTURE_FIELDS), 400, "not both")
    small = pydicom.dcmread(pydicom_file("CT_small.dcm"))  # 128 x 128
    _refused(
        door,
        door.predict(uploader, [("file", ("ct.dcm", dicom_bytes(small), "application/dicom"))]),
        422,
        "too small for model chest-xray-pneumonia: 128 x 128 pixels",
    )


def test_wrong_request_content_type(door: Door, uploader: str) -> None:
    response = door.client.post(
        "/api/predict", headers=bearer(uploader), json={"file": "chest.jpeg"}
    )
    _refused(door, response, 415, "Content-Type must be multipart/form-data")


@needs_pictures
def test_unrouted_upload_is_refused(
    settings: Settings, sessions: sessionmaker[Session], data: FixtureData, uploader: str
) -> None:
    routes = (settings.routes[0].model_copy(update={"match": {"Modality": "^(CR|DX)$"}}),)
    for door in make_door(settings, sessions, routes=routes, upload={"predict_timeout": 0}):
        fields = {**PICTURE_FIELDS, "modality": "US", "body_part": "KNEE"}
        response = door.predict(uploader, picture_part(PICTURES[0].read_bytes()), **fields)
        _refused(door, response, 422, "no route takes 'chest.jpeg' (Modality 'US'")
        assert "chest: Modality='US' does not match" in response.json()["detail"]


@needs_pictures
def test_limits(
    settings: Settings, sessions: sessionmaker[Session], data: FixtureData, uploader: str
) -> None:
    limits = {"max_file_size": 64 * 1024, "max_request_size": 256 * 1024, "max_files": 2}
    for door in make_door(settings, sessions, upload=limits):
        big = PICTURES[0].read_bytes()
        assert len(big) > 64 * 1024
        response = door.predict(uploader, picture_part(big), **PICTURE_FIELDS)
        _refused(door, response, 413, "'chest.jpeg' is larger than 65536 bytes")
        three = [("file", (f"{i}.png", png(200, 200), "image/png")) for i in range(3)]
        _refused(door, door.predict(uploader, three), 413, "more than 2 files")
        declared = door.client.post(
            "/api/predict",
            headers={
                **bearer(uploader),
                "Content-Type": "multipart/form-data; boundary=x",
                "Content-Length": str(10**9),
            },
            content=b"--x--\r\n",
        )
        _refused(door, declared, 413, "larger than 262144 (upload.max_request_size)")


def test_a_trickled_upload_is_refused_at_its_deadline(
    settings: Settings, sessions: sessionmaker[Session], data: FixtureData, uploader: str
) -> None:
    """Bytes that come too slowly (no MiB within upload.body_timeout): 408, nothing kept."""
    for door in make_door(settings, sessions, upload={"body_timeout": 0.5}):
        body = b'--x\r\nContent-Disposition: form-data; name="modality"\r\n\r\nDX\r\n'

        def trickle(body: bytes = body) -> Iterator[bytes]:
            for start in range(0, len(body), 4):
                time.sleep(0.1)
                yield body[start : start + 4]

        response = door.client.post(
            "/api/predict",
            headers={**bearer(uploader), "Content-Type": "multipart/form-data; boundary=x"},
            content=trickle(),
        )
        _refused(door, response, 408, "request body too slow")
        assert "upload.body_timeout" in response.json()["detail"]


def test_expired_token_is_refused_with_the_reason(
    door: Door, uploader: str, sessions: sessionmaker[Session]
) -> None:
    with sessions() as session:
        session.execute(update(ApiToken).values(expires_at=dt.datetime(2020, 1, 1, 12, 0)))
        session.commit()
    for path in ("/api/predict", "/dicomweb/studies"):
        response = door.client.post(path, headers=bearer(uploader), files=picture_part(png(9, 9)))
        assert response.status_code == 401
        assert "API token expired at 2020-01-01 12:00 UTC" in response.json()["detail"]
    assert door.client.get("/api/me", headers=bearer(uploader)).status_code == 401
    door.assert_nothing_stored()


@needs_pictures
def test_page_upload_needs_its_csrf_token(door: Door) -> None:
    client = log_in(door.client, *UPLOADER)
    response = client.post(
        "/upload",
        files=picture_part(PICTURES[0].read_bytes()),
        data={**PICTURE_FIELDS, "csrf_token": "forged"},
    )
    assert response.status_code == 403
    door.assert_nothing_stored()
    entry = door.audits("upload")[-1]
    assert not entry.success and entry.detail["status"] == 403


@needs_pictures
def test_page_shows_a_refusal_on_the_form(door: Door) -> None:
    client = log_in(door.client, *UPLOADER)
    token = csrf_token(client, "/upload")
    response = client.post(
        "/upload",
        files=picture_part(png(30, 30), "tiny.png", "image/png"),
        data={**PICTURE_FIELDS, "csrf_token": token, "modality": "CR"},
    )
    assert response.status_code == 422
    assert "Upload refused (422)" in response.text and "too small" in response.text
    assert '<option value="CR" selected>' in response.text  # the choices are kept
    door.assert_nothing_stored()


# -- results, objects and the poll link -------------------------------------------------------


def test_poll_answers_with_results_and_links(door: Door, uploader: str, data: FixtureData) -> None:
    chest = data.studies["chest"]
    response = door.client.get(f"/api/predict/{chest}", headers=bearer(uploader))
    assert response.status_code == 200
    answer = response.json()
    assert answer["status"] == "done"
    (result,) = answer["series"][0]["results"]
    assert result["text"] == "PNEUMONIA P(PNEUMONIA) = 0.91"
    assert result["probability"] == 0.91 and result["model_version"] == "0.3.0"
    base = f"/studies/{chest}/results/{data.results['chest']}"
    assert result["links"] == {
        "heatmap": f"{base}/gradcam.png",
        "sr": f"{base}/sr.dcm",
        "sc": f"{base}/sc.dcm",
        "pdf": f"{base}/report.pdf",
        "pdf_dicom": f"{base}/pdf.dcm",
    }
    for kind in ("sr", "sc", "pdf"):
        got = door.client.get(
            result["links"][kind if kind != "pdf" else "pdf_dicom"], headers=bearer(uploader)
        )
        assert got.status_code == 200 and got.headers["content-type"] == "application/dicom"
        assert pydicom.dcmread(io.BytesIO(got.content)).StudyInstanceUID == chest
    downloads = door.audits("download_object")
    assert [e.detail["kind"] for e in downloads] == ["sr", "sc", "pdf"]
    assert all(e.username == UPLOADER[0] and e.client_address == "testclient" for e in downloads)
    brain = f"/studies/{data.studies['brain']}/results/{data.results['brain']}/pdf.dcm"
    assert door.client.get(brain, headers=bearer(uploader)).status_code == 404

    failed = door.client.get(f"/api/predict/{data.studies['failed']}", headers=bearer(uploader))
    assert failed.status_code == 200 and failed.json()["status"] == "failed"
    assert failed.json()["series"][0]["job"]["error"] == "ValueError: model crashed"
    unrouted = door.client.get(f"/api/predict/{data.studies['dx']}", headers=bearer(uploader))
    assert unrouted.json()["status"] == "unrouted"
    missing = door.client.get("/api/predict/1.2.3.4", headers=bearer(uploader))
    assert missing.status_code == 404
    assert len(door.audits("api_view_study")) == 4
