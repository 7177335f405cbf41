"""A local PACS for ``dicom-node demo``: Orthanc when it is installed, else a tiny receiver.

The demo has to show results arriving *somewhere* a person can look, without any setup.
Orthanc is a real PACS (web viewer, REST API, it can push studies to us as a hospital PACS
would), so it is preferred; on a machine without it, :class:`BuiltinPacs` is a minimal
pynetdicom C-STORE SCP that writes what it receives to a folder, enough to prove delivery.

Both answer the one question the demo asks a PACS: "which of these SOP instances do you
hold?" (:meth:`LocalPacs.holds`), so the demo's table reports what the PACS really stored
rather than what the node believes it sent.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node.receive.scp import storage_sop_classes
from dicom_node.receive.spool import valid_uid

log = logging.getLogger(__name__)

ORTHANC_BINARY = "/usr/sbin/Orthanc"
# The name under which the demo's Orthanc knows the node (POST /modalities/node/store).
NODE_MODALITY = "node"

# C-STORE statuses (PS3.4 B.2.3): what a storage SCP may answer.
_SUCCESS = 0x0000
_OUT_OF_RESOURCES = 0xA700
_CANNOT_UNDERSTAND = 0xC000


class LocalPacs(Protocol):
    """What the demo needs from its PACS, whichever one runs."""

    ae_title: str
    host: str
    port: int

    @property
    def description(self) -> str:
        """One line for the console: what runs and where a person can look."""
        ...

    def holds(self, sop_instance_uids: Iterable[str]) -> set[str]:
        """The subset of ``sop_instance_uids`` the PACS has stored."""
        ...

    def stop(self) -> None:
        """Stop the PACS (its stored files stay)."""
        ...


def port_or_free(preferred: int, host: str = "127.0.0.1") -> int:
    """``preferred`` when nothing listens there, else a free port chosen by the kernel.

    The demo likes well-known ports (Orthanc's 4242/8042, the node's 11112) because people
    know them, but must not fail on a machine where they are already taken.
    """
    for port in (preferred, 0):
        with socket.socket() as sock:
            # As servers do: a port whose old connections linger in TIME_WAIT is free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise OSError(f"no free TCP port on {host}")  # pragma: no cover - kernel out of ports


def wait_for_port(port: int, timeout: float, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port`` within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


# -- the built-in receiver --------------------------------------------------------------


class BuiltinPacs:
    """A minimal storage SCP that keeps every received instance as a file.

    Files go to ``<folder>/<StudyInstanceUID>/<SOPInstanceUID>.dcm``; which instances are
    held is read back from those names, so the answer survives a restart of the demo.

    Parameters
    ----------
    folder
        Where received instances are written (created).
    port
        TCP port to listen on (127.0.0.1 only: the demo is local).
    ae_title
        Our AE title (any called AE title is accepted, like most PACS in test setups).
    maximum_pdu_size
        The largest PDU we accept (0: no limit, fastest); a small one makes senders cut
        each dataset into many P-DATA fragments, as some modalities do.
    """

    def __init__(
        self, folder: Path, port: int, ae_title: str = "DEMO_PACS", *, maximum_pdu_size: int = 0
    ) -> None:
        self.folder = folder
        self.host = "127.0.0.1"
        self.port = port
        self.ae_title = ae_title
        self.maximum_pdu_size = maximum_pdu_size
        self._server: ThreadedAssociationServer | None = None

    @property
    def description(self) -> str:
        return (
            f"built-in receiver {self.ae_title} on {self.host}:{self.port}, files in {self.folder}"
        )

    def start(self) -> BuiltinPacs:
        """Start listening; returns self for chaining."""
        self.folder.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.ae_title)
        ae.maximum_pdu_size = self.maximum_pdu_size
        # All storage SOP classes: the node sends SR, SC and PDF objects, and a PACS that
        # refused one would make that delivery fail for a reason that is not the node's.
        for sop_class in storage_sop_classes():
            ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        self._server = ae.start_server(
            (self.host, self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )
        return self

    def _on_store(self, event: Event) -> int:
        """Write one instance; answers a status and never raises (pynetdicom would 0xC211)."""
        try:
            return self._store(event)
        except OSError as exc:
            log.error("demo PACS: cannot store an instance: %s", exc.strerror)
            return _OUT_OF_RESOURCES
        except Exception:
            log.exception("demo PACS: cannot store an instance")
            return _CANNOT_UNDERSTAND

    def _store(self, event: Event) -> int:
        study_uid, sop_uid = _uids_of(event)
        if not (valid_uid(study_uid) and valid_uid(sop_uid)):
            return _CANNOT_UNDERSTAND
        target = self.folder / study_uid / f"{sop_uid}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".part")
        if _chunked(event):
            # A node in the same process switches pynetdicom to streaming datasets to a
            # file; our associations get pynetdicom's own temporary file (the node's spool
            # files go to the node's associations only), flushed after every fragment.
            shutil.copyfile(event.dataset_path, partial)
        else:
            partial.write_bytes(event.encoded_dataset(include_meta=True))
        partial.replace(target)
        log.info("demo PACS stored %s", sop_uid)
        return _SUCCESS

    def holds(self, sop_instance_uids: Iterable[str]) -> set[str]:
        wanted = set(sop_instance_uids)
        present = {path.stem for path in self.folder.glob("*/*.dcm")}
        return wanted & present

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None


def _chunked(event: Event) -> bool:
    """Whether pynetdicom streamed this dataset to a file (``STORE_RECV_CHUNKED_DATASET``)."""
    try:
        return bool(event.dataset_path)
    except AttributeError:
        return False


def _uids_of(event: Event) -> tuple[str, str]:
    """(StudyInstanceUID, SOPInstanceUID) of a received dataset, read from its header only."""
    ds: Dataset = (
        dcmread(event.dataset_path, stop_before_pixels=True) if _chunked(event) else event.dataset
    )
    return str(ds.get("StudyInstanceUID", "")), str(ds.get("SOPInstanceUID", ""))


# -- Orthanc --------------------------------------------------------------------------


@dataclass(frozen=True)
class OrthancPorts:
    """Orthanc's two listening ports."""

    http: int
    dicom: int


