"""The HTML pages: studies, study detail, models, deliveries, audit log (the console's
queue, routes, destinations and refused pages are in ``console_pages``)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_node.store.db import Result, Series
from dicom_node.web import console, detail, overview, prediction, queries
from dicom_node.web.audit import audit
from dicom_node.web.auth import WebUser, api_user, page_admin, page_user
from dicom_node.web.context import get_context, get_db
from dicom_node.web.filters import SESSION_KEY as FILTER_KEY
from dicom_node.web.filters import SORTS, STATES, StudyFilter
from dicom_node.web.templating import flash, render

router = APIRouter(include_in_schema=False)
# DICOM UIDs (PS3.5 9.1): digits and dots, at most 64 characters. Anything else in a URL is
# not a study of ours, and is refused before it reaches a query.
UID_PATTERN = r"^[0-9.]{1,64}$"
UID_RE = re.compile(UID_PATTERN)

SortParam = Annotated[Literal["received", "patient_name", "patient_id", "accession"], Query()]
DirParam = Annotated[Literal["asc", "desc"], Query()]


def current_filter(request: Request) -> StudyFilter:
    return get_context(request).filters.get(request.session.get(FILTER_KEY))


def filter_choices(db: Session, request: Request) -> dict[str, list[str]]:
    """Values offered by the filter's drop-downs (cached for a minute, see ``cache``)."""
    ctx = get_context(request)

    def compute() -> dict[str, list[str]]:
        models = set(db.scalars(select(Result.model_id).distinct()))
        models.update(m for route in ctx.settings.routes for m in route.models)
        return {
            "models": sorted(models),
            "modalities": sorted(m for m in db.scalars(select(Series.modality).distinct()) if m),
            "calling_aes": sorted(a for a in db.scalars(select(Series.calling_ae).distinct()) if a),
        }

    return ctx.choices.get(compute)


@router.get("/")
def home(user: WebUser = Depends(page_user)) -> Response:
    return RedirectResponse("/studies", status_code=303)


@router.get("/studies")
def studies(
    request: Request,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    sort: SortParam = "received",
    direction: DirParam = "desc",
    user: WebUser = Depends(page_user),
    db: Session = Depends(get_db),
) -> Response:
    """The studies list; the list shows patient data, so every view is audited."""
    ctx = get_context(request)
    filt = current_filter(request)
    result = queries.list_studies(
        db,
        filt,
        page=page,
        page_size=ctx.settings.web.page_size,
        sort=sort,
        direction=direction,
    )
    audit(
        db,
        request,
        user.username,
        "list_studies",
        detail={"page": result.page, **filt.describe()},
    )
    return render(
        request,
        "studies.html",
        {
            "result": result,
            "filter": filt,
            "states": STATES,
            "sorts": SORTS,
            "choices": filter_choices(db, request),
        },
    )


@router.post("/studies")
def set_filter(
    request: Request,
    action: str = Form("apply"),
    date_from: str = Form(""),
    date_to: str = Form(""),
    state: str = Form(""),
    model: str = Form(""),
    modality: str = Form(""),
    calling_ae: str = Form(""),
    q: str = Form(""),
    sort: str = Form("received"),
    direction: str = Form("desc"),
    user: WebUser = Depends(page_user),
) -> Response:
    """Keep the filter on the server (see ``filters``) and show the first page with it."""
    store = get_context(request).filters
    if action == "clear":
        store.drop(request.session.pop(FILTER_KEY, None))
    else:
        try:
            filt = StudyFilter.model_validate(
                {
                    "date_from": date_from or None,
                    "date_to": date_to or None,
                    "state": state,
                    "model": model,
                    "modality": modality,
                    "calling_ae": calling_ae,
                    "q": q.strip(),
                }
            )
        except ValidationError as exc:
            fields = ", ".join(str(e["loc"][0]) for e in exc.errors())
            flash(request, "error", f"Invalid filter value: {fields}")
        else:
            request.session[FILTER_KEY] = store.put(filt, request.session.get(FILTER_KEY))
    sort = sort if sort in SORTS else "received"
    direction = direction if direction in ("asc", "desc") else "desc"
    return RedirectResponse(f"/studies?sort={sort}&direction={direction}", status_code=303)


