"""Benchmark the cluster: chest series through 1 and then 2 worker processes, same run.

Usage: ``python scripts/bench_cluster.py [--series 200] [--workers 1 2] [--storage s3|shared]
[--keep DIR]``

Every role is a ``dicom-node`` process of its own, as on separate hosts: one receiver, one
dispatcher, and for each round ``N`` workers holding the real chest model
(``chest-xray-pneumonia``, Xception, Grad-CAM; one inference thread each). PostgreSQL
(127.0.0.1:5432, a fresh database) holds the states, RabbitMQ (127.0.0.1:5672) carries the
jobs on the round's own queues, SeaweedFS (``weed server -s3``, free ports) holds the spool and
the results (``--storage shared``: one shared folder instead), DCMTK ``storescp`` is the PACS.

Each round makes ``--series`` new DX chest studies (one image each, from the 16 chest X-ray
JPEGs of ``pneumonia-model-package``, 8 bits, new UIDs), starts its workers and waits until
their models are loaded, then pushes all studies with DCMTK ``storescu`` over one association
from a calling AE in ``completion.release_aes``: the series complete when the association is
released, so the workers get the whole backlog at once. Throughput is series per minute from
the first job started to the last job done. Per-stage costs come from the node's rows:
receive (storescu's wall time per instance), queue wait (job created -> started), the worker's
time per series and its parts (``result.timings``: read from storage, decode, infer, Grad-CAM,
SR/SC, heatmap PNG), delivery (one C-STORE, from ``delivery.done`` events) and the lag from a
job's end to its last object in the PACS.

Target: 2 workers >= 1.5 x 1 worker on the 2-core machine. A timing script, never a test:
other load on the machine shows in its numbers (the load average is printed with them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import create_engine, select, text  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from dicom_node.demo.studymaker import make_chest_study, pneumonia_package_pictures  # noqa: E402
from dicom_node.store.db import Event, Job, Result  # noqa: E402
from dicom_node.store.states import EventKind, JobState  # noqa: E402
from tests.cluster.conftest import toml_dump  # noqa: E402
from tests.cluster.seaweed import run_seaweed  # noqa: E402
from tests.peers import DCMTK_ENV, free_port, wait_for_port  # noqa: E402

POSTGRES_ADMIN = os.environ.get(
    "DICOM_NODE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
BROKER = "amqp://guest:guest@127.0.0.1:5672//"
MODEL = "chest-xray-pneumonia"
SENDER_AET = "BENCH"
READY = "Ctrl-C stops."


# -- peers --------------------------------------------------------------------------------


@contextmanager
def fresh_database() -> Iterator[str]:
    import psycopg

    name = f"dn_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


@contextmanager
def run_pacs(folder: Path) -> Iterator[tuple[int, int]]:
    """DCMTK storescp as the PACS (writes what it receives, answers Success)."""
    port = free_port()
    out = folder / "out"
    out.mkdir(parents=True)
    with open(folder / "storescp.log", "wb") as log:
        proc = subprocess.Popen(
            ["storescp", "-aet", "PACS", "-od", str(out), str(port)],
            env=DCMTK_ENV,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, 20)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=20)


class Role:
    def __init__(self, folder: Path, name: str, config: dict[str, Any], args: list[str]):
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "node.toml"
        path.write_text(toml_dump(config))
        self.name = name
        self.log = folder / "role.log"
        env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dicom_node.cli", "--config", str(path), *args],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=folder,
            )

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if READY in self.log.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)
        raise SystemExit(f"{self.name} not ready after {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def base_config(
    root: Path, name: str, database_url: str, storage: dict[str, Any], prefix: str, pacs: int
) -> dict[str, Any]:
    return {
        "node": {"data_dir": str(root / name / "data")},
        "scp": {"host": "127.0.0.1", "port": free_port()},
        "storage": {"database_url": database_url, **storage},
        "completion": {
            "quiet_seconds": 5.0,
            "scan_interval": 0.2,
            "release_aes": [SENDER_AET],
            "release_grace_seconds": 0.5,
        },
        "workers": {"processes": 1, "inference_threads": 1},
        "models": {"dir": str(REPO / "models")},
        "web": {"enabled": False},
        "cluster": {"mode": "cluster", "broker_url": BROKER, "queue_prefix": prefix},
        "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs}],
        "routes": [
            {
                "name": "chest-xray",
                "match": {"Modality": "^(CR|DX)$", "BodyPartExamined": "^CHEST$"},
                "models": [MODEL],
                "destinations": ["pacs"],
            }
        ],
    }


def drop_queues(config: dict[str, Any]) -> None:
    from dicom_node.cluster.broker import delete_queues
    from dicom_node.cluster.queues import all_queues, delivery_queue
    from dicom_node.config import load_settings

    settings = load_settings(
        environ={},
        overrides={
            k: config[k] for k in ("cluster", "routes", "destinations", "models", "storage")
        },
    )
    delete_queues(settings, [*all_queues(settings), delivery_queue(settings)])


# -- CPU per process group ---------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    """User + system CPU seconds of a process (and of its waited-for children)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(v) for v in fields[11:15]) / TICK


