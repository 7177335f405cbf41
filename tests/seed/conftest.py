"""Synthetic data sets, DICOM makers and trained seed packages for the seed-model tests.

No real data exists for the five apps, so every test makes its own: a textured
background, and for the finding classes a bright disc (larger and brighter for
"malignant" than for "benign"). Each architecture's data set uses a different file
kind and folder naming, so the loaders are exercised as hospitals would use them:
PNG and JPEG (bone), IQ-OTHNCCD folder names as JPEG (lung 3-class), CT DICOM in
Hounsfield units (lung CT, trained through the ``dicom-node train`` CLI), 16-bit PNG
(breast) and "yes"/"no" folders (brain).

Networks are reduced (input 32, width 1/8, one block per ResNet/VGG stage) and trained
for three epochs: these tests check plumbing and numbers, not accuracy.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

from inference.seed.architectures import ARCHITECTURES, Architecture
from inference.seed.training import TrainConfig, TrainResult, train

SOURCE_SIZE = 48  # side of the synthetic pictures
INPUT_SIZE = 32  # reduced model input
WIDTH = 0.125
DEPTH = 0.25
PER_CLASS = 14  # 10 train, 2 validation, 2 test with the default fractions
EPOCHS = 3

# Which synthetic pattern each class label gets: 0 none, 1 small faint disc, 2 big bright disc.
PATTERN = {"normal": 0, "no_tumor": 0, "benign": 1}
FOLDERS = {
    "bone-xray-cnn": {"normal": "normal", "cancer": "cancer"},
    "lung-ct-resnet50": {
        "normal": "Normal cases",
        "benign": "Bengin cases",
        "malignant": "Malignant cases",
    },
    "lung-ct-cnn": {"cancer": "cancer", "normal": "normal"},
    "breast-vgg16": {"benign": "benign", "malignant": "malignant"},
    "brain-mri-cnn": {"no_tumor": "no", "tumor": "yes"},
}
FORMATS = {
    "bone-xray-cnn": "png+jpeg",
    "lung-ct-resnet50": "jpeg",
    "lung-ct-cnn": "dicom-ct",
    "breast-vgg16": "png16",
    "brain-mri-cnn": "png-rgb",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Silence one warning that Keras 3 on TensorFlow 2.21 raises per training step with
    numpy 2 (its ``convert_to_numpy``); it is not ours to fix and buries real warnings."""
    mark = pytest.mark.filterwarnings(
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    )
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(mark)


def lesion_image(rng: np.random.Generator, size: int, pattern: int) -> np.ndarray:
    """A (size, size) float image in 0..1: noisy texture, plus a disc for patterns 1, 2."""
    rows, cols = np.mgrid[0:size, 0:size]
    image = 0.3 + 0.06 * rng.standard_normal((size, size)) + 0.1 * rows / size
    if pattern:
        radius = size / (10 if pattern == 1 else 6)
        r, c = rng.uniform(radius + 2, size - radius - 2, size=2)
        image[(rows - r) ** 2 + (cols - c) ** 2 <= radius**2] += 0.25 if pattern == 1 else 0.5
    return np.clip(image, 0.0, 1.0)


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _patient_and_study(ds: Dataset, study: str) -> None:
    """Type 1/2 attributes the result builders copy from the source."""
    ds.PatientName = "Seed^Test"
    ds.PatientID = "SEED-1"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = _uid("study", study)
    ds.StudyDate = datetime.date(2026, 1, 2).strftime("%Y%m%d")
    ds.StudyTime = "101500"
    ds.StudyID = "1"
    ds.AccessionNumber = "ACC1"
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = "Synthetic"


def _file_meta(ds: Dataset) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.set_original_encoding(False, True)


def ct_slice(image: np.ndarray, *, study: str, number: int, series: str = "s") -> Dataset:
    """A CT chest slice storing ``image`` (0..1) as Hounsfield units -1000..+300.

    The file's own window (a mediastinum one) differs from the lung window the
    manifests ask for, so a test sees whether the manifest's window is used.
    """
    hu = -1000.0 + image * 1300.0
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = _uid("ct", study, series, number)
    _patient_and_study(ds, study)
    ds.Modality = "CT"
    ds.BodyPartExamined = "CHEST"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SeriesInstanceUID = _uid("series", study, series)
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.FrameOfReferenceUID = _uid("for", study)
    ds.PositionReferenceIndicator = ""
    ds.ImagePositionPatient = [0.0, 0.0, float(number) * 2.0]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 2.0
    ds.KVP = 120
    ds.AcquisitionNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = image.shape
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = 50
    ds.WindowWidth = 350
    ds.PixelData = np.rint(hu + 1024).astype(np.int16).tobytes()
    _file_meta(ds)
    return ds


