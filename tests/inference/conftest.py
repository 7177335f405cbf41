"""Shared fixtures for the inference tests.

Real models are loaded once per session (Xception takes seconds to load); a tiny CNN is
trained once per session on synthetic "lesion" images whose positions are known, to
check explanations without any downloaded data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from inference.manifest import ModelManifest, load_manifest
from inference.registry import LoadedModel, load_manifests, load_model

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"
SIZE = 64  # synthetic image side
RADIUS = 5  # lesion radius in pixels


@dataclass(frozen=True)
class Synthetic:
    """Synthetic images (N, SIZE, SIZE) in 0..1, labels (1 = lesion) and lesion centres."""

    images: np.ndarray
    labels: np.ndarray
    centres: np.ndarray  # (N, 2) row, column; -1 where there is no lesion


def make_synthetic(count: int, seed: int) -> Synthetic:
    """Noisy textured background; half of the images carry a bright disc somewhere."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    images = np.empty((count, SIZE, SIZE), dtype=np.float32)
    labels = np.zeros(count, dtype=np.int64)
    centres = np.full((count, 2), -1, dtype=np.int64)
    for i in range(count):
        image = 0.35 + 0.08 * rng.standard_normal((SIZE, SIZE))
        # distractor: a faint large gradient so that "bright anywhere" is not enough
        image += 0.1 * (rows / SIZE) * rng.uniform(-1, 1)
        if i % 2 == 0:
            r, c = rng.integers(RADIUS + 2, SIZE - RADIUS - 2, size=2)
            image[(rows - r) ** 2 + (cols - c) ** 2 <= RADIUS**2] += 0.45
            labels[i], centres[i] = 1, (r, c)
        images[i] = np.clip(image, 0.0, 1.0)
    return Synthetic(images, labels, centres)


def _tiny_model(keras: object) -> object:
    """Conv base nested as ONE layer, then pooling, Dense, Dropout, Dense logits.

    The same shape as the demo Xception model, so Grad-CAM must reach into the nested
    base to find the feature map.
    """
    import keras as k

    base_in = k.Input((SIZE, SIZE, 1))
    x = k.layers.Conv2D(16, 3, padding="same", activation="relu")(base_in)
    x = k.layers.MaxPooling2D(2)(x)
    x = k.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = k.layers.MaxPooling2D(2)(x)
    x = k.layers.Conv2D(32, 3, padding="same", activation="relu", name="last_conv")(x)
    base = k.Model(base_in, x, name="base")
    inputs = k.Input((SIZE, SIZE, 1))
    y = base(inputs, training=False)
    y = k.layers.GlobalAveragePooling2D()(y)
    y = k.layers.Dense(16, activation="relu")(y)
    y = k.layers.Dropout(0.2)(y)
    outputs = k.layers.Dense(2)(y)
    return k.Model(inputs, outputs)


TINY_MANIFEST = """
id = "{id}"
name = "Synthetic lesion CNN"
version = "1.0"
description = "Trained in the test session on synthetic discs."
intended_use = "Tests only."

[weights]
format = "keras"
path = "{weights}"

[input]
height = {size}
width = {size}
channels = 1
color = "grayscale"
resize = "bilinear"

[preprocessing]
mode = "scale"  # (x - 0.35) * 4 on 0..1 levels: centred inputs train in a few epochs
scale = 0.01568627450980392
offset = -1.4

[output]
activation = "logits"
classes = ["clear", "lesion"]
positive_classes = ["lesion"]

[concepts]
finding_type = {{ value = "108369006", scheme = "SCT", meaning = "Neoplasm" }}

[explain]
method = "grad-cam"
layer = "auto"

[series]
batch_size = 8
aggregation = "top_k_mean"
top_k = 2
"""


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelManifest]:
    """Train the tiny CNN once; manifests for its .keras and legacy .h5 files."""
    import keras

    keras.utils.set_random_seed(7)
    data = make_synthetic(800, seed=1)
    model = _tiny_model(keras)
    model.compile(  # type: ignore[attr-defined]
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    inputs = (data.images[..., None] - 0.35) * 4.0  # what the manifest's preprocessing gives
    model.fit(inputs, data.labels, epochs=6, batch_size=32, verbose=0)  # type: ignore[attr-defined]
    root = tmp_path_factory.mktemp("models")
    manifests = {}
    for model_id, name in (("tiny-keras", "weights.keras"), ("tiny-h5", "weights.h5")):
        folder = root / model_id
        folder.mkdir()
        model.save(folder / name)  # type: ignore[attr-defined]
        text = TINY_MANIFEST.format(id=model_id, weights=name, size=SIZE)
        (folder / "model.toml").write_text(text, encoding="utf-8")
        manifests[model_id] = load_manifest(folder / "model.toml")
    return manifests


@pytest.fixture(scope="session")
def tiny(tiny_models: dict[str, ModelManifest]) -> LoadedModel:
    """The tiny CNN, loaded through the registry from its .keras file."""
    return load_model(tiny_models["tiny-keras"], threads=2)


@pytest.fixture(scope="session")
def real_manifests() -> dict[str, ModelManifest]:
    """The repository's model manifests."""
    return load_manifests(MODELS)


def _real(manifests: dict[str, ModelManifest], model_id: str) -> LoadedModel:
    manifest = manifests[model_id]
    if not manifest.weights_available():
        pytest.skip(f"{model_id}: {manifest.missing_weights_reason()}")
    return load_model(manifest, threads=2)


@pytest.fixture(scope="session")
def chest_model(real_manifests: dict[str, ModelManifest]) -> LoadedModel:
    """The pneumonia Xception model (skipped when its package is not installed)."""
    return _real(real_manifests, "chest-xray-pneumonia")


@pytest.fixture(scope="session")
def brain_model(real_manifests: dict[str, ModelManifest]) -> LoadedModel:
    """The brain tumour VGG16 ONNX model (skipped when its package is not installed)."""
    return _real(real_manifests, "brain-mri-tumor")
