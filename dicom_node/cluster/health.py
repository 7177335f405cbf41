"""Each role's own ``/healthz`` and ``/metrics`` (``cluster.health_port`` or --health-port).

A load balancer in front of two receivers asks each of them, and a GPU host's monitoring
asks its worker, without the admin page (which needs a login and runs in the web role).
``/healthz`` answers 200 ``ok`` or 503 ``unhealthy`` with one boolean per check (database,
broker, heartbeat, and the role's own: SCP listening, models loaded). ``/metrics`` is
Prometheus text: per queue the broker's depth and consumers, the database's queued and
running jobs and the age of the oldest queued one, and the live workers that consume it;
per role the live members. Nothing here names a patient or a study.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.cluster import members
from dicom_node.cluster.broker import make_app, queue_depths
from dicom_node.cluster.queues import all_queues, job_queue
from dicom_node.config import Settings, StartupError, env_var
from dicom_node.store.db import Job, utcnow
from dicom_node.store.states import JobState

log = logging.getLogger(__name__)

StatusFn = Callable[[], dict[str, Any]]


def queue_report(
    settings: Settings, sessions: sessionmaker[Session], app: Any
) -> dict[str, dict[str, Any]]:
    """Per queue: broker depth and consumers (None when the broker is away), jobs queued and
    running in the database, the oldest queued job's age in seconds, live workers."""
    now = utcnow()
    report: dict[str, dict[str, Any]] = {
        name: {"messages": None, "consumers": None, "queued": 0, "running": 0, "oldest": 0.0}
        for name in all_queues(settings)
    }
    with sessions() as session:
        rows = session.execute(
            select(Job.route_name, Job.state, func.count(), func.min(Job.created_at))
            .where(Job.state.in_([JobState.QUEUED, JobState.RUNNING]))
            .group_by(Job.route_name, Job.state)
        ).all()
    for route_name, state, count, oldest in rows:
        entry = report.setdefault(
            job_queue(settings, route_name),
            {"messages": None, "consumers": None, "queued": 0, "running": 0, "oldest": 0.0},
        )
        entry[str(state)] += int(count)
        if state == JobState.QUEUED and oldest is not None:
            entry["oldest"] = max(entry["oldest"], (now - oldest).total_seconds())
    live = members.live_members(sessions, settings)
    for entry_name, entry in report.items():
        entry["workers"] = sum(1 for m in live if entry_name in (m.queues or []))
    try:
        for name, (ready, consumers) in queue_depths(settings, app, list(report)).items():
            report[name]["messages"] = ready
            report[name]["consumers"] = consumers
    except Exception as exc:  # the broker is away: the database's view still answers
        log.debug("broker unreachable for queue depths: %s", exc)
    return report


class _Collector(Collector):
    def __init__(self, server: RoleHealthServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        server = self.server
        queues = queue_report(server.settings, server.sessions, server.app)
        families = {
            "messages": ("dicom_node_queue_messages", "Ready messages in the broker's queue"),
            "consumers": ("dicom_node_queue_consumers", "Consumers of the queue (broker)"),
            "workers": ("dicom_node_queue_workers", "Live workers that consume the queue"),
            "oldest": (
                "dicom_node_queue_oldest_seconds",
                "Age of the oldest queued job of the queue",
            ),
        }
        for key, (metric, doc) in families.items():
            g = GaugeMetricFamily(metric, doc, labels=["queue"])
            for name, entry in sorted(queues.items()):
                if entry.get(key) is not None:
                    g.add_metric([name], float(entry[key]))
            yield g
        g = GaugeMetricFamily(
            "dicom_node_queue_jobs",
            "Jobs of the queue by state (database)",
            labels=["queue", "state"],
        )
        for name, entry in sorted(queues.items()):
            for state in ("queued", "running"):
                g.add_metric([name, state], float(entry[state]))
        yield g
        g = GaugeMetricFamily(
            "dicom_node_cluster_members", "Live role processes by role", labels=["role"]
        )
        counts: dict[str, int] = {}
        for member in members.live_members(server.sessions, server.settings):
            counts[member.role] = counts.get(member.role, 0) + 1
        for role, count in sorted(counts.items()):
            g.add_metric([role], float(count))
        yield g
        g = GaugeMetricFamily("dicom_node_role_up", "1 for this role process", labels=["role"])
        g.add_metric([server.role], 1.0)
        yield g
        status = server.safe_status()
        for key, value in sorted((status.get("receive") or {}).items()):
            g = GaugeMetricFamily(f"dicom_node_received_{key}", f"Receive counter {key}")
            g.add_metric([], float(value))
            yield g


class RoleHealthServer:
    """A small HTTP server in a thread of the role's process."""

    def __init__(
        self,
        settings: Settings,
        role: str,
        sessions: sessionmaker[Session],
        status: StatusFn,
        *,
        app: Any | None = None,
    ) -> None:
        self.settings = settings
        self.role = role
        self.sessions = sessions
        self.status = status
        self.app = app if app is not None else make_app(settings)
        host, port = settings.cluster.health_host, settings.cluster.health_port
        try:
            self.httpd = ThreadingHTTPServer((host, port), self._handler())
        except OSError as exc:
            raise StartupError(
                f"cluster.health_port {port} on {host}: {exc.strerror or exc}; choose another "
                f"with --health-port or {env_var('cluster.health_port')}"
            ) from exc
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="role-health", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def safe_status(self) -> dict[str, Any]:
        try:
            return dict(self.status())
        except Exception as exc:  # a broken status is itself a failed check
            return {"status_error": type(exc).__name__}

    def health(self) -> tuple[int, dict[str, Any]]:
        checks: dict[str, bool] = {}
        try:
            with self.sessions() as session:
                session.execute(text("SELECT 1"))
            checks["database"] = True
        except Exception:
            checks["database"] = False
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
            checks["broker"] = True
        except Exception:
            checks["broker"] = False
        status = self.safe_status()
        checks["status"] = "status_error" not in status
        if "heartbeat_ok" in status:
            checks["heartbeat"] = bool(status["heartbeat_ok"])
        if "scp_listening" in status:
            checks["receiver"] = bool(status["scp_listening"])
        for name, model in (status.get("models") or {}).items():
            if isinstance(model, dict) and "loaded" in model:
                checks[f"model:{name}"] = bool(model["loaded"])
        ok = all(checks.values())
        body = {"status": "ok" if ok else "unhealthy", "role": self.role, "checks": checks}
        return (200 if ok else 503), body

    def metrics(self) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self))
        return generate_latest(registry)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                try:
                    if self.path.split("?")[0] == "/healthz":
                        code, body = server.health()
                        payload = json.dumps(body).encode()
                        kind = "application/json"
                    elif self.path.split("?")[0] == "/metrics":
                        code, payload = 200, server.metrics()
                        kind = "text/plain; version=0.0.4"
                    else:
                        code, payload, kind = 404, b"not found\n", "text/plain"
                except Exception:
                    log.exception("health endpoint failed")
                    code, payload, kind = 500, b"error\n", "text/plain"
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("health: " + format, *args)

        return Handler
