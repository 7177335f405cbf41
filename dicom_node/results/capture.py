"""An uploaded picture becomes a Secondary Capture image in a new study.

The five apps this node grew out of took a JPEG or PNG on a web page. The node works on
DICOM (routes match tags, results reference their source image, the PACS files them in a
study), so a picture is wrapped as what DICOM calls a picture of unknown provenance: a
Secondary Capture Image (PS3.3 A.8.1), built with highdicom's ``SCImage`` and finished
here:

* Modality and Body Part Examined are the ones the person chose: routes match on them
  (highdicom writes Modality OT; the General Series module allows the real modality).
* New Study, Series and SOP Instance UIDs; the patient as typed in, or anonymous (a
  generated Patient ID, Patient Identity Removed YES), never invented data.
* NOT FOR DIAGNOSTIC USE in the Image Comments and the Series Description, where a PACS
  shows it; the pixels themselves are left as uploaded, since the model reads them.
* Manufacturer "dicom-node", with a Manufacturer's Model Name other than the results'
  (``identity.UPLOAD_MODEL_NAME``): routing ignores objects the node made as results, not
  pictures a person uploaded through it.
* Grey pictures (also RGB ones whose three channels are equal, as many exported X-rays
  are) are MONOCHROME2 with a VOI window that maps the stored values back to exactly
  the picture's grey levels, so the model sees the picture as it was; colour pictures
  are RGB. EXIF orientation is applied first, as a browser shows the picture.
* Lossy Image Compression 01 for a JPEG source: the pixels went through a lossy codec.
* Laterality present and empty for a paired body part (dciodvfy ties it to Body Part
  Examined, see ``results.sc``); absent for an unpaired one.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import highdicom as hd
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pydicom.valuerep import DA, TM

from dicom_node import identity
from dicom_node.results.sc import UNPAIRED_BODY_PARTS

# What a browser or curl may upload as a picture, by what the bytes are (not the name).
PICTURE_FORMATS: Final = {"JPEG": "image/jpeg", "PNG": "image/png"}
# A Code String (PS3.5 6.2): upper-case letters, digits, space and underscore, 16 at most.
_CS = re.compile(r"^[A-Z0-9 _]{1,16}$")
# Person Name components and Long Strings: no backslash (value separator) or controls.
_FORBIDDEN = re.compile(r"[\\\x00-\x1f\x7f]")
# Shown where a PACS lists series, and in the image's comments (LO: 64 characters).
SERIES_DESCRIPTION: Final = "Uploaded picture - NOT FOR DIAGNOSTIC USE"
# A family name alone is written "FAMILY^": dciodvfy reads a name without a caret as the
# retired (pre-1993) form.
ANONYMOUS_NAME: Final = "ANONYMOUS^"


class PictureError(ValueError):
    """The picture cannot become an image: not JPEG or PNG, unreadable, or too large.

    ``unsupported`` is True when the bytes are not a JPEG or PNG picture at all (the web
    answers 415), False when they claim to be one but cannot be used (422).
    """

    def __init__(self, message: str, *, unsupported: bool = False) -> None:
        super().__init__(message)
        self.unsupported = unsupported


def _text(value: str, what: str, limit: int) -> str:
    value = value.strip()
    if len(value) > limit:
        raise ValueError(f"{what} is longer than {limit} characters")
    if _FORBIDDEN.search(value):
        raise ValueError(f"{what} must not contain a backslash or control characters")
    return value


def code_string(value: str, what: str) -> str:
    """``value`` as a DICOM Code String (upper case), or a clear ValueError."""
    value = value.strip().upper()
    if not _CS.match(value):
        raise ValueError(
            f"{what} {value!r} is not a DICOM code string: 1 to 16 letters, digits, "
            "spaces or underscores"
        )
    return value


@dataclass(frozen=True)
class PatientFields:
    """Who the picture shows, as typed in, or anonymous.

    Parameters
    ----------
    family_name, given_name
        Person Name components (``FAMILY^GIVEN``).
    patient_id
        Patient ID (LO). Anonymous pictures get a generated one, so that two of them are
        never filed as one patient.
    birth_date
        ``YYYYMMDD`` or ``YYYY-MM-DD`` (an HTML date field), not in the future; or "".
    sex
        ``M``, ``F``, ``O`` or "".
    anonymous
        No patient identity: every other field must be empty.

    Raises
    ------
    ValueError
        A field that DICOM cannot hold, or patient data given with ``anonymous``, or
        neither a name nor an ID without it.
    """

    family_name: str = ""
    given_name: str = ""
    patient_id: str = ""
    birth_date: str = ""
    sex: str = ""
    anonymous: bool = False

    def __post_init__(self) -> None:
        family = _text(self.family_name, "family name", 64)
        given = _text(self.given_name, "given name", 64)
        if "^" in family + given or "=" in family + given:
            raise ValueError("name fields must not contain ^ or =")
        pid = _text(self.patient_id, "patient ID", 64)
        birth = self.birth_date.strip().replace("-", "")
        if birth:
            try:
                born = dt.datetime.strptime(birth, "%Y%m%d").date()
            except ValueError:
                raise ValueError(
                    f"birth date {self.birth_date!r} is not a date (YYYY-MM-DD)"
                ) from None
            if born > dt.date.today():
                raise ValueError(f"birth date {self.birth_date!r} is in the future")
        sex = self.sex.strip().upper()
        if sex not in ("", "M", "F", "O"):
            raise ValueError(f"sex {self.sex!r} must be M, F, O or empty")
        if self.anonymous and (family or given or pid or birth or sex):
            raise ValueError("an anonymous upload takes no patient name, ID, birth date or sex")
        if not self.anonymous and not (family or pid):
            raise ValueError("give the patient's family name or ID, or mark the upload anonymous")
        for name, value in (
            ("family_name", family),
            ("given_name", given),
            ("patient_id", pid),
            ("birth_date", birth),
            ("sex", sex),
        ):
            object.__setattr__(self, name, value)

    @property
    def person_name(self) -> str:
        if self.anonymous:
            return ANONYMOUS_NAME
        return f"{self.family_name}^{self.given_name}"


@dataclass(frozen=True)
class Picture:
    """A decoded picture: pixels as the SC stores them, and where they came from."""

    pixels: npt.NDArray[np.uint8] | npt.NDArray[np.uint16]
    photometric: str  # MONOCHROME2 or RGB
    bits: int  # 8 or 16
    format: str  # JPEG or PNG

    @property
    def rows(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def columns(self) -> int:
        return int(self.pixels.shape[1])


def picture_format(path: Path) -> str | None:
    """``JPEG`` or ``PNG`` when the file is such a picture (by its bytes), else None."""
    try:
        with Image.open(path) as opened:
            kind = opened.format
    except Exception:  # a sniff: whatever Pillow makes of other bytes means "no"
        return None
    return kind if kind in PICTURE_FORMATS else None


def read_picture(path: Path, *, max_pixels: int) -> Picture:
    """Decode a JPEG or PNG picture for :func:`capture_picture`.

    The size in the picture's header is checked against ``max_pixels`` before a pixel is
    decoded (a 100 KB PNG can claim gigapixels).

    Raises
    ------
    PictureError
        Not a JPEG or PNG (``unsupported``), larger than ``max_pixels``, or broken.
    """
    try:
        opened = Image.open(path)
    except Exception as exc:  # not a picture Pillow knows
        raise PictureError(
            f"not a JPEG or PNG picture ({type(exc).__name__})", unsupported=True
        ) from None
    with opened:
        if opened.format not in PICTURE_FORMATS:
            raise PictureError(
                f"a {opened.format} picture; only JPEG and PNG are taken", unsupported=True
            )
        width, height = opened.size
        if width * height > max_pixels:
            raise PictureError(
                f"picture of {width} x {height} pixels is larger than "
                f"{max_pixels} pixels (workers.max_frame_pixels)"
            )
        kind = str(opened.format)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = ImageOps.exif_transpose(opened)
                image.load()
        except Exception as exc:  # Pillow's decoders raise many kinds on broken data
            raise PictureError(f"the {kind} picture cannot be decoded: {exc}") from None
    return _pixels(image, kind)


def _pixels(image: Image.Image, kind: str) -> Picture:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grey PNG: kept at its depth (a PNG export of an X-ray often is).
        wide = np.asarray(image, dtype=np.int64)
        return Picture(np.clip(wide, 0, 65535).astype(np.uint16), "MONOCHROME2", 16, kind)
    if image.mode in ("L", "1", "LA", "La"):
        grey = np.asarray(image.convert("L"), dtype=np.uint8)
        return Picture(np.ascontiguousarray(grey), "MONOCHROME2", 8, kind)
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return Picture(np.ascontiguousarray(rgb[..., 0]), "MONOCHROME2", 8, kind)
    return Picture(np.ascontiguousarray(rgb), "RGB", 8, kind)


def capture_picture(
    picture: Picture,
    *,
    modality: str,
    body_part: str,
    patient: PatientFields,
    now: dt.datetime | None = None,
) -> Dataset:
    """The Secondary Capture image of an uploaded picture, in a new study.

    Parameters
    ----------
    picture
        From :func:`read_picture`.
    modality, body_part
        As chosen (DICOM code strings, e.g. ``DX`` and ``CHEST``); routes match them.
    patient
        Typed in or anonymous.
    now
        Study, series and content date and time (local time, as modalities write them).

    Returns
    -------
    pydicom.dataset.Dataset
        With File Meta, ready for ``save_as(..., enforce_file_format=True)``.

    Raises
    ------
    ValueError
        A modality or body part that is not a code string.
    """
    modality = code_string(modality, "modality")
    body_part = code_string(body_part, "body part")
    now = now or dt.datetime.now()
    pixels = picture.pixels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ds = hd.sc.SCImage(
            pixel_array=pixels,
            photometric_interpretation=picture.photometric,
            bits_allocated=picture.bits,
            coordinate_system="PATIENT",
            study_instance_uid=generate_uid(),
            series_instance_uid=generate_uid(),
            series_number=1,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer=identity.MANUFACTURER,
            patient_id=_patient_id(patient),
            patient_name=patient.person_name,
            patient_birth_date=patient.birth_date or None,
            patient_sex=patient.sex or None,
            accession_number=None,
            study_id="UPLOAD",
            study_date=now.date(),
            study_time=now.time().replace(microsecond=0),
            referring_physician_name=None,
            # highdicom accepts only single letters; the orientation of an uploaded
            # picture is not known, so the Type 2 attribute is emptied below.
            patient_orientation=("L", "P"),
        )
    ds.SpecificCharacterSet = "ISO_IR 192"  # names may be typed in any script
    ds.PatientOrientation = []  # Type 2: present, empty
    ds.Modality = modality
    ds.BodyPartExamined = body_part
    if body_part not in UNPAIRED_BODY_PARTS:
        ds.Laterality = ""  # paired part, side unknown (Type 2C)
    ds.ManufacturerModelName = identity.UPLOAD_MODEL_NAME
    ds.SoftwareVersions = identity.SOFTWARE_VERSIONS
    ds.SeriesDescription = SERIES_DESCRIPTION
    ds.StudyDescription = f"Upload {modality} {body_part}"[:64]
    ds.SeriesDate = ds.ContentDate = DA(now.strftime("%Y%m%d"))
    ds.SeriesTime = ds.ContentTime = TM(now.strftime("%H%M%S"))
    ds.ImageComments = (
        f"{identity.NOT_FOR_DIAGNOSTIC_USE} Converted from an uploaded {picture.format} picture."
    )
    ds.DerivationDescription = f"Converted from an uploaded {picture.format} picture"
    if picture.format == "JPEG":
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    else:
        ds.LossyImageCompression = "00"
    if picture.photometric == "MONOCHROME2":
        # Width 2**bits centred at 2**(bits-1) maps a stored x to x / (2**bits - 1)
        # (PS3.3 C.11.2.1.2.1): a reader applying the window sees the picture's levels.
        ds.WindowCenter = 2 ** (picture.bits - 1)
        ds.WindowWidth = 2**picture.bits
        ds.VOILUTFunction = "LINEAR"
    if patient.anonymous:
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "Uploaded without patient identity"
    return ds


def _patient_id(patient: PatientFields) -> str:
    if patient.anonymous:
        return f"ANON-{secrets.token_hex(6).upper()}"
    return patient.patient_id