def _check_uid(uid: str) -> str:
    if not UID_RE.match(uid):
        raise HTTPException(status_code=404, detail="no such study")
    return uid


@router.get("/studies/{study_uid}")
def study_page(
    request: Request,
    study_uid: str,
    user: WebUser = Depends(page_user),
    db: Session = Depends(get_db),
) -> Response:
    _check_uid(study_uid)
    info = detail.study_detail(db, study_uid)
    audit(db, request, user.username, "view_study", study_uid, success=info is not None)
    if info is None:
        return render(request, "error.html", {"message": "No such study."}, status_code=404)
    return render(
        request, "study.html", {"study": info, "progress": prediction.progress(db, study_uid)}
    )


@router.get("/studies/{study_uid}/progress.json")
def study_progress(
    study_uid: str, user: WebUser = Depends(api_user), db: Session = Depends(get_db)
) -> Response:
    """What the study page polls (``static/live.js``): a version of what it shows and
    whether anything is under way. States and counts only, no patient data: not audited
    (the page view and each refresh of its content are)."""
    _check_uid(study_uid)
    answer = prediction.progress(db, study_uid)
    if answer is None:
        raise HTTPException(status_code=404, detail="no such study")
    return JSONResponse(answer)


@router.get("/studies/{study_uid}/live.html")
def study_live(
    request: Request,
    study_uid: str,
    user: WebUser = Depends(page_user),
    db: Session = Depends(get_db),
) -> Response:
    """The live part of the study page (series, results, deliveries, timeline), for the
    page to swap in when its progress changed; audited as a view of the study."""
    _check_uid(study_uid)
    info = detail.study_detail(db, study_uid)
    audit(
        db,
        request,
        user.username,
        "view_study",
        study_uid,
        success=info is not None,
        detail={"refresh": True},
    )
    if info is None:
        raise HTTPException(status_code=404, detail="no such study")
    return render(request, "_study_live.html", {"study": info}, fragment=True)


@router.get("/models")
def models_page(
    request: Request, user: WebUser = Depends(page_user), db: Session = Depends(get_db)
) -> Response:
    """Every model package (version, intended use, weights present or waiting) with the
    counts and latency of its results."""
    settings = get_context(request).settings
    stats = {s.model_id: s for s in overview.model_stats(db, settings)}
    models = console.model_views(settings)
    packaged = {m.model_id for m in models}
    orphans = [s for model_id, s in stats.items() if model_id not in packaged]
    return render(request, "models.html", {"models": models, "stats": stats, "orphans": orphans})


@router.get("/deliveries")
def deliveries_page(
    request: Request,
    state: Annotated[Literal["attention", "failed", "pending"], Query()] = "attention",
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    user: WebUser = Depends(page_user),
    db: Session = Depends(get_db),
) -> Response:
    states = ("failed", "pending") if state == "attention" else (state,)
    result = overview.attention_deliveries(db, states=states, page=page)
    return render(request, "deliveries.html", {"result": result, "state": state})


@router.get("/audit")
def audit_page(
    request: Request,
    username: Annotated[str, Query(max_length=64)] = "",
    action: Annotated[str, Query(max_length=32)] = "",
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    user: WebUser = Depends(page_admin),
    db: Session = Depends(get_db),
) -> Response:
    """The audit log is admin-only: it tells who looked at which patient's study."""
    result = overview.audit_log(db, username=username, action=action, page=page)
    return render(
        request,
        "audit.html",
        {
            "result": result,
            "username": username,
            "action": action,
            "actions": overview.audit_actions(db),
        },
    )
