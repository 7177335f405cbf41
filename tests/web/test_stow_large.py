"""A 500 MB instance POSTed to the STOW-RS door is stored with flat memory.

The same measurement as ``tests/receive/test_large_instance.py`` (whose helpers this
reuses): ``dicom-node serve`` runs as a subprocess with its admin app, so its resident
memory is its own; the test streams the file from disk in 1 MiB chunks with chunked
transfer coding (no Content-Length, as ``dicomweb-client`` sends large bodies), so the
node counts the body while it arrives and never sees it whole.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dicom_node.store import users
from dicom_node.store.db import create_engine, session_factory
from tests.peers import free_port
from tests.receive.test_large_instance import (
    GROWTH_LIMIT,
    MB,
    BigInstance,
    big_instance,
    read_memory,
    reset_peak,
    serve,
    settled_memory,
)

__all__ = ["big_instance"]  # the module-scoped 500 MiB file fixture, shared

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc"),
]
BOUNDARY = "large-part-boundary"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 * MB):
            digest.update(chunk)
    return digest.hexdigest()


def _body(path: Path) -> Iterator[bytes]:
    yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    with open(path, "rb") as fh:
        while chunk := fh.read(MB):
            yield chunk
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def test_500_mb_part_stored_with_flat_memory(big_instance: BigInstance, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    engine = create_engine(f"sqlite:///{data_dir / 'dicom-node.db'}")
    sessions = session_factory(engine)
    users.add_user(sessions, "modality", "modality-password", "sender")
    token = users.create_token(sessions, "modality")
    engine.dispose()
    web_port = free_port()
    try:
        with serve(
            data_dir,
            tmp_path / "node.log",
            DICOM_NODE__WEB__ENABLED="true",
            DICOM_NODE__WEB__PORT=str(web_port),
        ) as (proc, _port):
            idle = settled_memory(proc.pid)
            reset_peak(proc.pid)
            before = read_memory(proc.pid)
            response = httpx.post(
                f"http://127.0.0.1:{web_port}/dicomweb/studies",
                content=_body(big_instance.path),
                headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": f'multipart/related; type="application/dicom"; '
                    f"boundary={BOUNDARY}",
                },
                timeout=600,
            )
            after = read_memory(proc.pid)
        assert response.status_code == 200, response.text
        (item,) = json.loads(response.content)["00081199"]["Value"]

        # Durable and indexed, byte for byte the file that was sent.
        (stored,) = list((data_dir / "spool").glob("*/*/*.dcm"))
        assert stored.name == item["00081155"]["Value"][0] + ".dcm"
        db = sqlite3.connect(data_dir / "dicom-node.db")
        try:
            rows = db.execute("SELECT path, size, calling_ae FROM instance").fetchall()
        finally:
            db.close()
        assert rows == [(str(stored), stored.stat().st_size, "STOW")]
        assert _sha256(stored) == _sha256(big_instance.path)
        assert not list((data_dir / "spool" / ".incoming").iterdir())

        growth = max(after.hwm, after.rss) - before.rss
        summary = (
            f"{big_instance.path.stat().st_size / MB:.0f} MiB part over STOW-RS: node RSS "
            f"idle {idle.rss / MB:.0f} MiB, before {before.rss / MB:.0f} MiB, after "
            f"{after.rss / MB:.0f} MiB, peak {after.hwm / MB:.0f} MiB: growth "
            f"{growth / MB:.1f} MiB"
        )
        print(f"\n{summary}")
        assert growth < GROWTH_LIMIT, summary
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
