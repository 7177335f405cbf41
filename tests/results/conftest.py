"""Real source images and hand-made predictions for the result builder tests.

Sources are real DICOM files: pydicom's CT_small and MR_small, pydicom-data's RG1_UNCI
(CR chest) and emri_small (enhanced MR, 10 frames), and a DX made from RG1_UNCI with
Patient's Birth Date, Accession Number and Study ID removed, as some modalities send.
Session-scoped datasets are shared: the builders must never modify their inputs (a test
checks that).
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, generate_uid

from inference.types import (
    PRIVATE_SCHEME,
    Concept,
    Heatmap,
    ModelInfo,
    SeriesPrediction,
    SliceScore,
)

NORMAL = Concept("17621005", "SCT", "Normal")
ABNORMAL = Concept("263654008", "SCT", "Abnormal")

PNEUMONIA_MODEL = ModelInfo(
    id="pneumonia-xception",
    name="Pneumonia Xception",
    version="0.3.0",
    description="Chest X-ray pneumonia classifier",
    intended_use="Research only",
    classes=("NORMAL", "PNEUMONIA"),
    positive_class="PNEUMONIA",
    class_concepts={"NORMAL": NORMAL, "PNEUMONIA": ABNORMAL},
    finding_type=Concept("233604007", "SCT", "Pneumonia"),
    finding_site=Concept("39607008", "SCT", "Lung structure"),
)

BRAIN_MODEL = ModelInfo(
    id="brain-tumor-vgg16",
    name="Brain tumour VGG16",
    version="0.1.1",
    description="Brain MRI tumour classifier",
    intended_use="Research only",
    classes=("glioma", "meningioma", "notumor", "pituitary"),
    positive_class=None,
    positive_classes=("glioma", "meningioma", "pituitary"),
    class_concepts={
        "glioma": Concept("GLIOMA", PRIVATE_SCHEME, "Glioma"),
        "meningioma": Concept("MENINGIOMA", PRIVATE_SCHEME, "Meningioma"),
        "notumor": NORMAL,
        "pituitary": Concept("PITUITARY", PRIVATE_SCHEME, "Pituitary tumour"),
    },
    finding_type=Concept("108369006", "SCT", "Neoplasm"),
    finding_site=Concept("12738006", "SCT", "Brain structure"),
)

PredictionFactory = Callable[..., SeriesPrediction]


def _read(name: str) -> Dataset:
    path = get_testdata_file(name)
    if path is None:
        pytest.fail(f"test file {name} is missing (pip install pydicom-data)")
    return pydicom.dcmread(str(path))


@pytest.fixture(scope="session")
def ct() -> Dataset:
    """CT_small: axial CT, 128 x 128, no Body Part Examined."""
    return _read("CT_small.dcm")


@pytest.fixture(scope="session")
def mr() -> Dataset:
    """MR_small: MR, 64 x 64, no Body Part Examined."""
    return _read("MR_small.dcm")


@pytest.fixture(scope="session")
def cr() -> Dataset:
    """RG1_UNCI: CR chest, 1955 x 1841, Patient Orientation L\\F."""
    return _read("RG1_UNCI.dcm")


@pytest.fixture(scope="session")
def emri() -> Dataset:
    """emri_small: enhanced MR of the head, 10 frames."""
    return _read("emri_small.dcm")


@pytest.fixture(scope="session")
def dx() -> Dataset:
    """A DX chest image without Patient's Birth Date, Accession Number and Study ID."""
    ds = _read("RG1_UNCI.dcm")
    for keyword in ("PatientBirthDate", "AccessionNumber", "StudyID"):
        delattr(ds, keyword)
    ds.Modality = "DX"
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    # A DX image of its own study, with the projection geometry the image library reads.
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["dx-test", "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["dx-test", "series"])
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["dx-test", "instance"])
    ds.ImagerPixelSpacing = [0.15, 0.15]
    ds.PatientOrientation = ["L", "F"]
    return ds


@pytest.fixture(scope="session")
def pneumonia_model() -> ModelInfo:
    """Two classes, one positive class, standard codes only."""
    return PNEUMONIA_MODEL


@pytest.fixture(scope="session")
def brain_model() -> ModelInfo:
    """Four classes, three of them positive, tumour types in the local coding scheme."""
    return BRAIN_MODEL


