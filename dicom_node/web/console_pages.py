"""The console pages: queue, routes (with "test this route on a file"), destinations,
refused peers; and their actions (pause, resume, retry, cancel, C-ECHO).

Any user may look; actions need the admin role and are audited (``console``). Testing a
file against the routes is open to viewers too: it changes nothing, stores nothing, and
is audited like an action (the file is a patient's image).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, UploadFile
from fastapi.responses import RedirectResponse, Response
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy.orm import Session

from dicom_node.route.rules import CALLING_AE_KEY, evaluate, tags_for
from dicom_node.route.waits import model_availability
from dicom_node.web import console
from dicom_node.web.audit import audit
from dicom_node.web.auth import WebUser, page_admin, page_user
from dicom_node.web.context import get_context, get_db
from dicom_node.web.templating import flash, render

router = APIRouter(include_in_schema=False)
NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
NamePath = Annotated[str, Path(pattern=NAME_PATTERN)]
PageQuery = Annotated[int, Query(ge=1, le=1_000_000)]


# -- queue -------------------------------------------------------------------------------------


@router.get("/queue")
def queue_page(
    request: Request,
    view: Annotated[console.QueueView, Query()] = "attention",
    page: PageQuery = 1,
    user: WebUser = Depends(page_user),
    db: Session = Depends(get_db),
) -> Response:
    ctx = get_context(request)
    result = console.queue_page(db, view=view, page=page, page_size=ctx.settings.web.page_size)
    return render(
        request,
        "queue.html",
        {"result": result, "view": view, "views": list(console.QUEUE_VIEWS)},
    )


def _back_to_queue(view: str) -> str:
    return f"/queue?view={view}" if view in console.QUEUE_VIEWS else "/queue"


@router.post("/queue/pause")
def pause(
    request: Request,
    view: str = Form("attention"),
    user: WebUser = Depends(page_admin),
    db: Session = Depends(get_db),
) -> Response:
    if console.set_paused(db, request, user.username, True, via="page"):
        flash(request, "ok", "Processing paused: running jobs finish, no new job starts.")
    else:
        flash(request, "error", "Processing was paused already.")
    return RedirectResponse(_back_to_queue(view), status_code=303)


@router.post("/queue/resume")
def resume(
    request: Request,
    view: str = Form("attention"),
    user: WebUser = Depends(page_admin),
    db: Session = Depends(get_db),
) -> Response:
    if console.set_paused(db, request, user.username, False, via="page"):
        flash(request, "ok", "Processing resumed: queued jobs start again.")
    else:
        flash(request, "error", "Processing was not paused.")
    return RedirectResponse(_back_to_queue(view), status_code=303)


def _job_action(
    request: Request, db: Session, user: WebUser, job_id: int, action: Any, view: str
) -> Response:
    try:
        console.job_action(db, request, user.username, job_id, action, via="page")
    except console.ConsoleError as exc:
        flash(request, "error", str(exc))
    else:
        done = "queued again" if action == "retry" else "cancelled"
        flash(request, "ok", f"Job {job_id} {done}.")
    return RedirectResponse(_back_to_queue(view), status_code=303)


@router.post("/jobs/{job_id}/retry")
def retry_job(
    request: Request,
    job_id: Annotated[int, Path(ge=1)],
    view: str = Form("attention"),
    user: WebUser = Depends(page_admin),
    db: Session = Depends(get_db),
) -> Response:
    return _job_action(request, db, user, job_id, "retry", view)


@router.post("/jobs/{job_id}/cancel")
def cancel_job(
    request: Request,
    job_id: Annotated[int, Path(ge=1)],
    view: str = Form("attention"),
    user: WebUser = Depends(page_admin),
    db: Session = Depends(get_db),
) -> Response:
    return _job_action(request, db, user, job_id, "cancel", view)


# -- routes ------------------------------------------------------------------------------------


def _routes_context(request: Request) -> dict[str, Any]:
    ctx = get_context(request)
    return {
        "routes": console.route_views(ctx.settings),
        "read_only": ctx.editor.read_only_reason(),
        "version": _version(request),
    }


def _version(request: Request) -> str:
    """The configuration file's version for the edit buttons ("" when read-only)."""
    editor = get_context(request).editor
    if editor.read_only_reason() is not None:
        return ""
    try:
        return editor.current().version
    except Exception:  # shown as read-only reason on the form pages
        return ""


