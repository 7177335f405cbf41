"""The Store Instances Response (PS3.18 Annex I) of the STOW-RS door, as DICOM JSON
(PS3.18 F.2, ``application/dicom+json``) or Native DICOM Model XML (PS3.19 A.1,
``application/dicom+xml``).

One item per instance: stored ones in the Referenced SOP Sequence, refused ones in the
Failed SOP Sequence with their Failure Reason, which is the status the C-STORE door would
have answered for the same file (PS3.18 I.2.2 uses the same codes). A part whose SOP
Class or Instance UID could not be read (not DICOM) is listed with its Failure Reason
alone. Retrieve URL is Type 2: this node has no WADO-RS, so it is present and empty.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

JSON_TYPE = "application/dicom+json"
XML_TYPE = "application/dicom+xml"
_NATIVE_NS = "http://dicom.nema.org/PS3.19/models/NativeDICOM"

# (tag, VR, keyword) of the attributes used here.
_RETRIEVE_URL = ("00081190", "UR", "RetrieveURL")
_FAILED_SOP_SEQUENCE = ("00081198", "SQ", "FailedSOPSequence")
_REFERENCED_SOP_SEQUENCE = ("00081199", "SQ", "ReferencedSOPSequence")
_SOP_CLASS = ("00081150", "UI", "ReferencedSOPClassUID")
_SOP_INSTANCE = ("00081155", "UI", "ReferencedSOPInstanceUID")
_FAILURE_REASON = ("00081197", "US", "FailureReason")


@dataclass(frozen=True)
class InstanceResult:
    """What happened to one part: stored (``failure_reason`` None) or refused."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    failure_reason: int | None = None

    @property
    def stored(self) -> bool:
        return self.failure_reason is None


def http_status(results: Sequence[InstanceResult]) -> int:
    """PS3.18 10.5.3.1: 200 all stored, 202 some, 409 none (a request without any part
    stored nothing either)."""
    stored = sum(r.stored for r in results)
    if results and stored == len(results):
        return 200
    return 202 if stored else 409


# Each attribute as (tag, VR, keyword, values); a sequence's values are items.
_Attribute = tuple[str, str, str, list[Any]]


def _item(result: InstanceResult) -> list[_Attribute]:
    attrs: list[_Attribute] = []
    if result.sop_class_uid:
        attrs.append((*_SOP_CLASS, [result.sop_class_uid]))
    if result.sop_instance_uid:
        attrs.append((*_SOP_INSTANCE, [result.sop_instance_uid]))
    if result.failure_reason is None:
        attrs.append((*_RETRIEVE_URL, []))
    else:
        attrs.append((*_FAILURE_REASON, [result.failure_reason]))
    return sorted(attrs)


def _dataset(results: Sequence[InstanceResult]) -> list[_Attribute]:
    attrs: list[_Attribute] = [(*_RETRIEVE_URL, [])]
    failed = [_item(r) for r in results if not r.stored]
    stored = [_item(r) for r in results if r.stored]
    # Both sequences are Type 1C: present only when they have items.
    if failed:
        attrs.append((*_FAILED_SOP_SEQUENCE, failed))
    if stored:
        attrs.append((*_REFERENCED_SOP_SEQUENCE, stored))
    return attrs


def _json(attrs: list[_Attribute]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tag, vr, _keyword, values in attrs:
        element: dict[str, Any] = {"vr": vr}
        if values:
            element["Value"] = [_json(v) for v in values] if vr == "SQ" else values
        out[tag] = element
    return out


def to_json(results: Sequence[InstanceResult]) -> bytes:
    return json.dumps(_json(_dataset(results))).encode()


def _xml(parent: ET.Element, attrs: list[_Attribute]) -> None:
    for tag, vr, keyword, values in attrs:
        node = ET.SubElement(parent, "DicomAttribute", {"tag": tag, "vr": vr, "keyword": keyword})
        for number, value in enumerate(values, start=1):
            if vr == "SQ":
                _xml(ET.SubElement(node, "Item", {"number": str(number)}), value)
            else:
                ET.SubElement(node, "Value", {"number": str(number)}).text = str(value)


def to_xml(results: Sequence[InstanceResult]) -> bytes:
    root = ET.Element("NativeDicomModel", {"xmlns": _NATIVE_NS})
    root.set("xml:space", "preserve")
    _xml(root, _dataset(results))
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def wants_xml(accept: str) -> bool:
    """XML when the Accept header prefers ``application/dicom+xml`` (or another XML type)
    to JSON; JSON otherwise, also for ``*/*`` or no Accept at all (PS3.18 10.5.2 makes
    neither the default; JSON is what most clients read)."""
    best_json = best_xml = -1.0
    for rank, entry in enumerate(accept.split(",")):
        media, _, params = entry.strip().partition(";")
        media = media.strip().lower()
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        score = quality - rank * 1e-6  # the earlier of equal qualities wins
        if media in (XML_TYPE, "application/xml", "text/xml"):
            best_xml = max(best_xml, score)
        elif media in (JSON_TYPE, "application/json", "*/*", "application/*"):
            best_json = max(best_json, score)
    return best_xml > 0 and best_xml > best_json
