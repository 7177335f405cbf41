"""Benchmark C-ECHO latency: idle, with 10 concurrent clients, and while a model runs.

Usage: ``python scripts/bench_echo.py [--echoes 300] [--clients 10] [--per-client 100]
[--load model|cpu|none] [--seconds 30] [--node-code DIR]``

The node runs as ``dicom-node serve`` in a subprocess (its own folder, SQLite, admin page
off, one worker process, a 0.5 s quiet period and one route: chest X-rays to the
``chest-xray-pneumonia`` model, no destination). Each echo is a whole one, as ``echoscu``
or a monitoring probe makes it: connect, A-ASSOCIATE, C-ECHO, A-RELEASE, close. The client
is ``tests/raw_peer.py``: pre-encoded PDUs on a plain socket, no threads, no polling, so the
time measured is the node's (pynetdicom's requestor adds its own thread start and 1 ms
polls). Three figures, printed side by side:

* idle: ``--echoes`` echoes one after another from one client;
* concurrent: ``--clients`` clients at once, each from its own loopback address
  (127.0.0.2, ..., so the per-host association limit is not what is measured),
  ``--per-client`` echoes each. They are asyncio tasks of one process: ten client
  processes on a two-core machine would measure the scheduler, not the node;
* under load, one client for ``--seconds`` while ``--load`` runs: ``model`` (default) pushes
  a chest X-ray study (new UIDs each time) every 0.5 s from another process, so the node's
  worker process runs the Xception model and builds SR and SC results the whole time
  (the script checks it did: jobs done and worker CPU are printed); ``cpu`` runs one
  busy-looping process per core instead; ``none`` skips it.

``--node-code`` runs the node from another checkout (e.g. ``git archive`` of an older
commit unpacked in a folder), to print a before/after pair from the same client.

Target: p99 < 100 ms in every column. A timing script, never a test: the numbers move
with the machine and its load, which is printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import raw_peer  # noqa: E402

PAUSE = 0.01  # between two echoes of one client: samples over time, not a tight loop
ASSOCIATE_RQ, ECHO_RQ, RELEASE_RQ = (
    raw_peer.associate_rq(),
    raw_peer.echo_rq(),
    raw_peer.release_rq(),
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(folder: Path, port: int) -> Path:
    config = folder / "node.toml"
    config.write_text(
        f"""
