"""``dicom-node serve``: run the node until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Callable, Iterable
from typing import Any

from dicom_node import __version__
from dicom_node.config import Settings

log = logging.getLogger("dicom_node")


def register(subparsers: Any) -> dict[str, Callable[[argparse.Namespace, Settings], int]]:
    """Add ``serve``; returns ``{"serve": run}``."""
    subparsers.add_parser(
        "serve",
        help="run the node (SCP, workers, delivery, admin page)",
        description="Run the node: the DICOM listener (C-ECHO, C-STORE into the spool), "
        "series completion and routing, the model worker processes, delivery of results "
        "to the PACS, and the admin page when [web] is enabled. NOT FOR DIAGNOSTIC USE.",
    )
    return {"serve": run}


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Serve until SIGINT or SIGTERM.

    A node that cannot start here (data folder in use by another node, a port taken) raises
    ``StartupError`` from ``Node.start`` having changed nothing and left nothing running;
    ``cli.main`` prints it as one line and exits with status 2.
    """
    return run_node(settings)


def run_node(settings: Settings, roles: Iterable[str] | None = None, label: str = "node") -> int:
    """Run a node with ``roles`` (default: all of them) until SIGINT or SIGTERM."""
    from dicom_node.logs import setup_logging
    from dicom_node.node import ROLES, Node

    setup_logging(label)
    node = Node(settings, roles=ROLES if roles is None else roles)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    node.start()
    where = (
        f"{settings.node.ae_title} on {settings.scp.host}:{node.scp.bound_port}"
        if "receive" in node.roles
        else f"{label} role"
    )
    print(
        f"dicom-node {__version__}: {where}; data in {settings.data_dir}. "
        "NOT FOR DIAGNOSTIC USE. Ctrl-C stops.",
        flush=True,
    )
    stop.wait()
    node.stop()
    return 0
