"""A worker process spawned while an admin's edit is being put in force gets that edit.

``replace`` tells its subscribers (the node forwards the edit to the running workers)
before it swaps ``current``. A worker spawned in between would read the old settings and
never hear of the new ones; ``LiveSettings.held`` (used by ``Node._spawn_worker``) makes
it wait until the edit is whole.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from dicom_node.config import LiveSettings, Settings
from tests.conftest import make_settings


def test_a_snapshot_taken_during_an_edit_waits_for_it(tmp_path: Path) -> None:
    live = LiveSettings(make_settings(tmp_path))
    publishing, release = threading.Event(), threading.Event()

    def forward_to_workers(settings: Settings, version: int) -> None:
        publishing.set()
        release.wait(10)

    live.subscribe(forward_to_workers)
    edited = live.current.model_copy(update={"source": "edited on the page"})
    editor = threading.Thread(target=live.replace, args=(edited,))
    editor.start()
    assert publishing.wait(10)
    seen: list[tuple[Settings, int]] = []

    def spawn() -> None:
        with live.held() as snapshot:
            seen.append(snapshot)

    spawner = threading.Thread(target=spawn)
    spawner.start()
    time.sleep(0.2)
    assert seen == []  # the edit is half done: no snapshot of the old settings
    release.set()
    editor.join(10)
    spawner.join(10)
    assert seen == [(edited, 1)]


def test_edits_made_while_a_worker_starts_reach_it(tmp_path: Path) -> None:
    """The worker is spawned with version 0; two edits are published while it loads its
    models; at its first claim it must run with the second, not keep the spawn-time ones
    labelled with the latest version (CI once saw a new route unknown to a worker)."""
    import multiprocessing as mp

    from dicom_node.process.worker import SettingsChannel

    spawned = make_settings(tmp_path)
    channel = SettingsChannel(mp.get_context("spawn"), 0)
    first = spawned.model_copy(update={"source": "edit 1"})
    second = spawned.model_copy(update={"source": "edit 2"})
    channel.publish(first, 1)
    channel.publish(second, 2)
    try:
        live = LiveSettings(spawned, version=channel.initial_version)  # as worker_main does
        channel.refresh(live)
        assert (live.current.source, live.version) == ("edit 2", 2)
    finally:
        channel.close()
