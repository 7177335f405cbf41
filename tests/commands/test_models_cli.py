"""`dicom-node models list | check` and `dicom-node predict` on real models and files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from dicom_node.cli import main
from tests.dicom_files import pydicom_file


def test_models_list_shows_weights_and_routes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line[:1].isalpha()}
    assert "0.3.0" in lines["chest-xray-pneumonia"]
    assert (
        "keras" in lines["chest-xray-pneumonia"] and "chest-xray" in lines["chest-xray-pneumonia"]
    )
    assert "onnx" in lines["brain-mri-tumor"] and " yes " in lines["brain-mri-tumor"]


def test_models_check_loads_and_times(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "check", "brain-mri-tumor", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "brain-mri-tumor 0.1.1: loaded and warmed up" in out
    assert "with occlusion" in out


def test_predict_routes_files_and_writes_heatmap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chest = pydicom_file("RG1_UNCI.dcm")
    heatmap = tmp_path / "heat.png"
    assert main(["predict", str(chest), "--heatmap", str(heatmap)]) == 0
    out = capsys.readouterr().out
    assert "routed: chest-xray" in out
    # The class, then P(class), then the other class; an adult's film is flagged.
    assert re.search(
        r"chest-xray-pneumonia 0\.3\.0 -> (NORMAL|PNEUMONIA) P\(\1\) = 0\.\d\d; "
        r"P\((NORMAL|PNEUMONIA)\) = 0\.\d\d in ",
        out,
    )
    assert "OUTSIDE INTENDED USE: patient age 55 years, intended 0-17 years" in out
    assert re.search(r"heatmap \(Grad-CAM for (NORMAL|PNEUMONIA)\) written to ", out)
    with Image.open(heatmap) as picture:
        # RG1_UNCI at full size (1841 columns) below the labelled band.
        assert picture.mode == "RGB" and picture.size[0] == 1841 and picture.size[1] > 1955


def test_predict_explains_what_it_cannot_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    picture = tmp_path / "photo.png"
    Image.new("L", (64, 64), 128).save(picture)
    no_pixels = pydicom_file("rtplan.dcm")
    status = main(["predict", str(picture), str(no_pixels), "--model", "brain-mri-tumor"])
    out = capsys.readouterr().out
    assert status == 1
    assert "cannot use these images" in out and "pixel" in out.lower()
    assert "photo.png: brain-mri-tumor 0.1.1 -> " in out
    assert main(["predict", str(picture)]) == 1
    assert "pictures need --model" in capsys.readouterr().out
    assert main(["predict", str(picture), "--model", "nope"]) == 2
