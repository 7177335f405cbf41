"""The measurement groups of the SR: each finding with a place on its source image.

A viewer shows an SR finding only where the SR puts it. OHIF v3 (3.13) draws a TID 1501
measurement group when one of its NUM items is INFERRED FROM a SCOORD on a loaded image,
labelled ``<NUM concept meaning>: <value> <unit>`` and preceded by the group's TEXT
Comment items; a group without any SCOORD makes it throw. So every group built here has
exactly one drawn NUM, tied to a SCOORD on the exact source image and frame:

Image-level finding (one group per heatmap, i.e. per key image)
    Tracking Identifier + Tracking UID (per image), finding type, algorithm, finding site,
    the source image (with frame), NUM ``<class> P(<class>)`` = the probability on this
    image of the class the heatmap explains, INFERRED FROM a closed POLYLINE around the
    heatmap's region (the part at or above half its peak that holds the peak, see
    :mod:`inference.region`), CODE ``<finding type>`` = Present / Absent on this image.

Series-level result (one group)
    Tracking Identifier + Tracking UID (per series and model, stable across runs), NUM
    ``<predicted class> P(<predicted class>)`` (drawn), NUM of every other class and of
    the finding (not drawn), CODE Predicted class, CODE ``<finding type>`` = Present /
    Absent, and as source images the key slices the heatmaps come from (all scored
    images when there is no heatmap). Its drawn NUM is INFERRED FROM the outline of its
    whole key image: the decision is about the series, and the outline says "this image,
    as a whole" instead of pointing at a place the decision did not come from.

When the series is one image whose heatmap explains the predicted class, the two groups
say the same thing about the same image; they are built as one group (series tracking
UID, region outline), so the viewer shows one label, not two.

Every group also carries TEXT Comment items that OHIF prints above the probability: the
out-of-intended-use notice when the series is outside the model's scope, and NOT FOR
DIAGNOSTIC USE; and, when the model states a scope, a CODE "Within intended use" = Yes/No
that a worklist can filter on.

The probability NUMs keep the concept DCM 122157 "Probability" (or the model's own
probability concept for the finding) with the class in the Code Meaning, and a HAS
CONCEPT MOD "Finding" coding the class, so readers that match codes and viewers that
print meanings both get it right.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    CodedConcept,
    ContentSequence,
    CoordinatesForMeasurement,
    FindingSite,
    GraphicTypeValues,
    Measurement,
    MeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForMeasurementGroup,
    SourceImageForRegion,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicom_node import identity
from dicom_node.results import uids
from dicom_node.results.common import to_coded
from dicom_node.results.picture import explained
from dicom_node.wording import out_of_scope_text, probability_label
from inference.region import REGION_FRACTION, image_outline, peak_region
from inference.types import PRIVATE_SCHEME, Concept, Heatmap, ModelInfo, SeriesPrediction

# A probability is a ratio: UCUM "1" (no units).
UNITLESS: Final = CodedConcept("1", "UCUM", "no units")
# DCM 122157 "Probability": concept name of the per-class probability NUM items.
PROBABILITY: Final = CodedConcept("122157", "DCM", "Probability")
# DCM 121071 "Finding": the concept modifier that names the class a probability is about.
FINDING: Final = CodedConcept("121071", "DCM", "Finding")
# Concept name of the predicted-class evaluation. TID 1501 already uses "Finding" for the
# finding type, and DICOM has no code for "class predicted by a classifier", so a local
# code makes the item unambiguous (its scheme is declared in the SR, see common.py).
PREDICTED_CLASS: Final = CodedConcept("PREDCLASS", PRIVATE_SCHEME, "Predicted class")
# Whether the series is within the model's stated intended use; a local code for the
# same reason, answered with SCT 373066001 Yes / 373067005 No.
WITHIN_INTENDED_USE: Final = CodedConcept("INTENDEDUSE", PRIVATE_SCHEME, "Within intended use")
YES: Final = CodedConcept("373066001", "SCT", "Yes")
NO: Final = CodedConcept("373067005", "SCT", "No")
# SCT 52101004 "Present" / 272519000 "Absent": whether the finding type was found.
PRESENT: Final = CodedConcept("52101004", "SCT", "Present")
ABSENT: Final = CodedConcept("272519000", "SCT", "Absent")

# (instance, frames): an image the SR references; frames only for multi-frame instances.
ImageRef = tuple[Dataset, list[int] | None]


@dataclass(frozen=True)
class Place:
    """Where a drawn NUM is: an outline on one frame of one source image."""

    source: Dataset
    frame: int | None
    outline: npt.NDArray[np.float64]

    def coordinates(self) -> CoordinatesForMeasurement:
        """The INFERRED FROM SCOORD of the NUM (TID 300 row 8, TID 320)."""
        frames = [self.frame] if self.frame is not None else None
        return CoordinatesForMeasurement(
            graphic_type=GraphicTypeValues.POLYLINE,
            graphic_data=self.outline,
            source_image=SourceImageForRegion(
                referenced_sop_class_uid=str(self.source.SOPClassUID),
                referenced_sop_instance_uid=str(self.source.SOPInstanceUID),
                referenced_frame_numbers=frames,
            ),
        )


def measurement_groups(
    sources: Sequence[Dataset],
    prediction: SeriesPrediction,
    scored: Sequence[ImageRef],
) -> tuple[list[MeasurementsAndQualitativeEvaluations], list[Dataset]]:
    """Build the groups (see the module docstring) and list the images they reference.

    Parameters
    ----------
    sources
        The series' instances (headers suffice).
    prediction
        The model's result; its heatmaps give the image-level findings.
    scored
        The images the model scored (``sr.referenced_sources``).

    Returns
    -------
    groups, images
        The measurement groups, series-level first; the instances they reference, each
        once, for the Image Library.

    Raises
    ------
    ValueError
        When a heatmap's instance is not among the sources, or its frame is not one of
        the instance's frames.
    """
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    keys = [(_heatmap_source(by_uid, h), h) for h in prediction.heatmaps]
    series_uid = str(sources[0].SeriesInstanceUID)
    single_image = sum(len(frames or [None]) for _, frames in scored) == 1
    if (
        single_image
        and len(keys) == 1
        and explained(prediction, keys[0][1])[0] == prediction.predicted_class
    ):
        source, heatmap = keys[0]
        place = Place(source, heatmap.frame, region_outline(source, heatmap))
        groups = [_series_group(prediction, series_uid, place, [_ref(source, heatmap.frame)])]
        return groups, [source]
    key_refs = _merge_refs([_ref(source, heatmap.frame) for source, heatmap in keys])
    anchor_source, anchor_frame = (
        (keys[0][0], keys[0][1].frame) if keys else _most_positive(scored, prediction)
    )
    anchor = Place(anchor_source, anchor_frame, image_outline(*_size(anchor_source)))
    groups = [_series_group(prediction, series_uid, anchor, key_refs or list(scored))]
    for number, (source, heatmap) in enumerate(keys, start=1):
        groups.append(_image_group(prediction, series_uid, source, heatmap, number))
    images = {str(ds.SOPInstanceUID): ds for ds, _ in (key_refs or list(scored))}
    return groups, list(images.values())


def region_outline(source: Dataset, heatmap: Heatmap) -> npt.NDArray[np.float64]:
    """The heatmap's region (:func:`inference.region.peak_region`) in the source's pixels.

    The runtime's map has the decoded image's size, which is the source's; a map of
    another size is scaled to the source's Rows and Columns. A map without any positive
    value points nowhere, and the outline is then the whole image.
    """
    rows, columns = _size(source)
    region = peak_region(heatmap.cam, REGION_FRACTION)
    if region is None:
        return image_outline(rows, columns)
    scale = np.array(
        [columns / heatmap.cam.shape[1], rows / heatmap.cam.shape[0]], dtype=np.float64
    )
    return np.clip(region.outline * scale, 0.0, [columns, rows])


def _size(source: Dataset) -> tuple[int, int]:
    return int(source.Rows), int(source.Columns)


def _heatmap_source(by_uid: dict[str, Dataset], heatmap: Heatmap) -> Dataset:
    source = by_uid.get(heatmap.sop_instance_uid)
    if source is None:
        raise ValueError(f"heatmap instance {heatmap.sop_instance_uid} is not among the sources")
    frames = int(source.get("NumberOfFrames") or 1)
    if frames > 1 and (heatmap.frame is None or not 1 <= heatmap.frame <= frames):
        raise ValueError(f"heatmap of a {frames}-frame source needs a frame in 1..{frames}")
    if frames == 1 and heatmap.frame not in (None, 1):
        raise ValueError(f"single-frame source has no frame {heatmap.frame}")
    return source


def _ref(source: Dataset, frame: int | None) -> ImageRef:
    multi = int(source.get("NumberOfFrames") or 1) > 1
    return source, [frame] if multi and frame is not None else None


def _merge_refs(refs: Sequence[ImageRef]) -> list[ImageRef]:
    """One reference per instance, with all its key frames, in first-seen order."""
    merged: dict[str, tuple[Dataset, list[int] | None]] = {}
    for source, frames in refs:
        uid = str(source.SOPInstanceUID)
        if uid not in merged:
            merged[uid] = (source, list(frames) if frames else None)
        elif frames:
            known = merged[uid][1] or []
            merged[uid] = (source, sorted({*known, *frames}))
    return list(merged.values())


def _most_positive(
    scored: Sequence[ImageRef], prediction: SeriesPrediction
) -> tuple[Dataset, int | None]:
    """The scored image with the highest positive score (the first when none is known)."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds, _ in scored}
    ranked = sorted(
        (s for s in prediction.slices if s.sop_instance_uid in by_uid),
        key=lambda s: -s.positive_score,
    )
    if ranked:
        best = ranked[0]
        frame = (
            best.frame
            if int(by_uid[best.sop_instance_uid].get("NumberOfFrames") or 1) > 1
            else None
        )
        return by_uid[best.sop_instance_uid], frame
    source, frames = scored[0]
    return source, frames[0] if frames else None


