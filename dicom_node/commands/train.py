"""``dicom-node train --arch NAME DATA_DIR --out models/ID``: train a seed model.

A hospital with images of one of the original apps' tasks (one folder per class: PNG,
JPEG or DICOM) gets a model package the node serves as it is: weights, ``model.toml``
and a report of its accuracy on held-out images. The heavy work is in
:mod:`inference.seed.training`; this module only parses options and prints the outcome.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dicom_node.config import OperatorError, Settings

Handler = Callable[[argparse.Namespace, Settings], int]


def register(subparsers: Any) -> dict[str, Handler]:
    """Add the ``train`` sub-command to the CLI.

    Parameters
    ----------
    subparsers
        What ``ArgumentParser.add_subparsers()`` returned in the main CLI.

    Returns
    -------
    dict
        ``{"train": handler}``.
    """
    from inference.seed.architectures import ARCHITECTURES

    parser: argparse.ArgumentParser = subparsers.add_parser(
        "train",
        help="train a seed architecture on an image folder and write a model package",
        description="Train one of the seed architectures on DATA_DIR (one sub-folder per "
        "class, PNG/JPEG/DICOM images) and write a model package (weights, model.toml, "
        "report/) that the node serves without edits. Not for diagnostic use.",
    )
    parser.add_argument(
        "data_dir",
        type=Path,
        metavar="DATA_DIR",
        help="one folder per class (e.g. normal/ cancer/, or yes/ no/ for brain MRI)",
    )
    parser.add_argument("--arch", required=True, choices=sorted(ARCHITECTURES))
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="package folder, e.g. models/bone-xray-cnn (its name is the model id)",
    )
    parser.add_argument("--epochs", type=int, default=30, help="at most (default 30)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument(
        "--patience", type=int, default=5, help="epochs without improvement before stopping"
    )
    parser.add_argument("--validation-fraction", type=float, default=0.15)
    parser.add_argument("--test-fraction", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=42, help="split, weights and augmentation")
    parser.add_argument("--no-augment", action="store_true", help="train on the images as they are")
    parser.add_argument(
        "--imagenet-weights",
        type=Path,
        default=None,
        metavar="FILE",
        help="local ImageNet *_notop.h5 weights for the ResNet50 / VGG16 base (nothing is "
        "downloaded; without it the base is trained from scratch)",
    )
    parser.add_argument(
        "--input-size", type=int, default=None, help="square input side (default: the app's)"
    )
    parser.add_argument(
        "--width", type=float, default=1.0, help="filter multiplier for a reduced network"
    )
    parser.add_argument(
        "--depth", type=float, default=1.0, help="block multiplier for a reduced ResNet/VGG base"
    )
    parser.add_argument("--threads", type=int, default=None, help="TensorFlow threads")
    parser.add_argument("--version", default=None, help="model version (default: a time stamp)")
    parser.add_argument("--force", action="store_true", help="replace existing weights")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    return {"train": run}


def check_paths(args: argparse.Namespace) -> None:
    """The folders and files named on the command line exist, before hours of training.

    The package folder itself is made by training; the folder it goes into must exist, so
    a typo in ``--out`` stops the command now instead of writing the model somewhere else.

    Raises
    ------
    OperatorError
        One line naming the option and the path.
    """
    if not args.data_dir.is_dir():
        raise OperatorError(
            f"DATA_DIR {args.data_dir} is not a folder; give the folder of class folders"
        )
    parent = args.out.parent
    if not parent.is_dir():
        raise OperatorError(
            f"the folder {parent} of --out {args.out} does not exist; create it or choose another"
        )
    if args.out.exists() and not args.out.is_dir():
        raise OperatorError(f"--out {args.out} is a file; give a package folder such as models/ID")
    weights = args.imagenet_weights
    if weights is not None and not weights.is_file():
        raise OperatorError(
            f"--imagenet-weights {weights} does not exist; give a local *_notop.h5 file"
        )


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Train and report; exit status 0 on success, 1 when training cannot proceed."""
    from inference.seed.architectures import get_architecture
    from inference.seed.training import TrainConfig, TrainingError, train

    check_paths(args)
    arch = get_architecture(args.arch)
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        patience=args.patience,
        validation_fraction=args.validation_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        augment=not args.no_augment,
        input_size=args.input_size,
        width=args.width,
        depth=args.depth,
        imagenet_weights=args.imagenet_weights,
        verbose=0 if args.quiet else None,
        force=args.force,
        version=args.version,
        threads=args.threads,
    )

    def log(message: str) -> None:
        if not args.quiet:
            print(message, flush=True)

    if arch.transfer and args.imagenet_weights is None:
        print(
            f"NOTE: {arch.name}: no --imagenet-weights given; the base is trained from "
            "scratch (the original app used a frozen ImageNet base).",
            file=sys.stderr,
        )
    try:
        result = train(arch, args.data_dir, args.out, config, log=log)
    except (TrainingError, ValueError) as exc:
        print(f"dicom-node train: {exc}", file=sys.stderr)
        return 1
    evaluation = result.evaluation
    auc = "n/a" if evaluation.auc is None else f"{evaluation.auc:.3f}"
    print(f"model package: {result.package_dir}")
    print(f"  weights:  {result.weights_path}")
    print(f"  manifest: {result.manifest_path}")
    print(f"  report:   {result.report['markdown']}")
    print(
        f"  test set: {evaluation.count} images, accuracy {evaluation.accuracy:.3f}, "
        f"ROC AUC {auc}, best epoch {result.best_epoch} of {result.epochs_run}"
    )
    model_id = result.package_dir.name
    if result.package_dir.resolve().parent != settings.models_dir:
        print(f"  the node reads models from {settings.models_dir}: copy the folder there")
    routes = [r.name for r in settings.routes if model_id in r.models]
    if routes:
        print(f"  routes using {model_id}: {', '.join(routes)} (restart the node to serve it)")
    else:
        print(f"  no route uses {model_id} yet: add one to the configuration")
    return 0
