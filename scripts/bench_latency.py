"""Benchmark the result latency: from a chest CR's last C-STORE Success to SR and SC in a PACS.

Usage: ``python scripts/bench_latency.py [--rounds 5] [--quiet 5] [--grace 1]
[--policy both|quiet|release] [--keep DIR]``

A warm node (``dicom-node serve`` as a subprocess with its embedded defaults: one worker
process with the real chest model ``chest-xray-pneumonia``, the embedded ``chest-xray`` route
for CR/DX CHEST; its data folder in a temporary folder, SQLite, the admin page off) sends its
results to DCMTK ``storescp`` acting as the PACS. DCMTK ``storescu`` (``TCP_NODELAY=1``) pushes
one real chest CR, pydicom's RG1_UNCI (1955 x 1841, 7 MB), with new UIDs each round, and the
script waits until the SR and the SC are stored in storescp's folder.

Two completion policies, alternating round by round after one untimed warm-up each:

* quiet: the sender's calling AE title is not in ``completion.release_aes``; the series is
  complete ``--quiet`` seconds after its last instance (the embedded default is 30 s; the
  benchmark shortens it, which changes nothing of what follows).
* release: the sender is in ``completion.release_aes``; the series is complete ``--grace``
  seconds after storescu releases its association.

Each round's stages come from the node's own event rows (``event`` table, times recorded in
the transaction of each step) and its result row's timings, so they add up to the end-to-end
time exactly. The start is the last ``instance.received`` event: it is written in the
transaction that commits before the C-STORE Success is sent. The end is the last
``delivery.done`` event: written after the PACS answered Success to the node's C-STORE.

Target: end-to-end time beyond the wait (quiet period or release grace) <= 0.5 s.
With an older build of the node (``PYTHONPATH`` pointing at it) only the quiet policy runs,
and stages the old build does not record are shown as "-". A timing script, never a test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

import dicom_node
from dicom_node.config import CompletionSettings

# DCMTK on loopback waits for Nagle's algorithm (40 ms per PDU) unless told not to.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
NODE_AET = "DICOM_NODE"
PACS_AET = "PACS"
RELEASE_AET = "PACS1"  # configured in completion.release_aes: sends whole series
MODALITY_AET = "MODALITY"  # not configured: its series wait for the quiet period
TARGET_SECONDS = 0.5
SOURCE_FILE = "RG1_UNCI.dcm"

STAGES = (
    ("lag", "completion after the wait ends"),
    ("route", "route (rules, job queued)"),
    ("queue", "queue wait (job picked up)"),
    ("model", "model: read, decode, infer, Grad-CAM"),
    ("results", "results: SR, SC, files, rows"),
    ("heatmap_png", "heatmap PNG for the admin page (*)"),
    ("delivery", "delivery: wait, associate, 2 C-STOREs"),
    ("e2e", "end-to-end from the last Success"),
    ("beyond", "beyond the wait (target <= 0.5 s)"),
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on port {port} after {timeout} s")


def release_policy_supported() -> bool:
    """Whether the node under test has the per-sender completion policy."""
    return "release_aes" in CompletionSettings.model_fields


# -- peers --------------------------------------------------------------------------------


@contextmanager
def run_pacs(folder: Path, port: int) -> Iterator[Path]:
    """DCMTK storescp as the PACS, writing what it receives to ``folder/out``."""
    out = folder / "out"
    out.mkdir(parents=True)
    with open(folder / "storescp.log", "wb") as log:
        proc = subprocess.Popen(
            ["storescp", "-aet", PACS_AET, "-od", str(out), str(port)],
            env=DCMTK_ENV,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, 20)
        yield out
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def write_config(code_root: Path, folder: Path, pacs_port: int) -> Path:
    """The embedded ``config/node.toml`` with its destination pointed at our PACS.

    Lists of tables (destinations, routes) cannot be overridden from the environment, so
    the two values are replaced in a copy of the file; everything else stays the default.
    """
    text = (code_root / "config" / "node.toml").read_text(encoding="utf-8")
    replacements = {
        'ae_title = "ORTHANC"': f'ae_title = "{PACS_AET}"',
        "port = 4242": f"port = {pacs_port}",
        # A copied file's relative paths resolve against the working directory.
        'dir = "models"': f"dir = {json.dumps(str(code_root / 'models'))}",
    }
    for old, new in replacements.items():
        if text.count(old) != 1:
            raise SystemExit(f"config/node.toml: expected {old!r} exactly once")
        text = text.replace(old, new)
    path = folder / "node.toml"
    path.write_text(text, encoding="utf-8")
    return path


@contextmanager
def run_node(folder: Path, port: int, pacs_port: int, quiet: float, grace: float) -> Iterator[Path]:
    """``dicom-node serve`` with the embedded defaults but for the keys set here.

    Yields the SQLite database path. The node imports the same ``dicom_node`` as this
    script (its folder goes first on the node's PYTHONPATH).
    """
    folder.mkdir(parents=True)
    code_root = Path(dicom_node.__file__).resolve().parents[1]
    config = write_config(code_root, folder, pacs_port)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(code_root), os.environ.get("PYTHONPATH", "")) if p
        ),
        "DICOM_NODE__SCP__PORT": str(port),
        "DICOM_NODE__NODE__DATA_DIR": str(folder / "data"),
        "DICOM_NODE__WEB__ENABLED": "false",
        "DICOM_NODE__COMPLETION__QUIET_SECONDS": str(quiet),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    if release_policy_supported():
        env["DICOM_NODE__COMPLETION__RELEASE_AES"] = f'["{RELEASE_AET}"]'
        env["DICOM_NODE__COMPLETION__RELEASE_GRACE_SECONDS"] = str(grace)
    with open(folder / "node.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dicom_node.cli", "--config", str(config), "serve"],
            env=env,
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, 120)
        yield folder / "data" / "dicom-node.db"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def make_round_file(source: pydicom.Dataset, folder: Path, name: str) -> tuple[Path, str]:
    """The chest CR with new study, series and SOP Instance UIDs (pixels untouched)."""
    source.StudyInstanceUID = generate_uid()
    source.SeriesInstanceUID = generate_uid()
    source.SOPInstanceUID = generate_uid()
    source.file_meta.MediaStorageSOPInstanceUID = source.SOPInstanceUID
    path = folder / f"{name}.dcm"
    source.save_as(path, enforce_file_format=True)
    return path, str(source.SeriesInstanceUID)


# -- one round ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Round:
    policy: str
    wait: float  # the configured quiet period or release grace
    stages: dict[str, float]
    pacs_seen: float  # seconds from the last Success until this script saw both files


def _time(text: str) -> float:
    """An event time (naive UTC, as the node stores it) as a POSIX timestamp."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


def _events(db: sqlite3.Connection, series_uid: str) -> dict[str, list[tuple[float, str]]]:
    """Events of the series and of its jobs (deliveries name only the job)."""
    rows = db.execute(
        "SELECT kind, time, detail FROM event WHERE series_uid = ? OR job_id IN "
        "(SELECT job.id FROM job JOIN series ON series.id = job.series_id "
        "WHERE series.series_uid = ?) ORDER BY time, id",
        (series_uid, series_uid),
    ).fetchall()
    out: dict[str, list[tuple[float, str]]] = {}
    for kind, when, detail in rows:
        out.setdefault(kind, []).append((_time(when), detail))
    return out


def _timings(db: sqlite3.Connection, series_uid: str) -> dict[str, float]:
    row = db.execute(
        "SELECT result.timings FROM result JOIN job ON job.id = result.job_id "
        "JOIN series ON series.id = job.series_id WHERE series.series_uid = ?",
        (series_uid,),
    ).fetchone()
    return {k: float(v) for k, v in json.loads(row[0]).items()} if row else {}


def _wait_delivered(db_path: Path, series_uid: str, deadline: float) -> sqlite3.Connection:
    """Poll the node's database until both results are delivered (or the deadline)."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    while time.monotonic() < deadline:
        events = _events(db, series_uid)
        if len(events.get("delivery.done", [])) >= 2:
            return db
        failed = events.get("delivery.failed") or events.get("job.failed")
        if failed:
            raise RuntimeError(f"round failed: {failed}")
        time.sleep(0.02)
    raise TimeoutError(f"series {series_uid}: results not delivered in time")


def push_round(
    path: Path,
    series_uid: str,
    calling_ae: str,
    node_port: int,
    db_path: Path,
    pacs_out: Path,
    policy: str,
    wait: float,
) -> Round:
    """Push one file, wait for SR and SC in the PACS, and split the time by stage."""
    before = sum(1 for _ in pacs_out.iterdir())
    sent = subprocess.run(
        ["storescu", "-aet", calling_ae, "-aec", NODE_AET, "127.0.0.1", str(node_port), str(path)],
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if sent.returncode != 0:
        raise RuntimeError(f"storescu failed: {sent.stderr.strip()}")
    deadline = time.monotonic() + wait + 180
    while sum(1 for _ in pacs_out.iterdir()) < before + 2:
        if time.monotonic() > deadline:
            raise TimeoutError("the PACS did not receive SR and SC in time")
        time.sleep(0.01)
    seen = time.time()
    db = _wait_delivered(db_path, series_uid, deadline)
    try:
        events = _events(db, series_uid)
        timings = _timings(db, series_uid)
    finally:
        db.close()
    start = events["instance.received"][-1][0]
    completed = events["series.completed"][-1][0]
    queued = events["job.queued"][-1][0]
    started = events["job.started"][-1][0]
    result = events["model.result"][-1][0]
    delivered = max(t for t, _ in events["delivery.done"])
    model = timings.get("model_load", 0.0) + timings.get("read", 0.0) + timings.get("total", 0.0)
    stages = {
        "lag": completed - start - wait,
        "route": queued - completed,
        "queue": started - queued,
        "model": model,
        "results": result - started - model,
        "delivery": delivered - result,
        "e2e": delivered - start,
        "beyond": delivered - start - wait,
    }
    if "heatmap_png" in timings:
        stages["heatmap_png"] = timings["heatmap_png"]
    return Round(policy, wait, stages, seen - start)


# -- report -------------------------------------------------------------------------------


def report(rounds: list[Round], policies: list[str]) -> None:
    def median(policy: str, key: str) -> float | None:
        values = [r.stages[key] for r in rounds if r.policy == policy and key in r.stages]
        return statistics.median(values) if values else None

    def cell(value: float | None) -> str:
        return f"{value:8.3f}" if value is not None else f"{'-':>8}"

    counts = {p: sum(r.policy == p for r in rounds) for p in policies}
    print()
    print(f"median seconds per stage ({', '.join(f'{p}: {n} rounds' for p, n in counts.items())})")
    print(f"{'stage':44}" + "".join(f"{p:>10}" for p in policies))
    waits = {p: next(r.wait for r in rounds if r.policy == p) for p in policies}
    label = "wait: quiet period / release grace"
    print(f"{label:44}" + "".join(f"  {waits[p]:8.3f}" for p in policies))
    for key, label in STAGES:
        print(f"{label:44}" + "".join(f"  {cell(median(p, key))}" for p in policies))
    print(
        "(*) written after the results are queued, while they are delivered: not on the path"
        if any("heatmap_png" in r.stages for r in rounds)
        else "(*) not recorded by this build: part of the results stage"
    )
    print()
    for policy in policies:
        beyond = median(policy, "beyond")
        e2e = median(policy, "e2e")
        seen = statistics.median(r.pacs_seen for r in rounds if r.policy == policy)
        worst = max(r.stages["beyond"] for r in rounds if r.policy == policy)
        assert beyond is not None and e2e is not None
        verdict = "met" if beyond <= TARGET_SECONDS else "NOT met"
        print(
            f"{policy}: end-to-end {e2e:.3f} s, beyond the wait {beyond:.3f} s "
            f"(worst {worst:.3f} s) = {beyond / TARGET_SECONDS:.2f}x the 0.5 s target: "
            f"{verdict}; both files seen in the PACS folder by this script after {seen:.3f} s"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per policy")
    parser.add_argument("--quiet", type=float, default=5.0, help="completion.quiet_seconds")
    parser.add_argument("--grace", type=float, default=1.0, help="release grace seconds")
    parser.add_argument("--policy", choices=("both", "quiet", "release"), default="both")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args(argv)
    if shutil.which("storescu") is None:
        print("DCMTK (storescu, storescp) is not installed", file=sys.stderr)
        return 1
    source_path = get_testdata_file(SOURCE_FILE)
    if source_path is None:
        print(f"pydicom test file {SOURCE_FILE} is not installed (pydicom-data)", file=sys.stderr)
        return 1
    policies = ["quiet", "release"] if args.policy == "both" else [args.policy]
    if not release_policy_supported():
        print(f"{dicom_node.__file__}: no release policy in this build; quiet policy only")
        policies = [p for p in policies if p == "quiet"]
        if not policies:
            return 1
    aes = {"quiet": MODALITY_AET, "release": RELEASE_AET}
    waits = {"quiet": args.quiet, "release": args.grace}
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-latency-"))
    work.mkdir(parents=True, exist_ok=True)
    source = pydicom.dcmread(str(source_path))
    print(
        f"node code: {Path(dicom_node.__file__).parent}; {SOURCE_FILE} "
        f"{source.Rows}x{source.Columns} {source.Modality} {source.BodyPartExamined}"
    )
    node_port, pacs_port = free_port(), free_port()
    rounds: list[Round] = []
    try:
        with (
            run_pacs(work / "pacs", pacs_port) as pacs_out,
            run_node(work / "node", node_port, pacs_port, args.quiet, args.grace) as db_path,
        ):
            schedule = [(p, True) for p in policies]  # warm-up: TensorFlow, first model call
            schedule += [(p, False) for _ in range(args.rounds) for p in policies]
            for number, (policy, warm_up) in enumerate(schedule):
                path, series_uid = make_round_file(source, work, f"round{number:03d}")
                result = push_round(
                    path,
                    series_uid,
                    aes[policy],
                    node_port,
                    db_path,
                    pacs_out,
                    policy,
                    waits[policy],
                )
                tag = "warm-up" if warm_up else f"round {len(rounds) + 1}"
                print(
                    f"{tag:>9} {policy:8} end-to-end {result.stages['e2e']:.3f} s, "
                    f"beyond the wait {result.stages['beyond']:.3f} s"
                )
                if not warm_up:
                    rounds.append(result)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    report(rounds, policies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
