"""``dicom-node models import FILE --preset NAME --id ID``: serve an existing model file.

The original apps saved their networks as Keras 2 ``.h5`` files. Loading such a file is
easy; serving it right is not: the node must know the app's input size, preprocessing,
class order and what a single sigmoid output means (the lung CT app's is P(normal)). The
preset (:data:`inference.seed.architectures.ARCHITECTURES`) knows that; the file's own shapes
decide the rest. The result is checked by loading it through the node's runtime before
the command says it is done.

Wired into ``dicom-node models`` by :mod:`dicom_node.commands.models` through
:func:`add_import_parser` and :func:`run_import`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dicom_node.config import Settings


def add_import_parser(models_subparsers: Any) -> argparse.ArgumentParser:
    """Add ``import`` to the ``models`` sub-commands.

    Parameters
    ----------
    models_subparsers
        What ``add_subparsers()`` of the ``models`` parser returned.
    """
    from inference.seed.architectures import ARCHITECTURES

    parser: argparse.ArgumentParser = models_subparsers.add_parser(
        "import",
        help="turn a model file of one of the original apps into a model package",
        description="Copy a Keras model file (.h5 as the apps saved it, or .keras) into "
        "MODELS_DIR/ID/weights/ and write the model.toml that serves it with the app's "
        "preprocessing, classes and output interpretation.",
    )
    parser.add_argument("file", type=Path, metavar="FILE")
    parser.add_argument("--preset", required=True, choices=sorted(ARCHITECTURES))
    parser.add_argument("--id", required=True, dest="model_id", help="model id (folder name)")
    parser.add_argument(
        "--models-dir", type=Path, default=None, help="default: the configured models folder"
    )
    parser.add_argument(
        "--classes",
        default=None,
        help="comma-separated output order when the app's differs from the preset's",
    )
    parser.add_argument(
        "--unit-class",
        default=None,
        help="for a single sigmoid output: the class it scores, if not the preset's",
    )
    parser.add_argument(
        "--preprocessing",
        choices=("scale", "caffe", "tf", "torch"),
        default=None,
        help="value preprocessing, if the app did not use the preset's",
    )
    parser.add_argument(
        "--resize",
        choices=("nearest", "bilinear", "bicubic", "lanczos", "box"),
        default="nearest",
        help="resize filter of the app's image loading (Keras load_img: nearest)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing package")
    parser.add_argument(
        "--no-check", action="store_true", help="skip loading the package through the runtime"
    )
    return parser


def run_import(args: argparse.Namespace, settings: Settings) -> int:
    """Import the file; exit status 0 when the package loads, 1 otherwise."""
    from inference.seed.architectures import get_architecture, import_keras_file

    arch = get_architecture(args.preset)
    models_dir: Path = args.models_dir or settings.models_dir
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    try:
        result = import_keras_file(
            args.file,
            arch,
            args.model_id,
            models_dir,
            classes=classes,
            unit_class=args.unit_class,
            preprocessing=args.preprocessing,
            resize=args.resize,
            force=args.force,
            check=not args.no_check,
        )
    except ValueError as exc:
        print(f"dicom-node models import: {exc}", file=sys.stderr)
        return 1
    print(f"imported {args.file} as {args.model_id} ({arch.name} preset)")
    print(f"  weights:  {result.weights_path} (sha256 {result.sha256[:16]}...)")
    print(f"  manifest: {result.manifest_path}")
    for note in result.notes:
        print(f"  {note}")
    routes = [r.name for r in settings.routes if args.model_id in r.models]
    if routes:
        print(f"  routes using it: {', '.join(routes)} (restart the node to serve it)")
    else:
        print(f"  no route uses {args.model_id} yet: add one to the configuration")
    print("  model weight files are not for version control (models/.gitignore)")
    return 0
