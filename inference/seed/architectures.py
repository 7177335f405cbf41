"""The five seed networks of the original Flask apps, and the manifests that serve them.

Each app trained one CNN; their weights and data sets are gone, but a hospital may have
either. An :class:`Architecture` is what is needed to rebuild one app's network
(:meth:`Architecture.build`) and to write the ``model.toml`` that makes the node feed it
the pixels it was trained on and read its output the way the app did
(:meth:`Architecture.manifest`). :func:`import_keras_file` turns an existing model file
from an app into a package with that manifest.

Choices the apps did not document are ours and are written down here, in the
architectures' ``notes`` and in every generated manifest:

========================  =========  ==========  ===========  ==============================
architecture              input      values      output       classes (unit = 1 sigmoid)
========================  =========  ==========  ===========  ==============================
``bone-xray-cnn``         224 RGB    x / 255     sigmoid      normal, cancer (unit: cancer)
``lung-ct-resnet50``      224 RGB    caffe       softmax      normal, benign, malignant
``lung-ct-cnn``           64 RGB     x / 255     sigmoid      cancer, normal (unit: normal)
``breast-vgg16``          224 RGB    caffe       softmax      benign, malignant
``brain-mri-cnn``         150 RGB    x / 255     sigmoid      no_tumor, tumor (unit: tumor)
========================  =========  ==========  ===========  ==============================

The lung CT app's single sigmoid is P(normal) ("below 0.5 means cancer"): its manifest
says ``unit_class = "normal"`` and the runtime turns 0.2 into P(cancer) = 0.8.

Nothing is downloaded. The ResNet50 and VGG16 bases are built with ``weights=None``;
ImageNet weights are used only when a local file is given (then the base is frozen, as
in the apps), otherwise the whole network is trained from scratch, which the manifest
description and the training output say. Keras is imported inside the functions that
need it, so the command line can list presets without starting TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from inference.manifest import MANIFEST_NAME, ManifestSpec, load_manifest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# Where a package's weights live, relative to its folder: missing until trained or
# imported, so the committed seed manifests name it and routes wait for it.
DEFAULT_WEIGHTS = "weights/model.keras"
PreprocessMode = Literal["scale", "caffe", "tf", "torch"]
Resize = Literal["nearest", "bilinear", "bicubic", "lanczos", "box"]

# Coded concepts (DESIGN.md section 3): (value, scheme, meaning).
NEOPLASM = ("108369006", "SCT", "Neoplasm")
# The cancer models' finding: "Neoplasm = Absent" would be wrong for a benign nodule.
CANCER = ("363346000", "SCT", "Malignant neoplastic disease")
NORMAL = ("17621005", "SCT", "Normal")
BENIGN = ("30807003", "SCT", "Benign")
MALIGNANT = ("21594007", "SCT", "Malignant")
PROBABILITY_OF_CANCER = ("111047", "DCM", "Probability of cancer")
PROBABILITY = ("122157", "DCM", "Probability")
BONE = ("272673000", "SCT", "Bone structure")
LUNG = ("39607008", "SCT", "Lung structure")
BREAST = ("76752008", "SCT", "Breast structure")
BRAIN = ("12738006", "SCT", "Brain structure")

Code = tuple[str, str, str]


@dataclass(frozen=True)
class BuiltModel:
    """A freshly built Keras model and what the caller must know about its weights.

    Attributes
    ----------
    model
        The uncompiled Keras model.
    pretrained
        True when an ImageNet base was loaded from a local file (and frozen).
    notes
        Sentences for the training output and the manifest description, e.g. that a
        transfer-learning base is trained from scratch.
    """

    model: Any
    pretrained: bool
    notes: tuple[str, ...]


Builder = Callable[[tuple[int, int, int], float, float, Path | None], BuiltModel]


@dataclass(frozen=True)
class Architecture:
    """One original app's network, input, preprocessing and output interpretation.

    Attributes
    ----------
    name
        Preset name (``--arch`` / ``--preset``) and the seed model id.
    title
        Manifest ``name`` (at most 64 characters).
    summary
        What the original app did; the start of every manifest description.
    input_size
        Default square input side in pixels (the original app's).
    preprocessing
        Value preprocessing mode (see ``inference.manifest.PreprocessSpec``).
    classes
        Class labels in output order.
    activation
        "sigmoid" (one unit scoring ``unit_class``) or "softmax".
    unit_class
        The class a single sigmoid unit scores; None for softmax outputs.
    positive_classes
        The finding's classes; their summed probability is the SR's probability.
    finding_type, finding_site, probability
        SR concepts: what is looked for, where, and the probability's concept name.
    class_concepts
        Codes for the class labels (others get private codes).
    window
        VOI window by modality for DICOM input (``{"CT": "lung"}``); default "file".
    series
        The manifest's ``[series]`` table: sampling and aggregation of many images.
    builder
        ``(shape, width, depth, imagenet_weights) -> BuiltModel``.
    aliases
        Data set folder names (normalised: lower case, letters and digits only, a
        trailing "cases"/"images" dropped) that mean a class, e.g. "bengin" (the
        IQ-OTHNCCD spelling) -> "benign", "yes" -> "tumor".
    notes
        Documented choices, repeated in generated manifests as comments.
    """

    name: str
    title: str
    summary: str
    input_size: int
    preprocessing: PreprocessMode
    classes: tuple[str, ...]
    activation: Literal["sigmoid", "softmax"]
    unit_class: str | None
    positive_classes: tuple[str, ...]
    finding_type: Code
    finding_site: Code
    probability: Code
    class_concepts: Mapping[str, Code]
    builder: Builder
    window: Mapping[str, str] = field(default_factory=dict)
    series: Mapping[str, Any] = field(default_factory=dict)
    aliases: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    transfer: bool = False

    @property
    def units(self) -> int:
        """Number of output units of the network."""
        return 1 if self.unit_class is not None else len(self.classes)

    def build(
        self,
        *,
        input_size: int | None = None,
        width: float = 1.0,
        depth: float = 1.0,
        imagenet_weights: Path | None = None,
        seed: int | None = None,
    ) -> BuiltModel:
        """Build the network (uncompiled).

        Parameters
        ----------
        input_size
            Square input side; None for the original app's. Tests use small sizes.
        width
            Multiplier of every layer's filters and dense units; 1.0 is the original
            network. Tests build reduced versions with e.g. 0.125.
        depth
            Multiplier of the number of blocks per stage of the ResNet50 / VGG16 base
            (at least one each); 1.0 is the original. A 50-layer graph takes TensorFlow
            about half a minute to trace and optimise on 2 cores, so tests use 0.25.
        imagenet_weights
            A local ``*_notop.h5`` ImageNet weights file for the ResNet50 / VGG16 base
            (needs ``width = depth = 1``); the small CNNs have no base and refuse it.
            Without it the base is trained from scratch.
        seed
            Seed for the weight initialisers (None: Keras' global state).

        Raises
        ------
        ValueError
            For a width outside (0, 4], an input below 32 pixels, or ImageNet weights
            asked for a reduced or non-transfer network.
        """
        import keras

        size = input_size or self.input_size
        if not 0.0 < width <= 4.0:
            raise ValueError(f"width must be in (0, 4], not {width}")
        if not 0.0 < depth <= 1.0:
            raise ValueError(f"depth must be in (0, 1], not {depth}")
        if size < 32:
            raise ValueError(f"input_size must be at least 32 pixels, not {size}")
        if imagenet_weights is not None:
            if not self.transfer:
                raise ValueError(f"{self.name} has no ImageNet base; drop the weights file")
            if width != 1.0 or depth != 1.0:
                raise ValueError("ImageNet weights fit the full network only (width = depth = 1)")
            if not Path(imagenet_weights).is_file():
                raise ValueError(f"ImageNet weights file {imagenet_weights} does not exist")
        if seed is not None:
            keras.utils.set_random_seed(seed)
        return self.builder((size, size, 3), width, depth, imagenet_weights)

    def manifest(
        self,
        *,
        model_id: str | None = None,
        version: str = "untrained",
        description: str | None = None,
        weights: str = DEFAULT_WEIGHTS,
        input_size: int | tuple[int, int] | None = None,
        channels: Literal[1, 3] = 3,
        resize: Resize = "bilinear",
        preprocessing: PreprocessMode | None = None,
        classes: Sequence[str] | None = None,
        activation: Literal["sigmoid", "softmax", "logits"] | None = None,
        unit_class: str | None = "",
    ) -> dict[str, Any]:
        """Return the ``model.toml`` content as a dict (validated by :func:`render_manifest`).

        Parameters
        ----------
        model_id
            Package id (= folder name); the architecture name by default.
        version
            Model version, reported in the SR (its device UID changes with it).
        description
            Manifest description; the architecture summary plus a note on missing
            weights by default.
        weights
            Weights path relative to the package folder (.keras or .h5).
        input_size
            Side, or (height, width); the architecture's by default.
        channels
            3 for RGB, 1 for a grayscale model (an imported file may have one channel).
        resize
            PIL filter the training pipeline used: Keras ``load_img`` (the apps) uses
            "nearest"; :mod:`inference.seed.training` uses "bilinear" (antialiased).
        preprocessing, classes, activation
            Overrides for an imported model that differs from the app's defaults.
        unit_class
            Override of the single unit's class: "" keeps the architecture's, None
            makes the output multi-unit.
        """
        model_id = model_id or self.name
        side = input_size or self.input_size
        height, width = (side, side) if isinstance(side, int) else side
        mode = preprocessing or self.preprocessing
        labels = list(classes or self.classes)
        unit = self.unit_class if unit_class == "" else unit_class
        if description is None:
            description = (
                f"{self.summary} No weights are installed: train with 'dicom-node train "
                f"--arch {self.name} DATA_DIR --out models/{model_id}' or import a model "
                f"file with 'dicom-node models import FILE --preset {self.name} "
                f"--id {model_id}'."
            )
        data: dict[str, Any] = {
            "id": model_id,
            "name": self.title,
            "version": version,
            "description": description,
            "intended_use": "Research and demonstration only. Not for diagnostic use.",
            "weights": {"format": "keras", "path": weights},
            "input": {
                "height": height,
                "width": width,
                "channels": channels,
                "color": "grayscale" if channels == 1 else "rgb",
                "resize": resize,
            },
            "preprocessing": {"mode": mode},
            "output": {
                "activation": activation or self.activation,
                "classes": labels,
                "positive_classes": [c for c in self.positive_classes if c in labels],
                "threshold": 0.5,
            },
            "concepts": {
                "finding_type": _concept(self.finding_type),
                "finding_site": _concept(self.finding_site),
                "probability": _concept(self.probability),
                "classes": {
                    label: _concept(code)
                    for label, code in self.class_concepts.items()
                    if label in labels
                },
            },
            "explain": {"method": "grad-cam", "layer": "auto", "target": "positive"},
            "series": dict(self.series),
        }
        if unit is not None:
            data["output"]["unit_class"] = unit
        window = {"default": "file", **({"modality": dict(self.window)} if self.window else {})}
        data["preprocessing"]["window"] = window
        return data

    def manifest_text(self, data: Mapping[str, Any] | None = None, **kwargs: Any) -> str:
        """Render :meth:`manifest` (or ``data``) as commented, validated TOML."""
        content = data if data is not None else self.manifest(**kwargs)
        header = [
            f"Model package of the '{self.name}' architecture, written by dicom-node",
            "(inference/architectures.py, which documents every choice below).",
            *self.notes,
            "Research and demonstration only. Not for diagnostic use.",
        ]
        return render_manifest(content, header)

    def folder_class(self, folder: str) -> str | None:
        """Map a data set folder name to a class label, or None when it names none."""
        key = normalise_label(folder)
        for label in self.classes:
            if normalise_label(label) == key:
                return label
        return self.aliases.get(key)


def normalise_label(text: str) -> str:
    """Folder or class name -> lower-case letters and digits, "cases"/"images" dropped."""
    key = re.sub(r"[^a-z0-9]+", "", text.lower())
    for suffix in ("cases", "images", "imgs"):
        if key.endswith(suffix) and len(key) > len(suffix):
            key = key[: -len(suffix)]
    return key


def _concept(code: Code) -> dict[str, str]:
    return {"value": code[0], "scheme": code[1], "meaning": code[2]}


# -- TOML ---------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    """One TOML value: strings (JSON escapes are valid TOML), numbers, lists, inline tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"cannot write {value} to TOML")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _is_table(value: Any) -> bool:
    """Nested tables become [sections]; tables of concepts stay inline (one line each)."""
    return isinstance(value, Mapping) and not {"value", "scheme", "meaning"} <= set(value)


def render_manifest(data: Mapping[str, Any], comments: Sequence[str] = ()) -> str:
    """Write a manifest dict as TOML and check that it is a valid manifest.

    Parameters
    ----------
    data
        The manifest content (as :meth:`Architecture.manifest` returns it).
    comments
        Lines written as ``#`` comments at the top: why the values are what they are.

    Raises
    ------
    ValueError
        When the content is not a valid manifest (pydantic's message).
    """
    lines = [f"# {line}" for line in comments]

    def section(prefix: str, table: Mapping[str, Any]) -> None:
        plain = [(k, v) for k, v in table.items() if not _is_table(v)]
        nested = [(k, v) for k, v in table.items() if _is_table(v)]
        if prefix:
            lines.extend(["", f"[{prefix}]"])
        lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in plain)
        for key, value in nested:
            section(f"{prefix}.{key}" if prefix else key, value)

    section("", data)
    text = "\n".join(lines) + "\n"
    ManifestSpec.model_validate(tomllib.loads(text))
    return text


