"""A genuine Keras 2 ``.h5`` file (saved by tf_keras, the Keras 2 API that TensorFlow 2 apps
such as the original Flask apps used) served through the node's runtime, Grad-CAM included.

tf_keras is installed without dependencies by ``scripts/setup.sh --test`` (its declared
``tensorflow`` requirement would pull the full GPU build next to tensorflow-cpu).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from inference.registry import load_manifests, load_model
from tests.dicom_files import pydicom_file

tf_keras = pytest.importorskip("tf_keras", reason="tf-keras (Keras 2) is not installed")

LUNG_CT_CNN = Path(__file__).resolve().parents[2] / "models" / "lung-ct-cnn" / "model.toml"


def _keras2_lung_cnn(path: Path) -> object:
    """The lung CT app's network shape, written the Keras 2 way: one sigmoid = P(normal)."""
    layers = tf_keras.layers
    model = tf_keras.Sequential(
        [
            layers.Input((64, 64, 3)),
            layers.Conv2D(8, 3, activation="relu", name="conv1"),
            layers.MaxPooling2D(),
            layers.Conv2D(8, 3, activation="relu", name="conv2"),
            layers.GlobalAveragePooling2D(),
            layers.Dense(1, activation="sigmoid"),
        ]
    )
    rng = np.random.default_rng(7)
    model.set_weights([rng.normal(0, 0.3, w.shape).astype("float32") for w in model.get_weights()])
    model.save(path)  # .h5: the legacy HDF5 format with keras_version 2.x
    return model


def test_keras2_h5_predicts_like_keras2(tmp_path: Path) -> None:
    package = tmp_path / "models" / "lung-ct-cnn"
    (package / "weights").mkdir(parents=True)
    manifest = LUNG_CT_CNN.read_text().replace(
        'path = "weights/model.keras"', 'path = "weights/model.h5"'
    )
    (package / "model.toml").write_text(manifest)
    model2 = _keras2_lung_cnn(package / "weights" / "model.h5")
    import h5py

    with h5py.File(package / "weights" / "model.h5") as h5:
        assert str(h5.attrs["keras_version"]).startswith("2.")

    loaded = load_model(load_manifests(tmp_path / "models")["lung-ct-cnn"], threads=1)
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    prediction = loaded.predict_series([ds], key_slices=1)

    # The same preprocessed tensor through Keras 2 itself.
    from inference import pixels, preprocess

    spec = loaded.manifest.spec
    window = spec.preprocessing.window.for_modality(ds.get("Modality"))
    image = pixels.decode_frame(ds, 0, window=window)
    tensor = preprocess.prepare_batch([image], spec.input, spec.preprocessing)
    p_normal = float(model2.predict(tensor, verbose=0)[0, 0])
    assert prediction.probabilities["normal"] == pytest.approx(p_normal, abs=1e-5)
    assert prediction.probabilities["cancer"] == pytest.approx(1 - p_normal, abs=1e-5)
    assert prediction.predicted_class == ("cancer" if p_normal < 0.5 else "normal")
    assert prediction.heatmaps and prediction.heatmaps[0].cam.shape == image.shape
    shutil.rmtree(package)
