"""``dicom-node models import``: an app's legacy ``.h5`` file becomes a served package.

The apps' files are gone, so the tests write such files with the seed architectures
(Keras 3 still writes the legacy HDF5 format the apps used). What the node answers for
a DICOM image must equal the Keras model's output on the same pixels, preprocessed
with Keras' own ``preprocess_input``, read the way the app read it: the lung CT app's
single sigmoid is P(normal).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from dicom_node.commands.model_import import add_import_parser, run_import
from dicom_node.config import Settings
from inference import pixels, preprocess
from inference.manifest import load_manifest
from inference.registry import load_manifests, load_model
from inference.seed.architectures import ARCHITECTURES
from tests.conftest import make_settings

from .conftest import INPUT_SIZE, SOURCE_SIZE, ct_slice, lesion_image, mammogram, reread

# What each app's output means, written out independently of the presets.
UNIT_CLASS = {"bone-xray-cnn": "cancer", "lung-ct-cnn": "normal", "brain-mri-cnn": "tumor"}
KERAS_MODE = {
    "bone-xray-cnn": None,  # x / 255
    "lung-ct-resnet50": "caffe",
    "lung-ct-cnn": None,
    "breast-vgg16": "caffe",
    "brain-mri-cnn": None,
}


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse ``models import`` arguments as the ``models`` command will."""
    parser = argparse.ArgumentParser(prog="dicom-node models")
    add_import_parser(parser.add_subparsers(dest="models_command"))
    return parser.parse_args(["import", *argv])


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, models={"dir": str(tmp_path / "models")})


def save_h5(model: Any, folder: Path, name: str = "app_model.h5") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    model.save(path)  # legacy HDF5, as Keras 2 apps saved their models
    return path


def dicom_for(name: str, folder: Path) -> Dataset:
    rng = np.random.default_rng(11)
    if name == "bone-xray-cnn":
        return pydicom.dcmread(str(get_testdata_file("RG3_UNCI.dcm")))
    if name == "brain-mri-cnn":
        return pydicom.dcmread(str(get_testdata_file("MR_small.dcm")))
    if name == "breast-vgg16":
        return reread(mammogram(lesion_image(rng, 80, 2), study="imp-mg"), folder, "mg.dcm")
    return reread(
        ct_slice(lesion_image(rng, SOURCE_SIZE, 2), study="imp-ct", number=1), folder, "ct.dcm"
    )


def keras_reference(name: str, model: Any, ds: Dataset, manifest_path: Path) -> dict[str, float]:
    """The app's answer: Keras' own preprocessing on the same 8-bit levels, raw output read
    with the app's meaning."""
    spec = load_manifest(manifest_path).spec
    window = spec.preprocessing.window.for_modality(ds.get("Modality"))
    levels = preprocess.resize_levels(pixels.decode_frame(ds, 0, window=window), spec.input)
    x = levels[None].astype(np.float32)
    mode = KERAS_MODE[name]
    if mode is None:
        x = x / 255.0
    else:
        x = keras.applications.imagenet_utils.preprocess_input(x, mode=mode)
    raw = np.asarray(model(x, training=False))[0]
    classes = ARCHITECTURES[name].classes
    if name in UNIT_CLASS:
        unit = UNIT_CLASS[name]
        other = next(c for c in classes if c != unit)
        return {unit: float(raw[0]), other: 1.0 - float(raw[0])}
    return {c: float(p) for c, p in zip(classes, raw, strict=True)}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_imported_h5_predicts_as_keras(name: str, settings: Settings, tmp_path: Path) -> None:
    arch = ARCHITECTURES[name]
    model = arch.build(input_size=INPUT_SIZE, width=0.125, depth=0.25, seed=3).model
    source = save_h5(model, tmp_path / "app")
    status = run_import(parse([str(source), "--preset", name, "--id", f"{name}-app"]), settings)
    assert status == 0
    manifests = load_manifests(settings.models_dir)
    manifest = manifests[f"{name}-app"]
    assert manifest.weights_path() == settings.models_dir / f"{name}-app" / "weights" / "model.h5"
    assert manifest.spec.input.resize == "nearest"  # Keras load_img, as the apps read images
    ds = dicom_for(name, tmp_path / "dicom")
    prediction = load_model(manifest, threads=2).predict_series([ds], key_slices=1)
    expected = keras_reference(name, model, ds, manifest.path)
    for label, value in expected.items():
        assert prediction.probabilities[label] == pytest.approx(value, abs=1e-5), label
    assert prediction.heatmaps and prediction.heatmaps[0].method == "grad-cam"


