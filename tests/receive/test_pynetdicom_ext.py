"""The fence around the node's changes to pynetdicom and pydicom internals.

* every upstream function the extensions copy, replace or override is pinned by a hash of
  its source, so an upgrade fails here, naming what to re-read;
* ``install()`` is idempotent, refuses an unchecked pynetdicom version without changing
  anything, and the operator sees that in one line;
* nothing process-wide points at a spool: two receivers and a plain pynetdicom server
  share one process, each association writing where its own server says;
* the built-in PACS and a node in one process, with small PDUs and small datasets, store
  what was sent byte for byte.
"""

from __future__ import annotations

import collections
import functools
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pynetdicom
import pytest
from pydicom import config as pydicom_config
from pydicom import filewriter
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config, dsutils, evt
from pynetdicom import dimse_messages as _dimse_messages
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer
from sqlalchemy import select

from dicom_node.config import ConfigError
from dicom_node.demo.minipacs import BuiltinPacs
from dicom_node.receive import incoming as incoming_module
from dicom_node.receive import pynetdicom_ext
from dicom_node.receive.incoming import IncomingFile
from dicom_node.receive.pynetdicom_ext.encoding import DirectResponseDIMSE
from dicom_node.receive.pynetdicom_ext.reactors import EventDrivenAssociation, EventDrivenDUL
from dicom_node.receive.pynetdicom_ext.transport import (
    NodeAssociationServer,
    NodeRequestHandler,
)
from dicom_node.receive.pynetdicom_ext.upstream import UPSTREAM, Upstream, source_sha256
from dicom_node.store.db import Delivery, Instance
from tests.dicom_files import dataset_bytes
from tests.peers import free_port, pynetdicom_send

# -- (a) the upstream source we depend on is the source we read ---------------------------


@pytest.mark.parametrize("entry", UPSTREAM, ids=[e.name for e in UPSTREAM])
def test_upstream_source_unchanged(entry: Upstream) -> None:
    actual = source_sha256(entry.name)
    assert actual == entry.sha256, (
        f"{entry.name} changed upstream (sha256 {actual}). Our extensions depend on it: "
        f"{entry.reason}. Re-read it against our copy in dicom_node/receive/pynetdicom_ext, "
        "adapt the copy if needed, then update its hash in upstream.UPSTREAM."
    )


# Each of our subclasses and the upstream class it switches or extends.
_SUBCLASSES = (
    (EventDrivenDUL, DULServiceProvider),
    (EventDrivenAssociation, Association),
    (DirectResponseDIMSE, DIMSEServiceProvider),
    (NodeRequestHandler, RequestHandler),
    (NodeAssociationServer, ThreadedAssociationServer),
)


@pytest.mark.parametrize(("ours", "base"), _SUBCLASSES, ids=[c.__name__ for c, _ in _SUBCLASSES])
def test_every_override_is_pinned(ours: type, base: type) -> None:
    """A method we override is a method whose upstream body we must keep agreeing with."""
    pinned = {entry.name for entry in UPSTREAM}
    for name, value in vars(ours).items():
        if name.startswith("__") or not (callable(value) or isinstance(value, property)):
            continue
        if hasattr(base, name):
            assert f"{base.__module__}.{base.__qualname__}.{name}" in pinned, (
                f"{ours.__name__}.{name} overrides upstream code that upstream.UPSTREAM "
                "does not pin"
            )


# -- (b) install(): idempotent, refuses an unchecked version, changes nothing then --------


def _receive_state() -> dict[str, Any]:
    """What install() switches, process-wide."""
    return {
        "NamedTemporaryFile": _dimse_messages.NamedTemporaryFile,
        "create_file_meta": _dimse_messages.create_file_meta,
        "write_file_meta_info": _dimse_messages.write_file_meta_info,
        "STORE_RECV_CHUNKED_DATASET": _config.STORE_RECV_CHUNKED_DATASET,
        "reading_validation_mode": pydicom_config.settings.reading_validation_mode,
        "installed": pynetdicom_ext.installed(),
    }


