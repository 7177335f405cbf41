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
