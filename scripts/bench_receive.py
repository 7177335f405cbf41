"""Benchmark receiving: the node against DCMTK's and pynetdicom's own storescp.

Usage: ``python scripts/bench_receive.py [--instances 300] [--size 512] [--repeat 3]
[--data-root DIR] [--only node|dcmtk|pynetdicom]``

One corpus (``--instances`` CT instances of about ``--size`` KiB, made from pydicom's
CT_small.dcm with a square 16-bit pixel matrix and new UIDs, one series) is pushed by the
same sender, DCMTK ``storescu`` with ``TCP_NODELAY=1``, over ONE association to:

* the node: ``dicom-node serve`` as a subprocess with its embedded defaults, but its data
  folder in a temporary folder (SQLite), the admin page off, no worker processes and a
  quiet period of an hour so completion and routing never run during the push;
* DCMTK ``storescp`` (``TCP_NODELAY=1``), writing to a temporary folder;
* pynetdicom's bundled ``storescp`` app (``python -m pynetdicom storescp``), same.

Each receiver runs with its own defaults (maximum PDU: the node 4 MiB, so storescu sends
its largest, 128 KiB PDUs; both storescps 16 KiB). Only the node fsyncs: it answers Success
once the file and its name are on stable storage (two disk barriers per instance), the
storescps once the bytes are in the page cache. The script prints the barrier's cost on the
data folder's disk; ``--data-root /dev/shm`` (tmpfs, where fsync is free) shows the
software cost alone.

Each receiver gets a fresh process and an empty folder per run (the same SOP Instance UIDs
would otherwise be duplicates on the second run, which is a different code path). The time
is the sender's wall clock from start to exit; each receiver runs ``--repeat`` times, the
order alternating between rounds, and the median is reported. After every node run the
script checks that each instance is durable and indexed: files in the spool and rows in the
``instance`` table both equal ``--instances``.

Targets: node >= 1.5 x pynetdicom storescp and >= 0.3 x DCMTK storescp (instances/s).
A timing script, never a test: numbers vary with the machine, its load and its disk, so
each receiver's CPU time per instance is printed too (it varies less than wall time).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

# DCMTK on loopback waits for Nagle's algorithm (40 ms per PDU) unless told not to.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
NODE_AET = "DICOM_NODE"
SENDER_AET = "BENCHSCU"
# Long enough that no series completes (and no routing starts) while we push.
QUIET_SECONDS = 3600


@dataclass(frozen=True)
class Receiver:
    """One SCP under test: how to start it in a folder, on a port."""

    name: str
    called_aet: str
    start: Callable[[Path, int], subprocess.Popen[bytes]]
    verify: Callable[[Path, int], str]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) from /proc: it varies less
    than wall time when other work shares the machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fsync_latency(folder: Path, rounds: int = 20) -> float:
    """Median seconds of one write + fsync of a 1-byte file: the disk barrier the node pays
    twice per instance (the file, then its folder), and that neither storescp pays."""
    times = []
    probe = folder / "fsync-probe"
    for _ in range(rounds):
        start = time.perf_counter()
        with open(probe, "wb") as fh:
            fh.write(b"x")
            fh.flush()
            os.fsync(fh.fileno())
        times.append(time.perf_counter() - start)
    probe.unlink()
    return statistics.median(times)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the corpus ---------------------------------------------------------------------------


def make_corpus(folder: Path, instances: int, size_kib: int) -> list[Path]:
    """CT_small.dcm with a ``side x side`` 16-bit matrix, one study and series, new UIDs.

    The pixel values are a byte ramp, not zeros, so nothing on the path can shortcut them.
    """
    source = get_testdata_file("CT_small.dcm")
    if source is None:
        raise SystemExit("pydicom's test file CT_small.dcm is not installed")
    ds = pydicom.dcmread(str(source))
    side = max(int((size_kib * 1024 / 2) ** 0.5), 8)
    ds.Rows = ds.Columns = side
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(range(256)) * (side * side * 2 // 256) + b"\0" * (side * side * 2 % 256)
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(1, instances + 1):
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number
        path = folder / f"ct{number:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


# -- receivers ----------------------------------------------------------------------------


def _log_file(folder: Path) -> int:
    return os.open(folder / "receiver.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)


def start_node(folder: Path, port: int) -> subprocess.Popen[bytes]:
    """``dicom-node serve``: embedded defaults, data in ``folder``, nothing but the SCP busy."""
    exe = Path(sys.executable).with_name("dicom-node")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "dicom_node.cli"]
    env = {
        **os.environ,
        "DICOM_NODE__SCP__PORT": str(port),
        "DICOM_NODE__NODE__DATA_DIR": str(folder / "data"),
        "DICOM_NODE__WEB__ENABLED": "false",
        "DICOM_NODE__WORKERS__PROCESSES": "0",
        "DICOM_NODE__COMPLETION__QUIET_SECONDS": str(QUIET_SECONDS),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    log = _log_file(folder)
    try:
        return subprocess.Popen([*cmd, "serve"], env=env, cwd=folder, stdout=log, stderr=log)
    finally:
        os.close(log)


def start_dcmtk(folder: Path, port: int) -> subprocess.Popen[bytes]:
    out = folder / "out"
    out.mkdir()
    log = _log_file(folder)
    try:
        return subprocess.Popen(
            ["storescp", "-od", str(out), str(port)], env=DCMTK_ENV, stdout=log, stderr=log
        )
    finally:
        os.close(log)


def start_pynetdicom(folder: Path, port: int) -> subprocess.Popen[bytes]:
    out = folder / "out"
    out.mkdir()
    log = _log_file(folder)
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "pynetdicom", "storescp", str(port), "-od", str(out)],
            stdout=log,
            stderr=log,
        )
    finally:
        os.close(log)


def count_out(folder: Path, expected: int) -> str:
    found = sum(1 for p in (folder / "out").iterdir() if p.is_file())
    if found != expected:
        raise RuntimeError(f"{found} file(s) written, expected {expected}")
    return f"{found} files"


def verify_node(folder: Path, expected: int) -> str:
    """Every answered instance must be in the spool and in the index, before the node stops.

    storescu has exited, so every C-STORE got its answer: Success must mean durable and
    indexed already, not "soon".
    """
    data = folder / "data"
    spool_files = sum(1 for p in (data / "spool").glob("*/*/*.dcm") if p.is_file())
    db = sqlite3.connect(f"file:{data / 'dicom-node.db'}?mode=ro", uri=True)
    try:
        rows = int(db.execute("SELECT COUNT(*) FROM instance").fetchone()[0])
    finally:
        db.close()
    if spool_files != expected or rows != expected:
        raise RuntimeError(
            f"node: {spool_files} spool file(s) and {rows} instance row(s), expected {expected}"
        )
    return f"{spool_files} spool files, {rows} instance rows"


RECEIVERS = {
    "node": Receiver("node", NODE_AET, start_node, verify_node),
    "dcmtk": Receiver("dcmtk", "STORESCP", start_dcmtk, count_out),
    "pynetdicom": Receiver("pynetdicom", "STORESCP", start_pynetdicom, count_out),
}


@contextmanager
def running(proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """Stop the receiver whatever happens: SIGTERM, then SIGKILL if it lingers."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def wait_for_echo(proc: subprocess.Popen[bytes], port: int, aec: str, timeout: float) -> None:
    """Ready means a C-ECHO succeeds (an open port alone may precede the AE's set-up)."""
    deadline = time.monotonic() + timeout
    cmd = ["echoscu", "-aet", SENDER_AET, "-aec", aec, "127.0.0.1", str(port)]
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"receiver exited with {proc.returncode} during start-up")
        done = subprocess.run(cmd, env=DCMTK_ENV, capture_output=True, timeout=30)
        if done.returncode == 0:
            return
        time.sleep(0.1)
    raise TimeoutError(f"no C-ECHO answer on port {port} after {timeout} s")


