"""Train a seed architecture on an image-folder data set and write a servable package.

``train(arch, data_dir, out_dir)`` does, in order:

1. builds the package's manifest first, so that training preprocesses images with the
   very ``input`` and ``preprocessing`` sections the node will use to serve the model;
2. scans the data folder (one folder per class) and splits it per class, with a fixed
   seed, into training, validation and test images;
3. decodes every image once through the runtime's pixel path (:mod:`inference.seed.datasets`);
4. trains with augmentation (flip, small rotation, zoom, shift, contrast), balanced
   class weights, Adam, early stopping on the validation loss and a checkpoint of the
   best epoch;
5. exports the best epoch to ``weights/model.keras`` (written to a temporary name and
   renamed: a route starts serving when the file appears, never on a partial file);
6. loads the package through the node's own runtime (``load_model``) and evaluates it on
   the test images, so the report describes exactly what the node will answer, and
   writes ``report/`` (JSON, Markdown, PNG plots) and the final manifest.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from inference import preprocess
from inference.manifest import MANIFEST_NAME, InputSpec, ManifestSpec, PreprocessSpec, load_manifest
from inference.seed import datasets
from inference.seed.architectures import DEFAULT_WEIGHTS, Architecture
from inference.seed.evaluation import Evaluation, evaluate, write_report

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

Log = Callable[[str], None]


class TrainingError(RuntimeError):
    """Training cannot start or its result cannot be packaged; the message says why."""


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; the defaults suit a data set of a few hundred to thousands.

    Attributes
    ----------
    epochs
        Upper bound; early stopping usually ends sooner.
    batch_size
        Images per step.
    learning_rate
        Adam's step size.
    patience
        Epochs without a better validation loss before stopping.
    validation_fraction, test_fraction
        Shares of every class held out for early stopping and for the report.
    seed
        Seeds the split, the initial weights and the augmentation.
    augment
        Random flips, rotations, zooms, shifts and contrast changes of training images.
    input_size, width, depth
        Reduced networks (tests, quick trials); None / 1.0 / 1.0 are the originals.
    imagenet_weights
        A local ImageNet ``*_notop.h5`` file for the ResNet50 / VGG16 base.
    verbose
        Keras verbosity: 0 silent, 1 progress bar, 2 one line per epoch; None picks 1 on
        a terminal and 2 otherwise (a progress bar in a log file is one huge line).
    force
        Replace existing weights in the output folder.
    version
        Model version for the manifest; a UTC time stamp by default.
    threads
        Threads TensorFlow may use (None: its default, all cores).
    """

    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    patience: int = 5
    validation_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 42
    augment: bool = True
    input_size: int | None = None
    width: float = 1.0
    depth: float = 1.0
    imagenet_weights: Path | None = None
    verbose: int | None = None
    force: bool = False
    version: str | None = None
    threads: int | None = None


@dataclass(frozen=True)
class TrainResult:
    """What training wrote and measured."""

    package_dir: Path
    manifest_path: Path
    weights_path: Path
    report: dict[str, Path]
    evaluation: Evaluation
    epochs_run: int
    best_epoch: int
    split: dict[str, dict[str, int]]
    notes: tuple[str, ...] = field(default_factory=tuple)