[node]
data_dir = "{folder / "data"}"
[scp]
port = {port}
[completion]
quiet_seconds = 0.5
scan_interval = 0.2
[workers]
processes = 1
poll_interval = 0.2
[models]
dir = "{REPO / "models"}"
[web]
enabled = false
[[routes]]
name = "chest-xray"
match = {{ Modality = "^(CR|DX)$", BodyPartExamined = "^CHEST$" }}
models = ["chest-xray-pneumonia"]
"""
    )
    return config


@contextmanager
def node(folder: Path, code: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """``dicom-node serve`` with the code in ``code`` (PYTHONPATH), until the block ends."""
    port = free_port()
    config = write_config(folder, port)
    env = {
        **os.environ,
        "PYTHONPATH": str(code),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "DICOM_NODE_LOG_LEVEL": "WARNING",
    }
    log = open(folder / "node.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicom_node.cli", "--config", str(config), "serve"],
        env=env,
        cwd=code,  # python -m puts the working folder first on sys.path, before PYTHONPATH
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                raw_peer.echo(port)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"node did not start; see {folder / 'node.log'}") from None
                time.sleep(0.2)
        yield port, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def echoes(port: int, count: int, source: str, seconds: float = 0.0) -> list[float]:
    """``count`` echoes (or as many as fit in ``seconds``), each followed by ``PAUSE``."""
    latencies: list[float] = []
    end = time.monotonic() + seconds
    while (len(latencies) < count) if not seconds else (time.monotonic() < end):
        latencies.append(raw_peer.echo(port, source))
        time.sleep(PAUSE)
    return latencies


async def _read_pdu(reader: asyncio.StreamReader) -> int:
    head = await reader.readexactly(6)
    await reader.readexactly(int.from_bytes(head[2:6], "big"))
    return head[0]


async def _echo_async(port: int, source: str) -> float:
    """``raw_peer.echo`` as a coroutine (same PDUs, same checks but the status)."""
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for request, answer in (
            (ASSOCIATE_RQ, raw_peer.ASSOCIATE_AC),
            (ECHO_RQ, raw_peer.PDATA),
            (RELEASE_RQ, raw_peer.RELEASE_RP),
        ):
            writer.write(request)
            if await _read_pdu(reader) != answer:
                raise ConnectionError(f"unexpected answer to PDU type {request[0]:#04x}")
    finally:
        writer.close()
    return time.perf_counter() - start


async def _client_async(port: int, count: int, source: str) -> list[float]:
    latencies = []
    for _ in range(count):
        latencies.append(await _echo_async(port, source))
        await asyncio.sleep(PAUSE)
    return latencies


def concurrent(port: int, clients: int, per_client: int) -> list[float]:
    async def run() -> list[list[float]]:
        sources = [f"127.0.0.{2 + n}" for n in range(clients)]
        return await asyncio.gather(*(_client_async(port, per_client, s) for s in sources))

    return [x for r in asyncio.run(run()) for x in r]


# -- load ---------------------------------------------------------------------------------


def _feed_studies(port: int, folder: str, stop: mp.synchronize.Event) -> None:
    """Push one chest study with fresh UIDs every 0.5 s until ``stop``."""
    import pydicom
    from pydicom.uid import generate_uid
    from pynetdicom import AE

    from dicom_node.demo.studymaker import make_chest_study, pneumonia_package_pictures

    pictures = pneumonia_package_pictures()
    if not pictures:
        raise SystemExit("pneumonia-model-package is not installed: use --load cpu")
    files = make_chest_study(Path(folder) / "chest", pictures[:4])
    datasets = [pydicom.dcmread(f) for f in files]
    ae = AE(ae_title="BENCHFEED")
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    n = 0
    while not stop.is_set():
        ds = datasets[n % len(datasets)]
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        assoc = ae.associate(
            "127.0.0.1", port, ae_title="DICOM_NODE", bind_address=("127.0.0.50", 0)
        )
        if assoc.is_established:
            assoc.send_c_store(ds)
            assoc.release()
        n += 1
        stop.wait(0.5)


def _spin(stop: mp.synchronize.Event) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10000))


def jobs_done(folder: Path) -> int:
    db = folder / "data" / "dicom-node.db"
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM job WHERE state = 'done'").fetchone()[0])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def under_load(
    port: int, proc: subprocess.Popen[bytes], folder: Path, kind: str, seconds: float
) -> tuple[list[float], str]:
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    if kind == "model":
        loaders = [ctx.Process(target=_feed_studies, args=(port, str(folder), stop))]
    else:
        loaders = [ctx.Process(target=_spin, args=(stop,)) for _ in range(os.cpu_count() or 1)]
    for p in loaders:
        p.start()
    note = ""
    try:
        if kind == "model":  # wait until the worker has loaded the model and finished a job
            deadline = time.monotonic() + 300
            while jobs_done(folder) == 0:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no job done after 300 s; see {folder / 'node.log'}")
                time.sleep(0.5)
            workers = children(proc.pid)
            jobs0, cpu0 = jobs_done(folder), sum(cpu_seconds(w) for w in workers)
        start = time.monotonic()
        latencies = echoes(port, 0, "127.0.0.2", seconds=seconds)
        wall = time.monotonic() - start
        if kind == "model":
            cpu = sum(cpu_seconds(w) for w in workers) - cpu0
            note = (
                f"{jobs_done(folder) - jobs0} model jobs done meanwhile, worker process CPU "
                f"{cpu:.1f} s in {wall:.1f} s"
            )
        else:
            note = f"{len(loaders)} busy-looping processes"
    finally:
        stop.set()
        for p in loaders:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    return latencies, note


# -- report -------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--echoes", type=int, default=300)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--per-client", type=int, default=100)
    parser.add_argument("--load", choices=["model", "cpu", "none"], default="model")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--node-code", type=Path, default=REPO)
    args = parser.parse_args()

    columns: dict[str, list[float]] = {}
    cpu_per_echo: dict[str, float] = {}  # the node process's CPU (all its threads)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-echo-") as tmp:
        folder = Path(tmp)
        with node(folder, args.node_code.resolve()) as (port, proc):
            echoes(port, 20, "127.0.0.2")  # warm-up
            cpu = cpu_seconds(proc.pid)
            columns["idle"] = echoes(port, args.echoes, "127.0.0.2")
            cpu_per_echo["idle"] = (cpu_seconds(proc.pid) - cpu) / args.echoes
            name = f"{args.clients} clients"
            cpu = cpu_seconds(proc.pid)
            columns[name] = concurrent(port, args.clients, args.per_client)
            cpu_per_echo[name] = (cpu_seconds(proc.pid) - cpu) / len(columns[name])
            if args.load != "none":
                latencies, note = under_load(port, proc, folder, args.load, args.seconds)
                columns[f"{args.load} running"] = latencies
                notes.append(note)

    print(f"\nnode code: {args.node_code.resolve()}")
    print(
        f"C-ECHO latency (connect, associate, echo, release), ms; load average "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )
    names = list(columns)
    print(f"{'':>8}" + "".join(f"{n:>18}" for n in names))
    print(f"{'echoes':>8}" + "".join(f"{len(columns[n]):>18}" for n in names))
    for label, q in (("p50", 50), ("p90", 90), ("p99", 99)):
        print(f"{label:>8}" + "".join(f"{percentile(columns[n], q) * 1e3:>18.1f}" for n in names))
    print(f"{'max':>8}" + "".join(f"{max(columns[n]) * 1e3:>18.1f}" for n in names))
    print(f"{'mean':>8}" + "".join(f"{statistics.fmean(columns[n]) * 1e3:>18.1f}" for n in names))
    cpu_cells = (f"{cpu_per_echo[n] * 1e3:.2f}" if n in cpu_per_echo else "-" for n in names)
    print(f"{'node CPU':>8}" + "".join(f"{c:>18}" for c in cpu_cells) + "  (ms per echo)")
    for note in notes:
        print(f"load: {note}")
    worst = max(percentile(v, 99) for v in columns.values()) * 1e3
    print(
        f"target p99 < 100 ms in every column: {'met' if worst < 100 else 'NOT met'} "
        f"(worst p99 {worst:.1f} ms)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
