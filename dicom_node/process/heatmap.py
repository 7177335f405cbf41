"""The heatmap picture of the admin page: the labelled picture at display size, as PNG.

The admin page shows the same picture as the Secondary Capture
(``dicom_node.results.picture.labelled_heatmap``: class explained, result, colour scale,
caveats). The Secondary Capture keeps the source image's full size (1955 x 1841 for a chest
CR): a radiologist may zoom into it in the PACS viewer. The admin page shows the picture in a
box a few hundred pixels wide, so it is scaled down to a longest side of
:data:`DISPLAY_MAX_SIDE`, aspect kept; encoding every source pixel as PNG only cost time on
the way to the PACS (0.8-1.6 s for a CR, ten times the model call).
"""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
from PIL import Image

# Longest side of the stored picture: wider than the page's picture box on a 4K screen, and
# an eighth of the pixels of a 2k x 2k radiograph.
DISPLAY_MAX_SIDE = 1024
# zlib level 1: about a fifth more bytes than the default level 6, a quarter of the time.
# The file is read by one admin page, not archived, so time on the result path wins.
PNG_COMPRESS_LEVEL = 1


def display_size(rows: int, columns: int, max_side: int = DISPLAY_MAX_SIDE) -> tuple[int, int]:
    """The (rows, columns) of a picture scaled down to ``max_side``, aspect ratio kept.

    Pictures that already fit keep their size: enlarging adds bytes and no detail.
    """
    longest = max(rows, columns)
    if longest <= max_side:
        return rows, columns
    scale = max_side / longest
    return max(1, round(rows * scale)), max(1, round(columns * scale))


def display_png(overlay: npt.NDArray[np.uint8], max_side: int = DISPLAY_MAX_SIDE) -> bytes:
    """Encode an RGB (or grayscale) overlay as PNG at display size.

    Parameters
    ----------
    overlay
        The runtime's heatmap overlay, (rows, columns, 3) or (rows, columns), uint8.
    max_side
        Longest side of the result in pixels.

    Returns
    -------
    bytes
        The PNG file.
    """
    picture = Image.fromarray(np.ascontiguousarray(overlay))
    rows, columns = display_size(overlay.shape[0], overlay.shape[1], max_side)
    if (rows, columns) != (overlay.shape[0], overlay.shape[1]):
        # Pillow's bilinear filter widens its support when shrinking, so this is an
        # area-weighted average (no aliasing of the colour map's edges), and it is fast.
        picture = picture.resize((columns, rows), resample=Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    picture.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()
