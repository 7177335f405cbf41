"""Explanations: Grad-CAM (Keras), occlusion sensitivity (any backend), heatmap pictures.

Grad-CAM needs the last convolutional feature map as a tensor of the same graph as the
prediction. Transfer-learning models often wrap their conv base as one layer (the
pneumonia model: ``xception`` -> pooling -> Dense -> Dropout -> Dense), which hides that
map; :func:`feature_model` rebuilds the graph so that it is an output, and the Keras
backend differentiates through it in the same compiled pass as the prediction.

TensorFlow and Keras are imported inside the Keras-only functions, so building a
heatmap picture or running occlusion for an ONNX model does not load them.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from inference import colormap
from inference.pixels import FloatImage, to_grayscale
from inference.types import Heatmap

Array = npt.NDArray[np.float32]

# Layers whose 4-D output is not a feature map worth explaining: they only move,
# pad or subsample the map of the layer before them.
_NOT_FEATURES = (
    "InputLayer",
    "Pooling",
    "Dropout",
    "ZeroPadding",
    "Cropping",
    "Reshape",
    "Permute",
    "GaussianNoise",
    "UpSampling",
)


def _rank4(layer: Any) -> bool:
    """Tell whether a layer has one output of shape (batch, h, w, c) with h, w > 1."""
    try:
        shape = tuple(layer.output.shape)
    except (AttributeError, ValueError, TypeError):
        return False  # shared layers and multi-output layers have no single output
    return len(shape) == 4 and all(d is None or d > 1 for d in shape[1:3])


def find_feature_layer(model: Any) -> list[str] | None:
    """Find the last convolutional feature map, searching nested models too.

    Parameters
    ----------
    model
        A built Keras Functional or Sequential model.

    Returns
    -------
    list of str or None
        The layer path from the top model, e.g. ``["xception", "block14_sepconv2_act"]``,
        or None when the model has no 4-D feature map.
    """
    import keras

    best: list[str] | None = None
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            inner = find_feature_layer(layer)
            if inner is not None:
                best = [layer.name, *inner]
            continue
        kind = type(layer).__name__
        if _rank4(layer) and not any(word in kind for word in _NOT_FEATURES):
            best = [layer.name]
    return best


def resolve_layer_path(model: Any, layer: str) -> list[str]:
    """Turn the manifest's ``explain.layer`` into a checked layer path.

    Raises
    ------
    ValueError
        When no such layer exists, or "auto" finds no feature map.
    """
    import keras

    if layer == "auto":
        path = find_feature_layer(model)
        if path is None:
            raise ValueError("explain.layer = 'auto' found no convolutional feature map")
        return path
    path = layer.split("/")
    current = model
    for depth, name in enumerate(path):
        try:
            current = current.get_layer(name)
        except ValueError as exc:
            where = "/".join(path[:depth]) or "the model"
            raise ValueError(f"explain.layer: no layer {name!r} in {where}") from exc
        if depth < len(path) - 1 and not isinstance(current, keras.Model):
            raise ValueError(f"explain.layer: {name!r} is not a nested model")
    if not _rank4(current):
        raise ValueError(f"explain.layer: {layer!r} has no (batch, h, w, c) output")
    return path


def feature_model(model: Any, path: list[str]) -> Any:
    """Build a model ``x -> [feature_map, output]`` sharing the weights of ``model``.

    For a layer inside a nested model, the nested model is first rebuilt to also
    return the inner map, then the outer graph is replayed with that rebuilt model in
    place of the original one. No weights are copied: the layers are the same objects.

    Parameters
    ----------
    model
        A single-input, single-output Keras model.
    path
        Layer path from :func:`resolve_layer_path`.
    """
    import keras

    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError("Grad-CAM supports single-input, single-output models only")
    head, rest = path[0], path[1:]
    layer = model.get_layer(head)
    if not rest and len(getattr(layer, "_inbound_nodes", ())) <= 1:
        return keras.Model(model.inputs, [layer.output, model.outputs[0]])
    # A nested layer, or a layer called more than once: a Sequential model loaded from a
    # Keras 2 .h5 file has been built several times, and ``layer.output`` then belongs to
    # a graph that does not lead to ``model.outputs``. Replaying the graph on a new input
    # captures the feature map of the very call that produces the output.
    inner = feature_model(layer, rest) if rest else None
    captured: list[Any] = []

    def substitute(operation: Any) -> Any:
        if operation is not layer:
            return operation

        def call(*args: Any, **kwargs: Any) -> Any:
            if inner is None:
                out = layer(*args, **kwargs)
                captured.append(out)
                return out
            features, out = inner(*args, **kwargs)
            captured.append(features)
            return out

        return call

    source = model.inputs[0]
    new_input = keras.Input(shape=tuple(source.shape[1:]), dtype=source.dtype)
    if isinstance(model, keras.Sequential):
        output = new_input
        for each in model.layers:
            output = substitute(each)(output)
    else:
        # Keras' own graph executor (what Functional.call runs), with one layer swapped.
        output = model._run_through_graph([new_input], operation_fn=substitute)
        if isinstance(output, list | tuple):
            output = output[0]
    if len(captured) != 1:
        raise ValueError(f"layer {head!r} is used {len(captured)} times; cannot explain it")
    return keras.Model(new_input, [captured[0], output])


def gradcam(features: Any, gradients: Any) -> Any:
    """Grad-CAM maps from a feature map and the gradient of the score w.r.t. it.

    Channel weights are the spatial mean of the gradients (Selvaraju et al. 2017); the
    map is the ReLU of the weighted channel sum, scaled to 0..1 per image. A TensorFlow
    function body: call it inside the compiled pass.
    """
    import tensorflow as tf

    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))
    peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
    return tf.math.divide_no_nan(cam, peak)


def target_scores(probabilities: Array, target: Array) -> Array:
    """Summed probability of each row's target classes (predicted class for zero rows)."""
    mask = np.asarray(target, dtype=np.float32).copy()
    empty = mask.sum(axis=1) <= 0
    if empty.any():
        mask[empty] = 0.0
        mask[empty, probabilities[empty].argmax(axis=1)] = 1.0
    return np.asarray((probabilities * mask).sum(axis=1), dtype=np.float32)


