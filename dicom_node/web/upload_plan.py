"""Check an upload whole before anything of it is stored (``web.upload``).

Each file is a DICOM file that passes the receiver's own header check (``receive.meta``),
or the one picture decodes as JPEG or PNG and becomes a Secondary Capture
(``results.capture``); the route is evaluated as completion will evaluate it
(``route.rules``), so an upload no model would read is refused instead of stored; images
are at least ``[upload] min_image_size`` and the input of the models their route runs.
A failed check is an :class:`UploadRefusedError` with the HTTP status and the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydicom import dcmread
from pydicom.dataset import Dataset

from dicom_node.receive.incoming import IncomingFile
from dicom_node.receive.meta import file_meta_claims, read_meta
from dicom_node.receive.statuses import StoreRejectedError
from dicom_node.results.capture import (
    PatientFields,
    PictureError,
    capture_picture,
    code_string,
    picture_format,
    read_picture,
)
from dicom_node.route.rules import RouteDecision, evaluate, tags_for
from dicom_node.web import console
from dicom_node.web.context import WebContext
from dicom_node.web.multipart import Part

# What a file part may be declared as; its bytes decide what it is.
FILE_TYPES = frozenset(
    {"", "application/dicom", "application/octet-stream", "image/jpeg", "image/png"}
)
_TRUE = frozenset({"1", "on", "true", "yes"})


class UploadRefusedError(Exception):
    """The upload is refused whole (nothing stored): ``status`` is the HTTP answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Staged:
    """One instance checked and waiting in ``.incoming`` to be ingested."""

    path: Path
    label: str  # the file name it was uploaded as (for messages)
    sop_class_uid: str | None
    sop_instance_uid: str | None
    synced: futures.Future[Any] | None


@dataclass(frozen=True)
class Plan:
    """An upload that passed every check (:func:`plan`); nothing is stored yet."""

    kind: Literal["dicom", "picture"]
    study_uid: str
    staged: list[Staged]
    routes: dict[str, RouteDecision]  # by Series Instance UID
    files: list[str]
    # a file the plan made itself (the picture's Secondary Capture), removed afterwards
    made: list[IncomingFile] = field(default_factory=list)


def fields_of(parts: Iterable[Part]) -> dict[str, str]:
    """The form's text fields (the first value of each name)."""
    out: dict[str, str] = {}
    for part in parts:
        if part.filename is None and part.name and part.name not in out:
            out[part.name] = part.value.decode("utf-8", "replace")
    return out


def files_of(parts: Iterable[Part]) -> list[Part]:
    """The form's file parts, less empty file inputs (no name and no bytes)."""
    return [p for p in parts if p.filename is not None and (p.filename or p.size)]


def _is_dicom(path: Path) -> bool:
    """A DICOM Part 10 file: 128 bytes of preamble, then "DICM" (PS3.10 7.1)."""
    with path.open("rb") as fh:
        fh.seek(128)
        return fh.read(4) == b"DICM"


def _kind_of(part: Part) -> Literal["dicom", "picture"]:
    name = part.filename or f"part {part.number}"
    if part.content_type not in FILE_TYPES:
        raise UploadRefusedError(
            415,
            f"file {name!r} is sent as {part.content_type}: only DICOM files "
            "(application/dicom) and JPEG or PNG pictures are taken",
        )
    if part.error:
        raise UploadRefusedError(507, f"file {name!r} could not be written: {part.error}")
    path = part.path
    assert path is not None
    if _is_dicom(path):
        return "dicom"
    if picture_format(path) is not None:
        return "picture"
    raise UploadRefusedError(
        415,
        f"file {name!r} is neither a DICOM file (Part 10: 'DICM' after a 128-byte "
        "preamble) nor a JPEG or PNG picture",
    )


def _model_inputs(ctx: WebContext) -> dict[str, tuple[int, int]]:
    """(height, width) of each model's input, from the manifests."""
    found, _errors = console.manifests(ctx.settings)
    return {mid: (m.spec.input.height, m.spec.input.width) for mid, m in found.items()}


def _check_minimum(ctx: WebContext, name: str, rows: int, columns: int) -> None:
    minimum = ctx.settings.upload.min_image_size
    if min(rows, columns) < minimum:
        raise UploadRefusedError(
            422,
            f"image {name!r} is too small: {columns} x {rows} pixels, at least {minimum} "
            "on each side (upload.min_image_size)",
        )


def _check_size(
    ctx: WebContext, name: str, rows: int, columns: int, decision: RouteDecision
) -> None:
    """Refuse an image smaller than the configured minimum or a model's input: a model
    would only enlarge it, and a result from a thumbnail is no result."""
    _check_minimum(ctx, name, rows, columns)
    inputs = _model_inputs(ctx)
    for route in decision.routes:
        for model_id in route.models:
            height, width = inputs.get(model_id, (0, 0))
            if rows < height or columns < width:
                raise UploadRefusedError(
                    422,
                    f"image {name!r} is too small for model {model_id}: {columns} x {rows} "
                    f"pixels, its input is {width} x {height}",
                )


