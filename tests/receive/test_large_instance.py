"""A 500 MB instance is received with less than 100 MB growth of the server's resident memory.

Scanners send multi-frame objects (breast tomosynthesis, long fluoroscopy runs, whole-slide
images) of hundreds of megabytes. The node streams each incoming dataset to a file in the
spool (``STORE_RECV_CHUNKED_DATASET``) and reads only its header, so its memory must stay flat
whatever the instance size; several such associations at once would otherwise exhaust it.

``dicom-node serve`` runs as a subprocess, so its resident memory (``/proc/<pid>/status``) is
its own; DCMTK ``storescu`` sends. The instance is written to disk frame block by frame block,
so the test itself never holds 500 MB either.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.peers import echoscu, free_port, have_dcmtk, storescu

pytestmark = [
    pytest.mark.slow,
    pytest.mark.dcmtk,
    pytest.mark.skipif(not have_dcmtk(), reason="DCMTK (storescu) not installed"),
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc"),
]

MB = 1024 * 1024
# 1000 frames of 512 x 512 16-bit pixels: 500 MiB of Pixel Data.
FRAMES, ROWS, COLUMNS = 1000, 512, 512
GROWTH_LIMIT = 100 * MB
# Multi-frame Grayscale Word Secondary Capture: a standard class for 16-bit multi-frame.
SC_MULTIFRAME_WORD = "1.2.840.10008.5.1.4.1.1.7.3"
NODE_AET = "DICOM_NODE"


@dataclass(frozen=True)
class Memory:
    """Resident set now and its high-water mark since start (or the last reset), bytes."""

    rss: int
    hwm: int


def read_memory(pid: int) -> Memory:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024  # reported in kB
    return Memory(fields["VmRSS"], fields["VmHWM"])


def reset_peak(pid: int) -> bool:
    """Set VmHWM to the current RSS (Linux >= 4.0), so the peak measured afterwards is the
    receive's own and not the start-up's (imports, migrations)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def settled_memory(pid: int, timeout: float = 20.0) -> Memory:
    """Wait until the idle node's RSS stops moving (threads started, imports done)."""
    previous = read_memory(pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        current = read_memory(pid)
        if abs(current.rss - previous.rss) < MB:
            return current
        previous = current
    return previous


def write_instance(path: Path) -> None:
    """A valid Part 10 file with FRAMES x ROWS x COLUMNS 16-bit frames, written in blocks.

    pydicom writes the header; the Pixel Data element is then appended by hand (explicit
    VR little endian: tag, "OW", 2 reserved bytes, 4-byte length) so its value is streamed
    instead of built as one 500 MB bytes object. Every block differs (its index is in its
    first bytes), so a lost, repeated or reordered block changes the hash.
    """
    ds = Dataset()
    ds.SOPClassUID = SC_MULTIFRAME_WORD
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "LARGE-1"
    ds.PatientName = "Large^Instance"
    ds.StudyDate = "20240101"
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.NumberOfFrames = FRAMES
    ds.Rows, ds.Columns = ROWS, COLUMNS
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)

    frame_bytes = ROWS * COLUMNS * 2
    frames_per_block = 16  # 8 MiB blocks
    block = bytearray(os.urandom(frame_bytes * frames_per_block))
    with open(path, "ab") as fh:
        fh.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, frame_bytes * FRAMES))
        for first in range(0, FRAMES, frames_per_block):
            count = min(frames_per_block, FRAMES - first)
            block[:8] = first.to_bytes(8, "little")
            fh.write(memoryview(block)[: count * frame_bytes])


def dataset_digest(path: Path) -> tuple[int, str]:
    """(length, SHA-256) of the dataset after the File Meta: what travelled over the wire,
    whatever File Meta the receiver wrote."""
    digest = hashlib.sha256()
    length = 0
    with open(path, "rb") as fh:
        read_preamble(fh, False)
        _read_file_meta_info(fh)
        while chunk := fh.read(8 * MB):
            digest.update(chunk)
            length += len(chunk)
    return length, digest.hexdigest()


