"""Jinja2 environment and the one function every page renders through.

Autoescaping is on for every template: patient names come from DICOM headers written by
other systems and may contain anything, including markup.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from dicom_node.web import csrf
from dicom_node.web.render import slice_plot_svg
from dicom_node.wording import OUT_OF_SCOPE, probability_value

TEMPLATE_DIR = Path(__file__).parent / "templates"
FLASH_KEY = "flash"


def _when(value: dt.datetime | None) -> str:
    """Stored times are naive UTC; show them as such, to the second."""
    if value is None:
        return "-"
    return value.strftime("%Y-%m-%d %H:%M:%S") + "Z"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min"


def _prob(value: float | None) -> str:
    # The one probability format (dicom_node.wording): two decimals, as OHIF shows them.
    return "-" if value is None else probability_value(value)


def _prob_level(value: float | None) -> str:
    """CSS class of a probability: the colour says at a glance which results are positive."""
    if value is None:
        return "prob-none"
    if value >= 0.5:
        return "prob-high"
    if value >= 0.2:
        return "prob-mid"
    return "prob-low"


def _dicom_name(value: str) -> str:
    """``DOE^JOHN`` -> ``DOE, JOHN``.

    PS3.5 6.2: a PN has up to three component groups separated by ``=`` (alphabetic,
    ideographic, phonetic) and components separated by ``^``; the first non-empty group is
    shown.
    """
    group = next((g for g in value.split("=") if g.strip("^ ")), "")
    parts = [p for p in group.split("^") if p]
    if not parts:
        return ""
    return parts[0] + (", " + " ".join(parts[1:]) if len(parts) > 1 else "")


def make_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(TEMPLATE_DIR))
    env = templates.env
    env.autoescape = True
    env.filters["when"] = _when
    env.filters["seconds"] = _seconds
    env.filters["prob"] = _prob
    env.filters["prob_level"] = _prob_level
    env.filters["pname"] = _dicom_name
    env.globals["slice_plot"] = slice_plot_svg
    env.globals["OUT_OF_SCOPE"] = OUT_OF_SCOPE
    return templates


def flash(request: Request, level: str, text: str) -> None:
    """A one-time message for the next page (texts hold ids and UIDs only)."""
    messages = list(request.session.get(FLASH_KEY, []))
    messages.append([level, text])
    request.session[FLASH_KEY] = messages[-5:]


def render(
    request: Request,
    name: str,
    context: dict[str, Any] | None = None,
    *,
    status_code: int = 200,
    fragment: bool = False,
) -> HTMLResponse:
    """Render a page with what the layout needs: the user, the CSRF token, flash messages.

    A ``fragment`` (a part of a page fetched by its script) leaves the flash messages for
    the next whole page.
    """
    templates: Jinja2Templates = request.app.state.web.templates
    full = {
        "user": getattr(request.state, "user", None),
        "csrf_token": csrf.ensure_token(request.session),
        "messages": [] if fragment else request.session.pop(FLASH_KEY, []),
        "nav": request.url.path,
        "upload_enabled": request.app.state.web.settings.upload.enabled,
        **(context or {}),
    }
    return templates.TemplateResponse(request, name, full, status_code=status_code)