def occlusion(
    predict: Callable[[Array], Array],
    inputs: Array,
    target: Array,
    *,
    grid: int = 7,
    patch: float = 0.25,
    batch_size: int = 16,
) -> Array:
    """Occlusion sensitivity maps (Zeiler & Fergus 2014), model-agnostic and batched.

    A square patch filled with the image's mean is slid over a ``grid`` x ``grid`` set
    of positions; each pixel's value is the mean drop of the target score over the
    patches that covered it.

    Parameters
    ----------
    predict
        Batch of model inputs (N, H, W, C) -> probabilities (N, n_classes).
    inputs
        Preprocessed model inputs, channels last.
    target
        (N, n_classes) class mask, as in :func:`target_scores`.
    grid, patch
        Positions per axis and patch side as a fraction of the image side.
    batch_size
        Occluded copies per model call.

    Returns
    -------
    numpy.ndarray
        (N, H, W) maps in 0..1 at model-input resolution.
    """
    count, height, width, _ = inputs.shape
    ph, pw = max(1, round(patch * height)), max(1, round(patch * width))
    tops = np.linspace(0, height - ph, grid).round().astype(int)
    lefts = np.linspace(0, width - pw, grid).round().astype(int)
    boxes = [(t, left) for t in tops for left in lefts]
    base = target_scores(predict(inputs), target)
    maps = np.zeros((count, height, width), dtype=np.float32)
    for n in range(count):
        fill = inputs[n].mean(axis=(0, 1))
        row = target[n : n + 1]
        drops: list[float] = []
        for start in range(0, len(boxes), batch_size):
            chunk = boxes[start : start + batch_size]
            occluded = np.repeat(inputs[n : n + 1], len(chunk), axis=0)
            for i, (t, left) in enumerate(chunk):
                occluded[i, t : t + ph, left : left + pw, :] = fill
            scores = target_scores(predict(occluded), np.repeat(row, len(chunk), axis=0))
            drops.extend((base[n] - scores).tolist())
        total = np.zeros((height, width), dtype=np.float32)
        covered = np.zeros((height, width), dtype=np.float32)
        for (t, left), drop in zip(boxes, drops, strict=True):
            total[t : t + ph, left : left + pw] += max(drop, 0.0)
            covered[t : t + ph, left : left + pw] += 1.0
        mean_drop = np.divide(total, covered, out=np.zeros_like(total), where=covered > 0)
        peak = float(mean_drop.max())
        maps[n] = mean_drop / peak if peak > 0 else mean_drop
    return maps


