"""Image-folder data sets for training: one folder per class, PNG, JPEG or DICOM files.

A model must see in training the numbers it will see in service. So every file goes
through the runtime's own steps: DICOM through :func:`inference.pixels.decode_frame`
with the manifest's VOI window for its modality, PNG and JPEG through
:func:`inference.registry.as_display_image` (what ``LoadedModel.predict_image`` does),
then both through :func:`inference.preprocess.resize_levels` to the model's 8-bit
input levels. Value scaling (``scale_levels``) is applied per batch, after
augmentation, exactly as the runtime applies it after resizing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset

from inference import pixels, preprocess
from inference.manifest import InputSpec, PreprocessSpec
from inference.registry import as_display_image

PICTURE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".ima"})
Levels = npt.NDArray[np.uint8]


class DatasetError(ValueError):
    """The data folder cannot be used: missing classes, too few images, unreadable files."""


@dataclass(frozen=True)
class Sample:
    """One training image: a picture file, or one frame of a DICOM file."""

    path: Path
    label: int
    frame: int | None = None  # 0-based frame of a multi-frame DICOM file

    @property
    def name(self) -> str:
        """The file (and frame) as reports show it."""
        return f"{self.path}#{self.frame + 1}" if self.frame is not None else str(self.path)


@dataclass(frozen=True)
class ImageFolder:
    """A scanned data set: samples, class labels and which folder gave each class."""

    root: Path
    classes: tuple[str, ...]
    folders: dict[str, str]
    samples: tuple[Sample, ...]

    def counts(self) -> dict[str, int]:
        """Number of samples per class label."""
        labels = np.array([s.label for s in self.samples], dtype=np.int64)
        return {c: int((labels == i).sum()) for i, c in enumerate(self.classes)}


def is_dicom(path: Path) -> bool:
    """Tell a DICOM file by its suffix or, without one, by the "DICM" preamble marker."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.suffix:
        return False
    try:
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def scan_image_folder(
    root: Path, classes: Sequence[str], folder_class: Callable[[str], str | None]
) -> ImageFolder:
    """Find the class folders under ``root`` and list their images.

    Parameters
    ----------
    root
        The data folder: one sub-folder per class, images anywhere below it.
    classes
        The model's class labels, in output order.
    folder_class
        Maps a folder name to a class label (or None), e.g.
        :meth:`inference.seed.architectures.Architecture.folder_class`.

    Raises
    ------
    DatasetError
        When a class has no folder, two folders mean the same class, or a class has
        no images.
    """
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    folders: dict[str, str] = {}
    ignored: list[str] = []
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        label = folder_class(child.name)
        if label is None or label not in classes:
            ignored.append(child.name)
            continue
        if label in folders:
            raise DatasetError(
                f"{root}: folders {folders[label]!r} and {child.name!r} both mean {label!r}"
            )
        folders[label] = child.name
    missing = [c for c in classes if c not in folders]
    if missing:
        raise DatasetError(
            f"{root}: no folder for class(es) {missing}; expected one folder per class "
            f"{list(classes)}, found {sorted(folders.values()) + ignored or 'none'}"
        )
    samples: list[Sample] = []
    for index, label in enumerate(classes):
        files = sorted(p for p in (root / folders[label]).rglob("*") if p.is_file())
        found = 0
        for path in files:
            if path.suffix.lower() in PICTURE_SUFFIXES:
                samples.append(Sample(path, index))
                found += 1
            elif is_dicom(path):
                frames = _dicom_frames(path)
                samples.extend(
                    Sample(path, index, f if frames > 1 else None) for f in range(frames)
                )
                found += frames
        if not found:
            raise DatasetError(f"{root / folders[label]}: no PNG, JPEG or DICOM images")
    return ImageFolder(root, tuple(classes), folders, tuple(samples))


def _dicom_frames(path: Path) -> int:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:
        raise DatasetError(f"{path}: not a readable DICOM file ({exc})") from exc
    return pixels.number_of_frames(ds)


