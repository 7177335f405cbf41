"""The doorbell: rings are never lost, never block, and cross a spawned process."""

from __future__ import annotations

import multiprocessing as mp
import time

from dicom_node.doorbell import Doorbell


def test_a_ring_before_the_wait_counts() -> None:
    bell = Doorbell()
    try:
        assert bell.wait(0) is False
        bell.ring()
        assert bell.wait(30) is True  # returns at once: the ring was kept
        assert bell.wait(0) is False  # and drained
    finally:
        bell.close()


def test_a_burst_of_rings_never_blocks_and_one_wait_drains_it() -> None:
    bell = Doorbell()
    try:
        for _ in range(200_000):  # far more than a pipe holds (64 KiB)
            bell.ring()
        assert bell.wait(30) is True
        assert bell.wait(0) is False
    finally:
        bell.close()


def test_a_closed_bell_neither_raises_nor_waits() -> None:
    bell = Doorbell()
    bell.close()
    bell.ring()
    started = time.monotonic()
    assert bell.wait(30) is False
    assert time.monotonic() - started < 10
    bell.close()


def _echo(request: Doorbell, reply: Doorbell) -> None:
    """In the child: wait for a ring, answer with one."""
    if request.wait(60):
        reply.ring()


def test_rings_cross_a_spawned_process() -> None:
    request, reply = Doorbell(), Doorbell()
    child = mp.get_context("spawn").Process(target=_echo, args=(request, reply))
    child.start()
    try:
        request.ring()
        assert reply.wait(60) is True
    finally:
        child.join(timeout=60)
        request.close()
        reply.close()
    assert child.exitcode == 0
