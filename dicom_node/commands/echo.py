"""``dicom-node echo``: C-ECHO a remote AE, and say why when it does not answer."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from dicom_node.commands import tls_options
from dicom_node.commands.send import ae_title, positive_seconds
from dicom_node.config import OperatorError, Settings


def tcp_port(text: str) -> int:
    """argparse type: a TCP port, 1 to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port {text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range 1-65535")
    return port


def register(subparsers: Any) -> dict[str, Callable[[argparse.Namespace, Settings], int]]:
    """Add ``echo``; returns ``{"echo": run}``."""
    p = subparsers.add_parser(
        "echo",
        help="C-ECHO a remote AE",
        description="Open an association with AEC@HOST:PORT and send a C-ECHO (DICOM ping). "
        "When there is no association, one line says why: connection refused, no answer, "
        "the called or the calling AE title rejected, or no Verification context accepted.",
    )
    p.add_argument("host")
    p.add_argument("port", type=tcp_port)
    p.add_argument(
        "--aec", type=ae_title, default="ANY-SCP", help="called AE title (default: ANY-SCP)"
    )
    p.add_argument("--aet", type=ae_title, default=None, help="calling AE title (default: ours)")
    p.add_argument(
        "--timeout",
        type=positive_seconds,
        default=10.0,
        help="seconds to wait for the connection, the association and the answer (default: 10)",
    )
    tls_options.add_arguments(p)
    return {"echo": run}


def run(args: argparse.Namespace, settings: Settings) -> int:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    from dicom_node.dispatch.association import NoAssociationError, Peer, request
    from dicom_node.receive.statuses import status_meaning

    peer = Peer(args.aec, args.host, args.port)
    tls = tls_options.tls_args(args, args.host)
    ae = AE(ae_title=args.aet or settings.node.ae_title)
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = args.timeout
    ae.add_requested_context(Verification)
    try:
        assoc = request(ae, peer, tls_args=tls)
    except NoAssociationError as exc:
        raise OperatorError(str(exc), exit_status=1) from None
    try:
        status = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    if "Status" not in status:
        raise OperatorError(f"{peer} did not answer the C-ECHO within {args.timeout:g} s", 1)
    code = int(status.Status)
    if code != 0:
        raise OperatorError(f"{peer} answered 0x{code:04X}: {status_meaning(code)}", 1)
    print(f"echo {peer}: success")
    return 0