def constant_lung_ct_model(unit_output: float) -> Any:
    """The lung CT app's network answering ``unit_output`` for every image."""
    model = ARCHITECTURES["lung-ct-cnn"].build(input_size=INPUT_SIZE, width=0.125, seed=1).model
    last = model.get_layer("p_normal")
    kernel, bias = last.get_weights()
    logit = math.log(unit_output / (1.0 - unit_output))
    last.set_weights([np.zeros_like(kernel), np.full_like(bias, logit)])
    return model


def test_lung_ct_sigmoid_below_half_means_cancer(settings: Settings, tmp_path: Path) -> None:
    source = save_h5(constant_lung_ct_model(0.2), tmp_path / "app")
    assert (
        run_import(parse([str(source), "--preset", "lung-ct-cnn", "--id", "lung"]), settings) == 0
    )
    manifest = load_manifests(settings.models_dir)["lung"]
    assert (manifest.spec.output.unit_class, manifest.spec.output.activation) == (
        "normal",
        "sigmoid",
    )
    series = [
        reread(
            ct_slice(lesion_image(np.random.default_rng(n), SOURCE_SIZE, 0), study="c", number=n),
            tmp_path,
            f"{n}.dcm",
        )
        for n in (1, 2)
    ]
    prediction = load_model(manifest, threads=2).predict_series(series, key_slices=1)
    assert prediction.predicted_class == "cancer"
    assert prediction.positive_probability == pytest.approx(0.8, abs=1e-6)
    assert prediction.probabilities == pytest.approx({"cancer": 0.8, "normal": 0.2}, abs=1e-6)
    assert prediction.finding_present is True
    assert prediction.model.probability_concept.meaning == "Probability of cancer"


def tiny_model(units: int, activation: str | None, channels: int = 3) -> Any:
    """A small stand-in for an app model whose head differs from the preset's."""
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, channels))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(units, activation=activation)(x)
    return keras.Model(inputs, outputs)


def test_two_unit_softmax_and_class_order(settings: Settings, tmp_path: Path) -> None:
    source = save_h5(tiny_model(2, "softmax"), tmp_path / "app")
    argv = [str(source), "--preset", "bone-xray-cnn", "--id", "bone2", "--classes", "cancer,normal"]
    assert run_import(parse(argv), settings) == 0
    output = load_manifests(settings.models_dir)["bone2"].spec.output
    assert output.activation == "softmax" and output.unit_class is None
    assert output.classes == ["cancer", "normal"] and output.positive_classes == ["cancer"]


def test_linear_single_unit_is_read_as_logits(settings: Settings, tmp_path: Path) -> None:
    source = save_h5(tiny_model(1, None), tmp_path / "app")
    assert run_import(parse([str(source), "--preset", "brain-mri-cnn", "--id", "b"]), settings) == 0
    output = load_manifests(settings.models_dir)["b"].spec.output
    assert (output.activation, output.unit_class) == ("logits", "tumor")


@pytest.mark.parametrize(
    ("model_args", "preset", "message"),
    [
        ((3, "softmax"), "bone-xray-cnn", "3 output units"),
        ((2, "softmax", 1), "breast-vgg16", "needs an RGB"),
    ],
)
def test_unfit_files_are_refused(
    model_args: tuple[Any, ...],
    preset: str,
    message: str,
    settings: Settings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = save_h5(tiny_model(*model_args), tmp_path / "app")
    assert run_import(parse([str(source), "--preset", preset, "--id", "x"]), settings) == 1
    assert message in capsys.readouterr().err
    assert not (settings.models_dir / "x").exists()


def test_existing_weights_need_force(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = save_h5(tiny_model(1, "sigmoid"), tmp_path / "app")
    argv = [str(source), "--preset", "lung-ct-cnn", "--id", "again"]
    assert run_import(parse(argv), settings) == 0
    assert run_import(parse(argv), settings) == 1
    assert "--force" in capsys.readouterr().err
    assert run_import(parse([*argv, "--force"]), settings) == 0
    # No staging folder is left where load_manifests could trip over it.
    assert sorted(p.name for p in settings.models_dir.iterdir()) == ["again"]
