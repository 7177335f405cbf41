"""The fast header read (dicom_node.receive.header) against pydicom, on pydicom's own test files.

The fast path may only speed up: for every file it reads, the values must be pydicom's;
for a file cut anywhere inside an element it must refuse; and whatever it refuses is read
again by pydicom in ``read_meta``, so the node's verdict stays pydicom's.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.filereader import data_element_generator

from dicom_node.receive import meta as receive_meta
from dicom_node.receive.header import HeaderError, TruncatedError, read_header
from dicom_node.receive.meta import (
    _META_KEYWORDS,
    meta_from_dataset,
    meta_from_header,
    read_meta,
)
from dicom_node.receive.statuses import Status, StoreRejectedError
from tests.dicom_files import TRANSFER_SYNTAX_FILES, pydicom_file

# Files the fast path refuses and pydicom reads (or refuses itself): each for a reason.
FAST_PATH_REFUSES = {
    "MR_truncated.dcm": "pixel data cut short",
    "rtplan_truncated.dcm": "a sequence cut short",
    "emri_small_jpeg_2k_lossless_too_short.dcm": "encapsulated pixel data without delimiter",
    "SC_rgb_jpeg.dcm": "implicit VR dataset under an explicit VR transfer syntax",
}


def _part10_files() -> list[Path]:
    """pydicom's test files with a preamble and a File Meta, as the node stores them."""
    found = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in sorted(get_testdata_files("*.dcm")):
            try:
                ds = pydicom.dcmread(name, stop_before_pixels=True)
            except Exception:
                continue
            if ds.preamble is not None and "TransferSyntaxUID" in ds.file_meta:
                found.append(Path(name))
    return found


def test_fast_path_reads_what_pydicom_reads() -> None:
    matched, refused = 0, set()
    for path in _part10_files():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = meta_from_dataset(pydicom.dcmread(path))
        try:
            header = read_header(path, _META_KEYWORDS)
        except HeaderError:
            refused.add(path.name)
            continue
        if header is None:  # deflated: pydicom reads it
            assert expected.transfer_syntax_uid == pydicom.uid.DeflatedExplicitVRLittleEndian
            continue
        assert meta_from_header(header) == expected, path
        matched += 1
    assert matched >= 100
    assert refused <= set(FAST_PATH_REFUSES), refused - set(FAST_PATH_REFUSES)


