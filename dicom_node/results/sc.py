"""Grad-CAM Secondary Capture: the heatmap a person looks at, with the result burned in.

Every PACS viewer can show a Secondary Capture, so this is the result most users will
see. The picture is :func:`dicom_node.results.picture.labelled_heatmap`: the runtime's
overlay (heatmap blended over the correctly windowed source image) below a band that
names the class the map explains ("Grad-CAM for PNEUMONIA"), states the result, shows the
colour scale and its meaning, flags a series outside the model's intended use and says
NOT FOR DIAGNOSTIC USE, all burned into the pixels, so no viewer can show the heatmap
without them. The resolution policy is documented in that module.

highdicom's ``SCImage.from_ref_dataset`` copies patient and study from the source; the
rest is fixed here because highdicom does not do it:

* Conversion Type WSD (workstation): highdicom hard-codes DI (digitized image).
* Burned In Annotation YES: the pixels carry identifying and result text.
* Source Image Sequence: the image (and frame) the heatmap explains.
* Patient Orientation: from the source, or derived from its Image Orientation (Patient);
  highdicom accepts only single letters, so it is written after construction.
* Laterality: present only for paired body parts (dciodvfy ties it to Body Part
  Examined), empty when the source does not say which side.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Final

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node import identity
from dicom_node.results.common import (
    DEFAULT_SERIES_NUMBERS,
    algorithm_equipment,
    as_value_error,
    check_prediction,
    check_sources,
    ensure_encodable,
    header_copy,
)
from dicom_node.results.picture import explained, labelled_heatmap, method_name
from dicom_node.wording import out_of_scope_text
from inference.types import Heatmap, ModelInfo, SeriesPrediction

# Body Part Examined terms that dicom3tools' dciodvfy knows as unpaired structures (it
# then forbids Laterality). Every other term, including ones it does not know, it treats
# as paired and requires Laterality (Type 2C, empty when unknown). Checked with dciodvfy
# from Debian's dicom3tools against every defined term of PS3.16 Annex L we tried.
UNPAIRED_BODY_PARTS: Final = frozenset(
    {
        "ABDOMEN", "ABDOMENPELVIS", "AORTA", "BACK", "BLADDER", "BRAIN", "CEREBELLUM",
        "CERVIX", "CHEST", "CHESTABDOMEN", "CHESTABDPELVIS", "CIRCLEOFWILLIS", "COCCYX",
        "COLON", "CORONARYARTERY", "CSPINE", "CTSPINE", "DUODENUM", "ESOPHAGUS", "FACE",
        "GALLBLADDER", "HEAD", "HEADNECK", "HEART", "ILEUM", "ILIUM", "JAW", "JEJUNUM",
        "LARYNX", "LIVER", "LSPINE", "LSSPINE", "MAXILLA", "MEDIASTINUM", "MOUTH", "NECK",
        "NECKCHEST", "NECKCHESTABDOMEN", "NECKCHESTABDPELV", "NOSE", "PANCREAS", "PELVIS",
        "PENIS", "PHARYNX", "PROSTATE", "RECTUM", "SKULL", "SPINE", "SPLEEN", "SSPINE",
        "STERNUM", "STOMACH", "THYMUS", "THYROID", "TLSPINE", "TONGUE", "TRACHEA",
        "TSPINE", "URETER", "URETHRA", "UTERUS", "VAGINA", "VULVA", "WHOLEBODY",
    }
)  # fmt: skip

# highdicom validates Patient Orientation against single letters only; any valid value
# lets the constructor run, and the real (possibly oblique or empty) value replaces it.
_ORIENTATION_PLACEHOLDER: Final = ("L", "P")
# Direction cosines below this are rounding noise, not obliquity (about 0.6 degrees).
_COSINE_TOLERANCE: Final = 0.01


def build_sc(
    source: Dataset,
    heatmap: Heatmap,
    prediction: SeriesPrediction,
    *,
    series_uid: str,
    instance_uid: str,
    instance_number: int,
    series_number: int = DEFAULT_SERIES_NUMBERS["sc"],
) -> Dataset:
    """Build the Secondary Capture showing one heatmap with the result burned in.

    Parameters
    ----------
    source : pydicom.Dataset
        The instance the heatmap explains (its header suffices).
    heatmap : inference.types.Heatmap
        The runtime's heatmap of ``source``; ``overlay`` is the RGB picture shown.
    prediction : inference.types.SeriesPrediction
        The series decision whose model, class and probability are burned in.
    series_uid, instance_uid : str
        UIDs of the Secondary Capture (see :mod:`dicom_node.results.uids`).
    instance_number : int
        Instance Number in the SC series (:func:`build_results` numbers key slices in
        order, most positive first, and continues across generations).
    series_number : int, optional
        Series Number shown by viewers.

    Returns
    -------
    pydicom.Dataset
        The Secondary Capture Image, in the study of ``source``.

    Raises
    ------
    ValueError
        When the heatmap is not of ``source`` (other instance, bad frame) or is not
        an 8-bit RGB picture, or the prediction is inconsistent.
    """
    check_sources([source])
    check_prediction(prediction)
    with as_value_error("secondary capture"):
        frame = _checked_frame(source, heatmap)
        pixels = labelled_heatmap(prediction, heatmap)
        model = prediction.model
        with warnings.catch_warnings():
            # highdicom re-checks the source's person names (e.g. a one-word referring
            # physician "ward"); they are the PACS's data, copied as they are, so the
            # warning would only repeat in every worker log.
            warnings.filterwarnings("ignore", message=r"The string .* person name")
            sc = _sc_from_source(
                source, pixels, series_uid, series_number, instance_uid, instance_number, model
            )
        sc.PatientOrientation = patient_orientation(source, frame)
        _set_anatomy(sc, source)
        _set_derivation(sc, source, frame, prediction, heatmap)
    ensure_encodable(sc, "secondary capture")
    return sc


def _checked_frame(source: Dataset, heatmap: Heatmap) -> int | None:
    """Return the 1-based frame of ``source`` the heatmap shows (None: single frame)."""
    if heatmap.sop_instance_uid != str(source.SOPInstanceUID):
        raise ValueError(
            f"heatmap is of instance {heatmap.sop_instance_uid}, "
            f"not of the source {source.SOPInstanceUID}"
        )
    overlay = heatmap.overlay
    if overlay.dtype != np.uint8 or overlay.ndim != 3 or overlay.shape[2] != 3:
        raise ValueError(
            f"heatmap overlay must be uint8 RGB (rows, columns, 3), "
            f"got {overlay.dtype} {overlay.shape}"
        )
    frames = int(source.get("NumberOfFrames") or 1)
    if frames == 1:
        if heatmap.frame not in (None, 1):
            raise ValueError(f"single-frame source has no frame {heatmap.frame}")
        return None
    if heatmap.frame is None or not 1 <= heatmap.frame <= frames:
        raise ValueError(f"heatmap of a {frames}-frame source needs a frame in 1..{frames}")
    return heatmap.frame


def patient_orientation(source: Dataset, frame: int | None) -> list[str]:
    """Patient Orientation of the picture: the source's, or derived from its geometry.

    Cross-sectional images carry Image Orientation (Patient) instead (at the top level
    or, for enhanced multi-frame objects, in the functional groups); the row and column
    direction cosines give the letters, most dominant axis first (PS3.3 C.7.6.1.1.1).
    Returns empty values (Type 2, allowed) when neither is known.
    """
    given = [str(v) for v in (source.get("PatientOrientation") or [])]
    if len(given) == 2:
        return given
    cosines = _image_orientation(source, frame)
    if cosines is None:
        return ["", ""]
    return [_direction_letters(cosines[:3]), _direction_letters(cosines[3:])]


def _image_orientation(source: Dataset, frame: int | None) -> list[float] | None:
    if "ImageOrientationPatient" in source:
        return [float(v) for v in source.ImageOrientationPatient]
    groups: list[Dataset] = []
    per_frame = source.get("PerFrameFunctionalGroupsSequence")
    if per_frame and frame is not None and frame <= len(per_frame):
        groups.append(per_frame[frame - 1])
    shared = source.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    for group in groups:
        plane = group.get("PlaneOrientationSequence")
        if plane and "ImageOrientationPatient" in plane[0]:
            return [float(v) for v in plane[0].ImageOrientationPatient]
    return None


def _direction_letters(vector: Sequence[float]) -> str:
    # Patient coordinate system (LPS): +x towards the patient's Left, +y Posterior, +z Head.
    names = (("L", "R"), ("P", "A"), ("H", "F"))
    order = sorted(range(3), key=lambda axis: -abs(vector[axis]))
    return "".join(
        names[axis][0 if vector[axis] > 0 else 1]
        for axis in order
        if abs(vector[axis]) > _COSINE_TOLERANCE
    )


def anatomy(source: Dataset) -> tuple[str | None, str | None]:
    """Return (Body Part Examined, Laterality) for the Secondary Capture.

    Laterality is None (absent) for unpaired parts, "R" or "L" when the source says so
    (Laterality, else Image Laterality), and "" (Type 2C: present, unknown) otherwise.
    Without Body Part Examined nobody can tell whether the part is paired, and dciodvfy
    then requires Laterality too, so an unknown part is handled like a paired one.
    """
    body_part = str(source.get("BodyPartExamined") or "").strip().upper() or None
    if body_part in UNPAIRED_BODY_PARTS:
        return body_part, None
    for keyword in ("Laterality", "ImageLaterality"):
        side = str(source.get(keyword) or "").strip().upper()
        if side in {"R", "L"}:
            return body_part, side
    return body_part, ""


def _set_anatomy(sc: Dataset, source: Dataset) -> None:
    body_part, laterality = anatomy(source)
    if body_part is not None:
        sc.BodyPartExamined = body_part
    if laterality is not None:
        # Set directly: highdicom's constructor rejects the empty (unknown) value.
        sc.Laterality = laterality


def _set_derivation(
    sc: Dataset,
    source: Dataset,
    frame: int | None,
    prediction: SeriesPrediction,
    heatmap: Heatmap,
) -> None:
    model = prediction.model
    # WSD: made by a workstation from other images; highdicom writes DI (digitised).
    sc.ConversionType = "WSD"
    # The pixels carry patient-relevant text (model, class, probability, caveat).
    sc.BurnedInAnnotation = "YES"
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if frame is not None:
        reference.ReferencedFrameNumber = frame
    reference.PurposeOfReferenceCodeSequence = [
        hd.sr.CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)
    ]
    sc.SourceImageSequence = [reference]
    label, _ = explained(prediction, heatmap)
    sc.DerivationDescription = (
        f"{method_name(heatmap.method)} for {label} of {model.name} {model.version} "
        f"blended over the displayed source image (uncoloured below {heatmap.floor:.2f} "
        f"of the map's peak); result text and colour scale burned in. "
        f"{identity.NOT_FOR_DIAGNOSTIC_USE_SHORT}."
    )[:1024]
    scope = out_of_scope_text(prediction.out_of_scope)
    # Image Comments is LT (10240 characters): room for the caveat and the scope notice.
    sc.ImageComments = (
        f"{scope}. {identity.NOT_FOR_DIAGNOSTIC_USE}"
        if scope
        else (identity.NOT_FOR_DIAGNOSTIC_USE)
    )


def _sc_from_source(
    source: Dataset,
    pixels: npt.NDArray[np.uint8],
    series_uid: str,
    series_number: int,
    instance_uid: str,
    instance_number: int,
    model: ModelInfo,
) -> hd.sc.SCImage:
    """highdicom's SC derived from the source: patient and study copied from it."""
    return hd.sc.SCImage.from_ref_dataset(
        ref_dataset=header_copy(source),
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=instance_uid,
        instance_number=instance_number,
        patient_orientation=_ORIENTATION_PLACEHOLDER,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[algorithm_equipment(model)],
        series_description=f"AI {model.name} heatmap"[:64],
        manufacturer=identity.MANUFACTURER,
        manufacturer_model_name=identity.MANUFACTURER_MODEL_NAME,
        software_versions=identity.SOFTWARE_VERSIONS,
    )