def train(
    arch: Architecture,
    data_dir: Path,
    out_dir: Path,
    config: TrainConfig | None = None,
    *,
    log: Log = print,
) -> TrainResult:
    """Train ``arch`` on ``data_dir`` and write the package ``out_dir`` (id = folder name).

    Parameters
    ----------
    arch
        The seed architecture.
    data_dir
        One folder per class (names as the classes, or an architecture alias such as
        "yes"/"no"); PNG, JPEG or DICOM files anywhere below.
    out_dir
        The package folder, e.g. ``models/bone-xray-cnn``; an existing manifest is
        replaced, existing weights only with ``config.force``.
    config
        Training settings.
    log
        Where progress messages go.

    Raises
    ------
    TrainingError
        For an unusable output folder or data set (missing classes, too few images,
        unreadable files).
    """
    config = config or TrainConfig()
    started = time.monotonic()
    model_id = out_dir.name
    weights_path = out_dir / DEFAULT_WEIGHTS
    existing = sorted(weights_path.parent.glob("model.*")) if weights_path.parent.is_dir() else []
    if existing and not config.force:
        raise TrainingError(f"{existing[0]} exists; use --force to replace it")
    size = config.input_size or arch.input_size
    try:
        draft = arch.manifest(model_id=model_id, version="training", input_size=size)
        spec = ManifestSpec.model_validate(draft)
    except ValueError as exc:
        raise TrainingError(f"cannot make a manifest for {model_id!r}: {exc}") from exc

    try:
        folder = datasets.scan_image_folder(data_dir, arch.classes, arch.folder_class)
        labels = np.array([s.label for s in folder.samples], dtype=np.int64)
        split = datasets.stratified_split(
            labels,
            validation=config.validation_fraction,
            test=config.test_fraction,
            seed=config.seed,
        )
    except datasets.DatasetError as exc:
        raise TrainingError(str(exc)) from exc
    counts = _split_counts(labels, split, arch.classes)
    log(f"data {data_dir}: " + ", ".join(f"{c} ({folder.folders[c]}/)" for c in arch.classes))
    for part, per_class in counts.items():
        log(f"  {part:<10} " + ", ".join(f"{c} {n}" for c, n in per_class.items()))

    verbose = config.verbose if config.verbose is not None else (1 if sys.stdout.isatty() else 2)
    levels = _decode(folder, spec.input, spec.preprocessing, verbose, log)

    import keras

    if config.threads:
        from inference.backends.keras import configure_threads

        configure_threads(config.threads, config.threads)
    built = arch.build(
        input_size=size,
        width=config.width,
        depth=config.depth,
        imagenet_weights=config.imagenet_weights,
        seed=config.seed,
    )
    for note in built.notes:
        log(f"NOTE: {note}")
    model = built.model
    unit = arch.classes.index(arch.unit_class) if arch.unit_class else None
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss="binary_crossentropy" if unit is not None else "sparse_categorical_crossentropy",
        metrics=["accuracy"],
        # XLA compilation of a 50-layer ResNet takes most of a minute on 2 cores, more
        # than it saves on the small data sets a hospital starts with.
        jit_compile=False,
    )
    class_weights = _class_weights(labels[split.train], len(arch.classes))
    weights_text = ", ".join(
        f"{c} {w:.2f}" for c, w in zip(arch.classes, class_weights, strict=True)
    )
    log(f"class weights: {weights_text}")

    checkpoints = out_dir / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    best_path = checkpoints / "best.keras"
    train_batches = _batches_class()(
        levels[split.train],
        _targets(labels[split.train], unit),
        class_weights[labels[split.train]],
        batch_size=config.batch_size,
        transform=lambda x: preprocess.scale_levels(x, spec.input, spec.preprocessing),
        augment=_augmentation(config.seed) if config.augment else None,
        seed=config.seed,
    )
    x_val = preprocess.scale_levels(levels[split.validation], spec.input, spec.preprocessing)
    y_val = _targets(labels[split.validation], unit)
    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.patience, restore_best_weights=True
        ),
        keras.callbacks.ModelCheckpoint(str(best_path), monitor="val_loss", save_best_only=True),
    ]
    size_text = f"{model.count_params():,} parameters"
    log(f"training {arch.name} ({size_text}) for up to {config.epochs} epochs")
    history = model.fit(
        train_batches,
        validation_data=(x_val, y_val),
        epochs=config.epochs,
        callbacks=callbacks,
        verbose=verbose,
    ).history
    val_losses = [float(v) for v in history.get("val_loss", [])]
    if not best_path.is_file() or not np.isfinite(val_losses).any():
        # ModelCheckpoint saves only a finite, improving validation loss.
        raise TrainingError(
            "the validation loss was never finite (diverged?): try a lower --learning-rate"
        )
    best_epoch = int(np.nanargmin(np.where(np.isfinite(val_losses), val_losses, np.nan))) + 1

    # The checkpoint holds the best epoch; reloaded without compiling, it is saved
    # without optimizer state (a third of the size of a compiled model file).
    best = keras.saving.load_model(best_path, compile=False)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    partial = weights_path.with_name("partial." + weights_path.name)
    best.save(partial)
    for stale in weights_path.parent.glob("model.*"):
        if stale != weights_path:
            stale.unlink()  # an imported .h5 would otherwise sit beside the new weights
    os.replace(partial, weights_path)
    shutil.rmtree(checkpoints, ignore_errors=True)

    version = config.version or datetime.now(UTC).strftime("trained-%Y%m%dT%H%M%SZ")
    notes = [*built.notes]
    manifest_path = out_dir / MANIFEST_NAME
    _write_manifest(arch, manifest_path, model_id, version, size, folder, None, notes)

    log("evaluating the exported package on the test images through the node's runtime")
    evaluation = _evaluate(manifest_path, levels, labels, split.test, folder, config.threads)
    _write_manifest(arch, manifest_path, model_id, version, size, folder, evaluation, notes)
    context = {
        "architecture": arch.name,
        "data": str(data_dir),
        "folders": ", ".join(f"{c} = {folder.folders[c]}/" for c in arch.classes),
        "split (train / validation / test)": " / ".join(
            str(sum(counts[p].values())) for p in ("train", "validation", "test")
        ),
        "input": f"{size} x {size} x 3, {spec.input.resize} resize, "
        f"{spec.preprocessing.mode} preprocessing",
        "width / depth": f"{config.width} / {config.depth}",
        "ImageNet base": "yes" if built.pretrained else ("no" if arch.transfer else "n/a"),
        "augmentation": "on" if config.augment else "off",
        "class weights": weights_text,
        "optimizer": f"Adam, learning rate {config.learning_rate}",
        "batch size": config.batch_size,
        "epochs run": len(val_losses),
        "best epoch (validation loss)": best_epoch,
        "seed": config.seed,
        "time (s)": round(time.monotonic() - started, 1),
        "version": version,
    }
    report_dir = out_dir / "report"
    paths = write_report(
        evaluation,
        report_dir,
        title=f"{arch.title}: {model_id}",
        history={k: list(map(float, v)) for k, v in history.items()},
        context=context,
        notes=notes,
        best_epoch=best_epoch,
    )
    split_file = report_dir / "split.json"
    split_file.write_text(
        json.dumps(
            {
                part: [folder.samples[i].name for i in getattr(split, part)]
                for part in ("train", "validation", "test")
            },
            indent=1,
        )
        + "\n",
        encoding="utf-8",
    )
    paths["split"] = split_file
    log(
        f"test accuracy {evaluation.accuracy:.3f}, AUC "
        f"{'n/a' if evaluation.auc is None else f'{evaluation.auc:.3f}'} on "
        f"{evaluation.count} images; report in {report_dir}"
    )
    return TrainResult(
        package_dir=out_dir,
        manifest_path=manifest_path,
        weights_path=weights_path,
        report=paths,
        evaluation=evaluation,
        epochs_run=len(val_losses),
        best_epoch=best_epoch,
        split=counts,
        notes=tuple(notes),
    )


