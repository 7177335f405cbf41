"""Login and logout, with rate limiting and an audit entry for every attempt."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from dicom_node.store import users
from dicom_node.web import auth
from dicom_node.web.audit import audit
from dicom_node.web.context import get_context, get_db
from dicom_node.web.filters import SESSION_KEY
from dicom_node.web.templating import render

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)


@router.get("/login")
def login_page(request: Request, db: Session = Depends(get_db)) -> Response:
    if auth.session_user(request, db) is not None:
        return RedirectResponse("/studies", status_code=303)
    return render(request, "login.html")


@router.post("/login")
def login(
    request: Request,
    username: str = Form("", max_length=200),
    password: str = Form("", max_length=1000),
    db: Session = Depends(get_db),
) -> Response:
    """Check the password; after ``login_rate_limit`` failures per address or per username
    within the window, answer 429 without checking (so guessing stays slow)."""
    ctx = get_context(request)
    address = auth.client_address(request)
    keys = [f"ip:{address}", f"user:{username.lower()}"]
    if ctx.limiter.blocked(keys):
        audit(db, request, username, "login", success=False, detail={"reason": "rate limited"})
        log.warning("login rate limit reached for user %r from %s", username[:64], address)
        return render(
            request,
            "login.html",
            {"error": "Too many failed logins. Wait a few minutes and try again."},
            status_code=429,
        )
    user = users.authenticate(ctx.sessions, username, password)
    if user is None:
        ctx.limiter.failure(keys)
        audit(db, request, username, "login", success=False, detail={"reason": "bad credentials"})
        return render(
            request, "login.html", {"error": "Wrong username or password."}, status_code=401
        )
    ctx.limiter.reset(f"user:{username.lower()}")
    auth.log_in(request, user)
    audit(db, request, user.username, "login")
    return RedirectResponse("/studies", status_code=303)


@router.post("/logout")
def logout(request: Request, db: Session = Depends(get_db)) -> Response:
    user = auth.session_user(request, db)
    if user is not None:
        audit(db, request, user.username, "logout")
    get_context(request).filters.drop(request.session.get(SESSION_KEY))
    auth.log_out(request)
    return RedirectResponse("/login", status_code=303)
