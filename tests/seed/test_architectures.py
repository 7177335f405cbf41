"""The seed architectures: original networks by default, ImageNet bases from local files
only, and committed manifests that are exactly what the architectures write."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from inference.manifest import load_manifest
from inference.seed.architectures import ARCHITECTURES, get_architecture, resnet50_base, vgg16_base

REPO = Path(__file__).resolve().parents[2]

# The original apps' inputs and outputs (see the module docstring of architectures.py).
ORIGINAL = {
    "bone-xray-cnn": (224, 1, "scale"),
    "lung-ct-resnet50": (224, 3, "caffe"),
    "lung-ct-cnn": (64, 1, "scale"),
    "breast-vgg16": (224, 2, "caffe"),
    "brain-mri-cnn": (150, 1, "scale"),
}


@pytest.mark.parametrize("name", sorted(ORIGINAL))
def test_default_build_is_the_original_network(name: str) -> None:
    arch = get_architecture(name)
    side, units, mode = ORIGINAL[name]
    built = arch.build()
    assert tuple(built.model.input.shape) == (None, side, side, 3)
    assert tuple(built.model.output.shape) == (None, units)
    assert arch.preprocessing == mode
    assert built.pretrained is False
    if arch.transfer:
        # Without ImageNet weights the base must learn: nothing may be frozen.
        assert all(layer.trainable for layer in built.model.layers)
        assert any("from scratch" in note for note in built.notes)


@pytest.mark.parametrize(
    ("ours", "reference"),
    [(resnet50_base, keras.applications.ResNet50), (vgg16_base, keras.applications.VGG16)],
)
def test_bases_match_keras_applications_layer_for_layer(ours: object, reference: object) -> None:
    mine = ours((224, 224, 3))  # type: ignore[operator]
    theirs = reference(include_top=False, weights=None, input_shape=(224, 224, 3))  # type: ignore[operator]

    def shapes(model: object) -> list[tuple[str, list[tuple[int, ...]]]]:
        return [
            (layer.name, [tuple(w.shape) for w in layer.weights])
            for layer in model.layers  # type: ignore[attr-defined]
            if layer.weights
        ]

    assert shapes(mine) == shapes(theirs)


def test_imagenet_weights_come_from_a_local_file_and_freeze_the_base(tmp_path: Path) -> None:
    # A stand-in for keras.applications' download, in the same legacy HDF5 weights format
    # and under the same name (random weights: nothing is downloaded).
    from keras.src.legacy.saving import legacy_h5_format

    reference = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    weights = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    with h5py.File(weights, "w") as fh:
        legacy_h5_format.save_weights_to_hdf5_group(fh, reference)
    built = get_architecture("breast-vgg16").build(input_size=32, imagenet_weights=weights)
    base = built.model.get_layer("vgg16")
    assert built.pretrained and base.trainable is False
    np.testing.assert_array_equal(
        base.get_layer("block5_conv3").get_weights()[0],
        reference.get_layer("block5_conv3").get_weights()[0],
    )
    assert any(weights.name in note for note in built.notes)


def test_imagenet_weights_need_the_full_network(tmp_path: Path) -> None:
    arch = get_architecture("lung-ct-resnet50")
    with pytest.raises(ValueError, match="width = depth = 1"):
        arch.build(width=0.5, imagenet_weights=tmp_path / "w.h5")
    with pytest.raises(ValueError, match="no ImageNet base"):
        get_architecture("lung-ct-cnn").build(imagenet_weights=tmp_path / "w.h5")
    with pytest.raises(ValueError, match="does not exist"):
        arch.build(imagenet_weights=tmp_path / "missing.h5")


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_committed_seed_manifest_is_what_the_architecture_writes(name: str) -> None:
    path = REPO / "models" / name / "model.toml"
    assert path.read_text(encoding="utf-8") == ARCHITECTURES[name].manifest_text(), (
        f"regenerate {path} from inference/architectures.py"
    )
    manifest = load_manifest(path)
    assert manifest.spec.weights.path == "weights/model.keras"


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_weights_and_reports_are_never_committed(name: str) -> None:
    # Committed without weights: the routes to a seed model wait until a site adds them.
    paths = [
        f"models/{name}/weights/model.keras",
        f"models/{name}/weights/model.h5",
        f"models/{name}/report/metrics.json",
    ]
    ignored = subprocess.run(
        ["git", "check-ignore", *paths], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert ignored.stdout.split() == paths
    tracked = subprocess.run(
        ["git", "check-ignore", f"models/{name}/model.toml"], cwd=REPO, capture_output=True
    )
    assert tracked.returncode == 1  # not ignored


def test_lung_ct_manifest_reads_the_unit_as_normal() -> None:
    output = load_manifest(REPO / "models" / "lung-ct-cnn" / "model.toml").spec.output
    assert output.unit_class == "normal" and output.positive_classes == ["cancer"]


@pytest.mark.parametrize(
    ("name", "folder", "label"),
    [
        ("lung-ct-resnet50", "Bengin cases", "benign"),
        ("lung-ct-resnet50", "Normal cases", "normal"),
        ("brain-mri-cnn", "yes", "tumor"),
        ("brain-mri-cnn", "no", "no_tumor"),
        ("brain-mri-cnn", "No Tumor", "no_tumor"),
        ("bone-xray-cnn", "Cancer", "cancer"),
        ("bone-xray-cnn", "fracture", None),
    ],
)
def test_folder_names(name: str, folder: str, label: str | None) -> None:
    assert get_architecture(name).folder_class(folder) == label
