"""Who is asking: session users for the pages, session or bearer-token users for the API.

The session cookie holds only the user id, the user's session epoch when it was issued, a
stamp of the password hash and the CSRF token. The signed cookie alone proves nothing: the
user row is read again on every request, and the cookie counts only while the row is
active and still has that epoch and password. Logout, a password change and disabling the
user increment the epoch (``dicom_node.store.users``), so a copy of the cookie taken before
is refused at once instead of working until it expires.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session

from dicom_node.store import users
from dicom_node.store.db import User
from dicom_node.web import csrf
from dicom_node.web.context import get_db

SESSION_USER = "uid"
SESSION_STAMP = "stamp"
SESSION_EPOCH = "epoch"


@dataclass(frozen=True)
class WebUser:
    id: int
    username: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def can_read(self) -> bool:
        """Pages and the JSON API: not for ``sender`` accounts (they only store)."""
        return self.role in users.READ_ROLES

    @property
    def can_store(self) -> bool:
        """The STOW-RS door (``web.stow``)."""
        return self.role in users.STORE_ROLES

    @property
    def can_upload(self) -> bool:
        """The upload page and ``POST /api/predict`` (``web.upload``)."""
        return self.role in users.UPLOAD_ROLES

    @classmethod
    def of(cls, user: User) -> WebUser:
        return cls(id=user.id, username=user.username, role=user.role)


class LoginRequiredError(Exception):
    """Raised by page dependencies; the app answers with a redirect to the login page."""


class AdminRequiredError(Exception):
    """Raised by page dependencies when a viewer tries an admin page or action."""


def client_address(request: Request) -> str:
    """The client's address as uvicorn saw it (X-Forwarded-For only from trusted proxies)."""
    return request.client.host if request.client else ""


def log_in(request: Request, user: User) -> None:
    """Start a fresh session: a new CSRF token, so a token seen before login is worthless."""
    request.session.clear()
    request.session[SESSION_USER] = user.id
    request.session[SESSION_STAMP] = users.session_stamp(user)
    request.session[SESSION_EPOCH] = user.session_epoch
    csrf.ensure_token(request.session)


def log_out(request: Request, db: Session, user: WebUser | None) -> None:
    """End the session on the server (every cookie of the user) and clear it here."""
    if user is not None:
        users.end_sessions(db, user.id)
    request.session.clear()


def session_user(request: Request, db: Session) -> WebUser | None:
    uid = request.session.get(SESSION_USER)
    if not isinstance(uid, int):
        return None
    user = db.get(User, uid)
    if (
        user is None
        or not user.active
        or request.session.get(SESSION_EPOCH) != user.session_epoch
        or request.session.get(SESSION_STAMP) != users.session_stamp(user)
    ):
        return None
    return WebUser.of(user)


def bearer_user(request: Request, db: Session) -> WebUser | None:
    """The user of the request's bearer token; when there is none, why is kept for the
    401 answer (:func:`token_problem`)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        request.state.token_problem = "no Authorization: Bearer token"
        return None
    check = users.check_token(db, token.strip())
    if check.user is None:
        request.state.token_problem = check.reason
        return None
    return WebUser.of(check.user)


def token_problem(request: Request) -> str:
    """Why the request's bearer token was refused ("" when none was checked)."""
    return str(getattr(request.state, "token_problem", ""))


def identified_user(request: Request, db: Session) -> WebUser | None:
    """Bearer token if the request has an Authorization header (then only it), else session."""
    if request.headers.get("authorization"):
        return bearer_user(request, db)
    return session_user(request, db)


def optional_user(request: Request, db: Session) -> WebUser | None:
    """The user, if any, who may read: a ``sender`` token counts as anonymous here."""
    user = identified_user(request, db)
    return user if user is not None and user.can_read else None


# -- dependencies -----------------------------------------------------------------------------


def page_user(request: Request, db: Session = Depends(get_db)) -> WebUser:
    """A logged-in user for an HTML page; anonymous visitors are sent to the login page."""
    user = session_user(request, db)
    if user is None or not user.can_read:  # a sender never has a session (login refuses)
        raise LoginRequiredError()
    request.state.user = user
    return user


def page_admin(user: WebUser = Depends(page_user)) -> WebUser:
    if not user.is_admin:
        raise AdminRequiredError()
    return user


def api_user(request: Request, db: Session = Depends(get_db)) -> WebUser:
    """A user for the API (bearer token or session); 401 otherwise, 403 for a sender."""
    return api_reader(request, identified_user(request, db))


def api_reader(request: Request, user: WebUser | None) -> WebUser:
    """``user`` if it may read the API; the 401 / 403 of :func:`api_user` otherwise."""
    if user is None:
        problem = token_problem(request)
        raise HTTPException(
            status_code=401,
            detail="authentication required (session or Authorization: Bearer token)"
            + (f": {problem}" if problem else ""),
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not user.can_read:
        raise HTTPException(
            status_code=403, detail=f"role {user.role} may only store studies (/dicomweb)"
        )
    request.state.user = user
    return user


def api_admin(user: WebUser = Depends(api_user)) -> WebUser:
    if not user.is_admin:
        raise HTTPException(status_code=403, detail="admin role required")
    return user