# -- network builders ---------------------------------------------------------------------


def _units(count: int, width: float) -> int:
    """Scale a layer's filters or units by ``width`` (at least 4)."""
    return max(4, round(count * width))


def _small_cnn(
    name: str,
    shape: tuple[int, int, int],
    filters: Sequence[int],
    dense: int,
    dropout: float,
    out_name: str,
    width: float,
) -> BuiltModel:
    """Conv-ReLU-MaxPool blocks, Flatten, Dense, optional Dropout, one sigmoid unit.

    "same" padding keeps every block valid at the reduced sizes tests use; the apps'
    tutorials used "valid", which only trims a pixel border per block.
    """
    import keras
    from keras import layers

    inputs = keras.Input(shape, name="image")
    x = inputs
    for i, count in enumerate(filters, start=1):
        x = layers.Conv2D(
            _units(count, width), 3, padding="same", activation="relu", name=f"conv{i}"
        )(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(_units(dense, width), activation="relu", name="dense")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(1, activation="sigmoid", name=out_name)(x)
    return BuiltModel(keras.Model(inputs, outputs, name=name), False, ())


def _bone(
    shape: tuple[int, int, int], width: float, _depth: float, _weights: Path | None
) -> BuiltModel:
    return _small_cnn("bone_xray_cnn", shape, (32, 64, 128, 128), 128, 0.5, "p_cancer", width)


def _lung_ct(
    shape: tuple[int, int, int], width: float, _depth: float, _weights: Path | None
) -> BuiltModel:
    return _small_cnn("lung_ct_cnn", shape, (32, 32), 128, 0.0, "p_normal", width)


def _brain(
    shape: tuple[int, int, int], width: float, _depth: float, _weights: Path | None
) -> BuiltModel:
    return _small_cnn("brain_mri_cnn", shape, (32, 64, 128), 128, 0.5, "p_tumor", width)


def _blocks(counts: Sequence[int], depth: float) -> list[int]:
    """Scale blocks (or convolutions) per stage by ``depth``, keeping one at least."""
    return [max(1, round(n * depth)) for n in counts]


def resnet50_base(shape: tuple[int, int, int], width: float = 1.0, depth: float = 1.0) -> Any:
    """ResNet50 v1 without its top, layer for layer as ``keras.applications.ResNet50``.

    Same layer names and order, so ImageNet weights copy over by name; ``width``
    scales every stage's filters and ``depth`` its number of blocks (tests train a
    1/8-width, one-block-per-stage version in seconds).
    """
    import keras
    from keras import layers

    eps = 1.001e-5

    def block(x: Any, filters: int, stride: int, shortcut: bool, name: str) -> Any:
        if shortcut:
            short = layers.Conv2D(4 * filters, 1, strides=stride, name=f"{name}_0_conv")(x)
            short = layers.BatchNormalization(axis=3, epsilon=eps, name=f"{name}_0_bn")(short)
        else:
            short = x
        x = layers.Conv2D(filters, 1, strides=stride, name=f"{name}_1_conv")(x)
        x = layers.BatchNormalization(axis=3, epsilon=eps, name=f"{name}_1_bn")(x)
        x = layers.Activation("relu", name=f"{name}_1_relu")(x)
        x = layers.Conv2D(filters, 3, padding="same", name=f"{name}_2_conv")(x)
        x = layers.BatchNormalization(axis=3, epsilon=eps, name=f"{name}_2_bn")(x)
        x = layers.Activation("relu", name=f"{name}_2_relu")(x)
        x = layers.Conv2D(4 * filters, 1, name=f"{name}_3_conv")(x)
        x = layers.BatchNormalization(axis=3, epsilon=eps, name=f"{name}_3_bn")(x)
        x = layers.Add(name=f"{name}_add")([short, x])
        return layers.Activation("relu", name=f"{name}_out")(x)

    inputs = keras.Input(shape)
    x = layers.ZeroPadding2D(((3, 3), (3, 3)), name="conv1_pad")(inputs)
    x = layers.Conv2D(_units(64, width), 7, strides=2, name="conv1_conv")(x)
    x = layers.BatchNormalization(axis=3, epsilon=eps, name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.ZeroPadding2D(((1, 1), (1, 1)), name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    stages = zip((64, 128, 256, 512), _blocks((3, 4, 6, 3), depth), (1, 2, 2, 2), strict=True)
    for stage, (filters, blocks, stride) in enumerate(stages, start=2):
        for i in range(1, blocks + 1):
            x = block(
                x,
                _units(filters, width),
                stride if i == 1 else 1,
                i == 1,
                f"conv{stage}_block{i}",
            )
    return keras.Model(inputs, x, name="resnet50")


def vgg16_base(shape: tuple[int, int, int], width: float = 1.0, depth: float = 1.0) -> Any:
    """VGG16 without its top, layer for layer as ``keras.applications.VGG16``.

    ``width`` scales the filters, ``depth`` the convolutions per block.
    """
    import keras
    from keras import layers

    inputs = keras.Input(shape)
    x = inputs
    blocks = zip((64, 128, 256, 512, 512), _blocks((2, 2, 3, 3, 3), depth), strict=True)
    for number, (filters, convs) in enumerate(blocks, start=1):
        for i in range(1, convs + 1):
            x = layers.Conv2D(
                _units(filters, width),
                3,
                padding="same",
                activation="relu",
                name=f"block{number}_conv{i}",
            )(x)
        x = layers.MaxPooling2D(2, strides=2, name=f"block{number}_pool")(x)
    return keras.Model(inputs, x, name="vgg16")


def _load_imagenet(base: Any, reference: Any) -> None:
    """Copy ImageNet weights from a ``keras.applications`` base into ours, by layer name."""
    missing = []
    for layer in base.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        try:
            source = reference.get_layer(layer.name)
        except ValueError:
            missing.append(layer.name)
            continue
        layer.set_weights(source.get_weights())
    if missing:
        raise ValueError(f"ImageNet weights lack layers {missing[:5]}")


def _transfer(
    name: str,
    base_fn: Callable[[tuple[int, int, int], float, float], Any],
    reference_fn: Callable[..., Any],
    shape: tuple[int, int, int],
    width: float,
    depth: float,
    imagenet_weights: Path | None,
    dense: int,
    classes: int,
) -> BuiltModel:
    """Base nested as one layer, then GlobalAveragePooling, Dense, Dropout, softmax.

    The base is a nested model as in the apps (``Sequential([base, ...])``), so
    freezing is one switch and Grad-CAM finds the base's last map ("auto").
    """
    import keras
    from keras import layers

    base = base_fn(shape, width, depth)
    notes: list[str] = []
    if imagenet_weights is not None:
        reference = reference_fn(
            include_top=False, weights=str(imagenet_weights), input_shape=shape
        )
        _load_imagenet(base, reference)
        base.trainable = False
        notes.append(
            f"The {base.name} base has ImageNet weights from {Path(imagenet_weights).name} "
            "and is frozen, as in the original app."
        )
    else:
        notes.append(
            f"No ImageNet weights were given: the {base.name} base is trained from "
            "scratch (the original app froze an ImageNet base); expect to need far "
            "more images for the same accuracy."
        )
    inputs = keras.Input(shape, name="image")
    # training=False: a frozen base's BatchNorm layers keep their ImageNet statistics.
    x = base(inputs, training=False) if imagenet_weights is not None else base(inputs)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dense(_units(dense, width), activation="relu", name="dense")(x)
    x = layers.Dropout(0.5, name="dropout")(x)
    outputs = layers.Dense(classes, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name=name)
    return BuiltModel(model, imagenet_weights is not None, tuple(notes))


def _lung_resnet(
    shape: tuple[int, int, int], width: float, depth: float, weights: Path | None
) -> BuiltModel:
    import keras

    return _transfer(
        "lung_ct_resnet50",
        resnet50_base,
        keras.applications.ResNet50,
        shape,
        width,
        depth,
        weights,
        256,
        3,
    )


def _breast_vgg(
    shape: tuple[int, int, int], width: float, depth: float, weights: Path | None
) -> BuiltModel:
    import keras

    return _transfer(
        "breast_vgg16", vgg16_base, keras.applications.VGG16, shape, width, depth, weights, 256, 2
    )


_SINGLE = {"sampling": "all", "aggregation": "max", "batch_size": 8}
_VOLUME = {
    "sampling": "uniform",
    "max_images": 64,
    "batch_size": 16,
    "aggregation": "top_k_mean",
    "top_k": 3,
}

ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture(
            name="bone-xray-cnn",
            title="Bone X-ray cancer (CNN)",
            summary="CNN classifying a bone radiograph as normal or cancer (the original app "
            "reported about 91% accuracy and ROC AUC 0.97 on its own data).",
            input_size=224,
            preprocessing="scale",
            classes=("normal", "cancer"),
            activation="sigmoid",
            unit_class="cancer",
            positive_classes=("cancer",),
            finding_type=CANCER,
            finding_site=BONE,
            probability=PROBABILITY_OF_CANCER,
            class_concepts={"normal": NORMAL, "cancer": MALIGNANT},
            builder=_bone,
            series=_SINGLE,
            aliases={"malignant": "cancer", "tumor": "cancer", "tumour": "cancer"},
            notes=(
                "224 x 224 RGB, x / 255; 4 conv blocks (32-64-128-128), Flatten, Dense 128,",
                "Dropout 0.5, one sigmoid unit = P(cancer). Any view positive -> study positive.",
            ),
        ),
        Architecture(
            name="lung-ct-resnet50",
            title="Lung CT normal / benign / malignant (ResNet50)",
            summary="ResNet50 transfer-learning classifier of lung CT images (IQ-OTHNCCD "
            "style): normal, benign or malignant.",
            input_size=224,
            preprocessing="caffe",
            classes=("normal", "benign", "malignant"),
            activation="softmax",
            unit_class=None,
            positive_classes=("malignant",),
            finding_type=CANCER,
            finding_site=LUNG,
            probability=PROBABILITY_OF_CANCER,
            class_concepts={"normal": NORMAL, "benign": BENIGN, "malignant": MALIGNANT},
            builder=_lung_resnet,
            window={"CT": "lung"},
            series=_VOLUME,
            aliases={"bengin": "benign"},
            transfer=True,
            notes=(
                "224 x 224 RGB, keras.applications 'caffe' preprocessing (BGR minus ImageNet",
                "means); ResNet50 base (frozen with ImageNet weights), GlobalAveragePooling,",
                "Dense 256, Dropout 0.5, softmax [normal, benign, malignant]. CT in lung window.",
                "The finding is 'malignant'; an app trained with flow_from_directory on the",
                "IQ-OTHNCCD folders has the order [benign, malignant, normal]: import with",
                "--classes benign,malignant,normal. An app that fed x / 255 instead of",
                "preprocess_input: import with --preprocessing scale.",
            ),
        ),
        Architecture(
            name="lung-ct-cnn",
            title="Lung CT cancer (small CNN)",
            summary="Small CNN classifying one lung CT image as cancer or normal; its single "
            "sigmoid output is P(normal), so below 0.5 means cancer.",
            input_size=64,
            preprocessing="scale",
            classes=("cancer", "normal"),
            activation="sigmoid",
            unit_class="normal",
            positive_classes=("cancer",),
            finding_type=CANCER,
            finding_site=LUNG,
            probability=PROBABILITY_OF_CANCER,
            class_concepts={"cancer": MALIGNANT, "normal": NORMAL},
            builder=_lung_ct,
            window={"CT": "lung"},
            series=_VOLUME,
            aliases={"malignant": "cancer"},
            notes=(
                "64 x 64 RGB, x / 255; Conv 32 - pool - Conv 32 - pool, Flatten, Dense 128,",
                "one sigmoid unit = P(normal) (classes sorted as flow_from_directory does:",
                "cancer 0, normal 1), so unit_class = 'normal'. CT in lung window.",
            ),
        ),
        Architecture(
            name="breast-vgg16",
            title="Breast benign / malignant (VGG16)",
            summary="VGG16 transfer-learning classifier of breast images: benign or "
            "malignant (the original app reported about 96% accuracy on its own data).",
            input_size=224,
            preprocessing="caffe",
            classes=("benign", "malignant"),
            activation="softmax",
            unit_class=None,
            positive_classes=("malignant",),
            finding_type=CANCER,
            finding_site=BREAST,
            probability=PROBABILITY_OF_CANCER,
            class_concepts={"benign": BENIGN, "malignant": MALIGNANT},
            builder=_breast_vgg,
            series=_SINGLE,
            transfer=True,
            notes=(
                "224 x 224 RGB, 'caffe' preprocessing; VGG16 base (frozen with ImageNet",
                "weights), GlobalAveragePooling, Dense 256, Dropout 0.5, softmax",
                "[benign, malignant]. Any view positive -> study positive. The images it is",
                "served must be of the kind it was trained on (mammograms on the MG route).",
                "An app that fed x / 255 instead of preprocess_input: import with",
                "--preprocessing scale.",
            ),
        ),
        Architecture(
            name="brain-mri-cnn",
            title="Brain MRI tumor / no tumor (CNN)",
            summary="CNN of 3 convolutional layers and a dense layer classifying one brain MR "
            "slice as tumor or no tumor, explained with Grad-CAM.",
            input_size=150,
            preprocessing="scale",
            classes=("no_tumor", "tumor"),
            activation="sigmoid",
            unit_class="tumor",
            positive_classes=("tumor",),
            finding_type=NEOPLASM,
            finding_site=BRAIN,
            probability=PROBABILITY,
            class_concepts={"no_tumor": NORMAL, "tumor": NEOPLASM},
            builder=_brain,
            series=_VOLUME,
            aliases={"no": "no_tumor", "notumor": "no_tumor", "yes": "tumor", "tumour": "tumor"},
            notes=(
                "150 x 150 RGB, x / 255; Conv 32-64-128 with pooling, Flatten, Dense 128,",
                "Dropout 0.5, one sigmoid unit = P(tumor) (folders 'no' / 'yes' sort that way).",
            ),
        ),
    )
}


def get_architecture(name: str) -> Architecture:
    """Return the architecture called ``name``.

    Raises
    ------
    KeyError
        With the known names in the message.
    """
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}") from None


