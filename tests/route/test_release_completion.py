"""Per-sender completion: a clean A-RELEASE from a release AE ends its series after a grace.

Senders talk to a running node over loopback sockets (pynetdicom as the SCU, so the tests
choose between A-RELEASE and A-ABORT and interleave associations). Assertions are on series
states and the events that say which policy completed a series, not on timings: quiet periods
are long enough that a completion seconds after the release can only be the release policy.
"""

from __future__ import annotations

import copy
import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from sqlalchemy import select, update

from dicom_node.receive.index import InstanceMeta, index_instance
from dicom_node.receive.scp import ReleasedAssociation
from dicom_node.route.completion import complete_released_series, release_notices
from dicom_node.store.db import Event, Series, create_engine, session_factory, utcnow
from tests.conftest import NodeHandle, make_settings
from tests.dicom_files import pydicom_file

RELEASE_AE = "PACS1"
# Long enough that no release-policy assertion can be met by the quiet period instead.
LONG_QUIET = 60.0


@pytest.fixture(scope="module")
def template() -> Dataset:
    return pydicom.dcmread(pydicom_file("CT_small.dcm"))


def _series(template: Dataset, count: int) -> list[Dataset]:
    """``count`` instances of one new series (new study, series and SOP Instance UIDs)."""
    study, series = generate_uid(), generate_uid()
    out = []
    for number in range(1, count + 1):
        ds = copy.deepcopy(template)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number
        out.append(ds)
    return out


@pytest.fixture
def associate(template: Dataset) -> Iterator[Any]:
    """Factory: ``associate(port, calling_ae)`` opens an association; all end at teardown."""
    opened: list[Association] = []

    def _open(port: int, calling_ae: str) -> Association:
        ae = AE(ae_title=calling_ae)
        ae.add_requested_context(template.SOPClassUID, [template.file_meta.TransferSyntaxUID])
        assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_NODE")
        assert assoc.is_established
        opened.append(assoc)
        return assoc

    yield _open
    for assoc in opened:
        if assoc.is_established:
            assoc.abort()


def _send(assoc: Association, datasets: list[Dataset]) -> None:
    for ds in datasets:
        assert assoc.send_c_store(ds).Status == 0x0000


def _node(start_node: Any, quiet: float, grace: float) -> NodeHandle:
    handle: NodeHandle = start_node(
        completion={
            "quiet_seconds": quiet,
            "release_aes": [RELEASE_AE],
            "release_grace_seconds": grace,
        }
    )
    return handle


def _state(node: NodeHandle, series_uid: str) -> str:
    (series,) = node.query(select(Series).where(Series.series_uid == series_uid))
    return str(series.state)


def _events(node: NodeHandle, series_uid: str, kind: str) -> list[Event]:
    return node.query(select(Event).where(Event.series_uid == series_uid, Event.kind == kind))


def _completed(node: NodeHandle, series_uid: str, timeout: float) -> dict[str, Any]:
    node.wait_until(
        lambda: bool(_events(node, series_uid, "series.completed")),
        timeout=timeout,
        what="series completed",
    )
    (event,) = _events(node, series_uid, "series.completed")
    return dict(event.detail)


def test_a_clean_release_completes_the_series_after_the_grace(
    start_node: Any, associate: Any, template: Dataset
) -> None:
    node = _node(start_node, quiet=LONG_QUIET, grace=0.3)
    instances = _series(template, 3)
    assoc = associate(node.port, RELEASE_AE)
    _send(assoc, instances)
    assoc.release()
    detail = _completed(node, instances[0].SeriesInstanceUID, timeout=20)
    assert detail["policy"] == "release" and detail["calling_ae"] == RELEASE_AE
    assert detail["instances"] == 3
    assert detail["grace_seconds"] >= 0.3  # never before the grace
    # No route matches a CT in these settings: complete, then unrouted.
    assert _state(node, instances[0].SeriesInstanceUID) == "unrouted"


def test_other_senders_wait_for_the_quiet_period(
    start_node: Any, associate: Any, template: Dataset
) -> None:
    node = _node(start_node, quiet=2.0, grace=0.1)
    instances = _series(template, 2)
    assoc = associate(node.port, "MODALITY")
    _send(assoc, instances)
    assoc.release()
    detail = _completed(node, instances[0].SeriesInstanceUID, timeout=30)
    assert detail["policy"] == "quiet" and detail["quiet_seconds"] >= 2.0


def test_an_abort_waits_for_the_quiet_period(
    start_node: Any, associate: Any, template: Dataset
) -> None:
    node = _node(start_node, quiet=2.0, grace=0.1)
    instances = _series(template, 2)
    assoc = associate(node.port, RELEASE_AE)
    _send(assoc, instances)
    assoc.abort()
    detail = _completed(node, instances[0].SeriesInstanceUID, timeout=30)
    assert detail["policy"] == "quiet" and detail["quiet_seconds"] >= 2.0


