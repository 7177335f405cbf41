"""``dicom-node route``: which route a file would take, and why (nothing is stored)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dicom_node.config import Settings


def register(subparsers: Any) -> dict[str, Callable[[argparse.Namespace, Settings], int]]:
    """Add ``route``; returns ``{"route": run}``."""
    p = subparsers.add_parser("route", help="show which route a file would take, and why")
    p.add_argument("files", nargs="+")
    p.add_argument("--calling-ae", default="", help="calling AE title to assume")
    return {"route": run}


def run(args: argparse.Namespace, settings: Settings) -> int:
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    from dicom_node.dispatch.sender import unreadable
    from dicom_node.route.rules import evaluate, tags_for
    from dicom_node.route.waits import model_availability

    available = model_availability(settings)
    status = 0
    for name in args.files:
        path = Path(name)
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, AttributeError) as exc:
            # One line per file on stderr; the other files are still routed.
            print(f"dicom-node route: {unreadable(path, exc)}", file=sys.stderr)
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
