"""Turn stored results into things a browser shows: an SVG plot, a PNG, an SR outline, a PDF.

Everything here reads files the node wrote itself (paths come from the database, never from
a request) and fails soft: a missing or unreadable file is reported on the page instead of
breaking it, because the admin page is where one goes to find out what went wrong.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from markupsafe import Markup
from pydicom.dataset import Dataset

from dicom_node.receive.objectstore import reader_for
from dicom_node.web.schemas import SRNode

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_SR_DEPTH = 20
MAX_SR_ITEMS = 2000


# -- per-slice scores -------------------------------------------------------------------------


def slice_plot_svg(
    scores: Sequence[float], *, threshold: float = 0.5, width: int = 360, height: int = 90
) -> Markup:
    """A bar chart of per-slice positive scores (0..1), as inline SVG.

    Inline SVG needs no script and no image request, so it passes the strict Content Security
    Policy; every bar has a ``<title>`` so hovering shows slice and score.
    """
    n = len(scores)
    if n == 0:
        return Markup("")
    pad = 4
    plot_h = height - 2 * pad
    bar_w = (width - 2 * pad) / n
    parts = [
        f'<svg class="slices" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="per-slice scores, {n} slices">',
        f'<rect x="0" y="0" width="{width}" height="{height}" class="plot-bg"/>',
    ]
    for i, raw in enumerate(scores):
        score = min(1.0, max(0.0, float(raw)))
        h = score * plot_h
        x = pad + i * bar_w
        y = pad + plot_h - h
        cls = "bar-pos" if score >= threshold else "bar-neg"
        parts.append(
            f'<rect class="{cls}" x="{x:.2f}" y="{y:.2f}" width="{max(bar_w - 0.5, 0.5):.2f}" '
            f'height="{h:.2f}"><title>slice {i + 1}: {score:.3f}</title></rect>'
        )
    ty = pad + plot_h * (1 - threshold)
    parts.append(
        f'<line class="threshold" x1="{pad}" y1="{ty:.2f}" x2="{width - pad}" y2="{ty:.2f}"/>'
    )
    parts.append("</svg>")
    return Markup("".join(parts))


# -- Grad-CAM image and PDF --------------------------------------------------------------------


def _object_paths(objects: Sequence[Any], kind: str) -> list[str]:
    """Locations of a result's objects of one kind: files, or s3:// objects (cluster)."""
    paths = []
    for obj in objects:
        if isinstance(obj, dict) and str(obj.get("kind", "")).split(":")[0] == kind:
            path = obj.get("path")
            if path:
                paths.append(str(path))
    return paths


def _exists(location: str) -> bool:
    try:
        return reader_for(location).exists(location)
    except OSError:  # an object store that does not answer: shown as missing
        return False


def _dataset(location: str, **kwargs: Any) -> Dataset:
    return reader_for(location).read_dataset(location, **kwargs)


def has_gradcam(heatmap_path: str, objects: Sequence[Any]) -> bool:
    """Whether a Grad-CAM picture can be shown (stored PNG or Secondary Capture on disk)."""
    if heatmap_path and _exists(heatmap_path):
        return True
    return any(_exists(p) for p in _object_paths(objects, "sc"))


def object_path(objects: Sequence[Any], kind: str) -> str | None:
    """Where a result's first object of ``kind`` (sr, sc, pdf) is, if it is there: a file,
    or an object in the bucket (cluster mode); read it with :func:`object_bytes`."""
    return next((p for p in _object_paths(objects, kind) if _exists(p)), None)


def object_bytes(location: str) -> bytes:
    """The bytes of a stored result object (a file, or an object in the bucket)."""
    return reader_for(location).read_bytes(location)


def has_pdf(objects: Sequence[Any]) -> bool:
    return any(_exists(p) for p in _object_paths(objects, "pdf"))


def _sc_to_png(path: str) -> bytes:
    from PIL import Image

    ds = _dataset(path)
    pixels = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    # The Grad-CAM Secondary Capture is 8-bit RGB (highdicom SCImage accepts nothing else).
    image = Image.fromarray(pixels.astype("uint8"))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def gradcam_png(heatmap_path: str, objects: Sequence[Any]) -> bytes | None:
    """PNG bytes of the Grad-CAM overlay: the stored heatmap PNG, else the SC object's pixels."""
    if heatmap_path and _exists(heatmap_path):
        try:
            data = reader_for(heatmap_path).read_bytes(heatmap_path)
        except OSError:  # gone meanwhile: the SC below may still do
            data = b""
        if data.startswith(PNG_SIGNATURE):
            return data
    for path in _object_paths(objects, "sc"):
        if _exists(path):
            try:
                return _sc_to_png(path)
            except Exception:  # an unreadable SC just means no picture
                continue
    return None


