"""Admin actions from the pages (retry, re-run, exports) and the result files.

Every action is audited, also when it fails; viewers get 403 and an audit entry of the
refused attempt is not written (the refusal happens before the handler runs).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Form, Path, Query, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from sqlalchemy.orm import Session

from dicom_node.store.db import Delivery
from dicom_node.web import actions, detail, export, render
from dicom_node.web.audit import audit
from dicom_node.web.auth import WebUser, api_user, page_admin
from dicom_node.web.context import get_context, get_db
from dicom_node.web.pages import UID_PATTERN, UID_RE, current_filter
from dicom_node.web.templating import flash

router = APIRouter(include_in_schema=False)
UidPath = Annotated[str, Path(pattern=UID_PATTERN)]


def _back(back: str) -> str:
    """Where to return after an action: a study page (by UID) or the deliveries page."""
    return f"/studies/{back}" if UID_RE.match(back) else "/deliveries"


def audited_retry(
    db: Session, request: Request, username: str, delivery_id: int, *, via: str
) -> Delivery:
    """Retry a failed delivery and audit the attempt, refused or not (page and API).

    Raises
    ------
    actions.ActionError
        Unknown delivery, or one that has not failed (audited as unsuccessful).
    """
    try:
        delivery = actions.retry_delivery(db, delivery_id, username)
    except actions.ActionError as exc:
        db.rollback()
        audit(
            db,
            request,
            username,
            "retry_delivery",
            str(delivery_id),
            success=False,
            detail={"error": str(exc), "via": via},
        )
        raise
    audit(
        db,
        request,
        username,
        "retry_delivery",
        str(delivery_id),
        detail={"study_uid": delivery.study_uid, "via": via},
    )
    return delivery


def audited_rerun(
    db: Session, request: Request, username: str, study_uid: str, *, via: str
) -> tuple[list[int], list[str]]:
    """Re-run every routed series of a study and audit it (page and API).

    Raises
    ------
    actions.ActionError
        Unknown study (audited as unsuccessful).
    """

    def record(jobs: list[int], errors: list[str]) -> None:
        audit(
            db,
            request,
            username,
            "rerun_study",
            study_uid,
            success=bool(jobs) and not errors,
            detail={"jobs": jobs, "errors": errors, "via": via},
        )

    try:
        jobs, errors = actions.rerun_study(get_context(request).actions, db, study_uid)
    except actions.ActionError as exc:
        record([], [str(exc)])
        raise
    record(jobs, errors)
    return jobs, errors


@router.post("/deliveries/{delivery_id}/retry")
def retry(
    request: Request,
    delivery_id: Annotated[int, Path(ge=1)],
    back: str = Form(""),
    user: WebUser = Depends(page_admin),
    db: Session = Depends(get_db),
) -> Response:
    try:
        audited_retry(db, request, user.username, delivery_id, via="page")
    except actions.ActionError as exc:
        flash(request, "error", str(exc))
    else:
        flash(request, "ok", f"Delivery {delivery_id} queued for another attempt.")
    return RedirectResponse(_back(back), status_code=303)


@router.post("/studies/{study_uid}/rerun")
def rerun(
    request: Request,
    study_uid: UidPath,
    user: WebUser = Depends(page_admin),
    db: Session = Depends(get_db),
) -> Response:
    try:
        jobs, errors = audited_rerun(db, request, user.username, study_uid, via="page")
    except actions.ActionError as exc:
        jobs, errors = [], [str(exc)]
    if jobs:
        flash(request, "ok", f"Queued job(s) {', '.join(map(str, jobs))}.")
    if errors:
        flash(request, "error", "; ".join(errors))
    return RedirectResponse(f"/studies/{study_uid}", status_code=303)


@router.get("/export/studies.{fmt}")
def export_studies(
    request: Request,
    fmt: Literal["csv", "json"],
    sort: Annotated[
        Literal["received", "patient_name", "patient_id", "accession"], Query()
    ] = "received",
    direction: Annotated[Literal["asc", "desc"], Query()] = "desc",
    user: WebUser = Depends(page_admin),
    db: Session = Depends(get_db),
) -> Response:
    """Every study matching the on-screen filter, not only the page shown."""
    filt = current_filter(request)
    audit(db, request, user.username, f"export_{fmt}", detail=filt.describe())
    sessions = get_context(request).sessions
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    headers = {"Content-Disposition": f'attachment; filename="studies-{stamp}.{fmt}"'}
    if fmt == "csv":
        return StreamingResponse(
            export.csv_lines(sessions, filt, sort, direction),
            media_type="text/csv; charset=utf-8",
            headers=headers,
        )
    return StreamingResponse(
        export.json_chunks(sessions, filt, sort, direction),
        media_type="application/json",
        headers=headers,
    )


@router.get("/studies/{study_uid}/results/{result_id}/gradcam.png")
def gradcam(
    study_uid: UidPath,
    result_id: Annotated[int, Path(ge=1)],
    user: WebUser = Depends(api_user),
    db: Session = Depends(get_db),
) -> Response:
    """The Grad-CAM overlay of a result (session or token; the study view is the audited
    event, the picture is part of it)."""
    result = detail.result_for_study(db, study_uid, result_id)
    data = render.gradcam_png(result.heatmap_path, result.objects) if result else None
    if data is None:
        return Response(
            "no Grad-CAM image for this result", status_code=404, media_type="text/plain"
        )
    return Response(data, media_type="image/png")


@router.get("/studies/{study_uid}/results/{result_id}/report.pdf")
def report_pdf(
    request: Request,
    study_uid: UidPath,
    result_id: Annotated[int, Path(ge=1)],
    user: WebUser = Depends(api_user),
    db: Session = Depends(get_db),
) -> Response:
    result = detail.result_for_study(db, study_uid, result_id)
    data = render.pdf_bytes(result.objects) if result else None
    audit(
        db,
        request,
        user.username,
        "download_pdf",
        study_uid,
        success=data is not None,
        detail={"result": result_id},
    )
    if data is None:
        return Response("no PDF for this result", status_code=404, media_type="text/plain")
    return Response(
        data,
        media_type="application/pdf",
        headers={"Content-Disposition": f'attachment; filename="result-{result_id}.pdf"'},
    )


@router.get("/studies/{study_uid}/results/{result_id}/{kind}.dcm")
def result_object(
    request: Request,
    study_uid: UidPath,
    result_id: Annotated[int, Path(ge=1)],
    kind: Literal["sr", "sc", "pdf"],
    user: WebUser = Depends(api_user),
    db: Session = Depends(get_db),
) -> Response:
    """A result object as the PACS got it (DICOM Part 10): the SR, the Grad-CAM
    Secondary Capture or the Encapsulated PDF (session or token). It holds the patient's
    data, so every download is audited like a study view."""
    result = detail.result_for_study(db, study_uid, result_id)
    path = render.object_path(result.objects, kind) if result else None
    audit(
        db,
        request,
        user.username,
        "download_object",
        study_uid,
        success=path is not None,
        detail={"result": result_id, "kind": kind},
    )
    if path is None:
        return Response(
            f"no {kind} object for this result", status_code=404, media_type="text/plain"
        )
    return Response(
        render.object_bytes(path),
        media_type="application/dicom",
        headers={"Content-Disposition": f'attachment; filename="result-{result_id}-{kind}.dcm"'},
    )
