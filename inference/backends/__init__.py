"""Model backends: a loaded, warmed-up model behind one small interface.

Every backend takes channels-last float32 batches (N, H, W, C) from
``inference.preprocess`` and returns class probabilities (N, n_classes) in the
manifest's class order, whatever the model's last layer gives (softmax, sigmoid,
logits, a single unit).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

from inference.manifest import OutputSpec

Array = npt.NDArray[np.float32]


class ModelLoadError(RuntimeError):
    """The weights could not be loaded or do not fit the manifest."""


class Backend(Protocol):
    """What ``inference.registry.LoadedModel`` needs from a backend."""

    name: str
    supports_gradcam: bool

    def predict(self, batch: Array) -> Array:
        """Class probabilities for a (N, H, W, C) batch."""
        ...

    def predict_with_cam(self, batch: Array, target: Array) -> tuple[Array, Array]:
        """Probabilities and Grad-CAM maps (N, h, w) in 0..1, in one pass.

        ``target`` (N, n_classes) marks the classes whose summed probability is
        explained; an all-zero row means "the predicted class".
        """
        ...


def to_probabilities(raw: npt.NDArray[np.floating], output: OutputSpec) -> Array:
    """Map raw model output (N, units) to probabilities (N, n_classes).

    Parameters
    ----------
    raw
        The model's output; 1 unit when ``output.unit_class`` is set.
    output
        The manifest's output section.
    """
    x = np.asarray(raw, dtype=np.float64).reshape(raw.shape[0], -1)
    if x.shape[1] != output.units:
        raise ModelLoadError(
            f"model gives {x.shape[1]} output units, manifest expects {output.units}"
        )
    if output.activation == "logits":
        if output.units == 1:
            x = 1.0 / (1.0 + np.exp(-x))
        else:
            x = np.exp(x - x.max(axis=1, keepdims=True))
            x = x / x.sum(axis=1, keepdims=True)
    if output.unit_class is not None:
        # One unit scores unit_class; the other class gets the complement.
        p = np.clip(x[:, 0], 0.0, 1.0)
        first_is_unit = output.classes[0] == output.unit_class
        x = np.stack([p, 1.0 - p] if first_is_unit else [1.0 - p, p], axis=1)
    return x.astype(np.float32)
