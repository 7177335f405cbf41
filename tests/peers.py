"""Real third-party DICOM peers for the tests: Orthanc (as the PACS) and DCMTK tools.

Each peer runs as its own process on 127.0.0.1 with free ports and its own folders, so the
tests exercise the same sockets and protocols a hospital network would.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pynetdicom import AE, _config

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
# DCMTK on loopback waits for Nagle's algorithm (40 ms per instance) unless told not to.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout} s")


def have_orthanc() -> bool:
    return Path(ORTHANC).exists()


def have_dcmtk() -> bool:
    return shutil.which("storescu") is not None


@dataclass
class Orthanc:
    """A running Orthanc with its REST API on 127.0.0.1."""

    http_port: int
    dicom_port: int
    aet: str
    folder: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as resp:
            return json.loads(resp.read())

    def post(self, path: str, body: Any, timeout: float = 120) -> Any:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def delete(self, path: str) -> None:
        req = urllib.request.Request(self.url + path, method="DELETE")
        urllib.request.urlopen(req, timeout=30).close()

    def upload(self, path: Path) -> dict[str, Any]:
        return dict(self.post("/instances", path.read_bytes()))

    def instances(self) -> list[str]:
        return list(self.get("/instances"))

    def sop_instance_uids(self) -> set[str]:
        uids = set()
        for orthanc_id in self.instances():
            tags = self.get(f"/instances/{orthanc_id}/simplified-tags")
            uids.add(tags["SOPInstanceUID"])
        return uids

    def instance_tags(self) -> list[dict[str, Any]]:
        return [self.get(f"/instances/{i}/simplified-tags") for i in self.instances()]

    def wait_for_instances(self, count: int, timeout: float = 60.0) -> list[str]:
        deadline = time.monotonic() + timeout
        found: list[str] = []
        while time.monotonic() < deadline:
            found = self.instances()
            if len(found) >= count:
                return found
            time.sleep(0.2)
        raise TimeoutError(f"Orthanc holds {len(found)} instance(s), expected {count}")


@contextmanager
def run_orthanc(
    folder: Path,
    *,
    aet: str = "ORTHANC",
    modalities: dict[str, tuple[str, str, int]] | None = None,
    lua: str | None = None,
    dicom_port: int | None = None,
) -> Iterator[Orthanc]:
    """Start Orthanc from a JSON configuration of our own (ports, storage, modalities)."""
    folder.mkdir(parents=True, exist_ok=True)
    http_port = free_port()
    dicom_port = dicom_port or free_port()
    config: dict[str, Any] = {
        "Name": "test-pacs",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": aet,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "HttpServerEnabled": True,
        "DicomCheckCalledAet": False,
        "DicomModalities": {k: list(v) for k, v in (modalities or {}).items()},
        "Plugins": [],
        "StableAge": 1,
        "OverwriteInstances": False,
        "DicomAlwaysAllowStore": True,
        "DicomScpTimeout": 30,
    }
    if lua:
        script = folder / "forward.lua"
        script.write_text(lua)
        config["LuaScripts"] = [str(script)]
    cfg_path = folder / "orthanc.json"
    cfg_path.write_text(json.dumps(config, indent=2))
    log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([ORTHANC, str(cfg_path)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(http_port, timeout=30)
        wait_for_port(dicom_port, timeout=30)
        # The REST API answers a little after the port opens.
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http_port}/system", timeout=2).close()
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield Orthanc(http_port, dicom_port, aet, folder, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextmanager
def run_storescp(folder: Path, *, aet: str = "STORESCP") -> Iterator[int]:
    """DCMTK storescp as a destination PACS on a free port, writing what it receives
    (any SOP class, ``+xa``) into ``folder``; yields the port."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        ["storescp", "-aet", aet, "-od", str(folder), "+xa", str(port)],
        env=DCMTK_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def storescu(
    port: int,
    files: list[Path],
    *,
    aet: str = "STORESCU",
    aec: str = "DICOM_NODE",
    extra: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """DCMTK storescu; ``-xs`` would force a syntax, by default it proposes the file's own."""
    cmd = ["storescu", "-aet", aet, "-aec", aec, *(extra or []), "127.0.0.1", str(port)]
    cmd += [str(f) for f in files]
    return subprocess.run(cmd, env=DCMTK_ENV, capture_output=True, text=True, timeout=300)


def echoscu(port: int, *, aet: str = "ECHOSCU", aec: str = "DICOM_NODE") -> int:
    cmd = ["echoscu", "-aet", aet, "-aec", aec, "127.0.0.1", str(port)]
    return subprocess.run(cmd, env=DCMTK_ENV, capture_output=True, timeout=60).returncode


def pynetdicom_send(
    port: int,
    paths_or_datasets: list[Any],
    *,
    aet: str = "PYSCU",
    aec: str = "DICOM_NODE",
    chunked: bool = True,
    max_pdu: int | None = None,
) -> list[int]:
    """Send with pynetdicom; chunked sending transmits the file's bytes exactly as stored.

    ``max_pdu`` is the largest PDU we accept (pynetdicom's default if None): a small one
    makes the receiver fragment its responses.
    """
    ae = AE(ae_title=aet)
    for item in paths_or_datasets:
        ds = pydicom.dcmread(item, stop_before_pixels=True) if isinstance(item, Path) else item
        # pynetdicom sends a file under its File Meta SOP class: propose that one.
        sop_class = (
            ds.file_meta.MediaStorageSOPClassUID if isinstance(item, Path) else ds.SOPClassUID
        )
        ae.add_requested_context(sop_class, [ds.file_meta.TransferSyntaxUID])
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = chunked
    try:
        # A requestor's limit is associate()'s argument, not the AE's maximum_pdu_size.
        limit = {} if max_pdu is None else {"max_pdu": max_pdu}
        assoc = ae.associate("127.0.0.1", port, ae_title=aec, **limit)
        assert assoc.is_established, "association with the node failed"
        statuses = []
        for item in paths_or_datasets:
            status = assoc.send_c_store(item)
            statuses.append(int(status.Status) if "Status" in status else -1)
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
    return statuses
