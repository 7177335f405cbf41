"""DICOM pixel data to a display-correct float image in 0..1.

A model trained on JPEG or PNG exports saw what a radiologist's viewer shows, not the
stored values. So every frame goes through the DICOM grayscale pipeline exactly as a
viewer runs it (PS3.4 N.2): Modality LUT (or rescale), then VOI LUT or window, then the
presentation LUT (MONOCHROME1 / INVERSE), each exactly once.

highdicom's ``Image.get_frame`` does the modality and VOI steps for plain and enhanced
multi-frame objects alike (it reads the per-frame and shared functional groups, which
pydicom's LUT functions ignore), and it decodes one frame at a time, so a 300-frame
enhanced CT does not have to be decoded whole. Inversion is done here, in one place,
with one rule (:func:`is_inverted`), so that it cannot happen twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pydicom.encaps
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian

FloatImage = npt.NDArray[np.float32]

_GRAYSCALE = {"MONOCHROME1", "MONOCHROME2"}
_COLOUR = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR"}


class PixelError(ValueError):
    """The pixel data of a dataset cannot be turned into an image for a model.

    The message says why in words a job history can show (no pixel data, 1-bit image,
    truncated pixel data, ...).
    """


@dataclass(frozen=True)
class PixelLimits:
    """What a worker agrees to decode, checked before any pixel is decoded.

    A hostile or broken sender can claim any geometry: a 4 KB JPEG whose header says
    12000 x 12000 made a decoder allocate 11 GB and a 546 MB Secondary Capture. The
    geometry claimed by the DICOM header *and* by every compressed frame's own header is
    compared with these bounds (and with each other) first.

    Parameters
    ----------
    max_frame_pixels
        Rows x Columns x Samples per Pixel of one frame (40 M: a 6300 x 6300 grayscale
        or 3650 x 3650 RGB image; the largest mammograms are about 22 M).
    max_frames
        Frames of one instance.
    """

    max_frame_pixels: int = 40_000_000
    max_frames: int = 5000


@dataclass(frozen=True)
class Window:
    """A fixed linear VOI window in modality units (e.g. Hounsfield units for CT)."""

    center: float
    width: float


# "file": the image's own VOI (window or VOI LUT), falling back to "minmax" when it has
# none; "minmax": stretch the frame's modality values to 0..1; or a fixed Window.
WindowChoice = Literal["file", "minmax"] | Window


@dataclass(frozen=True)
class Frame:
    """One decoded frame and where it came from."""

    sop_instance_uid: str
    frame: int | None  # 1-based for multi-frame instances, None for single-frame ones
    pixels: FloatImage  # (rows, columns) or (rows, columns, 3) RGB, 0..1, display-correct


def load_dataset(path: Path | str) -> Dataset:
    """Read a DICOM file, raising :class:`PixelError` when it cannot be parsed.

    Parameters
    ----------
    path
        The file to read.

    Returns
    -------
    pydicom.dataset.Dataset
        The dataset, with pixel data left encoded until a frame is asked for.
    """
    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
        raise PixelError(f"{path}: not a readable DICOM file ({exc})") from exc


def number_of_frames(ds: Dataset) -> int:
    """Return how many frames the dataset's pixel data holds (1 for single-frame)."""
    value = ds.get("NumberOfFrames", 1)
    try:
        return max(int(value or 1), 1)
    except (TypeError, ValueError):
        # A malformed IS value: treat as single-frame; decoding will catch a mismatch.
        return 1


def is_multiframe(ds: Dataset) -> bool:
    """Tell whether frames of this dataset are numbered (NumberOfFrames present)."""
    return "NumberOfFrames" in ds