def _series_group(
    prediction: SeriesPrediction, series_uid: str, place: Place, images: Sequence[ImageRef]
) -> MeasurementsAndQualitativeEvaluations:
    model = prediction.model
    group = _group(
        model,
        TrackingIdentifier(
            uid=uids.finding_tracking_uid(series_uid, model.id),
            identifier=f"{model.id}: {model.finding_type.meaning}"[:64],
        ),
        measurements=series_measurements(prediction, place),
        evaluations=series_evaluations(prediction),
        images=images,
    )
    _add_comments(group, prediction)
    return group


def _image_group(
    prediction: SeriesPrediction,
    series_uid: str,
    source: Dataset,
    heatmap: Heatmap,
    number: int,
) -> MeasurementsAndQualitativeEvaluations:
    model = prediction.model
    label, probability = explained(prediction, heatmap)
    if probability is None:
        raise ValueError(
            f"no probability of {label!r} for heatmap image {heatmap.sop_instance_uid}"
        )
    place = Place(source, heatmap.frame, region_outline(source, heatmap))
    uid = uids.image_finding_tracking_uid(
        series_uid, model.id, heatmap.sop_instance_uid, heatmap.frame
    )
    evaluations = []
    present = _image_presence(prediction, heatmap)
    if present is not None:
        evaluations.append(
            QualitativeEvaluation(
                name=to_coded(model.finding_type), value=PRESENT if present else ABSENT
            )
        )
    evaluations.extend(_scope_evaluation(prediction))
    group = _group(
        model,
        TrackingIdentifier(uid=uid, identifier=f"{model.id}: {label} region {number}"[:64]),
        measurements=[_probability(PROBABILITY, label, probability, _concept(model, label), place)],
        evaluations=evaluations,
        images=[_ref(source, heatmap.frame)],
    )
    _add_comments(group, prediction)
    return group


