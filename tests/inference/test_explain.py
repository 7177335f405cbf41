"""Explanations on a CNN trained in the session on synthetic lesions (known positions)."""

from __future__ import annotations

import numpy as np
import pytest

from inference import colormap, explain, preprocess
from inference.manifest import ModelManifest
from inference.registry import LoadedModel, load_model

from .conftest import RADIUS, SIZE, make_synthetic

TOLERANCE = 4  # pixels beyond the lesion edge: the 16 x 16 feature map has 4 px cells


@pytest.fixture(scope="module")
def lesions() -> tuple[np.ndarray, np.ndarray]:
    """20 unseen positive images and their lesion centres."""
    data = make_synthetic(40, seed=123)
    positive = data.labels == 1
    return data.images[positive], data.centres[positive]


def hit(cam: np.ndarray, centre: np.ndarray) -> bool:
    """Pointing game: does the map's peak fall on the lesion?"""
    full = explain.resize_map(cam, (SIZE, SIZE))
    row, col = np.unravel_index(int(full.argmax()), full.shape)
    return bool(np.hypot(row - centre[0], col - centre[1]) <= RADIUS + TOLERANCE)


def test_the_tiny_model_learned_the_task(tiny: LoadedModel) -> None:
    data = make_synthetic(60, seed=321)
    predicted = [tiny.predict_image(image, explain=False).predicted_class for image in data.images]
    accuracy = np.mean(
        [p == ("lesion" if y else "clear") for p, y in zip(predicted, data.labels, strict=True)]
    )
    assert accuracy >= 0.9


def test_auto_layer_finds_the_nested_feature_map(tiny: LoadedModel) -> None:
    assert tiny.backend.feature_layer == ["base", "last_conv"]  # type: ignore[attr-defined]


def test_gradcam_pointing_game(tiny: LoadedModel, lesions: tuple[np.ndarray, np.ndarray]) -> None:
    images, centres = lesions
    hits = []
    for image, centre in zip(images, centres, strict=True):
        prediction = tiny.predict_image(image)
        (heatmap,) = prediction.heatmaps
        assert heatmap.method == "grad-cam"
        assert heatmap.cam.shape == image.shape and heatmap.overlay.shape == (*image.shape, 3)
        hits.append(hit(heatmap.cam, centre))
    assert len(hits) == 20
    assert sum(hits) >= 16, f"Grad-CAM peak on the lesion in {sum(hits)} of 20 images"


def test_occlusion_pointing_game(tiny: LoadedModel, lesions: tuple[np.ndarray, np.ndarray]) -> None:
    images, centres = lesions
    spec = tiny.manifest.spec
    batch = preprocess.prepare_batch(list(images), spec.input, spec.preprocessing)
    target = np.zeros((len(images), 2), dtype=np.float32)
    target[:, 1] = 1.0  # explain "lesion"
    maps = explain.occlusion(tiny.backend.predict, batch, target, grid=9, patch=0.2)
    assert maps.shape == (len(images), SIZE, SIZE)
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    hits = [hit(m, c) for m, c in zip(maps, centres, strict=True)]
    assert sum(hits) >= 16, f"occlusion peak on the lesion in {sum(hits)} of 20 images"


