"""Display image -> model input tensor, exactly as the manifest says.

The models we serve were trained on 8-bit JPEG/PNG exports read with PIL (Keras
``load_img``, ``Image.open``). To see the same numbers from DICOM, the display image
(0..1 after the DICOM LUTs) is quantised to 8-bit levels, resized by PIL with the
training pipeline's filter, and then scaled by the model's own preprocessing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from PIL import Image

from inference.manifest import InputSpec, PreprocessSpec
from inference.pixels import FloatImage, to_grayscale

Tensor = npt.NDArray[np.float32]

_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}
# keras.applications.imagenet_utils constants
_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)
_TORCH_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_TORCH_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def to_uint8(image: FloatImage) -> npt.NDArray[np.uint8]:
    """Quantise a 0..1 display image to 8-bit levels, as a JPEG/PNG export would."""
    return np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def resize_levels(image: FloatImage, input_spec: InputSpec) -> npt.NDArray[np.uint8]:
    """Return the 8-bit image at the model's size and colour, shape (H, W, C).

    Parameters
    ----------
    image
        Display image, (rows, columns) or (rows, columns, 3), 0..1.
    input_spec
        The manifest's input section.
    """
    # A grayscale source is resized as one channel and replicated afterwards: the same
    # result as resizing an RGB copy (resampling acts per channel), at a third of the cost.
    source = to_grayscale(image) if input_spec.channels == 1 else image
    levels = to_uint8(source)
    picture = Image.fromarray(levels, mode="L" if levels.ndim == 2 else "RGB")
    size = (input_spec.width, input_spec.height)
    if picture.size != size:
        picture = picture.resize(size, resample=_FILTERS[input_spec.resize])
    out = np.asarray(picture, dtype=np.uint8)
    if out.ndim == 2:
        out = out[..., None]
    if out.shape[-1] != input_spec.channels:
        out = np.repeat(out, input_spec.channels, axis=-1)
    return out


def scale_levels(
    levels: npt.NDArray[np.generic], input_spec: InputSpec, spec: PreprocessSpec
) -> Tensor:
    """Apply the model's value preprocessing to 0..255 levels of shape (..., H, W, C).

    Parameters
    ----------
    levels
        8-bit levels (any numeric dtype), RGB or grayscale, channels last.
    input_spec, spec
        The manifest's input and preprocessing sections.
    """
    x = np.asarray(levels, dtype=np.float32)
    if spec.mode == "tf":
        x = x / 127.5 - 1.0
    elif spec.mode == "caffe":
        # Keras "caffe" mode: RGB -> BGR, then subtract the ImageNet means (no scaling).
        x = x[..., ::-1] - _CAFFE_MEAN_BGR
        return np.ascontiguousarray(x, dtype=np.float32)
    elif spec.mode == "torch":
        x = (x / 255.0 - _TORCH_MEAN[: x.shape[-1]]) / _TORCH_STD[: x.shape[-1]]
    else:
        x = x * np.float32(spec.scale) + np.float32(spec.offset)
    if input_spec.color == "bgr":
        x = x[..., ::-1]
    return np.ascontiguousarray(x, dtype=np.float32)


def prepare(image: FloatImage, input_spec: InputSpec, spec: PreprocessSpec) -> Tensor:
    """One display image to one model input of shape (H, W, C), channels last."""
    return scale_levels(resize_levels(image, input_spec), input_spec, spec)


def prepare_batch(
    images: Sequence[FloatImage], input_spec: InputSpec, spec: PreprocessSpec
) -> Tensor:
    """Display images to a (N, H, W, C) float32 batch (backends handle NCHW layouts)."""
    shape = (len(images), input_spec.height, input_spec.width, input_spec.channels)
    batch = np.empty(shape, dtype=np.float32)
    for i, image in enumerate(images):
        batch[i] = prepare(image, input_spec, spec)
    return batch