def _group(
    model: ModelInfo,
    tracking: TrackingIdentifier,
    *,
    measurements: list[Measurement],
    evaluations: list[QualitativeEvaluation],
    images: Sequence[ImageRef],
) -> MeasurementsAndQualitativeEvaluations:
    site = model.finding_site
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_type=to_coded(model.finding_type),
        algorithm_id=AlgorithmIdentification(
            name=model.name, version=model.version, parameters=[f"model id: {model.id}"]
        ),
        finding_sites=[FindingSite(anatomic_location=to_coded(site))] if site else None,
        measurements=measurements,
        qualitative_evaluations=evaluations or None,
        source_images=[
            SourceImageForMeasurementGroup.from_source_image(ds, referenced_frame_numbers=f)
            for ds, f in images
        ],
    )


def series_measurements(prediction: SeriesPrediction, place: Place | None) -> list[Measurement]:
    """NUM items of the series result: the predicted class first (drawn at ``place``),
    then every other class, then the finding when it is not one of those.

    The finding's NUM is named by the model's probability concept (e.g. DCM 111047
    "Probability of cancer"); it is left out when that concept is plain "Probability"
    and the finding is a single class, whose own NUM already says it.
    """
    model = prediction.model
    predicted = prediction.predicted_class
    ordered = [predicted, *(c for c in model.classes if c != predicted)]
    out = [
        _probability(
            PROBABILITY,
            cls,
            prediction.probabilities[cls],
            model.class_concepts[cls],
            place if cls == predicted else None,
        )
        for cls in ordered
    ]
    positive = prediction.positive_probability
    name = to_coded(model.probability_concept)
    if positive is not None and (len(model.positive_classes) > 1 or name != PROBABILITY):
        label = (
            model.positive_classes[0]
            if len(model.positive_classes) == 1
            else model.finding_type.meaning
        )
        about = _concept(model, label)
        if name == PROBABILITY:
            name = CodedConcept(name.value, name.scheme_designator, probability_label(label))
        out.append(_measurement(name, positive, about, None))
    return out


