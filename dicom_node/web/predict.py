"""``POST /api/predict``: the original apps' ``/predict`` for scripts, on the durable path.

A script sends DICOM files, or one picture with ``modality`` and ``body_part``, as
``multipart/form-data`` with a bearer token of an ``uploader`` or ``admin``
(``curl -F file=@chest.jpeg -F modality=DX -F body_part=CHEST -F anonymous=yes``). The
upload is stored and routed exactly as on the upload page (``web.upload``); then the
request waits for the result, up to ``[upload] predict_timeout`` seconds, and answers
200 with the class, the probabilities, the model and version and links to the heatmap,
the SR, the Secondary Capture and the PDF. Past the timeout it answers 202 with the same
JSON (``status: pending``) and a ``Location`` to poll: ``GET /api/predict/{StudyUID}``.

A refused upload is a 4xx whose ``detail`` gives the reason, and nothing is stored: 400
(no file, files and a picture together, several studies, a malformed body), 401 (no
token, or an unknown, revoked or expired one: the reason says which), 403 (a role that
may not upload), 413 (a file or the request over its limit), 415 (not form data, or a
file that is neither DICOM nor JPEG/PNG), 422 (a DICOM file the receiver refuses, an
invalid field, an image too small, no route).
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from dicom_node.web import upload
from dicom_node.web.audit import audit
from dicom_node.web.auth import WebUser, api_reader, api_user, identified_user, token_problem
from dicom_node.web.context import WebContext, get_context, get_db
from dicom_node.web.pages import UID_PATTERN, UID_RE
from dicom_node.web.prediction import PredictAnswer, prediction

# How often a waiting request looks at the job (a database read of a few rows).
POLL_SECONDS = 0.25


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"detail": {"type": "string"}},
                    "required": ["detail"],
                }
            }
        },
    }


_ANSWER = {"$ref": "#/components/schemas/PredictAnswer"}
RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {
        "description": "stored and routed, the result is not there yet: poll poll_url "
        "(also in the Location header)",
        "content": {"application/json": {"schema": _ANSWER}},
    },
    400: _problem("no file, DICOM files and a picture together, several studies, malformed"),
    401: _problem("no valid bearer token or session (unknown, revoked or expired)"),
    403: _problem("a role that may not upload (uploader or admin), or no CSRF token"),
    413: _problem("a file over upload.max_file_size, or the request over its limits"),
    415: _problem("not multipart/form-data, or a file neither DICOM nor JPEG/PNG"),
    422: _problem("a DICOM file refused, an invalid field, an image too small, no route"),
    503: _problem("the database failed while storing: retry"),
    507: _problem("the spool is full or failed while storing: retry later"),
}
# The form, for the OpenAPI schema: this handler streams the body itself (``upload``).
FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "DICOM files of one study, or one JPEG/PNG picture",
                        },
                        "modality": {"type": "string", "description": "for a picture: DX"},
                        "body_part": {"type": "string", "description": "for a picture: CHEST"},
                        "anonymous": {"type": "boolean", "description": "no patient data"},
                        "family_name": {"type": "string"},
                        "given_name": {"type": "string"},
                        "patient_id": {"type": "string"},
                        "birth_date": {"type": "string", "format": "date"},
                        "sex": {"type": "string", "enum": ["", "M", "F", "O"]},
                    },
                }
            }
        },
    }
}

router = APIRouter(prefix="/api", tags=["predict"])
UidPath = Annotated[str, Path(pattern=UID_PATTERN, description="Study Instance UID")]


def api_uploader(request: Request, db: Session = Depends(get_db)) -> WebUser:
    """A token (or session) user who may upload; 401 / 403 otherwise, audited as refused
    uploads (a script with a stale token shows in the audit log, not only in its own)."""
    who = identified_user(request, db)
    try:
        user = api_reader(request, who)
    except HTTPException as exc:
        audit(
            db,
            request,
            who.username if who is not None else "",
            "predict",
            success=False,
            detail={"status": exc.status_code, "reason": token_problem(request), "via": "api"},
        )
        raise
    if not user.can_upload:
        audit(
            db,
            request,
            user.username,
            "predict",
            success=False,
            detail={"status": 403, "reason": f"role {user.role}", "via": "api"},
        )
        raise HTTPException(
            status_code=403, detail=f"role {user.role} may not upload (uploader or admin)"
        )
    return user


def _respond(answer: PredictAnswer) -> Response:
    pending = answer.status == "pending"
    return JSONResponse(
        answer.model_dump(mode="json"),
        status_code=202 if pending else 200,
        headers={"Location": answer.poll_url} if pending else None,
    )


async def _answer(ctx: WebContext, study_uid: str, series: list[str]) -> PredictAnswer | None:
    def read() -> PredictAnswer | None:
        with ctx.sessions() as db:
            return prediction(db, study_uid, series)

    return await run_in_threadpool(read)


@router.post(
    "/predict",
    response_model=PredictAnswer,
    responses=RESPONSES,
    openapi_extra=FORM,
    summary="Upload DICOM files or a picture and wait for the result",
)
async def predict(request: Request, user: WebUser = Depends(api_uploader)) -> Response:
    """Store and route the upload, then wait up to ``[upload] predict_timeout`` seconds
    for its results: 200 with them, or 202 with a link to poll."""
    ctx = get_context(request)
    try:
        outcome = await upload.handle(request, user, via="api")
    except upload.UploadRefusedError as exc:
        raise HTTPException(status_code=exc.status, detail=exc.reason) from None
    series = [s.series_uid for s in outcome.series]
    deadline = time.monotonic() + ctx.settings.upload.predict_timeout
    answer = await _answer(ctx, outcome.study_uid, series)
    while answer is not None and answer.status == "pending" and time.monotonic() < deadline:
        if await request.is_disconnected():
            break  # the results come all the same; nobody is waiting for this answer
        await asyncio.sleep(POLL_SECONDS)
        answer = await _answer(ctx, outcome.study_uid, series)
    if answer is None:  # pragma: no cover - the study was stored a moment ago
        raise HTTPException(status_code=503, detail="the uploaded study is not indexed")
    return _respond(answer)


@router.get(
    "/predict/{study_uid}",
    response_model=PredictAnswer,
    responses={
        202: RESPONSES[202],
        401: RESPONSES[401],
        403: _problem("a role that may not read (sender)"),
        404: _problem("unknown study, or a series parameter that is not a UID"),
    },
    summary="Where the results of an upload stand",
)
def prediction_status(
    request: Request,
    study_uid: UidPath,
    series: Annotated[list[str] | None, Query(description="Series Instance UIDs")] = None,
    user: WebUser = Depends(api_user),
    db: Session = Depends(get_db),
) -> Response:
    """The answer of ``POST /api/predict`` now: 200 when finished, 202 while pending.
    ``series`` limits it to those series (the upload's); without it, every series of the
    study. Audited as a view of the study (it shows results)."""
    if series and not all(UID_RE.match(uid) for uid in series):
        raise HTTPException(status_code=404, detail="no such series (not a UID)")
    answer = prediction(db, study_uid, series or None)
    audit(
        db,
        request,
        user.username,
        "api_view_study",
        study_uid,
        success=answer is not None,
        detail={"via": "predict"},
    )
    if answer is None:
        raise HTTPException(status_code=404, detail="no such study")
    return _respond(answer)
