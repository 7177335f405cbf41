"""Plain data exchanged between the model runtime and the rest of the node.

These types are the contract between ``inference`` (which fills them) and
``dicom_node.process.runner`` / ``dicom_node.results`` (which store them and turn them into
DICOM objects). They hold no framework objects, only numbers, strings and numpy arrays,
so a worker process can hand them to result builders without importing TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Concept:
    """A coded concept (code value, coding scheme designator, code meaning).

    Kept free of highdicom so ``inference`` stays importable without it; the SR builder
    converts it to ``highdicom.sr.CodedConcept``.
    """

    value: str
    scheme_designator: str
    meaning: str


# A private coding scheme for class labels that have no standard code: the SR must still
# carry a coded value, and DICOM allows "99" prefixed local schemes (PS3.16 8.2).
PRIVATE_SCHEME = "99DCMNODE"


@dataclass(frozen=True)
class ModelInfo:
    """What the result objects need to know about the model that produced a prediction."""

    id: str
    name: str
    version: str
    description: str
    intended_use: str
    classes: tuple[str, ...]
    positive_class: str | None
    # class label -> coded concept (falls back to a PRIVATE_SCHEME code per class)
    class_concepts: dict[str, Concept]
    # what the model looks for (e.g. Neoplasm SCT 108369006) and where (e.g. Lung)
    finding_type: Concept
    finding_site: Concept | None = None
    # concept name of the probability NUM item (e.g. DCM 111047 Probability of cancer)
    probability_concept: Concept = field(
        default_factory=lambda: Concept("122157", "DCM", "Probability")
    )
    # Added by the runtime: every class that counts as the finding. A multi-class model
    # can have several (brain MRI: glioma, meningioma, pituitary); ``positive_class`` is
    # then None and ``SeriesPrediction.positive_probability`` is the sum over these.
    positive_classes: tuple[str, ...] = ()
    # the positive probability at or above which the series is called positive
    threshold: float = 0.5
    # The part of the intended use the node checks from the header, in words (e.g. "CR or
    # DX; body part CHEST; age 0-17 years"); empty when the manifest states none.
    scope: str = ""

    def __post_init__(self) -> None:
        # Older callers give only positive_class: keep the two fields consistent.
        if self.positive_class is not None and not self.positive_classes:
            object.__setattr__(self, "positive_classes", (self.positive_class,))


@dataclass(frozen=True)
class SliceScore:
    """Model output for one image (one frame of one instance)."""

    sop_instance_uid: str
    frame: int | None  # 1-based frame number for multi-frame instances, else None
    probabilities: dict[str, float]
    positive_score: float  # probability of the positive class (or of the predicted class)


@dataclass(frozen=True)
class Heatmap:
    """Grad-CAM (or occlusion) map for one source image.

    ``image`` is the display-correct source (modality/VOI/presentation LUTs applied, 0..1),
    ``cam`` the raw explanation map resized to the same size (0..1), and ``overlay`` the
    blended RGB picture that the Secondary Capture shows.

    ``target`` names what the map explains: a class label, or the finding type when
    several classes count as the finding; ``target_probability`` is its probability on
    this image. A map of a confident NORMAL shows where the model saw "normal", not a
    suspicious area, so every picture and SR item says which class it explains.
    ``colormap``, ``floor`` and ``alpha`` record how the overlay was coloured: map values
    below ``floor`` (a fraction of the map's peak) are left uncoloured, the peak is
    blended at opacity ``alpha``.
    """

    sop_instance_uid: str
    frame: int | None
    image: npt.NDArray[np.float32]  # (rows, columns), 0..1
    cam: npt.NDArray[np.float32]  # (rows, columns), 0..1
    overlay: npt.NDArray[np.uint8]  # (rows, columns, 3) RGB
    method: str = "grad-cam"  # or "occlusion"
    target: str = ""
    target_probability: float | None = None
    colormap: str = "inferno"
    floor: float = 0.0
    alpha: float = 0.5


@dataclass(frozen=True)
class SeriesPrediction:
    """Decision of one model on one series, with the evidence behind it."""

    model: ModelInfo
    predicted_class: str
    probabilities: dict[str, float]  # series-level, one per class, in model order
    positive_probability: float | None  # probability of model.positive_class, if any
    slices: tuple[SliceScore, ...]
    heatmaps: tuple[Heatmap, ...]  # for the key slices (most positive first)
    timings: dict[str, float]  # seconds: load, preprocess, infer, explain, ...
    # Added by the runtime: whether the positive probability reached model.threshold
    # (None for a model without positive classes), so the SR can say Present / Absent.
    finding_present: bool | None = None
    # Added by the runtime: why the series is outside the model's intended use (e.g.
    # "patient age 64 years, intended 0-17 years"); empty when it is inside or unchecked.
    # Such a series still gets results, flagged everywhere they are shown.
    out_of_scope: tuple[str, ...] = ()
