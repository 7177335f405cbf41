"""``dicom-node`` command line.

Sub-commands live in small modules under ``dicom_node/commands`` where they grow beyond a
few lines; each offers ``register(subparsers)`` and a ``run(args, settings)`` function.
Configuration errors end the program with exit status 2 and a message that names the file
and the key, start-up errors (``StartupError``: data folder in use, port taken) with one line
naming the folder or the setting; DICOM failures print the status code and its meaning.

An operator's mistake is never a traceback: a command raises ``OperatorError`` (a file that
is not DICOM, a missing folder, a peer that refuses us) and ``main`` prints it as one line on
stderr; a wrong argument is one line too (argparse's usage block is left to ``--help``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from dicom_node import __version__
from dicom_node.config import ConfigError, OperatorError, Settings, StartupError, load_settings

log = logging.getLogger("dicom_node")

# One module per sub-command; each provides register(subparsers).
COMMAND_MODULES = (
    "dicom_node.commands.serve",
    "dicom_node.commands.roles",
    "dicom_node.commands.worker",
    "dicom_node.commands.echo",
    "dicom_node.commands.send",
    "dicom_node.commands.status",
    "dicom_node.commands.route",
    "dicom_node.commands.users",
    "dicom_node.commands.models",
    "dicom_node.commands.predict",
    "dicom_node.commands.demo",
    "dicom_node.commands.train",
)

Handler = Callable[[argparse.Namespace, Settings], int]


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line that points to ``--help``.

    argparse prints the whole usage block before the error, which for ``send`` or ``train``
    is several lines the operator must read past; the sub-command parsers inherit the class.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    parser = _Parser(
        prog="dicom-node",
        description="DICOM node running CNN classifiers on received series. "
        "Not for diagnostic use.",
    )
    parser.add_argument("--version", action="version", version=f"dicom-node {__version__}")
    parser.add_argument(
        "--config",
        "-c",
        default=None,
        help="configuration file (default: the embedded config/node.toml); "
        "DICOM_NODE__SECTION__KEY environment variables override it",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    handlers: dict[str, Handler] = {}

    for module_name in COMMAND_MODULES:
        module = importlib.import_module(module_name)
        registered = module.register(sub)
        if isinstance(registered, dict):
            handlers.update(registered)
        else:  # a module with one sub-command named after it and a run() function
            handlers[module_name.rsplit(".", 1)[1]] = module.run
    return parser, handlers


def main(argv: Sequence[str] | None = None) -> int:
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    from inference.manifest import ManifestError

    try:
        settings = _settings(args)
        return handlers[args.command](args, settings)
    except (ConfigError, ManifestError, StartupError) as exc:
        # A bad configuration or model manifest stops the command with the file and key; a
        # node that cannot start here (data folder in use, port taken) with the folder or
        # the setting. The operator fixes these, so one line and no traceback.
        print(f"dicom-node: {exc}", file=sys.stderr)
        return 2
    except OperatorError as exc:
        # What the operator asked cannot be done, and why is theirs to fix: one line.
        action = getattr(args, f"{args.command}_command", None)  # users add, models check
        command = f"{args.command} {action}" if action else args.command
        print(f"dicom-node {command}: {exc}", file=sys.stderr)
        return exc.exit_status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
