"""Model package manifests: ``models/<model-id>/model.toml``.

A manifest says everything the node must know to feed a model the pixels it was trained
on and to report what it found: where the weights are, the input geometry and
preprocessing, how the output maps to classes, which class is the finding, the coded
concepts for the SR, how to explain and how to treat series of many images.

Validation is strict (unknown keys are errors: a typo must not silently fall back to a
default) and every error names the file and the key, e.g.
``models/x/model.toml: output.classes: ...``.
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from inference.pixels import Window, WindowChoice
from inference.scope import ScopeSpec
from inference.types import PRIVATE_SCHEME, Concept, ModelInfo

MANIFEST_NAME = "model.toml"

# Named windows in modality units (centre, width); the usual radiology presets.
WINDOW_PRESETS: dict[str, Window] = {
    "brain": Window(40.0, 80.0),
    "subdural": Window(75.0, 215.0),
    "stroke": Window(40.0, 40.0),
    "lung": Window(-600.0, 1500.0),
    "mediastinum": Window(50.0, 350.0),
    "soft-tissue": Window(50.0, 400.0),
    "liver": Window(30.0, 150.0),
    "bone": Window(400.0, 1800.0),
}


class ManifestError(ValueError):
    """A model manifest is missing, unreadable or invalid; the message names file and key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConceptSpec(_Strict):
    """A coded concept as written in the manifest."""

    value: Annotated[str, Field(min_length=1, max_length=16)]  # DICOM SH
    scheme: Annotated[str, Field(min_length=1, max_length=16)]
    meaning: Annotated[str, Field(min_length=1, max_length=64)]  # DICOM LO

    def to_concept(self) -> Concept:
        """Return the plain :class:`inference.types.Concept`."""
        return Concept(self.value, self.scheme, self.meaning)


class WeightsSpec(_Strict):
    """Where the weights are: a file in the model folder, or a resource of a package."""

    format: Literal["keras", "onnx"]
    path: str | None = None
    package: str | None = None
    resource: str | None = None

    @model_validator(mode="after")
    def _one_location(self) -> WeightsSpec:
        in_package = self.package is not None or self.resource is not None
        if self.path is not None and in_package:
            raise ValueError("give either 'path' or 'package' + 'resource', not both")
        if self.path is None and not (self.package and self.resource):
            raise ValueError("give 'path', or both 'package' and 'resource'")
        name = self.path or self.resource or ""
        suffixes = {"keras": (".keras", ".h5", ".hdf5"), "onnx": (".onnx",)}[self.format]
        if not name.endswith(suffixes):
            raise ValueError(f"format {self.format!r} expects a file ending in {suffixes}")
        return self


class InputSpec(_Strict):
    """Input tensor geometry, colour and how images are resized to it."""

    height: Annotated[int, Field(gt=0, le=4096)]
    width: Annotated[int, Field(gt=0, le=4096)]
    channels: Literal[1, 3]
    color: Literal["rgb", "bgr", "grayscale"]
    layout: Literal["nhwc", "nchw"] = "nhwc"
    # The resampling filter the training pipeline used (Keras load_img: nearest; PIL
    # Image.resize: bicubic); a different one shifts probabilities by a few percent.
    resize: Literal["nearest", "bilinear", "bicubic", "lanczos", "box"] = "bilinear"

    @model_validator(mode="after")
    def _colour_matches_channels(self) -> InputSpec:
        if (self.color == "grayscale") != (self.channels == 1):
            raise ValueError("color 'grayscale' needs channels = 1, 'rgb'/'bgr' channels = 3")
        return self


class FixedWindowSpec(_Strict):
    """An explicit VOI window in modality units."""

    center: float
    width: Annotated[float, Field(ge=1.0)]


WindowSetting = Literal["file", "minmax"] | str | FixedWindowSpec


