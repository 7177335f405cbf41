"""``/healthz``: can this node do its job right now? For load balancers and monitoring.

Healthy means: the database answers, the spool folder takes a file, and, when the node
passed its ``status`` callable, the SCP is listening, every model is loaded and a worker is
alive. Without a status callable (the page served alone) only the first two are checked.
The answer holds no patient data, so it needs no login.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import Settings
from dicom_node.web.context import StatusFn


def _database(sessions: sessionmaker[Session]) -> dict[str, Any]:
    try:
        with sessions() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error means "not reachable"
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": True}


def _spool(path: Path) -> dict[str, Any]:
    """Write and delete a small file: a full disk or a read-only mount fails here, before a
    C-STORE does."""
    try:
        fd, name = tempfile.mkstemp(prefix=".healthz-", dir=path)
        try:
            os.write(fd, b"ok")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name)
    except OSError as exc:
        return {"ok": False, "path": str(path), "error": exc.strerror or type(exc).__name__}
    return {"ok": True, "path": str(path)}


def _model_loaded(value: Any) -> bool:
    if isinstance(value, dict):
        return bool(value.get("loaded", value.get("ok", True)))
    return bool(value)


def check(
    settings: Settings, sessions: sessionmaker[Session], status: StatusFn | None
) -> tuple[bool, dict[str, Any]]:
    """Run the checks; returns (healthy, details)."""
    details: dict[str, Any] = {
        "database": _database(sessions),
        "spool": _spool(settings.spool_dir),
    }
    healthy = details["database"]["ok"] and details["spool"]["ok"]
    if status is None:
        details["node"] = {"ok": None, "note": "no node status available (web page alone)"}
        return healthy, details
    try:
        node = status()
    except Exception as exc:  # a broken status callable is itself unhealthy
        details["node"] = {"ok": False, "error": type(exc).__name__}
        return False, details
    scp = bool(node.get("scp_listening", False))
    models = node.get("models", {}) or {}
    models_ok = {str(k): _model_loaded(v) for k, v in models.items()}
    workers = int(node.get("workers_alive", 0) or 0)
    # The node reports how many workers it runs (at least one, in-process when
    # processes = 0); without that key, the configured process count decides.
    workers_needed = int(node.get("workers_configured", settings.workers.processes) or 0) > 0
    details["scp"] = {"ok": scp, "listening": scp, "port": settings.scp.port}
    details["models"] = {"ok": all(models_ok.values()), "loaded": models_ok}
    details["workers"] = {"ok": workers > 0 or not workers_needed, "alive": workers}
    healthy = healthy and all(details[k]["ok"] for k in ("scp", "models", "workers"))
    return healthy, details