def _top_level_boundaries(path: Path) -> tuple[int, set[int]]:
    """Where the dataset starts, and every offset at which a top-level element starts or
    the file ends (cutting there leaves a complete, shorter dataset), per pydicom."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    syntax = ds.file_meta.TransferSyntaxUID
    with open(path, "rb") as fh:
        pydicom.filereader.read_preamble(fh, False)
        pydicom.filereader._read_file_meta_info(fh)
        start = fh.tell()
        boundaries = {start}
        elements = data_element_generator(fh, syntax.is_implicit_VR, syntax.is_little_endian)
        for _element in elements:
            boundaries.add(fh.tell())
    return start, boundaries


@pytest.mark.parametrize(
    "name",
    [
        "rtplan.dcm",  # nested defined and undefined length sequences
        TRANSFER_SYNTAX_FILES["explicit-le"],
        TRANSFER_SYNTAX_FILES["implicit-le"],
        TRANSFER_SYNTAX_FILES["explicit-be"],
        TRANSFER_SYNTAX_FILES["jpeg-baseline"],  # encapsulated pixel data
    ],
)
def test_every_cut_inside_an_element_is_refused(tmp_path: Path, name: str) -> None:
    source = pydicom_file(name)
    data = source.read_bytes()
    start, boundaries = _top_level_boundaries(source)
    # Every byte of the header; in long values (pixel data) every 97th.
    cuts = [p for p in range(start, len(data)) if p < start + 4096 or p % 97 == 0]
    cut_file = tmp_path / "cut.dcm"
    refused = 0
    for cut in cuts:
        cut_file.write_bytes(data[:cut])
        if cut in boundaries:
            assert read_header(cut_file, _META_KEYWORDS) is not None, cut
        else:
            with pytest.raises(HeaderError):
                read_header(cut_file, _META_KEYWORDS)
            refused += 1
    assert refused > len(cuts) // 2


def test_truncated_value_names_the_element(tmp_path: Path) -> None:
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(pydicom_file("CT_small.dcm").read_bytes()[:-1000])  # inside the pixel data
    with pytest.raises(TruncatedError, match=r"element \(7FE0,0010\) is truncated: needs"):
        read_header(cut, _META_KEYWORDS)


def test_not_dicom_is_a_header_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\0" * 200)
    with pytest.raises(HeaderError, match="no DICM prefix"):
        read_header(junk, _META_KEYWORDS)


def test_read_meta_uses_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A well-formed file never reaches pydicom's full reader."""

    def no_pydicom(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("pydicom's reader was used")

    monkeypatch.setattr(receive_meta, "dcmread", no_pydicom)
    path = pydicom_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    meta = read_meta(path, ds.SOPClassUID, ds.SOPInstanceUID)
    assert meta == meta_from_dataset(ds)


def test_read_meta_falls_back_to_pydicom_for_quirky_files() -> None:
    """An implicit VR dataset under an explicit transfer syntax: pydicom copes, so do we."""
    path = pydicom_file("SC_rgb_jpeg.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        meta = read_meta(path, ds.SOPClassUID, ds.SOPInstanceUID)
    assert meta == meta_from_dataset(ds)


def test_read_meta_refuses_a_truncated_file() -> None:
    path = pydicom_file("MR_truncated.dcm")
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    with pytest.raises(StoreRejectedError) as refused:
        read_meta(path, ds.SOPClassUID, ds.SOPInstanceUID)
    assert refused.value.status == Status.CANNOT_PARSE
    assert "truncated" in refused.value.reason


def test_unknown_vr_is_left_to_pydicom(tmp_path: Path) -> None:
    source = pydicom_file("CT_small.dcm")
    start, _boundaries = _top_level_boundaries(source)
    data = bytearray(source.read_bytes())
    data[start + 4 : start + 6] = b"\x01\x02"  # the first element's VR
    bad = tmp_path / "bad-vr.dcm"
    bad.write_bytes(bytes(data))
    with pytest.raises(HeaderError, match="unknown VR"):
        read_header(bad, _META_KEYWORDS)


def test_text_decoding_matches_pydicom_for_awkward_values(tmp_path: Path) -> None:
    """Padding, multi-values with inner spaces, non-ASCII bytes (left to pydicom)."""
    from pydicom.dataelem import DataElement

    from dicom_node.receive.header import tag_text

    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds["StudyDescription"] = DataElement(0x00081030, "LO", b"Head \\Neck  ")
    ds["SeriesDescription"] = DataElement(0x0008103E, "LO", "Tête".encode("latin-1"))
    ds["Modality"] = DataElement(0x00080060, "CS", b"CT ")
    ds["AccessionNumber"] = DataElement(0x00080050, "SH", b" A1 ")
    ds["BodyPartExamined"] = DataElement(0x00180015, "CS", b"CHEST\\ABDOMEN ")
    ds["StudyDate"] = DataElement(0x00080020, "DA", b"20261122")
    ds["PatientID"] = DataElement(0x00100020, "LO", b"")
    path = tmp_path / "awkward.dcm"
    ds.save_as(path, enforce_file_format=True)
    header = read_header(path, _META_KEYWORDS)
    assert header is not None
    reference = pydicom.dcmread(path)
    for keyword in _META_KEYWORDS:
        assert header.text(keyword) == tag_text(reference, keyword), keyword
    assert header.text("SeriesDescription") == "Tête"
    assert header.text("StudyDescription") == "Head\\Neck"
