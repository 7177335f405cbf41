"""``dicom-node users``: manage admin-page accounts and API tokens from the shell.

The first admin has to come from somewhere: the web page has no sign-up, so accounts are
made here by whoever runs the node. Passwords are read from the terminal (or one line of
standard input with ``--password-stdin``), never from the command line, where ``ps`` and the
shell history would show them.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from dicom_node.config import Settings
from dicom_node.store import users
from dicom_node.store.db import create_engine, session_factory


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``users`` sub-command (with add/list/disable/passwd/token) to a CLI.

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

    disable = sub.add_parser("disable", help="disable a user and revoke their tokens")
    disable.add_argument("username")

    passwd = sub.add_parser("passwd", help="set a user's password")
    passwd.add_argument("username")
    passwd.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )

    token = sub.add_parser("token", help="create an API token (printed once)")
    token.add_argument("username")
    token.add_argument("--name", default="", help="a label for the token")
    token.add_argument("--revoke", action="store_true", help="revoke all the user's tokens")
    return parser


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Repeat password: ") != first:
        raise users.UserError("the passwords do not match")
    return first


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Carry out a ``users`` action; returns the process exit code.

    Errors a person can fix (unknown user, weak password) print one line to stderr and
    return 1 instead of a traceback.
    """
    engine = create_engine(settings.database_url)
    sessions = session_factory(engine)
    try:
        action = args.users_command
        if action == "add":
            password = _read_password(args.password_stdin)
            users.add_user(sessions, args.username, password, args.role)
            print(f"user {args.username} added ({args.role})")
        elif action == "list":
            for user in users.list_users(sessions):
                state = "active" if user.active else "disabled"
                last = (
                    user.last_login_at.isoformat(timespec="seconds") if user.last_login_at else "-"
                )
                print(f"{user.username:<24} {user.role:<7} {state:<9} last login {last}")
        elif action == "disable":
            users.disable_user(sessions, args.username)
            print(f"user {args.username} disabled")
        elif action == "passwd":
            users.set_password(sessions, args.username, _read_password(args.password_stdin))
            print(f"password of {args.username} changed")
        elif action == "token":
            if args.revoke:
                count = users.revoke_tokens(sessions, args.username)
                print(f"{count} token(s) of {args.username} revoked")
            else:
                print(users.create_token(sessions, args.username, args.name))
        else:  # pragma: no cover - argparse rejects other values
            print(f"unknown users action {action!r}", file=sys.stderr)
            return 2
    except users.UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    return 0
