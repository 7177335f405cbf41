"""``dicom-node serve``: run the node until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import threading
from collections.abc import Callable, Iterable
from typing import Any

from dicom_node import __version__
from dicom_node.config import Settings

log = logging.getLogger("dicom_node")

SERVE_DESCRIPTION = """\
Run the node until Ctrl-C or SIGTERM. It starts, in this order:

  1. a lock on the data folder ([node] data_dir): one node per folder
  2. the DICOM listener on [scp] host:port (default 127.0.0.1:11112) and the admin
     page's port [web] host:port (default 127.0.0.1:8080, when [web] enabled)
  3. the database ([storage] database_url, default SQLite in the data folder), migrated
  4. serving C-ECHO and C-STORE into the spool (AE titles and addresses as [scp] allows)
  5. series completion: a series is complete after [completion] quiet_seconds without
     new instances; then the routes ([[routes]]) decide which models see it
  6. delivery of the results to the [[destinations]] (C-STORE, with retries)
  7. [workers] processes model worker processes: model, Grad-CAM, SR, Secondary Capture
  8. the admin page and its JSON API, /healthz and /metrics

Every key is documented in config/node.toml; DICOM_NODE__SECTION__KEY environment
variables override it (e.g. DICOM_NODE__SCP__PORT=11113). A port in use or a data folder
used by another node stops it with one line and exit status 2, before anything changes.
NOT FOR DIAGNOSTIC USE."""


def register(subparsers: Any) -> dict[str, Callable[[argparse.Namespace, Settings], int]]:
    """Add ``serve``; returns ``{"serve": run}``."""
    subparsers.add_parser(
        "serve",
        help="run the node (SCP, workers, delivery, admin page)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=SERVE_DESCRIPTION,
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
    # What start-up allocated (modules, settings, the ORM, ~200k objects) lives as long as
    # the process: moved out of the collector's reach, a full collection no longer
    # re-scans it. Unfrozen, each one held the GIL 60 ms (800 ms on a loaded machine),
    # and every association waited it out: the C-ECHO p99 (scripts/bench_echo.py).
    gc.freeze()
    scp = settings.scp
    if "receive" in node.roles:
        doors = [] if scp.tls.only else [f"{scp.host}:{node.scp.bound_port}"]
        if scp.tls.enabled:
            doors.append(f"TLS {scp.tls_host}:{node.scp.bound_tls_port}")
        where = f"{settings.node.ae_title} on {', '.join(doors)}"
    else:
        where = f"{label} role"
    print(
        f"dicom-node {__version__}: {where}; data in {settings.data_dir}. "
        "NOT FOR DIAGNOSTIC USE. Ctrl-C stops.",
        flush=True,
    )
    stop.wait()
    node.stop()
    return 0
