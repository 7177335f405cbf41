"""How the node words a result for people: one probability format, one scope notice.

A probability printed next to a class is read as the probability *of that class*. The web
list once showed "NORMAL 0.048" (the probability of pneumonia next to the class NORMAL)
while the console showed "NORMAL 0.952" for the same study. Every place that shows a
result to a person (web list and detail page, ``predict`` and ``status``, the Secondary
Capture, the SR label OHIF draws, the PDF) therefore words it with :func:`call_text`: the
class, then the probability of that class, e.g. ``NORMAL P(NORMAL) = 0.95``.

OHIF draws an SR measurement as ``<concept name meaning>: <value to 2 decimals> <unit>``,
so the SR gives its probability NUM the meaning :func:`probability_label` and OHIF shows
``NORMAL P(NORMAL): 0.95 1``: the same words and the same two decimals.

This module is plain text handling with no imports from the rest of the node, so the web
process, the commands and the result builders can all use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

# Two decimals: OHIF prints NUM values with toFixed(2), and every other place matches it,
# so a person comparing the viewer with the admin page sees the same number.
DECIMALS: Final = 2

# The words that start every out-of-intended-use notice (SR comment, SC line, web badge).
OUT_OF_SCOPE: Final = "OUTSIDE INTENDED USE"

# Long Strings (LO, the SR Code Meaning) hold 64 characters.
_LO_MAX: Final = 64


def probability_value(probability: float) -> str:
    """A probability as shown everywhere: two decimals (``0.95``)."""
    return f"{probability:.{DECIMALS}f}"


def probability_label(label: str) -> str:
    """The name of the probability of ``label``: ``PNEUMONIA P(PNEUMONIA)``.

    Used as the Code Meaning of the SR's probability NUM items (OHIF draws it in front of
    the value); cut to the 64 characters a Code Meaning may hold.
    """
    text = f"{label} P({label})"
    if len(text) <= _LO_MAX:
        return text
    short = label[: (_LO_MAX - 4) // 2]
    return f"{short} P({short})"


def call_text(label: str, probability: float | None) -> str:
    """The class, then the probability of that class: ``NORMAL P(NORMAL) = 0.95``.

    ``probability`` None (a result stored before per-class probabilities were kept)
    shows the class alone.
    """
    if probability is None:
        return label
    return f"{label} P({label}) = {probability_value(probability)}"


def out_of_scope_text(reasons: Sequence[str]) -> str:
    """One line saying that a result is outside its model's intended use, and why."""
    if not reasons:
        return ""
    return f"{OUT_OF_SCOPE}: " + "; ".join(reasons)
