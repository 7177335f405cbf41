"""The region a heatmap points at: outline at half the peak, around the peak only."""

from __future__ import annotations

import numpy as np
import pytest

from inference.region import image_outline, peak_region


def _blob(
    shape: tuple[int, int], centre: tuple[float, float], sigma: tuple[float, float]
) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.exp(
        -(((yy - centre[0]) / sigma[0]) ** 2 + ((xx - centre[1]) / sigma[1]) ** 2)
    ).astype(np.float32)


def test_outline_of_a_radiograph_sized_blob_is_its_half_maximum() -> None:
    # RG1_UNCI's size; the half-maximum ellipse has semi-axes sigma * sqrt(ln 2).
    cam = _blob((1955, 1841), (900, 600), (300, 250))
    region = peak_region(cam)
    assert region is not None
    assert region.peak == (600.5, 900.5)
    outline = region.outline
    assert np.array_equal(outline[0], outline[-1]) and len(outline) >= 5
    half = np.sqrt(np.log(2))
    low, high = outline.min(axis=0), outline.max(axis=0)
    step = 8  # the 256-cell grid of a 1955-row image
    np.testing.assert_allclose(low, [600 - 250 * half, 900 - 300 * half], atol=step)
    np.testing.assert_allclose(high, [600 + 250 * half, 900 + 300 * half], atol=step)


def test_only_the_spot_holding_the_peak_is_outlined() -> None:
    cam = _blob((200, 300), (100, 60), (20, 20)) + 0.9 * _blob((200, 300), (100, 240), (20, 20))
    region = peak_region(cam)
    assert region is not None
    assert region.outline[:, 0].max() < 150  # the weaker spot on the right is left out


def test_a_single_hot_pixel_is_a_one_pixel_square() -> None:
    cam = np.zeros((10, 10), dtype=np.float32)
    cam[3, 4] = 1.0
    region = peak_region(cam)
    assert region is not None
    assert {tuple(p) for p in region.outline} == {(4, 3), (5, 3), (5, 4), (4, 4)}


def test_a_map_without_evidence_points_nowhere() -> None:
    assert peak_region(np.zeros((5, 5), dtype=np.float32)) is None
    with pytest.raises(ValueError):
        peak_region(np.ones((5, 5)), fraction=0.0)
    with pytest.raises(ValueError):
        peak_region(np.ones(5))


def test_image_outline_is_the_closed_image_border() -> None:
    assert image_outline(2, 3).tolist() == [[0, 0], [3, 0], [3, 2], [0, 2], [0, 0]]
    with pytest.raises(ValueError):
        image_outline(0, 3)
