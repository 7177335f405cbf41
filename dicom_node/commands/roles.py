"""``dicom-node receive``, ``dicom-node dispatch`` and ``dicom-node web``: one role of a
cluster each (``[cluster] mode = "cluster"``), on its own host and data folder.

``receive`` runs the SCP, completion and routing (several receivers may share one address:
completion and routing are claimed in the database); ``dispatch`` sends results to the
PACS; ``web`` serves the admin page. The models run in ``dicom-node worker --models``;
``serve`` still runs everything in one process tree.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from dicom_node.config import Settings, StartupError

_ROLES = {
    "receive": ("receive", "the DICOM listener (C-STORE into the spool), completion and routing"),
    "dispatch": ("dispatch", "delivery of results to the PACS, with retries"),
    "web": ("web", "the admin page"),
}


def add_health_port(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--health-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve this role's /healthz and /metrics on PORT (cluster.health_port)",
    )


def with_health_port(settings: Settings, port: int | None) -> Settings:
    """The settings with ``cluster.health_port`` from the command line, when given."""
    if port is None:
        return settings
    if not 0 <= port <= 65535:
        raise StartupError(f"--health-port {port}: not a port number")
    cluster = settings.cluster.model_copy(update={"health_port": port})
    return settings.model_copy(update={"cluster": cluster})


def _runner(role: str) -> Callable[[argparse.Namespace, Settings], int]:
    def run(args: argparse.Namespace, settings: Settings) -> int:
        from dicom_node.commands.serve import run_node

        if not settings.clustered:
            raise StartupError(
                f"{role}: runs one role of a cluster and needs cluster.mode = 'cluster'; "
                "'dicom-node serve' runs the embedded node"
            )
        return run_node(with_health_port(settings, args.health_port), {role}, role)

    return run


def register(subparsers: Any) -> dict[str, Callable[[argparse.Namespace, Settings], int]]:
    handlers = {}
    for command, (role, what) in _ROLES.items():
        parser = subparsers.add_parser(
            command,
            help=f"cluster role: {what}",
            description=f"Run one role of a cluster ([cluster] mode = 'cluster'): {what}. "
            "NOT FOR DIAGNOSTIC USE.",
        )
        add_health_port(parser)
        handlers[command] = _runner(role)
    return handlers