def series_evaluations(prediction: SeriesPrediction) -> list[QualitativeEvaluation]:
    """CODE items of the series: predicted class, finding Present/Absent, intended use."""
    model = prediction.model
    evaluations = [
        QualitativeEvaluation(
            name=PREDICTED_CLASS,
            value=to_coded(model.class_concepts[prediction.predicted_class]),
        )
    ]
    if prediction.finding_present is not None:
        evaluations.append(
            QualitativeEvaluation(
                name=to_coded(model.finding_type),
                value=PRESENT if prediction.finding_present else ABSENT,
            )
        )
    evaluations.extend(_scope_evaluation(prediction))
    return evaluations


def _scope_evaluation(prediction: SeriesPrediction) -> list[QualitativeEvaluation]:
    if not prediction.model.scope and not prediction.out_of_scope:
        return []  # the model states no scope: nothing was checked
    value = NO if prediction.out_of_scope else YES
    return [QualitativeEvaluation(name=WITHIN_INTENDED_USE, value=value)]


def _image_presence(prediction: SeriesPrediction, heatmap: Heatmap) -> bool | None:
    model = prediction.model
    if not model.positive_classes:
        return None
    for score in prediction.slices:
        if (score.sop_instance_uid, score.frame) == (heatmap.sop_instance_uid, heatmap.frame):
            return score.positive_score >= model.threshold
    return None


def _concept(model: ModelInfo, label: str) -> Concept:
    """The coded concept of a class label, or of the finding type named by ``label``."""
    return model.class_concepts.get(label, model.finding_type)


def _probability(
    name: CodedConcept, label: str, value: float, about: Concept, place: Place | None
) -> Measurement:
    """A probability NUM named ``<label> P(<label>)`` (what OHIF prints)."""
    meaning = probability_label(label)
    return _measurement(
        CodedConcept(name.value, name.scheme_designator, meaning), value, about, place
    )


def _measurement(
    name: CodedConcept, value: float, about: Concept, place: Place | None
) -> Measurement:
    measurement = Measurement(
        name=name,
        value=float(value),
        unit=UNITLESS,
        referenced_coordinates=[place.coordinates()] if place is not None else None,
    )
    # The SCOORD (if any) stays first: viewers that read only the first child find it.
    children = list(measurement[0].get("ContentSequence", []))
    children.extend(
        [
            CodeContentItem(
                name=FINDING,
                value=to_coded(about),
                relationship_type=RelationshipTypeValues.HAS_CONCEPT_MOD,
            ),
            # TID 300 "Equivalent Meaning of Concept Name": the readable form for people.
            TextContentItem(
                name=codes.DCM.EquivalentMeaningOfConceptName,
                value=f"Probability of {about.meaning}",
                relationship_type=RelationshipTypeValues.HAS_CONCEPT_MOD,
            ),
        ]
    )
    measurement[0].ContentSequence = ContentSequence(children)
    return measurement


def _add_comments(
    group: MeasurementsAndQualitativeEvaluations, prediction: SeriesPrediction
) -> None:
    """TEXT Comment items, which OHIF prints above the drawn probability."""
    notes = [out_of_scope_text(prediction.out_of_scope), identity.NOT_FOR_DIAGNOSTIC_USE_SHORT]
    for note in notes:
        if note:
            group[0].ContentSequence.append(
                TextContentItem(
                    name=codes.DCM.Comment,
                    value=note,
                    relationship_type=RelationshipTypeValues.CONTAINS,
                )
            )
