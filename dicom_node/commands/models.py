"""``dicom-node models list | check``: what models exist, which routes use them, whether
their weights are there, and how fast they answer."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from dicom_node.config import OperatorError, Settings

Handler = Callable[[argparse.Namespace, Settings], int]


def _routes_by_model(settings: Settings) -> dict[str, list[str]]:
    routes: dict[str, list[str]] = {}
    for route in settings.routes:
        for model_id in route.models:
            label = route.name if route.enabled else f"{route.name} (disabled)"
            routes.setdefault(model_id, []).append(label)
    return routes


def _manifests(settings: Settings) -> dict[str, Any]:
    from inference.registry import load_manifests

    return load_manifests(settings.models_dir)


def require_model(model_id: str, manifests: dict[str, Any]) -> None:
    """Stop a command that names a model it cannot use: an unknown id, or a model whose
    weights are missing (the seed models until a site trains or imports them).

    Raises
    ------
    OperatorError
        One line with the reason and the commands that provide weights.
    """
    manifest = manifests.get(model_id)
    if manifest is None:
        raise OperatorError(f"unknown model {model_id!r}; known: {', '.join(sorted(manifests))}")
    reason = manifest.missing_weights_reason()
    if reason is not None:
        raise OperatorError(
            f"model {model_id!r} has no weights ({reason}); train it with `dicom-node train` "
            "or import the app's file with `dicom-node models import`"
        )


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    manifests = _manifests(settings)
    routes = _routes_by_model(settings)
    print(f"models in {settings.models_dir}:")
    header = f"{'id':<26} {'version':<10} {'format':<7} {'weights':<8} routes"
    print(header)
    print("-" * len(header))
    waiting = []
    for model_id, manifest in sorted(manifests.items()):
        present = manifest.weights_available()
        used_by = ", ".join(routes.get(model_id, [])) or "-"
        fmt = manifest.spec.weights.format
        weights = "yes" if present else "MISSING"
        print(f"{model_id:<26} {manifest.version:<10} {fmt:<7} {weights:<8} {used_by}")
        if not present:
            waiting.append((model_id, manifest.missing_weights_reason() or "weights missing"))
            for route in routes.get(model_id, []):
                print(f"  route {route} waits for the weights of {model_id}")
    for model_id, reason in waiting:
        print(f"{model_id}: {reason}")
    return 0


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    """Load every model with weights, warm it up, and time a prediction."""
    from inference.registry import load_model

    manifests = _manifests(settings)
    # A model named on the command line must be checkable: an unknown id or one without
    # weights is the operator's mistake (one line, exit status 2), before anything loads.
    for model_id in args.model:
        require_model(model_id, manifests)
    status = 0
    for model_id, manifest in sorted(manifests.items()):
        if args.model and model_id not in args.model:
            continue
        if not manifest.weights_available():
            print(f"{model_id}: skipped, {manifest.missing_weights_reason()}")
            continue
        try:
            loaded = load_model(manifest, threads=settings.workers.inference_threads)
        except Exception as exc:
            print(f"{model_id}: FAILED to load: {exc}")
            status = 1
            continue
        spec = manifest.spec.input
        image = np.random.default_rng(0).random((spec.height * 2, spec.width * 2), np.float32)
        times = {}
        for explain in (False, True):
            runs = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                loaded.predict_image(image, explain=explain)
                runs.append(time.perf_counter() - t0)
            times[explain] = float(np.median(runs)) * 1000
        print(
            f"{model_id} {manifest.version}: loaded and warmed up in {loaded.load_seconds:.2f} s; "
            f"prediction {times[False]:.1f} ms, with {loaded.explain_method} "
            f"{times[True]:.1f} ms (median of {args.repeat})"
        )
    return status


def register(sub: Any) -> dict[str, Handler]:
    parser = sub.add_parser("models", help="list and check model packages")
    models_sub = parser.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    models_sub.add_parser("list", help="models, versions, routes, whether weights are present")
    check = models_sub.add_parser("check", help="load each model, warm up, print latency")
    check.add_argument("model", nargs="*", help="only these model ids")
    check.add_argument("--repeat", type=int, default=3)
    actions: dict[str, Handler] = {"list": cmd_list, "check": cmd_check}
    try:
        from dicom_node.commands.model_import import add_import_parser, run_import

        add_import_parser(models_sub)
        actions["import"] = run_import
    except ImportError:
        pass

    def dispatch(args: argparse.Namespace, settings: Settings) -> int:
        return actions[args.models_command](args, settings)

    return {"models": dispatch}
