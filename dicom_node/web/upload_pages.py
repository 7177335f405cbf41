"""The upload page: DICOM files, or a picture with modality and body part, for a result.

``GET /upload`` shows the form and the routes in force (which modality and body part a
route takes); ``POST /upload`` stores the upload through ``web.upload`` and sends the
browser to the study page, where the route it took is shown at once and the result
appears when the worker has it (``static/live.js`` polls the study's progress). A refused
upload comes back to the form with the reason and the HTTP status of the refusal; the
form's fields are kept, the files are not (a browser cannot be given them back).

Users with the role ``uploader`` or ``admin`` may upload; a viewer sees the page's 403.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from dicom_node.web import console, upload
from dicom_node.web.audit import audit
from dicom_node.web.auth import WebUser, page_user
from dicom_node.web.context import get_context, get_db
from dicom_node.web.templating import flash, render

router = APIRouter(include_in_schema=False)

# What the form offers; the API takes any DICOM code string. The modalities of still
# images (X-ray, CT, MR, mammography, ultrasound, other) and the body parts of the routes
# this node ships (PS3.16 Annex L terms).
MODALITIES = ("DX", "CR", "MR", "CT", "MG", "US", "OT")
BODY_PARTS = (
    "CHEST", "HEAD", "BRAIN", "ABDOMEN", "PELVIS", "SPINE", "SKULL", "BREAST", "HAND",
    "WRIST", "ELBOW", "SHOULDER", "HIP", "KNEE", "ANKLE", "FOOT", "EXTREMITY",
)  # fmt: skip
# Form fields given back to the form after a refusal (never the CSRF token or files).
KEPT_FIELDS = (
    "modality", "body_part", "family_name", "given_name", "patient_id", "birth_date", "sex",
    "anonymous",
)  # fmt: skip


def page_uploader(
    request: Request, user: WebUser = Depends(page_user), db: Session = Depends(get_db)
) -> WebUser:
    """A logged-in user who may upload; others get 403 (audited: it may be probing)."""
    if not user.can_upload:
        audit(
            db,
            request,
            user.username,
            "forbidden",
            request.url.path,
            success=False,
            detail={"method": request.method},
        )
        raise HTTPException(
            status_code=403, detail=f"Uploading needs the role uploader or admin ({user.role})."
        )
    return user


def _form(request: Request, values: dict[str, str], error: str = "") -> dict[str, Any]:
    settings = get_context(request).settings
    return {
        "modalities": MODALITIES,
        "body_parts": BODY_PARTS,
        "values": values,
        "error": error,
        "routes": console.route_views(settings),
        "limits": settings.upload,
    }


@router.get("/upload")
def upload_page(request: Request, user: WebUser = Depends(page_uploader)) -> Response:
    return render(request, "upload.html", _form(request, {"modality": "DX", "body_part": "CHEST"}))


@router.post("/upload")
async def upload_files(request: Request, user: WebUser = Depends(page_uploader)) -> Response:
    """Store the upload and go to its study page; on a refusal, the form with the reason."""
    try:
        outcome = await upload.handle(request, user, via="page")
    except upload.UploadRefusedError as exc:
        receiver = getattr(request.state, "upload_receiver", None)
        fields = upload.fields_of(receiver.parts) if receiver is not None else {}
        kept = {k: v for k, v in fields.items() if k in KEPT_FIELDS}
        return render(
            request,
            "upload.html",
            _form(request, kept, f"Upload refused ({exc.status}): {exc.reason}"),
            status_code=exc.status,
        )
    flash(request, "ok", outcome.summary)
    return RedirectResponse(f"/studies/{outcome.study_uid}", status_code=303)
