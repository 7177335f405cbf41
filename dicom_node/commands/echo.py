"""``dicom-node echo``: C-ECHO a remote AE."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from dicom_node.commands import tls_options
from dicom_node.config import Settings


def register(subparsers: Any) -> dict[str, Callable[[argparse.Namespace, Settings], int]]:
    """Add ``echo``; returns ``{"echo": run}``."""
    p = subparsers.add_parser("echo", help="C-ECHO a remote AE")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--aec", default="ANY-SCP", help="called AE title")
    p.add_argument("--aet", default=None, help="calling AE title (default: ours)")
    tls_options.add_arguments(p)
    return {"echo": run}


def run(args: argparse.Namespace, settings: Settings) -> int:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    tls = tls_options.tls_args(args, args.host)
    ae = AE(ae_title=args.aet or settings.node.ae_title)
    ae.connection_timeout = 30
    ae.add_requested_context(Verification)
    assoc = ae.associate(args.host, args.port, ae_title=args.aec, tls_args=tls)
    if not assoc.is_established:
        print(
            f"echo {args.aec}@{args.host}:{args.port}: association failed"
            + tls_options.failure(tls),
            file=sys.stderr,
        )
        return 1
    status = assoc.send_c_echo()
    assoc.release()
    code = int(getattr(status, "Status", -1)) if status else -1
    if code != 0:
        print(f"echo {args.aec}@{args.host}:{args.port}: status 0x{code & 0xFFFF:04X}")
        return 1
    print(f"echo {args.aec}@{args.host}:{args.port}: success")
    return 0
