"""Train every seed architecture on synthetic data, check the report, serve the package.

For each architecture: the report files exist; its metrics agree with scikit-learn on
the predictions saved in it; those predictions are what the node answers for the same
test files; and the package, loaded by the node's runtime from a models folder, turns
a DICOM series into an SR and a Grad-CAM Secondary Capture that dciodvfy accepts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from sklearn import metrics as skm

from dicom_node.cli import main
from dicom_node.results import build_results
from inference.pixels import read_picture
from inference.registry import LoadedModel, load_manifests, load_model
from inference.seed.architectures import ARCHITECTURES
from inference.seed.training import TrainingError, train
from tests.dicom_validate import assert_dciodvfy_clean, assert_dsrdump_ok

from .conftest import SOURCE_SIZE, Trained, config, ct_slice, lesion_image, mammogram, reread

NAMES = ["bone-xray-cnn", "lung-ct-resnet50", "lung-ct-cnn", "breast-vgg16", "brain-mri-cnn"]

pytestmark = pytest.mark.filterwarnings("ignore:The string .* is unlikely:UserWarning")


def report(trained: Trained) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((trained.package / "report" / "metrics.json").read_text())
    return data


@pytest.mark.parametrize("name", NAMES)
def test_report_files_and_metrics(name: str, trained: Callable[[str], Trained]) -> None:
    package = trained(name)
    folder = package.package / "report"
    for file in ("metrics.json", "report.md", "split.json"):
        assert (folder / file).stat().st_size > 0, file
    for plot in ("confusion_matrix.png", "roc_curve.png", "training_history.png"):
        with open(folder / plot, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n", plot
    data = report(package)
    classes = data["classes"]
    assert classes == list(package.arch.classes)
    y_true = np.array(data["y_true"])
    y_pred = np.array(data["y_pred"])
    probs = np.array(data["probabilities"])
    # Stratified split: every class is in the test set (PER_CLASS = 14 -> 2 each).
    assert sorted(set(y_true.tolist())) == list(range(len(classes)))

    # The decision rule, by hand: a positive class when P(positives) >= threshold,
    # else the likeliest negative class.
    positive = [classes.index(c) for c in data["positive_classes"]]
    for row, predicted in zip(probs, y_pred, strict=True):
        negatives = [i for i in range(len(classes)) if i not in positive]
        if row[positive].sum() >= data["threshold"]:
            assert predicted in positive and row[predicted] == row[positive].max()
        else:
            assert predicted == max(negatives, key=lambda i: row[i])

    labels = list(range(len(classes)))
    assert data["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert data["confusion"] == skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    for i, label in enumerate(classes):
        got = data["per_class"][label]
        assert got["precision"] == pytest.approx(precision[i])
        assert got["recall"] == pytest.approx(recall[i])
        assert got["f1"] == pytest.approx(f1[i])
        assert got["support"] == support[i]
    if len(classes) == 2:
        scores = probs[:, positive].sum(axis=1)
        expected_auc = skm.roc_auc_score(np.isin(y_true, positive), scores)
        (curve,) = data["roc"].values()
        fpr, tpr, _ = skm.roc_curve(np.isin(y_true, positive), scores, drop_intermediate=False)
        np.testing.assert_allclose(curve["fpr"], fpr)
        np.testing.assert_allclose(curve["tpr"], tpr)
    else:
        expected_auc = skm.roc_auc_score(y_true, probs, multi_class="ovr", average="macro")
        for i, label in enumerate(classes):
            one = skm.roc_auc_score(y_true == i, probs[:, i])
            assert data["roc"][label]["auc"] == pytest.approx(one)
    assert data["auc"] == pytest.approx(expected_auc)
    markdown = (folder / "report.md").read_text()
    assert f"accuracy: **{data['accuracy']:.3f}**" in markdown


def served(trained: Trained) -> LoadedModel:
    """The trained package as the node loads it: from its models folder, by id."""
    manifests = load_manifests(trained.models_dir)
    assert list(manifests) == [trained.arch.name]
    manifest = manifests[trained.arch.name]
    assert manifest.weights_available()
    return load_model(manifest, threads=2)


@pytest.mark.parametrize("name", NAMES)
def test_report_predictions_are_what_the_node_answers(
    name: str, trained: Callable[[str], Trained]
) -> None:
    package = trained(name)
    model = served(package)
    data = report(package)
    for file, expected in zip(data["names"], data["probabilities"], strict=True):
        path = Path(file)
        if path.suffix == ".dcm":
            prediction = model.predict_series([pydicom.dcmread(path)], explain=False)
        else:
            prediction = model.predict_image(read_picture(path), explain=False)
        got = [prediction.probabilities[c] for c in data["classes"]]
        np.testing.assert_allclose(got, expected, atol=1e-5)


def source_series(name: str, folder: Path) -> list[Dataset]:
    """A DICOM series of the kind each seed route receives."""
    rng = np.random.default_rng(5)
    if name == "bone-xray-cnn":  # a real CR of an extremity (MONOCHROME1)
        return [pydicom.dcmread(str(get_testdata_file("RG3_UNCI.dcm")))]
    if name == "brain-mri-cnn":  # a real MR
        return [pydicom.dcmread(str(get_testdata_file("MR_small.dcm")))]
    if name == "breast-vgg16":
        image = lesion_image(rng, 96, 2)
        return [reread(mammogram(image, study="mg"), folder, "mg.dcm")]
    # lung models: a short synthetic CT series with a nodule on the middle slice
    return [
        reread(
            ct_slice(lesion_image(rng, SOURCE_SIZE, 2 if n == 2 else 0), study="ct", number=n),
            folder,
            f"ct{n}.dcm",
        )
        for n in (1, 2, 3)
    ]


@pytest.mark.dcmtk
@pytest.mark.parametrize("name", NAMES)
def test_package_turns_dicom_into_sr_and_sc(
    name: str, trained: Callable[[str], Trained], tmp_path: Path
) -> None:
    package = trained(name)
    model = served(package)
    series = source_series(name, tmp_path / "in")
    prediction = model.predict_series(series, key_slices=1)
    assert set(prediction.probabilities) == set(package.arch.classes)
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert len(prediction.heatmaps) == 1 and prediction.heatmaps[0].method == "grad-cam"
    results = build_results(series, prediction, generation=0, include_pdf=False, key_slices=1)
    assert [r.kind for r in results] == ["sr", "sc"]
    for number, result in enumerate(results):
        path = tmp_path / f"{number}-{result.kind}.dcm"
        result.dataset.save_as(path, enforce_file_format=True)
        assert_dciodvfy_clean(path)
        if result.kind == "sr":
            rendering = assert_dsrdump_ok(path)
            assert package.arch.probability[2] in rendering
        assert result.dataset.StudyInstanceUID == series[0].StudyInstanceUID


def test_training_never_replaces_weights_without_force(tmp_path: Path) -> None:
    out = tmp_path / "models" / "bone-xray-cnn"
    (out / "weights").mkdir(parents=True)
    (out / "weights" / "model.h5").write_bytes(b"an imported model")
    with pytest.raises(TrainingError, match="--force"):
        train(ARCHITECTURES["bone-xray-cnn"], tmp_path / "data", out, config())
    assert (out / "weights" / "model.h5").read_bytes() == b"an imported model"


def test_train_command_explains_a_bad_data_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "data" / "Normal").mkdir(parents=True)
    argv = ["train", "--arch", "bone-xray-cnn", str(tmp_path / "data")]
    status = main([*argv, "--out", str(tmp_path / "bone-xray-cnn"), "--quiet"])
    assert status == 1
    assert "no folder for class(es) ['cancer']" in capsys.readouterr().err
    assert not (tmp_path / "bone-xray-cnn" / "weights").exists()