def display_image(
    sample: Sample, preprocessing: PreprocessSpec, dataset: Dataset | None = None
) -> pixels.FloatImage:
    """Decode a sample to the display image (0..1) the runtime would compute.

    Parameters
    ----------
    sample
        The image to decode.
    preprocessing
        The manifest's preprocessing section (its VOI window by modality).
    dataset
        The sample's DICOM file already read (frames of one multi-frame file).
    """
    if sample.path.suffix.lower() in PICTURE_SUFFIXES:
        try:
            return as_display_image(pixels.read_picture(sample.path))
        except pixels.PixelError as exc:
            raise DatasetError(str(exc)) from exc
    ds = dataset if dataset is not None else pixels.load_dataset(sample.path)
    window = preprocessing.window.for_modality(ds.get("Modality"))
    return pixels.decode_frame(ds, sample.frame or 0, window=window)


def load_levels(
    samples: Sequence[Sample],
    input_spec: InputSpec,
    preprocessing: PreprocessSpec,
    *,
    progress: Callable[[int], object] | None = None,
) -> Levels:
    """Decode and resize samples to 8-bit model-size levels, (N, H, W, C) uint8.

    Kept as uint8 (a 224 x 224 RGB image is 150 kB) so a few thousand images fit in
    memory; augmentation and value scaling happen per batch.

    Raises
    ------
    DatasetError
        Naming the file that cannot be decoded.
    """
    shape = (len(samples), input_spec.height, input_spec.width, input_spec.channels)
    levels = np.empty(shape, dtype=np.uint8)
    current: tuple[Path, Dataset] | None = None  # a multi-frame file is read once
    for i, sample in enumerate(samples):
        try:
            dataset = None
            if sample.frame is not None:
                if current is None or current[0] != sample.path:
                    current = (sample.path, pixels.load_dataset(sample.path))
                dataset = current[1]
            image = display_image(sample, preprocessing, dataset)
        except pixels.PixelError as exc:
            raise DatasetError(f"{sample.name}: {exc}") from exc
        levels[i] = preprocess.resize_levels(image, input_spec)
        if progress is not None:
            progress(1)
    return levels


@dataclass(frozen=True)
class Split:
    """Indices of the training, validation and test samples."""

    train: npt.NDArray[np.int64]
    validation: npt.NDArray[np.int64]
    test: npt.NDArray[np.int64]


def stratified_split(
    labels: Sequence[int] | npt.NDArray[np.int64],
    *,
    validation: float = 0.15,
    test: float = 0.15,
    seed: int = 42,
) -> Split:
    """Split indices per class so each part keeps the class proportions.

    Every class gets at least one validation and one test image (so per-class
    metrics exist) and keeps at least one training image; the same seed gives the
    same split, so a report can be reproduced.

    Raises
    ------
    DatasetError
        When a class has fewer than 3 images or the fractions leave no training data.
    """
    if not (0.0 < validation < 1.0 and 0.0 < test < 1.0 and validation + test < 1.0):
        raise DatasetError("validation and test fractions must be > 0 and sum to < 1")
    array = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    for label in np.unique(array):
        members = np.flatnonzero(array == label)
        if len(members) < 3:
            raise DatasetError(
                f"class index {label} has {len(members)} image(s); at least 3 are needed "
                "(one each for training, validation and test)"
            )
        members = rng.permutation(members)
        n_test = min(max(1, round(len(members) * test)), len(members) - 2)
        n_val = min(max(1, round(len(members) * validation)), len(members) - n_test - 1)
        parts["test"].extend(members[:n_test].tolist())
        parts["validation"].extend(members[n_test : n_test + n_val].tolist())
        parts["train"].extend(members[n_test + n_val :].tolist())
    return Split(
        **{name: np.array(sorted(values), dtype=np.int64) for name, values in parts.items()}
    )