# -- import of existing model files -------------------------------------------------------


@dataclass(frozen=True)
class ImportResult:
    """What :func:`import_keras_file` wrote and decided."""

    package_dir: Path
    manifest_path: Path
    weights_path: Path
    sha256: str
    notes: tuple[str, ...]


@dataclass(frozen=True)
class KerasFileInfo:
    """Shape facts read from a Keras model file."""

    height: int
    width: int
    channels: int
    units: int
    last_activation: str


def inspect_keras_file(path: Path) -> KerasFileInfo:
    """Load a ``.h5`` / ``.keras`` model (no compile) and read its input and output.

    Raises
    ------
    ValueError
        When the file cannot be loaded or is not a single-image classifier.
    """
    import keras

    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as exc:
        raise ValueError(f"{path}: cannot load as a Keras model: {exc}") from exc
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"{path}: only single-input, single-output models can be served")
    shape = tuple(model.inputs[0].shape[1:])
    if len(shape) != 3 or shape[-1] not in (1, 3) or None in shape:
        raise ValueError(f"{path}: input shape {shape} is not (height, width, 1 or 3)")
    out = [d for d in model.outputs[0].shape[1:] if d is not None]
    units = math.prod(out) if out else 1
    return KerasFileInfo(
        int(shape[0]), int(shape[1]), int(shape[2]), int(units), _last_activation(model)
    )


