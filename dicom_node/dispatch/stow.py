"""STOW-RS client: send stored files to a DICOMweb origin server (PS3.18 10.5).

The delivery of a ``kind = "dicomweb"`` destination (``dispatch.delivery``) sends a batch
of objects as one ``POST {url}/studies`` request, ``multipart/related;
type="application/dicom"``, one part per file. Files are sent as stored, byte for byte,
read from disk in chunks while the request goes out (its length is known beforehand, so
no chunked transfer coding is needed: some servers refuse it), so memory stays flat
whatever their size. The server's Store Instances Response (PS3.18 Annex I) says for each
instance whether it was stored; every instance it does not list as stored has failed, and
the delivery retries it like a refused C-STORE.
"""

from __future__ import annotations

import json
import ssl
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from dicom_node import __version__
from dicom_node.config import Destination
from dicom_node.tls import TlsConfigError, client_context, failure_reason

_CHUNK = 1024 * 1024
# Store Instances Response attributes (PS3.18 Table I.1-1).
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_SEQUENCE = "00081199"
_REFERENCED_SOP_INSTANCE_UID = "00081155"
_FAILURE_REASON = "00081197"
_WARNING_REASON = "00081196"
_NATIVE_NS = "{http://dicom.nema.org/PS3.19/models/NativeDICOM}"


@dataclass(frozen=True)
class StowFile:
    """One object to send: its SOP Instance UID (to find it in the response) and file."""

    sop_instance_uid: str
    path: Path


@dataclass(frozen=True)
class StowOutcome:
    """What the server said about one object.

    ``status``: 0x0000 when stored, the Warning Reason when stored with a warning, the
    Failure Reason when refused, ``None`` when the server said nothing about it (HTTP
    error, no answer).
    """

    stored: bool
    status: int | None
    error: str


def _tls(dest: Destination) -> ssl.SSLContext | bool:
    """How an https server is checked: the destination's ``tls`` table builds the same
    BCP 195 client context as a DICOM TLS association (its CAs, our client certificate);
    without one, the system's CAs."""
    if not dest.verify:
        return False
    if dest.tls is not None:
        return client_context(
            ca_certificates=dest.tls.ca_certificates,
            certificate=dest.tls.certificate,
            private_key=dest.tls.private_key,
        )
    return True


def _auth(dest: Destination) -> tuple[dict[str, str], httpx.Auth | None]:
    if dest.auth == "bearer":
        return {"Authorization": f"Bearer {dest.token.get_secret_value()}"}, None
    if dest.auth == "basic":
        return {}, httpx.BasicAuth(dest.username, dest.password.get_secret_value())
    return {}, None


class _Body:
    """The multipart/related body, produced while it is sent, and its exact length."""

    def __init__(self, files: Sequence[StowFile]) -> None:
        self.boundary = uuid.uuid4().hex
        self.files = list(files)
        self._head = f"--{self.boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        self._tail = f"--{self.boundary}--\r\n".encode()
        self.sizes = [f.path.stat().st_size for f in self.files]
        self.length = sum(len(self._head) + size + 2 for size in self.sizes) + len(self._tail)

    @property
    def content_type(self) -> str:
        return f'multipart/related; type="application/dicom"; boundary={self.boundary}'

    def __iter__(self) -> Iterator[bytes]:
        for file, size in zip(self.files, self.sizes, strict=True):
            yield self._head
            sent = 0
            with open(file.path, "rb") as fh:
                while chunk := fh.read(min(_CHUNK, size - sent)):
                    sent += len(chunk)
                    yield chunk
            if sent != size:  # the declared length would be wrong: give up this request
                raise OSError(f"{file.path} changed size while it was sent")
            yield b"\r\n"
        yield self._tail


def store(dest: Destination, files: Sequence[StowFile]) -> dict[str, StowOutcome]:
    """POST ``files`` to ``{dest.url}/studies`` in one request; an outcome per SOP Instance
    UID. Never raises for what the network or the server does: that is an outcome."""
    body = _Body(files)
    headers, auth = _auth(dest)
    headers.update(
        {
            "Content-Type": body.content_type,
            "Content-Length": str(body.length),
            "Accept": "application/dicom+json",
            "User-Agent": f"dicom-node/{__version__}",
        }
    )
    url = dest.url.rstrip("/") + "/studies"
    try:
        verify = _tls(dest)
    except TlsConfigError as exc:  # a file changed since start-up (check_tls)
        return _all(files, f"TLS set-up: tls.{exc.field}: {exc}")
    try:
        with httpx.Client(timeout=dest.timeout, verify=verify, auth=auth) as client:
            response = client.post(url, content=iter(body), headers=headers)
    except ssl.SSLError as exc:
        return _all(files, f"TLS handshake with {url} failed: {failure_reason(exc)}")
    except (httpx.HTTPError, OSError) as exc:
        cause = exc.__context__ or exc.__cause__
        if isinstance(cause, ssl.SSLError):
            return _all(files, f"TLS handshake with {url} failed: {failure_reason(cause)}")
        return _all(files, f"cannot send to {url}: {type(exc).__name__}: {exc}")
    return _outcomes(files, response)


