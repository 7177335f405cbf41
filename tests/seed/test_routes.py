"""The default configuration's seed routes wait for weights, and serve once they exist."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from dicom_node.config import DEFAULT_CONFIG, load_settings
from dicom_node.node import model_availability
from dicom_node.route.rules import evaluate, tags_for
from dicom_node.route.waits import describe_waits, route_waits
from inference.registry import load_manifests

from .conftest import SOURCE_SIZE, Trained, ct_slice, lesion_image

REPO_MODELS = Path(__file__).resolve().parents[2] / "models"
SEED_ROUTES = {
    "bone-xray-extremities": "bone-xray-cnn",
    "bone-xray-axial": "bone-xray-cnn",
    "lung-ct-3class": "lung-ct-resnet50",
    "lung-ct-cancer": "lung-ct-cnn",
    "breast-mg": "breast-vgg16",
    "brain-mri-tumor-cnn": "brain-mri-cnn",
}


def copy_manifests(target: Path) -> None:
    """The repository's manifests, without any weights, in a models folder of our own."""
    for manifest in REPO_MODELS.glob("*/model.toml"):
        folder = target / manifest.parent.name
        folder.mkdir(parents=True)
        shutil.copyfile(manifest, folder / "model.toml")


def test_default_routes_include_every_seed_model_after_the_real_ones() -> None:
    settings = load_settings(environ={})
    names = [route.name for route in settings.routes]
    for route, model in SEED_ROUTES.items():
        assert settings.route(route).models == (model,)
    # The real models' routes come first, so they keep the series they match.
    assert names.index("brain-mri") < names.index("brain-mri-tumor-cnn")
    assert names.index("chest-xray") < min(names.index(r) for r in SEED_ROUTES)


def test_seed_routes_wait_for_weights(tmp_path: Path) -> None:
    copy_manifests(tmp_path / "models")
    settings = load_settings(
        DEFAULT_CONFIG, environ={}, overrides={"models": {"dir": str(tmp_path / "models")}}
    )
    waits = route_waits(settings, load_manifests(settings.models_dir))
    waiting = {(route, model) for route, model, _ in waits}
    assert set(SEED_ROUTES.items()) <= waiting
    for route, model, reason in waits:
        if route in SEED_ROUTES:
            assert reason.endswith("does not exist") and f"{model}/weights/model.keras" in reason
    lines = describe_waits(waits)
    assert any(
        line.startswith("route lung-ct-cancer waits for the weights of lung-ct-cnn")
        for line in lines
    )


def test_disabled_routes_do_not_wait(tmp_path: Path) -> None:
    copy_manifests(tmp_path / "models")
    base = load_settings(environ={})
    routes = [
        {**route.model_dump(by_alias=True), "enabled": route.name != "breast-mg"}
        for route in base.routes
    ]
    settings = load_settings(
        environ={}, overrides={"models": {"dir": str(tmp_path / "models")}, "routes": routes}
    )
    waits = route_waits(settings, load_manifests(settings.models_dir))
    assert "breast-mg" not in {route for route, _, _ in waits}
    assert "bone-xray-axial" in {route for route, _, _ in waits}


@pytest.mark.parametrize("weights", [False, True])
def test_lung_ct_route_serves_once_weights_exist(
    weights: bool, trained: Callable[[str], Trained], tmp_path: Path
) -> None:
    models = tmp_path / "models"
    copy_manifests(models)
    if weights:  # the site trained the model: its package replaces the committed manifest
        shutil.rmtree(models / "lung-ct-cnn")
        shutil.copytree(trained("lung-ct-cnn").package, models / "lung-ct-cnn")
    settings = load_settings(environ={}, overrides={"models": {"dir": str(models)}})
    waits = {route for route, _, _ in route_waits(settings, load_manifests(settings.models_dir))}
    ds = ct_slice(lesion_image(np.random.default_rng(0), SOURCE_SIZE, 0), study="r", number=1)
    decision = evaluate(settings.routes, tags_for(ds), model_available=model_availability(settings))
    if weights:
        assert "lung-ct-cancer" not in waits and "lung-ct-3class" in waits
        assert [route.name for route in decision.routes] == ["lung-ct-cancer"]
    else:
        assert {"lung-ct-cancer", "lung-ct-3class"} <= waits
        assert not decision.routed
        assert "lung-ct-cancer: waiting for weights of lung-ct-cnn" in decision.reasons
