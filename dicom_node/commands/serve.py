"""``dicom-node serve``: run the node until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import threading
from collections.abc import Callable
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
    from dicom_node.logs import setup_logging
    from dicom_node.node import Node

    setup_logging("node")
    node = Node(settings)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    node.start()
    # What start-up allocated (modules, settings, the ORM, ~200k objects) lives as long as
    # the process: moved out of the collector's reach, a full collection no longer
    # re-scans it. Unfrozen, each one held the GIL 60 ms (800 ms on a loaded machine),
    # and every association waited it out: the C-ECHO p99 (scripts/bench_echo.py).
    gc.freeze()
    print(
        f"dicom-node {__version__}: {settings.node.ae_title} on "
        f"{settings.scp.host}:{node.scp.bound_port}; data in {settings.data_dir}. "
        "NOT FOR DIAGNOSTIC USE. Ctrl-C stops.",
        flush=True,
    )
    stop.wait()
    node.stop()
    return 0
