"""Run real DICOM validators on objects the node builds.

``dciodvfy`` (Debian package dicom3tools) checks an object against its IOD and writes to
stderr; a line starting with ``Error`` means the object is invalid, ``Warning`` lines are
advice. ``dsrdump`` (Debian package dcmtk) renders an SR and exits non-zero when it cannot
parse the document tree. Both are required: a missing validator fails the test instead of
letting an unvalidated object pass.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.dataset import Dataset


@dataclass(frozen=True)
class Validation:
    """What dciodvfy said about one object."""

    errors: list[str]
    warnings: list[str]
    output: str


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (apt-get install {package})")
    return path


def run_dciodvfy(path_or_dataset: Path | str | Dataset) -> Validation:
    """Run dciodvfy on a file, or on a dataset written to a temporary file."""
    if isinstance(path_or_dataset, Dataset):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "object.dcm"
            path_or_dataset.save_as(path, enforce_file_format=True)
            return run_dciodvfy(path)
    tool = _tool("dciodvfy", "dicom3tools")
    result = subprocess.run(
        [tool, str(path_or_dataset)], capture_output=True, text=True, timeout=120, check=False
    )
    output = result.stderr + result.stdout
    lines = output.splitlines()
    return Validation(
        errors=[line for line in lines if line.startswith("Error")],
        warnings=[line for line in lines if line.startswith("Warning")],
        output=output,
    )


def assert_dciodvfy_clean(path_or_dataset: Path | str | Dataset) -> list[str]:
    """Fail when dciodvfy reports any error; return its warnings for further checks."""
    validation = run_dciodvfy(path_or_dataset)
    assert not validation.errors, "dciodvfy errors:\n" + validation.output
    return validation.warnings


def assert_dsrdump_ok(path: Path | str) -> str:
    """Fail when dsrdump cannot parse the SR at ``path``; return its rendering."""
    tool = _tool("dsrdump", "dcmtk")
    result = subprocess.run(
        [tool, str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"dsrdump failed ({result.returncode}):\n{result.stderr}"
    assert "error" not in result.stderr.lower(), f"dsrdump reported:\n{result.stderr}"
    return result.stdout
