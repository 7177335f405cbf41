"""The STOW-RS door of a running node (``POST /dicomweb/studies``), with real senders:
``dicomweb-client``, Orthanc's DICOMweb plugin and hand-built HTTP requests for what no
well-behaved client sends. Each refusal is checked for its status, its reason and that
nothing of it was stored."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
import time
import urllib.error
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, MRImageStorage, generate_uid
from sqlalchemy import select

from dicom_node.store import users
from dicom_node.store.db import AuditEntry, Event, Instance
from tests.conftest import NodeHandle
from tests.dicom_files import pydicom_file
from tests.peers import free_port, have_orthanc_dicomweb, run_orthanc

DICOM = 'multipart/related; type="application/dicom"; boundary=b0undary'


@dataclass
class Door:
    """A node with its admin app, and a sender account's token."""

    node: NodeHandle
    url: str  # the DICOMweb service root, .../dicomweb
    token: str

    def post(
        self,
        body: bytes | Iterator[bytes],
        *,
        path: str = "/studies",
        content_type: str | None = DICOM,
        token: str | None = "",
        accept: str | None = None,
    ) -> httpx.Response:
        headers = {}
        if content_type is not None:
            headers["Content-Type"] = content_type
        if token is not None:
            headers["Authorization"] = f"Bearer {token or self.token}"
        if accept is not None:
            headers["Accept"] = accept
        return httpx.post(self.url + path, content=body, headers=headers, timeout=120)

    def stored(self) -> list[Instance]:
        return self.node.query(select(Instance).order_by(Instance.id))

    def audits(self) -> list[AuditEntry]:
        return self.node.query(select(AuditEntry).where(AuditEntry.action == "stow"))

    def assert_nothing_stored(self) -> None:
        spool = self.node.settings.spool_dir
        assert not list(spool.glob("*/*/*.dcm"))
        assert self.stored() == []
        assert not list((spool / ".incoming").iterdir())  # no part file left behind


def make_door(start_node: Any, **sections: Any) -> Door:
    node = start_node(web={"enabled": True, "port": free_port()}, **sections)
    users.add_user(node.node.sessions, "pacs", "pacs-password", "sender")
    return Door(
        node, node.node.web_url + "/dicomweb", users.create_token(node.node.sessions, "pacs")
    )


@pytest.fixture
def door(start_node: Any) -> Door:
    return make_door(start_node)


def multipart(*parts: bytes | tuple[str, bytes], close: bool = True) -> bytes:
    """A multipart/related body with boundary ``b0undary``; a part is its bytes (typed
    application/dicom) or (content type, bytes)."""
    out = io.BytesIO()
    for part in parts:
        kind, data = part if isinstance(part, tuple) else ("application/dicom", part)
        out.write(f"--b0undary\r\nContent-Type: {kind}\r\n\r\n".encode() + data + b"\r\n")
    if close:
        out.write(b"--b0undary--\r\n")
    return out.getvalue()


def encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def instance(name: str = "CT_small.dcm", **changes: Any) -> Dataset:
    """A real pydicom test file with a new SOP Instance UID (File Meta too) and changes."""
    ds = pydicom.dcmread(pydicom_file(name))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


def failures(response: httpx.Response) -> list[tuple[str | None, int]]:
    """(SOP Instance UID or None, Failure Reason) of each Failed SOP Sequence item."""
    items = response.json().get("00081198", {}).get("Value", [])
    return [
        ((item.get("00081155") or {}).get("Value", [None])[0], item["00081197"]["Value"][0])
        for item in items
    ]


def referenced(response: httpx.Response) -> list[str]:
    items = response.json().get("00081199", {}).get("Value", [])
    return [item["00081155"]["Value"][0] for item in items]


# -- well-behaved senders -----------------------------------------------------------------


def test_dicomweb_client_stores_instances_durable_indexed_audited(door: Door) -> None:
    datasets = [instance("CT_small.dcm"), instance("MR_small.dcm")]
    client = DICOMwebClient(door.url, headers={"Authorization": f"Bearer {door.token}"})
    answer = client.store_instances(datasets)

    uids = [str(ds.SOPInstanceUID) for ds in datasets]
    assert [str(item.ReferencedSOPInstanceUID) for item in answer.ReferencedSOPSequence] == uids
    assert "FailedSOPSequence" not in answer
    rows = door.stored()
    assert [r.sop_instance_uid for r in rows] == uids
    for row, ds in zip(rows, datasets, strict=True):
        # Stored as sent: the bytes dicomweb-client encoded with pydicom's dcmwrite.
        sent = io.BytesIO()
        pydicom.dcmwrite(sent, ds)
        assert Path(row.path).read_bytes() == sent.getvalue()
        assert (row.calling_ae, row.remote_address) == ("STOW", "127.0.0.1")
    received = door.node.query(select(Event).where(Event.kind == "instance.received"))
    assert [(e.detail["calling_ae"], e.detail["user"]) for e in received] == [("STOW", "pacs")] * 2
    (entry,) = door.audits()
    assert (entry.username, entry.client_address, entry.success) == ("pacs", "127.0.0.1", True)
    assert entry.detail["stored"] == 2 and entry.detail["failed"] == 0
    # The same instances again: duplicates are success, stored once (like C-STORE).
    again = client.store_instances(datasets)
    assert len(again.ReferencedSOPSequence) == 2
    assert len(door.stored()) == 2