@router.get("/routes")
def routes_page(request: Request, user: WebUser = Depends(page_user)) -> Response:
    return render(request, "routes.html", _routes_context(request))


@router.post("/routes/test")
def test_route(
    request: Request,
    file: Annotated[UploadFile, File()],
    calling_ae: Annotated[str, Form(max_length=16)] = "",
    user: WebUser = Depends(page_user),
    db: Session = Depends(get_db),
) -> Response:
    """Which route a file would take and why: evaluated like completion does, on the
    file's header (pixels are not read), with the models' weights as they are now.
    Nothing is stored: the upload is a temporary file, gone after the request."""
    settings = get_context(request).settings
    outcome: dict[str, Any] = {"filename": file.filename or "", "calling_ae": calling_ae}
    error = ""
    # The upload's size is bounded before it is read (``csrf.MAX_FORM_BYTES``); only its
    # header is parsed here.
    try:
        ds = dcmread(file.file, stop_before_pixels=True)
    except (InvalidDicomError, ValueError, EOFError, OSError) as exc:
        error = f"not a DICOM file ({type(exc).__name__}: {exc})"
    if error:
        outcome["error"] = error
        audit(db, request, user.username, "test_route", success=False, detail={"error": error})
    else:
        decision = evaluate(
            settings.routes,
            tags_for(ds, calling_ae.strip()),
            model_available=model_availability(settings),
        )
        keywords = list(
            dict.fromkeys(
                key
                for route in settings.routes
                for key in (*route.match, *route.exclude)
                if key != CALLING_AE_KEY
            )
        )
        tags = tags_for(ds, calling_ae.strip())
        outcome.update(
            summary=decision.summary,
            reasons=list(decision.reasons),
            taken=[r.name for r in decision.routes],
            tags={key: tags.get(key) for key in keywords},
        )
        audit(
            db,
            request,
            user.username,
            "test_route",
            str(ds.get("SOPInstanceUID", ""))[:64],
            detail={"decision": decision.summary},
        )
    return render(request, "routes.html", {**_routes_context(request), "test": outcome})


# -- destinations ------------------------------------------------------------------------------


@router.get("/destinations")
def destinations_page(
    request: Request, user: WebUser = Depends(page_user), db: Session = Depends(get_db)
) -> Response:
    ctx = get_context(request)
    return render(
        request,
        "destinations.html",
        {
            "destinations": console.destination_views(db, ctx.settings),
            "read_only": ctx.editor.read_only_reason(),
            "version": _version(request),
        },
    )


@router.post("/destinations/{name}/echo")
def echo(
    request: Request,
    name: NamePath,
    user: WebUser = Depends(page_admin),
    db: Session = Depends(get_db),
) -> Response:
    try:
        answer = console.echo_destination(db, request, user.username, name, via="page")
    except console.ConsoleError as exc:
        flash(request, "error", str(exc))
    else:
        flash(request, "ok" if answer.ok else "error", answer.message)
    return RedirectResponse("/destinations", status_code=303)


# -- refused -----------------------------------------------------------------------------------


@router.get("/refused")
def refused_page(
    request: Request,
    kind: Annotated[console.RefusalView, Query()] = "all",
    page: PageQuery = 1,
    user: WebUser = Depends(page_user),
    db: Session = Depends(get_db),
) -> Response:
    ctx = get_context(request)
    result = console.refusal_page(db, kind=kind, page=page, page_size=ctx.settings.web.page_size)
    return render(request, "refused.html", {"result": result, "kind": kind})
