"""Which routes wait for model weights, and why: for start-up logging and ``models list``.

The default configuration routes studies to seed models whose weights a hospital has to
train or import first. Such a route is skipped by routing (reason "waiting for weights
of X"); an operator must see that at start-up and in ``dicom-node models list`` rather
than wonder why bone X-rays get no result. This module only reads settings and
manifests (anything with ``missing_weights_reason()``, such as
``inference.manifest.ModelManifest``), so it needs no model runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from dicom_node.config import Settings


class WeightsInfo(Protocol):
    """What :func:`route_waits` needs of a manifest."""

    def missing_weights_reason(self) -> str | None:
        """Why the weights cannot be loaded, or None when they are there."""
        ...


RouteWait = tuple[str, str, str]  # (route name, model id, reason)


def route_waits(settings: Settings, manifests: Mapping[str, WeightsInfo]) -> list[RouteWait]:
    """List ``(route, model, reason)`` for every enabled route's model without weights.

    Parameters
    ----------
    settings
        The node's settings (routes in evaluation order).
    manifests
        Manifests by model id, e.g. ``inference.registry.load_manifests(models_dir)``.

    Returns
    -------
    list of tuple
        In route order, then model order. Disabled routes are left out: they do not
        wait, they are off. A model without a manifest is reported too (config
        validation normally prevents it, but a manifest may fail to load).
    """
    waits: list[RouteWait] = []
    for route in settings.routes:
        if not route.enabled:
            continue
        for model_id in route.models:
            manifest = manifests.get(model_id)
            if manifest is None:
                waits.append((route.name, model_id, f"no model.toml for {model_id!r}"))
                continue
            reason = manifest.missing_weights_reason()
            if reason is not None:
                waits.append((route.name, model_id, reason))
    return waits


def describe_waits(waits: list[RouteWait]) -> list[str]:
    """One line per waiting route, e.g. for a log: which route waits for which weights."""
    return [
        f"route {route} waits for the weights of {model}: {reason} "
        "(train them with 'dicom-node train' or import a file with 'dicom-node models import')"
        for route, model, reason in waits
    ]


def model_availability(settings: Settings) -> Callable[[str], bool]:
    """Which models have their weights; routes to the others wait (and say so)."""
    try:
        from inference.registry import load_manifests

        manifests = load_manifests(settings.models_dir)
    except ImportError:  # pragma: no cover - runtime not installed
        return lambda _m: False
    available = {mid for mid, m in manifests.items() if m.weights_available()}
    return lambda model_id: model_id in available


def route_model_status(
    settings: Settings, available: Callable[[str], bool]
) -> dict[str, dict[str, bool]]:
    """The ``models`` part of the node's status: each model of an enabled route.

    ``ok`` when its weights are there to load (workers load them in their own processes);
    a model without weights is ``waiting_for_weights``, not failed: its routes wait, the
    others work, and ``/healthz`` answers "degraded" (200) rather than taking the node out
    of a load balancer. The embedded configuration routes seed models without weights, so
    a fresh node is in that state.

    Parameters
    ----------
    settings
        The node's settings.
    available
        Whether a model's weights are there, e.g. :func:`model_availability`.
    """
    status: dict[str, dict[str, bool]] = {}
    for route in settings.routes:
        if not route.enabled:
            continue
        for model_id in route.models:
            ok = available(model_id)
            status[model_id] = {"ok": ok, "waiting_for_weights": not ok}
    return status