def test_a_series_still_arriving_on_another_association_stays_open(
    start_node: Any, associate: Any, template: Dataset
) -> None:
    node = _node(start_node, quiet=LONG_QUIET, grace=0.1)
    first, second, third = _series(template, 3)
    series_uid = first.SeriesInstanceUID
    a = associate(node.port, RELEASE_AE)
    b = associate(node.port, RELEASE_AE)
    _send(a, [first])
    _send(b, [second])
    a.release()  # b is still open and has sent part of the series
    node.wait_until(
        lambda: bool(_events(node, series_uid, "series.release_ignored")),
        timeout=20,
        what="release ignored",
    )
    (ignored,) = _events(node, series_uid, "series.release_ignored")
    assert "another open association" in ignored.detail["reason"]
    assert _state(node, series_uid) == "receiving"
    # The last association ends cleanly: now the release completes the whole series.
    _send(b, [third])
    b.release()
    detail = _completed(node, series_uid, timeout=20)
    assert detail["policy"] == "release" and detail["instances"] == 3


def test_an_instance_after_the_release_keeps_the_series_open(
    start_node: Any, associate: Any, template: Dataset
) -> None:
    # The grace ends first (the late instance must come within it), then the quiet period.
    node = _node(start_node, quiet=6.0, grace=2.0)
    first, late = _series(template, 2)
    series_uid = first.SeriesInstanceUID
    a = associate(node.port, RELEASE_AE)
    _send(a, [first])
    a.release()
    b = associate(node.port, "MODALITY")  # within the grace, on another association
    _send(b, [late])
    b.release()
    detail = _completed(node, series_uid, timeout=30)
    assert detail["policy"] == "quiet" and detail["instances"] == 2
    assert detail["quiet_seconds"] >= 6.0
    (ignored,) = _events(node, series_uid, "series.release_ignored")
    assert "arrived after the release" in ignored.detail["reason"]


# -- the claim itself, with chosen times ---------------------------------------------------


def _index(sessions: Any, ct: Path, series_uid: str, number: int) -> None:
    meta = InstanceMeta(
        study_uid="1.2.3",
        series_uid=series_uid,
        sop_instance_uid=f"{series_uid}.{number}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="CT",
    )
    index_instance(sessions, meta, ct, ct.stat().st_size)


def test_the_release_claim_checks_the_last_instance_time(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, completion={"quiet_seconds": LONG_QUIET, "release_aes": [RELEASE_AE]}
    )
    engine = create_engine(settings.database_url)
    sessions = session_factory(engine)
    ct = pydicom_file("CT_small.dcm")
    _index(sessions, ct, "1.2.3.1", 1)
    _index(sessions, ct, "1.2.3.2", 1)
    released_at = utcnow()
    _index(sessions, ct, "1.2.3.2", 2)  # after the release: keeps 1.2.3.2 open

    def released(ae: str) -> ReleasedAssociation:
        return ReleasedAssociation(ae, frozenset({"1.2.3.1", "1.2.3.2"}), frozenset(), released_at)

    assert release_notices(released("MODALITY"), settings) == ([], [])
    notices, kept_open = release_notices(released(RELEASE_AE), settings)
    assert kept_open == [] and [n.series_uid for n in notices] == ["1.2.3.1", "1.2.3.2"]
    assert all(n.due == released_at + dt.timedelta(seconds=1.0) for n in notices)
    now = released_at + dt.timedelta(seconds=1.0)
    assert complete_released_series(sessions, settings, notices, now=now) == 1
    assert complete_released_series(sessions, settings, notices, now=now) == 0  # claimed once
    with sessions() as session:
        states = {s.series_uid: s.state for s in session.scalars(select(Series))}
    assert states == {"1.2.3.1": "unrouted", "1.2.3.2": "receiving"}
    engine.dispose()


def test_a_series_cut_by_a_restart_waits_a_quiet_period_from_the_restart(
    start_node: Any, associate: Any, template: Dataset
) -> None:
    """A push cut by a stop must not be routed on its partial instances right at restart,
    even though its last instance is older than the quiet period by then."""
    quiet = 4.0
    first = start_node(completion={"quiet_seconds": 600})
    partial = _series(template, 3)[:2]  # the third never arrives: the node stopped
    assoc = associate(first.port, "MODALITY")
    _send(assoc, partial)
    assoc.abort()
    series_uid = str(partial[0].SeriesInstanceUID)
    first.node.stop()
    # Older than the next node's quiet period already: without the rule it is due at once.
    with first.node.sessions() as session:
        session.execute(
            update(Series)
            .where(Series.series_uid == series_uid)
            .values(last_received_at=utcnow() - dt.timedelta(seconds=10 * quiet))
        )
        session.commit()

    started = utcnow()
    second = start_node(completion={"quiet_seconds": quiet})  # same data folder
    time.sleep(quiet / 2)
    assert _state(second, series_uid) == "receiving"
    detail = _completed(second, series_uid, timeout=30)
    (event,) = _events(second, series_uid, "series.completed")
    assert event.time >= started + dt.timedelta(seconds=quiet)
    assert detail["instances"] == 2
