"""Receiving over real sockets: DCMTK echoscu/storescu and a pynetdicom SCU send to the node."""

from __future__ import annotations

import copy
import io
import subprocess
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from sqlalchemy import select

from dicom_node.store.db import Event, Instance, Series, Study
from tests.dicom_files import (
    TRANSFER_SYNTAX_FILES,
    dataset_bytes,
    pydicom_file,
    with_required_uids,
)
from tests.peers import echoscu, have_dcmtk, pynetdicom_send, storescu

dcmtk = pytest.mark.skipif(not have_dcmtk(), reason="DCMTK (storescu) not installed")


@dcmtk
def test_echo_with_dcmtk_and_cli(start_node: Any) -> None:
    node = start_node()
    assert echoscu(node.port) == 0
    from dicom_node.cli import main

    assert main(["echo", "127.0.0.1", str(node.port), "--aec", "DICOM_NODE"]) == 0


@pytest.mark.parametrize("syntax", sorted(TRANSFER_SYNTAX_FILES))
def test_every_transfer_syntax_stored_byte_exact(
    start_node: Any, syntax: str, tmp_path: Path
) -> None:
    node = start_node()
    source = with_required_uids(pydicom_file(TRANSFER_SYNTAX_FILES[syntax]), tmp_path)
    assert pynetdicom_send(node.port, [source]) == [0x0000]
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    rows = node.query(select(Instance).where(Instance.sop_instance_uid == ds.SOPInstanceUID))
    assert len(rows) == 1
    stored = Path(rows[0].path)
    assert stored.is_relative_to(node.settings.spool_dir)
    assert dataset_bytes(stored) == dataset_bytes(source)
    assert rows[0].transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
    assert rows[0].size == stored.stat().st_size


# storescu proposes uncompressed syntaxes unless told which compressed one to offer.
_STORESCU_SYNTAX_OPTION = {
    "1.2.840.10008.1.2": [],
    "1.2.840.10008.1.2.1": [],
    "1.2.840.10008.1.2.2": ["-xb"],
    "1.2.840.10008.1.2.1.99": ["-xd"],
    "1.2.840.10008.1.2.4.50": ["-xy"],
    "1.2.840.10008.1.2.4.51": ["-xx"],
    "1.2.840.10008.1.2.4.70": ["-xs"],
    "1.2.840.10008.1.2.4.80": ["-xt"],
    "1.2.840.10008.1.2.4.81": ["-xu"],
    "1.2.840.10008.1.2.4.90": ["-xv"],
    "1.2.840.10008.1.2.4.91": ["-xw"],
    "1.2.840.10008.1.2.5": ["-xr"],
}


@dcmtk
def test_storescu_every_transfer_syntax(start_node: Any, tmp_path: Path) -> None:
    """DCMTK storescu offering each file's own transfer syntax: the node accepts them all."""
    node = start_node()
    files = [with_required_uids(pydicom_file(n), tmp_path) for n in TRANSFER_SYNTAX_FILES.values()]
    for path in files:
        syntax = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        result = storescu(node.port, [path], extra=_STORESCU_SYNTAX_OPTION[syntax])
        assert result.returncode == 0, f"{path.name} ({syntax}): {result.stderr}"
    uids = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    stored = {i.sop_instance_uid for i in node.query(select(Instance))}
    assert stored == uids
    originals = {pydicom.dcmread(f).SOPInstanceUID: f for f in files}
    for instance in node.query(select(Instance)):
        ds = pydicom.dcmread(instance.path)
        original = pydicom.dcmread(originals[instance.sop_instance_uid])
        try:
            expected = original.pixel_array
        except RuntimeError:
            # pydicom's JPEG-lossy.dcm is malformed (misplaced marker); no decoder reads it.
            assert original.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.51"
            continue
        assert (ds.pixel_array == expected).all()  # DCMTK may re-encode, pixels must agree


