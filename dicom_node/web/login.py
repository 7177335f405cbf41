"""Login and logout, with throttling per address and username, and an audit entry for every
attempt."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from dicom_node.store import users
from dicom_node.web import auth
from dicom_node.web.audit import audit
from dicom_node.web.context import WebContext, get_context, get_db
from dicom_node.web.filters import SESSION_KEY
from dicom_node.web.ratelimit import pair_key
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
    """Check the password, unless this address is throttled for this username (429).

    After ``login_rate_limit`` failures of one (address, username) pair, or
    ``login_address_limit`` failures of one address, within ``login_rate_window`` seconds,
    the attempt is refused without checking the password, so guessing stays slow. The same
    user logging in from another address is not slowed.
    """
    ctx = get_context(request)
    address = auth.client_address(request)
    pair = pair_key(address, username)
    if _throttled(ctx, db, pair, address, username):
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
        ctx.pair_limiter.failure(pair)
        ctx.address_limiter.failure(address)
        audit(db, request, username, "login", success=False, detail={"reason": "bad credentials"})
        return render(
            request, "login.html", {"error": "Wrong username or password."}, status_code=401
        )
    ctx.pair_limiter.reset(pair)
    if user.role not in users.READ_ROLES:
        # A machine account (sender): its password is right, but it has nothing to read.
        audit(db, request, user.username, "login", success=False, detail={"reason": "sender"})
        return render(
            request,
            "login.html",
            {"error": "This account only stores studies (DICOMweb) and cannot log in."},
            status_code=403,
        )
    auth.log_in(request, user)
    audit(db, request, user.username, "login")
    return RedirectResponse("/studies", status_code=303)


def _throttled(ctx: WebContext, db: Session, pair: str, address: str, username: str) -> bool:
    """Whether the attempt is refused; a blocked pair first drops the failures that an
    administrator's unlock (``dicom-node users unlock``, another process) cleared.

    The database is read only for a pair that is blocked, so normal logins cost nothing
    extra.
    """
    if ctx.address_limiter.blocked(address):
        return True
    if not ctx.pair_limiter.blocked(pair):
        return False
    unlocked = users.login_unlocked_at(db, username)
    if unlocked is not None and ctx.pair_limiter.forget_before(pair, unlocked):
        return ctx.pair_limiter.blocked(pair)
    return True


@router.post("/logout")
def logout(request: Request, db: Session = Depends(get_db)) -> Response:
    """End the session on the server: the cookie, and any copy of it, stops working."""
    user = auth.session_user(request, db)
    if user is not None:
        audit(db, request, user.username, "logout")
    get_context(request).filters.drop(request.session.get(SESSION_KEY))
    auth.log_out(request, db, user)
    return RedirectResponse("/login", status_code=303)
