"""An uploaded picture becomes a Secondary Capture (``results.capture``), checked by dciodvfy."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from dicom_node.config import Route
from dicom_node.demo.studymaker import pneumonia_package_pictures
from dicom_node.identity import NOT_FOR_DIAGNOSTIC_USE_SHORT, UPLOAD_MODEL_NAME
from dicom_node.results.capture import (
    PatientFields,
    PictureError,
    capture_picture,
    read_picture,
)
from dicom_node.route.rules import evaluate, is_own_object, tags_for
from tests.dicom_validate import assert_dciodvfy_clean

MAX = 40_000_000
PICTURES = pneumonia_package_pictures()


def save(path: Path, image: Image.Image, fmt: str, **options: object) -> Path:
    image.save(path, format=fmt, **options)
    return path


def roundtrip(ds: pydicom.Dataset) -> pydicom.Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


@pytest.mark.skipif(not PICTURES, reason="pneumonia-model-package not installed")
def test_real_chest_jpeg_is_a_valid_secondary_capture() -> None:
    picture = read_picture(PICTURES[0], max_pixels=MAX)
    patient = PatientFields(
        family_name="Müller", given_name="Jürgen", patient_id="P-7", birth_date="2015-03-02"
    )
    ds = roundtrip(capture_picture(picture, modality="dx", body_part="chest", patient=patient))
    warnings = assert_dciodvfy_clean(ds)
    assert not [w for w in warnings if "Laterality" in w]  # CHEST is unpaired: absent
    assert "Laterality" not in ds
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert (ds.Modality, ds.BodyPartExamined) == ("DX", "CHEST")
    assert str(ds.PatientName) == "Müller^Jürgen" and ds.PatientBirthDate == "20150302"
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert NOT_FOR_DIAGNOSTIC_USE_SHORT in ds.ImageComments
    assert NOT_FOR_DIAGNOSTIC_USE_SHORT in ds.SeriesDescription
    assert ds.LossyImageCompression == "01" and ds.ConversionType == "DI"
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsStored == 8
    # the window maps the stored values back to the picture's own grey levels
    assert (ds.WindowCenter, ds.WindowWidth) == (128, 256)
    with Image.open(PICTURES[0]) as original:
        assert np.array_equal(ds.pixel_array, np.asarray(original))
    # routed like any DX chest (it is not one of our results), never ignored as our own
    assert not is_own_object(ds) and ds.ManufacturerModelName == UPLOAD_MODEL_NAME
    route = Route(
        name="chest",
        match={"Modality": "^(CR|DX)$", "BodyPartExamined": "^CHEST$"},
        models=("chest-xray-pneumonia",),
    )
    assert evaluate([route], tags_for(ds, "UPLOAD")).routed


def test_anonymous_colour_png_of_a_paired_part(tmp_path: Path) -> None:
    pixels = np.zeros((90, 120, 3), dtype=np.uint8)
    pixels[..., 0] = np.arange(120, dtype=np.uint8)[None, :]
    pixels[30:60, 40:80, 2] = 255
    path = save(tmp_path / "knee.png", Image.fromarray(pixels), "PNG")
    picture = read_picture(path, max_pixels=MAX)
    first = capture_picture(
        picture, modality="CR", body_part="KNEE", patient=PatientFields(anonymous=True)
    )
    second = capture_picture(
        picture, modality="CR", body_part="KNEE", patient=PatientFields(anonymous=True)
    )
    ds = roundtrip(first)
    assert_dciodvfy_clean(ds)
    assert ds.PhotometricInterpretation == "RGB" and np.array_equal(ds.pixel_array, pixels)
    assert str(ds.PatientName) == "ANONYMOUS^" and ds.PatientIdentityRemoved == "YES"
    assert ds.PatientID.startswith("ANON-") and ds.PatientID != second.PatientID
    assert ds.LossyImageCompression == "00"  # PNG is lossless
    assert "Laterality" in ds and ds.Laterality == ""  # paired part, side unknown
    assert "WindowCenter" not in ds
    # every upload is a new study
    assert first.StudyInstanceUID != second.StudyInstanceUID


def test_sixteen_bit_png_keeps_its_depth_and_exif_orientation_applies(tmp_path: Path) -> None:
    wide = (np.arange(200 * 100, dtype=np.uint32).reshape(100, 200) * 3 % 65536).astype(np.uint16)
    path = save(tmp_path / "deep.png", Image.fromarray(wide), "PNG")
    ds = roundtrip(
        capture_picture(
            read_picture(path, max_pixels=MAX),
            modality="DX",
            body_part="HAND",
            patient=PatientFields(patient_id="P1"),
        )
    )
    assert_dciodvfy_clean(ds)
    assert ds.BitsAllocated == 16 and np.array_equal(ds.pixel_array, wide)
    assert (ds.WindowCenter, ds.WindowWidth) == (32768, 65536)
    assert str(ds.PatientName) == "^"  # only an ID was given

    # a phone picture stored sideways with EXIF Orientation 6 (rotate 90 degrees clockwise)
    grey = np.zeros((60, 100), dtype=np.uint8)
    grey[:, :10] = 255  # a bright band on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(tmp_path / "phone.jpeg", Image.fromarray(grey), "JPEG", exif=exif, quality=95)
    picture = read_picture(path, max_pixels=MAX)
    assert (picture.rows, picture.columns) == (100, 60)  # shown upright, as a browser does
    assert picture.pixels[:5, :].mean() > 200  # the band is now at the top


def test_pictures_that_cannot_become_images(tmp_path: Path) -> None:
    gif = save(tmp_path / "a.gif", Image.new("L", (80, 80)), "GIF")
    with pytest.raises(PictureError, match="GIF picture; only JPEG and PNG") as err:
        read_picture(gif, max_pixels=MAX)
    assert err.value.unsupported
    text = tmp_path / "a.txt"
    text.write_text("not a picture")
    with pytest.raises(PictureError, match="not a JPEG or PNG") as err:
        read_picture(text, max_pixels=MAX)
    assert err.value.unsupported
    big = save(tmp_path / "big.png", Image.new("L", (400, 300)), "PNG")
    with pytest.raises(PictureError, match="400 x 300 pixels is larger than 100000") as err:
        read_picture(big, max_pixels=100_000)
    assert not err.value.unsupported
    noise = np.random.default_rng(1).integers(0, 255, (300, 300), dtype=np.uint8)
    whole = save(tmp_path / "whole.jpeg", Image.fromarray(noise), "JPEG").read_bytes()
    cut = tmp_path / "cut.jpeg"
    cut.write_bytes(whole[: len(whole) // 2])  # the header is whole, the scan is not
    with pytest.raises(PictureError, match="cannot be decoded"):
        read_picture(cut, max_pixels=MAX)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "family name or ID, or mark the upload anonymous"),
        ({"anonymous": True, "family_name": "Doe"}, "an anonymous upload takes no patient"),
        ({"family_name": "Doe^Jane"}, "must not contain \\^ or ="),
        ({"patient_id": "P\\1"}, "backslash"),
        ({"patient_id": "x" * 65}, "longer than 64"),
        ({"patient_id": "P1", "birth_date": "2020-02-30"}, "is not a date"),
        ({"patient_id": "P1", "sex": "X"}, "must be M, F, O or empty"),
    ],
)
def test_patient_fields_are_checked(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PatientFields(**fields)  # type: ignore[arg-type]


def test_modality_must_be_a_code_string(tmp_path: Path) -> None:
    path = save(tmp_path / "p.png", Image.new("L", (80, 80)), "PNG")
    picture = read_picture(path, max_pixels=MAX)
    with pytest.raises(ValueError, match="modality 'X-RAY' is not a DICOM code string"):
        capture_picture(
            picture, modality="x-ray", body_part="CHEST", patient=PatientFields(anonymous=True)
        )