def is_inverted(ds: Dataset) -> bool:
    """Tell whether low values must be shown white.

    MONOCHROME1 means "minimum value is white" (PS3.3 C.7.6.3.1.2). DX and other IODs
    also carry PresentationLUTShape, which must be INVERSE for MONOCHROME1 and IDENTITY
    for MONOCHROME2 (PS3.3 C.8.11.6.1.2). We invert when either says so, once: some
    writers put IDENTITY on MONOCHROME1 images, and the photometric interpretation is
    the more reliable statement about how the values were stored.
    """
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    shape = str(ds.get("PresentationLUTShape", "")).strip()
    return photometric == "MONOCHROME1" or shape == "INVERSE"


def check_decodable(ds: Dataset, limits: PixelLimits | None = None) -> None:
    """Raise :class:`PixelError` if the dataset is not an image a model can read.

    Parameters
    ----------
    ds
        Any DICOM dataset.

    Raises
    ------
    PixelError
        When there is no pixel data (e.g. an SR or a presentation state), when the image
        is a 1-bit bitmap (segmentations, overlays), float pixel data (parametric maps)
        or an unknown photometric interpretation, or when the claimed size is over
        ``limits`` (default :class:`PixelLimits`).
    """
    limits = limits or PixelLimits()
    sop_class = ds.get("SOPClassUID")
    sop_name = getattr(sop_class, "name", str(sop_class)) if sop_class else "unknown SOP class"
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        raise PixelError(f"{sop_name}: float pixel data (e.g. a parametric map) is not supported")
    if "PixelData" not in ds:
        raise PixelError(f"{sop_name}: the dataset has no pixel data")
    bits = int(ds.get("BitsAllocated", 0) or 0)
    if bits == 1:
        # 1-bit data are bitmaps (segmentations, masks): no grey levels for a classifier.
        raise PixelError(f"{sop_name}: 1-bit pixel data (a bitmap or segmentation) is not an image")
    if bits not in (8, 16, 32):
        raise PixelError(f"{sop_name}: unsupported BitsAllocated {bits or 'missing'}")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in _GRAYSCALE | _COLOUR:
        raise PixelError(f"{sop_name}: unsupported photometric interpretation {photometric!r}")
    for keyword in ("Rows", "Columns"):
        if not ds.get(keyword):
            raise PixelError(f"{sop_name}: {keyword} is missing or zero")
    check_geometry(ds, limits)


def check_geometry(ds: Dataset, limits: PixelLimits) -> None:
    """Raise :class:`PixelError` when the claimed image size is over ``limits``."""
    rows, columns = int(ds.Rows), int(ds.Columns)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = number_of_frames(ds)
    if rows * columns * samples > limits.max_frame_pixels:
        raise PixelError(
            f"image of {rows} x {columns} x {samples} samples is over the limit of "
            f"{limits.max_frame_pixels} values per frame (workers.max_frame_pixels)"
        )
    if frames > limits.max_frames:
        raise PixelError(
            f"{frames} frames is over the limit of {limits.max_frames} (workers.max_frames)"
        )


# Compressed transfer syntaxes whose frames carry their own size in a header.
_JPEG_FAMILY = {
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.51",  # JPEG extended
    "1.2.840.10008.1.2.4.57",  # JPEG lossless
    "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
}
_J2K_FAMILY = {
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
}
# Start-of-frame markers: SOF0-3, 5-7, 9-11, 13-15 (JPEG) and SOF55 (JPEG-LS).
_SOF_MARKERS = {*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0)}
_SOF_MARKERS.add(0xF7)
_NO_LENGTH = {0x01, *range(0xD0, 0xD8)}  # TEM, RSTn: markers without a length field