def frames_of(ds: Dataset) -> list[int | None]:
    """The frames a model scores: [None] for single-frame, 1..n for multi-frame."""
    count = int(ds.get("NumberOfFrames") or 1)
    return [None] if count == 1 else list(range(1, count + 1))


def make_heatmap(ds: Dataset, frame: int | None = None) -> Heatmap:
    """A heatmap as the runtime makes it: the windowed source, a blob, their blend."""
    pixels = ds.pixel_array.astype(np.float32)
    if frame is not None:
        pixels = pixels[frame - 1]
    image = (pixels - pixels.min()) / max(float(pixels.max() - pixels.min()), 1.0)
    rows, columns = image.shape
    yy, xx = np.mgrid[0:rows, 0:columns]
    cam = np.exp(-(((yy - rows / 2) / (rows / 5)) ** 2 + ((xx - columns / 3) / (columns / 5)) ** 2))
    grey = np.repeat(image[..., None], 3, axis=2)
    red = np.zeros_like(grey)
    red[..., 0] = 1.0
    overlay = 0.6 * grey + 0.4 * cam[..., None] * red
    return Heatmap(
        sop_instance_uid=str(ds.SOPInstanceUID),
        frame=frame,
        image=image.astype(np.float32),
        cam=cam.astype(np.float32),
        overlay=(np.clip(overlay, 0, 1) * 255).astype(np.uint8),
    )


def _predict(
    model: ModelInfo,
    sources: Sequence[Dataset],
    probabilities: dict[str, float],
    key: Sequence[tuple[Dataset, int | None]] = (),
    finding_present: bool | None = None,
) -> SeriesPrediction:
    positive = (
        sum(probabilities[c] for c in model.positive_classes) if model.positive_classes else None
    )
    slices = tuple(
        SliceScore(str(ds.SOPInstanceUID), frame, probabilities, positive or 0.0)
        for ds in sources
        for frame in frames_of(ds)
    )
    return SeriesPrediction(
        model=model,
        predicted_class=max(probabilities, key=lambda c: probabilities[c]),
        probabilities=probabilities,
        positive_probability=positive,
        slices=slices,
        heatmaps=tuple(make_heatmap(ds, frame) for ds, frame in key),
        timings={"infer": 0.01},
        finding_present=finding_present,
    )


@pytest.fixture(scope="session")
def make_prediction() -> PredictionFactory:
    """Factory: ``make_prediction(model, sources, probabilities, key=[(ds, frame)])``.

    Every frame of every source is scored; ``key`` lists the heatmaps (key slices).
    """
    return _predict


@pytest.fixture(scope="session")
def pneumonia_prediction(pneumonia_model: ModelInfo, cr: Dataset) -> SeriesPrediction:
    """Pneumonia found on the CR chest, with one heatmap and a present/absent decision."""
    return _predict(
        pneumonia_model,
        [cr],
        {"NORMAL": 0.13, "PNEUMONIA": 0.87},
        key=[(cr, None)],
        finding_present=True,
    )


@pytest.fixture(scope="session")
def brain_prediction(brain_model: ModelInfo, emri: Dataset) -> SeriesPrediction:
    """Glioma on the enhanced MR, heatmaps of frames 4 and 7."""
    return _predict(
        brain_model,
        [emri],
        {"glioma": 0.61, "meningioma": 0.2, "notumor": 0.09, "pituitary": 0.1},
        key=[(emri, 4), (emri, 7)],
        finding_present=True,
    )


def roundtrip(ds: Dataset) -> Dataset:
    """Write ``ds`` as a DICOM file to memory and read it back (highdicom test style)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


@pytest.fixture(scope="session")
def write_dicom(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Dataset, str], Path]:
    """Factory: write a dataset as a DICOM file in a temporary folder, return its path."""
    folder = tmp_path_factory.mktemp("results")

    def _write(ds: Dataset, name: str) -> Path:
        path = folder / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        return path

    return _write


def replace(prediction: SeriesPrediction, **changes: object) -> SeriesPrediction:
    """``dataclasses.replace`` with a name that reads well in tests."""
    return dataclasses.replace(prediction, **changes)  # type: ignore[arg-type]
