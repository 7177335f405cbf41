"""``dicom-node send``: C-STORE files or folders to an AE, with a summary of statuses."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dicom_node.commands import tls_options
from dicom_node.config import Settings


def parse_target(text: str) -> tuple[str, str, int]:
    """``AE@HOST:PORT`` -> (ae, host, port), with a message that says what is wrong."""
    if "@" not in text or ":" not in text.rsplit("@", 1)[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: expected AE@HOST:PORT, e.g. PACS@10.0.0.5:104")
    ae, hostport = text.rsplit("@", 1)
    host, port_text = hostport.rsplit(":", 1)
    if not ae or len(ae) > 16:
        raise argparse.ArgumentTypeError(f"{text!r}: AE title must be 1 to 16 characters")
    try:
        port = int(port_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: port {port_text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: port {port} is out of range 1-65535")
    return ae, host, port


def register(subparsers: Any) -> dict[str, Callable[[argparse.Namespace, Settings], int]]:
    """Add ``send``; returns ``{"send": run}``."""
    p = subparsers.add_parser("send", help="C-STORE files or folders (recursively) to an AE")
    p.add_argument("paths", nargs="+")
    p.add_argument("--to", required=True, type=parse_target, metavar="AE@HOST:PORT")
    p.add_argument("--aet", default=None, help="calling AE title (default: ours)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    tls_options.add_arguments(p)
    return {"send": run}


def run(args: argparse.Namespace, settings: Settings) -> int:
    from dicom_node.dispatch.sender import send_paths

    ae, host, port = args.to
    tls = tls_options.tls_args(args, host)
    summary = send_paths(
        [Path(p) for p in args.paths],
        calling_ae=args.aet or settings.node.ae_title,
        called_ae=ae,
        host=host,
        port=port,
        progress=not args.quiet,
        tls_args=tls,
    )
    print(summary.describe())
    return 0 if summary.ok else 1