def _split_counts(
    labels: npt.NDArray[np.int64], split: datasets.Split, classes: tuple[str, ...]
) -> dict[str, dict[str, int]]:
    return {
        part: {c: int((labels[getattr(split, part)] == i).sum()) for i, c in enumerate(classes)}
        for part in ("train", "validation", "test")
    }


def _decode(
    folder: datasets.ImageFolder,
    input_spec: InputSpec,
    preprocessing: PreprocessSpec,
    verbose: int,
    log: Log,
) -> npt.NDArray[np.uint8]:
    """Decode all images once, with a progress bar on a terminal."""
    log(f"reading {len(folder.samples)} images")
    with tqdm(total=len(folder.samples), unit="img", disable=verbose != 1) as bar:
        try:
            return datasets.load_levels(
                folder.samples, input_spec, preprocessing, progress=bar.update
            )
        except datasets.DatasetError as exc:
            raise TrainingError(str(exc)) from exc


def _class_weights(labels: npt.NDArray[np.int64], n: int) -> npt.NDArray[np.float32]:
    """Balanced weights n_samples / (n_classes * count): each class weighs the same."""
    counts = np.bincount(labels, minlength=n).astype(np.float64)
    weights = len(labels) / (n * np.maximum(counts, 1.0))
    return weights.astype(np.float32)


