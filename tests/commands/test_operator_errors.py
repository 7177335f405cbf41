"""Every operator mistake of issue 14 as a real ``python -m dicom_node.cli`` process: the exit
status is not 0, stderr is exactly one line that says what is wrong, where, and what to
change, and there is no traceback anywhere.

The mistakes that need a peer share one node started in this process (on a free loopback
port, calling AEs restricted to KNOWN) or a plain listening socket that never answers; no
case loads a model.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_node.dispatch.sender import send_paths
from dicom_node.receive.statuses import Status, status_meaning
from tests.dicom_files import pydicom_file
from tests.peers import free_port

REPO = Path(__file__).resolve().parents[2]
CT = pydicom_file("CT_small.dcm")


@dataclass
class Outcome:
    status: int
    stdout: str
    stderr: str


def cli(tmp_path: Path, *argv: str, env: dict[str, str] | None = None) -> Outcome:
    """Run the command line as an operator would, without a terminal on stdin."""
    environ = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DICOM_NODE__NODE__DATA_DIR": str(tmp_path / "data"),
        **(env or {}),
    }
    done = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", *argv],
        env=environ,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return Outcome(done.returncode, done.stdout, done.stderr)


def one_line(outcome: Outcome, *words: str, status: int | None = None) -> str:
    """The one stderr line of a failed command, checked for the expected words."""
    assert "Traceback" not in outcome.stderr + outcome.stdout, outcome.stderr
    assert outcome.status != 0 if status is None else outcome.status == status, outcome
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1, outcome.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def not_dicom(tmp_path: Path) -> Path:
    path = tmp_path / "report.txt"
    path.write_text("this is a report, not a DICOM file\n")
    return path


# (argv, environment, expected status or None for "not 0", words of the one line); the
# argv may name {notdicom}, {ct} and {missing} (a folder that does not exist).
CASES: dict[str, tuple[list[str], dict[str, str], int | None, list[str]]] = {
    "serve: port out of range": (
        ["serve"],
        {"DICOM_NODE__SCP__PORT": "70000"},
        2,
        ["dicom-node: ", "scp.port", "65535", "DICOM_NODE__SCP__PORT"],
    ),
    "demo: port out of range": (
        ["demo", "--exit"],
        {"DICOM_NODE__SCP__PORT": "0"},
        2,
        ["scp.port", "DICOM_NODE__SCP__PORT"],
    ),
    "echo: port out of range": (
        ["echo", "127.0.0.1", "70000"],
        {},
        2,
        ["dicom-node echo: ", "port 70000 is out of range 1-65535", "--help"],
    ),
    "send: port out of range": (
        ["send", "{ct}", "--to", "PACS@127.0.0.1:70000"],
        {},
        2,
        ["dicom-node send: ", "argument --to", "port 70000 is out of range"],
    ),
    "send: AE title too long": (
        ["send", "{ct}", "--to", "PACS@127.0.0.1:104", "--aet", "A_VERY_LONG_AE_TITLE"],
        {},
        2,
        ["--aet", "at most 16"],
    ),
    "route: not DICOM": (
        ["route", "{notdicom}"],
        {},
        1,
        ["dicom-node route: ", "report.txt is not a DICOM file", "DICM"],
    ),
    "predict: not DICOM": (
        ["predict", "{notdicom}"],
        {},
        1,
        ["dicom-node predict: ", "report.txt is not a DICOM file"],
    ),
    "send: not DICOM": (
        ["send", "{notdicom}", "--to", "PACS@127.0.0.1:9"],
        {},
        1,
        ["dicom-node send: ", "report.txt is not a DICOM file"],
    ),
    "predict: model without weights": (
        ["predict", "{ct}", "--model", "bone-xray-cnn"],
        {},
        2,
        ["dicom-node predict: ", "'bone-xray-cnn' has no weights", "dicom-node train"],
    ),
    "models check: model without weights": (
        ["models", "check", "bone-xray-cnn"],
        {},
        2,
        ["dicom-node models check: ", "'bone-xray-cnn' has no weights", "models import"],
    ),
    "predict: missing heatmap folder": (
        ["predict", "{ct}", "--heatmap", "{missing}/heat.png"],
        {},
        2,
        ["dicom-node predict: ", "of --heatmap", "does not exist", "create it"],
    ),
    "train: missing output folder": (
        ["train", ".", "--arch", "bone-xray-cnn", "--out", "{missing}/bone"],
        {},
        2,
        ["dicom-node train: ", "of --out", "does not exist", "create it"],
    ),
    "users add: no terminal": (
        ["users", "add", "alice", "--role", "admin"],
        {},
        2,
        ["dicom-node users add: ", "no terminal", "--password-stdin"],
    ),
    "users passwd: no terminal": (
        ["users", "passwd", "alice"],
        {},
        2,
        ["no terminal", "--password-stdin"],
    ),
    "status: no database": (
        ["status"],
        {},
        2,
        ["dicom-node status: ", "no database at", "DICOM_NODE__NODE__DATA_DIR", "serve"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_mistake_is_one_line(case: str, tmp_path: Path) -> None:
    argv, env, status, words = CASES[case]
    values = {"notdicom": not_dicom(tmp_path), "ct": CT, "missing": tmp_path / "no-such-folder"}
    outcome = cli(tmp_path, *(a.format(**values) for a in argv), env=env)
    one_line(outcome, *words, status=status)
    if case.startswith(("predict", "train")):
        assert "->" not in outcome.stdout  # stopped before any model ran
    # A command that stops on a mistake leaves no database behind (status, users).
    assert not (tmp_path / "data" / "dicom-node.db").exists()


def test_serve_port_in_use_names_setting_and_variable(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        outcome = cli(
            tmp_path,
            "serve",
            env={"DICOM_NODE__SCP__PORT": str(port), "DICOM_NODE__WEB__ENABLED": "false"},
        )
    one_line(outcome, f"scp.port {port}", "already in use", "DICOM_NODE__SCP__PORT", status=2)


def test_serve_help_lists_what_it_starts(tmp_path: Path) -> None:
    outcome = cli(tmp_path, "serve", "--help")
    assert outcome.status == 0 and not outcome.stderr
    for part in ("DICOM listener", "series completion", "worker", "delivery", "admin page"):
        assert part in outcome.stdout


# -- associations that are not made ------------------------------------------------------


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A port whose listener never accepts: TCP connects (the kernel's backlog), but no
    A-ASSOCIATE-AC ever comes."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield int(listener.getsockname()[1])


@pytest.fixture
def full_listener() -> Iterator[int]:
    """A port whose accept queue is full: the kernel drops new connection requests, so a
    connection times out as with a host behind a firewall that drops packets."""
    with socket.socket() as listener, socket.socket() as first:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = int(listener.getsockname()[1])
        first.connect(("127.0.0.1", port))  # fills the queue of length 1
        yield port


def test_echo_and_send_say_why_there_is_no_connection(
    tmp_path: Path, silent_listener: int, full_listener: int
) -> None:
    closed = free_port()
    one_line(
        cli(tmp_path, "echo", "127.0.0.1", str(closed)),
        f"cannot connect to ANY-SCP@127.0.0.1:{closed}: connection refused",
        "check the host and port",
    )
    outcome = cli(tmp_path, "send", str(CT), "--to", f"PACS@127.0.0.1:{closed}")
    one_line(outcome, "connection refused", "1 file(s) not sent")
    assert outcome.stdout.startswith("sent 0 of 1 file(s)")
    one_line(
        cli(tmp_path, "echo", "127.0.0.1", str(full_listener), "--timeout", "1"),
        "no answer within 1 s",
        "firewall",
        "--timeout",
    )
    one_line(
        cli(tmp_path, "echo", "127.0.0.1", str(silent_listener), "--timeout", "1"),
        "accepted the connection but did not answer the association request within 1 s",
    )


def _unknown_sop_class_file(folder: Path) -> Path:
    """A well-formed DICOM file of a SOP class no Storage SCP supports."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.826.0.1.3680043.10.1419.99.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    path = folder / "unknown-class.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_rejections_and_refusals_by_a_node(tmp_path: Path, start_node: Any) -> None:
    """One node, five mistakes: the reason of each A-ASSOCIATE-RJ, a presentation context
    the node does not accept, and a refused C-STORE with its status and meaning."""
    node = start_node(scp={"allowed_calling_aes": ["KNOWN"]})
    port = str(node.port)
    one_line(
        cli(tmp_path, "echo", "127.0.0.1", port, "--aec", "WRONG", "--aet", "KNOWN"),
        f"association rejected by WRONG@127.0.0.1:{port}",
        "called AE title 'WRONG' is not recognised",
        "use the AE title the peer is configured with",
        status=1,
    )
    one_line(
        cli(tmp_path, "echo", "127.0.0.1", port, "--aec", "DICOM_NODE", "--aet", "STRANGER"),
        "calling AE title 'STRANGER' is not allowed there",
        "--aet",
        status=1,
    )
    target = f"DICOM_NODE@127.0.0.1:{port}"
    one_line(
        cli(tmp_path, "send", str(CT), "--to", target, "--aet", "STRANGER"),
        "calling AE title 'STRANGER' is not allowed there",
        "1 file(s) not sent",
    )
    one_line(
        cli(
            tmp_path,
            "send",
            str(_unknown_sop_class_file(tmp_path)),
            "--to",
            target,
            "--aet",
            "KNOWN",
        ),
        f"{target} accepted no presentation context",
        "SOP class not supported",
    )
    truncated = pydicom_file("MR_truncated.dcm")
    outcome = cli(tmp_path, "send", str(truncated), str(CT), "--to", target, "--aet", "KNOWN")
    line = one_line(outcome, f"{truncated} refused by {target}", "0xC210", "cannot be parsed")
    assert "CT_small" not in line  # the stored file is no problem
    assert "sent 2 of 2 file(s), 1 stored" in outcome.stdout
    assert "0x0000 Success: 1" in outcome.stdout


def test_no_full_progress_bar_when_nothing_was_sent(tmp_path: Path) -> None:
    bar = io.StringIO()
    summary = send_paths(
        [CT], calling_ae="SCU", called_ae="PACS", host="127.0.0.1", port=free_port(), progress=bar
    )
    assert summary.sent == 0 and not summary.ok
    assert "1/1" not in bar.getvalue() and "100%" not in bar.getvalue()
    assert "connection refused" in summary.problems[0]


def test_status_meanings_of_other_receivers() -> None:
    """Statuses a PACS answers that the node never does get their standard meaning."""
    assert status_meaning(0xC210) == Status.CANNOT_PARSE.meaning  # ours keep theirs
    assert "out of resources" in status_meaning(0xA7F0)
    assert "does not store this SOP class" in status_meaning(0x0122)
    assert "refuses duplicates" in status_meaning(0x0111)
    assert "cannot understand" in status_meaning(0xC123)
    assert status_meaning(0xB000).startswith("stored")