def test_store_to_a_study_keeps_only_that_study(door: Door) -> None:
    ct, other = instance("CT_small.dcm"), instance("CT_small.dcm", StudyInstanceUID=generate_uid())
    client = DICOMwebClient(door.url, headers={"Authorization": f"Bearer {door.token}"})
    answer = client.store_instances([ct, other], study_instance_uid=str(ct.StudyInstanceUID))
    assert [str(i.ReferencedSOPInstanceUID) for i in answer.ReferencedSOPSequence] == [
        str(ct.SOPInstanceUID)
    ]
    (failed,) = answer.FailedSOPSequence
    assert (str(failed.ReferencedSOPInstanceUID), failed.FailureReason) == (
        str(other.SOPInstanceUID),
        0x0110,
    )
    assert [r.sop_instance_uid for r in door.stored()] == [str(ct.SOPInstanceUID)]


def test_xml_store_response_when_asked(door: Door) -> None:
    ct = instance()
    response = door.post(multipart(encode(ct), b"not DICOM"), accept="application/dicom+xml")
    assert response.status_code == 202
    assert response.headers["content-type"] == "application/dicom+xml"
    ns = "{http://dicom.nema.org/PS3.19/models/NativeDICOM}"
    root = ET.fromstring(response.content)
    assert root.tag == f"{ns}NativeDicomModel"
    sequences = {a.get("keyword"): a for a in root.findall(f"{ns}DicomAttribute")}
    stored = sequences["ReferencedSOPSequence"].find(
        f"{ns}Item/{ns}DicomAttribute[@keyword='ReferencedSOPInstanceUID']/{ns}Value"
    )
    assert stored is not None and stored.text == str(ct.SOPInstanceUID)
    reason = sequences["FailedSOPSequence"].find(
        f"{ns}Item/{ns}DicomAttribute[@keyword='FailureReason']/{ns}Value"
    )
    assert reason is not None and reason.text == str(0xC210)


# -- bad parts: a reason each, the good parts still stored ----------------------------------


def test_bad_parts_get_failure_reasons_good_parts_are_stored(door: Door) -> None:
    good = instance()
    wrong_class = instance()
    # The File Meta (written first) says MR, the dataset CT (UIDs of the same length).
    mismatched = encode(wrong_class).replace(CTImageStorage.encode(), MRImageStorage.encode(), 1)
    bad_uid = instance(SeriesInstanceUID="1.2.3.abc")
    cut = instance()
    body = multipart(
        encode(good),
        b"this is not a DICOM file",
        ("text/plain", b"hello"),
        mismatched,
        encode(bad_uid),
        encode(cut)[:-500],  # pixels cut short
    )
    response = door.post(body)

    assert response.status_code == 202
    assert referenced(response) == [str(good.SOPInstanceUID)]
    assert failures(response) == [
        (None, 0xC210),  # not DICOM: no UID to name
        (None, 0xC000),  # not application/dicom
        (str(wrong_class.SOPInstanceUID), 0xA900),
        (str(bad_uid.SOPInstanceUID), 0xC220),
        (str(cut.SOPInstanceUID), 0xC210),
    ]
    warning = response.headers["warning"]
    for text in ("part 2: 0xC210", "part 3: 0xC000", "part 4: 0xA900", "part 5: 0xC220"):
        assert text in warning
    assert "part 6: 0xC210" in warning and "truncated" in warning
    assert [r.sop_instance_uid for r in door.stored()] == [str(good.SOPInstanceUID)]
    assert not list((door.node.settings.spool_dir / ".incoming").iterdir())
    (entry,) = door.audits()
    assert entry.detail["stored"] == 1 and entry.detail["failed"] == 5


def test_every_part_refused_is_409_nothing_stored(door: Door) -> None:
    response = door.post(multipart(b"junk", b"more junk"))
    assert response.status_code == 409
    assert failures(response) == [(None, 0xC210), (None, 0xC210)]
    door.assert_nothing_stored()
    (entry,) = door.audits()
    assert not entry.success


