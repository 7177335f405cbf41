"""Hostile input at the DICOM door, sent over real sockets: each refusal is checked for its
status, the memory it cost the node and the log lines it wrote."""

from __future__ import annotations

import io
import logging
import zlib
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite, write_file_meta_info
from pydicom.uid import CTImageStorage, DeflatedExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config

from dicom_node.receive.statuses import Status

GIB = 1024**3


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM (the peak resident size) to VmRSS."""
    Path("/proc/self/clear_refs").write_text("5")


def _deflate_bomb(folder: Path, inflated: int) -> tuple[Path, str]:
    """A Part 10 file of a deflated dataset whose private OB element is ``inflated`` zero
    bytes: about 1 MB on the wire per GiB once inflated."""
    sop_uid = generate_uid()
    head, tail = Dataset(), Dataset()
    head.SOPClassUID = CTImageStorage
    head.SOPInstanceUID = sop_uid
    head.Modality = "CT"
    head.add_new(0x00090010, "LO", "BOMB")
    tail.PatientID = "BOMB"
    tail.StudyInstanceUID = generate_uid()
    tail.SeriesInstanceUID = generate_uid()

    def body(ds: Dataset) -> bytes:
        buffer = io.BytesIO()
        dcmwrite(buffer, ds, implicit_vr=False, little_endian=True)
        return buffer.getvalue()

    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = io.BytesIO()
    out.write(deflater.compress(body(head)))
    out.write(deflater.compress(b"\x09\x00\x10\x10OB\x00\x00" + inflated.to_bytes(4, "little")))
    zeros = bytes(16 * 1024 * 1024)
    for _ in range(inflated // len(zeros)):
        out.write(deflater.compress(zeros))
    out.write(deflater.compress(body(tail)))
    out.write(deflater.flush())

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = folder / "bomb.dcm"
    with open(path, "wb") as fh:
        fh.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(fh, meta)
        fh.write(out.getvalue())
    return path, sop_uid


def _send_raw(port: int, path: Path) -> list[int]:
    """C-STORE a deflated CT file as its bytes stand (pynetdicom's chunked sending), without
    reading the dataset here: the sender shares the node's process and memory figure."""
    ae = AE(ae_title="BOMBER")
    ae.add_requested_context(CTImageStorage, [DeflatedExplicitVRLittleEndian])
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_NODE")
        assert assoc.is_established
        status = assoc.send_c_store(path)
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
    return [int(status.Status)]


def test_a_deflate_bomb_is_refused_without_inflating_it(
    start_node: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = start_node()
    bomb, sop_uid = _deflate_bomb(tmp_path, GIB)
    assert bomb.stat().st_size < 2 * 1024 * 1024  # 1 GiB inflated, ~1 MB sent

    caplog.set_level(logging.INFO, logger="dicom_node")
    _reset_peak_rss()
    before = _rss_kib("VmRSS")
    [status] = _send_raw(node.port, bomb)
    growth_mib = (_rss_kib("VmHWM") - before) / 1024

    assert status == Status.CANNOT_PARSE
    assert growth_mib < 64, f"receiving the bomb grew the node by {growth_mib:.0f} MiB"
    refusals = [r for r in caplog.records if sop_uid in r.getMessage()]
    assert len(refusals) == 1
    assert "inflates past 268435456 bytes (scp.max_inflated_size)" in refusals[0].getMessage()
    # Nothing of it was kept, and the node still serves.
    assert not list(node.settings.spool_dir.glob("*/*/*.dcm"))
    assert not list((node.settings.spool_dir / ".incoming").iterdir())


def test_a_deflated_dataset_under_the_bound_is_stored(start_node: Any, tmp_path: Path) -> None:
    node = start_node(scp={"max_inflated_size": 64 * 1024 * 1024})
    small, sop_uid = _deflate_bomb(tmp_path, 16 * 1024 * 1024)
    assert _send_raw(node.port, small) == [Status.SUCCESS]
    [stored] = node.settings.spool_dir.glob(f"*/*/{sop_uid}.dcm")
    assert _dataset_bytes(stored) == _dataset_bytes(small)  # as sent, still deflated


def _dataset_bytes(path: Path) -> bytes:
    """What follows the File Meta (the node writes its own, with its implementation UID)."""
    data = path.read_bytes()
    return data[144 + int.from_bytes(data[140:144], "little") :]
