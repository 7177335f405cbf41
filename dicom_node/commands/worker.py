"""``dicom-node worker --models ID...``: a cluster worker holding some models, warm."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from dicom_node.commands.roles import add_health_port, with_health_port
from dicom_node.config import Settings


def register(subparsers: Any) -> dict[str, Callable[[argparse.Namespace, Settings], int]]:
    parser = subparsers.add_parser(
        "worker",
        help="cluster role: run the jobs of some models (a GPU host holds its models)",
        description="Consume the job queues of the given models from RabbitMQ (Celery), one "
        "job at a time, with the models loaded once. Refuses to start when a model has no "
        "weights on this host. Needs [cluster] mode = 'cluster'. NOT FOR DIAGNOSTIC USE.",
    )
    parser.add_argument("--models", nargs="+", required=True, metavar="ID", help="model ids")
    add_health_port(parser)
    return {"worker": run}


def run(args: argparse.Namespace, settings: Settings) -> int:
    from dicom_node.cluster.worker import run_worker
    from dicom_node.logs import setup_logging

    setup_logging("worker")
    return run_worker(with_health_port(settings, args.health_port), list(args.models))
