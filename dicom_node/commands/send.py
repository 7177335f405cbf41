"""``dicom-node send``: C-STORE files or folders to an AE, with a summary of statuses."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dicom_node.commands import tls_options
from dicom_node.config import Settings, check_ae_title


def ae_title(text: str) -> str:
    """argparse type: an AE title (1 to 16 characters, no backslash or control character)."""
    try:
        return check_ae_title(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_target(text: str) -> tuple[str, str, int]:
    """``AE@HOST:PORT`` -> (ae, host, port), with a message that says what is wrong."""
    if "@" not in text or ":" not in text.rsplit("@", 1)[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: expected AE@HOST:PORT, e.g. PACS@10.0.0.5:104")
    ae, hostport = text.rsplit("@", 1)
    host, port_text = hostport.rsplit(":", 1)
    try:
        ae = check_ae_title(ae)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    try:
        port = int(port_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: port {port_text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: port {port} is out of range 1-65535")
    return ae, host, port


def positive_seconds(text: str) -> float:
    """argparse type: a number of seconds greater than zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 seconds")
    return value


def register(subparsers: Any) -> dict[str, Callable[[argparse.Namespace, Settings], int]]:
    """Add ``send``; returns ``{"send": run}``."""
    p = subparsers.add_parser(
        "send",
        help="C-STORE files or folders (recursively) to an AE",
        description="C-STORE DICOM files, and the DICOM files below folders, to AE@HOST:PORT "
        "as stored (no re-encoding). Prints the counts per status; each refused file, each "
        "named file that is not DICOM, and why an association was not made go to stderr, "
        "one line each. Exit status 0 only when every file was stored.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--to", required=True, type=parse_target, metavar="AE@HOST:PORT")
    p.add_argument("--aet", type=ae_title, default=None, help="calling AE title (default: ours)")
    p.add_argument(
        "--timeout",
        type=positive_seconds,
        default=10.0,
        help="seconds to wait for the connection and the association (default: 10)",
    )
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
        # A bar only for a person watching: in a log or a pipe it is noise.
        progress=not args.quiet and sys.stderr.isatty(),
        timeout=args.timeout,
        tls_args=tls,
    )
    print(summary.describe())
    for problem in summary.problems:
        print(f"dicom-node send: {problem}", file=sys.stderr)
    return 0 if summary.ok else 1
