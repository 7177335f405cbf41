"""TID 1500 Measurement Report carrying one model's classification of one series.

IHE AI Results (AIR) asks for the result of an image classifier as a TID 1500 Measurement
Report in a Comprehensive 3D SR. Some PACS do not accept that SOP class, so Comprehensive
SR and Enhanced SR are a per-destination setting; the content tree is the same (it has no
SCOORD3D items, which only Comprehensive 3D SR may hold).

Content tree (one SR per model and series)::

    CONTAINER Imaging Measurement Report (TID 1500)
      HAS CONCEPT MOD  Language of content: English
      HAS OBS CONTEXT  Observer Type: Device, Device Observer UID/Name/...   (TID 1002/1004)
      HAS CONCEPT MOD  Procedure reported: by modality and body part
      CONTAINS         Image Library: the images the findings are on (TID 1600)
      CONTAINS         Imaging Measurements
        CONTAINS       Measurement Group (TID 1501): the series result
        CONTAINS       Measurement Group (TID 1501): one per key image (heatmap region)
      CONTAINS         Qualitative Evaluations
        CONTAINS       TEXT Comment: not for diagnostic use (and outside intended use)

The measurement groups, and why each has a SCOORD on its source image, are described in
:mod:`dicom_node.results.findings`.

The Image Library describes each image with what highdicom reads from it (TID 1602, and
TID 1603/1604 for projection and cross-sectional images). Many real images lack what the
modality-specific descriptors need: RG1_UNCI (CR) has no Imager Pixel Spacing and a
Pixel Spacing of 0\\0, enhanced multi-frame objects keep spacing in functional groups.
Such an image gets the general descriptors only (modality, frame of reference, rows,
columns) instead of being left out of the library.

Procedure reported codes (``procedure_reported``):

=====================  =====================================================
modality + body part   code
=====================  =====================================================
XR (CR/DX/RG) chest    SCT 399208008 "Plain chest X-ray"
CT chest               SCT 169069000 "Computed tomography of chest"
CT head                SCT 303653007 "Computed tomography of head"
MR head                SCT 241601008 "Magnetic resonance imaging of head"
XR, CT, MR, PT, NM     LOINC "... unspecified body region" (CID 100): 43468-8,
                       25045-6, 25056-3, 44136-0, 49118-3
anything else          SCT 363679005 "Imaging procedure" (CID 100)
=====================  =====================================================

The body part comes from Body Part Examined of the first source, or, when that is
absent, from the model's finding site (a lung model implies chest, a brain model head).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal

import highdicom as hd
from highdicom.sr import (
    CodedConcept,
    ContainerContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    ImageLibraryEntryDescriptors,
    MeasurementReport,
    ObservationContext,
    ObserverContext,
    RelationshipTypeValues,
    TextContentItem,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import Comprehensive3DSRStorage, ComprehensiveSRStorage, EnhancedSRStorage

from dicom_node import identity
from dicom_node.results import uids
from dicom_node.results.common import (
    DEFAULT_SERIES_NUMBERS,
    Predecessor,
    algorithm_equipment,
    as_value_error,
    check_prediction,
    check_sources,
    ensure_encodable,
    header_copy,
    private_coding_schemes,
)
from dicom_node.results.findings import ImageRef, measurement_groups
from dicom_node.wording import out_of_scope_text
from inference.types import PRIVATE_SCHEME, ModelInfo, SeriesPrediction

SRClass = Literal["comprehensive3d", "comprehensive", "enhanced"]

_SR_CLASSES: Final[
    dict[str, type[hd.sr.Comprehensive3DSR | hd.sr.ComprehensiveSR | hd.sr.EnhancedSR]]
] = {
    "comprehensive3d": hd.sr.Comprehensive3DSR,
    "comprehensive": hd.sr.ComprehensiveSR,
    "enhanced": hd.sr.EnhancedSR,
}

# SOP Class UID of each SR class, for callers that describe an SR they did not build here.
SR_CLASS_UIDS: Final[dict[str, str]] = {
    "comprehensive3d": Comprehensive3DSRStorage,
    "comprehensive": ComprehensiveSRStorage,
    "enhanced": EnhancedSRStorage,
}

# The "Qualitative Evaluations" container of TID 1500, which the template codes in UMLS.
QUALITATIVE_EVALUATIONS: Final = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")

# Projection radiography modalities (PS3.3 C.7.3.1.1.1 defined terms) that a chest X-ray
# procedure code covers.
_XR_MODALITIES: Final = frozenset({"CR", "DX", "RG"})
_BODY_PART_ALIASES: Final[dict[str, str]] = {
    "CHEST": "CHEST",
    "LUNG": "CHEST",
    "THORAX": "CHEST",
    "HEAD": "HEAD",
    "BRAIN": "HEAD",
    "SKULL": "HEAD",
}
# SNOMED finding sites that imply a body region when Body Part Examined is absent.
_SITE_TO_BODY_PART: Final[dict[str, str]] = {
    "39607008": "CHEST",  # Lung structure
    "51185008": "CHEST",  # Thoracic structure
    "12738006": "HEAD",  # Brain structure
    "69536005": "HEAD",  # Head structure
}
_SPECIFIC_PROCEDURES: Final[dict[tuple[str, str], CodedConcept]] = {
    ("XR", "CHEST"): CodedConcept("399208008", "SCT", "Plain chest X-ray"),
    ("CT", "CHEST"): CodedConcept("169069000", "SCT", "Computed tomography of chest"),
    ("CT", "HEAD"): CodedConcept("303653007", "SCT", "Computed tomography of head"),
    ("MR", "HEAD"): CodedConcept("241601008", "SCT", "Magnetic resonance imaging of head"),
}
_MODALITY_PROCEDURES: Final[dict[str, CodedConcept]] = {
    "XR": CodedConcept("43468-8", "LN", "XR unspecified body region"),
    "CT": CodedConcept("25045-6", "LN", "CT unspecified body region"),
    "MR": CodedConcept("25056-3", "LN", "MRI unspecified body region"),
    "PT": CodedConcept("44136-0", "LN", "PET unspecified body region"),
    "NM": CodedConcept("49118-3", "LN", "NM unspecified body region"),
}
IMAGING_PROCEDURE: Final = CodedConcept("363679005", "SCT", "Imaging procedure")


def build_sr(
    sources: Sequence[Dataset],
    prediction: SeriesPrediction,
    *,
    series_uid: str,
    instance_uid: str,
    sr_class: SRClass = "comprehensive3d",
    predecessor: Predecessor | None = None,
    series_number: int = DEFAULT_SERIES_NUMBERS["sr"],
    instance_number: int = 1,
) -> Dataset:
    """Build the TID 1500 Measurement Report of one model's result on one series.

    Parameters
    ----------
    sources : Sequence[pydicom.Dataset]
        The instances of the analysed series (headers suffice); all become evidence, and
        those the model scored are referenced in the measurement group.
    prediction : inference.types.SeriesPrediction
        The model's decision on the series.
    series_uid, instance_uid : str
        UIDs of the SR (see :mod:`dicom_node.results.uids`).
    sr_class : {"comprehensive3d", "comprehensive", "enhanced"}, optional
        SR SOP class; Comprehensive 3D SR is what IHE AIR asks for, the others are for
        PACS that do not support it.
    predecessor : Predecessor, optional
        The SR this one replaces (earlier generation); goes into the Predecessor
        Documents Sequence so a viewer can tell the newer version.
    series_number, instance_number : int, optional
        Numbers shown by viewers.

    Returns
    -------
    pydicom.Dataset
        The SR document, in the study of the sources.

    Raises
    ------
    ValueError
        When the inputs cannot give a valid SR (mixed series, unknown class, a scored
        image that is not among the sources, unknown ``sr_class``...).
    """
    if sr_class not in _SR_CLASSES:
        raise ValueError(f"sr_class must be one of {sorted(_SR_CLASSES)}, not {sr_class!r}")
    check_sources(sources)
    check_prediction(prediction)
    model = prediction.model
    with as_value_error("structured report"):
        report = measurement_report(sources, prediction)
        # The SR constructor reads Type 2 patient/study attributes from evidence[0] with
        # attribute access; header copies add them empty where the modality left them out.
        evidence = [header_copy(ds) for ds in sources]
        sr = _SR_CLASSES[sr_class](
            evidence=evidence,
            content=report,
            series_instance_uid=series_uid,
            series_number=series_number,
            sop_instance_uid=instance_uid,
            instance_number=instance_number,
            # COMPLETE: the document holds everything the model produced for this series;
            # late instances produce a new document that names this one as predecessor,
            # they do not complete this one. UNVERIFIED: no person has checked an AI result,
            # and VERIFIED would require a verifying observer we do not have. PRELIMINARY
            # (is_final=False): an unverified machine output is never the final report.
            is_complete=True,
            is_verified=False,
            is_final=False,
            previous_versions=[predecessor.as_dataset()] if predecessor else None,
            contributing_equipment=[algorithm_equipment(model)],
            series_description=f"AI {model.name} result"[:64],
            coding_schemes=private_coding_schemes(model, extra=[PRIVATE_SCHEME]),
            manufacturer=identity.MANUFACTURER,
            manufacturer_model_name=identity.MANUFACTURER_MODEL_NAME,
            software_versions=identity.SOFTWARE_VERSIONS,
        )
    ensure_encodable(sr, "structured report")
    return sr


def measurement_report(
    sources: Sequence[Dataset], prediction: SeriesPrediction
) -> MeasurementReport:
    """The TID 1500 content tree (see the module docstring)."""
    model = prediction.model
    groups, images = measurement_groups(
        sources, prediction, referenced_sources(sources, prediction)
    )
    report = MeasurementReport(
        observation_context=_observation_context(model),
        procedure_reported=procedure_reported(sources[0], model),
        imaging_measurements=groups,
        referenced_images=[library_dataset(ds) for ds in images] or None,
    )
    # TID 1500 "Qualitative Evaluations" holds the statements about the whole report.
    report[0].ContentSequence.append(_report_comments(prediction))
    return report


def referenced_sources(sources: Sequence[Dataset], prediction: SeriesPrediction) -> list[ImageRef]:
    """Return the sources the model scored, each with the frames it scored.

    Every SR image reference must point at evidence, so a scored instance missing from
    ``sources`` is an error. A prediction without per-slice scores references all sources.
    Frame numbers are given only for multi-frame instances (Referenced Frame Number has
    no meaning for a single-frame image); an instance scored without frame numbers is
    referenced whole.
    """
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    frames: dict[str, set[int]] = {}
    for score in prediction.slices:
        if score.sop_instance_uid not in by_uid:
            raise ValueError(f"scored instance {score.sop_instance_uid} is not among the sources")
        selected = frames.setdefault(score.sop_instance_uid, set())
        if score.frame is not None:
            selected.add(_checked_frame(by_uid[score.sop_instance_uid], score.frame))
    if not frames:
        return [(ds, None) for ds in sources]
    return [(ds, _frame_list(ds, frames[uid])) for uid, ds in by_uid.items() if uid in frames]


def _checked_frame(ds: Dataset, frame: int) -> int:
    count = int(ds.get("NumberOfFrames") or 1)
    if not 1 <= frame <= count:
        raise ValueError(f"frame {frame} of instance {ds.SOPInstanceUID} is outside 1..{count}")
    return frame


def _frame_list(ds: Dataset, frames: set[int]) -> list[int] | None:
    if int(ds.get("NumberOfFrames") or 1) <= 1 or not frames:
        return None
    return sorted(frames)


def procedure_reported(source: Dataset, model: ModelInfo) -> CodedConcept:
    """Code the imaging procedure from modality and body part (see the module table)."""
    family = _modality_family(str(source.get("Modality", "")).upper())
    body_part = _body_part(source, model)
    specific = _SPECIFIC_PROCEDURES.get((family, body_part))
    if specific is not None:
        return specific
    return _MODALITY_PROCEDURES.get(family, IMAGING_PROCEDURE)


def _modality_family(modality: str) -> str:
    return "XR" if modality in _XR_MODALITIES else modality


def _body_part(source: Dataset, model: ModelInfo) -> str:
    examined = str(source.get("BodyPartExamined", "") or "").upper().strip()
    if examined:
        return _BODY_PART_ALIASES.get(examined, examined)
    site = model.finding_site
    if site is not None and site.scheme_designator in {"SCT", "SRT"}:
        return _SITE_TO_BODY_PART.get(site.value, "")
    return ""


def _observation_context(model: ModelInfo) -> ObservationContext:
    # The observer is the model, not a person: a device observer whose UID changes with
    # the model version, so two versions are never mistaken for one observer.
    device = DeviceObserverIdentifyingAttributes(
        uid=uids.model_device_uid(model.id, model.version),
        name=model.name[:64],
        manufacturer_name=identity.MANUFACTURER,
        model_name=f"{model.id} {model.version}"[:64],
    )
    return ObservationContext(
        observer_device_context=ObserverContext(
            observer_type=codes.cid270.Device,
            observer_identifying_attributes=device,
        )
    )


def library_dataset(ds: Dataset) -> Dataset:
    """``ds``, or a header copy that highdicom's Image Library can describe.

    highdicom reads the projection (TID 1603) or cross-sectional (TID 1604) descriptors
    from top-level attributes and raises when one is missing; a zero pixel spacing (as in
    RG1_UNCI) would be described as a 0 mm pixel. For such images the copy carries no
    Modality attribute, so only the general descriptors (TID 1602: modality coded from
    the SOP class, frame of reference, rows, columns) are written. The copy is used for
    the library only; the image itself stays referenced and in the evidence as it is.
    """
    if _describable(ds):
        return ds
    copy = Dataset()
    for keyword in (
        "SOPClassUID",
        "SOPInstanceUID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "Rows",
        "Columns",
        "FrameOfReferenceUID",
    ):
        if keyword in ds:
            setattr(copy, keyword, ds.get(keyword))
    copy.Modality = ""  # neither projection nor cross-sectional: general descriptors only
    return copy


def _describable(ds: Dataset) -> bool:
    try:
        ImageLibraryEntryDescriptors(ds)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        return False
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        spacing = ds.get(keyword)
        if spacing is not None and any(float(v) <= 0.0 for v in spacing):
            return False  # the descriptor would state a 0 mm pixel
    return True


def _report_comments(prediction: SeriesPrediction) -> ContainerContentItem:
    container = ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS,
        relationship_type=RelationshipTypeValues.CONTAINS,
    )
    notes = [identity.NOT_FOR_DIAGNOSTIC_USE]
    if prediction.out_of_scope:
        scope = prediction.model.scope
        notes.append(
            out_of_scope_text(prediction.out_of_scope)
            + (f". Intended use: {scope}" if scope else "")
        )
    container.ContentSequence = ContentSequence(
        [
            TextContentItem(
                name=codes.DCM.Comment,
                value=note,
                relationship_type=RelationshipTypeValues.CONTAINS,
            )
            for note in notes
        ]
    )
    return container
