"""Logging set-up shared by the serving process and the workers.

Log lines name instances by UID only: patient names, IDs and dates never reach a log file.
"""

from __future__ import annotations

import logging
import os
import ssl
import sys


class _NoTlsTraceback(logging.Filter):
    """Drop pynetdicom's traceback of a TLS failure as a client (a refused handshake, or
    the peer's alert on the first read).

    pynetdicom logs a line ("TCP Initialisation Error: [SSL: ...]", "Connection closed
    before the entire PDU was received") and then the exception with its traceback; a
    refused certificate is the operator's to fix, and the delivery's error names the
    reason, so the traceback goes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not isinstance(record.msg, ssl.SSLError)


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
    for name in ("pynetdicom.transport", "pynetdicom.dul"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTlsTraceback) for f in logger.filters):
            logger.addFilter(_NoTlsTraceback())
    logging.getLogger("alembic").setLevel(logging.WARNING)