# -- requests refused whole ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "status", "reason"),
    [
        ("application/dicom", 415, "must be multipart/related"),
        ('multipart/related; type="application/dicom+json"; boundary=b0undary', 415, "json"),
        ("multipart/form-data; boundary=b0undary", 415, "multipart/form-data"),
        (None, 415, "got none"),
        ('multipart/related; type="application/dicom"', 400, "no boundary"),
    ],
)
def test_wrong_content_type(door: Door, content_type: str | None, status: int, reason: str) -> None:
    response = door.post(multipart(encode(instance())), content_type=content_type)
    assert response.status_code == status
    assert reason in response.json()["detail"]
    door.assert_nothing_stored()
    (entry,) = door.audits()
    assert (entry.success, entry.detail["status"]) == (False, status)


def test_tokens_missing_unknown_revoked_disabled_or_of_a_viewer(door: Door) -> None:
    sessions = door.node.node.sessions
    users.add_user(sessions, "old-pacs", "old-pacs-password", "sender")
    revoked = users.create_token(sessions, "old-pacs")
    users.revoke_tokens(sessions, "old-pacs")
    users.add_user(sessions, "gone", "gone-password", "sender")
    disabled = users.create_token(sessions, "gone")
    users.disable_user(sessions, "gone")
    users.add_user(sessions, "victor", "viewer-password", "viewer")
    viewer = users.create_token(sessions, "victor")
    body = multipart(encode(instance()))

    for token, status in (
        (None, 401),
        ("dn_unknown", 401),
        (revoked, 401),
        (disabled, 401),
        (viewer, 403),
    ):
        response = door.post(body, token=token)
        assert response.status_code == status, token
        assert response.json()["detail"]
        if status == 401:
            assert response.headers["www-authenticate"].startswith("Bearer")
    door.assert_nothing_stored()
    assert [(e.username, e.success) for e in door.audits()] == [("", False)] * 4 + [
        ("victor", False)
    ]


def test_over_the_size_limit_declared_or_streamed(start_node: Any) -> None:
    door = make_door(start_node, dicomweb={"max_request_size": 64 * 1024})
    body = multipart(*(encode(instance()) for _ in range(20)))  # ~800 KB
    assert len(body) > 64 * 1024

    declared = door.post(body)
    assert declared.status_code == 413
    assert "dicomweb.max_request_size" in declared.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it streams
        for start in range(0, len(body), 16 * 1024):
            yield body[start : start + 16 * 1024]

    streamed = door.post(chunks())
    assert streamed.status_code == 413
    assert "larger than 65536 bytes" in streamed.json()["detail"]
    door.assert_nothing_stored()


def test_too_many_parts(start_node: Any) -> None:
    door = make_door(start_node, dicomweb={"max_instances": 2})
    response = door.post(multipart(*(encode(instance()) for _ in range(3))))
    assert response.status_code == 413
    assert "more than 2 parts" in response.json()["detail"]
    door.assert_nothing_stored()


def test_truncated_or_malformed_body_stores_nothing(door: Door) -> None:
    good = encode(instance())
    cut = door.post(multipart(good, good[:-10], close=False)[:-20])
    assert cut.status_code == 400
    assert "ended before the closing boundary" in cut.json()["detail"]
    garbage = door.post(b"x" * 100_000)
    assert garbage.status_code == 400
    assert "no multipart boundary" in garbage.json()["detail"]
    door.assert_nothing_stored()