def codestream_size(syntax: str, frame: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) a compressed frame's own header claims, if it has one.

    Reads only the header: the JPEG / JPEG-LS start-of-frame segment, or the JPEG 2000
    SIZ segment (Xsiz - XOsiz by Ysiz - YOsiz).

    Raises
    ------
    PixelError
        When the frame has no such header where its transfer syntax says it must.
    """
    if syntax in _JPEG_FAMILY:
        if frame[:2] != b"\xff\xd8":
            raise PixelError("a JPEG frame does not start with SOI: corrupt codestream")
        at = 2
        while at + 4 <= len(frame):
            if frame[at] != 0xFF:
                raise PixelError(f"a JPEG frame has no marker at byte {at}: corrupt codestream")
            marker = frame[at + 1]
            if marker == 0xFF:  # fill byte
                at += 1
                continue
            if marker in _NO_LENGTH:
                at += 2
                continue
            length = int.from_bytes(frame[at + 2 : at + 4], "big")
            if marker in _SOF_MARKERS:
                header = frame[at + 4 : at + 2 + length]
                if len(header) < 6:
                    break
                rows = int.from_bytes(header[1:3], "big")
                columns = int.from_bytes(header[3:5], "big")
                return rows, columns, header[5]
            if marker == 0xDA:  # start of scan before any frame header
                break
            at += 2 + length
        raise PixelError("a JPEG frame has no frame header (SOF): corrupt codestream")
    if syntax in _J2K_FAMILY:
        at = frame.find(b"\xff\x4f\xff\x51", 0, 4096)  # SOC then SIZ (raw or in a JP2 box)
        if at < 0 or at + 42 > len(frame):
            raise PixelError("a JPEG 2000 frame has no SIZ header: corrupt codestream")
        siz = frame[at + 4 : at + 42]
        xsiz, ysiz, xosiz, yosiz = (int.from_bytes(siz[i : i + 4], "big") for i in (4, 8, 12, 16))
        components = int.from_bytes(siz[36:38], "big")
        return ysiz - yosiz, xsiz - xosiz, components
    return None


def check_codestream(ds: Dataset, index: int, limits: PixelLimits) -> None:
    """Check one compressed frame's header and end before a decoder sees it.

    A frame whose own header claims another size than Rows / Columns, or more than
    ``limits``, is refused; so is a JPEG or JPEG 2000 frame that does not end with its
    end-of-image marker (EOI / EOC, both FFD9): decoders return a partial image for a cut
    codestream without complaint, and a model would then classify garbage.
    """
    syntax = str(ds.file_meta.TransferSyntaxUID) if "TransferSyntaxUID" in ds.file_meta else ""
    if syntax not in _JPEG_FAMILY | _J2K_FAMILY:
        return
    try:
        frame = pydicom.encaps.get_frame(ds.PixelData, index, number_of_frames=number_of_frames(ds))
    except Exception as exc:  # pydicom raises ValueError and others on broken fragments
        raise PixelError(f"frame {index + 1}: encapsulated pixel data is broken ({exc})") from exc
    claimed = codestream_size(syntax, frame)
    if claimed is not None:
        rows, columns, components = claimed
        if rows * columns * max(components, 1) > limits.max_frame_pixels:
            raise PixelError(
                f"frame {index + 1}: its codestream claims {rows} x {columns} x {components}, "
                f"over the limit of {limits.max_frame_pixels} values (workers.max_frame_pixels)"
            )
        if (rows, columns) != (int(ds.Rows), int(ds.Columns)) and rows and columns:
            raise PixelError(
                f"frame {index + 1}: its codestream claims {rows} x {columns} but the "
                f"dataset says {int(ds.Rows)} x {int(ds.Columns)}"
            )
    # Writers pad a frame to an even length with 0x00 or 0xFF after the marker.
    if b"\xff\xd9" not in frame[-4:].rstrip(b"\x00"):
        raise PixelError(
            f"frame {index + 1}: the codestream does not end with its end-of-image marker "
            "(truncated or corrupt)"
        )


def decode_frame(
    ds: Dataset,
    index: int = 0,
    *,
    window: WindowChoice = "file",
    limits: PixelLimits | None = None,
) -> FloatImage:
    """Decode one frame to a display-correct float32 image in 0..1.

    Parameters
    ----------
    ds
        A dataset with pixel data, in any transfer syntax that pydicom's plugins decode
        (uncompressed, deflated, RLE, JPEG baseline/extended/lossless, JPEG-LS,
        JPEG 2000, big endian).
    index
        0-based frame index.
    window
        Which VOI transform to use for grayscale images (ignored for colour).
    limits
        What may be decoded (default :class:`PixelLimits`); checked before decoding.

    Returns
    -------
    numpy.ndarray
        float32, (rows, columns) for grayscale or (rows, columns, 3) RGB, in 0..1 with
        white as 1 whatever the photometric interpretation.

    Raises
    ------
    PixelError
        When the dataset has no usable pixel data or its pixel data cannot be decoded.
    """
    limits = limits or PixelLimits()
    check_decodable(ds, limits)
    frames = number_of_frames(ds)
    if not 0 <= index < frames:
        raise PixelError(f"frame index {index} out of range (the object has {frames} frames)")
    check_codestream(ds, index, limits)
    image = _as_highdicom_image(ds)
    photometric = str(ds.PhotometricInterpretation).strip()
    try:
        if photometric in _GRAYSCALE:
            return _grayscale(image, ds, index, window)
        return _colour(image, ds, index)
    except PixelError:
        raise
    except Exception as exc:  # decoder plugins raise anything from RuntimeError to KeyError
        raise PixelError(f"cannot decode pixel data: {exc}") from exc


def decode_frames(ds: Dataset, *, window: WindowChoice = "file") -> list[Frame]:
    """Decode every frame of a dataset (see :func:`decode_frame`)."""
    multi = is_multiframe(ds)
    uid = str(ds.get("SOPInstanceUID", ""))
    return [
        Frame(uid, i + 1 if multi else None, decode_frame(ds, i, window=window))
        for i in range(number_of_frames(ds))
    ]


def to_grayscale(pixels: FloatImage) -> FloatImage:
    """Return a 2-D luminance image (ITU-R BT.601 luma for RGB input)."""
    if pixels.ndim == 2:
        return pixels
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.asarray(pixels[..., :3] @ weights, dtype=np.float32)


def _as_highdicom_image(ds: Dataset) -> hd.Image:
    """Wrap ``ds`` as a ``highdicom.Image`` without copying pixel data or mutating ``ds``.

    ``Image.from_dataset(copy=False)`` changes the class of the object it is given, and
    ``copy=True`` deep-copies the pixel data (tens of MB for a CR), so we hand it a new
    Dataset that shares the element objects. highdicom parses little endian only: the
    retired big endian syntax is converted here.
    """
    shallow = Dataset(dict(ds.items()))
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is not None:
        shallow.file_meta = file_meta
    shallow.set_original_encoding(*ds.original_encoding)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if syntax is not None and not syntax.is_little_endian:
        shallow = _to_little_endian(ds)
    try:
        return hd.Image.from_dataset(shallow, copy=False)
    except Exception as exc:
        raise PixelError(f"cannot interpret the image: {exc}") from exc


def _to_little_endian(ds: Dataset) -> Dataset:
    """Re-encode a big endian dataset's pixel data as explicit VR little endian."""
    try:
        array = ds.pixel_array
    except Exception as exc:
        raise PixelError(f"cannot decode big endian pixel data: {exc}") from exc
    out = Dataset(dict(ds.items()))
    out.file_meta = pydicom.dataset.FileMetaDataset(ds.file_meta)
    out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out.set_original_encoding(False, True)
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    out.PixelData = little.tobytes()
    out["PixelData"].VR = "OW" if int(ds.BitsAllocated) > 8 else "OB"
    return out


