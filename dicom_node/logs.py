"""Logging set-up shared by the serving process and the workers.

Log lines name instances by UID only: patient names, IDs and dates never reach a log file.
"""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(process: str = "node", level: str | None = None) -> None:
    lvl = (level or os.environ.get("DICOM_NODE_LOG_LEVEL", "INFO")).upper()
    logging.basicConfig(
        level=lvl,
        format=f"%(asctime)s %(levelname)-7s [{process}] %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    # pynetdicom logs every PDU at DEBUG and dataset summaries at INFO; keep it to warnings.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