def push(files: list[Path], port: int, aec: str) -> float:
    """storescu, one association for all files; seconds from start to exit."""
    cmd = ["storescu", "-aet", SENDER_AET, "-aec", aec, "127.0.0.1", str(port)]
    cmd += [str(f) for f in files]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=DCMTK_ENV, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"storescu failed ({done.returncode}): {done.stderr[-2000:]}")
    if done.stderr.strip():  # storescu is silent on success; anything else is a refusal
        raise RuntimeError(f"storescu reported: {done.stderr[-2000:]}")
    return elapsed


def run_once(receiver: Receiver, files: list[Path], root: Path) -> tuple[float, float]:
    """One fresh receiver, one push: (wall seconds, receiver CPU seconds during the push)."""
    folder = Path(tempfile.mkdtemp(prefix=f"{receiver.name}-", dir=root))
    port = free_port()
    try:
        with running(receiver.start(folder, port)) as proc:
            wait_for_echo(proc, port, receiver.called_aet, timeout=120)
            cpu_before = cpu_seconds(proc.pid)
            elapsed = push(files, port, receiver.called_aet)
            cpu = cpu_seconds(proc.pid) - cpu_before
            checked = receiver.verify(folder, len(files))
        print(
            f"  {receiver.name:<11} {elapsed:6.2f} s  {len(files) / elapsed:7.1f} inst/s"
            f"  cpu {cpu:5.2f} s  ({checked})",
            flush=True,
        )
        return elapsed, cpu
    except Exception:
        log = folder / "receiver.log"
        if log.exists():
            print(f"--- {receiver.name} log (tail) ---", file=sys.stderr)
            print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=300, help="instances per push")
    parser.add_argument("--size", type=int, default=512, help="approx. KiB per instance")
    parser.add_argument("--repeat", type=int, default=3, help="runs per receiver (median)")
    parser.add_argument(
        "--only", choices=sorted(RECEIVERS), action="append", help="bench only these"
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="where every receiver writes (default: the system temp folder); a tmpfs such "
        "as /dev/shm makes fsync free and so shows the software cost alone",
    )
    args = parser.parse_args(argv)
    for tool in ("storescu", "storescp", "echoscu"):
        if shutil.which(tool) is None:
            raise SystemExit(f"DCMTK's {tool} is not installed")
    # SIGTERM (a CI timeout) must unwind through the finally blocks that stop receivers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    names = args.only or ["node", "dcmtk", "pynetdicom"]
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    with (
        tempfile.TemporaryDirectory(prefix="bench-receive-") as tmp,
        tempfile.TemporaryDirectory(prefix="bench-receive-", dir=args.data_root) as root_name,
    ):
        root = Path(root_name)
        corpus = Path(tmp) / "corpus"
        files = make_corpus(corpus, args.instances, args.size)
        size = sum(f.stat().st_size for f in files) / len(files)
        barrier = fsync_latency(root)
        print(
            f"{len(files)} CT instances of {size / 1e6:.2f} MB, one association, "
            f"storescu (TCP_NODELAY=1); {os.cpu_count()} CPU(s); load average "
            f"{os.getloadavg()[0]:.1f}; fsync in {root.parent}: {barrier * 1e3:.1f} ms",
            flush=True,
        )
        for round_no in range(args.repeat):
            order = names if round_no % 2 == 0 else names[::-1]
            print(f"round {round_no + 1}/{args.repeat}", flush=True)
            for name in order:
                elapsed, used = run_once(RECEIVERS[name], files, root)
                wall[name].append(elapsed)
                cpu[name].append(used)

    count = len(files)
    rate = {name: count / statistics.median(t) for name, t in wall.items()}
    print(f"\nmedian of {args.repeat} run(s):")
    for name, value in rate.items():
        print(
            f"  {name:<11} {value:7.1f} instances/s  ({statistics.median(wall[name]):.2f} s; "
            f"receiver CPU {statistics.median(cpu[name]) / count * 1e3:.1f} ms/instance)"
        )
    if "node" in rate:
        print(
            f"  the node's two fsyncs per instance (file, folder) alone take "
            f"~{2 * barrier * count:.2f} s of its wall time here; the storescps make none"
        )
    failed = False
    for peer, target in (("pynetdicom", 1.5), ("dcmtk", 0.3)):
        if "node" not in rate or peer not in rate:
            continue
        ratio = rate["node"] / rate[peer]
        ok = ratio >= target
        failed |= not ok
        print(
            f"  node / {peer + ' storescp':<20} {ratio:5.2f}x  "
            f"(target >= {target}x)  {'PASS' if ok else 'FAIL'}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
