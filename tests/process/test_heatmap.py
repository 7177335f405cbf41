"""The admin page's heatmap picture is written at display size, aspect ratio kept."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dicom_node.process.heatmap import DISPLAY_MAX_SIDE, display_png, display_size


def _decoded(data: bytes) -> Image.Image:
    picture = Image.open(io.BytesIO(data))
    picture.load()
    return picture


def test_a_radiograph_sized_overlay_is_shrunk_to_the_display_size() -> None:
    # RG1_UNCI's size: 1955 rows x 1841 columns.
    overlay = np.zeros((1955, 1841, 3), dtype=np.uint8)
    overlay[..., 0] = 200
    overlay[:900, :900, 1] = 255  # a green top-left block must stay top-left
    picture = _decoded(display_png(overlay))
    assert picture.format == "PNG" and picture.mode == "RGB"
    columns, rows = picture.size
    assert rows == DISPLAY_MAX_SIDE and columns == round(1841 * DISPLAY_MAX_SIDE / 1955)
    pixels = np.asarray(picture)
    assert tuple(pixels[10, 10]) == (200, 255, 0)
    assert tuple(pixels[-10, -10]) == (200, 0, 0)


def test_the_view_that_render_returns_is_accepted() -> None:
    """``inference.explain.render`` returns an RGB view of RGBA words (not contiguous)."""
    rgba = np.zeros((30, 1500, 4), dtype=np.uint8)
    rgba[..., 2] = 90
    picture = _decoded(display_png(rgba[..., :3]))
    assert picture.size == (DISPLAY_MAX_SIDE, round(30 * DISPLAY_MAX_SIDE / 1500))
    assert tuple(np.asarray(picture)[5, 5]) == (0, 0, 90)


@pytest.mark.parametrize("shape", [(48, 48, 3), (1024, 700, 3), (64, 80)])
def test_pictures_that_fit_keep_their_size(shape: tuple[int, ...]) -> None:
    overlay = np.full(shape, 77, dtype=np.uint8)
    picture = _decoded(display_png(overlay))
    assert picture.size == (shape[1], shape[0])
    assert np.array_equal(np.asarray(picture), overlay)


def test_display_size_never_reaches_zero() -> None:
    assert display_size(5000, 1) == (DISPLAY_MAX_SIDE, 1)
    assert display_size(2048, 1024) == (1024, 512)
