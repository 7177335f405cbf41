"""``dicom-node demo``: run the node on real demo studies and show what came back.

The logic is in :mod:`dicom_node.demo.run`; this module only turns command-line flags into
:class:`~dicom_node.demo.run.DemoOptions`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dicom_node.config import Settings


def _non_negative(text: str) -> float:
    """argparse type: a number of seconds that is zero or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def register(subparsers: Any) -> dict[str, Callable[[argparse.Namespace, Settings], int]]:
    """Add the ``demo`` sub-command to the CLI.

    Parameters
    ----------
    subparsers
        What ``ArgumentParser.add_subparsers()`` returned in the main CLI.

    Returns
    -------
    dict
        ``{"demo": run}``: the handler for the CLI to call.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="run the node on real demo studies, print the results, keep running",
        description="Start the node (data in ./demo-data) and a local PACS (Orthanc when "
        "installed, else a built-in receiver), push real demo studies with synthetic "
        "patients, wait for the results to arrive in the PACS and print a table; then keep "
        "running until Ctrl-C. Offline. NOT FOR DIAGNOSTIC USE.",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("demo-data"),
        help="where the demo keeps its database, spool, results and PACS (default: ./demo-data)",
    )
    parser.add_argument(
        "--quiet-seconds",
        type=_non_negative,
        default=3.0,
        help="series quiet period before processing (default: 3)",
    )
    parser.add_argument(
        "--timeout",
        type=_non_negative,
        default=900.0,
        help="seconds to wait for all results before printing the table anyway (default: 900)",
    )
    parser.add_argument(
        "--exit",
        "--no-wait",
        dest="keep_running",
        action="store_false",
        help="stop after printing the table (for tests and CI)",
    )
    parser.add_argument(
        "--pacs",
        choices=("auto", "orthanc", "builtin"),
        default="auto",
        help="the PACS that receives results (default: Orthanc when installed)",
    )
    parser.add_argument(
        "--chest-images",
        type=int,
        default=16,
        metavar="N",
        help="how many of the 16 bundled chest X-rays to use (default: all)",
    )
    parser.add_argument("--no-web", dest="web", action="store_false", help="no admin page")
    return {"demo": run}


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the demo with the CLI's settings as the base; returns the exit status."""
    from dicom_node.demo.run import DemoOptions, run_demo

    options = DemoOptions(
        data_dir=args.data_dir,
        quiet_seconds=args.quiet_seconds,
        timeout=args.timeout,
        keep_running=args.keep_running,
        pacs=args.pacs,
        chest_images=args.chest_images,
        web=args.web,
    )
    return run_demo(settings, options, out=lambda line: print(line, flush=True))