def _has_voi(ds: Dataset, index: int) -> bool:
    """Tell whether the image carries its own VOI (window or LUT) for this frame.

    Enhanced objects keep it in the Frame VOI LUT functional group, shared or per frame.
    """
    places: list[Dataset] = [ds]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        places.append(shared[0])
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and index < len(per_frame):
        places.append(per_frame[index])
    for place in places:
        voi = place.get("FrameVOILUTSequence")
        target = voi[0] if voi else place
        if target.get("WindowCenter") is not None and target.get("WindowWidth") is not None:
            return True
        if target.get("VOILUTSequence"):
            return True
    return False


def _grayscale(image: hd.Image, ds: Dataset, index: int, window: WindowChoice) -> FloatImage:
    """Modality -> VOI -> presentation for one grayscale frame."""
    apply_voi = window == "file" and _has_voi(ds, index)
    raw = image.get_frame(
        index + 1,
        dtype=np.float32,
        # A real-world value map gives physical units, not display values.
        apply_real_world_transform=False,
        # The file's own VOI when asked for and present; else modality values (e.g. HU).
        apply_voi_transform=apply_voi,
        voi_output_range=(0.0, 1.0),
        # Inversion is done below, once, by our own rule.
        apply_presentation_lut=False,
        apply_palette_color_lut=None,
    )
    values = np.asarray(raw, dtype=np.float32)
    if apply_voi:
        pixels = values
    elif isinstance(window, Window):
        pixels = _linear_window(values, window)
    else:
        pixels = _stretch(values, ds)
    pixels = np.clip(pixels, 0.0, 1.0)
    if is_inverted(ds):
        pixels = 1.0 - pixels
    return pixels


