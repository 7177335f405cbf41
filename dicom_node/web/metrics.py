"""``/metrics`` in Prometheus text format, computed from the database at scrape time.

The database is the node's shared memory (receive threads, worker processes and the
delivery loop all write there), so counts from it are right whichever process did the
work. Process counters the database does not hold (associations, bytes received since
start) come from the node's ``status`` callable when it provides them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.store.db import Delivery, Instance, Job, Result, Series, Study
from dicom_node.store.states import DeliveryState, JobState
from dicom_node.web.overview import total_seconds

if TYPE_CHECKING:  # context imports this module
    from dicom_node.web.context import StatusFn

# Seconds: a chest X-ray takes ~0.1-2 s, a CT series with Grad-CAM can take a minute.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class LatencyHistogram:
    """Per-model histogram of ``timings["total"]``, updated with the results added since the
    last scrape.

    Reading every result's JSON at every scrape costs close to a second at 100,000 results
    (SQLite parses the JSON text per row); reading only new rows costs almost nothing. Rows
    are read again over an overlap of ``OVERLAP`` ids, because two workers can commit their
    results out of id order; ids already counted are skipped.
    """

    OVERLAP = 1000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_id = 0
        self._seen: set[int] = set()
        self._buckets: dict[str, list[int]] = {}
        self._count: dict[str, int] = {}
        self._sum: dict[str, float] = {}

    def update(self, session: Session) -> None:
        latency = total_seconds()
        with self._lock:
            floor = max(0, self._last_id - self.OVERLAP)
            rows = session.execute(
                select(Result.id, Result.model_id, latency)
                .where(Result.id > floor)
                .order_by(Result.id)
            )
            for result_id, model_id, value in rows:
                if result_id in self._seen:
                    continue
                self._seen.add(result_id)
                self._last_id = max(self._last_id, result_id)
                if value is None:
                    continue
                seconds = float(value)
                buckets = self._buckets.setdefault(model_id, [0] * len(LATENCY_BUCKETS))
                for i, bound in enumerate(LATENCY_BUCKETS):
                    if seconds <= bound:
                        buckets[i] += 1
                self._count[model_id] = self._count.get(model_id, 0) + 1
                self._sum[model_id] = self._sum.get(model_id, 0.0) + seconds
            floor = self._last_id - self.OVERLAP
            self._seen = {i for i in self._seen if i > floor}

    def family(self) -> HistogramMetricFamily:
        h = HistogramMetricFamily(
            "dicom_node_inference_seconds",
            "Time from model load to stored results, per series and model",
            labels=["model"],
        )
        with self._lock:
            for model_id in sorted(self._count):
                buckets = [
                    (str(bound), float(n))
                    for bound, n in zip(LATENCY_BUCKETS, self._buckets[model_id], strict=True)
                ]
                buckets.append(("+Inf", float(self._count[model_id])))
                h.add_metric([model_id], buckets, sum_value=self._sum[model_id])
        return h


class NodeCollector(Collector):
    def __init__(
        self,
        sessions: sessionmaker[Session],
        status: StatusFn | None,
        latency: LatencyHistogram,
    ) -> None:
        self.sessions = sessions
        self.status = status
        self.latency = latency

    def collect(self) -> Iterator[Metric]:
        with self.sessions() as session:
            yield from self._stored(session)
            yield from self._jobs(session)
            yield from self._latency(session)
            yield from self._results(session)
            yield from self._deliveries(session)
        yield from self._node()

    def _stored(self, session: Session) -> Iterator[Metric]:
        instances, size = session.execute(
            select(func.count(Instance.id), func.coalesce(func.sum(Instance.size), 0))
        ).one()
        g = GaugeMetricFamily("dicom_node_stored_instances", "Instances indexed in the database")
        g.add_metric([], instances)
        yield g
        g = GaugeMetricFamily("dicom_node_stored_bytes", "Bytes of indexed instances in the spool")
        g.add_metric([], size)
        yield g
        g = GaugeMetricFamily("dicom_node_studies", "Studies indexed in the database")
        g.add_metric([], session.scalar(select(func.count(Study.id))) or 0)
        yield g
        g = GaugeMetricFamily("dicom_node_series", "Series by processing state", labels=["state"])
        for state, count in session.execute(
            select(Series.state, func.count()).group_by(Series.state)
        ):
            g.add_metric([state], count)
        yield g

    def _jobs(self, session: Session) -> Iterator[Metric]:
        rows = session.execute(select(Job.state, func.count()).group_by(Job.state))
        counts: dict[str, int] = {state: count for state, count in rows}
        g = GaugeMetricFamily("dicom_node_jobs", "Jobs by state", labels=["state"])
        for state in sorted({*JobState, *counts}):
            g.add_metric([state], counts.get(state, 0))
        yield g
        pending = session.scalar(
            select(func.count(Delivery.id)).where(Delivery.state == DeliveryState.PENDING)
        )
        g = GaugeMetricFamily("dicom_node_queue_depth", "Work waiting", labels=["queue"])
        g.add_metric(["jobs"], counts.get(JobState.QUEUED, 0))
        g.add_metric(["deliveries"], pending or 0)
        yield g

    def _latency(self, session: Session) -> Iterator[Metric]:
        self.latency.update(session)
        yield self.latency.family()

    def _results(self, session: Session) -> Iterator[Metric]:
        """Results per model, and how many were outside the model's intended use.

        A rising share of out-of-scope results means studies reach a model they were
        not meant for (a routing rule too wide, an adult ward sending to a pediatric
        model): the results are flagged, but someone should look at the routes.
        """
        rows = session.execute(
            select(
                Result.model_id,
                func.count(),
                func.sum(case((Result.out_of_scope, 1), else_=0)),
            ).group_by(Result.model_id)
        ).all()
        total = GaugeMetricFamily("dicom_node_results", "Stored model results", labels=["model"])
        outside = GaugeMetricFamily(
            "dicom_node_results_out_of_scope",
            "Stored model results flagged outside the model's stated intended use",
            labels=["model"],
        )
        for model_id, count, flagged in sorted(rows):
            total.add_metric([model_id], count)
            outside.add_metric([model_id], int(flagged or 0))
        yield total
        yield outside

    def _deliveries(self, session: Session) -> Iterator[Metric]:
        g = GaugeMetricFamily(
            "dicom_node_deliveries",
            "Deliveries by destination and outcome (pending, done, failed)",
            labels=["destination", "state"],
        )
        for dest, state, count in session.execute(
            select(Delivery.destination, Delivery.state, func.count()).group_by(
                Delivery.destination, Delivery.state
            )
        ):
            g.add_metric([dest, state], count)
        yield g

    def _node(self) -> Iterator[Metric]:
        if self.status is None:
            return
        try:
            node = self.status()
        except Exception:  # metrics must still answer when the node status breaks
            node = {}
        receive = node.get("receive", {}) or {}
        for key, doc in (
            ("instances", "Instances received since the node started"),
            ("bytes", "Bytes received since the node started"),
            ("associations", "Associations accepted since the node started"),
        ):
            if key in receive:
                c = CounterMetricFamily(f"dicom_node_received_{key}", doc)
                c.add_metric([], float(receive[key]))
                yield c
        g = GaugeMetricFamily("dicom_node_scp_listening", "1 when the C-STORE SCP listens")
        g.add_metric([], 1.0 if node.get("scp_listening") else 0.0)
        yield g
        g = GaugeMetricFamily("dicom_node_workers_alive", "Worker processes alive")
        g.add_metric([], float(node.get("workers_alive", 0) or 0))
        yield g
        # The node reports, per model of an enabled route, whether its weights are there
        # to load ("ok"); a model waiting for weights is 0 (its routes wait).
        g = GaugeMetricFamily(
            "dicom_node_model_loaded",
            "1 when a model's weights are there to load, 0 while its routes wait for them",
            labels=["model"],
        )
        for model, value in (node.get("models", {}) or {}).items():
            ready = value.get("loaded", value.get("ok", True)) if isinstance(value, dict) else value
            g.add_metric([str(model)], 1.0 if ready else 0.0)
        yield g


def render_metrics(
    sessions: sessionmaker[Session], status: StatusFn | None, latency: LatencyHistogram
) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(sessions, status, latency))
    return generate_latest(registry)