def orthanc_config(
    folder: Path, ports: OrthancPorts, ae_title: str, node: tuple[str, str, int]
) -> dict[str, Any]:
    """Orthanc's JSON configuration for the demo.

    The HTTP server only answers on loopback (``RemoteAccessAllowed`` false): it shows patient
    data and has no password here. ``DicomModalities`` names the node, so Orthanc can push
    studies to it (``POST /modalities/node/store``), as a hospital PACS would.
    """
    return {
        "Name": "dicom-node demo PACS",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": ports.http,
        "DicomPort": ports.dicom,
        "DicomAet": ae_title,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "HttpServerEnabled": True,
        "DicomServerEnabled": True,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomModalities": {NODE_MODALITY: list(node)},
        "Plugins": [],
        "OverwriteInstances": False,
        "DicomScpTimeout": 30,
        "StableAge": 5,
    }


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Ask Linux to stop Orthanc when the demo dies without cleaning up (SIGKILL).

    Otherwise an orphaned Orthanc keeps its ports and blocks the next demo's well-known ports.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class OrthancPacs:
    """An Orthanc process run from a configuration of our own.

    Parameters
    ----------
    folder
        Configuration, storage, index and log of this Orthanc (created; kept between runs).
    node
        (AE title, host, port) of the node, for ``DicomModalities``.
    ae_title
        Orthanc's AE title; the node's ``pacs`` destination calls it.
    binary
        The Orthanc executable.
    """

    def __init__(
        self,
        folder: Path,
        node: tuple[str, str, int],
        *,
        ae_title: str = "ORTHANC",
        binary: str = ORTHANC_BINARY,
    ) -> None:
        self.folder = folder
        self.node = node
        self.ae_title = ae_title
        self.host = "127.0.0.1"
        self.binary = binary
        self.ports = OrthancPorts(port_or_free(8042), port_or_free(4242))
        self.port = self.ports.dicom
        self.version = ""
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports.http}"

    @property
    def description(self) -> str:
        return (
            f"Orthanc {self.version} ({self.ae_title} on {self.host}:{self.port}); "
            f"browse the results at {self.url}/app/explorer.html"
        )

    def start(self, timeout: float = 30.0) -> OrthancPacs:
        """Write the configuration, start Orthanc and wait until its REST API answers.

        Raises
        ------
        RuntimeError
            Orthanc exited or did not answer within ``timeout`` seconds (its log says why).
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        config = orthanc_config(self.folder, self.ports, self.ae_title, self.node)
        config_path = self.folder / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        with open(self.folder / "orthanc.log", "ab") as log_file:
            self._process = subprocess.Popen(
                [self.binary, str(config_path)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,  # only calls prctl: safe in the child
            )
        try:
            self._wait_ready(timeout)
        except RuntimeError:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(
                    f"Orthanc exited with status {self._process.returncode}; "
                    f"see {self.folder / 'orthanc.log'}"
                )
            try:
                self.version = str(self.get("/system").get("Version", ""))
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
                continue
            if wait_for_port(self.ports.dicom, max(deadline - time.monotonic(), 0.1)):
                return
        raise RuntimeError(f"Orthanc did not start within {timeout} s")

    # -- REST ------------------------------------------------------------------------
    def get(self, path: str) -> Any:
        """GET a REST resource and decode its JSON."""
        with urllib.request.urlopen(self.url + path, timeout=30) as resp:
            return json.loads(resp.read())

    def post(self, path: str, body: bytes | Any, timeout: float = 300) -> Any:
        """POST JSON (or raw bytes, e.g. a DICOM file) and decode the JSON answer."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method="POST")
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def upload(self, paths: Sequence[Path]) -> list[str]:
        """Store files in Orthanc over REST; returns the Orthanc ids of their studies."""
        studies: dict[str, None] = {}
        for path in paths:
            answer = self.post("/instances", path.read_bytes())
            studies[str(answer["ParentStudy"])] = None
        return list(studies)

    def push_to_node(self, study_ids: Sequence[str]) -> None:
        """Make Orthanc C-STORE studies to the node, as a hospital PACS would.

        Synchronous: the call returns once every instance was sent, so the demo knows the
        node has received everything before it starts waiting for results.
        """
        self.post(
            f"/modalities/{NODE_MODALITY}/store",
            {"Resources": list(study_ids), "Synchronous": True},
        )

    def holds(self, sop_instance_uids: Iterable[str]) -> set[str]:
        found: set[str] = set()
        for uid in sop_instance_uids:
            matches = self.post("/tools/lookup", uid.encode(), timeout=30) or []
            if any(m.get("Type") == "Instance" for m in matches):
                found.add(uid)
        return found

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)
        self._process = None


def have_orthanc(binary: str = ORTHANC_BINARY) -> bool:
    """Whether the Orthanc executable is installed (Debian package ``orthanc``)."""
    return Path(binary).is_file() or shutil.which("Orthanc") is not None


def orthanc_binary() -> str:
    """The Orthanc executable: the Debian path, else whatever ``PATH`` finds."""
    if Path(ORTHANC_BINARY).is_file():
        return ORTHANC_BINARY
    return shutil.which("Orthanc") or ORTHANC_BINARY
