"""Keras 3 backend (TensorFlow), for ``.keras`` files and legacy ``.h5`` files.

The model is loaded once and called only through ``tf.function``s with a fixed input
signature whose batch dimension is None: tracing happens once at warm-up, and any batch
size runs the same graph. ``model.predict`` is never used: it builds a data pipeline
per call and costs about 25 times the compiled call for one image on 2 cores.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np

from inference import explain
from inference.backends import Array, ModelLoadError
from inference.manifest import ManifestSpec, OutputSpec

log = logging.getLogger(__name__)


def configure_threads(intra_op: int | None, inter_op: int | None = None) -> None:
    """Bound TensorFlow's thread pools.

    TensorFlow fixes its pools when the runtime starts; later calls raise RuntimeError,
    in which case the pools already in place are kept (and logged).

    Parameters
    ----------
    intra_op
        Threads inside one operation (convolutions); None keeps TensorFlow's default.
    inter_op
        Operations run concurrently; None keeps TensorFlow's default.
    """
    import tensorflow as tf

    threading = tf.config.threading
    for wanted, getter, setter in (
        (
            intra_op,
            threading.get_intra_op_parallelism_threads,
            threading.set_intra_op_parallelism_threads,
        ),
        (
            inter_op,
            threading.get_inter_op_parallelism_threads,
            threading.set_inter_op_parallelism_threads,
        ),
    ):
        if wanted is None or getter() == wanted:
            continue
        try:
            setter(wanted)
        except RuntimeError:
            log.warning(
                "TensorFlow is already running with %s threads; cannot change to %s",
                getter() or "default",
                wanted,
            )


def _probabilities(raw: Any, output: OutputSpec) -> Any:
    """TensorFlow version of ``inference.backends.to_probabilities`` (inside the graph)."""
    import tensorflow as tf

    x = tf.reshape(tf.cast(raw, tf.float32), (tf.shape(raw)[0], -1))
    if output.activation == "logits":
        x = tf.sigmoid(x) if output.units == 1 else tf.nn.softmax(x, axis=1)
    if output.unit_class is not None:
        p = tf.clip_by_value(x[:, 0], 0.0, 1.0)
        pair = [p, 1.0 - p] if output.classes[0] == output.unit_class else [1.0 - p, p]
        x = tf.stack(pair, axis=1)
    return x


class KerasBackend:
    """A Keras model behind compiled prediction and prediction + Grad-CAM functions.

    Parameters
    ----------
    path
        The ``.keras`` or ``.h5`` file.
    spec
        The validated manifest.
    gradcam
        Whether to build the Grad-CAM function (needs a 4-D feature map).
    """

    name = "keras"

    def __init__(self, path: Path, spec: ManifestSpec, *, gradcam: bool = True) -> None:
        import keras
        import tensorflow as tf

        self.spec = spec
        try:
            # compile=False: no optimizer or loss is needed and custom losses of the
            # training code (absent here) would otherwise fail the load.
            self.model = keras.saving.load_model(path, compile=False)
        except Exception as exc:
            raise ModelLoadError(f"cannot load Keras model {path}: {exc}") from exc
        self._check_shapes()
        inp = spec.input
        signature = tf.TensorSpec((None, inp.height, inp.width, inp.channels), tf.float32)
        n_classes = len(spec.output.classes)
        model, output = self.model, spec.output

        @tf.function(input_signature=[signature], reduce_retracing=True)
        def predict(x: Any) -> Any:
            return _probabilities(model(x, training=False), output)

        self._predict = predict
        self._predict_cam: Any = None
        self.feature_layer: list[str] | None = None
        self.supports_gradcam = False
        if gradcam:
            try:
                self.feature_layer = explain.resolve_layer_path(self.model, spec.explain.layer)
                grad_model = explain.feature_model(self.model, self.feature_layer)
            except ValueError as exc:
                raise ModelLoadError(f"Grad-CAM: {exc}") from exc
            target_spec = tf.TensorSpec((None, n_classes), tf.float32)

            @tf.function(input_signature=[signature, target_spec], reduce_retracing=True)
            def predict_cam(x: Any, target: Any) -> Any:
                with tf.GradientTape() as tape:
                    # Watch the input so that every op after it is recorded, also when
                    # the conv base is frozen (non-trainable variables are not watched).
                    tape.watch(x)
                    features, raw = grad_model(x, training=False)
                    probs = _probabilities(raw, output)
                    predicted = tf.one_hot(tf.argmax(probs, axis=1), n_classes)
                    empty = tf.reduce_sum(target, axis=1, keepdims=True) <= 0.0
                    mask = tf.where(empty, predicted, target)
                    # log of the target probability: does not saturate like p itself.
                    score = tf.math.log(tf.reduce_sum(probs * mask, axis=1) + 1e-7)
                gradients = tape.gradient(score, features)
                return probs, explain.gradcam(features, gradients)

            self._predict_cam = predict_cam
            self.supports_gradcam = True
        self.warm_up()

    def _check_shapes(self) -> None:
        """Fail early when the manifest does not describe this model."""
        inputs, outputs = self.model.inputs, self.model.outputs
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelLoadError("only single-input, single-output models are supported")
        got = tuple(inputs[0].shape[1:])
        inp = self.spec.input
        want = (inp.height, inp.width, inp.channels)
        if len(got) != 3 or any(g is not None and g != w for g, w in zip(got, want, strict=True)):
            raise ModelLoadError(f"model input {got} does not match manifest input {want} (NHWC)")
        units = int(np.prod([d for d in outputs[0].shape[1:] if d is not None]))
        if units != self.spec.output.units:
            raise ModelLoadError(
                f"model has {units} output units, manifest output expects {self.spec.output.units}"
            )

    def warm_up(self) -> None:
        """Trace and run each compiled function once, so the first study is not slow."""
        inp = self.spec.input
        zeros = np.zeros((1, inp.height, inp.width, inp.channels), dtype=np.float32)
        self.predict(zeros)
        if self._predict_cam is not None:
            self.predict_with_cam(zeros, np.zeros((1, len(self.spec.output.classes)), np.float32))

    def predict(self, batch: Array) -> Array:
        """Class probabilities (N, n_classes) for a (N, H, W, C) batch."""
        return np.asarray(self._predict(batch), dtype=np.float32)

    def predict_with_cam(self, batch: Array, target: Array) -> tuple[Array, Array]:
        """Probabilities and Grad-CAM maps (N, h, w) from one compiled pass."""
        if self._predict_cam is None:
            raise RuntimeError("Grad-CAM was not built for this model")
        probs, cams = self._predict_cam(batch, np.asarray(target, dtype=np.float32))
        return np.asarray(probs, dtype=np.float32), np.asarray(cams, dtype=np.float32)