class WindowSpec(_Strict):
    """Which VOI to use, by modality: the file's own, min-max, a preset or a fixed window."""

    default: WindowSetting = "file"
    modality: dict[str, WindowSetting] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_presets(self) -> WindowSpec:
        for where, setting in [("default", self.default), *self.modality.items()]:
            if isinstance(setting, str) and setting not in ("file", "minmax", *WINDOW_PRESETS):
                raise ValueError(
                    f"{where}: unknown window {setting!r}; use 'file', 'minmax', "
                    f"one of {sorted(WINDOW_PRESETS)} or {{ center = ..., width = ... }}"
                )
        return self

    def for_modality(self, modality: str | None) -> WindowChoice:
        """Return the window to use for images of ``modality``."""
        setting = self.modality.get(modality or "", self.default)
        if isinstance(setting, FixedWindowSpec):
            return Window(setting.center, setting.width)
        if setting in WINDOW_PRESETS:
            return WINDOW_PRESETS[setting]
        return "minmax" if setting == "minmax" else "file"


class PreprocessSpec(_Strict):
    """From a display image (0..255 levels) to the model's input values.

    ``mode``: "scale" gives ``x * scale + offset`` (1/255 by default); "tf" is
    x/127.5 - 1 (Xception, Inception, MobileNet); "caffe" is BGR minus the ImageNet means
    (VGG, ResNet50 in keras.applications); "torch" is x/255 normalised by the ImageNet
    mean and standard deviation (DenseNet, EfficientNetV2 "torch" variants).
    """

    mode: Literal["scale", "tf", "caffe", "torch"] = "scale"
    scale: float = 1.0 / 255.0
    offset: float = 0.0
    window: WindowSpec = Field(default_factory=WindowSpec)

    @model_validator(mode="after")
    def _scale_only_for_scale_mode(self) -> PreprocessSpec:
        if self.mode != "scale" and (self.scale != 1.0 / 255.0 or self.offset != 0.0):
            raise ValueError(f"'scale' and 'offset' apply to mode 'scale', not {self.mode!r}")
        return self


class OutputSpec(_Strict):
    """How the raw model output becomes class probabilities and a decision.

    ``activation`` says what the last layer gives: "softmax" probabilities, "sigmoid"
    probabilities, or raw "logits" (the runtime applies softmax, or sigmoid for a single
    unit). A single-unit output names the class it scores in ``unit_class``: a sigmoid
    where "below 0.5 means cancer" is ``classes = ["benign", "malignant"]``,
    ``unit_class = "benign"``. ``positive_classes`` are the findings; the positive
    probability is their sum, and the series is positive when it reaches ``threshold``.
    """

    activation: Literal["softmax", "sigmoid", "logits"]
    classes: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=64)]], Field(min_length=1)
    ]
    positive_classes: list[str] = Field(default_factory=list)
    unit_class: str | None = None
    threshold: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5

    @model_validator(mode="after")
    def _consistent(self) -> OutputSpec:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("classes must be unique")
        unknown = [c for c in self.positive_classes if c not in self.classes]
        if unknown:
            raise ValueError(f"positive_classes {unknown} are not in classes {self.classes}")
        if len(self.positive_classes) >= len(self.classes) and len(self.classes) > 1:
            raise ValueError("positive_classes must leave at least one negative class")
        if self.unit_class is not None:
            if len(self.classes) != 2:
                raise ValueError("unit_class (a single-unit output) needs exactly two classes")
            if self.unit_class not in self.classes:
                raise ValueError(f"unit_class {self.unit_class!r} is not in classes")
            if self.activation == "softmax":
                raise ValueError("a single unit cannot be a softmax; use sigmoid or logits")
        elif len(self.classes) == 1:
            raise ValueError("a single class needs unit_class (a one-unit sigmoid output)")
        return self

    @property
    def units(self) -> int:
        """Number of output units the model must have."""
        return 1 if self.unit_class is not None else len(self.classes)