@contextmanager
def serve(
    data_dir: Path, log_path: Path, **settings: str
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``dicom-node serve`` alone: no worker process, no admin page, no routing meanwhile.

    ``settings`` are more ``DICOM_NODE__...`` environment overrides.
    """
    port = free_port()
    env = {
        **os.environ,
        "DICOM_NODE__SCP__PORT": str(port),
        "DICOM_NODE__NODE__DATA_DIR": str(data_dir),
        "DICOM_NODE__WEB__ENABLED": "false",
        "DICOM_NODE__WORKERS__PROCESSES": "0",
        "DICOM_NODE__COMPLETION__QUIET_SECONDS": "3600",
        **settings,
    }
    exe = Path(sys.executable).with_name("dicom-node")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(exe), "serve"], env=env, cwd=data_dir.parent, stdout=log, stderr=log
        )
        try:
            deadline = time.monotonic() + 60
            while echoscu(port, aec=NODE_AET) != 0:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"node did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.2)
            yield proc, port
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@dataclass(frozen=True)
class BigInstance:
    path: Path
    length: int  # of the dataset after the File Meta
    sha256: str


@pytest.fixture(scope="module")
def big_instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BigInstance]:
    """One 500 MiB file for the module's tests, removed afterwards (not left to pytest's
    tmp_path retention, which would keep gigabytes around)."""
    path = tmp_path_factory.mktemp("large") / "big.dcm"
    try:
        write_instance(path)
        length, sha256 = dataset_digest(path)
        assert length > FRAMES * ROWS * COLUMNS * 2  # header + 500 MiB of pixels
        yield BigInstance(path, length, sha256)
    finally:
        path.unlink(missing_ok=True)


def send_with_storescu(port: int, path: Path) -> None:
    """DCMTK sends PDUs of at most 128 KiB, whatever maximum the node announces."""
    result = storescu(port, [path], aec=NODE_AET)
    assert result.returncode == 0, result.stderr
    # storescu prints nothing on Success; a refused instance is reported on stderr.
    assert "Status" not in result.stderr, result.stderr


def send_with_pynetdicom(port: int, path: Path) -> None:
    """pynetdicom streams the file from disk, but in PDUs as large as the node allows:
    with no maximum, the whole dataset is one PDU."""
    from pydicom import dcmread
    from pynetdicom import AE, _config

    meta = dcmread(path, stop_before_pixels=True).file_meta
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
        assert assoc.is_established
        status = assoc.send_c_store(path)
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
    assert int(status.Status) == 0x0000


def receive_and_measure(
    big: BigInstance, folder: Path, send: Callable[[int, Path], None], **settings: str
) -> None:
    """Send ``big`` to a fresh node; check it is stored byte-exact and indexed, and that the
    node's resident memory grew by less than GROWTH_LIMIT."""
    data_dir = folder / "data"
    data_dir.mkdir()
    try:
        with serve(data_dir, folder / "node.log", **settings) as (proc, port):
            idle = settled_memory(proc.pid)
            reset_peak(proc.pid)
            before = read_memory(proc.pid)
            send(port, big.path)
            after = read_memory(proc.pid)

        # Durable and indexed, byte for byte as sent.
        (stored,) = list((data_dir / "spool").glob("*/*/*.dcm"))
        db = sqlite3.connect(data_dir / "dicom-node.db")
        try:
            rows = db.execute("SELECT path, size FROM instance").fetchall()
        finally:
            db.close()
        assert rows == [(str(stored), stored.stat().st_size)]
        assert dataset_digest(stored) == (big.length, big.sha256)

        # The peak since the reset; if the reset was refused, the peak since start-up,
        # which can only make the growth look larger, never smaller.
        growth = max(after.hwm, after.rss) - before.rss
        summary = (
            f"{big.length / MB:.0f} MiB instance: node RSS idle {idle.rss / MB:.0f} MiB, "
            f"before {before.rss / MB:.0f} MiB, after {after.rss / MB:.0f} MiB, peak "
            f"{after.hwm / MB:.0f} MiB: growth {growth / MB:.1f} MiB"
        )
        print(f"\n{summary}")
        assert growth < GROWTH_LIMIT, summary
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)  # another 500 MB


def test_500_mb_instance_received_with_flat_memory(
    big_instance: BigInstance, tmp_path: Path
) -> None:
    """The node's embedded defaults, DCMTK storescu as the sender."""
    receive_and_measure(big_instance, tmp_path, send_with_storescu)


def test_largest_pdus_with_the_default_max_pdu(big_instance: BigInstance, tmp_path: Path) -> None:
    """A sender that uses the largest PDUs the node allows (pynetdicom, chunked) stays flat:
    pynetdicom's DUL reads each PDU whole into memory (and copies it), so the bounded
    default ``scp.max_pdu_size`` (4 MiB) is what keeps memory per association small; with
    0 (unlimited) this sender made the node grow by ~2 GB."""
    receive_and_measure(big_instance, tmp_path, send_with_pynetdicom)