def _all(files: Sequence[StowFile], error: str) -> dict[str, StowOutcome]:
    return {f.sop_instance_uid: StowOutcome(False, None, error) for f in files}


def _outcomes(files: Sequence[StowFile], response: httpx.Response) -> dict[str, StowOutcome]:
    """Per instance, from the Store Instances Response (200, 202 and 409 carry one)."""
    code = response.status_code
    where = f"STOW-RS HTTP {code} {response.reason_phrase}".strip()
    if code not in (200, 202, 409):
        text = " ".join(response.text.split())[:200]
        return _all(files, f"{where}: {text}" if text else where)
    try:
        stored, failed = _parse(response)
    except ValueError as exc:
        if code == 200 and not response.content:  # all stored, nothing more to say
            return {f.sop_instance_uid: StowOutcome(True, 0, "") for f in files}
        return _all(files, f"{where}: unreadable store response ({exc})")
    outcomes = {}
    for f in files:
        uid = f.sop_instance_uid
        if uid in failed:
            reason = failed[uid]
            shown = f"0x{reason:04X}" if reason is not None else "no reason given"
            outcomes[uid] = StowOutcome(False, reason, f"{where}: Failure Reason {shown}")
        elif uid in stored:
            outcomes[uid] = StowOutcome(True, stored[uid] or 0, "")
        else:
            outcomes[uid] = StowOutcome(False, None, f"{where}: instance not in the response")
    return outcomes


def _parse(response: httpx.Response) -> tuple[dict[str, int | None], dict[str, int | None]]:
    """(stored, failed): SOP Instance UID -> Warning or Failure Reason, from DICOM JSON
    (PS3.18 F.2) or the Native DICOM Model XML (PS3.19 A.1)."""
    kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind.endswith("xml"):
        return _parse_xml(response.content)
    try:
        doc = json.loads(response.content)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if isinstance(doc, list) and len(doc) == 1:  # some servers wrap the dataset in a list
        doc = doc[0]
    if not isinstance(doc, dict):
        raise ValueError("not a DICOM JSON dataset")

    def items(tag: str, reason_tag: str) -> dict[str, int | None]:
        found: dict[str, int | None] = {}
        for item in (doc.get(tag) or {}).get("Value") or []:
            uid = _first(item, _REFERENCED_SOP_INSTANCE_UID)
            if uid is not None:
                found[str(uid)] = _code(_first(item, reason_tag))
        return found

    return items(_REFERENCED_SOP_SEQUENCE, _WARNING_REASON), items(
        _FAILED_SOP_SEQUENCE, _FAILURE_REASON
    )


def _first(item: Any, tag: str) -> Any:
    values = (item.get(tag) or {}).get("Value") if isinstance(item, dict) else None
    return values[0] if values else None


def _code(value: Any) -> int | None:
    """A reason as the server wrote it: a number (US), or its decimal or hex text."""
    if value is None:
        return None
    if isinstance(value, int):
        return value
    text = str(value).strip()
    try:
        return int(text, 16) if text.lower().startswith("0x") else int(text)
    except ValueError:
        return None


def _parse_xml(content: bytes) -> tuple[dict[str, int | None], dict[str, int | None]]:
    try:
        root = ET.fromstring(content)
    except ET.ParseError as exc:
        raise ValueError(f"not XML: {exc}") from None

    def attr(node: ET.Element, tag: str) -> str | None:
        for child in node:
            if child.tag.removeprefix(_NATIVE_NS) == "DicomAttribute" and child.get("tag") == tag:
                for value in child:
                    if value.tag.removeprefix(_NATIVE_NS) == "Value":
                        return value.text
        return None

    def items(tag: str, reason_tag: str) -> dict[str, int | None]:
        found: dict[str, int | None] = {}
        for child in root:
            if child.get("tag") != tag:
                continue
            for item in child:
                uid = attr(item, _REFERENCED_SOP_INSTANCE_UID)
                if uid:
                    found[uid.strip()] = _code(attr(item, reason_tag))
        return found

    return items(_REFERENCED_SOP_SEQUENCE, _WARNING_REASON), items(
        _FAILED_SOP_SEQUENCE, _FAILURE_REASON
    )
