"""Several dispatchers (cluster mode): each due delivery is claimed by one of them, a gone
dispatcher's claims are taken over, and a worker's wake-up reaches a dispatcher through
RabbitMQ (no poll wait between a job's results and their delivery)."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.cluster.broker import DeliveryBell, DeliveryBellListener, delete_queues, make_app
from dicom_node.cluster.members import Membership
from dicom_node.cluster.queues import delivery_queue
from dicom_node.config import Settings
from dicom_node.dispatch.delivery import Deliverer, DeliveryItem
from dicom_node.store.db import ClusterMember, Delivery, create_engine, session_factory, utcnow
from dicom_node.store.states import DeliveryState
from tests.conftest import make_settings
from tests.peers import free_port

DESTINATION = {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}


def _cluster_settings(tmp_path: Path, database_url: str, prefix: str = "dn-test") -> Settings:
    return make_settings(
        tmp_path,
        storage={"database_url": database_url},
        cluster={"mode": "cluster", "queue_prefix": prefix},
        destinations=[DESTINATION],
    )


def _deliveries(sessions: sessionmaker[Session], count: int) -> list[int]:
    with sessions() as session:
        rows = [
            Delivery(
                destination="pacs",
                kind="sr",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
                sop_instance_uid=f"1.2.3.{i}",
                study_uid="1.2.3",
                path=f"/nowhere/{i}.dcm",
            )
            for i in range(count)
        ]
        session.add_all(rows)
        session.commit()
        return [row.id for row in rows]


def _ids(groups: dict[str, list[DeliveryItem]]) -> set[int]:
    return {item.id for items in groups.values() for item in items}


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_dispatchers_claim_each_delivery_once_and_take_over_from_a_gone_one(
    database_url: str, tmp_path: Path
) -> None:
    settings = _cluster_settings(tmp_path, database_url)
    sessions = session_factory(create_engine(database_url))
    ids = _deliveries(sessions, 200)
    names = ["dispatch@a:1", "dispatch@b:2"]
    for name in names:
        Membership(sessions, settings, "dispatch", name=name)._upsert()
    first, second = (Deliverer(settings, sessions, claimer=name) for name in names)

    # Both scan at once, in small batches, until nothing is left: every row goes to one.
    taken: dict[str, set[int]] = {name: set() for name in names}
    start = threading.Barrier(2)

    def scan(deliverer: Deliverer) -> None:
        start.wait()
        mine = taken[deliverer.claimer]
        deadline = time.monotonic() + 30
        # Scan until every row is someone's: a scan may come back empty while the other
        # dispatcher holds the candidates it is claiming.
        while len(taken[names[0]]) + len(taken[names[1]]) < len(ids):
            assert time.monotonic() < deadline, "the rows were not all claimed in 30 s"
            mine |= _ids(deliverer.due(utcnow(), limit=5, skip=frozenset(mine)))
            time.sleep(0.02)  # "sending" the batch: the other dispatcher scans meanwhile

    threads = [threading.Thread(target=scan, args=(d,)) for d in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not taken[names[0]] & taken[names[1]]
    assert taken[names[0]] | taken[names[1]] == set(ids)
    assert taken[names[0]] and taken[names[1]]  # both got work

    # The first dispatcher is alive: its claims stay its own.
    assert second.due(utcnow(), skip=frozenset(taken[names[1]])) == {}
    # ... until its heartbeat is stale (SIGKILL, a lost host): then the second takes over.
    stale = utcnow() - dt.timedelta(seconds=settings.cluster.member_timeout + 5)
    with sessions() as session:
        session.execute(
            update(ClusterMember).where(ClusterMember.name == names[0]).values(seen_at=stale)
        )
        session.commit()
    over = second.due(utcnow(), limit=500, skip=frozenset(taken[names[1]]))
    assert _ids(over) == taken[names[0]]

    # An attempt's outcome ends the claim: a retry later may go to any dispatcher.
    item = over["pacs"][0]
    second._record(item, settings.destination("pacs"), 0xA700, "out of resources")
    with sessions() as session:
        row = session.get(Delivery, item.id)
        assert row is not None
        assert (row.state, row.claimed_by, row.attempts) == (DeliveryState.PENDING, None, 1)


def test_the_embedded_node_claims_as_node_and_reclaims_after_a_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'node.db'}"
    settings = make_settings(tmp_path, storage={"database_url": url}, destinations=[DESTINATION])
    sessions = session_factory(create_engine(url))
    ids = _deliveries(sessions, 3)
    assert _ids(Deliverer(settings, sessions).due(utcnow())) == set(ids)
    # A restarted node (a new Deliverer) finds its own claims and sends them.
    assert _ids(Deliverer(settings, sessions).due(utcnow())) == set(ids)
    with sessions() as session:
        assert {session.get(Delivery, i).claimed_by for i in ids} == {"node"}  # type: ignore[union-attr]


@pytest.mark.cluster
def test_a_workers_wakeup_reaches_a_dispatcher_through_the_broker(
    rabbitmq: str, tmp_path: Path
) -> None:
    prefix = f"dn-test-{uuid.uuid4().hex[:8]}"
    settings = make_settings(
        tmp_path,
        storage={"database_url": "postgresql://unused@127.0.0.1/unused"},
        cluster={"mode": "cluster", "queue_prefix": prefix, "broker_url": rabbitmq},
    )
    app = make_app(settings)
    rung = threading.Event()
    listener = DeliveryBellListener(settings, app, rung.set)
    bell = DeliveryBell(settings, app, "worker@test:1")
    try:
        listener.start()
        assert listener.connected.wait(30), "the listener did not connect to RabbitMQ"
        bell.start()
        bell.ring()
        assert rung.wait(10), "no wake-up within 10 s"
        assert listener.rings == 1
    finally:
        bell.stop()
        listener.stop()
        with contextlib.suppress(Exception):
            delete_queues(settings, [delivery_queue(settings)])


def test_a_wakeup_without_a_broker_costs_one_log_line_per_outage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker is down: rings never block the worker, and the outage is one line."""
    settings = make_settings(
        tmp_path,
        storage={"database_url": "postgresql://unused@127.0.0.1/unused"},
        cluster={"mode": "cluster", "broker_url": f"amqp://guest:guest@127.0.0.1:{free_port()}//"},
    )
    bell = DeliveryBell(settings, make_app(settings), "worker@test:1")
    bell.start()
    try:
        for attempt in range(1, 4):
            bell.ring()
            deadline = time.monotonic() + 30
            while bell.failed < attempt and time.monotonic() < deadline:
                time.sleep(0.05)
            assert bell.failed == attempt
    finally:
        bell.stop()
    lines = [
        r.getMessage() for r in caplog.records if "could not wake the dispatchers" in r.getMessage()
    ]
    assert len(lines) == 1, lines
    assert bell.sent == 0
