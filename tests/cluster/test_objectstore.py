"""The S3 side of storage against SeaweedFS (``weed server -s3``): the object spool keeps
the first copy of a SOP Instance UID, refuses with SpoolFullError (0xA700) when the store
is unreachable, and headers are read from a prefix of the object only when that is safe."""

from __future__ import annotations

import uuid
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_node.config import S3Settings
from dicom_node.receive.objectstore import HEADER_BYTES, ObjectSpool, ObjectStore, Storage
from dicom_node.receive.spool import SpoolFullError
from tests.cluster.seaweed import SeaweedS3
from tests.dicom_files import pydicom_file
from tests.peers import free_port

pytestmark = pytest.mark.cluster


@pytest.fixture
def store(seaweed: SeaweedS3) -> ObjectStore:
    objects = ObjectStore(S3Settings(**seaweed.s3_settings(f"dn-{uuid.uuid4().hex[:12]}")))
    objects.ensure_bucket()
    return objects


def _copy(tmp_path: Path, name: str, **changes: object) -> tuple[Path, Dataset]:
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path, ds


def test_object_spool_keeps_the_first_copy(store: ObjectStore, tmp_path: Path) -> None:
    spool = ObjectSpool(tmp_path / "spool", store)
    first, ds = _copy(tmp_path, "a.dcm", PatientID="FIRST")
    second, _ = _copy(tmp_path, "b.dcm", PatientID="SECOND")
    uids = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
    stored = spool.commit(first, *uids)
    again = spool.commit(second, *uids)
    assert stored.created and not again.created and stored.location == again.location
    assert stored.location == f"s3://{store.bucket}/spool/{'/'.join(uids)}.dcm"
    storage = Storage(tmp_path / "results", store)
    assert storage.read_dataset(stored.location).PatientID == "FIRST"
    with pytest.raises(ValueError, match="invalid UID"):
        spool.commit(first, "1.2", "../x", "1.3")


def test_an_unreachable_store_is_out_of_resources(tmp_path: Path) -> None:
    settings = S3Settings(
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        access_key_id="x",
        secret_access_key="x",
        timeout=2,
    )
    spool = ObjectSpool(tmp_path / "spool", ObjectStore(settings))
    path, ds = _copy(tmp_path, "a.dcm")
    with pytest.raises(SpoolFullError):
        spool.commit(path, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)


def test_headers_come_from_a_prefix_unless_the_header_is_longer(
    store: ObjectStore, tmp_path: Path
) -> None:
    storage = Storage(tmp_path / "results", store)
    small, _ = _copy(tmp_path, "small.dcm", BodyPartExamined="CHEST")
    # A private element longer than the prefix before the pixels: the prefix cannot hold
    # the header, so the whole object is read and no tag after it is lost.
    big = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    big.add_new(0x00111010, "LO", "x" * 64)
    big.add_new(0x00111011, "OB", b"\0" * (HEADER_BYTES + 10))
    big.BodyPartExamined = "HEAD"
    big_path = tmp_path / "big.dcm"
    big.save_as(big_path, enforce_file_format=True)
    for path, part in ((small, "CHEST"), (big_path, "HEAD")):
        location = store.put_file(f"spool/{path.name}", path)
        header = storage.read_dataset(location, stop_before_pixels=True)
        assert header.BodyPartExamined == part and "PixelData" not in header
    assert storage.read_dataset(store.location("spool/big.dcm")).PixelData


def test_receivers_sharing_a_spool_folder_keep_their_incoming_files_apart(
    tmp_path: Path, postgres_url: str
) -> None:
    from dicom_node.receive.objectstore import spool_for
    from tests.conftest import make_settings

    shared = {"spool_dir": str(tmp_path / "shared"), "database_url": postgres_url}
    spools = [
        spool_for(make_settings(tmp_path / name, storage=shared, cluster={"mode": "cluster"}))
        for name in ("receiver-1", "receiver-2")
    ]
    assert spools[0].root == spools[1].root and spools[0].tmp != spools[1].tmp
    in_flight = spools[0].tmp / "1-1.part"
    in_flight.write_bytes(b"an association still streaming")
    assert spools[1].clean_incoming() == 0  # the second receiver starting up
    assert in_flight.exists()
    assert spools[0].clean_incoming() == 1  # the first one's own restart


def test_the_admin_page_reads_result_objects_from_the_bucket(
    seaweed: SeaweedS3, tmp_path: Path, postgres_url: str
) -> None:
    """The web role finds results that a worker on another host stored in S3."""
    from dicom_node.receive.objectstore import storage_for
    from dicom_node.web import render
    from tests.conftest import make_settings

    settings = make_settings(
        tmp_path,
        storage={
            "backend": "s3",
            "database_url": postgres_url,
            "s3": seaweed.s3_settings(f"dn-{uuid.uuid4().hex[:12]}"),
        },
        cluster={"mode": "cluster"},
    )
    storage = storage_for(settings)
    assert storage.objects is not None
    storage.objects.ensure_bucket()
    png = render.PNG_SIGNATURE + b"rest of a picture"
    heatmap = storage.write_result("heatmaps/x.png", png)
    sr_path, _ = _copy(tmp_path, "sr.dcm")
    sr = storage.write_result("1.2/3.4/5.6.dcm", sr_path.read_bytes())
    objects = [{"kind": "sr:comprehensive3d", "path": sr}]
    assert heatmap.startswith("s3://") and render.has_gradcam(heatmap, objects)
    assert render.gradcam_png(heatmap, objects) == png
    tree, problem = render.read_sr(objects)
    assert tree is not None and problem == ""
    missing = storage.objects.location("results/none.png")
    assert not render.has_gradcam(missing, [])


def test_an_object_stored_but_not_indexed_is_indexed_at_start_up(
    store: ObjectStore, tmp_path: Path
) -> None:
    """A receiver killed between the PUT and the index commit: at its restart, the file in
    its incoming folder names the object, which is indexed; a file whose PUT never
    happened is not (its sender never got Success), and both files are removed."""
    from sqlalchemy import select

    from dicom_node.receive.reconcile import reconcile_incoming
    from dicom_node.store.db import Instance, create_engine, session_factory

    spool = ObjectSpool(tmp_path / "spool", store, tmp_path / "spool" / ".incoming" / "me")
    spool.tmp.mkdir(parents=True, exist_ok=True)
    stored, ds = _copy(spool.tmp, "put-not-indexed.dcm", SOPInstanceUID=pydicom.uid.generate_uid())
    _copy(spool.tmp, "never-put.dcm", SOPInstanceUID=pydicom.uid.generate_uid())
    uids = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
    location = spool.commit(stored, *uids).location  # the PUT returned; then the crash
    sessions = session_factory(create_engine(f"sqlite:///{tmp_path / 'node.db'}"))

    assert reconcile_incoming(spool, sessions) == 1
    with sessions() as session:
        rows = session.scalars(select(Instance)).all()
    assert [(r.sop_instance_uid, r.path) for r in rows] == [(uids[2], location)]
    assert reconcile_incoming(spool, sessions) == 0  # again: nothing new
    assert spool.clean_incoming() == 2
