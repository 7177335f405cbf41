"""``dicom-node`` command line.

Sub-commands live in small modules under ``dicom_node/commands`` where they grow beyond a
few lines; each offers ``register(subparsers)`` and a ``run(args, settings)`` function.
Configuration errors end the program with exit status 2 and a message that names the file
and the key; DICOM failures print the status code and its meaning.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dicom_node import __version__
from dicom_node.config import ConfigError, Settings, load_settings

log = logging.getLogger("dicom_node")

# Optional sub-command modules: each provides register(subparsers); a module that is not
# there (yet) is simply not offered.
COMMAND_MODULES = (
    "dicom_node.commands.users",
    "dicom_node.commands.models",
    "dicom_node.commands.predict",
    "dicom_node.commands.demo",
    "dicom_node.commands.train",
)

Handler = Callable[[argparse.Namespace, Settings], int]


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
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
    print(
        f"dicom-node {__version__}: {settings.node.ae_title} on "
        f"{settings.scp.host}:{node.scp.bound_port}; data in {settings.data_dir}. "
        "NOT FOR DIAGNOSTIC USE. Ctrl-C stops.",
        flush=True,
    )
    stop.wait()
    node.stop()
    return 0


def cmd_echo(args: argparse.Namespace, settings: Settings) -> int:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title=args.aet or settings.node.ae_title)
    ae.add_requested_context(Verification)
    assoc = ae.associate(args.host, args.port, ae_title=args.aec)
    if not assoc.is_established:
        print(f"echo {args.aec}@{args.host}:{args.port}: association failed", file=sys.stderr)
        return 1
    status = assoc.send_c_echo()
    assoc.release()
    code = int(getattr(status, "Status", -1)) if status else -1
    if code != 0:
        print(f"echo {args.aec}@{args.host}:{args.port}: status 0x{code & 0xFFFF:04X}")
        return 1
    print(f"echo {args.aec}@{args.host}:{args.port}: success")
    return 0


def _parse_target(text: str) -> tuple[str, str, int]:
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


def cmd_send(args: argparse.Namespace, settings: Settings) -> int:
    from dicom_node.sender import send_paths

    ae, host, port = args.to
    summary = send_paths(
        [Path(p) for p in args.paths],
        calling_ae=args.aet or settings.node.ae_title,
        called_ae=ae,
        host=host,
        port=port,
        progress=not args.quiet,
    )
    print(summary.describe())
    return 0 if summary.ok else 1


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from dicom_node.status import print_status

    return print_status(settings, failures=args.failures)


def cmd_route(args: argparse.Namespace, settings: Settings) -> int:
    from pydicom import dcmread

    from dicom_node.node import model_availability
    from dicom_node.routing import evaluate, tags_for

    available = model_availability(settings)
    status = 0
    for name in args.files:
        path = Path(name)
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except Exception as exc:
            print(f"{path}: not readable as DICOM: {exc}")
            status = 1
            continue
        decision = evaluate(
            settings.routes, tags_for(ds, args.calling_ae), model_available=available
        )
        print(f"{path}: {decision.summary}")
        for reason in decision.reasons:
            print(f"  - {reason}")
        for route in decision.routes:
            targets = ", ".join(route.destinations) or "no destination"
            models = ", ".join(route.models) or "no model"
            forward = " + forward" if route.forward else ""
            print(f"  => {route.name}: models {models}{forward} -> {targets}")
    return status


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    parser = argparse.ArgumentParser(
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

    sub.add_parser("serve", help="run the node (SCP, workers, delivery, admin page)")
    handlers["serve"] = cmd_serve

    p = sub.add_parser("echo", help="C-ECHO a remote AE")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--aec", default="ANY-SCP", help="called AE title")
    p.add_argument("--aet", default=None, help="calling AE title (default: ours)")
    handlers["echo"] = cmd_echo

    p = sub.add_parser("send", help="C-STORE files or folders (recursively) to an AE")
    p.add_argument("paths", nargs="+")
    p.add_argument("--to", required=True, type=_parse_target, metavar="AE@HOST:PORT")
    p.add_argument("--aet", default=None, help="calling AE title (default: ours)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    handlers["send"] = cmd_send

    p = sub.add_parser("status", help="counts per state and the last failures")
    p.add_argument("--failures", type=int, default=10, help="how many recent failures to show")
    handlers["status"] = cmd_status

    p = sub.add_parser("route", help="show which route a file would take, and why")
    p.add_argument("files", nargs="+")
    p.add_argument("--calling-ae", default="", help="calling AE title to assume")
    handlers["route"] = cmd_route

    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
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
    except (ConfigError, ManifestError) as exc:
        # A bad configuration or model manifest stops the command with the file and key.
        print(f"dicom-node: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
