"""Series of many images: order, sampling and the series-level decision.

A CT or MR series arrives as hundreds of instances in network order, and enhanced
objects hold all slices as frames of one instance. Images are put in anatomical order
first (so "uniform" and "middle" sampling mean something), then sampled, run in
batches, and the per-image probabilities are reduced to one decision as the manifest's
``series`` section says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from inference.manifest import SeriesSpec
from inference.pixels import is_multiframe, number_of_frames

Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class ImageRef:
    """One image of a series: a frame of an instance."""

    dataset: Dataset
    index: int  # 0-based frame index into the pixel data
    frame: int | None  # 1-based frame number for multi-frame instances, else None
    sop_instance_uid: str


def _slice_key(ds: Dataset, order: int) -> tuple[float, float, int]:
    """Sort key: position along the slice normal, then InstanceNumber, then arrival.

    ImagePositionPatient projected on the normal of ImageOrientationPatient is the
    slice location that does not depend on how the scanner numbered the instances.
    """
    position = ds.get("ImagePositionPatient")
    orientation = ds.get("ImageOrientationPatient")
    location = 0.0
    if position is not None and orientation is not None and len(orientation) == 6:
        row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
        location = float(np.dot(np.cross(row, col), np.asarray(position, float)))
    try:
        number = float(ds.get("InstanceNumber") or 0)
    except (TypeError, ValueError):
        number = 0.0
    return (location, number, order)


def enumerate_images(datasets: Sequence[Dataset]) -> list[ImageRef]:
    """List every frame of every instance in slice order (frames in stored order)."""
    ordered = sorted(enumerate(datasets), key=lambda pair: _slice_key(pair[1], pair[0]))
    refs: list[ImageRef] = []
    for _, ds in ordered:
        uid = str(ds.get("SOPInstanceUID", ""))
        multi = is_multiframe(ds)
        for index in range(number_of_frames(ds)):
            refs.append(ImageRef(ds, index, index + 1 if multi else None, uid))
    return refs


def sample(refs: Sequence[ImageRef], spec: SeriesSpec) -> list[ImageRef]:
    """Pick the images to run, keeping slice order."""
    if not refs:
        return []
    if spec.sampling == "middle":
        return [refs[len(refs) // 2]]
    if spec.sampling == "uniform" and len(refs) > spec.max_images:
        picks = np.unique(np.linspace(0, len(refs) - 1, spec.max_images).round().astype(int))
        return [refs[i] for i in picks]
    return list(refs)


def positive_scores(probabilities: Array, positive: Sequence[int]) -> Array:
    """Per-image score used to rank images: P(finding), or the top class probability."""
    if positive:
        return np.asarray(probabilities[:, list(positive)].sum(axis=1), dtype=np.float32)
    return np.asarray(probabilities.max(axis=1), dtype=np.float32)


def aggregate(probabilities: Array, positive: Sequence[int], spec: SeriesSpec) -> Array:
    """Reduce (N, n_classes) image probabilities to one series-level vector."""
    if probabilities.shape[0] == 1:
        return probabilities[0].astype(np.float32)
    scores = positive_scores(probabilities, positive)
    if spec.aggregation == "max":
        return probabilities[int(scores.argmax())].astype(np.float32)
    if spec.aggregation == "top_k_mean":
        top = np.argsort(-scores, kind="stable")[: spec.top_k]
        return probabilities[top].mean(axis=0).astype(np.float32)
    return probabilities.mean(axis=0).astype(np.float32)


def decide(
    probabilities: Array, classes: Sequence[str], positive: Sequence[int], threshold: float
) -> tuple[str, float | None, bool | None]:
    """Predicted class, positive probability and finding flag for one vector.

    With positive classes, the finding is present when their summed probability reaches
    ``threshold``; the predicted class is then the likeliest positive class, otherwise
    the likeliest negative one. Without, the likeliest class wins.
    """
    if not positive:
        return classes[int(probabilities.argmax())], None, None
    p_positive = float(probabilities[list(positive)].sum())
    present = p_positive >= threshold
    pool = [i for i in range(len(classes)) if (i in positive) == present]
    best = max(pool, key=lambda i: float(probabilities[i]))
    return classes[best], min(p_positive, 1.0), present


def key_images(scores: Array, count: int) -> list[int]:
    """Indices of the ``count`` highest-scoring images, most positive first."""
    return [int(i) for i in np.argsort(-scores, kind="stable")[: max(count, 0)]]