def _route(ctx: WebContext, ds: Dataset, name: str) -> RouteDecision:
    """The route the upload will take (as completion decides it); refused when none."""
    decision = evaluate(
        ctx.settings.routes,
        tags_for(ds, ctx.settings.upload.calling_ae),
        model_available=ctx.model_available,
    )
    if decision.own_object:
        raise UploadRefusedError(
            422, f"file {name!r} is a result this node made; it is not processed again"
        )
    if not decision.routed:
        modality = ds.get("Modality", "")
        body_part = ds.get("BodyPartExamined", "")
        raise UploadRefusedError(
            422,
            f"no route takes {name!r} (Modality {modality!r}, BodyPartExamined "
            f"{body_part!r}), so no model would run: " + "; ".join(decision.reasons),
        )
    return decision


def plan(ctx: WebContext, parts: list[Part]) -> Plan:
    """Check the whole upload before anything is stored.

    Raises
    ------
    UploadRefusedError
        400 no file, or DICOM files and a picture together, or several pictures, or files
        of several studies; 415 a file that is neither DICOM nor JPEG/PNG, or sent with a
        content type other than those; 422 a DICOM file the receiver would refuse, an
        invalid field, an image too small, or no route taking it.
    """
    files = files_of(parts)
    if not files:
        raise UploadRefusedError(
            400,
            "no file in the upload: send DICOM files, or one JPEG or PNG picture with "
            "modality and body_part (form field 'file')",
        )
    kinds = {id(p): _kind_of(p) for p in files}
    pictures = [p for p in files if kinds[id(p)] == "picture"]
    if pictures and len(files) > 1:
        raise UploadRefusedError(
            400,
            "upload DICOM files or one picture, not both or several pictures "
            f"({len(pictures)} picture(s) among {len(files)} file(s))",
        )
    names = [p.filename or f"part {p.number}" for p in files]
    if pictures:
        return _plan_picture(ctx, pictures[0], fields_of(parts), names)
    return _plan_dicom(ctx, files, names)


def _plan_dicom(ctx: WebContext, files: list[Part], names: list[str]) -> Plan:
    staged: list[Staged] = []
    first: dict[str, tuple[Path, str]] = {}  # series UID -> its first file, for the route
    studies: set[str] = set()
    for part, name in zip(files, names, strict=True):
        path = part.path
        assert path is not None and part.file is not None
        sop_class, sop_instance = file_meta_claims(path)
        try:
            # The receiver's own check (header, UIDs, File Meta against dataset), before
            # anything is stored, so one bad file does not leave the others half-stored.
            meta = read_meta(
                path,
                sop_class,
                sop_instance,
                max_inflated_size=ctx.settings.scp.max_inflated_size,
            )
        except StoreRejectedError as exc:
            raise UploadRefusedError(
                422, f"file {name!r} is refused: 0x{exc.status:04X} {exc.reason}"
            ) from None
        studies.add(meta.study_uid)
        first.setdefault(meta.series_uid, (path, name))
        staged.append(Staged(path, name, sop_class, sop_instance, part.file.synced))
    if len(studies) > 1:
        raise UploadRefusedError(
            400, f"the files belong to {len(studies)} studies; upload one study at a time"
        )
    routes: dict[str, RouteDecision] = {}
    for series_uid, (path, name) in first.items():
        ds = dcmread(path, stop_before_pixels=True)
        decision = _route(ctx, ds, name)
        rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        _check_size(ctx, name, rows, columns, decision)
        routes[series_uid] = decision
    return Plan("dicom", studies.pop(), staged, routes, names)


def _plan_picture(ctx: WebContext, part: Part, fields: dict[str, str], names: list[str]) -> Plan:
    name = names[0]
    missing = [key for key in ("modality", "body_part") if not fields.get(key, "").strip()]
    if missing:
        raise UploadRefusedError(
            400, f"a picture needs the fields {' and '.join(missing)} (e.g. DX and CHEST)"
        )
    try:
        modality = code_string(fields["modality"], "modality")
        body_part = code_string(fields["body_part"], "body part")
        patient = PatientFields(
            family_name=fields.get("family_name", ""),
            given_name=fields.get("given_name", ""),
            patient_id=fields.get("patient_id", ""),
            birth_date=fields.get("birth_date", ""),
            sex=fields.get("sex", ""),
            anonymous=fields.get("anonymous", "").strip().lower() in _TRUE,
        )
    except ValueError as exc:
        raise UploadRefusedError(422, str(exc)) from None
    path = part.path
    assert path is not None
    try:
        picture = read_picture(path, max_pixels=ctx.settings.workers.max_frame_pixels)
    except PictureError as exc:
        raise UploadRefusedError(415 if exc.unsupported else 422, f"{name!r}: {exc}") from None
    _check_minimum(ctx, name, picture.rows, picture.columns)
    try:
        ds = capture_picture(picture, modality=modality, body_part=body_part, patient=patient)
    except ValueError as exc:  # highdicom refusing what it cannot encode
        raise UploadRefusedError(422, f"{name!r} cannot become a DICOM image: {exc}") from None
    decision = _route(ctx, ds, name)
    _check_size(ctx, name, picture.rows, picture.columns, decision)
    made = IncomingFile(ctx.spool.tmp)
    made.write(_encode(ds))
    made.start_sync(_inline)
    uid = str(ds.SOPInstanceUID)
    staged = Staged(Path(made.name), name, str(ds.SOPClassUID), uid, made.synced)
    return Plan(
        "picture",
        str(ds.StudyInstanceUID),
        [staged],
        {str(ds.SeriesInstanceUID): decision},
        names,
        [made],
    )


def _encode(ds: Dataset) -> bytes:
    import io

    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _inline(fn: Callable[[], None]) -> futures.Future[Any]:
    from dicom_node.receive.ingest import inline

    return inline(fn)
