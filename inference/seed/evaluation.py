"""Evaluation of a classifier on held-out images: metrics, plots and a report.

Metrics are computed with numpy from what the node would decide: the predicted class
comes from :func:`inference.aggregate.decide` (positive classes and threshold from the
manifest), not from a plain argmax, so the report describes the served behaviour. The
ROC curve of a two-class model scores the positive class; three or more classes get one
curve per class, one-vs-rest, and their macro-average AUC. The plots are drawn with
Pillow, so evaluation needs no plotting library.

The report (``metrics.json``) keeps every test image's true class, decision and
probabilities, so anyone can recompute the numbers with another tool.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from inference import aggregate

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ClassMetrics:
    """Precision, recall, F1 and support of one class (0 where undefined, as sklearn)."""

    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class RocCurve:
    """One ROC curve: false and true positive rates at each distinct score threshold.

    ``auc`` is None when the test set has no positive or no negative image for it.
    """

    fpr: list[float]
    tpr: list[float]
    thresholds: list[float]
    auc: float | None


@dataclass(frozen=True)
class Evaluation:
    """All test-set metrics of one model."""

    classes: list[str]
    positive_classes: list[str]
    threshold: float
    count: int
    accuracy: float
    per_class: dict[str, ClassMetrics]
    macro_f1: float
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    roc: dict[str, RocCurve]  # "<positive>" for two classes, else one per class
    auc: float | None  # the positive ROC's AUC, or the macro average one-vs-rest
    y_true: list[int]
    y_pred: list[int]
    probabilities: list[list[float]]
    names: list[str]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (curves and predictions included)."""
        return asdict(self)


def decisions(
    probabilities: npt.NDArray[np.floating[Any]],
    classes: Sequence[str],
    positive_classes: Sequence[str],
    threshold: float,
) -> npt.NDArray[np.int64]:
    """The class index the node reports for each row of probabilities."""
    positive = [list(classes).index(c) for c in positive_classes]
    return np.array(
        [
            list(classes).index(aggregate.decide(row, classes, positive, threshold)[0])
            for row in np.asarray(probabilities, dtype=np.float32)
        ],
        dtype=np.int64,
    )


def confusion_matrix(
    y_true: Sequence[int] | npt.NDArray[np.int64],
    y_pred: Sequence[int] | npt.NDArray[np.int64],
    n: int,
) -> npt.NDArray[np.int64]:
    """Counts of (true, predicted) pairs, shape (n, n)."""
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return matrix


def roc_curve(positive: npt.NDArray[np.bool_], scores: Array) -> RocCurve:
    """ROC of ``scores`` for the binary truth ``positive`` (tied scores share a point).

    The curve starts at (0, 0) with threshold +inf; each distinct score, highest
    first, adds a point; the AUC is the trapezoidal area, which equals the probability
    that a random positive outscores a random negative (ties counting one half).
    """
    truth = np.asarray(positive, dtype=bool)
    score = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-score, kind="mergesort")
    score, truth = score[order], truth[order]
    last = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1] if len(score) else np.array([])
    last = last.astype(np.int64)
    tps = np.cumsum(truth)[last] if len(score) else np.array([0])
    fps = last + 1 - tps
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    tpr = np.r_[0.0, tps / n_pos] if n_pos else np.zeros(len(tps) + 1)
    fpr = np.r_[0.0, fps / n_neg] if n_neg else np.zeros(len(fps) + 1)
    thresholds = np.r_[np.inf, score[last]] if len(score) else np.array([np.inf])
    auc = float(np.trapezoid(tpr, fpr)) if n_pos and n_neg else None
    return RocCurve(fpr.tolist(), tpr.tolist(), thresholds.tolist(), auc)