def _raw_request_head(door: Door, length: int) -> tuple[str, int, bytes]:
    """Host, port and the head of a STOW-RS request of ``length`` body bytes, for a client
    that writes its body on a raw socket."""
    host, port = door.url.removeprefix("http://").split("/", 1)[0].split(":")
    head = (
        f"POST /dicomweb/studies HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {door.token}\r\nContent-Type: {DICOM}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()
    return host, int(port), head


def test_a_client_that_goes_away_mid_body_leaves_nothing(door: Door) -> None:
    """The connection closes after half of the declared body: the parts received so far
    (a whole instance among them) are not stored, their files are removed."""
    body = multipart(encode(instance()), encode(instance()))
    host, port, head = _raw_request_head(door, len(body))
    with socket.create_connection((host, port)) as sock:
        sock.sendall(head + body[: len(body) * 3 // 4])
    door.node.wait_until(lambda: bool(door.audits()), what="the refused request's audit entry")
    (entry,) = door.audits()
    assert (entry.success, entry.detail["status"]) == (False, 400)
    assert "went away" in entry.detail["reason"]
    door.assert_nothing_stored()


def test_a_trickled_body_is_refused_at_its_deadline(
    start_node: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that sends its body a few bytes at a time (each chunk keeps the connection
    alive) is answered 408 once a MiB has not arrived within dicomweb.body_timeout: one
    line, an audit entry, nothing stored, and the node serves others meanwhile."""
    door = make_door(start_node, dicomweb={"body_timeout": 1.5})
    body = multipart(encode(instance()))
    host, port, head = _raw_request_head(door, len(body))
    stop = threading.Event()
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(head)

        def trickle() -> None:
            with contextlib.suppress(OSError):
                for start in range(0, len(body), 16):
                    if stop.wait(0.2):
                        return
                    sock.sendall(body[start : start + 16])

        sender = threading.Thread(target=trickle, daemon=True)
        started = time.monotonic()
        sender.start()
        # Meanwhile a well-behaved client is served.
        assert door.post(multipart(encode(instance()))).status_code == 200
        answer = sock.recv(4096).decode("latin-1")
        waited = time.monotonic() - started
        while "body_timeout" not in answer and (more := sock.recv(4096)):
            answer += more.decode("latin-1")  # the JSON body may come in a second segment
        stop.set()
    sender.join(5)
    assert answer.startswith("HTTP/1.1 408"), answer[:200]
    assert "dicomweb.body_timeout" in answer
    assert waited < 15, waited  # refused at its deadline, not at the end of the trickle
    refused = [e for e in door.audits() if not e.success]
    assert [e.detail["status"] for e in refused] == [408]
    lines = [r.getMessage() for r in caplog.records if "too slow" in r.getMessage()]
    assert len(lines) == 1, lines
    assert len(door.stored()) == 1  # only the well-behaved client's instance


def test_a_sender_can_neither_log_in_nor_read(door: Door) -> None:
    web = door.node.node.web_url
    api = httpx.get(web + "/api/me", headers={"Authorization": f"Bearer {door.token}"})
    assert api.status_code == 403
    with httpx.Client(base_url=web, follow_redirects=False) as browser:
        page = browser.get("/login")
        token = page.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        login = browser.post(
            "/login", data={"username": "pacs", "password": "pacs-password", "csrf_token": token}
        )
    assert login.status_code == 403
    assert "cannot log in" in login.text


# -- Orthanc's DICOMweb plugin as the sender ---------------------------------------------------


@pytest.mark.orthanc
@pytest.mark.skipif(not have_orthanc_dicomweb(), reason="Orthanc DICOMweb plugin not installed")
def test_orthanc_stows_a_study_to_the_node(door: Door, tmp_path: Path) -> None:
    sessions = door.node.node.sessions
    users.add_user(sessions, "orthanc", "orthanc-password", "sender")
    revoked = users.create_token(sessions, "orthanc")
    users.revoke_tokens(sessions, "orthanc")
    token = users.create_token(sessions, "orthanc")  # a fresh one after the revocation
    series_uid = generate_uid()
    files = []
    for number in range(3):
        ds = instance(SeriesInstanceUID=series_uid, InstanceNumber=number + 1)
        files.append(tmp_path / f"ct{number}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)

    def server(bearer: str) -> dict[str, Any]:
        return {"Url": door.url + "/", "HttpHeaders": {"Authorization": f"Bearer {bearer}"}}

    servers = {"node": server(token), "stale": server(revoked)}
    with run_orthanc(
        tmp_path / "orthanc", dicomweb=True, extra={"DicomWeb": {"Servers": servers}}
    ) as pacs:
        for path in files:
            pacs.upload(path)
        (study,) = pacs.get("/studies")
        with pytest.raises(urllib.error.HTTPError):  # Orthanc reports the node's 401
            pacs.post("/dicom-web/servers/stale/stow", {"Resources": [study]})
        assert door.stored() == []
        pacs.post("/dicom-web/servers/node/stow", {"Resources": [study]})

    rows = door.stored()
    assert sorted(r.sop_instance_uid for r in rows) == sorted(
        str(pydicom.dcmread(f).SOPInstanceUID) for f in files
    )
    by_uid = {str(pydicom.dcmread(f).SOPInstanceUID): f.read_bytes() for f in files}
    for row in rows:
        assert Path(row.path).read_bytes() == by_uid[row.sop_instance_uid]  # as Orthanc sent
        assert row.calling_ae == "STOW"
    entries = door.audits()
    assert [(e.username, e.success) for e in entries] == [("", False), ("orthanc", True)]
    assert json.dumps(entries[1].detail)  # counts and UIDs only
    assert not list((door.node.settings.spool_dir / ".incoming").iterdir())
