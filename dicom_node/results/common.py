"""Pieces every result builder needs: identity, equipment, input checks, encoding check.

The node's own objects must be recognisable when a PACS forwards them back (routing
compares Manufacturer with ``identity.MANUFACTURER``), every object must name the AI
algorithm as contributing equipment (IHE AI Results), and every builder must either return
an object that encodes or raise a clear ``ValueError``. Those rules live here once.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass
from typing import Final

import highdicom as hd
import pydicom
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.tag import Tag

from dicom_node import identity
from dicom_node.results import uids
from inference.types import Concept, ModelInfo, SeriesPrediction

ResultKind = uids.ResultKind

# Series Number is Type 2 in the General Series module but highdicom requires a positive
# value; one fixed number per kind keeps our series sorted after the acquired ones and
# stable across re-runs (the series UID is stable too, see uids.py).
DEFAULT_SERIES_NUMBERS: Final[dict[ResultKind, int]] = {"sr": 9901, "sc": 9902, "pdf": 9903}

# Patient and General Study attributes of Type 2: they must be present (possibly empty)
# in every object we create, and highdicom reads several of them from the source with
# plain attribute access, which raises when a modality left them out.
TYPE2_PATIENT_STUDY: Final[tuple[str, ...]] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)

# Bulk data the builders never read: a header copy leaves it out, so nothing built from
# the copy can carry (or copy) megabytes of source pixels by accident.
_BULK_TAGS: Final = frozenset(
    Tag(keyword)
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData", "WaveformData")
)


@dataclass(frozen=True)
class Predecessor:
    """The SR that a new SR replaces (Predecessor Documents Sequence, PS3.3 C.17.2).

    Only the four UIDs are needed; the pipeline keeps them in its result table.
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> Predecessor:
        """Take the UIDs of an SR that was built (or received) earlier."""
        return cls(
            study_instance_uid=str(dataset.StudyInstanceUID),
            series_instance_uid=str(dataset.SeriesInstanceUID),
            sop_instance_uid=str(dataset.SOPInstanceUID),
            sop_class_uid=str(dataset.SOPClassUID),
        )

    def as_dataset(self) -> Dataset:
        """Return the minimal dataset that highdicom's ``previous_versions`` reads."""
        ds = Dataset()
        ds.StudyInstanceUID = self.study_instance_uid
        ds.SeriesInstanceUID = self.series_instance_uid
        ds.SOPInstanceUID = self.sop_instance_uid
        ds.SOPClassUID = self.sop_class_uid
        return ds


@dataclass(frozen=True)
class ResultObject:
    """One DICOM object ready to be stored and sent."""

    kind: ResultKind
    dataset: Dataset

    @property
    def series_instance_uid(self) -> str:
        """Series Instance UID of the object."""
        return str(self.dataset.SeriesInstanceUID)

    @property
    def sop_instance_uid(self) -> str:
        """SOP Instance UID of the object."""
        return str(self.dataset.SOPInstanceUID)


def apply_identity(dataset: Dataset) -> None:
    """Set the General Equipment attributes that mark an object as ours."""
    dataset.Manufacturer = identity.MANUFACTURER
    dataset.ManufacturerModelName = identity.MANUFACTURER_MODEL_NAME
    dataset.SoftwareVersions = identity.SOFTWARE_VERSIONS


def algorithm_equipment(model: ModelInfo) -> hd.ContributingEquipment:
    """Contributing Equipment item naming the AI algorithm (IHE AI Results).

    IHE AIR identifies the algorithm by Manufacturer, Manufacturer's Model Name (the
    model), Software Versions (the model version) and a Device UID that changes with the
    version. highdicom has no ``device_uid`` argument, so it is set on the item.
    """
    item = hd.ContributingEquipment(
        manufacturer=identity.MANUFACTURER,
        # DCM 109102 "Processing Equipment": the model processed the images.
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=_long_string(model.name),
        software_versions=_long_string(model.version),
        contribution_description=_long_text(
            f"AI inference by {model.name} {model.version} ({model.id}). "
            f"{identity.NOT_FOR_DIAGNOSTIC_USE_SHORT}."
        ),
    )
    item.DeviceUID = uids.model_device_uid(model.id, model.version)
    return item


def _long_string(value: str) -> str:
    # LO holds 64 characters; cut rather than fail on a long model name.
    return value[:64]


def _long_text(value: str) -> str:
    # ST (Contribution Description) holds 1024 characters.
    return value[:1024]


def header_copy(dataset: Dataset) -> Dataset:
    """Return a copy without bulk data and with missing Type 2 values added empty.

    highdicom's SR constructor reads PatientBirthDate, PatientSex, StudyID and
    AccessionNumber from the first evidence dataset with attribute access and raises
    ``AttributeError`` when a modality omitted them; adding them empty (Type 2 allows an
    empty value) keeps the object valid. Elements are deep-copied so that no object we
    build shares a mutable element with the caller's dataset, which stays untouched.
    """
    copy = Dataset()
    for element in dataset:
        if element.tag not in _BULK_TAGS:
            copy.add(deepcopy(element))
    for keyword in TYPE2_PATIENT_STUDY:
        if keyword not in copy:
            setattr(copy, keyword, None)
    return copy


