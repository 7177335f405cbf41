"""Admin-page users: accounts with argon2 password hashes, roles and API tokens.

The admin page shows patient data, so who may see it is kept in the node's own database
(no external identity provider is assumed on a hospital-side box). Passwords are hashed with
argon2id (``argon2-cffi``), the memory-hard winner of the Password Hashing Competition, so a
stolen database does not give the passwords away cheaply.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.store.db import ApiToken, User, utcnow

ROLES = ("admin", "viewer", "uploader", "sender")
# Who may read the pages and the JSON API (patient data), and who may store studies over
# DICOMweb (STOW-RS). A ``sender`` is a machine account (a modality, a PACS, a script):
# it stores with an API token and can neither log in nor read anything.
READ_ROLES = frozenset({"admin", "viewer", "uploader"})
STORE_ROLES = frozenset({"admin", "sender"})
# Who may upload files or a picture for a prediction (the upload page, ``POST
# /api/predict``): a person (or a script with their token) who reads the result too. An
# ``uploader`` is a viewer who may also upload; a viewer only looks, a sender only stores.
UPLOAD_ROLES = frozenset({"admin", "uploader"})
# The longest expiry ``create_token`` accepts: ten years is "no expiry", say so instead.
MAX_TOKEN_DAYS = 3650
MIN_PASSWORD_LENGTH = 8
_USERNAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_HASHER = PasswordHasher()
# Verified against when the username does not exist, so a failed login takes as long for an
# unknown user as for a wrong password (no username probing by timing).
_DUMMY_HASH = _HASHER.hash(secrets.token_hex(16))
TOKEN_PREFIX = "dn_"


class UserError(ValueError):
    """A user operation that cannot be done (unknown user, bad role, weak password...)."""


def _check_username(username: str) -> str:
    if not _USERNAME_RE.match(username):
        raise UserError(f"invalid username {username!r}: 1 to 64 letters, digits or _ . @ -")
    return username


def _check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"password must have at least {MIN_PASSWORD_LENGTH} characters")
    return password


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise UserError(f"invalid role {role!r}: one of {', '.join(ROLES)}")
    return role


def _get(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise UserError(f"no user {username!r}")
    return user


def hash_password(password: str) -> str:
    """Argon2id hash (with its parameters and salt) of a password."""
    return _HASHER.hash(password)


def add_user(
    sessions: sessionmaker[Session], username: str, password: str, role: str = "viewer"
) -> User:
    """Create an active user.

    Raises
    ------
    UserError
        Invalid username, role or too short password, or the username exists.
    """
    _check_username(username)
    _check_password(password)
    _check_role(role)
    with sessions() as session:
        if session.scalar(select(User.id).where(User.username == username)) is not None:
            raise UserError(f"user {username!r} exists")
        user = User(username=username, password_hash=hash_password(password), role=role)
        session.add(user)
        session.commit()
        return user


def list_users(sessions: sessionmaker[Session]) -> list[User]:
    """All users, active or not, by name."""
    with sessions() as session:
        return list(session.scalars(select(User).order_by(User.username)))


def disable_user(sessions: sessionmaker[Session], username: str) -> None:
    """Deactivate a user, end their web sessions and revoke their API tokens.

    Users are never deleted: audit entries name them, and a name must not be reused by
    someone else while those entries exist. Open sessions end at their next request: every
    request reloads the user (``dicom_node.web.auth``) and finds it inactive, with a new
    session epoch.
    """
    with sessions() as session:
        user = _get(session, username)
        user.active = False
        _bump_epoch(session, user.id)
        session.execute(update(ApiToken).where(ApiToken.user_id == user.id).values(revoked=True))
        session.commit()


def set_password(sessions: sessionmaker[Session], username: str, password: str) -> None:
    """Replace a password and end the user's web sessions.

    A password is changed because it may be known to someone else, who may also hold a
    session opened with it; the new session epoch refuses that session's cookie.
    """
    _check_password(password)
    with sessions() as session:
        user = _get(session, username)
        user.password_hash = hash_password(password)
        _bump_epoch(session, user.id)
        session.commit()


def _bump_epoch(session: Session, user_id: int) -> None:
    # One UPDATE with the increment in SQL: two ends at the same moment (logout in one
    # browser, disable in a shell) both count, and neither reads a stale value.
    session.execute(
        update(User).where(User.id == user_id).values(session_epoch=User.session_epoch + 1)
    )


def end_sessions(session: Session, user_id: int) -> None:
    """End every web session of a user (logout): cookies issued before are refused.

    The server keeps one number per user, not one row per session, so logging out in one
    browser also logs the user out in the others. Commits.
    """
    _bump_epoch(session, user_id)
    session.commit()


def unlock_logins(sessions: sessionmaker[Session], username: str) -> None:
    """Clear the user's login throttle from any process (``dicom-node users unlock``).

    The throttle lives in the memory of the serving process; this records the time of the
    unlock on the user row, and that process forgets the failures older than it at the
    next refused attempt (``dicom_node.web.login``).
    """
    with sessions() as session:
        user = _get(session, username)
        user.login_unlocked_at = utcnow()
        session.commit()


def login_unlocked_at(session: Session, username: str) -> dt.datetime | None:
    """When the user's login throttle was last cleared (None: never, or no such user).

    Compared case-insensitively, like the throttle's keys: an unlock of ``alice`` also
    frees attempts typed as ``Alice``.
    """
    times = session.scalars(
        select(User.login_unlocked_at).where(func.lower(User.username) == username.lower())
    )
    known = [t for t in times if t is not None]
    return max(known) if known else None


def authenticate(sessions: sessionmaker[Session], username: str, password: str) -> User | None:
    """The active user with this password, or None.

    Unknown and disabled users cost one argon2 verification too, so the answer time does
    not tell which usernames exist. Hashes made with older parameters are upgraded.
    """
    with sessions() as session:
        user = session.scalar(select(User).where(User.username == username))
        stored = user.password_hash if user is not None else _DUMMY_HASH
        try:
            _HASHER.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        if user is None or not user.active:
            return None
        if _HASHER.check_needs_rehash(stored):
            user.password_hash = hash_password(password)
        user.last_login_at = utcnow()
        session.commit()
        return user


def session_stamp(user: User) -> str:
    """A short fingerprint of the password hash, kept in the web session.

    When the password hash changes, the stamp changes and sessions opened with the old
    password are refused. ``set_password`` also increments the session epoch; the stamp
    covers a hash changed any other way (an operator's SQL, a rehash at login).
    """
    return hashlib.sha256(user.password_hash.encode()).hexdigest()[:16]


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(
    sessions: sessionmaker[Session],
    username: str,
    name: str = "",
    *,
    expires_in_days: float | None = None,
) -> str:
    """Make an API token for an active user and return it; only its hash is stored.

    The token is shown once: a lost token is revoked and replaced, never recovered.
    ``expires_in_days`` makes it end by itself that many days from now (a script's token
    that nobody remembers to revoke); None: valid until revoked.

    Raises
    ------
    UserError
        Unknown or disabled user, or an expiry that is not between a minute and
        ``MAX_TOKEN_DAYS`` days.
    """
    expires_at = None
    if expires_in_days is not None:
        if not 1 / (24 * 60) <= expires_in_days <= MAX_TOKEN_DAYS:
            raise UserError(
                f"--expires-in must be between 0.001 and {MAX_TOKEN_DAYS} days "
                f"(got {expires_in_days:g}); leave it out for a token valid until revoked"
            )
        expires_at = utcnow() + dt.timedelta(days=expires_in_days)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with sessions() as session:
        user = _get(session, username)
        if not user.active:
            raise UserError(f"user {username!r} is disabled")
        session.add(
            ApiToken(
                user_id=user.id,
                token_hash=_token_hash(token),
                name=name[:64],
                expires_at=expires_at,
            )
        )
        session.commit()
    return token


def token_expiry(sessions: sessionmaker[Session], token: str) -> dt.datetime | None:
    """When a token ends (UTC), None when it does not (or is unknown)."""
    with sessions() as session:
        return session.scalar(
            select(ApiToken.expires_at).where(ApiToken.token_hash == _token_hash(token))
        )


def revoke_tokens(sessions: sessionmaker[Session], username: str) -> int:
    """Revoke every API token of a user; returns how many were active."""
    with sessions() as session:
        user = _get(session, username)
        result: Any = session.execute(
            update(ApiToken)
            .where(ApiToken.user_id == user.id, ApiToken.revoked.is_(False))
            .values(revoked=True)
        )
        session.commit()
        return int(result.rowcount or 0)


@dataclass(frozen=True)
class TokenCheck:
    """The answer to a bearer token: its user, or why there is none.

    ``reason`` is for the 401 answer (the caller's own token, so saying "expired" tells
    them nothing they could not know and saves a support call); it never names the user.
    """

    user: User | None
    reason: str = ""


def check_token(session: Session, token: str) -> TokenCheck:
    """The active user owning a valid token; records the token's last use.

    A token is refused when it is unknown, revoked, past its ``expires_at``, or its user
    is disabled.
    """
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return TokenCheck(None, "not an API token of this node")
    row = session.scalar(
        select(ApiToken).where(
            ApiToken.token_hash == _token_hash(token), ApiToken.revoked.is_(False)
        )
    )
    if row is None:
        return TokenCheck(None, "unknown or revoked API token")
    now = utcnow()
    if row.expires_at is not None and row.expires_at <= now:
        when = row.expires_at.isoformat(sep=" ", timespec="minutes")
        return TokenCheck(
            None,
            f"API token expired at {when} UTC; ask an administrator for a new one "
            "(dicom-node users token NAME --expires-in DAYS)",
        )
    if not row.user.active:
        return TokenCheck(None, "the API token's user is disabled")
    row.last_used_at = now
    session.commit()
    return TokenCheck(row.user)


def user_for_token(session: Session, token: str) -> User | None:
    """The active user owning a valid token, or None (see :func:`check_token`)."""
    return check_token(session, token).user
