"""Where a heatmap points: the region around its peak, as a polygon in image coordinates.

A viewer draws an SR finding only where the SR gives it a place (a SCOORD on the source
image). The place of a classifier's finding is the hot spot of its explanation map, so
the region reported is:

* the pixels whose map value is at least :data:`REGION_FRACTION` (one half) of the map's
  peak, the usual "full width at half maximum" cut, which keeps the spot and drops the
  faint tails every Grad-CAM has;
* of those, the connected part that holds the peak (a second, weaker spot is a different
  place and would make the outline meaningless);
* outlined by its convex hull, a closed polygon of few vertices that every viewer draws.
  The hull can include some pixels below the cut when the spot is not convex; it never
  leaves out one above it.

Coordinates follow the SR's image coordinate convention (PS3.3 C.18.6.1.1): column, row,
with (0, 0) the top left corner of the top left pixel, so a pixel's centre is at +0.5.
The map is sampled on a grid of at most :data:`GRID_SIDE` cells per side first; a
Grad-CAM map is 5 x 5 to 14 x 14 cells upsampled, so the outline loses nothing a reader
could see and a 2k x 2k radiograph costs milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from scipy.spatial import ConvexHull

# The fraction of the map's peak that bounds the reported region (half maximum).
REGION_FRACTION: Final = 0.5
# Longest side of the grid the region is traced on.
GRID_SIDE: Final = 256


@dataclass(frozen=True)
class Region:
    """The outlined region of a map and its peak, in image coordinates (column, row).

    ``outline`` is a closed polygon: its last vertex repeats the first, as DICOM asks of
    a closed POLYLINE (PS3.3 C.10.5.1.2).
    """

    outline: npt.NDArray[np.float64]  # (n, 2), n >= 4
    peak: tuple[float, float]


def peak_region(cam: npt.NDArray[np.floating], fraction: float = REGION_FRACTION) -> Region | None:
    """Outline the region of ``cam`` at or above ``fraction`` of its peak.

    Parameters
    ----------
    cam
        (rows, columns) map, any non-negative scale.
    fraction
        Share of the peak that bounds the region, in (0, 1].

    Returns
    -------
    Region or None
        None when the map has no positive value: it points nowhere.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], not {fraction}")
    values = np.nan_to_num(np.asarray(cam, dtype=np.float32))
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"cam must be a non-empty 2-D map, got shape {values.shape}")
    rows, columns = values.shape
    peak_index = np.unravel_index(int(values.argmax()), values.shape)
    peak_value = float(values[peak_index])
    if peak_value <= 0.0:
        return None
    step = max(1, math.ceil(max(rows, columns) / GRID_SIDE))
    # Sample each cell at its centre pixel; the cell covers [i*step, (i+1)*step).
    grid = values[step // 2 :: step, step // 2 :: step] if step > 1 else values
    inside = grid >= fraction * peak_value
    cell = (
        min(int(peak_index[0]) // step, grid.shape[0] - 1),
        min(int(peak_index[1]) // step, grid.shape[1] - 1),
    )
    # The peak belongs to its region even when its cell's sample fell below the cut.
    inside[cell] = True
    labels, _ = ndimage.label(inside)
    component = labels == labels[cell]
    # Corners of the component's cells (its border cells suffice for the hull).
    border = component & ~ndimage.binary_erosion(component)
    cell_rows, cell_columns = np.nonzero(border)
    corners = [
        np.stack([(cell_columns + dc) * step, (cell_rows + dr) * step], axis=1)
        for dr in (0, 1)
        for dc in (0, 1)
    ]
    points = np.concatenate(corners).astype(np.float64)
    points[:, 0] = np.clip(points[:, 0], 0.0, columns)
    points[:, 1] = np.clip(points[:, 1], 0.0, rows)
    hull = ConvexHull(points)
    vertices = points[hull.vertices]  # counter-clockwise, not closed
    outline = np.concatenate([vertices, vertices[:1]])
    return Region(outline=outline, peak=(int(peak_index[1]) + 0.5, int(peak_index[0]) + 0.5))


def image_outline(rows: int, columns: int) -> npt.NDArray[np.float64]:
    """The closed polygon around a whole image of ``rows`` x ``columns`` pixels.

    A decision about a whole image or series has no smaller place; this outline gives it
    one that a viewer can draw, and says "the whole image" truthfully.
    """
    if rows < 1 or columns < 1:
        raise ValueError(f"an image has at least one row and column, not {rows} x {columns}")
    return np.array(
        [[0.0, 0.0], [columns, 0.0], [columns, rows], [0.0, rows], [0.0, 0.0]], dtype=np.float64
    )