def mammogram(image: np.ndarray, *, study: str) -> Dataset:
    """A left CC "for presentation" mammogram storing ``image`` as 12-bit values."""
    ds = Dataset()
    ds.SOPClassUID = DigitalMammographyXRayImageStorageForPresentation
    ds.SOPInstanceUID = _uid("mg", study)
    _patient_and_study(ds, study)
    ds.Modality = "MG"
    ds.BodyPartExamined = "BREAST"
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.SeriesInstanceUID = _uid("series", study, "mg")
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ImageLaterality = "L"
    ds.Laterality = "L"
    ds.ViewPosition = "CC"
    ds.PatientOrientation = ["A", "R"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImagerPixelSpacing = [0.1, 0.1]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = image.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = np.rint(image * 4095).astype(np.uint16).tobytes()
    _file_meta(ds)
    return ds


def reread(ds: Dataset, folder: Path, name: str) -> Dataset:
    """Write and read back, as the node reads spooled files."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def make_dataset(
    root: Path, arch: Architecture, *, per_class: int = PER_CLASS, seed: int = 0
) -> Path:
    """Write the synthetic image-folder data set of ``arch`` (format from FORMATS)."""
    rng = np.random.default_rng(seed)
    kind = FORMATS[arch.name]
    for label in arch.classes:
        folder = root / FOLDERS[arch.name][label]
        folder.mkdir(parents=True)
        pattern = PATTERN.get(label, 2)
        for i in range(per_class):
            image = lesion_image(rng, SOURCE_SIZE, pattern)
            levels = np.rint(image * 255).astype(np.uint8)
            if kind == "dicom-ct":
                ct_slice(image, study=f"{label}-{i}", number=1).save_as(
                    folder / f"{i:03d}.dcm", enforce_file_format=True
                )
            elif kind == "png16":
                wide = np.rint(image * 65535).astype(np.uint16)
                Image.fromarray(wide).save(folder / f"{i:03d}.png")  # mode I;16
            elif kind == "png-rgb":
                Image.fromarray(np.stack([levels] * 3, axis=-1)).save(folder / f"{i:03d}.png")
            elif kind == "jpeg" or (kind == "png+jpeg" and i % 2):
                Image.fromarray(np.stack([levels] * 3, axis=-1)).save(
                    folder / f"{i:03d}.jpg", quality=95
                )
            else:
                Image.fromarray(levels).save(folder / f"{i:03d}.png")
    return root


def config(**changes: object) -> TrainConfig:
    """The reduced, quick training settings of these tests."""
    base: dict[str, object] = {
        "epochs": EPOCHS,
        "batch_size": 8,
        "patience": 2,
        "input_size": INPUT_SIZE,
        "width": WIDTH,
        "depth": DEPTH,
        "verbose": 0,
        "version": "test-1",
    }
    base.update(changes)
    return TrainConfig(**base)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Trained:
    """A trained seed package in a temporary models folder."""

    arch: Architecture
    data_dir: Path
    models_dir: Path
    package: Path
    result: TrainResult | None  # None when trained through the CLI


def _train_with_cli(arch: Architecture, data: Path, out: Path) -> None:
    """Train through ``dicom-node train`` as an operator would (into an existing models
    folder: ``train`` refuses an --out whose folder does not exist, before training)."""
    from dicom_node.cli import main

    out.parent.mkdir(parents=True, exist_ok=True)

    status = main(
        [
            "train",
            "--arch",
            arch.name,
            str(data),
            "--out",
            str(out),
            "--epochs",
            str(EPOCHS),
            "--batch-size",
            "8",
            "--patience",
            "2",
            "--input-size",
            str(INPUT_SIZE),
            "--width",
            str(WIDTH),
            "--version",
            "test-1",
            "--quiet",
        ]
    )
    assert status == 0


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Trained]:
    """``trained(name)``: train the architecture once per session, on first request."""
    cache: dict[str, Trained] = {}

    def get(name: str) -> Trained:
        if name not in cache:
            arch = ARCHITECTURES[name]
            root = tmp_path_factory.mktemp(f"seed-{name}")
            data = make_dataset(root / "data", arch)
            models = root / "models"
            package = models / name
            result = None
            if FORMATS[name] == "dicom-ct":
                _train_with_cli(arch, data, package)
            else:
                result = train(arch, data, package, config(), log=lambda _m: None)
            cache[name] = Trained(arch, data, models, package, result)
        return cache[name]

    return get