def _linear_window(values: FloatImage, window: Window) -> FloatImage:
    """Apply the DICOM LINEAR VOI function (PS3.3 C.11.2.1.2.1) with output 0..1."""
    center, width = window.center, max(window.width, 1.0)
    out = (values - (center - 0.5)) / (width - 1.0) + 0.5 if width > 1 else values - center
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _stretch(values: FloatImage, ds: Dataset) -> FloatImage:
    """Scale an image that has no VOI.

    8-bit data without rescale are display values already (secondary captures,
    scanned film): map 0..255 as is. Deeper data are stretched from their minimum to
    their maximum, which is what viewers do when no window is given.
    """
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    rescaled = "RescaleSlope" in ds or "ModalityLUTSequence" in ds
    if bits <= 8 and not rescaled and int(ds.get("PixelRepresentation", 0)) == 0:
        return (values / 255.0).astype(np.float32)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values, dtype=np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


def _colour(image: hd.Image, ds: Dataset, index: int) -> FloatImage:
    """RGB, YBR (converted to RGB by the decoder) or palette colour to RGB 0..1."""
    pixels = image.get_frame(
        index + 1,
        dtype=np.float32,
        apply_real_world_transform=False,
        apply_voi_transform=False,
        apply_palette_color_lut=None,
        apply_presentation_lut=False,
    )
    if str(ds.PhotometricInterpretation).strip() == "PALETTE COLOR":
        # Palette entries have their own depth: the third value of the LUT descriptor.
        descriptor = ds.get("RedPaletteColorLookupTableDescriptor", [0, 0, 16])
        depth = int(descriptor[2]) if int(descriptor[2]) in (8, 16) else 16
    else:
        depth = int(ds.get("BitsStored", 8))
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise PixelError(f"expected an RGB frame, got shape {pixels.shape}")
    return np.clip(pixels / float(2**depth - 1), 0.0, 1.0).astype(np.float32)


def read_picture(path: Path) -> npt.NDArray[np.generic]:
    """Read a PNG or JPEG as the array ``LoadedModel.predict_image`` takes.

    8-bit pictures stay uint8; 16-bit grayscale PNGs become uint16 (PIL reports them
    as mode "I;16" or "I"); palette, alpha and CMYK pictures are converted to RGB.
    EXIF orientation is not applied, as Keras ``load_img`` does not apply it either.
    """
    try:
        with Image.open(path) as picture:
            picture.load()
            mode = picture.mode
            if mode.startswith("I"):
                return np.clip(np.asarray(picture, dtype=np.int64), 0, 65535).astype(np.uint16)
            if mode not in ("L", "RGB"):
                return np.asarray(picture.convert("RGB"))
            return np.asarray(picture)
    except OSError as exc:
        raise PixelError(f"{path}: not a readable picture ({exc})") from exc