def check_sources(sources: Sequence[Dataset]) -> None:
    """Raise ``ValueError`` unless ``sources`` are instances of one series of one study.

    Results go into the study of their source and their UIDs derive from the source
    series UID, so mixing series would put results in the wrong place.
    """
    if len(sources) == 0:
        raise ValueError("at least one source dataset is required")
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        missing = [i for i, ds in enumerate(sources) if not ds.get(keyword)]
        if missing:
            raise ValueError(f"source dataset(s) {missing} lack {keyword}")
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        values = {str(ds.get(keyword)) for ds in sources}
        if len(values) != 1:
            raise ValueError(f"sources must share one {keyword}, got {sorted(values)}")


def check_prediction(prediction: SeriesPrediction) -> None:
    """Raise ``ValueError`` when a prediction cannot be reported consistently.

    Every class must have a coded concept (the SR codes the predicted class) and a
    probability in [0, 1] (NUM items and the PDF table show them).
    """
    model = prediction.model
    if not model.classes:
        raise ValueError(f"model {model.id!r} declares no classes")
    if prediction.predicted_class not in model.classes:
        raise ValueError(
            f"predicted class {prediction.predicted_class!r} is not one of {model.classes}"
        )
    missing_concepts = [c for c in model.classes if c not in model.class_concepts]
    if missing_concepts:
        raise ValueError(f"model {model.id!r} has no coded concept for {missing_concepts}")
    if set(prediction.probabilities) != set(model.classes):
        raise ValueError(
            f"probabilities are given for {sorted(prediction.probabilities)}, "
            f"the model has classes {sorted(model.classes)}"
        )
    for label, value in prediction.probabilities.items():
        _check_probability(value, f"probability of {label!r}")
    unknown = [c for c in model.positive_classes if c not in model.classes]
    if unknown:
        raise ValueError(f"positive classes {unknown} are not classes of {model.id!r}")
    if prediction.positive_probability is not None:
        _check_probability(prediction.positive_probability, "positive probability")
        if not model.positive_classes:
            raise ValueError("a positive probability needs the model's positive classes")


def _check_probability(value: float, what: str) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{what} must be a number in [0, 1], got {value!r}")


@dataclass(frozen=True)
class Headline:
    """The probability shown first, and what it is the probability of."""

    label: str  # short text ("PNEUMONIA", or the finding type for several classes)
    concept: Concept  # coded concept of that class or finding
    value: float


def headline_probability(prediction: SeriesPrediction) -> Headline:
    """Return the probability to show first.

    The probability of the finding when the model has positive classes: of the single
    positive class, or, when several classes count as the finding (a brain model's
    glioma, meningioma, pituitary), of the finding type, which the runtime computes as
    their sum. Without positive classes, the probability of the predicted class.
    """
    model = prediction.model
    positive = prediction.positive_probability
    if positive is not None and len(model.positive_classes) == 1:
        label = model.positive_classes[0]
        return Headline(label, model.class_concepts[label], float(positive))
    if positive is not None:
        return Headline(model.finding_type.meaning, model.finding_type, float(positive))
    label = prediction.predicted_class
    return Headline(label, model.class_concepts[label], float(prediction.probabilities[label]))


def to_coded(concept: Concept) -> hd.sr.CodedConcept:
    """Convert the runtime's plain :class:`Concept` into a highdicom coded concept."""
    return hd.sr.CodedConcept(
        value=concept.value,
        scheme_designator=concept.scheme_designator,
        meaning=concept.meaning,
    )


def model_concepts(model: ModelInfo) -> list[Concept]:
    """All coded concepts a model contributes to the objects we build."""
    concepts = [*model.class_concepts.values(), model.finding_type, model.probability_concept]
    if model.finding_site is not None:
        concepts.append(model.finding_site)
    return concepts


def private_coding_schemes(
    model: ModelInfo, extra: Sequence[str] = ()
) -> list[CodingSchemeIdentificationItem]:
    """Coding Scheme Identification items for the local ("99...") schemes in use.

    A coding scheme designator that is not in PS3.16 Table 8-1 must be identified in the
    Coding Scheme Identification Sequence (SOP Common module), or a receiver cannot tell
    what the codes mean. ``extra`` names local schemes the builder itself uses.
    """
    in_use = {c.scheme_designator for c in model_concepts(model)} | set(extra)
    designators = sorted(d for d in in_use if d.startswith("99"))
    return [
        CodingSchemeIdentificationItem(
            designator=designator,
            name=f"dicom-node local codes ({designator})",
            responsible_organization=identity.MANUFACTURER,
        )
        for designator in designators
    ]


def ensure_encodable(dataset: Dataset, what: str) -> None:
    """Write ``dataset`` to memory as a DICOM file and read it back, or raise ValueError.

    The last line of defence of every builder: a value of the wrong VR or length fails
    here, in the builder that made it, not later in a C-STORE.
    """
    buffer = io.BytesIO()
    try:
        dataset.save_as(buffer, enforce_file_format=True)
        buffer.seek(0)
        pydicom.dcmread(buffer, stop_before_pixels=True)
    except Exception as exc:  # any encoder error means the object is unusable
        raise ValueError(f"the {what} built cannot be encoded: {exc}") from exc


@contextmanager
def as_value_error(what: str) -> Iterator[None]:
    """Turn highdicom's TypeError/AttributeError/KeyError on odd input into ValueError.

    Callers handle one exception type: a builder either returns a valid object or raises
    ``ValueError`` saying which object could not be built and why.
    """
    try:
        yield
    except ValueError:
        raise
    except (TypeError, AttributeError, KeyError, IndexError) as exc:
        raise ValueError(f"cannot build the {what}: {exc}") from exc