def evaluate(
    y_true: Sequence[int] | npt.NDArray[np.int64],
    probabilities: npt.NDArray[np.floating[Any]],
    classes: Sequence[str],
    positive_classes: Sequence[str],
    threshold: float = 0.5,
    names: Sequence[str] | None = None,
) -> Evaluation:
    """Compute every metric from true labels and predicted class probabilities.

    Parameters
    ----------
    y_true
        True class index per image.
    probabilities
        (N, n_classes) probabilities in class order, as the runtime gives them.
    classes, positive_classes, threshold
        From the manifest; they decide each image as the node would.
    names
        Image names for the report (file paths).
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    truth = np.asarray(y_true, dtype=np.int64)
    n = len(classes)
    if probs.ndim != 2 or probs.shape != (len(truth), n):
        raise ValueError(f"probabilities must be ({len(truth)}, {n}), got {probs.shape}")
    pred = decisions(probs, classes, positive_classes, threshold)
    matrix = confusion_matrix(truth, pred, n)
    per_class: dict[str, ClassMetrics] = {}
    for i, label in enumerate(classes):
        tp = int(matrix[i, i])
        predicted, actual = int(matrix[:, i].sum()), int(matrix[i, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = ClassMetrics(precision, recall, f1, actual)
    roc: dict[str, RocCurve] = {}
    if n == 2 and positive_classes:
        index = [list(classes).index(c) for c in positive_classes]
        label = "+".join(positive_classes)
        roc[label] = roc_curve(np.isin(truth, index), probs[:, index].sum(axis=1))
        auc = roc[label].auc
    else:
        for i, label in enumerate(classes):
            roc[label] = roc_curve(truth == i, probs[:, i])
        aucs = [c.auc for c in roc.values() if c.auc is not None]
        auc = float(np.mean(aucs)) if len(aucs) == n else None
    return Evaluation(
        classes=list(classes),
        positive_classes=list(positive_classes),
        threshold=threshold,
        count=len(truth),
        accuracy=float((pred == truth).mean()) if len(truth) else 0.0,
        per_class=per_class,
        macro_f1=float(np.mean([m.f1 for m in per_class.values()])),
        confusion=matrix.tolist(),
        roc=roc,
        auc=auc,
        y_true=truth.tolist(),
        y_pred=pred.tolist(),
        probabilities=probs.tolist(),
        names=list(names) if names is not None else [str(i) for i in range(len(truth))],
    )


# -- plots --------------------------------------------------------------------------------

_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _centre_text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, **kw: Any) -> None:
    draw.text(xy, text, anchor="mm", **kw)


def plot_confusion(evaluation: Evaluation, path: Path) -> None:
    """Confusion matrix as a blue heat map with counts and row percentages."""
    n = len(evaluation.classes)
    cell, left, top = 110, 150, 70
    image = Image.new("RGB", (left + n * cell + 30, top + n * cell + 90), "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(15), _font(12)
    matrix = np.asarray(evaluation.confusion, dtype=np.float64)
    peak = max(matrix.max(), 1.0)
    _centre_text(
        draw, (image.width / 2, 22), "Confusion matrix (test set)", fill="black", font=font
    )
    for i in range(n):
        row_total = max(matrix[i].sum(), 1.0)
        for j in range(n):
            value = matrix[i, j]
            shade = value / peak
            colour = tuple(int(255 - shade * (255 - c)) for c in (8, 48, 107))
            box = (left + j * cell, top + i * cell, left + (j + 1) * cell, top + (i + 1) * cell)
            draw.rectangle(box, fill=colour, outline="grey")
            ink = "white" if shade > 0.5 else "black"
            centre = (box[0] + cell / 2, box[1] + cell / 2)
            _centre_text(draw, (centre[0], centre[1] - 9), f"{int(value)}", fill=ink, font=font)
            _centre_text(
                draw, (centre[0], centre[1] + 11), f"{value / row_total:.0%}", fill=ink, font=small
            )
    for k, label in enumerate(evaluation.classes):
        _centre_text(draw, (left - 70, top + k * cell + cell / 2), label, fill="black", font=small)
        _centre_text(
            draw, (left + k * cell + cell / 2, top + n * cell + 18), label, fill="black", font=small
        )
    _centre_text(
        draw, (left + n * cell / 2, top + n * cell + 50), "predicted", fill="black", font=font
    )
    draw.text((10, top - 25), "true", fill="black", font=font)
    image.save(path)


def _axes(
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    x_ticks: Sequence[float],
    y_ticks: Sequence[float],
    x_label: str,
    y_label: str,
) -> None:
    """Frame, ticks and tick labels of a plot area (ticks span the axes linearly)."""
    font = _font(12)
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline="black")
    for ticks, vertical in ((x_ticks, False), (y_ticks, True)):
        low, high = ticks[0], ticks[-1]
        span = (high - low) or 1.0
        for value in ticks:
            share = (value - low) / span
            label = f"{value:.3g}"
            if vertical:
                fy = y1 - (y1 - y0) * share
                draw.line([(x0 - 5, fy), (x0, fy)], fill="black")
                draw.text((x0 - 8, fy), label, fill="black", font=font, anchor="rm")
            else:
                fx = x0 + (x1 - x0) * share
                draw.line([(fx, y1), (fx, y1 + 5)], fill="black")
                _centre_text(draw, (fx, y1 + 15), label, fill="black", font=font)
    _centre_text(draw, ((x0 + x1) / 2, y1 + 35), x_label, fill="black", font=_font(14))
    draw.text((8, y0 - 22), y_label, fill="black", font=_font(14))


def plot_roc(evaluation: Evaluation, path: Path) -> None:
    """ROC curve(s) with the chance diagonal and AUCs in the legend."""
    image = Image.new("RGB", (620, 560), "white")
    draw = ImageDraw.Draw(image)
    box = (70, 50, 590, 490)
    x0, y0, x1, y1 = box
    _centre_text(draw, (330, 20), "ROC curve (test set)", fill="black", font=_font(16))
    tenths = [k / 5 for k in range(6)]
    _axes(draw, box, tenths, tenths, "false positive rate", "true positive rate")
    draw.line([(x0, y1), (x1, y0)], fill=(170, 170, 170), width=1)

    def point(fpr: float, tpr: float) -> tuple[float, float]:
        return x0 + fpr * (x1 - x0), y1 - tpr * (y1 - y0)

    for k, (label, curve) in enumerate(evaluation.roc.items()):
        colour = _COLOURS[k % len(_COLOURS)]
        points = [point(f, t) for f, t in zip(curve.fpr, curve.tpr, strict=True)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=3)
        auc = "n/a" if curve.auc is None else f"{curve.auc:.3f}"
        name = f"{label} vs rest" if len(evaluation.roc) > 1 else label
        ly = y1 - 25 - 20 * (len(evaluation.roc) - 1 - k)
        draw.line([(x1 - 220, ly), (x1 - 195, ly)], fill=colour, width=3)
        draw.text((x1 - 188, ly), f"{name}: AUC {auc}", fill="black", font=_font(13), anchor="lm")
    image.save(path)


def plot_history(
    history: Mapping[str, Sequence[float]], path: Path, best_epoch: int | None = None
) -> None:
    """Training and validation loss per epoch, with the kept (best) epoch marked."""
    image = Image.new("RGB", (620, 560), "white")
    draw = ImageDraw.Draw(image)
    box = (70, 50, 590, 490)
    x0, y0, x1, y1 = box
    _centre_text(draw, (330, 20), "Training history", fill="black", font=_font(16))
    losses = {k: list(v) for k, v in sorted(history.items()) if k.endswith("loss") and v}
    epochs = max((len(v) for v in losses.values()), default=1)
    top = max((max(v) for v in losses.values()), default=1.0) * 1.05 or 1.0
    step = max(1, -(-epochs // 10))
    x_ticks = list(range(1, max(epochs, 2) + 1, step))
    if x_ticks[-1] != max(epochs, 2):
        x_ticks.append(max(epochs, 2))
    y_ticks = [top * k / 5 for k in range(6)]
    _axes(draw, box, x_ticks, y_ticks, "epoch", "loss")
    span = max(x_ticks[-1] - 1, 1)

    def x_of(epoch: float) -> float:
        return x0 + (x1 - x0) * (epoch - 1) / span

    if best_epoch is not None and 1 <= best_epoch <= epochs:
        for y in range(y0, y1, 12):  # dashed vertical line
            draw.line([(x_of(best_epoch), y), (x_of(best_epoch), min(y + 6, y1))], fill="grey")
        draw.text((x_of(best_epoch) + 4, y0 + 4), "kept", fill="grey", font=_font(12))
    for k, (name, values) in enumerate(losses.items()):
        colour = _COLOURS[k % len(_COLOURS)]
        points = [(x_of(i + 1), y1 - (y1 - y0) * min(v / top, 1.0)) for i, v in enumerate(values)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=3)
        for p in points:
            draw.ellipse([p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3], fill=colour)
        ly = y0 + 20 + 20 * k
        draw.line([(x1 - 170, ly), (x1 - 145, ly)], fill=colour, width=3)
        draw.text((x1 - 138, ly), name, fill="black", font=_font(13), anchor="lm")
    image.save(path)


# -- report -------------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def markdown_report(
    evaluation: Evaluation,
    *,
    title: str,
    context: Mapping[str, Any],
    notes: Sequence[str] = (),
) -> str:
    """A human-readable report: data, training, metrics, confusion matrix, plots."""
    lines = [f"# {title}", "", "Research and demonstration only. Not for diagnostic use.", ""]
    if notes:
        lines += ["## Notes", "", *[f"- {note}" for note in notes], ""]
    if context:
        lines += ["## Training", "", "| | |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in context.items()]
        lines.append("")
    lines += [
        f"## Test set ({evaluation.count} images)",
        "",
        f"- accuracy: **{evaluation.accuracy:.3f}**",
        f"- macro F1: {evaluation.macro_f1:.3f}",
        f"- ROC AUC: {_fmt(evaluation.auc)}"
        + (" (macro average, one-vs-rest)" if len(evaluation.roc) > 1 else ""),
        f"- decision: positive classes {evaluation.positive_classes or 'none'}, "
        f"threshold {evaluation.threshold}",
        "",
        "| class | precision | recall | F1 | support | AUC |",
        "|---|---|---|---|---|---|",
    ]
    for label, m in evaluation.per_class.items():
        curve = evaluation.roc.get(label)
        auc = _fmt(curve.auc) if curve is not None else ""
        lines.append(
            f"| {label} | {m.precision:.3f} | {m.recall:.3f} | {m.f1:.3f} | {m.support} | {auc} |"
        )
    header = " | ".join(evaluation.classes)
    lines += ["", "Confusion matrix (rows: true, columns: predicted)", ""]
    lines += [f"| | {header} |", "|---" * (len(evaluation.classes) + 1) + "|"]
    for label, row in zip(evaluation.classes, evaluation.confusion, strict=True):
        lines.append(f"| **{label}** | " + " | ".join(str(v) for v in row) + " |")
    lines += [
        "",
        "![confusion matrix](confusion_matrix.png)",
        "![ROC curve](roc_curve.png)",
        "![training history](training_history.png)",
        "",
        "Every test image's probabilities and decision are in `metrics.json`.",
        "",
    ]
    return "\n".join(lines)


def write_report(
    evaluation: Evaluation,
    folder: Path,
    *,
    title: str,
    history: Mapping[str, Sequence[float]],
    context: Mapping[str, Any],
    notes: Sequence[str] = (),
    best_epoch: int | None = None,
) -> dict[str, Path]:
    """Write ``metrics.json``, ``report.md`` and the PNG plots into ``folder``.

    Returns
    -------
    dict
        Paths by kind: json, markdown, confusion, roc, history.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": folder / "metrics.json",
        "markdown": folder / "report.md",
        "confusion": folder / "confusion_matrix.png",
        "roc": folder / "roc_curve.png",
        "history": folder / "training_history.png",
    }
    payload = {
        "title": title,
        "notes": list(notes),
        "training": dict(context),
        "history": {k: [float(v) for v in vs] for k, vs in history.items()},
        **evaluation.to_json(),
    }
    text = json.dumps(_finite(payload), indent=2, default=_json_default, allow_nan=False)
    paths["json"].write_text(text + "\n", encoding="utf-8")
    paths["markdown"].write_text(
        markdown_report(evaluation, title=title, context=context, notes=notes), encoding="utf-8"
    )
    plot_confusion(evaluation, paths["confusion"])
    plot_roc(evaluation, paths["roc"])
    plot_history(history, paths["history"], best_epoch)
    return paths


def _finite(value: Any) -> Any:
    """Replace non-finite floats (the ROC's first threshold, +inf) by None: strict JSON."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    """JSON for numpy scalars and paths."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
