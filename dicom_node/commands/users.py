"""``dicom-node users``: manage admin-page accounts and API tokens from the shell.

The first admin has to come from somewhere: the web page has no sign-up, so accounts are
made here by whoever runs the node. Passwords are read from the terminal (or one line of
standard input with ``--password-stdin``), never from the command line, where ``ps`` and the
shell history would show them.

Every change is written to the audit table (client address ``cli``, user ``cli:<login>``
with the operating-system login that ran the command), next to the web app's entries.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import OperatorError, Settings
from dicom_node.store import audit, users
from dicom_node.store.db import create_engine, session_factory


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``users`` sub-command (add/list/disable/passwd/unlock/token) to a CLI.

    Parameters
    ----------
    subparsers
        What ``ArgumentParser.add_subparsers()`` returned in the main CLI.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "users", help="manage admin-page users and API tokens"
    )
    sub = parser.add_subparsers(dest="users_command", required=True, metavar="ACTION")

    add = sub.add_parser("add", help="create a user")
    add.add_argument("username")
    add.add_argument("--role", choices=users.ROLES, default="viewer")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")

    sub.add_parser("list", help="list users")

    disable = sub.add_parser(
        "disable", help="disable a user, end their web sessions and revoke their tokens"
    )
    disable.add_argument("username")

    passwd = sub.add_parser("passwd", help="set a user's password (ends their web sessions)")
    passwd.add_argument("username")
    passwd.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )

    unlock = sub.add_parser(
        "unlock", help="clear a user's login throttle (every address) in the running node"
    )
    unlock.add_argument("username")

    token = sub.add_parser("token", help="create an API token (printed once)")
    token.add_argument("username")
    token.add_argument("--name", default="", help="a label for the token")
    token.add_argument("--revoke", action="store_true", help="revoke all the user's tokens")
    token.add_argument(
        "--expires-in",
        type=float,
        metavar="DAYS",
        help="the token ends by itself after DAYS days (may be a fraction); "
        "default: valid until revoked",
    )
    return parser


def _read_password(from_stdin: bool) -> str:
    """The new password: one line of stdin, or typed twice at the terminal.

    Without a terminal (a script, a pipe, a container without ``-t``) ``getpass`` would
    warn, echo the password, and read it from stdin; the command stops and names the
    option for scripts instead.
    """
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise OperatorError(
            "no terminal to ask for the password; pipe it in with --password-stdin "
            "(e.g. printf '%s\\n' \"$PASSWORD\" | dicom-node users ... --password-stdin)"
        )
    first = getpass.getpass("Password: ")
    if getpass.getpass("Repeat password: ") != first:
        raise users.UserError("the passwords do not match")
    return first


def _os_login() -> str:
    """Who ran the command, for the audit entry (``unknown`` when the system cannot say,
    e.g. a container user without a passwd entry)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def _audit(
    sessions: sessionmaker[Session], action: str, target: str, detail: dict[str, Any] | None = None
) -> None:
    with sessions() as session:
        audit.record(
            session,
            f"cli:{_os_login()}",
            action,
            target,
            client_address=audit.CLI_ADDRESS,
            detail=detail,
        )


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Carry out a ``users`` action; returns the process exit code.

    Errors a person can fix (unknown user, weak password) print one line to stderr and
    return 1 instead of a traceback.
    """
    action = args.users_command
    # Ask for the password before the database is opened (or created): a command that
    # cannot get one changes nothing.
    try:
        password = _read_password(args.password_stdin) if action in ("add", "passwd") else ""
    except users.UserError as exc:
        print(f"dicom-node users {action}: {exc}", file=sys.stderr)
        return 1
    engine = create_engine(settings.database_url)
    sessions = session_factory(engine)
    try:
        if action == "add":
            users.add_user(sessions, args.username, password, args.role)
            _audit(sessions, "user_add", args.username, {"role": args.role})
            print(f"user {args.username} added ({args.role})")
        elif action == "list":
            for user in users.list_users(sessions):
                state = "active" if user.active else "disabled"
                last = (
                    user.last_login_at.isoformat(timespec="seconds") if user.last_login_at else "-"
                )
                print(f"{user.username:<24} {user.role:<8} {state:<9} last login {last}")
        elif action == "disable":
            users.disable_user(sessions, args.username)
            _audit(sessions, "user_disable", args.username)
            print(f"user {args.username} disabled")
        elif action == "passwd":
            users.set_password(sessions, args.username, password)
            _audit(sessions, "user_passwd", args.username)
            print(f"password of {args.username} changed; their web sessions ended")
        elif action == "unlock":
            users.unlock_logins(sessions, args.username)
            _audit(sessions, "login_unlock", args.username)
            print(f"login throttle of {args.username} cleared")
        elif action == "token":
            if args.revoke:
                count = users.revoke_tokens(sessions, args.username)
                _audit(sessions, "token_revoke", args.username, {"count": count})
                print(f"{count} token(s) of {args.username} revoked")
            else:
                token = users.create_token(
                    sessions, args.username, args.name, expires_in_days=args.expires_in
                )
                expires = users.token_expiry(sessions, token)
                when = expires.isoformat(timespec="seconds") if expires else None
                _audit(
                    sessions,
                    "token_create",
                    args.username,
                    {"name": args.name[:64], "expires_at": when},
                )
                print(token)  # alone on stdout: TOKEN=$(dicom-node users token NAME)
                if when:
                    print(f"the token expires at {when} UTC", file=sys.stderr)
        else:  # pragma: no cover - argparse rejects other values
            print(f"unknown users action {action!r}", file=sys.stderr)
            return 2
    except users.UserError as exc:
        print(f"dicom-node users {action}: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    return 0