def _last_activation(model: Any) -> str:
    """Name of the activation of the layer that makes the output ("linear" if none)."""
    import keras

    layer = model.layers[-1]
    while isinstance(layer, keras.Model):  # a nested model as the last layer
        layer = layer.layers[-1]
    kind = type(layer).__name__
    if kind == "Softmax":
        return "softmax"
    config = layer.get_config()
    activation = config.get("activation", "linear")
    if isinstance(activation, Mapping):  # serialised object: {"config": {"name": ...}}
        activation = activation.get("config", {}).get("name", "linear")
    return str(activation)


def import_keras_file(
    source: Path,
    arch: Architecture,
    model_id: str,
    models_dir: Path,
    *,
    classes: Sequence[str] | None = None,
    unit_class: str | None = None,
    preprocessing: PreprocessMode | None = None,
    resize: Resize = "nearest",
    force: bool = False,
    check: bool = True,
) -> ImportResult:
    """Turn an app's model file into a package ``models_dir/model_id`` the node serves.

    The file is copied unchanged to ``weights/model<suffix>``; the manifest is the
    architecture's, adapted to what the file holds: its input size and channels, and
    its output (one sigmoid unit, or one unit per class, softmax or linear). The apps
    read images with Keras ``load_img``, which resizes with nearest neighbour, hence
    ``resize = "nearest"``.

    Parameters
    ----------
    source
        The ``.h5`` / ``.hdf5`` (Keras 2) or ``.keras`` file.
    arch
        The app the file comes from.
    model_id
        Package id and folder name.
    models_dir
        Folder of model packages.
    classes
        Output order when it differs from the app's default.
    unit_class
        For a single-unit output: the class it scores, when not the app's default.
    preprocessing
        Value preprocessing when the app differs from the default.
    resize
        Resize filter of the app's image loading.
    force
        Replace an existing package's weights.
    check
        Load the staged package through :func:`inference.registry.load_model` (with
        warm-up and Grad-CAM) before it replaces anything.

    Raises
    ------
    ValueError
        When the file does not fit the preset (class count, channels), the package
        has weights already (without ``force``), or the package does not load.
    """
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", model_id):
        raise ValueError(f"model id {model_id!r}: use lower-case letters, digits, '.', '_', '-'")
    suffix = source.suffix.lower()
    if suffix not in (".h5", ".hdf5", ".keras"):
        raise ValueError(f"{source}: expected a .h5, .hdf5 or .keras file")
    if not source.is_file():
        raise ValueError(f"{source}: no such file")
    info = inspect_keras_file(source)
    labels = list(classes) if classes else list(arch.classes)
    notes: list[str] = []
    if len(labels) != len(arch.classes):
        raise ValueError(f"--classes needs {len(arch.classes)} labels for {arch.name}")
    if set(labels) != set(arch.classes):
        raise ValueError(f"--classes must be an order of {list(arch.classes)}, got {labels}")
    activation: Literal["sigmoid", "softmax", "logits"]
    unit: str | None
    if info.units == 1:
        if len(labels) != 2:
            raise ValueError(f"one output unit cannot score {len(labels)} classes ({labels})")
        # Keras' binary convention: a sigmoid scores class index 1 of the sorted folders.
        unit = unit_class or arch.unit_class or labels[1]
        activation = "sigmoid" if info.last_activation == "sigmoid" else "logits"
        notes.append(f"one output unit, read as P({unit})")
    elif info.units == len(labels):
        if unit_class:
            raise ValueError("--unit-class applies to a single-unit output only")
        unit = None
        activation = {"softmax": "softmax", "sigmoid": "sigmoid"}.get(  # type: ignore[assignment]
            info.last_activation, "logits"
        )
        notes.append(f"{info.units} output units ({activation}) in the order {labels}")
    else:
        raise ValueError(
            f"{source}: the model has {info.units} output units; {arch.name} expects "
            f"{arch.units} (or one per class: {len(labels)})"
        )
    if unit is not None and unit not in labels:
        raise ValueError(f"--unit-class {unit!r} is not one of {labels}")
    mode = preprocessing or arch.preprocessing
    if mode == "caffe" and info.channels != 3:
        raise ValueError("'caffe' preprocessing needs an RGB (3-channel) model")
    if (info.height, info.width) != (arch.input_size, arch.input_size):
        notes.append(
            f"input {info.height} x {info.width} (the app's default was {arch.input_size})"
        )

    target = models_dir / model_id
    manifest_path = target / MANIFEST_NAME
    weights_rel = f"weights/model{'.keras' if suffix == '.keras' else '.h5'}"
    if target.exists() and not force and _has_weights(target):
        raise ValueError(f"{target} already holds weights; use --force to replace them")
    digest = _sha256(source)
    description = (
        f"{arch.summary} Imported from {source.name} (sha256 {digest[:12]}): "
        + "; ".join(notes)
        + "."
    )
    data = arch.manifest(
        model_id=model_id,
        version=f"imported-{digest[:8]}",
        description=description,
        weights=weights_rel,
        input_size=(info.height, info.width),
        channels=3 if info.channels == 3 else 1,
        resize=resize,
        preprocessing=mode,
        classes=labels,
        activation=activation,
        unit_class=unit,
    )
    text = arch.manifest_text(data)

    # Stage the package beside the others (".import-ID/ID": the folder name must equal
    # the id, and load_manifests only looks one level down) and load it as the node
    # will; only a package that loads replaces what is there.
    staging_root = models_dir / f".import-{model_id}"
    shutil.rmtree(staging_root, ignore_errors=True)
    staged = staging_root / model_id
    try:
        (staged / weights_rel).parent.mkdir(parents=True)
        shutil.copyfile(source, staged / weights_rel)
        (staged / MANIFEST_NAME).write_text(text, encoding="utf-8")
        if check:
            from inference.registry import load_model

            try:
                load_model(load_manifest(staged / MANIFEST_NAME))
            except Exception as exc:  # any failure: the package must not be served
                raise ValueError(f"the imported package does not load: {exc}") from exc
        weights_path = target / weights_rel
        weights_path.parent.mkdir(parents=True, exist_ok=True)
        for old in weights_path.parent.glob("model.*"):
            if old != weights_path:
                old.unlink()  # a previous package's weights of another format
        os.replace(staged / weights_rel, weights_path)
        os.replace(staged / MANIFEST_NAME, manifest_path)
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)
    return ImportResult(target, manifest_path, weights_path, digest, tuple(notes))


def _has_weights(folder: Path) -> bool:
    weights = folder / "weights"
    return weights.is_dir() and any(weights.glob("model.*"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
