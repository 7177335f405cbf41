"""Operator commands against a running node: send (folders, progress, summary), status."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from dicom_node.cli import main
from dicom_node.receive.scp import TRANSFER_SYNTAXES, storage_sop_classes
from dicom_node.store.db import Instance
from tests.dicom_files import pydicom_file
from tests.peers import free_port


def _config_for(node: Any, tmp_path: Path) -> Path:
    path = tmp_path / "cli.toml"
    path.write_text(
        f'[node]\ndata_dir = "{node.settings.data_dir}"\n[scp]\nport = {node.port}\n'
        "[web]\nenabled = false\n"
    )
    return path


def test_send_folder_recursively_with_summary(
    start_node: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = start_node()
    folder = tmp_path / "study" / "nested"
    folder.mkdir(parents=True)
    for name in ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm"):
        shutil.copy(pydicom_file(name), folder / name)
    (folder / "notes.txt").write_text("not DICOM")
    status = main(
        ["send", str(tmp_path / "study"), "--to", f"DICOM_NODE@127.0.0.1:{node.port}", "-q"]
    )
    out = capsys.readouterr().out
    assert status == 0
    assert "sent 3 of 3 file(s)" in out
    assert "0x0000 Success: 3" in out
    assert "skipped 1 file(s)" in out
    assert len(node.query(select(Instance))) == 3


def test_send_reports_refusals_and_bad_target(
    start_node: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    node = start_node()
    status = main(
        [
            "send",
            str(pydicom_file("MR_truncated.dcm")),
            "--to",
            f"DICOM_NODE@127.0.0.1:{node.port}",
            "-q",
        ]
    )
    assert status == 1
    captured = capsys.readouterr()
    assert "0xC210 Failure: 1" in captured.out
    assert "MR_truncated.dcm refused by" in captured.err and "cannot be parsed" in captured.err
    with pytest.raises(SystemExit):
        main(["send", "x.dcm", "--to", "NOPORT@host"])
    assert "expected AE@HOST:PORT" in capsys.readouterr().err


def test_send_to_nobody_fails_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        ["send", str(pydicom_file("CT_small.dcm")), "--to", f"X@127.0.0.1:{free_port()}", "-q"]
    )
    assert status == 1
    captured = capsys.readouterr()
    assert "sent 0 of 1 file(s)" in captured.out
    assert "connection refused" in captured.err


def test_status_counts_and_failures(
    start_node: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = start_node()
    assert (
        main(
            [
                "send",
                str(pydicom_file("CT_small.dcm")),
                "--to",
                f"DICOM_NODE@127.0.0.1:{node.port}",
                "-q",
            ]
        )
        == 0
    )
    node.wait_until(lambda: "unrouted" in _series_states(node), what="series completion")
    capsys.readouterr()
    assert main(["--config", str(_config_for(node, tmp_path)), "status"]) == 0
    out = capsys.readouterr().out
    assert "studies: 1   instances: 1" in out
    assert "series: unrouted 1" in out


def _series_states(node: Any) -> list[str]:
    from dicom_node.store.db import Series

    return [s.state for s in node.query(select(Series))]


def test_scp_offers_every_storage_class_and_syntax(start_node: Any) -> None:
    node = start_node()
    contexts = {
        cx.abstract_syntax: cx.transfer_syntax for cx in node.node.scp.ae.supported_contexts
    }
    assert len(storage_sop_classes()) > 150
    for sop_class in storage_sop_classes():
        assert set(contexts[sop_class]) == set(TRANSFER_SYNTAXES)
    assert "1.2.840.10008.1.1" in contexts  # Verification