def _linear_weights(size_out: int, size_in: int) -> Array:
    """(size_out, size_in) matrix of linear interpolation with pixel-centre alignment."""
    centres = (np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5
    centres = np.clip(centres, 0.0, size_in - 1)
    low = np.floor(centres).astype(int)
    high = np.minimum(low + 1, size_in - 1)
    frac = (centres - low).astype(np.float32)
    weights = np.zeros((size_out, size_in), dtype=np.float32)
    rows = np.arange(size_out)
    np.add.at(weights, (rows, low), 1.0 - frac)
    np.add.at(weights, (rows, high), frac)
    return weights


def resize_map(cam: Array, shape: tuple[int, int]) -> Array:
    """Resize a map to ``shape`` (rows, columns), keeping 0..1.

    Maps are small (5 x 5 for Xception at 150 px) and sources large (a 2k x 2k CR):
    bilinear upsampling is separable, so it is two small matrix products, several times
    faster than resampling an image. Downsizing (an occlusion map larger than a small
    source) uses PIL's antialiased box filter instead.
    """
    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape == shape:
        return np.clip(cam, 0.0, 1.0)
    if shape[0] >= cam.shape[0] and shape[1] >= cam.shape[1]:
        rows = _linear_weights(shape[0], cam.shape[0])
        cols = _linear_weights(shape[1], cam.shape[1])
        return np.clip(rows @ cam @ cols.T, 0.0, 1.0)
    picture = Image.fromarray(cam, mode="F")
    resized = picture.resize((shape[1], shape[0]), resample=Image.Resampling.BOX)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


# Map values below this fraction of the peak leave the image uncoloured (the default of
# the manifest's ``explain.floor``).
DEFAULT_FLOOR = 0.2


def opacity(level: npt.NDArray[np.float32], alpha: float, floor: float) -> npt.NDArray[np.float32]:
    """Opacity of the overlay colour at map ``level`` (0..1 of the peak).

    Zero at and below ``floor``, so faint map values do not tint the image, then growing
    linearly to ``alpha`` at the peak. The colour itself is the colour map at ``level``,
    so the colour scale printed next to the picture reads directly as "share of peak".
    """
    if not 0.0 <= floor < 1.0:
        raise ValueError(f"floor must be in [0, 1), not {floor}")
    ramp = np.clip((level - floor) / (1.0 - floor), 0.0, 1.0)
    return np.asarray(alpha * ramp, dtype=np.float32)


@lru_cache(maxsize=8)
def _blend_table(
    colormap_name: colormap.ColormapName, alpha: float, floor: float
) -> npt.NDArray[np.uint32]:
    """Overlay colours for every (grey level, map level) pair, packed as RGBA words.

    Blending a grayscale source with a colour map has only 65536 possible inputs, so a
    2k x 2k overlay is one 32-bit table look-up per pixel instead of a dozen float
    passes over the image (index with ``grey * 256 + level``).
    """
    grey = np.arange(256, dtype=np.float32)[:, None, None] / 255.0
    level = np.arange(256, dtype=np.float32)[None, :, None] / 255.0
    colours = colormap.lookup_table(colormap_name)[None, :, :]
    opacity_ = opacity(level, alpha, floor)
    blended = (1.0 - opacity_) * grey + opacity_ * colours
    rgba = np.zeros((256 * 256, 4), dtype=np.uint8)
    rgba[:, :3] = np.rint(blended * 255.0).reshape(256 * 256, 3)
    return rgba.view(np.uint32).ravel()


def render(
    sop_instance_uid: str,
    frame: int | None,
    display: FloatImage,
    cam: Array,
    *,
    method: str = "grad-cam",
    colormap_name: colormap.ColormapName = "inferno",
    alpha: float = 0.5,
    floor: float = DEFAULT_FLOOR,
    target: str = "",
    target_probability: float | None = None,
) -> Heatmap:
    """Blend a map over its source image for the Secondary Capture.

    The colour's opacity grows with the map value above ``floor`` (see :func:`opacity`),
    so regions the model ignored keep their original grey levels and remain readable.
    The overlay keeps the source's size and aspect: the Secondary Capture shows it at
    full resolution, pictures for pages are scaled down from it.

    Parameters
    ----------
    sop_instance_uid, frame
        Where the source image came from.
    display
        The display-correct source image (grayscale or RGB, 0..1).
    cam
        The raw map at any resolution (0..1); it is resized to the source.
    method
        "grad-cam" or "occlusion", recorded in the Heatmap.
    colormap_name, alpha, floor
        Colour map, maximum opacity of the overlay, and the share of the peak below
        which nothing is coloured.
    target, target_probability
        The class (or finding) the map explains and its probability on this image,
        recorded in the Heatmap so every picture can say what it shows.
    """
    gray = to_grayscale(display)
    full = resize_map(cam, (gray.shape[0], gray.shape[1]))
    map_levels = np.rint(full * 255.0).astype(np.uint16)
    if display.ndim == 2:
        grey_levels = np.rint(np.clip(gray, 0.0, 1.0) * 255.0).astype(np.uint16)
        table = _blend_table(colormap_name, float(alpha), float(floor))
        packed = table[grey_levels * 256 + map_levels]
        # An (rows, columns, 3) view of the RGBA words: no copy of a 2k x 2k picture.
        overlay = packed.view(np.uint8).reshape(*packed.shape, 4)[..., :3]
    else:
        levels = map_levels.astype(np.float32) / 255.0
        weight = opacity(levels, float(alpha), float(floor))[..., None]
        colours = colormap.lookup_table(colormap_name)[map_levels]
        blended = (1.0 - weight) * display + weight * colours
        overlay = np.rint(np.clip(blended, 0.0, 1.0) * 255.0).astype(np.uint8)
    return Heatmap(
        sop_instance_uid=sop_instance_uid,
        frame=frame,
        image=gray.astype(np.float32),
        cam=full,
        overlay=overlay,
        method=method,
        target=target,
        target_probability=target_probability,
        colormap=colormap_name,
        floor=float(floor),
        alpha=float(alpha),
    )