def pdf_bytes(objects: Sequence[Any]) -> bytes | None:
    """The PDF inside the Encapsulated PDF result object, without DICOM's padding byte."""
    for path in _object_paths(objects, "pdf"):
        if not _exists(path):
            continue
        ds = _dataset(path)
        data = bytes(ds.get("EncapsulatedDocument", b""))
        length = ds.get("EncapsulatedDocumentLength")
        if length:
            data = data[: int(length)]
        elif data.endswith(b"\x00"):
            # PS3.5: values have even length, so an odd-length PDF was padded with one NUL.
            data = data[:-1]
        if data.startswith(b"%PDF"):
            return data
    return None


# -- Structured Report content tree ------------------------------------------------------------


def _meaning(seq: Any) -> str:
    if not seq:
        return ""
    item = seq[0]
    return str(item.get("CodeMeaning", "") or item.get("CodeValue", ""))


def _value(item: Dataset) -> str:
    vt = str(item.get("ValueType", ""))
    if vt == "TEXT":
        return str(item.get("TextValue", ""))
    if vt == "CODE":
        seq = item.get("ConceptCodeSequence")
        if not seq:
            return ""
        code = seq[0]
        scheme = code.get("CodingSchemeDesignator", "")
        return f"{code.get('CodeMeaning', '')} ({scheme} {code.get('CodeValue', '')})"
    if vt == "NUM":
        seq = item.get("MeasuredValueSequence")
        if not seq:
            return _meaning(item.get("NumericValueQualifierCodeSequence")) or "(no value)"
        unit = seq[0].get("MeasurementUnitsCodeSequence")
        unit_text = str(unit[0].get("CodeValue", "")) if unit else ""
        return f"{seq[0].get('NumericValue', '')} {unit_text if unit_text != '1' else ''}".strip()
    if vt == "UIDREF":
        return str(item.get("UID", ""))
    if vt == "PNAME":
        return str(item.get("PersonName", ""))
    if vt in ("DATETIME", "DATE", "TIME"):
        key = {"DATETIME": "DateTime", "DATE": "Date", "TIME": "Time"}[vt]
        return str(item.get(key, ""))
    if vt in ("IMAGE", "COMPOSITE", "WAVEFORM"):
        refs = item.get("ReferencedSOPSequence")
        if not refs:
            return ""
        ref = refs[0]
        frames = ref.get("ReferencedFrameNumber")
        text = str(ref.get("ReferencedSOPInstanceUID", ""))
        return f"{text} frame {frames}" if frames else text
    if vt in ("SCOORD", "SCOORD3D"):
        data = item.get("GraphicData") or []
        return f"{item.get('GraphicType', '')} ({len(data)} values)"
    if vt == "TCOORD":
        return str(item.get("TemporalRangeType", ""))
    if vt == "CONTAINER":
        return ""
    if "ReferencedContentItemIdentifier" in item:
        ident = item.ReferencedContentItemIdentifier
        return "see item " + ".".join(
            str(v) for v in (ident if isinstance(ident, list) else [ident])
        )
    return ""


def _items(seq: Any, depth: int, budget: list[int]) -> list[SRNode]:
    nodes: list[SRNode] = []
    for item in seq or []:
        if budget[0] <= 0:
            nodes.append(SRNode(relationship="", value_type="", name="…", value="(truncated)"))
            break
        budget[0] -= 1
        children = (
            _items(item.get("ContentSequence"), depth + 1, budget) if depth < MAX_SR_DEPTH else []
        )
        nodes.append(
            SRNode(
                relationship=str(item.get("RelationshipType", "")),
                value_type=str(item.get("ValueType", "")) or "BY REFERENCE",
                name=_meaning(item.get("ConceptNameCodeSequence")),
                value=_value(item),
                children=children,
            )
        )
    return nodes


def sr_tree(ds: Dataset) -> list[SRNode]:
    """The content tree of an SR dataset, from the document title down."""
    root = SRNode(
        relationship="",
        value_type=str(ds.get("ValueType", "CONTAINER")),
        name=_meaning(ds.get("ConceptNameCodeSequence")) or "Structured Report",
        value=f"{ds.get('CompletionFlag', '')} / {ds.get('VerificationFlag', '')}".strip(" /"),
        children=_items(ds.get("ContentSequence"), 1, [MAX_SR_ITEMS]),
    )
    return [root]


def read_sr(objects: Sequence[Any]) -> tuple[list[SRNode] | None, str]:
    """The first readable SR among a result's objects, as a tree; or None and why not."""
    paths = _object_paths(objects, "sr")
    if not paths:
        return None, ""
    for path in paths:
        if not _exists(path):
            continue
        try:
            ds = _dataset(path, stop_before_pixels=True)
        except Exception as exc:  # shown on the page, not raised
            return None, f"cannot read the SR file: {type(exc).__name__}"
        return sr_tree(ds), ""
    return None, "the SR file is missing from the results folder"
