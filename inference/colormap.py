"""Perceptual colour maps (inferno, viridis) without matplotlib.

Heatmaps must read the same to everyone: a perceptually uniform map changes lightness
steadily with the value, so a brighter colour always means a stronger explanation,
which rainbow "jet" does not. The tables are computed from 6th-degree polynomial fits
of matplotlib's maps (Matt Zucker's public-domain fits, error below 1 % of full scale),
which saves a large plotting dependency for 2 x 21 numbers.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np
import numpy.typing as npt

ColormapName = Literal["inferno", "viridis"]

# Coefficients c0..c6 (rows) for R, G, B (columns): colour(t) = sum(c_i * t**i).
_FITS: dict[str, tuple[tuple[float, float, float], ...]] = {
    "viridis": (
        (0.2777273272234177, 0.005407344544966578, 0.3340998053353061),
        (0.1050930431085774, 1.404613529898575, 1.384590162594685),
        (-0.3308618287255563, 0.214847559468213, 0.09509516302823659),
        (-4.634230498983486, -5.799100973351585, -19.33244095627987),
        (6.228269936347081, 14.17993336680509, 56.69055260068105),
        (4.776384997670288, -13.74514537774601, -65.35303263337234),
        (-5.435455855934631, 4.645852612178535, 26.3124352495832),
    ),
    "inferno": (
        (0.0002189403691192265, 0.001651004631001012, -0.01948089843709184),
        (0.1065134194856116, 0.5639564367884091, 3.932712388889277),
        (11.60249308247187, -3.972853965665698, -15.9423941062914),
        (-41.70399613139459, 17.43639888205313, 44.35414519872813),
        (77.162935699427, -33.40235894210092, -81.80730925738993),
        (-71.31942824499214, 32.62606426397723, 73.20951985803202),
        (25.13112622477341, -12.24266895238567, -23.07032500287172),
    ),
}


@lru_cache(maxsize=4)
def lookup_table(name: ColormapName = "inferno") -> npt.NDArray[np.float32]:
    """Return a (256, 3) float32 table of RGB colours in 0..1 (cached: do not modify)."""
    coefficients = np.asarray(_FITS[name], dtype=np.float64)
    t = np.linspace(0.0, 1.0, 256)[:, None]
    powers = t ** np.arange(coefficients.shape[0])[None, :]
    return np.clip(powers @ coefficients, 0.0, 1.0).astype(np.float32)


def apply(
    values: npt.NDArray[np.floating], name: ColormapName = "inferno"
) -> npt.NDArray[np.float32]:
    """Map values in 0..1 to RGB colours in 0..1 (shape ``values.shape + (3,)``)."""
    index = np.clip(np.rint(np.nan_to_num(values) * 255.0), 0, 255).astype(np.intp)
    return lookup_table(name)[index]
