"""The console words a result like every other place (the class, then P(class)), and
``predict --heatmap`` writes exactly the picture the Secondary Capture carries.

The real chest model runs in ``test_models_cli.py``; here the predictions are the result
builders' hand-made ones, the SC is built by the real builder, and ``status`` reads the
rows a real job run (``JobRunner`` on a real CR, model answer chosen) stored.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from dicom_node.commands.predict import _print_prediction, save_heatmap
from dicom_node.commands.status import print_status
from dicom_node.config import Settings
from dicom_node.process.runner import JobRunner
from dicom_node.results import build_sc, uids
from inference.types import ModelInfo, SeriesPrediction
from tests.process.test_runner_unit import FakeModel, FakeProvider, queued_job  # noqa: F401
from tests.results.conftest import (  # noqa: F401 (fixtures)
    PredictionFactory,
    cr,
    make_prediction,
    pneumonia_model,
    roundtrip,
)

# RG1_UNCI's Referring Physician's Name "ward" makes highdicom warn; the data is real.
pytestmark = pytest.mark.filterwarnings("ignore:The string .* is unlikely:UserWarning")


def test_predict_heatmap_is_the_secondary_capture_picture(
    pneumonia_model: ModelInfo,  # noqa: F811
    cr: Dataset,  # noqa: F811
    make_prediction: PredictionFactory,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    prediction = make_prediction(
        pneumonia_model, [cr], {"NORMAL": 0.93, "PNEUMONIA": 0.07}, [(cr, None)], False
    )
    heatmap = dataclasses.replace(
        prediction.heatmaps[0], target="NORMAL", target_probability=0.93, floor=0.2
    )
    prediction = dataclasses.replace(
        prediction,
        heatmaps=(heatmap,),
        out_of_scope=("patient age 64 years, intended 0-17 years",),
    )
    path = tmp_path / "heat.png"
    save_heatmap(prediction, path)
    assert "heatmap (Grad-CAM for NORMAL) written to" in capsys.readouterr().out
    series = str(cr.SeriesInstanceUID)
    model = prediction.model
    sc = build_sc(
        cr,
        heatmap,
        prediction,
        series_uid=uids.result_series_uid(series, model.id, "sc"),
        instance_uid=uids.result_instance_uid(series, model.id, model.version, "sc", 0),
        instance_number=1,
    )
    with Image.open(path) as written:
        assert written.format == "PNG" and written.mode == "RGB"
        pixels = np.asarray(written)
    assert np.array_equal(pixels, roundtrip(sc).pixel_array)


def test_predict_prints_the_class_then_its_probability(
    pneumonia_model: ModelInfo,  # noqa: F811
    cr: Dataset,  # noqa: F811
    make_prediction: PredictionFactory,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    prediction: SeriesPrediction = make_prediction(
        pneumonia_model, [cr], {"NORMAL": 0.952, "PNEUMONIA": 0.048}, finding_present=False
    )
    _print_prediction("x.dcm", dataclasses.replace(prediction, out_of_scope=("view LL",)))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(
        "x.dcm: pneumonia-xception 0.3.0 -> NORMAL P(NORMAL) = 0.95; P(PNEUMONIA) = 0.05 in "
    )
    assert lines[1] == "  OUTSIDE INTENDED USE: view LL"


def test_status_lists_recent_results_in_the_same_words(
    queued_job: tuple[Settings, Any, int],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings, sessions, job_id = queued_job
    JobRunner(settings, sessions, FakeProvider(FakeModel(out_of_scope=("age",)))).run(job_id)
    capsys.readouterr()
    assert print_status(settings) == 0
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if line.startswith("  result ")]
    assert line.startswith("  result 1 chest-xray-pneumonia 0.3.0 series ")
    assert line.endswith(": PNEUMONIA P(PNEUMONIA) = 0.80 [OUTSIDE INTENDED USE]")
    assert "last results:" in out
