"""Hostile pixel data is refused before it is decoded: size claims over the bound (in the
DICOM header or in a frame's own JPEG / JPEG 2000 header), size claims that disagree, and
codestreams cut short. Memory is measured (numpy registers its buffers with tracemalloc)."""

from __future__ import annotations

import copy
import tracemalloc
from collections.abc import Callable
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, get_frame

from inference import pixels
from inference.pixels import PixelError, PixelLimits

# What decoding a refused bomb may cost at most: the checks read headers, never pixels.
MAX_PEAK_BYTES = 16 * 1024 * 1024


def _read(name: str) -> Dataset:
    return pydicom.dcmread(str(get_testdata_file(name)))


def _with_frame(ds: Dataset, change: Callable[[bytes], bytes]) -> Dataset:
    """A copy of a single-frame compressed dataset whose one frame is changed."""
    out = copy.deepcopy(ds)
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    out.PixelData = encapsulate([change(frame)])
    return out


def _jpeg_claiming(rows: int, columns: int) -> Callable[[bytes], bytes]:
    def change(frame: bytes) -> bytes:
        at = frame.index(b"\xff\xc0")  # baseline SOF0: length, precision, Y, X, Nf
        return (
            frame[: at + 5] + rows.to_bytes(2, "big") + columns.to_bytes(2, "big") + frame[at + 9 :]
        )

    return change


def _j2k_claiming(rows: int, columns: int) -> Callable[[bytes], bytes]:
    def change(frame: bytes) -> bytes:
        at = frame.index(b"\xff\x4f\xff\x51") + 4  # SIZ: Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz
        return (
            frame[: at + 4]
            + columns.to_bytes(4, "big")
            + rows.to_bytes(4, "big")
            + frame[at + 12 :]
        )

    return change


def _peak(action: Callable[[], Any]) -> tuple[BaseException | None, int]:
    """Run ``action``; return what it raised and the peak traced memory it used."""
    tracemalloc.start()
    try:
        action()
        raised: BaseException | None = None
    except BaseException as exc:
        raised = exc
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return raised, peak


def test_a_small_jpeg_claiming_12000_squared_is_refused_without_decoding() -> None:
    bomb = _with_frame(_read("SC_rgb_jpeg_dcmtk.dcm"), _jpeg_claiming(12000, 12000))
    bomb.Rows = bomb.Columns = 12000  # the header agrees with the codestream: both lie
    assert len(bomb.PixelData) < 4096
    raised, peak = _peak(lambda: pixels.decode_frame(bomb))
    assert isinstance(raised, PixelError)
    assert "12000 x 12000 x 3 samples is over the limit of 40000000" in str(raised)
    assert "workers.max_frame_pixels" in str(raised)
    assert peak < MAX_PEAK_BYTES


def test_a_codestream_claim_over_the_bound_is_refused_when_the_header_is_modest() -> None:
    bomb = _with_frame(_read("SC_rgb_jpeg_dcmtk.dcm"), _jpeg_claiming(12000, 12000))
    raised, peak = _peak(lambda: pixels.decode_frame(bomb))
    assert isinstance(raised, PixelError)
    assert "codestream claims 12000 x 12000 x 3, over the limit" in str(raised)
    assert peak < MAX_PEAK_BYTES

    j2k = _with_frame(_read("RG1_J2KI.dcm"), _j2k_claiming(12000, 12000))
    raised, peak = _peak(lambda: pixels.decode_frame(j2k))
    assert isinstance(raised, PixelError)
    assert "codestream claims 12000 x 12000 x 1, over the limit" in str(raised)
    assert peak < MAX_PEAK_BYTES


def test_a_codestream_that_disagrees_with_rows_and_columns_is_refused() -> None:
    liar = _with_frame(_read("SC_rgb_jpeg_dcmtk.dcm"), _jpeg_claiming(200, 100))
    with pytest.raises(
        PixelError, match="codestream claims 200 x 100 but the dataset says 100 x 100"
    ):
        pixels.decode_frame(liar)


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "RG1_J2KI.dcm", "JPEG-LL.dcm"])
def test_a_codestream_cut_to_a_third_is_refused(name: str) -> None:
    cut = _with_frame(_read(name), lambda frame: frame[: len(frame) // 3])
    with pytest.raises(PixelError, match="does not end with its end-of-image marker"):
        pixels.decode_frame(cut)


def test_limits_are_settings_and_frames_are_bounded_too() -> None:
    ds = _read("RG1_J2KI.dcm")
    with pytest.raises(PixelError, match="over the limit of 1000000 values per frame"):
        pixels.decode_frame(ds, limits=PixelLimits(max_frame_pixels=1_000_000))
    emri = _read("emri_small.dcm")  # 10 frames
    with pytest.raises(PixelError, match="10 frames is over the limit of 5"):
        pixels.decode_frame(emri, limits=PixelLimits(max_frames=5))
    assert pixels.decode_frame(ds).shape == (int(ds.Rows), int(ds.Columns))


def test_the_chest_model_refuses_a_cut_chest_x_ray(chest_model: Any) -> None:
    """What reached a radiologist before: a J2K chest X-ray cut to a third was classified."""
    cut = _with_frame(_read("RG1_J2KI.dcm"), lambda frame: frame[: len(frame) // 3])
    cut.BodyPartExamined = "CHEST"
    with pytest.raises(PixelError, match="end-of-image marker"):
        chest_model.predict_series([cut])
