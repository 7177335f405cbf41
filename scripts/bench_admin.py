#!/usr/bin/env python3
"""Fill a database with 100,000 studies and time the admin page's queries and pages.

Usage::

    .venv/bin/python scripts/bench_admin.py                       # SQLite in a temp folder
    .venv/bin/python scripts/bench_admin.py --postgres            # a fresh PostgreSQL database
    .venv/bin/python scripts/bench_admin.py --url sqlite:///x.db --studies 20000

Each study has one series (10 % have a second), one instance row per series, a job per
routed series, a result per finished job, two deliveries per result and four events. The
numbers printed are the median of ``--repeat`` runs after one warm-up, in milliseconds.
This is a measurement, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastapi.testclient import TestClient
from sqlalchemy import delete, insert
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import Settings
from dicom_node.store import users
from dicom_node.store.db import (
    Delivery,
    Event,
    Instance,
    Job,
    Result,
    Series,
    Study,
    User,
    create_engine,
    session_factory,
)
from dicom_node.web import create_app
from dicom_node.web.filters import StudyFilter
from dicom_node.web.overview import model_stats
from dicom_node.web.queries import list_studies

FAMILY = ["SMITH", "MÜLLER", "GARCIA", "NGUYEN", "KOWALSKI", "ROSSI", "DUBOIS", "TANAKA"]
GIVEN = ["ANNA", "JOHN", "MARIA", "LI", "PETER", "FATIMA", "JOSE", "EMMA", "OLGA", "KENJI"]
MODALITIES = {
    "CR": ("CHEST", "chest-xray-pneumonia"),
    "DX": ("CHEST", "chest-xray-pneumonia"),
    "MR": ("HEAD", "brain-mri-tumor"),
    "CT": ("ABDOMEN", None),
}
AES = ["PACS_A", "PACS_B", "CT_SCANNER", "MR_SCANNER", "DX_ROOM1"]
T0 = dt.datetime(2025, 1, 1)
CHUNK = 10_000


def _chunks(rows: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= CHUNK:
            yield batch
            batch = []
    if batch:
        yield batch


def fill(sessions: sessionmaker[Session], n: int, seed: int = 7) -> dict[str, int]:
    """Insert ``n`` studies with everything that hangs off them; returns row counts."""
    rng = random.Random(seed)
    studies, series, instances, jobs, results, deliveries, events = [], [], [], [], [], [], []
    series_id = job_id = result_id = delivery_id = 0
    for i in range(1, n + 1):
        received = T0 + dt.timedelta(seconds=i * 300 + rng.randint(0, 200))
        study_uid = f"1.2.826.0.1.3680043.10.543.{i}"
        studies.append(
            {
                "id": i,
                "study_uid": study_uid,
                "patient_id": f"P{i:07d}",
                "patient_name": f"{rng.choice(FAMILY)}^{rng.choice(GIVEN)}",
                "accession_number": f"A{i:08d}",
                "study_date": received.strftime("%Y%m%d"),
                "study_description": "",
                "first_received_at": received,
                "last_received_at": received + dt.timedelta(seconds=20),
            }
        )
        for s in range(2 if rng.random() < 0.1 else 1):
            series_id += 1
            modality = rng.choice(list(MODALITIES))
            body_part, model = MODALITIES[modality]
            last = received + dt.timedelta(seconds=20)
            roll = rng.random()
            state = "receiving" if roll < 0.01 else ("unrouted" if model is None else "routed")
            series.append(
                {
                    "id": series_id,
                    "series_uid": f"{study_uid}.{s + 1}",
                    "study_id": i,
                    "modality": modality,
                    "body_part": body_part,
                    "series_description": "",
                    "series_number": str(s + 1),
                    "calling_ae": rng.choice(AES),
                    "instance_count": rng.randint(1, 300),
                    "first_received_at": received,
                    "last_received_at": last,
                    "state": state,
                    "generation": 0,
                    "completed_at": last + dt.timedelta(seconds=30),
                    "route_name": body_part.lower() if state == "routed" else None,
                    "route_reason": "",
                }
            )
            instances.append(
                {
                    "id": series_id,
                    "sop_instance_uid": f"{study_uid}.{s + 1}.1",
                    "sop_class_uid": "1.2.840.10008.5.1.4.1.1.1",
                    "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                    "series_id": series_id,
                    "instance_number": 1,
                    "path": "/spool/x.dcm",
                    "size": 500_000,
                    "calling_ae": "PACS_A",
                    "remote_address": "10.0.0.7",
                    "received_at": received,
                    "generation": 0,
                }
            )
            events.append(
                {
                    "time": received,
                    "kind": "instance.received",
                    "study_uid": study_uid,
                    "series_uid": f"{study_uid}.{s + 1}",
                    "sop_instance_uid": "",
                    "detail": {},
                }
            )
            if state != "routed":
                continue
            job_id += 1
            job_state = rng.choices(["done", "failed", "queued"], [0.95, 0.03, 0.02])[0]
            start = last + dt.timedelta(seconds=31)
            jobs.append(
                {
                    "id": job_id,
                    "series_id": series_id,
                    "generation": 0,
                    "route_name": body_part.lower(),
                    "state": job_state,
                    "attempts": 1,
                    "worker": "w1",
                    "error": "boom" if job_state == "failed" else "",
                    "created_at": start,
                    "started_at": start,
                    "finished_at": start + dt.timedelta(seconds=2),
                }
            )
            events.append(
                {
                    "time": start,
                    "kind": f"job.{job_state}",
                    "study_uid": study_uid,
                    "series_uid": f"{study_uid}.{s + 1}",
                    "sop_instance_uid": "",
                    "job_id": job_id,
                    "detail": {},
                }
            )
            if job_state != "done":
                continue
            result_id += 1
            p = rng.random()
            results.append(
                {
                    "id": result_id,
                    "job_id": job_id,
                    "model_id": model,
                    "model_version": "1.0",
                    "predicted_class": "POSITIVE" if p >= 0.5 else "NEGATIVE",
                    "positive_probability": p,
                    "probabilities": {"POSITIVE": p, "NEGATIVE": 1 - p},
                    "slice_scores": [],
                    "timings": {"total": rng.lognormvariate(-0.5, 0.6)},
                    "heatmap_path": "",
                    "objects": [],
                    "created_at": start,
                }
            )
            for kind in ("sr", "sc"):
                delivery_id += 1
                d_state = rng.choices(["done", "failed", "pending"], [0.95, 0.03, 0.02])[0]
                deliveries.append(
                    {
                        "id": delivery_id,
                        "job_id": job_id,
                        "destination": "pacs",
                        "kind": kind,
                        "sop_class_uid": "1.2.3",
                        "sop_instance_uid": f"2.25.{delivery_id}",
                        "study_uid": study_uid,
                        "path": "/results/x.dcm",
                        "state": d_state,
                        "attempts": 1,
                        "last_status": 0,
                        "last_error": "",
                        "created_at": start,
                        "next_attempt_at": start,
                        "delivered_at": start + dt.timedelta(seconds=5)
                        if d_state == "done"
                        else None,
                    }
                )
                events.append(
                    {
                        "time": start + dt.timedelta(seconds=5),
                        "kind": f"delivery.{d_state}",
                        "study_uid": study_uid,
                        "series_uid": "",
                        "sop_instance_uid": f"2.25.{delivery_id}",
                        "job_id": job_id,
                        "delivery_id": delivery_id,
                        "detail": {},
                    }
                )
    counts = {}
    with sessions() as session:
        for model, rows in (
            (Study, studies),
            (Series, series),
            (Instance, instances),
            (Job, jobs),
            (Result, results),
            (Delivery, deliveries),
            (Event, events),
        ):
            for batch in _chunks(iter(rows)):
                session.execute(insert(model), batch)
            counts[model.__tablename__] = len(rows)
        session.commit()
    return counts


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(median, max) milliseconds over ``repeat`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), max(times)


def make_settings(root: Path, url: str) -> Settings:
    models = root / "models"
    for model_id in ("chest-xray-pneumonia", "brain-mri-tumor"):
        (models / model_id).mkdir(parents=True, exist_ok=True)
        (models / model_id / "model.toml").write_text("")
    (root / "data" / "spool").mkdir(parents=True, exist_ok=True)
    return Settings.model_validate(
        {
            "node": {"data_dir": str(root / "data")},
            "storage": {"database_url": url},
            "models": {"dir": str(models)},
            "destinations": [
                {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 4242}
            ],
            "routes": [
                {"name": "chest", "models": ["chest-xray-pneumonia"], "destinations": ["pacs"]},
                {"name": "head", "models": ["brain-mri-tumor"], "destinations": ["pacs"]},
            ],
        }
    )


def run(url: str, n: int, repeat: int, root: Path, *, skip_fill: bool = False) -> None:
    t0 = time.perf_counter()
    engine = create_engine(url)
    sessions = session_factory(engine)
    if skip_fill:
        with sessions() as session:
            n = session.query(Study).count()
            counts = {"study": n}
            session.execute(delete(User).where(User.username == "bench"))
            session.commit()
    else:
        counts = fill(sessions, n)
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    print(
        f"database: {engine.dialect.name}; filled in {time.perf_counter() - t0:.1f} s: "
        + ", ".join(f"{k} {v:,}" for k, v in counts.items())
    )

    pages = (n + 49) // 50
    cases: list[tuple[str, StudyFilter, dict[str, Any]]] = [
        ("newest first, page 1", StudyFilter(), {}),
        ("newest first, page 1000", StudyFilter(), {"page": 1000}),
        (f"newest first, last page ({pages})", StudyFilter(), {"page": pages}),
        ("patient name A-Z, page 1", StudyFilter(), {"sort": "patient_name", "direction": "asc"}),
        ("accession Z-A, page 50", StudyFilter(), {"sort": "accession", "page": 50}),
        ("modality CT", StudyFilter(modality="CT"), {}),
        ("calling AE MR_SCANNER", StudyFilter(calling_ae="MR_SCANNER"), {}),
        ("model brain-mri-tumor", StudyFilter(model="brain-mri-tumor"), {}),
        ("state delivery failed", StudyFilter(state="delivery_failed"), {}),
        ("state job failed", StudyFilter(state="job_failed"), {}),
        ("state receiving", StudyFilter(state="receiving"), {}),
        (
            "date range (1 month)",
            StudyFilter(date_from=dt.date(2025, 3, 1), date_to=dt.date(2025, 3, 31)),
            {},
        ),
        ("text: patient ID", StudyFilter(q=f"P{n // 2:07d}"), {}),
        ("text: name 'smith anna'", StudyFilter(q="smith anna"), {}),
        (
            "text + modality + date",
            StudyFilter(q="garcia", modality="MR", date_from=dt.date(2025, 2, 1)),
            {},
        ),
    ]
    print(
        f"\nstudies list (queries.list_studies: count + page of 50 + summaries), "
        f"median / max of {repeat} runs, ms"
    )
    with sessions() as session:
        for label, filt, kw in cases:

            def query(filt: StudyFilter = filt, kw: dict[str, Any] = kw) -> None:
                list_studies(session, filt, page_size=50, **kw)

            med, worst = timed(query, repeat)
            total = list_studies(session, filt, page_size=50, **kw).total
            print(f"  {label:<38} {med:8.1f} {worst:8.1f}   ({total:,} match)")
        settings = make_settings(root, url)
        med, worst = timed(lambda: model_stats(session, settings), repeat)
        print(f"  {'models page statistics':<38} {med:8.1f} {worst:8.1f}")

    settings = make_settings(root, url)
    users.add_user(sessions, "bench", "bench-password", "admin")
    app = create_app(settings, sessions, status=lambda: {"scp_listening": True, "workers_alive": 1})
    with TestClient(app, follow_redirects=False) as client:
        token = client.get("/login").text.split('name="csrf_token" value="')[1].split('"')[0]
        client.post(
            "/login", data={"username": "bench", "password": "bench-password", "csrf_token": token}
        )
        token = client.get("/studies").text.split('name="csrf_token" value="')[1].split('"')[0]
        middle = f"1.2.826.0.1.3680043.10.543.{n // 2}"
        http_cases: list[tuple[str, Callable[[], object]]] = [
            ("GET /studies (page 1)", lambda: client.get("/studies")),
            ("GET /studies?page=1000", lambda: client.get("/studies?page=1000")),
            (
                "GET /studies sorted by name",
                lambda: client.get("/studies?sort=patient_name&direction=asc"),
            ),
            ("GET /studies/{uid} (detail)", lambda: client.get(f"/studies/{middle}")),
            ("GET /models", lambda: client.get("/models")),
            ("GET /deliveries", lambda: client.get("/deliveries")),
            ("GET /api/studies?modality=CT", lambda: client.get("/api/studies?modality=CT")),
            ("GET /metrics", lambda: client.get("/metrics")),
        ]
        print("\nwhole pages through the app (TestClient, includes audit insert and rendering), ms")
        for label, fn in http_cases:
            med, worst = timed(fn, repeat)
            print(f"  {label:<38} {med:8.1f} {worst:8.1f}")
        client.post("/studies", data={"csrf_token": token, "q": "smith", "modality": "CR"})
        med, worst = timed(lambda: client.get("/studies"), repeat)
        print(f"  {'GET /studies (text + modality filter)':<38} {med:8.1f} {worst:8.1f}")
        t0 = time.perf_counter()
        size = len(client.get("/export/studies.csv").content)
        print(
            f"  {'export CSV (all matching studies)':<38} {(time.perf_counter() - t0) * 1000:8.1f}"
            f"            ({size / 1e6:.1f} MB)"
        )
    engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="database URL (default: SQLite in a temp folder)")
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="create a fresh database on postgresql://postgres@127.0.0.1:5432",
    )
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--skip-fill", action="store_true", help="measure the database at --url as it is"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-admin-") as tmp:
        root = Path(tmp)
        if args.postgres:
            import psycopg

            name = f"dn_bench_{secrets.token_hex(4)}"
            admin = psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
            admin.autocommit = True
            admin.cursor().execute(f"CREATE DATABASE {name}")
            try:
                run(
                    f"postgresql://postgres@127.0.0.1:5432/{name}",
                    args.studies,
                    args.repeat,
                    root,
                )
            finally:
                admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
                admin.close()
        else:
            url = args.url or f"sqlite:///{root / 'bench.db'}"
            run(url, args.studies, args.repeat, root, skip_fill=args.skip_fill)
    return 0


if __name__ == "__main__":
    sys.exit(main())
