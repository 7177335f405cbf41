"""DICOM pixels: LUTs, photometric interpretations, frames and transfer syntaxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from inference.pixels import (
    PixelError,
    Window,
    decode_frame,
    decode_frames,
    load_dataset,
    number_of_frames,
)


def read(name: str) -> Dataset:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not available (pydicom-data)")
    return pydicom.dcmread(path)


# (reference, variant, tolerance): lossless variants must match, lossy ones be close
VARIANTS = [
    # pydicom-data pairs: *_UNCR is the source of the lossless *_J2KR, *_UNCI of *_J2KI
    ("RG1_UNCR.dcm", "RG1_J2KR.dcm", 0.0),  # JPEG 2000 lossless, CR MONOCHROME1
    ("RG1_UNCI.dcm", "RG1_J2KI.dcm", 0.03),  # JPEG 2000 (lossy)
    ("RG3_UNCR.dcm", "RG3_J2KR.dcm", 0.0),
    ("RG3_UNCI.dcm", "RG3_J2KI.dcm", 0.03),
    ("MR2_UNCR.dcm", "MR2_J2KR.dcm", 0.0),
    ("MR2_UNCI.dcm", "MR2_J2KI.dcm", 0.03),
    ("693_UNCR.dcm", "693_J2KR.dcm", 0.0),
    ("693_UNCI.dcm", "693_J2KI.dcm", 0.03),
    ("MR_small.dcm", "MR_small_RLE.dcm", 0.0),
    ("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm", 0.0),  # JPEG-LS
    ("emri_small.dcm", "emri_small_RLE.dcm", 0.0),
    ("emri_small.dcm", "emri_small_jpeg_ls_lossless.dcm", 0.0),
    ("emri_small.dcm", "emri_small_jpeg_2k_lossless.dcm", 0.0),
    ("emri_small.dcm", "emri_small_big_endian.dcm", 0.0),
    ("SC_rgb.dcm", "SC_rgb_rle.dcm", 0.0),
    ("SC_rgb.dcm", "SC_rgb_jpeg_gdcm.dcm", 0.0),  # JPEG lossless, process 14
    ("SC_rgb.dcm", "SC_rgb_jpeg_dcmtk.dcm", 0.02),  # JPEG baseline, YBR_FULL
    ("SC_rgb.dcm", "SC_ybr_full_422_uncompressed.dcm", 0.02),
    ("US1_UNCR.dcm", "US1_J2KR.dcm", 0.0),  # JPEG 2000 lossless, YBR_RCT
]


@pytest.mark.parametrize(("reference", "variant", "tolerance"), VARIANTS)
def test_compressed_variants_match(reference: str, variant: str, tolerance: float) -> None:
    ref_ds, var_ds = read(reference), read(variant)
    assert number_of_frames(ref_ds) == number_of_frames(var_ds)
    for index in {0, number_of_frames(ref_ds) - 1}:
        expected = decode_frame(ref_ds, index)
        got = decode_frame(var_ds, index)
        assert got.shape == expected.shape
        assert got.dtype == np.float32
        assert got.min() >= 0.0 and got.max() <= 1.0
        assert np.mean(np.abs(got - expected)) <= tolerance + 1e-6


@pytest.mark.parametrize(
    "name",
    [
        "JPEG-LL.dcm",
        "JPGExtended.dcm",
        "JPEG2000.dcm",
        "image_dfl.dcm",
        "JPGLosslessP14SV1_1s_1f_8b.dcm",
    ],
)
def test_other_transfer_syntaxes_decode(name: str) -> None:
    image = decode_frame(read(name))
    assert image.ndim == 2
    assert image.min() == pytest.approx(0.0, abs=0.05)
    assert image.max() == pytest.approx(1.0, abs=0.05)


def test_voi_window_of_the_file_is_applied() -> None:
    ds = read("MR_small.dcm")
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    stored = ds.pixel_array.astype(np.float64)
    expected = np.clip((stored - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(decode_frame(ds), expected, atol=1e-5)


def test_modality_lut_and_voi_lut_sequences() -> None:
    for name in ("mlut_18.dcm", "vlut_04.dcm"):
        image = decode_frame(read(name))
        assert image.shape == (512, 512)
        assert image.max() > image.min()


def test_enhanced_multiframe_uses_functional_groups() -> None:
    ds = read("emri_small.dcm")
    frames = decode_frames(ds)
    assert [f.frame for f in frames] == list(range(1, 11))
    assert all(f.sop_instance_uid == ds.SOPInstanceUID for f in frames)
    # frames differ: each one is decoded on its own, not the first one ten times
    assert not np.array_equal(frames[0].pixels, frames[-1].pixels)


def test_single_frame_has_no_frame_number() -> None:
    (frame,) = decode_frames(read("CT_small.dcm"))
    assert frame.frame is None


def test_fixed_window_in_hounsfield_units() -> None:
    hounsfield = [[-1000, 0, 40, 80], [1000, 30, 50, -20]]
    image = decode_frame(make_ct(hounsfield), window=Window(40.0, 80.0))  # brain: 0..80 HU
    expected = np.clip((np.asarray(hounsfield) - 39.5) / 79 + 0.5, 0, 1)
    np.testing.assert_allclose(image, expected, atol=1e-6)


def test_minmax_when_the_file_has_no_window() -> None:
    image = decode_frame(make_ct([[-100, 0], [100, 300]]))
    np.testing.assert_allclose(image, [[0.0, 0.25], [0.5, 1.0]], atol=1e-6)


def phantom() -> np.ndarray:
    """A bright disc (the 'bone') on a dark background, as it must be displayed."""
    rows, cols = np.mgrid[0:32, 0:32]
    return ((rows - 16) ** 2 + (cols - 16) ** 2 <= 64).astype(np.float64)


@pytest.mark.parametrize("shape", [None, "INVERSE", "IDENTITY"])
def test_monochrome1_phantom_comes_out_bright(shape: str | None) -> None:
    # MONOCHROME1 stores white as the minimum: the disc is stored with LOW values.
    display = phantom()
    stored = np.rint((1.0 - display) * 4000 + 50).astype(np.uint16)
    ds = make_image(stored, photometric="MONOCHROME1", bits=12)
    if shape is not None:
        ds.PresentationLUTShape = shape
    image = decode_frame(ds)
    disc = display > 0.5
    assert image[disc].mean() > 0.9  # bright disc
    assert image[~disc].mean() < 0.1  # dark background: inverted exactly once


def test_monochrome1_with_window_is_inverted_once() -> None:
    stored = np.rint((1.0 - phantom()) * 4000 + 50).astype(np.uint16)
    ds = make_image(stored, photometric="MONOCHROME1", bits=12)
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PresentationLUTShape = "INVERSE"
    image = decode_frame(ds)
    assert image[phantom() > 0.5].mean() > 0.9
    assert image[phantom() < 0.5].mean() < 0.1


def test_real_monochrome1_radiograph_has_dark_lungs() -> None:
    # RG1 is a CR chest stored as MONOCHROME1: after display the mediastinum (centre
    # column) is brighter than the lung fields either side of it.
    image = decode_frame(read("RG1_UNCI.dcm"))
    rows, cols = image.shape
    band = image[rows // 4 : rows // 2]
    mediastinum = band[:, cols // 2 - cols // 20 : cols // 2 + cols // 20].mean()
    lungs = (
        band[:, cols // 4 - cols // 20 : cols // 4 + cols // 20].mean()
        + band[:, 3 * cols // 4 - cols // 20 : 3 * cols // 4 + cols // 20].mean()
    ) / 2
    assert mediastinum > lungs + 0.05


def test_palette_colour() -> None:
    image = decode_frame(read("OBXXXX1A.dcm"))
    assert image.shape == (600, 800, 3)
    assert image.min() >= 0.0 and image.max() <= 1.0 and image.max() > 0.5


def test_colour_multiframe_jpeg() -> None:
    ds = read("color3d_jpeg_baseline.dcm")
    image = decode_frame(ds, number_of_frames(ds) - 1)
    assert image.shape == (480, 640, 3)


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("test-SR.dcm", "no pixel data"),
        ("liver_1frame.dcm", "1-bit"),
        ("MR_truncated.dcm", "cannot decode pixel data"),
        ("JPEG-lossy.dcm", "cannot decode pixel data"),
    ],
)
def test_unsupported_input_raises_pixel_error(name: str, words: str) -> None:
    with pytest.raises(PixelError, match=words):
        decode_frame(read(name))


def test_pixel_error_is_a_value_error() -> None:
    assert issubclass(PixelError, ValueError)


def test_frame_out_of_range() -> None:
    with pytest.raises(PixelError, match="out of range"):
        decode_frame(read("CT_small.dcm"), 1)


def test_unreadable_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not dicom at all")
    with pytest.raises(PixelError, match="not a readable DICOM file"):
        load_dataset(bad)


def test_rle_written_by_pydicom_round_trips(tmp_path: Path) -> None:
    stored = np.rint(phantom() * 1000).astype(np.uint16)
    ds = make_image(stored, photometric="MONOCHROME2", bits=12)
    ds.compress(RLELossless)
    path = tmp_path / "rle.dcm"
    ds.save_as(path, enforce_file_format=True)
    image = decode_frame(load_dataset(path))
    np.testing.assert_allclose(image, phantom(), atol=1e-6)


def make_image(stored: np.ndarray, *, photometric: str, bits: int) -> Dataset:
    """A minimal single-frame grayscale image dataset (secondary capture)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16 if bits > 8 else 8
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if stored.dtype.kind == "i" else 0
    ds.PixelData = stored.tobytes()
    return ds


def make_ct(hounsfield: list[list[int]]) -> Dataset:
    """A tiny CT slice stored as unsigned values with RescaleIntercept -1024."""
    stored = (np.asarray(hounsfield) + 1024).astype(np.uint16)
    ds = make_image(stored, photometric="MONOCHROME2", bits=12)
    ds.Modality = "CT"
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    return ds