def test_index_records_study_series_instance_and_events(start_node: Any) -> None:
    node = start_node()
    source = pydicom_file("CT_small.dcm")
    assert pynetdicom_send(node.port, [source], aet="MODALITY1") == [0]
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    (study,) = node.query(select(Study))
    (series,) = node.query(select(Series))
    (instance,) = node.query(select(Instance))
    assert study.study_uid == ds.StudyInstanceUID
    assert study.patient_id == ds.PatientID
    assert series.series_uid == ds.SeriesInstanceUID
    assert series.modality == "CT"
    assert series.calling_ae == "MODALITY1"
    assert instance.calling_ae == "MODALITY1"
    assert instance.remote_address == "127.0.0.1"
    assert instance.sop_class_uid == CTImageStorage
    kinds = [e.kind for e in node.query(select(Event).order_by(Event.id))]
    assert kinds[0] == "instance.received"


def test_duplicate_is_accepted_once(start_node: Any) -> None:
    node = start_node()
    source = pydicom_file("CT_small.dcm")
    assert pynetdicom_send(node.port, [source, source]) == [0, 0]
    assert pynetdicom_send(node.port, [source]) == [0]
    assert len(node.query(select(Instance))) == 1
    (series,) = node.query(select(Series))
    assert series.instance_count == 1
    duplicates = node.query(select(Event).where(Event.kind == "instance.duplicate"))
    assert len(duplicates) == 2


# -- bad input ------------------------------------------------------------------------------


def test_truncated_file_is_refused(start_node: Any, caplog: pytest.LogCaptureFixture) -> None:
    node = start_node()
    statuses = pynetdicom_send(node.port, [pydicom_file("MR_truncated.dcm")])
    assert statuses == [0xC210]
    assert node.query(select(Instance)) == []
    assert "truncated" in caplog.text
    # The node still works afterwards.
    assert pynetdicom_send(node.port, [pydicom_file("CT_small.dcm")]) == [0]


def _file_without(tmp_path: Path, keyword: str, value: str | None = None) -> Path:
    """A copy of CT_small whose dataset lacks (or has a bad) ``keyword``; the File Meta still
    names the instance, so pynetdicom sends it."""
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    sop_uid = ds.SOPInstanceUID
    if value is None:
        delattr(ds, keyword)
    else:
        setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    path = tmp_path / f"bad-{keyword}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_missing_sop_instance_uid_is_refused(start_node: Any, tmp_path: Path) -> None:
    node = start_node()
    path = _file_without(tmp_path, "SOPInstanceUID")
    assert pynetdicom_send(node.port, [path]) == [0xC220]
    assert node.query(select(Instance)) == []


def test_uid_with_path_traversal_never_becomes_a_path(start_node: Any, tmp_path: Path) -> None:
    node = start_node()
    path = _file_without(tmp_path, "SeriesInstanceUID", "1.2.3/../../../../tmp/evil")
    assert pynetdicom_send(node.port, [path]) == [0xC220]
    assert node.query(select(Instance)) == []
    spool = node.settings.spool_dir
    assert not any("evil" in str(p) for p in spool.parent.rglob("*"))


def test_sop_class_mismatch_is_refused(start_node: Any, tmp_path: Path) -> None:
    node = start_node()
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage, but sent as CT
    assert ds.file_meta.MediaStorageSOPClassUID == CTImageStorage
    path = tmp_path / "mismatch.dcm"
    pydicom.dcmwrite(path, ds, enforce_file_format=False)  # keep the CT File Meta
    assert pynetdicom_send(node.port, [path]) == [0xA900]


@dcmtk
def test_calling_ae_allow_list(start_node: Any) -> None:
    node = start_node(scp={"allowed_calling_aes": ["GOODPACS"]})
    assert echoscu(node.port, aet="GOODPACS") == 0
    assert echoscu(node.port, aet="STRANGER") != 0
    result = storescu(node.port, [pydicom_file("CT_small.dcm")], aet="STRANGER")
    assert result.returncode != 0
    assert node.query(select(Instance)) == []
    assert node.node.scp.stats.rejected_associations >= 2


@dcmtk
def test_called_ae_is_checked(start_node: Any) -> None:
    node = start_node()
    assert echoscu(node.port, aec="SOMEONE_ELSE") != 0
    assert echoscu(node.port, aec="DICOM_NODE") == 0


