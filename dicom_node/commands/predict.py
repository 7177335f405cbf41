"""``dicom-node predict FILE_OR_FOLDER [--model ID] [--heatmap out.png]``: run the route and
the model on files offline, without the network or the database, and print the result.

DICOM files are grouped by series, routed by the configured rules (unless ``--model`` is
given) and predicted exactly as the node would; PNG and JPEG pictures need ``--model``.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicom_node.config import Settings
from dicom_node.dispatch.sender import iter_files
from dicom_node.wording import call_text, out_of_scope_text, probability_value
from inference.pixels import read_picture
from inference.types import SeriesPrediction

Handler = Callable[[argparse.Namespace, Settings], int]
PICTURES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def _print_prediction(label: str, prediction: SeriesPrediction) -> None:
    """One line per model: the class, then P(class) (``dicom_node.wording``), then the
    other classes' probabilities; the intended-use notice on its own line."""
    predicted = prediction.predicted_class
    others = ", ".join(
        f"P({k}) = {probability_value(v)}"
        for k, v in prediction.probabilities.items()
        if k != predicted
    )
    timing = prediction.timings.get("total", 0.0) * 1000
    print(
        f"{label}: {prediction.model.id} {prediction.model.version} -> "
        f"{call_text(predicted, prediction.probabilities[predicted])}"
        f"{'; ' + others if others else ''} in {timing:.0f} ms"
    )
    if prediction.out_of_scope:
        print(f"  {out_of_scope_text(prediction.out_of_scope)}")
    if len(prediction.slices) > 1:
        top = sorted(prediction.slices, key=lambda s: -s.positive_score)[:3]
        scores = ", ".join(
            f"{s.sop_instance_uid[-12:]}:{probability_value(s.positive_score)}" for s in top
        )
        print(f"  {len(prediction.slices)} images; most positive: {scores}")


def heatmap_picture(prediction: SeriesPrediction) -> npt.NDArray[np.uint8] | None:
    """The labelled picture of the key heatmap: exactly the Secondary Capture's pixels
    (``dicom_node.results.picture``), or None without a heatmap."""
    if not prediction.heatmaps:
        return None
    from dicom_node.results.picture import labelled_heatmap

    return labelled_heatmap(prediction, prediction.heatmaps[0])


def save_heatmap(prediction: SeriesPrediction, path: Path) -> None:
    """Write :func:`heatmap_picture` as PNG at full size (lossless: the SC's pixels)."""
    picture = heatmap_picture(prediction)
    if picture is None:
        print("  (no heatmap: the model has none, or explain is off)")
        return
    from dicom_node.results.picture import title

    Image.fromarray(picture).save(path, format="PNG")
    print(f"  heatmap ({title(prediction, prediction.heatmaps[0])}) written to {path}")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from dicom_node.process.worker import model_cache
    from dicom_node.route.rules import evaluate, tags_for
    from dicom_node.route.waits import model_availability

    models = model_cache(settings)
    if args.model and args.model not in models.manifests:
        print(f"unknown model {args.model!r}; known: {', '.join(sorted(models.manifests))}")
        return 2
    series: dict[str, list[Dataset]] = defaultdict(list)
    pictures: list[Path] = []
    status = 0
    for path in iter_files([Path(p) for p in args.paths]):
        if path.suffix.lower() in PICTURES:
            pictures.append(path)
            continue
        try:
            ds = dcmread(path)
        except (InvalidDicomError, OSError) as exc:
            print(f"{path}: skipped, not DICOM ({exc})")
            continue
        series[str(ds.get("SeriesInstanceUID", path))].append(ds)
    available = model_availability(settings)
    for series_uid, datasets in series.items():
        label = f"series {series_uid} ({len(datasets)} file(s))"
        if args.model:
            model_ids: list[str] = [args.model]
        else:
            decision = evaluate(settings.routes, tags_for(datasets[0]), model_available=available)
            print(f"{label}: {decision.summary}")
            for reason in decision.reasons:
                print(f"  - {reason}")
            model_ids = [m for r in decision.routes for m in r.models]
        for model_id in model_ids:
            try:
                prediction = models.get(model_id).predict_series(
                    datasets, explain=bool(args.heatmap)
                )
            except ValueError as exc:  # PixelError and friends: say why, go on
                print(f"{label}: {model_id} cannot use these images: {exc}")
                status = 1
                continue
            _print_prediction(label, prediction)
            if args.heatmap:
                save_heatmap(prediction, Path(args.heatmap))
    for picture in pictures:
        if not args.model:
            print(f"{picture}: skipped, pictures need --model (they carry no tags to route by)")
            status = 1
            continue
        image = read_picture(picture)  # the same reader as training, so the same pixels
        prediction = models.get(args.model).predict_image(image, explain=bool(args.heatmap))
        _print_prediction(str(picture), prediction)
        if args.heatmap:
            save_heatmap(prediction, Path(args.heatmap))
    if not series and not pictures:
        print("no DICOM files or pictures found")
        return 1
    return status


def register(sub: Any) -> dict[str, Handler]:
    parser = sub.add_parser("predict", help="run route and model on files offline")
    parser.add_argument("paths", nargs="+", metavar="FILE_OR_FOLDER")
    parser.add_argument("--model", help="model id (default: the configured routes decide)")
    parser.add_argument(
        "--heatmap",
        metavar="OUT.png",
        help="write the key heatmap here, labelled exactly as the Secondary Capture shows it",
    )
    return {"predict": run}