class ConceptsSpec(_Strict):
    """Coded concepts for the SR (see ``inference.types.ModelInfo``)."""

    finding_type: ConceptSpec
    finding_site: ConceptSpec | None = None
    probability: ConceptSpec = ConceptSpec(value="122157", scheme="DCM", meaning="Probability")
    classes: dict[str, ConceptSpec] = Field(default_factory=dict)


class ExplainSpec(_Strict):
    """How heatmaps are made.

    ``method`` "auto" is Grad-CAM for Keras and occlusion for ONNX. ``layer`` is the
    feature map for Grad-CAM: "auto" (the last convolutional map, searched inside nested
    models too) or a path such as "xception/block14_sepconv2_act". ``target`` is the
    class explained: the positive finding, or each image's predicted class.

    ``floor`` is the fraction of the map's peak below which the overlay leaves the image
    uncoloured: a faint map value is noise, and tinting the whole film would make every
    region look like evidence. Above it the colour's opacity grows linearly up to
    ``alpha`` at the peak.
    """

    method: Literal["auto", "grad-cam", "occlusion", "none"] = "auto"
    layer: str = "auto"
    target: Literal["positive", "predicted"] = "positive"
    occlusion_grid: Annotated[int, Field(ge=2, le=32)] = 7
    occlusion_patch: Annotated[float, Field(gt=0.0, le=1.0)] = 0.25
    colormap: Literal["inferno", "viridis"] = "inferno"
    alpha: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    floor: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.2


class SeriesSpec(_Strict):
    """How a series of many images (slices or frames) is sampled and decided.

    ``sampling``: "all" images, "uniform" (at most ``max_images``, evenly spaced in
    slice order) or "middle" (the one central image). ``aggregation`` of the images'
    class probabilities: "mean", "max" (the most positive image) or "top_k_mean" (the
    mean of the ``top_k`` most positive images, a common rule for a finding that shows
    on a few slices only).
    """

    sampling: Literal["all", "uniform", "middle"] = "all"
    max_images: Annotated[int, Field(ge=1)] = 300
    batch_size: Annotated[int, Field(ge=1, le=1024)] = 16
    aggregation: Literal["mean", "max", "top_k_mean"] = "mean"
    top_k: Annotated[int, Field(ge=1)] = 3


class ManifestSpec(_Strict):
    """The whole ``model.toml``."""

    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
    name: Annotated[str, Field(min_length=1, max_length=64)]
    version: Annotated[str, Field(min_length=1, max_length=64)]
    description: str
    intended_use: str
    weights: WeightsSpec
    input: InputSpec
    preprocessing: PreprocessSpec = Field(default_factory=PreprocessSpec)
    output: OutputSpec
    concepts: ConceptsSpec
    explain: ExplainSpec = Field(default_factory=ExplainSpec)
    series: SeriesSpec = Field(default_factory=SeriesSpec)
    scope: ScopeSpec = Field(default_factory=ScopeSpec)

    @model_validator(mode="after")
    def _class_concepts_known(self) -> ManifestSpec:
        unknown = [c for c in self.concepts.classes if c not in self.output.classes]
        if unknown:
            raise ValueError(f"concepts.classes: {unknown} are not in output.classes")
        if self.preprocessing.mode == "caffe" and self.input.color != "rgb":
            # Keras "caffe" mode flips RGB to BGR itself: declare the input as rgb.
            raise ValueError("preprocessing.mode 'caffe' needs input.color = 'rgb'")
        return self