@dcmtk
def test_host_allow_list(start_node: Any) -> None:
    node = start_node(scp={"allowed_hosts": ["192.0.2.10"]})
    assert echoscu(node.port) != 0
    assert node.node.scp.stats.rejected_associations >= 1


def test_full_disk_answers_out_of_resources(start_node: Any, tmp_path: Path) -> None:
    """The spool on a 300 KB tmpfs: the first small file fits, a bigger one does not."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        node = start_node(storage={"spool_dir": str(mount / "spool")})
        small = pydicom_file("CT_small.dcm")  # 39 KB
        assert pynetdicom_send(node.port, [small]) == [0]
        big = _big_ct(tmp_path, 600_000)
        assert pynetdicom_send(node.port, [big]) == [0xA700]
        # Nothing partial is left behind and the first instance is intact.
        assert len(node.query(select(Instance))) == 1
        assert list((mount / "spool" / ".incoming").iterdir()) == []
        assert pydicom.dcmread(node.query(select(Instance))[0].path).SOPInstanceUID
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _big_ct(tmp_path: Path, size: int) -> Path:
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    side = int((size // 2) ** 0.5)
    ds.Rows = ds.Columns = side
    ds.PixelData = b"\x00\x01" * side * side
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = tmp_path / "big.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_unparseable_dataset_is_refused(start_node: Any) -> None:
    """A C-STORE whose dataset bytes are garbage gets a 0xC000-range status."""
    node = start_node()
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    # Replace the dataset after the meta with an element that claims 1 GB.
    raw = buf.getvalue()
    meta_end = len(raw) - len(dataset_bytes_from(raw))
    garbage = raw[:meta_end] + b"\x08\x00\x16\x00UI\x00\x00" + b"\xff\xff\xff\x3f"
    path = Path(node.settings.data_dir) / "garbage.dcm"
    path.write_bytes(garbage)
    statuses = pynetdicom_send(node.port, [path])
    assert 0xC000 <= statuses[0] <= 0xCFFF
    assert node.query(select(Instance)) == []


def dataset_bytes_from(raw: bytes) -> bytes:
    path = Path("/dev/shm") / f"dn-{generate_uid()}.dcm"
    path.write_bytes(raw)
    try:
        return dataset_bytes(path)
    finally:
        path.unlink()


def test_verification_with_pynetdicom(start_node: Any) -> None:
    node = start_node()
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOM_NODE")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()


def test_concurrent_associations_same_series(start_node: Any) -> None:
    """Several senders creating the same study/series at once: all indexed, counts right."""
    import threading

    node = start_node()
    base = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    datasets = []
    for i in range(24):
        ds = copy.deepcopy(base)
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        datasets.append(ds)
    results: list[list[int]] = []

    def send(chunk: list[Dataset]) -> None:
        results.append(pynetdicom_send(node.port, chunk, chunked=False))

    threads = [threading.Thread(target=send, args=(datasets[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(s for r in results for s in r) == [0] * 24
    (series,) = node.query(select(Series))
    assert series.instance_count == 24
    assert len(node.query(select(Instance))) == 24


def test_restart_indexes_spool_files_without_index_row(start_node: Any, tmp_path: Path) -> None:
    """A crash between the file's link into the spool and the database commit leaves a
    durable file without a row (its sender got no Success); start-up indexes it, and
    removes partial files left in the incoming folder."""
    from dicom_node.receive.spool import Spool

    first = start_node()
    spool_dir = first.settings.spool_dir
    first.node.stop()
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    spool = Spool(spool_dir)
    target = spool.path_for(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    target.parent.mkdir(parents=True)
    target.write_bytes(pydicom_file("CT_small.dcm").read_bytes())
    (spool.tmp / "partial.part").write_bytes(b"\x00" * 10)
    node = start_node(node={"data_dir": str(first.settings.data_dir)}, scp={"port": first.port})
    (row,) = node.query(select(Instance))
    assert row.sop_instance_uid == ds.SOPInstanceUID and row.path == str(target)
    assert list(spool.tmp.iterdir()) == []
