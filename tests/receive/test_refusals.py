"""Refusals are recorded for the admin page: real peers (DCMTK echoscu and storescu, a
pynetdicom SCU) are refused by a running node, and each refusal is a row with calling AE,
called AE, address, status, meaning and reason; the table keeps only the newest rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
)
from sqlalchemy import select

from dicom_node.receive import refusals
from dicom_node.receive.statuses import Status
from dicom_node.store.db import Refusal, create_engine, session_factory
from dicom_node.store.states import RefusalKind
from tests.dicom_files import pydicom_file
from tests.peers import echoscu, have_dcmtk, pynetdicom_send, storescu

dcmtk = pytest.mark.skipif(not have_dcmtk(), reason="DCMTK (echoscu, storescu) not installed")


def _refusals(node: Any, count: int) -> list[Refusal]:
    """The node's refusal rows, once ``count`` of them are there (recorded off-thread)."""
    node.wait_until(
        lambda: len(node.query(select(Refusal))) >= count, timeout=20, what="refusal rows"
    )
    return node.query(select(Refusal).order_by(Refusal.id))


@dcmtk
def test_rejected_associations_are_recorded_with_the_reason(start_node: Any) -> None:
    node = start_node(scp={"allowed_calling_aes": ["GOODPACS"]})
    assert echoscu(node.port, aet="STRANGER") != 0
    assert echoscu(node.port, aet="GOODPACS", aec="NOT_US") != 0
    assert echoscu(node.port, aet="GOODPACS") == 0  # accepted: not recorded
    stranger, wrong_called = _refusals(node, 2)
    assert stranger.kind is RefusalKind.ASSOCIATION
    assert (stranger.calling_ae, stranger.called_ae, stranger.address) == (
        "STRANGER",
        "DICOM_NODE",
        "127.0.0.1",
    )
    assert "calling AE title not recognised" in stranger.meaning
    assert stranger.status is None
    assert (wrong_called.calling_ae, wrong_called.called_ae) == ("GOODPACS", "NOT_US")
    assert "called AE title not recognised" in wrong_called.meaning
    assert len(node.query(select(Refusal))) == 2


@dcmtk
def test_host_not_allowed_is_recorded(start_node: Any) -> None:
    node = start_node(scp={"allowed_hosts": ["192.0.2.10"]})
    assert echoscu(node.port) != 0
    [row] = _refusals(node, 1)
    assert row.kind is RefusalKind.CONNECTION
    assert row.address == "127.0.0.1" and row.calling_ae == ""
    assert "scp.allowed_hosts" in row.meaning


@dcmtk
def test_refused_c_store_is_recorded_with_status_and_meaning(
    start_node: Any, tmp_path: Path
) -> None:
    """storescu sends a CT whose Series Instance UID is a path: answered 0xC220 and
    recorded so (the UID never becomes a path, see test_scp)."""
    node = start_node()
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.SeriesInstanceUID = "1.2.3/../../evil"
    path = tmp_path / "bad-uid.dcm"
    ds.save_as(path, enforce_file_format=True)
    result = storescu(node.port, [path], aet="MODALITY1", extra=["-v"])
    # what storescu was told (DCMTK names the 0xC000 range "CannotUnderstand")
    assert "error: cannotunderstand" in (result.stdout + result.stderr).lower()
    [row] = _refusals(node, 1)
    assert row.kind is RefusalKind.STORE
    assert row.status == Status.INVALID_UID == 0xC220
    assert row.meaning == Status.INVALID_UID.meaning
    assert row.calling_ae == "MODALITY1" and row.called_ae == "DICOM_NODE"
    assert row.sop_instance_uid == str(ds.SOPInstanceUID)
    assert row.reason  # what the check said


def test_truncated_dataset_refusal_has_the_parse_status(start_node: Any) -> None:
    node = start_node()
    assert pynetdicom_send(node.port, [pydicom_file("CT_small.dcm")]) == [0x0000]
    assert node.query(select(Refusal)) == []  # stored instances are not refusals
    statuses = pynetdicom_send(node.port, [pydicom_file("MR_truncated.dcm")])
    assert statuses[0] >= 0xA000
    [row] = _refusals(node, 1)
    assert row.status == statuses[0]
    assert row.meaning == Status(statuses[0]).meaning
    assert row.calling_ae == "PYSCU"


def test_association_without_usable_context_is_recorded(start_node: Any) -> None:
    """A peer proposing only a Query/Retrieve model: accepted with nothing usable."""
    node = start_node()
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOM_NODE")
    assert not assoc.is_established  # pynetdicom aborts an association it cannot use
    [row] = _refusals(node, 1)
    assert row.kind is RefusalKind.ASSOCIATION
    assert row.calling_ae == "FINDSCU"
    assert "no acceptable presentation context" in row.meaning
    assert "Patient Root Query/Retrieve Information Model - FIND" in row.reason


def test_only_the_newest_refusals_are_kept(database_url: str) -> None:
    engine = create_engine(database_url)
    sessions = session_factory(engine)
    for i in range(12):
        refusals.record(
            sessions,
            RefusalKind.STORE,
            calling_ae=f"PEER{i}",
            status=0xC000,
            keep=5,
        )
    with sessions() as session:
        kept = [r.calling_ae for r in session.scalars(select(Refusal).order_by(Refusal.id))]
    assert kept == [f"PEER{i}" for i in range(7, 12)]
    engine.dispose()


def test_recorder_cuts_network_values_and_never_raises(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'r.db'}")
    sessions = session_factory(engine)
    recorder = refusals.RefusalRecorder(sessions)
    recorder.submit(RefusalKind.ASSOCIATION, calling_ae="X" * 500, address="1" * 200)
    recorder.stop()
    with sessions() as session:
        row = session.scalars(select(Refusal)).one()
    assert len(row.calling_ae) == 64 and len(row.address) == 64
    engine.dispose()
    # A database without the table: the recorder logs, the receiver is not disturbed.
    empty = create_engine(f"sqlite:///{tmp_path / 'empty.db'}", migrate=False)
    broken = refusals.RefusalRecorder(session_factory(empty))
    broken.submit(RefusalKind.CONNECTION, address="127.0.0.1")
    broken.stop()
    assert broken.dropped == 0
    empty.dispose()


def test_rejection_meanings() -> None:
    assert refusals.rejection_meaning(1, 1, 3) == (
        "rejected (permanent): calling AE title not recognised (not in scp.allowed_calling_aes)"
    )
    assert "too many associations" in refusals.rejection_meaning(2, 3, 2)
    assert refusals.rejection_meaning(None, None, None).startswith("rejected:")
