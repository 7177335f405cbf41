"""Model registry: manifests on disk -> loaded, warmed-up models that predict series.

This is the API the pipeline uses::

    manifests = load_manifests(Path("models"))
    cache = ModelCache(manifests, threads=2)
    prediction = cache.get("chest-xray-pneumonia").predict_series(datasets)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from inference import aggregate, explain, pixels, preprocess
from inference.backends import Array, Backend, ModelLoadError
from inference.manifest import MANIFEST_NAME, ManifestError, ModelManifest, load_manifest
from inference.types import Heatmap, SeriesPrediction, SliceScore

__all__ = [
    "LoadedModel",
    "ManifestError",
    "ModelCache",
    "ModelLoadError",
    "ModelManifest",
    "load_manifests",
    "load_model",
]


def load_manifests(models_dir: Path) -> dict[str, ModelManifest]:
    """Read and validate every ``<models_dir>/<id>/model.toml``.

    Parameters
    ----------
    models_dir
        The folder of model packages.

    Returns
    -------
    dict
        Manifests by model id, sorted by id. Weights are not touched: a model whose
        weights are missing is listed, and ``weights_available()`` says so.

    Raises
    ------
    ManifestError
        For the first invalid manifest, naming its file and key; a broken manifest
        must stop the node at start-up rather than silently drop a model.
    """
    if not models_dir.is_dir():
        raise ManifestError(f"{models_dir}: models folder does not exist")
    manifests: dict[str, ModelManifest] = {}
    for path in sorted(models_dir.glob(f"*/{MANIFEST_NAME}")):
        manifest = load_manifest(path)
        manifests[manifest.id] = manifest
    return manifests


def load_model(
    manifest: ModelManifest, *, threads: int | None = None, inter_op_threads: int | None = None
) -> LoadedModel:
    """Load a model's weights, build its compiled functions and warm it up.

    Parameters
    ----------
    manifest
        A validated manifest.
    threads
        Intra-op threads for TensorFlow or onnxruntime (None: the library default).
    inter_op_threads
        TensorFlow inter-op threads (None: the library default).

    Raises
    ------
    ModelLoadError
        When the weights are missing, cannot be read, or do not fit the manifest.
    """
    reason = manifest.missing_weights_reason()
    if reason is not None:
        raise ModelLoadError(f"{manifest.id}: {reason}")
    path = manifest.weights_path()
    assert path is not None
    spec = manifest.spec
    method = spec.explain.method
    start = time.perf_counter()
    backend: Backend
    if spec.weights.format == "keras":
        from inference.backends.keras import KerasBackend, configure_threads

        configure_threads(threads, inter_op_threads)
        backend = KerasBackend(path, spec, gradcam=method in ("auto", "grad-cam"))
    else:
        if method == "grad-cam":
            raise ModelLoadError(f"{manifest.path}: explain.method: grad-cam needs a Keras model")
        from inference.backends.onnx import OnnxBackend

        backend = OnnxBackend(path, spec, threads=threads)
    return LoadedModel(manifest, backend, load_seconds=time.perf_counter() - start)


class LoadedModel:
    """A loaded model with its manifest; thread-safe for concurrent predictions.

    Parameters
    ----------
    manifest
        The model's manifest.
    backend
        The warmed-up backend.
    load_seconds
        Time taken to load and warm up; reported once, in the first prediction's
        ``timings["load"]`` (later predictions report 0: the model is already warm).
    limits
        What images it agrees to decode (:class:`inference.pixels.PixelLimits`).
    """

    def __init__(
        self,
        manifest: ModelManifest,
        backend: Backend,
        *,
        load_seconds: float,
        limits: pixels.PixelLimits | None = None,
    ) -> None:
        self.manifest = manifest
        self.limits = limits or pixels.PixelLimits()
        self.backend = backend
        self.info = manifest.info
        self.load_seconds = load_seconds
        self._load_unreported = True
        self._lock = threading.Lock()
        spec = manifest.spec
        self._positive = [spec.output.classes.index(c) for c in spec.output.positive_classes]
        method = spec.explain.method
        if method == "auto":
            method = "grad-cam" if backend.supports_gradcam else "occlusion"
        self.explain_method = method

    def _take_load_time(self) -> float:
        with self._lock:
            charged = self.load_seconds if self._load_unreported else 0.0
            self._load_unreported = False
        return charged

    def _target(self, count: int) -> Array:
        """Class mask of what is explained (zeros: each image's predicted class)."""
        mask = np.zeros((count, len(self.info.classes)), dtype=np.float32)
        if self.manifest.spec.explain.target == "positive" and self._positive:
            mask[:, self._positive] = 1.0
        return mask

    def predict_series(
        self, datasets: Sequence[Dataset], *, key_slices: int = 1, explain: bool = True
    ) -> SeriesPrediction:
        """Classify a series and explain its key images.

        Parameters
        ----------
        datasets
            The instances of one series, in any order (pixel data still encoded).
        key_slices
            How many images get a heatmap (the most positive first).
        explain
            False skips heatmaps altogether.

        Returns
        -------
        SeriesPrediction
            With ``timings`` in seconds: load (model load charged to the first
            prediction), decode (pixel decoding and DICOM LUTs), preprocess, infer,
            explain, total.

        Raises
        ------
        inference.pixels.PixelError
            When an image cannot be decoded (the message says which and why).
        """
        start = time.perf_counter()
        timings = {"load": self._take_load_time()}
        spec = self.manifest.spec
        refs = aggregate.sample(aggregate.enumerate_images(datasets), spec.series)
        if not refs:
            raise pixels.PixelError("the series has no images")

        tick = time.perf_counter()
        images = [
            pixels.decode_frame(
                ref.dataset,
                ref.index,
                window=spec.preprocessing.window.for_modality(ref.dataset.get("Modality")),
                limits=self.limits,
            )
            for ref in refs
        ]
        timings["decode"] = time.perf_counter() - tick
        ids = [(ref.sop_instance_uid, ref.frame) for ref in refs]
        prediction = self._predict(images, ids, key_slices, explain, timings, start)
        # A series outside the intended use still gets its result, flagged.
        out_of_scope = spec.scope.violations(refs[0].dataset)
        return replace(prediction, out_of_scope=out_of_scope) if out_of_scope else prediction

    def predict_image(
        self, image: npt.NDArray[np.generic], *, explain: bool = True
    ) -> SeriesPrediction:
        """Classify one already-decoded picture (e.g. a PNG or JPEG for ``predict``).

        Parameters
        ----------
        image
            (rows, columns) or (rows, columns, 3); uint8 / uint16 levels or floats in
            0..1, white = high.
        explain
            Whether to make a heatmap.
        """
        start = time.perf_counter()
        timings = {"load": self._take_load_time(), "decode": 0.0}
        display = as_display_image(image)
        return self._predict([display], [("", None)], 1, explain, timings, start)

    def _predict(
        self,
        images: list[pixels.FloatImage],
        ids: list[tuple[str, int | None]],
        key_slices: int,
        want_explain: bool,
        timings: dict[str, float],
        start: float,
    ) -> SeriesPrediction:
        spec = self.manifest.spec
        tick = time.perf_counter()
        batch = preprocess.prepare_batch(images, spec.input, spec.preprocessing)
        timings["preprocess"] = time.perf_counter() - tick

        explaining = want_explain and key_slices > 0 and self.explain_method != "none"
        one_pass = explaining and self.explain_method == "grad-cam" and len(images) <= key_slices
        tick = time.perf_counter()
        cams: Array | None = None
        if one_pass:
            # Few images: prediction and Grad-CAM come from the same compiled pass.
            probs, cams = self.backend.predict_with_cam(batch, self._target(len(images)))
        else:
            size = spec.series.batch_size
            probs = np.concatenate(
                [self.backend.predict(batch[i : i + size]) for i in range(0, len(batch), size)]
            )
        timings["infer"] = time.perf_counter() - tick

        scores = aggregate.positive_scores(probs, self._positive)
        tick = time.perf_counter()
        heatmaps: tuple[Heatmap, ...] = ()
        if explaining:
            keys = aggregate.key_images(scores, key_slices)
            heatmaps = self._explain(batch, images, ids, keys, cams, probs)
        timings["explain"] = time.perf_counter() - tick

        series = aggregate.aggregate(probs, self._positive, spec.series)
        classes = self.info.classes
        predicted, p_positive, present = aggregate.decide(
            series, classes, self._positive, spec.output.threshold
        )
        slices = tuple(
            SliceScore(
                sop_instance_uid=uid,
                frame=frame,
                probabilities=dict(zip(classes, map(float, row), strict=True)),
                positive_score=float(score),
            )
            for (uid, frame), row, score in zip(ids, probs, scores, strict=True)
        )
        timings["total"] = time.perf_counter() - start + timings["load"]
        return SeriesPrediction(
            model=self.info,
            predicted_class=predicted,
            probabilities=dict(zip(classes, map(float, series), strict=True)),
            positive_probability=p_positive,
            slices=slices,
            heatmaps=heatmaps,
            timings=timings,
            finding_present=present,
        )

    def _explain(
        self,
        batch: Array,
        images: list[pixels.FloatImage],
        ids: list[tuple[str, int | None]],
        keys: list[int],
        cams: Array | None,
        probs: Array,
    ) -> tuple[Heatmap, ...]:
        """Heatmaps for the key images (reusing maps from a one-pass Grad-CAM)."""
        settings = self.manifest.spec.explain
        chosen = batch[keys]
        target = self._target(len(keys))
        if cams is not None:
            maps = cams[keys]
        elif self.explain_method == "grad-cam":
            _, maps = self.backend.predict_with_cam(chosen, target)
        else:
            maps = explain.occlusion(
                self.backend.predict,
                chosen,
                target,
                grid=settings.occlusion_grid,
                patch=settings.occlusion_patch,
                batch_size=self.manifest.spec.series.batch_size,
            )
        heatmaps = []
        for i, k in enumerate(keys):
            label, probability = self._explained(probs[k])
            heatmaps.append(
                explain.render(
                    ids[k][0],
                    ids[k][1],
                    images[k],
                    maps[i],
                    method=self.explain_method,
                    colormap_name=settings.colormap,
                    alpha=settings.alpha,
                    floor=settings.floor,
                    target=label,
                    target_probability=probability,
                )
            )
        return tuple(heatmaps)

    def _explained(self, probabilities: Array) -> tuple[str, float]:
        """What a key image's map explains (see :meth:`_target`) and its probability there.

        The positive finding: its class, or the finding type when several classes count
        as the finding (their summed probability). Otherwise the image's likeliest class.
        """
        classes = self.info.classes
        if self.manifest.spec.explain.target == "positive" and self._positive:
            if len(self._positive) == 1:
                label = classes[self._positive[0]]
            else:
                label = self.info.finding_type.meaning
            return label, float(np.clip(probabilities[self._positive].sum(), 0.0, 1.0))
        best = int(np.argmax(probabilities))
        return classes[best], float(probabilities[best])


def as_display_image(image: npt.NDArray[np.generic]) -> pixels.FloatImage:
    """Bring a picture's levels to float 0..1 (uint8 /255, uint16 /65535, floats as is)."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]  # drop alpha
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise pixels.PixelError(f"expected a grayscale or RGB picture, got shape {array.shape}")
    if np.issubdtype(array.dtype, np.integer):
        peak = float(np.iinfo(array.dtype).max)
        return (array.astype(np.float32) / peak).astype(np.float32)
    return np.clip(array.astype(np.float32), 0.0, 1.0)


class ModelCache:
    """Loads each model once, on first use, and keeps it warm.

    Parameters
    ----------
    manifests
        From :func:`load_manifests`.
    threads, inter_op_threads
        Passed to :func:`load_model`.
    limits
        What the loaded models agree to decode (:class:`inference.pixels.PixelLimits`).
    """

    def __init__(
        self,
        manifests: Mapping[str, ModelManifest],
        *,
        threads: int | None = None,
        inter_op_threads: int | None = None,
        limits: pixels.PixelLimits | None = None,
    ) -> None:
        self.manifests = dict(manifests)
        self.limits = limits
        self.threads = threads
        self.inter_op_threads = inter_op_threads
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def get(self, model_id: str) -> LoadedModel:
        """Return the loaded model, loading it first if needed.

        Raises
        ------
        KeyError
            For an unknown model id.
        ModelLoadError
            When the weights are missing or broken.
        """
        with self._lock:
            if model_id not in self._models:
                manifest = self.manifests[model_id]
                model = load_model(
                    manifest, threads=self.threads, inter_op_threads=self.inter_op_threads
                )
                if self.limits is not None:
                    model.limits = self.limits
                self._models[model_id] = model
            return self._models[model_id]

    def loaded(self) -> list[str]:
        """Ids of the models loaded so far."""
        with self._lock:
            return sorted(self._models)