class ModelManifest:
    """A validated manifest and the folder it came from.

    Parameters
    ----------
    spec
        The validated content.
    path
        The ``model.toml`` file; relative weight paths are resolved from its folder.
    """

    def __init__(self, spec: ManifestSpec, path: Path) -> None:
        self.spec = spec
        self.path = path
        self.info = _model_info(spec)

    @property
    def id(self) -> str:
        """The model id (also the folder name)."""
        return self.spec.id

    @property
    def version(self) -> str:
        """The model version, reported in the SR's algorithm identification."""
        return self.spec.version

    def __repr__(self) -> str:
        return f"ModelManifest(id={self.id!r}, version={self.version!r}, path={self.path})"

    def weights_path(self) -> Path | None:
        """Return where the weights file should be, or None if its package is absent.

        Package resources are located through the package's import spec, without
        executing the package: model packages often import heavy or missing training
        dependencies at import time (the pneumonia package needs ``strictyaml``), and
        ``importlib.resources.files`` would import them.
        """
        weights = self.spec.weights
        if weights.path is not None:
            return (self.path.parent / weights.path).resolve()
        assert weights.package is not None and weights.resource is not None
        top, *sub = weights.package.split(".")
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            return None
        if spec is None or not spec.submodule_search_locations:
            return None
        root = Path(next(iter(spec.submodule_search_locations)))
        return root.joinpath(*sub, *weights.resource.split("/"))

    def missing_weights_reason(self) -> str | None:
        """Say why the weights cannot be loaded, or None when the file is there."""
        weights = self.spec.weights
        path = self.weights_path()
        if path is None:
            return f"Python package {weights.package!r} is not installed"
        if not path.is_file():
            return f"weights file {path} does not exist"
        return None

    def weights_available(self) -> bool:
        """Tell whether the weights file exists."""
        return self.missing_weights_reason() is None


def load_manifest(path: Path) -> ModelManifest:
    """Read and validate one ``model.toml``.

    Parameters
    ----------
    path
        The manifest file; its folder name must equal its ``id``.

    Raises
    ------
    ManifestError
        With ``"<path>: <key>: <problem>"`` messages, one line per problem.
    """
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not valid TOML: {exc}") from exc
    try:
        spec = ManifestSpec.model_validate(raw)
    except ValidationError as exc:
        raise ManifestError(_describe(path, exc)) from exc
    if spec.id != path.parent.name:
        raise ManifestError(f"{path}: id: {spec.id!r} must equal its folder {path.parent.name!r}")
    return ModelManifest(spec, path)


def _describe(path: Path, exc: ValidationError) -> str:
    """Turn pydantic's errors into ``file: dotted.key: message`` lines."""
    lines = []
    for error in exc.errors(include_url=False):
        # Drop pydantic's union-branch names (e.g. "literal['file','minmax']") from paths.
        parts = [
            str(p) for p in error["loc"] if not re.match(r"^(literal|function|str|int)\[", str(p))
        ]
        key = ".".join(parts) or "(top level)"
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"{path}: {key}: {message}")
    return "\n".join(dict.fromkeys(lines))


def _private_concept(label: str) -> Concept:
    """A code in the node's private scheme for a class without a standard code."""
    value = re.sub(r"[^A-Z0-9]+", "-", label.upper()).strip("-")[:16] or "CLASS"
    return Concept(value, PRIVATE_SCHEME, label[:64])


def _model_info(spec: ManifestSpec) -> ModelInfo:
    """Build the ModelInfo the result builders read."""
    output, concepts = spec.output, spec.concepts
    class_concepts = {
        label: concepts.classes[label].to_concept()
        if label in concepts.classes
        else _private_concept(label)
        for label in output.classes
    }
    positives = tuple(output.positive_classes)
    return ModelInfo(
        id=spec.id,
        name=spec.name,
        version=spec.version,
        description=spec.description,
        intended_use=spec.intended_use,
        classes=tuple(output.classes),
        positive_class=positives[0] if len(positives) == 1 else None,
        class_concepts=class_concepts,
        finding_type=concepts.finding_type.to_concept(),
        finding_site=concepts.finding_site.to_concept() if concepts.finding_site else None,
        probability_concept=concepts.probability.to_concept(),
        positive_classes=positives,
        threshold=output.threshold,
        scope=spec.scope.describe(),
    )