@pytest.fixture
def pristine(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """pynetdicom and pydicom as a fresh process has them (restored after the test, so a
    receiver started by an earlier test keeps its install)."""
    monkeypatch.setattr(pynetdicom_ext, "_installed", False)
    monkeypatch.setattr(_dimse_messages, "NamedTemporaryFile", tempfile.NamedTemporaryFile)
    monkeypatch.setattr(_dimse_messages, "create_file_meta", dsutils.create_file_meta)
    monkeypatch.setattr(_dimse_messages, "write_file_meta_info", filewriter.write_file_meta_info)
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", False)
    monkeypatch.setattr(pydicom_config.settings, "reading_validation_mode", pydicom_config.WARN)
    return _receive_state()


def test_install_is_idempotent(pristine: dict[str, Any]) -> None:
    before = dict(vars(_dimse_messages))
    pynetdicom_ext.install()
    once = _receive_state()
    assert once["NamedTemporaryFile"] is pynetdicom_ext.incoming_file
    assert once["STORE_RECV_CHUNKED_DATASET"] is True
    assert once["reading_validation_mode"] == pydicom_config.IGNORE
    assert once["installed"] is True
    # Exactly the three names decode_msg looks up are replaced in pynetdicom's module.
    changed = {k for k, v in vars(_dimse_messages).items() if before.get(k) is not v}
    assert changed == {"NamedTemporaryFile", "create_file_meta", "write_file_meta_info"}
    threads = [threading.Thread(target=pynetdicom_ext.install) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pynetdicom_ext.install()
    assert _receive_state() == once


def test_install_refuses_an_unchecked_version_and_changes_nothing(
    pristine: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pynetdicom, "__version__", "3.1.0")
    with pytest.raises(pynetdicom_ext.UnsupportedVersionError) as refused:
        pynetdicom_ext.install()
    message = str(refused.value)
    assert "\n" not in message
    assert "pynetdicom 3.1.0" in message
    assert "pynetdicom==3.0.4" in message
    assert _receive_state() == pristine


def test_the_package_pins_the_checked_version() -> None:
    """A fresh install never gets a pynetdicom that install() would refuse."""
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    (pin,) = [d for d in dependencies if d.replace(" ", "").startswith("pynetdicom")]
    assert pin.replace(" ", "") in {f"pynetdicom=={v}" for v in pynetdicom_ext.SUPPORTED_PYNETDICOM}
    assert pynetdicom.__version__ in pynetdicom_ext.SUPPORTED_PYNETDICOM


def test_store_scp_reports_an_unchecked_version_as_configuration(
    pristine: dict[str, Any], monkeypatch: pytest.MonkeyPatch, start_node: Any
) -> None:
    monkeypatch.setattr(pynetdicom, "__version__", "2.9.0")
    with pytest.raises(ConfigError, match=r"^pynetdicom 2\.9\.0 is installed"):
        start_node()
    assert _receive_state() == pristine


def test_serve_says_so_in_one_line(tmp_path: Path) -> None:
    """What the operator sees: one line on stderr and exit status 2, no traceback."""
    config = tmp_path / "node.toml"
    config.write_text(
        f'[node]\ndata_dir = "{tmp_path / "data"}"\n[scp]\nport = {free_port()}\n'
        "[workers]\nprocesses = 0\n[web]\nenabled = false\n"
    )
    code = (
        "import sys, pynetdicom; pynetdicom.__version__ = '3.1.0'; "
        "from dicom_node.cli import main; "
        f"sys.exit(main(['--config', {str(config)!r}, 'serve']))"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "DICOM_NODE_LOG_LEVEL": "WARNING"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("dicom-node: pynetdicom 3.1.0 is installed"), result.stderr
    assert "listening" not in result.stdout + result.stderr


# -- workers read DICOM as the receiver and the tests do ----------------------------------


def _worker_pydicom_mode(settings: Any, answer: Any) -> None:
    """In a spawned process: run a worker that stops at once, then report pydicom's mode."""
    from dicom_node.process.worker import worker_main

    stop = threading.Event()
    stop.set()
    worker_main(settings, "probe", stop)
    answer.put(pydicom_config.settings.reading_validation_mode)


def test_worker_process_reads_with_the_receivers_pydicom_settings(tmp_path: Path) -> None:
    from tests.conftest import make_settings

    settings = make_settings(tmp_path)
    context = mp.get_context("spawn")  # as the node starts its workers
    answer = context.Queue()
    process = context.Process(target=_worker_pydicom_mode, args=(settings, answer))
    process.start()
    try:
        mode = answer.get(timeout=120)
    finally:
        process.join(timeout=30)
    assert mode == pydicom_config.IGNORE == pydicom_config.settings.reading_validation_mode


# -- (c) no process-wide spool: each association writes where its own server says --------


def _small_ct(folder: Path, series_uid: str, study_uid: str, index: int, pixels: int) -> Path:
    """A CT instance under 4 KiB (``pixels`` bytes of 8-bit pixel data), written as a file."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "CT"
    ds.PatientID = "EXT-1"
    ds.PatientName = "Fence^Test"
    ds.SeriesNumber = 1
    ds.InstanceNumber = index
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 1
    ds.Columns = pixels
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(i % 251 for i in range(pixels)) + (b"\0" if pixels % 2 else b"")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    assert len(dataset_bytes(path)) < 4096
    return path


def _series(folder: Path, sizes: tuple[int, ...]) -> list[Path]:
    study_uid, series_uid = generate_uid(), generate_uid()
    return [_small_ct(folder, series_uid, study_uid, i + 1, size) for i, size in enumerate(sizes)]


@pytest.fixture
def incoming_folders(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The folder of every IncomingFile made, in order."""
    made: list[Path] = []
    original = IncomingFile.__init__

    def recording(self: IncomingFile, folder: Path, **kwargs: Any) -> None:
        original(self, folder, **kwargs)
        made.append(Path(self.name).parent)

    monkeypatch.setattr(incoming_module.IncomingFile, "__init__", recording)
    return made


@pytest.fixture
def plain_server() -> Iterator[tuple[int, list[tuple[Any, Path, bytes]]]]:
    """A plain pynetdicom storage SCP in this process; records each dataset's file."""
    seen: list[tuple[Any, Path, bytes]] = []

    def on_store(event: Any) -> int:
        path = Path(event.dataset_path)
        seen.append((event.request._dataset_file, path, dataset_bytes(path)))
        return 0x0000

    ae = AE(ae_title="PLAIN")
    ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    yield int(server.server_address[1]), seen
    server.shutdown()


def _references(value: Any, needles: tuple[str, ...]) -> bool:
    if isinstance(value, functools.partial):
        return any(_references(v, needles) for v in (*value.args, *value.keywords.values()))
    if isinstance(value, str | os.PathLike):
        text = os.fspath(value)
        return isinstance(text, str) and any(n in text for n in needles)
    return False


def test_each_receiver_writes_to_its_own_spool(
    start_node: Any,
    tmp_path: Path,
    incoming_folders: list[Path],
    plain_server: tuple[int, list[tuple[Any, Path, bytes]]],
) -> None:
    first = start_node(node={"data_dir": str(tmp_path / "first")})
    second = start_node(node={"data_dir": str(tmp_path / "second")})
    spools = (first.settings.spool_dir, second.settings.spool_dir)
    assert spools[0] != spools[1]
    sent = _series(tmp_path / "sent", (100, 1500, 3001))
    plain_port, plain_seen = plain_server

    # Interleaved, so a receiver that used whichever spool was set last would show it.
    for path in sent:
        for node in (first, second, first):
            assert pynetdicom_send(node.port, [path]) == [0x0000]
        assert pynetdicom_send(plain_port, [path], aec="PLAIN") == [0x0000]

    tmp_of = {first.port: first.node.spool.tmp, second.port: second.node.spool.tmp}
    expected = [tmp_of[p] for _ in sent for p in (first.port, second.port, first.port)]
    assert incoming_folders == expected
    for node, spool in zip((first, second), spools, strict=True):
        rows = node.query(select(Instance))
        assert len(rows) == len(sent)
        for row in rows:
            assert Path(row.path).is_relative_to(spool)
    # The plain server's associations get pynetdicom's own temporary file, complete.
    assert len(plain_seen) == len(sent)
    for (file, path, data), source in zip(plain_seen, sent, strict=True):
        assert not isinstance(file, IncomingFile)
        assert path.parent == Path(tempfile.gettempdir())
        assert data == dataset_bytes(source)
    # And no module of pynetdicom, pydicom or the node holds either spool's folder.
    needles = tuple(str(s) for s in spools)
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(("pynetdicom", "pydicom", "dicom_node")):
            continue
        for attribute, value in list(vars(module).items()):
            assert not _references(value, needles), f"{name}.{attribute} names a spool"


# -- (d) the built-in PACS and a node in one process, fragmented small datasets ----------


def _forward_to(pacs_port: int) -> dict[str, Any]:
    return {
        "destinations": [
            {
                "name": "pacs",
                "ae_title": "DEMO_PACS",
                "host": "127.0.0.1",
                "port": pacs_port,
                "backoff_seconds": 0.2,
                "backoff_max": 1.0,
            }
        ],
        "routes": [
            {
                "name": "ct-forward",
                "match": {"Modality": "^CT$"},
                "forward": True,
                "destinations": ["pacs"],
            }
        ],
    }


@pytest.fixture
def pdata_received(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[str]:
    """P-DATA primitives (one per P-DATA-TF PDU) received, by the receiving AE's title."""
    counts: collections.Counter[str] = collections.Counter()
    original = DIMSEServiceProvider.receive_primitive

    def counting(self: DIMSEServiceProvider, primitive: Any) -> None:
        if self.assoc.is_acceptor:
            counts[str(self.assoc.acceptor.ae_title).strip()] += 1
        original(self, primitive)

    monkeypatch.setattr(DIMSEServiceProvider, "receive_primitive", counting)
    return counts


def test_builtin_pacs_and_node_store_fragmented_small_datasets_byte_exact(
    start_node: Any, tmp_path: Path, pdata_received: collections.Counter[str]
) -> None:
    # Receive limits far below the datasets' sizes: every dataset (and the node's
    # C-STORE commands and responses) crosses the wire as many P-DATA fragments.
    pacs = BuiltinPacs(tmp_path / "pacs", free_port(), maximum_pdu_size=301).start()
    try:
        node = start_node(scp={"max_pdu_size": 256}, **_forward_to(pacs.port))
        # Sizes around the fragment lengths and odd ones (padded pixel data).
        sizes = (1, 7, 243, 244, 250, 501, 1024, 2047, 3500)
        to_node = _series(tmp_path / "to-node", sizes)
        to_pacs = _series(tmp_path / "to-pacs", sizes)
        success = [0x0000] * len(sizes)
        assert pynetdicom_send(node.port, to_node, max_pdu=128) == success
        assert pynetdicom_send(pacs.port, to_pacs, aec="DEMO_PACS", max_pdu=128) == success
        node.wait_until(
            lambda: [d.state for d in node.query(select(Delivery))] == ["done"] * len(sizes),
            what="the forwarded series delivered",
        )

        # Fragmented indeed: a request and its dataset took several PDUs each.
        assert pdata_received["DICOM_NODE"] > 4 * len(sizes)
        assert pdata_received["DEMO_PACS"] > 2 * 4 * len(sizes)

        stored = {row.sop_instance_uid: Path(row.path) for row in node.query(select(Instance))}
        assert len(stored) == len(sizes)
        for source in to_node:
            ds = pydicom.dcmread(source, stop_before_pixels=True)
            at_node = stored[ds.SOPInstanceUID]
            at_pacs = pacs.folder / ds.StudyInstanceUID / f"{ds.SOPInstanceUID}.dcm"
            # Received by the node as sent; forwarded by the node, received by the PACS
            # through the same pynetdicom File Meta: the two files are identical.
            assert dataset_bytes(at_node) == dataset_bytes(source), source.name
            assert at_pacs.read_bytes() == at_node.read_bytes(), source.name
        for source in to_pacs:
            ds = pydicom.dcmread(source, stop_before_pixels=True)
            at_pacs = pacs.folder / ds.StudyInstanceUID / f"{ds.SOPInstanceUID}.dcm"
            assert dataset_bytes(at_pacs) == dataset_bytes(source), source.name
        assert not list(node.node.spool.tmp.iterdir())  # no temporary file left
    finally:
        pacs.stop()