def _pids(name: str) -> list[int]:
    found = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout
    return [int(p) for p in found.split()]


def cpu_snapshot(groups: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds per group; PostgreSQL and RabbitMQ are the machine's (shared) servers."""
    found = {name: sum(_cpu(pid) for pid in pids) for name, pids in groups.items()}
    found["postgresql (machine)"] = sum(_cpu(pid) for pid in _pids("postgres"))
    found["rabbitmq (machine)"] = sum(_cpu(pid) for pid in _pids("beam.smp"))
    return found


# -- a round ------------------------------------------------------------------------------


def make_studies(folder: Path, count: int) -> list[Path]:
    pictures = pneumonia_package_pictures()
    files: list[Path] = []
    batch = 0
    while len(files) < count:
        files += make_chest_study(folder / f"b{batch}", pictures, bits_allocated=8)
        batch += 1
    return files[:count]


def _seconds(a: Any, b: Any) -> float:
    return float((b - a).total_seconds())


def measure(session: Session, since_job: int) -> dict[str, Any]:
    jobs = session.scalars(select(Job).where(Job.id > since_job)).all()
    started = min(j.started_at for j in jobs if j.started_at)
    finished = max(j.finished_at for j in jobs if j.finished_at)
    window = _seconds(started, finished)
    ids = [j.id for j in jobs]
    results = session.scalars(select(Result).where(Result.job_id.in_(ids))).all()
    timing_keys = ("read", "decode", "infer", "explain", "results", "heatmap_png")
    timings = {k: [float(r.timings.get(k, 0.0)) for r in results] for k in timing_keys}
    sends = session.scalars(
        select(Event).where(Event.kind == EventKind.DELIVERY_DONE, Event.job_id.in_(ids))
    ).all()
    last_send: dict[int, Any] = {}
    for event in sends:
        if event.job_id is not None:
            last_send[event.job_id] = max(last_send.get(event.job_id, event.time), event.time)
    return {
        "series": len(jobs),
        "window_s": window,
        "per_min": 60.0 * len(jobs) / window if window > 0 else 0.0,
        "queue_wait": statistics.median(_seconds(j.created_at, j.started_at) for j in jobs),
        "worker_per_series": statistics.mean(_seconds(j.started_at, j.finished_at) for j in jobs),
        **{k: statistics.mean(v) for k, v in timings.items() if v},
        "delivery_per_object": statistics.mean(float(e.duration_ms or 0.0) / 1000 for e in sends),
        "delivery_lag": statistics.median(
            _seconds(j.finished_at, last_send[j.id]) for j in jobs if j.id in last_send
        ),
        "workers": sorted({j.worker for j in jobs}),
    }


def run_round(
    root: Path,
    workers: int,
    count: int,
    config: Any,
    engine: Any,
    receiver_port: int,
    groups: dict[str, list[int]],
) -> dict[str, Any]:
    folder = root / f"round-{workers}"
    files = make_studies(folder / "studies", count)
    with engine.connect() as conn:
        since = conn.execute(text("SELECT coalesce(max(id), 0) FROM job")).scalar_one()
    roles = [
        Role(
            folder / f"worker-{i}",
            f"worker-{i}",
            config(f"round-{workers}-w{i}"),
            ["worker", "--models", MODEL],
        )
        for i in range(workers)
    ]
    try:
        for role in roles:
            role.wait_ready()
        groups = {**groups, "workers": [role.proc.pid for role in roles]}
        cpu_before = cpu_snapshot(groups)
        t0 = time.monotonic()
        sent = subprocess.run(
            [
                "storescu",
                "-aet",
                SENDER_AET,
                "-aec",
                "DICOM_NODE",
                "127.0.0.1",
                str(receiver_port),
                *map(str, files),
            ],
            env=DCMTK_ENV,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        receive_s = time.monotonic() - t0
        if sent.returncode != 0:
            raise SystemExit(f"storescu failed: {(sent.stdout + sent.stderr)[-2000:]}")
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline:
            with Session(engine) as session:
                jobs = session.scalars(select(Job).where(Job.id > since)).all()
                open_jobs = [j for j in jobs if j.state in (JobState.QUEUED, JobState.RUNNING)]
                pending = session.execute(
                    text("SELECT count(*) FROM delivery WHERE state = 'pending'")
                ).scalar_one()
            if len(jobs) == count and not open_jobs and not pending:
                break
            time.sleep(1.0)
        else:
            raise SystemExit("round did not finish in an hour")
        cpu_after = cpu_snapshot(groups)
        with Session(engine) as session:
            found = measure(session, since)
        found["cpu_per_series"] = {
            name: (cpu_after[name] - cpu_before[name]) / count for name in cpu_after
        }
        found["receive_per_instance"] = receive_s / count
        found["failed"] = sum(1 for j in jobs if j.state == JobState.FAILED)
        found["load"] = os.getloadavg()[0]
        return found
    finally:
        for role in roles:
            role.stop()


ROWS = (
    ("series/min (first start -> last done)", "per_min", 1, ""),
    ("window, s", "window_s", 1, ""),
    ("receive, per instance (storescu)", "receive_per_instance", 1000, "ms"),
    ("queue wait, median", "queue_wait", 1, "s"),
    ("worker time per series", "worker_per_series", 1000, "ms"),
    ("  read from storage", "read", 1000, "ms"),
    ("  decode", "decode", 1000, "ms"),
    ("  infer", "infer", 1000, "ms"),
    ("  Grad-CAM", "explain", 1000, "ms"),
    ("  SR + SC, stored", "results", 1000, "ms"),
    ("  heatmap PNG, stored", "heatmap_png", 1000, "ms"),
    ("delivery, per object (C-STORE)", "delivery_per_object", 1000, "ms"),
    ("job done -> last object in PACS, median", "delivery_lag", 1000, "ms"),
    ("load average (1 min) at the end", "load", 1, ""),
)


def report(rounds: dict[int, dict[str, Any]]) -> None:
    counts = sorted(rounds)
    header = f"{'stage':44s}" + "".join(f"{f'{n} worker(s)':>14s}" for n in counts)
    print(header)
    print("-" * len(header))
    for label, key, scale, unit in ROWS:
        cells = "".join(f"{rounds[n].get(key, 0.0) * scale:>12.1f}{unit:>2s}" for n in counts)
        print(f"{label:44s}{cells}")
    print(f"{'CPU seconds per series, by process':44s}")
    for name in rounds[counts[0]]["cpu_per_series"]:
        cells = "".join(
            f"{rounds[n]['cpu_per_series'].get(name, 0.0) * 1000:>12.1f}ms" for n in counts
        )
        print(f"{'  ' + name:44s}{cells}")
    if len(counts) >= 2:
        one, two = rounds[counts[0]]["per_min"], rounds[counts[-1]]["per_min"]
        ratio = two / one if one else 0.0
        verdict = "meets" if ratio >= 1.5 else "misses"
        print(f"\nratio {counts[-1]} / {counts[0]} workers: {ratio:.2f} ({verdict} the 1.5 target)")
    print(json.dumps({str(k): {**v, "workers": len(v["workers"])} for k, v in rounds.items()}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--series", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--storage", choices=["s3", "shared"], default="s3")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run's folders here")
    args = parser.parse_args()
    if shutil.which("storescu") is None or shutil.which("storescp") is None:
        print("DCMTK (storescu, storescp) is not installed", file=sys.stderr)
        return 2
    if not pneumonia_package_pictures():
        print("pneumonia-model-package is not installed", file=sys.stderr)
        return 2
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    root.mkdir(parents=True, exist_ok=True)
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    rounds: dict[int, dict[str, Any]] = {}
    with ExitStack() as stack:
        database_url = stack.enter_context(fresh_database())
        pacs, pacs_pid = stack.enter_context(run_pacs(root / "pacs"))
        if args.storage == "s3":
            s3 = stack.enter_context(run_seaweed(root / "seaweed"))
            storage: dict[str, Any] = {"backend": "s3", "s3": s3.s3_settings(f"dn-{prefix}")}
        else:
            storage = {
                "backend": "local",
                "spool_dir": str(root / "shared" / "spool"),
                "results_dir": str(root / "shared" / "results"),
            }

        def config(name: str) -> dict[str, Any]:
            return base_config(root, name, database_url, storage, prefix, pacs)

        receiver_config = config("receiver")
        receiver = Role(root / "receiver", "receiver", receiver_config, ["receive"])
        dispatcher = Role(root / "dispatcher", "dispatcher", config("dispatcher"), ["dispatch"])
        stack.callback(receiver.stop)
        stack.callback(dispatcher.stop)
        receiver.wait_ready()
        dispatcher.wait_ready()
        groups = {
            "receiver": [receiver.proc.pid],
            "dispatcher": [dispatcher.proc.pid],
            "storescp (PACS)": [pacs_pid],
        }
        if args.storage == "s3":
            groups["seaweedfs"] = [s3.process.pid]
        engine = create_engine(database_url)
        stack.callback(engine.dispose)
        stack.callback(drop_queues, config("x"))
        for count in args.workers:
            print(f"round: {args.series} series through {count} worker(s) ...", flush=True)
            rounds[count] = run_round(
                root,
                count,
                args.series,
                config,
                engine,
                receiver_config["scp"]["port"],
                groups,
            )
            print(json.dumps({count: {**rounds[count], "workers": rounds[count]["workers"]}}))
    print(
        f"\n{args.series} chest series per round, storage {args.storage}, this machine "
        f"({os.cpu_count()} cores)\n"
    )
    report(rounds)
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