def _targets(labels: npt.NDArray[np.int64], unit: int | None) -> npt.NDArray[np.float32]:
    """Training targets: class indices, or for one sigmoid unit 1.0 where it is its class."""
    if unit is None:
        return labels.astype(np.float32)
    return (labels == unit).astype(np.float32)[:, None]


def _augmentation(seed: int) -> Any:
    """Mild, label-preserving changes: radiographs are flipped, slightly turned and zoomed.

    Fill value 0 (black) for the borders a rotation or shift opens, as on a radiograph.
    No vertical flip: anatomy has an up and a down.
    """
    import keras
    from keras import layers

    return keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=seed),
            layers.RandomRotation(0.03, fill_mode="constant", seed=seed + 1),
            layers.RandomZoom(0.1, fill_mode="constant", seed=seed + 2),
            layers.RandomTranslation(0.05, 0.05, fill_mode="constant", seed=seed + 3),
            layers.RandomContrast(0.1, seed=seed + 4),
        ],
        name="augmentation",
    )


def _batches_class() -> Any:
    """The ``keras.utils.PyDataset`` subclass, defined on first use (Keras is heavy)."""
    import keras

    class Batches(keras.utils.PyDataset):
        """Shuffled, augmented, value-scaled batches with per-sample class weights."""

        def __init__(
            self,
            levels: npt.NDArray[np.uint8],
            targets: npt.NDArray[np.float32],
            weights: npt.NDArray[np.float32],
            *,
            batch_size: int,
            transform: Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]],
            augment: Any,
            seed: int,
        ) -> None:
            super().__init__()
            self.levels, self.targets, self.weights = levels, targets, weights
            self.batch_size = batch_size
            self.transform, self.augment = transform, augment
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(levels))

        def __len__(self) -> int:
            return max(1, -(-len(self.levels) // self.batch_size))

        def __getitem__(self, index: int) -> tuple[Any, Any, Any]:
            rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
            x = self.levels[rows].astype(np.float32)
            if self.augment is not None:
                x = np.clip(np.asarray(self.augment(x, training=True)), 0.0, 255.0)
            return self.transform(x), self.targets[rows], self.weights[rows]

        def on_epoch_end(self) -> None:
            self.order = self.rng.permutation(len(self.levels))

    return Batches


def _evaluate(
    manifest_path: Path,
    levels: npt.NDArray[np.uint8],
    labels: npt.NDArray[np.int64],
    test: npt.NDArray[np.int64],
    folder: datasets.ImageFolder,
    threads: int | None,
) -> Evaluation:
    """Predict the test images with the package as the node loads it, then score them."""
    from inference.registry import load_model

    manifest = load_manifest(manifest_path)
    loaded = load_model(manifest, threads=threads)
    spec = manifest.spec
    batch = preprocess.scale_levels(levels[test], spec.input, spec.preprocessing)
    size = spec.series.batch_size
    probabilities = np.concatenate(
        [loaded.backend.predict(batch[i : i + size]) for i in range(0, len(batch), size)]
    )
    return evaluate(
        labels[test],
        probabilities,
        spec.output.classes,
        spec.output.positive_classes,
        spec.output.threshold,
        names=[folder.samples[i].name for i in test],
    )


def _write_manifest(
    arch: Architecture,
    path: Path,
    model_id: str,
    version: str,
    size: int,
    folder: datasets.ImageFolder,
    evaluation: Evaluation | None,
    notes: list[str],
) -> None:
    """Write the trained package's manifest; with test metrics once they are known."""
    counts = folder.counts()
    trained = (
        f"{arch.summary} Trained by dicom-node on {sum(counts.values())} images ("
        + ", ".join(f"{c} {n}" for c, n in counts.items())
        + ")."
    )
    if evaluation is not None:
        auc = "n/a" if evaluation.auc is None else f"{evaluation.auc:.3f}"
        trained += (
            f" Held-out test set of {evaluation.count}: accuracy {evaluation.accuracy:.3f}, "
            f"ROC AUC {auc} (report/report.md)."
        )
    description = " ".join([trained, *notes])
    data = arch.manifest(
        model_id=model_id,
        version=version,
        description=description,
        input_size=size,
        resize="bilinear",
    )
    partial = path.with_name("partial." + path.name)
    partial.write_text(arch.manifest_text(data), encoding="utf-8")
    os.replace(partial, path)
