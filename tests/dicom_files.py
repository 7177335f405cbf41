"""Real DICOM test files (pydicom's own and pydicom-data), one per transfer syntax."""

from __future__ import annotations

from pathlib import Path

from pydicom.data import get_testdata_file


def pydicom_file(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        raise FileNotFoundError(f"pydicom test file {name} is not installed")
    return Path(str(path))


# One file per transfer syntax the SCP accepts (HTJ2K has no test file in pydicom-data 1.0).
TRANSFER_SYNTAX_FILES = {
    "explicit-le": "CT_small.dcm",
    "implicit-le": "MR_small_implicit.dcm",
    "explicit-be": "MR_small_bigendian.dcm",
    "deflated": "image_dfl.dcm",
    "jpeg-baseline": "SC_rgb_jpeg_dcmtk.dcm",
    "jpeg-extended": "JPEG-lossy.dcm",
    "jpeg-lossless-sv1": "JPEG-LL.dcm",
    "jpeg-ls-lossless": "MR_small_jpeg_ls_lossless.dcm",
    "jpeg-ls-near-lossless": "JPEGLSNearLossless_16.dcm",
    "jpeg2000-lossless": "MR_small_jp2klossless.dcm",
    "jpeg2000": "JPEG2000.dcm",
    "rle": "MR_small_RLE.dcm",
    "enhanced-mr-j2k": "emri_small_jpeg_2k_lossless.dcm",
}


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset after the File Meta Information (what travels over the wire)."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    with open(path, "rb") as fh:
        read_preamble(fh, False)
        _read_file_meta_info(fh)
        return fh.read()


def with_required_uids(path: Path, folder: Path) -> Path:
    """Some pydicom test files lack Study/Series Instance UIDs (which the node rightly
    refuses); give such a file UIDs in a copy, leaving its encoded pixel data untouched."""
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(path)
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID") if k not in ds]
    if not missing:
        return path
    for keyword in missing:
        setattr(ds, keyword, generate_uid(entropy_srcs=[path.name, keyword]))
    copy = folder / path.name
    ds.save_as(copy, enforce_file_format=True)
    return copy