def test_gradcam_in_one_pass_matches_prediction_only(
    tiny: LoadedModel, lesions: tuple[np.ndarray, np.ndarray]
) -> None:
    images, _ = lesions
    spec = tiny.manifest.spec
    batch = preprocess.prepare_batch(list(images[:4]), spec.input, spec.preprocessing)
    probs_only = tiny.backend.predict(batch)
    probs, cams = tiny.backend.predict_with_cam(batch, np.zeros((4, 2), np.float32))
    np.testing.assert_allclose(probs, probs_only, atol=1e-5)
    assert cams.shape == (4, SIZE // 4, SIZE // 4)


def test_legacy_h5_loads_and_agrees(
    tiny: LoadedModel, tiny_models: dict[str, ModelManifest], lesions: tuple[np.ndarray, np.ndarray]
) -> None:
    legacy = load_model(tiny_models["tiny-h5"], threads=2)
    images, _ = lesions
    for image in images[:3]:
        a = tiny.predict_image(image, explain=False).probabilities
        b = legacy.predict_image(image, explain=False).probabilities
        assert a == pytest.approx(b, abs=1e-5)


def test_overlay_blends_colour_only_where_the_map_is_high() -> None:
    image = np.full((40, 60), 0.5, dtype=np.float32)
    cam = np.zeros((5, 5), dtype=np.float32)
    cam[1:4, 1:4] = 1.0
    heatmap = explain.render("1.2.3", 2, image, cam, alpha=0.6)
    assert heatmap.frame == 2 and heatmap.overlay.dtype == np.uint8
    corner, centre = heatmap.overlay[0, 0], heatmap.overlay[20, 30]
    assert tuple(corner) == (128, 128, 128)  # no evidence: the source grey level
    expected = np.rint((0.4 * 0.5 + 0.6 * colormap.lookup_table("inferno")[255]) * 255)
    np.testing.assert_allclose(centre, expected, atol=2)
    assert heatmap.cam.max() == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("colour", [False, True])
def test_map_values_below_the_floor_leave_the_image_uncoloured(colour: bool) -> None:
    """Faint map values do not tint the film; above the floor the colour fades in."""
    grey = np.full((40, 40), 0.5, dtype=np.float32)
    image = np.repeat(grey[..., None], 3, axis=2) if colour else grey
    cam = np.zeros((40, 40), dtype=np.float32)
    cam[:, 10:20] = 0.15  # below the floor
    cam[:, 20:30] = 0.2  # at the floor
    cam[:, 30:] = 0.6  # above it
    heatmap = explain.render("1", None, image, cam, alpha=0.5, floor=0.2, target="NORMAL")
    overlay = heatmap.overlay.astype(int)
    assert (overlay[:, :30] == 128).all()  # the source's grey, untouched
    weight = 0.5 * (0.6 - 0.2) / 0.8
    expected = np.rint(((1 - weight) * 0.5 + weight * colormap.apply(np.float32(0.6))) * 255)
    np.testing.assert_allclose(overlay[5, 35], expected, atol=2)
    assert (heatmap.target, heatmap.floor, heatmap.alpha) == ("NORMAL", 0.2, 0.5)


def test_colour_source_keeps_its_colours() -> None:
    image = np.zeros((10, 10, 3), dtype=np.float32)
    image[..., 0] = 1.0  # red
    heatmap = explain.render("1", None, image, np.zeros((2, 2), np.float32))
    assert tuple(heatmap.overlay[5, 5]) == (255, 0, 0)
    assert heatmap.image.shape == (10, 10)


def test_colormaps_are_perceptually_ordered() -> None:
    for name in ("inferno", "viridis"):
        table = colormap.lookup_table(name)  # type: ignore[arg-type]
        luminance = table @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
        assert np.all(np.diff(luminance) > -0.01)  # lightness never goes back
    np.testing.assert_allclose(
        colormap.lookup_table("viridis")[0], [0.267, 0.005, 0.329], atol=0.015
    )
    np.testing.assert_allclose(
        colormap.lookup_table("inferno")[-1], [0.988, 0.998, 0.645], atol=0.02
    )


def test_resize_map_is_bilinear_and_keeps_range() -> None:
    cam = np.array([[0.0, 1.0]], dtype=np.float32)
    out = explain.resize_map(cam, (1, 4))
    np.testing.assert_allclose(out, [[0.0, 0.25, 0.75, 1.0]], atol=1e-6)
    small = explain.resize_map(np.ones((8, 8), np.float32), (2, 2))
    np.testing.assert_allclose(small, 1.0)
