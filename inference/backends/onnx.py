"""ONNX backend (onnxruntime, CPU).

ONNX graphs carry no gradients we can reach from Python, so explanations for these
models come from occlusion sensitivity (``inference.explain.occlusion``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from inference.backends import Array, ModelLoadError, to_probabilities
from inference.manifest import ManifestSpec


class OnnxBackend:
    """An onnxruntime session fed channels-last batches.

    Parameters
    ----------
    path
        The ``.onnx`` file.
    spec
        The validated manifest; ``input.layout = "nchw"`` transposes batches.
    threads
        Intra-op threads (None: onnxruntime's default, one per core).
    """

    name = "onnx"
    supports_gradcam = False

    def __init__(self, path: Path, spec: ManifestSpec, *, threads: int | None = None) -> None:
        self.spec = spec
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = threads
        # One graph at a time: the node runs jobs in parallel itself if it wants to.
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelLoadError(f"cannot load ONNX model {path}: {exc}") from exc
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelLoadError(f"ONNX model has {len(inputs)} inputs; one is supported")
        self.input_name = inputs[0].name
        self._check_input(list(inputs[0].shape))
        self.warm_up()

    def _check_input(self, shape: list[object]) -> None:
        """Compare the graph's input shape with the manifest (symbolic dims pass)."""
        inp = self.spec.input
        if inp.layout == "nhwc":
            want = [inp.height, inp.width, inp.channels]
        else:
            want = [inp.channels, inp.height, inp.width]
        got = shape[1:]
        if len(got) != 3 or any(
            isinstance(g, int) and g != w for g, w in zip(got, want, strict=True)
        ):
            raise ModelLoadError(
                f"ONNX input shape {shape} does not match manifest {inp.layout} {want}"
            )

    def warm_up(self) -> None:
        """Run once so that memory arenas and kernels are set up before the first study."""
        inp = self.spec.input
        self.predict(np.zeros((1, inp.height, inp.width, inp.channels), dtype=np.float32))

    def raw(self, batch: Array) -> Array:
        """The model's raw output for a channels-last batch."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if self.spec.input.layout == "nchw":
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        (out, *_) = self.session.run(None, {self.input_name: x})
        return np.asarray(out, dtype=np.float32)

    def predict(self, batch: Array) -> Array:
        """Class probabilities (N, n_classes)."""
        return to_probabilities(self.raw(batch), self.spec.output)

    def predict_with_cam(self, batch: Array, target: Array) -> tuple[Array, Array]:
        """Not available for ONNX: use occlusion."""
        raise NotImplementedError("ONNX models are explained by occlusion, not Grad-CAM")
