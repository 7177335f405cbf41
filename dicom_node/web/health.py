"""``/healthz``: can this node do its job right now? For load balancers and monitoring.

Three answers. ``unhealthy`` (HTTP 503): the database does not answer, the spool folder
does not take a file, or, when the node passed its ``status`` callable, the SCP is not
listening, no worker is alive, a model failed or the callable itself broke: studies sent
now would be lost or never processed. ``degraded`` (HTTP 200): everything runs, but some
routes wait for the weights of their models (the embedded configuration routes seed models
that a site has to train or import first); a load balancer must keep sending studies, the
other routes work. ``ok`` (HTTP 200): nothing waits. Without a status callable (the page
served alone) only the database and the spool are checked.

Who asks is anonymous, so the checks run at most once per ``[web] health_cache_seconds``
(:class:`~dicom_node.web.cache.TtlValue` in the app's context): a flood of calls costs no
spool write, fsync or database query beyond that. Anonymous callers get the state and one
boolean per check under a neutral name; the paths, ports, error texts and model names are in
``details``, for a logged-in user or a bearer token only (``dicom_node.web.system``).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import Settings

if TYPE_CHECKING:  # context imports this module
    from dicom_node.web.context import StatusFn


class HealthState(StrEnum):
    """The overall answer, in the order of severity."""

    OK = "ok"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"

    @property
    def http_status(self) -> int:
        """503 only when the node cannot take or process studies: a load balancer takes a
        node out of service on 503, which a route waiting for weights must not cause."""
        return 503 if self is HealthState.UNHEALTHY else 200


@dataclass(frozen=True)
class HealthReport:
    """One run of the checks.

    Attributes
    ----------
    state
        The overall answer.
    checks
        Check name -> passed; names say what, never where (no path, port or model name).
    details
        What each check saw (paths, ports, errors, model ids): for authenticated callers.
    """

    state: HealthState
    checks: dict[str, bool]
    details: dict[str, Any]

    def public(self) -> dict[str, Any]:
        """The body for anyone: the state and the booleans."""
        return {"status": self.state.value, "checks": dict(self.checks)}

    def full(self) -> dict[str, Any]:
        """The body for a logged-in user or token: the booleans and the details."""
        return {**self.public(), "details": self.details}


def _database(sessions: sessionmaker[Session]) -> dict[str, Any]:
    try:
        with sessions() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error means "not reachable"
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": True}


def probe_spool(path: Path) -> str | None:
    """Write, fsync and delete a small file; returns why it failed, or None.

    A full disk or a read-only mount fails here, before a C-STORE does. The fsync is what
    makes this costly (milliseconds on a busy disk), hence the cache in front of it.
    """
    try:
        fd, name = tempfile.mkstemp(prefix=".healthz-", dir=path)
        try:
            os.write(fd, b"ok")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


# What a model entry of the node's status says about the model.
_READY, _WAITING, _FAILED = "ready", "waiting", "failed"


def _model_readiness(value: Any) -> str:
    """``ready``, ``waiting`` (for weights: the node says ``waiting_for_weights``) or
    ``failed`` (anything else that is not loaded)."""
    if isinstance(value, dict):
        if value.get("loaded", value.get("ok", True)):
            return _READY
        return _WAITING if value.get("waiting_for_weights") else _FAILED
    return _READY if value else _FAILED


def _node_checks(
    settings: Settings, node: dict[str, Any], details: dict[str, Any], checks: dict[str, bool]
) -> tuple[bool, bool]:
    """Fill in the SCP, worker and model checks.

    Returns
    -------
    tuple of bool
        Whether some model waits for weights, and whether some model failed otherwise.
    """
    scp = bool(node.get("scp_listening", False))
    readiness = {str(k): _model_readiness(v) for k, v in (node.get("models", {}) or {}).items()}
    workers = int(node.get("workers_alive", 0) or 0)
    # The node reports how many workers it runs (at least one, in-process when
    # processes = 0); without that key, the configured process count decides.
    workers_needed = int(node.get("workers_configured", settings.workers.processes) or 0) > 0
    waiting = sorted(m for m, r in readiness.items() if r == _WAITING)
    failed = sorted(m for m, r in readiness.items() if r == _FAILED)
    details["scp"] = {"ok": scp, "listening": scp, "port": settings.scp.port}
    details["models"] = {
        "ok": not failed,
        "loaded": {m: r == _READY for m, r in readiness.items()},
        "waiting_for_weights": waiting,
        "failed": failed,
    }
    details["workers"] = {"ok": workers > 0 or not workers_needed, "alive": workers}
    checks["receiver"] = scp
    checks["workers"] = details["workers"]["ok"]
    checks["models"] = not failed and not waiting
    return bool(waiting), bool(failed)


def check(
    settings: Settings, sessions: sessionmaker[Session], status: StatusFn | None
) -> HealthReport:
    """Run the checks once (callers cache the report)."""
    spool_error = probe_spool(settings.spool_dir)
    spool: dict[str, Any] = {"ok": spool_error is None, "path": str(settings.spool_dir)}
    if spool_error is not None:
        spool["error"] = spool_error
    details: dict[str, Any] = {"database": _database(sessions), "spool": spool}
    checks = {"database": bool(details["database"]["ok"]), "storage": bool(spool["ok"])}
    waiting = failed = False
    if status is None:
        details["node"] = {"ok": None, "note": "no node status available (web page alone)"}
    else:
        try:
            node = status()
        except Exception as exc:  # a broken status callable is itself unhealthy
            details["node"] = {"ok": False, "error": type(exc).__name__}
            checks["node"] = False
        else:
            waiting, failed = _node_checks(settings, node, details, checks)
    # "models" is false for waiting models too; only a failed one is a hard failure
    hard = [ok for name, ok in checks.items() if name != "models"]
    if failed or not all(hard):
        state = HealthState.UNHEALTHY
    elif waiting:
        state = HealthState.DEGRADED
    else:
        state = HealthState.OK
    return HealthReport(state, checks, details)
