"""The JSON API under ``/api``: the pages' data and actions for scripts and dashboards.

Same permissions as the pages: any user reads, admins act; authentication by bearer token
(``dicom-node users token USER``) or by the page session (then unsafe methods need the
``X-CSRF-Token`` header). The free-text patient search is only offered as
``POST /api/studies/search``, so patient data stays out of URLs here too.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from dicom_node.web import actions, console, detail, overview, queries
from dicom_node.web.audit import audit
from dicom_node.web.auth import WebUser, api_admin, api_user
from dicom_node.web.context import get_context, get_db
from dicom_node.web.filters import SortName, StateName, StudyFilter
from dicom_node.web.operations import audited_rerun, audited_retry
from dicom_node.web.pages import UID_PATTERN
from dicom_node.web.schemas import (
    AuditPage,
    DeliveryInfo,
    DeliveryPage,
    DestinationView,
    EchoAnswer,
    Me,
    ModelStats,
    ModelView,
    QueuePage,
    RefusalPage,
    RerunResult,
    RouteView,
    StudyDetail,
    StudyPage,
)


class Problem(BaseModel):
    """An error answer."""

    detail: str


router = APIRouter(
    prefix="/api",
    tags=["api"],
    responses={
        400: {"model": Problem, "description": "the request body cannot be parsed"},
        401: {"model": Problem, "description": "no session and no valid bearer token"},
        403: {"model": Problem, "description": "admin role or CSRF token required"},
    },
)
UidPath = Annotated[str, Path(pattern=UID_PATTERN, description="Study Instance UID")]
PageParam = Annotated[int, Query(ge=1, le=1_000_000)]
PageSizeParam = Annotated[int, Query(ge=1, le=500)]


class StudySearch(BaseModel):
    """A studies query with the free-text patient search (in the body, not the URL)."""

    model_config = ConfigDict(extra="forbid")

    filter: StudyFilter = StudyFilter()
    page: int = Field(1, ge=1, le=1_000_000)
    page_size: int = Field(50, ge=1, le=500)
    sort: SortName = "received"
    direction: Literal["asc", "desc"] = "desc"


def _list(request: Request, db: Session, user: WebUser, search: StudySearch) -> StudyPage:
    result = queries.list_studies(
        db,
        search.filter,
        page=search.page,
        page_size=search.page_size,
        sort=search.sort,
        direction=search.direction,
    )
    audit(
        db,
        request,
        user.username,
        "api_list_studies",
        detail={"page": result.page, **search.filter.describe()},
    )
    return result


@router.get("/me", response_model=Me)
def me(user: WebUser = Depends(api_user)) -> Me:
    return Me(username=user.username, role=user.role)


@router.get("/studies", response_model=StudyPage)
def list_studies(
    request: Request,
    date_from: Annotated[dt.date | None, Query()] = None,
    date_to: Annotated[dt.date | None, Query()] = None,
    state: Annotated[StateName, Query()] = "",
    model: Annotated[str, Query(max_length=64)] = "",
    modality: Annotated[str, Query(max_length=16)] = "",
    calling_ae: Annotated[str, Query(max_length=16)] = "",
    page: PageParam = 1,
    page_size: PageSizeParam = 50,
    sort: Annotated[SortName, Query()] = "received",
    direction: Annotated[Literal["asc", "desc"], Query()] = "desc",
    user: WebUser = Depends(api_user),
    db: Session = Depends(get_db),
) -> StudyPage:
    """Studies, newest first by default; filters without patient data (for a patient or
    accession search use ``POST /api/studies/search``)."""
    filt = StudyFilter(
        date_from=date_from,
        date_to=date_to,
        state=state,
        model=model,
        modality=modality,
        calling_ae=calling_ae,
    )
    search = StudySearch(
        filter=filt, page=page, page_size=page_size, sort=sort, direction=direction
    )
    return _list(request, db, user, search)


@router.post("/studies/search", response_model=StudyPage)
def search_studies(
    request: Request,
    search: StudySearch,
    user: WebUser = Depends(api_user),
    db: Session = Depends(get_db),
) -> StudyPage:
    return _list(request, db, user, search)


@router.get(
    "/studies/{study_uid}",
    response_model=StudyDetail,
    responses={404: {"model": Problem, "description": "unknown study"}},
)
def get_study(
    request: Request,
    study_uid: UidPath,
    user: WebUser = Depends(api_user),
    db: Session = Depends(get_db),
) -> StudyDetail:
    info = detail.study_detail(db, study_uid)
    audit(db, request, user.username, "api_view_study", study_uid, success=info is not None)
    if info is None:
        raise HTTPException(status_code=404, detail="no such study")
    return info


@router.post(
    "/studies/{study_uid}/rerun",
    response_model=RerunResult,
    responses={
        404: {"model": Problem, "description": "unknown study"},
        409: {"model": Problem, "description": "nothing to re-run"},
    },
)
def rerun_study(
    request: Request,
    study_uid: UidPath,
    user: WebUser = Depends(api_admin),
    db: Session = Depends(get_db),
) -> RerunResult:
    """Queue every routed series of the study again (a new generation each)."""
    try:
        jobs, errors = audited_rerun(db, request, user.username, study_uid, via="api")
    except actions.ActionError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    if not jobs:
        raise HTTPException(status_code=409, detail="; ".join(errors))
    return RerunResult(study_uid=study_uid, jobs=jobs)


@router.get("/models", response_model=list[ModelStats])
def models(
    request: Request, user: WebUser = Depends(api_user), db: Session = Depends(get_db)
) -> list[ModelStats]:
    return overview.model_stats(db, get_context(request).settings)


@router.get("/deliveries", response_model=DeliveryPage)
def deliveries(
    state: Annotated[Literal["attention", "failed", "pending"], Query()] = "attention",
    page: PageParam = 1,
    page_size: PageSizeParam = 50,
    user: WebUser = Depends(api_user),
    db: Session = Depends(get_db),
) -> DeliveryPage:
    """Deliveries that are not done: failed and pending ("attention"), or one of them."""
    states = ("failed", "pending") if state == "attention" else (state,)
    return overview.attention_deliveries(db, states=states, page=page, page_size=page_size)


@router.post(
    "/deliveries/{delivery_id}/retry",
    response_model=DeliveryInfo,
    responses={409: {"model": Problem, "description": "unknown delivery or not failed"}},
)
def retry_delivery(
    request: Request,
    delivery_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    user: WebUser = Depends(api_admin),
    db: Session = Depends(get_db),
) -> DeliveryInfo:
    try:
        delivery = audited_retry(db, request, user.username, delivery_id, via="api")
    except actions.ActionError as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    return detail.delivery_info(delivery)


@router.get("/audit", response_model=AuditPage)
def audit_entries(
    username: Annotated[str, Query(max_length=64)] = "",
    action: Annotated[str, Query(max_length=32)] = "",
    page: PageParam = 1,
    page_size: PageSizeParam = 100,
    user: WebUser = Depends(api_admin),
    db: Session = Depends(get_db),
) -> AuditPage:
    return overview.audit_log(db, username=username, action=action, page=page, page_size=page_size)


# -- the operator's console ------------------------------------------------------------------


class PauseAnswer(BaseModel):
    paused: bool = Field(description="whether processing is paused now")
    changed: bool = Field(description="False when it already was in that state")


class JobAnswer(BaseModel):
    job_id: int
    state: str


JobIdPath = Annotated[int, Path(ge=1, le=2**31 - 1)]
NamePath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="its name")]


@router.get("/queue", response_model=QueuePage)
def queue_jobs(
    view: Annotated[console.QueueView, Query()] = "attention",
    page: PageParam = 1,
    page_size: PageSizeParam = 50,
    user: WebUser = Depends(api_user),
    db: Session = Depends(get_db),
) -> QueuePage:
    """Jobs of a view (running, queued and failed by default), whether processing is
    paused, and the number of jobs per state."""
    return console.queue_page(db, view=view, page=page, page_size=page_size)


def _pause(request: Request, db: Session, user: WebUser, paused: bool) -> PauseAnswer:
    changed = console.set_paused(db, request, user.username, paused, via="api")
    return PauseAnswer(paused=paused, changed=changed)


@router.post("/queue/pause", response_model=PauseAnswer)
def pause_processing(
    request: Request, user: WebUser = Depends(api_admin), db: Session = Depends(get_db)
) -> PauseAnswer:
    """No queued job starts until resumed (every worker; kept across restarts)."""
    return _pause(request, db, user, True)


@router.post("/queue/resume", response_model=PauseAnswer)
def resume_processing(
    request: Request, user: WebUser = Depends(api_admin), db: Session = Depends(get_db)
) -> PauseAnswer:
    return _pause(request, db, user, False)


def _job(request: Request, db: Session, user: WebUser, job_id: int, action: Any) -> JobAnswer:
    try:
        console.job_action(db, request, user.username, job_id, action, via="api")
    except console.ConsoleError as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    return JobAnswer(job_id=job_id, state="queued" if action == "retry" else "cancelled")


_JOB_409: dict[int | str, dict[str, Any]] = {
    409: {"model": Problem, "description": "unknown job, or not in a state for this"}
}


@router.post("/jobs/{job_id}/retry", response_model=JobAnswer, responses=_JOB_409)
def retry_job(
    request: Request,
    job_id: JobIdPath,
    user: WebUser = Depends(api_admin),
    db: Session = Depends(get_db),
) -> JobAnswer:
    """Queue a failed or cancelled job again (same generation)."""
    return _job(request, db, user, job_id, "retry")


@router.post("/jobs/{job_id}/cancel", response_model=JobAnswer, responses=_JOB_409)
def cancel_job(
    request: Request,
    job_id: JobIdPath,
    user: WebUser = Depends(api_admin),
    db: Session = Depends(get_db),
) -> JobAnswer:
    """Cancel a queued job (a running one finishes)."""
    return _job(request, db, user, job_id, "cancel")


@router.get("/routes", response_model=list[RouteView])
def routes(request: Request, user: WebUser = Depends(api_user)) -> list[RouteView]:
    """The routes in force, in evaluation order, each active, disabled or waiting."""
    return console.route_views(get_context(request).settings)


@router.get("/destinations", response_model=list[DestinationView])
def destinations(
    request: Request, user: WebUser = Depends(api_user), db: Session = Depends(get_db)
) -> list[DestinationView]:
    """Destinations with pending and failed counts, last success and last error."""
    return console.destination_views(db, get_context(request).settings)


@router.post(
    "/destinations/{name}/echo",
    response_model=EchoAnswer,
    responses={404: {"model": Problem, "description": "no such destination"}},
)
def echo_destination(
    request: Request,
    name: NamePath,
    user: WebUser = Depends(api_admin),
    db: Session = Depends(get_db),
) -> EchoAnswer:
    """C-ECHO the destination as a delivery would reach it; ``ok`` says whether it
    answered with success, ``message`` what happened otherwise."""
    try:
        return console.echo_destination(db, request, user.username, name, via="api")
    except console.ConsoleError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None


@router.get("/model-packages", response_model=list[ModelView])
def model_packages(request: Request, user: WebUser = Depends(api_user)) -> list[ModelView]:
    """Model packages: version, intended use, whether the weights are present."""
    return console.model_views(get_context(request).settings)


@router.get("/refusals", response_model=RefusalPage)
def refusals(
    kind: Annotated[console.RefusalView, Query()] = "all",
    page: PageParam = 1,
    page_size: PageSizeParam = 50,
    user: WebUser = Depends(api_user),
    db: Session = Depends(get_db),
) -> RefusalPage:
    """Refused connections, associations and C-STOREs, newest first."""
    return console.refusal_page(db, kind=kind, page=page, page_size=page_size)


@router.get("/openapi.json", include_in_schema=False)
def openapi(request: Request, user: WebUser = Depends(api_user)) -> dict[str, Any]:
    """The OpenAPI schema, for logged-in users and token holders only."""
    schema: dict[str, Any] = request.app.openapi()
    return schema
