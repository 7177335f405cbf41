"""Admin pages that edit routes and destinations in the configuration file.

Each form posts the file's version it was made on; ``config_edit.ConfigEditor`` checks
it, validates the changed file like the node's start-up does, writes it with its
comments, and puts the new routes and destinations in force. Every edit is audited with
the diff of the file, and every refused one with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Form, Path, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from tomlkit.toml_document import TOMLDocument

from dicom_node.config import Settings
from dicom_node.store.db import Delivery
from dicom_node.store.states import DeliveryState
from dicom_node.web import config_edit, console
from dicom_node.web.audit import audit
from dicom_node.web.auth import WebUser, page_admin
from dicom_node.web.config_edit import EditError, Section
from dicom_node.web.context import get_context, get_db
from dicom_node.web.templating import flash, render

router = APIRouter(include_in_schema=False)
NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
NamePath = Annotated[str, Path(pattern=NAME_PATTERN)]
SR_CLASSES = ("comprehensive3d", "comprehensive", "enhanced")
_SINGULAR = {"routes": "route", "destinations": "destination"}


def _edit(
    request: Request,
    db: Session,
    user: WebUser,
    section: Section,
    op: str,
    name: str,
    version: str,
    change: Callable[[TOMLDocument], None],
) -> str | None:
    """Apply one edit and audit it (with the diff, or the reason it was refused).
    Returns the error for the operator, or None when the edit is in force."""
    action = f"{op}_{_SINGULAR[section]}"
    try:
        outcome = get_context(request).editor.apply(version, change)
    except EditError as exc:
        audit(
            db,
            request,
            user.username,
            action,
            name,
            success=False,
            detail={"error": str(exc)[:4000]},
        )
        return str(exc)
    audit(
        db,
        request,
        user.username,
        action,
        name,
        detail={"diff": outcome.diff[: config_edit.MAX_AUDIT_DIFF]},
    )
    return None


def _choices(settings: Settings) -> dict[str, Any]:
    found, errors = console.manifests(settings)
    return {
        "model_ids": sorted({*found, *errors}),
        "destination_names": [d.name for d in settings.destinations],
        "sr_classes": SR_CLASSES,
    }


def _form_page(
    request: Request,
    template: str,
    values: dict[str, Any],
    *,
    new: bool,
    version: str,
    error: str = "",
) -> Response:
    ctx = get_context(request)
    return render(
        request,
        template,
        {
            "values": values,
            "new": new,
            "version": version,
            "error": error,
            "read_only": ctx.editor.read_only_reason(),
            **_choices(ctx.settings),
        },
        status_code=422 if error else 200,
    )


def _current_version(request: Request) -> str:
    try:
        return get_context(request).editor.current().version
    except EditError:
        return ""


# -- routes ------------------------------------------------------------------------------------


def _route_values(settings: Settings, name: str) -> dict[str, Any] | None:
    for route in settings.routes:
        if route.name == name:
            return {
                "name": route.name,
                "enabled": route.enabled,
                "match": config_edit.pattern_lines(route.match),
                "exclude": config_edit.pattern_lines(route.exclude),
                "models": list(route.models),
                "destinations": list(route.destinations),
                "forward": route.forward,
                "pdf": route.pdf,
                "key_slices": str(route.key_slices),
                "continue": route.continue_,
            }
    return None


NEW_ROUTE = {
    "name": "",
    "enabled": True,
    "match": "Modality = ^CR$",
    "exclude": "ImageType = LOCALIZER",
    "models": [],
    "destinations": [],
    "forward": False,
    "pdf": False,
    "key_slices": "1",
    "continue": False,
}


@router.get("/routes/new")
def new_route_form(request: Request, user: WebUser = Depends(page_admin)) -> Response:
    return _form_page(
        request, "route_form.html", dict(NEW_ROUTE), new=True, version=_current_version(request)
    )


@router.get("/routes/{name}/edit")
def edit_route_form(
    request: Request, name: NamePath, user: WebUser = Depends(page_admin)
) -> Response:
    values = _route_values(get_context(request).settings, name)
    if values is None:
        return render(request, "error.html", {"message": "No such route."}, status_code=404)
    return _form_page(
        request, "route_form.html", values, new=False, version=_current_version(request)
    )


def _save_route(
    request: Request, db: Session, user: WebUser, form: dict[str, Any], *, new: bool
) -> Response:
    version = form.pop("version")
    try:
        values: dict[str, Any] = {
            "name": form["name"].strip(),
            "enabled": form["enabled"],
            "match": config_edit.patterns(form["match"], "match"),
            "exclude": config_edit.patterns(form["exclude"], "exclude"),
            "models": form["models"],
            "destinations": form["destinations"],
            "forward": form["forward"],
            "pdf": form["pdf"],
            "key_slices": config_edit.number(form["key_slices"]),
            "continue": form["continue"],
        }
    except EditError as exc:
        return _form_page(
            request, "route_form.html", form, new=new, version=version, error=str(exc)
        )
    error = _edit(
        request,
        db,
        user,
        "routes",
        "add" if new else "edit",
        values["name"],
        version,
        lambda doc: config_edit.put_entry(doc, "routes", values, new=new),
    )
    if error:
        return _form_page(request, "route_form.html", form, new=new, version=version, error=error)
    flash(request, "ok", f"Route {values['name']} saved; in force for the next series.")
    return RedirectResponse("/routes", status_code=303)


def _route_form(
    version: str = Form(""),
    new_name: str = Form("", max_length=64, alias="name"),
    enabled: bool = Form(False),
    match: str = Form("", max_length=20_000),
    exclude: str = Form("", max_length=20_000),
    models: list[str] = Form([]),
    destinations: list[str] = Form([]),
    forward: bool = Form(False),
    pdf: bool = Form(False),
    key_slices: str = Form("1", max_length=16),
    continue_: bool = Form(False, alias="continue"),
) -> dict[str, Any]:
    return {
        "version": version,
        "name": new_name,
        "enabled": enabled,
        "match": match,
        "exclude": exclude,
        "models": models,
        "destinations": destinations,
        "forward": forward,
        "pdf": pdf,
        "key_slices": key_slices,
        "continue": continue_,
    }


@router.post("/routes/new")
def add_route(
    request: Request,
    form: dict[str, Any] = Depends(_route_form),
    user: WebUser = Depends(page_admin),
    db: Session = Depends(get_db),
) -> Response:
    return _save_route(request, db, user, form, new=True)


@router.post("/routes/{name}/edit")
def edit_route(
    request: Request,
    name: NamePath,
    form: dict[str, Any] = Depends(_route_form),
    user: WebUser = Depends(page_admin),
    db: Session = Depends(get_db),
) -> Response:
    form["name"] = name  # the name identifies the route; the form cannot change it
    return _save_route(request, db, user, form, new=False)


def _list_action(
    request: Request,
    db: Session,
    user: WebUser,
    section: Section,
    op: str,
    name: str,
    version: str,
    change: Callable[[TOMLDocument], None],
    done: str,
) -> Response:
    error = _edit(request, db, user, section, op, name, version, change)
    flash(request, "error" if error else "ok", error or done)
    return RedirectResponse(f"/{section}", status_code=303)


@router.post("/routes/{name}/move")
def move_route(
    request: Request,
    name: NamePath,
    direction: Literal["up", "down"] = Form(...),
    version: str = Form(""),
    user: WebUser = Depends(page_admin),
    db: Session = Depends(get_db),
) -> Response:
    offset = -1 if direction == "up" else 1
    return _list_action(
        request,
        db,
        user,
        "routes",
        "move",
        name,
        version,
        lambda doc: config_edit.move_route(doc, name, offset),
        f"Route {name} moved {direction}; evaluated in the new order from the next series.",
    )


def _set_enabled(section: Section, enabled: bool) -> Callable[..., Response]:
    verb = "enable" if enabled else "disable"

    def handler(
        request: Request,
        name: NamePath,
        version: str = Form(""),
        user: WebUser = Depends(page_admin),
        db: Session = Depends(get_db),
    ) -> Response:
        held = (
            " Its deliveries wait until it is enabled."
            if section == "destinations" and not enabled
            else ""
        )
        return _list_action(
            request,
            db,
            user,
            section,
            verb,
            name,
            version,
            lambda doc: config_edit.set_enabled(doc, section, name, enabled),
            f"{_SINGULAR[section].capitalize()} {name} {verb}d.{held}",
        )

    return handler


def _pending_deliveries(db: Session, name: str) -> int:
    return int(
        db.scalar(
            select(func.count(Delivery.id)).where(
                Delivery.destination == name, Delivery.state == DeliveryState.PENDING
            )
        )
        or 0
    )


def _delete(section: Section) -> Callable[..., Response]:
    def handler(
        request: Request,
        name: NamePath,
        version: str = Form(""),
        user: WebUser = Depends(page_admin),
        db: Session = Depends(get_db),
    ) -> Response:
        pending = _pending_deliveries(db, name) if section == "destinations" else 0
        if pending:
            # Deliveries to a destination that is not configured fail for good.
            error = (
                f"destination {name} has {pending} pending deliveries, which would fail "
                "without it; disable it instead (they wait), or let them finish"
            )
            audit(
                db,
                request,
                user.username,
                "delete_destination",
                name,
                success=False,
                detail={"error": error},
            )
            flash(request, "error", error)
            return RedirectResponse("/destinations", status_code=303)
        return _list_action(
            request,
            db,
            user,
            section,
            "delete",
            name,
            version,
            lambda doc: config_edit.delete_entry(doc, section, name),
            f"{_SINGULAR[section].capitalize()} {name} deleted.",
        )

    return handler


for _section in config_edit.SECTIONS:
    router.add_api_route(
        f"/{_section}/{{name}}/enable", _set_enabled(_section, True), methods=["POST"]
    )
    router.add_api_route(
        f"/{_section}/{{name}}/disable", _set_enabled(_section, False), methods=["POST"]
    )
    router.add_api_route(f"/{_section}/{{name}}/delete", _delete(_section), methods=["POST"])


# -- destinations ------------------------------------------------------------------------------


def _shown(value: Any) -> Any:
    """A setting as a form shows it: 5.0 seconds as "5", booleans for checkboxes."""
    if isinstance(value, bool):
        return value
    return f"{value:g}" if isinstance(value, float) else str(value)


def _destination_values(settings: Settings, name: str) -> dict[str, Any] | None:
    for dest in settings.destinations:
        if dest.name == name:
            return {k: _shown(v) for k, v in dest.model_dump().items()}
    return None


NEW_DESTINATION: dict[str, Any] = {
    "name": "",
    "enabled": True,
    "ae_title": "",
    "host": "",
    "port": "104",
    **{
        key: str(config_edit.DESTINATION_DEFAULTS[key])
        for key in ("max_attempts", "backoff_seconds", "backoff_max", "timeout", "concurrency")
    },
    "sr_class": config_edit.DESTINATION_DEFAULTS["sr_class"],
}
_NUMBERS = ("port", "max_attempts", "backoff_seconds", "backoff_max", "timeout", "concurrency")


def _destination_form(
    version: str = Form(""),
    new_name: str = Form("", max_length=64, alias="name"),
    enabled: bool = Form(False),
    ae_title: str = Form("", max_length=64),
    host: str = Form("", max_length=255),
    port: str = Form("", max_length=16),
    max_attempts: str = Form("", max_length=16),
    backoff_seconds: str = Form("", max_length=16),
    backoff_max: str = Form("", max_length=16),
    sr_class: str = Form("comprehensive3d", max_length=32),
    timeout: str = Form("", max_length=16),
    concurrency: str = Form("", max_length=16),
) -> dict[str, Any]:
    return {
        "version": version,
        "name": new_name,
        "enabled": enabled,
        "ae_title": ae_title,
        "host": host,
        "port": port,
        "max_attempts": max_attempts,
        "backoff_seconds": backoff_seconds,
        "backoff_max": backoff_max,
        "sr_class": sr_class,
        "timeout": timeout,
        "concurrency": concurrency,
    }


def _save_destination(
    request: Request, db: Session, user: WebUser, form: dict[str, Any], *, new: bool
) -> Response:
    version = form.pop("version")
    values: dict[str, Any] = {
        key: config_edit.number(value) if key in _NUMBERS else value for key, value in form.items()
    }
    values["name"] = str(values["name"]).strip()
    values["ae_title"] = str(values["ae_title"]).strip()
    values["host"] = str(values["host"]).strip()
    error = _edit(
        request,
        db,
        user,
        "destinations",
        "add" if new else "edit",
        values["name"],
        version,
        lambda doc: config_edit.put_entry(doc, "destinations", values, new=new),
    )
    if error:
        return _form_page(
            request, "destination_form.html", form, new=new, version=version, error=error
        )
    flash(request, "ok", f"Destination {values['name']} saved; in force for the next delivery.")
    return RedirectResponse("/destinations", status_code=303)


@router.get("/destinations/new")
def new_destination_form(request: Request, user: WebUser = Depends(page_admin)) -> Response:
    return _form_page(
        request,
        "destination_form.html",
        dict(NEW_DESTINATION),
        new=True,
        version=_current_version(request),
    )


@router.get("/destinations/{name}/edit")
def edit_destination_form(
    request: Request, name: NamePath, user: WebUser = Depends(page_admin)
) -> Response:
    values = _destination_values(get_context(request).settings, name)
    if values is None:
        return render(request, "error.html", {"message": "No such destination."}, status_code=404)
    return _form_page(
        request, "destination_form.html", values, new=False, version=_current_version(request)
    )


@router.post("/destinations/new")
def add_destination(
    request: Request,
    form: dict[str, Any] = Depends(_destination_form),
    user: WebUser = Depends(page_admin),
    db: Session = Depends(get_db),
) -> Response:
    return _save_destination(request, db, user, form, new=True)


@router.post("/destinations/{name}/edit")
def edit_destination(
    request: Request,
    name: NamePath,
    form: dict[str, Any] = Depends(_destination_form),
    user: WebUser = Depends(page_admin),
    db: Session = Depends(get_db),
) -> Response:
    form["name"] = name
    return _save_destination(request, db, user, form, new=False)
