"""Which route (models, destinations) a series takes: a pure function of tags and rules.

Rules are data in the configuration (like MONAI Deploy's series selection), evaluated in
order; the explanation of every decision is returned with it, so ``dicom-node route`` and the
admin page can say *why* a series went where it went.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from pydicom.dataset import Dataset

from dicom_node.config import Route
from dicom_node.identity import MANUFACTURER, MANUFACTURER_MODEL_NAME
from dicom_node.receive.header import tag_text

CALLING_AE_KEY = "CallingAETitle"


@dataclass(frozen=True)
class RouteDecision:
    routes: tuple[Route, ...]
    reasons: tuple[str, ...]
    own_object: bool = False

    @property
    def routed(self) -> bool:
        return bool(self.routes)

    @property
    def summary(self) -> str:
        if self.own_object:
            return "ignored: created by this node"
        if not self.routes:
            return "unrouted: no route matched"
        return "routed: " + ", ".join(r.name for r in self.routes)


@dataclass(frozen=True)
class SeriesTags:
    """Tag values used for routing, as text (multi-values joined with a backslash)."""

    values: Mapping[str, str] = field(default_factory=dict)
    dataset: Dataset | None = None

    def get(self, keyword: str) -> str:
        if keyword in self.values:
            return self.values[keyword]
        if self.dataset is None:
            return ""
        return tag_text(self.dataset, keyword)


def is_own_object(ds: Dataset) -> bool:
    """Objects this node built carry our Manufacturer and model name (``identity.py``).

    A PACS that auto-forwards everything it receives would otherwise send our SR and SC back
    and start a loop; checking both attributes keeps a foreign device that happens to be
    called "dicom-node" from being ignored by accident.
    """
    return (
        str(ds.get("Manufacturer", "")) == MANUFACTURER
        and str(ds.get("ManufacturerModelName", "")) == MANUFACTURER_MODEL_NAME
    )


@lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


def _first_mismatch(patterns: Mapping[str, str], tags: SeriesTags) -> str | None:
    for keyword, pattern in patterns.items():
        value = tags.get(keyword)
        if not _compiled(pattern).search(value):
            return f"{keyword}={value!r} does not match /{pattern}/"
    return None


def _first_match(patterns: Mapping[str, str], tags: SeriesTags) -> str | None:
    for keyword, pattern in patterns.items():
        value = tags.get(keyword)
        if _compiled(pattern).search(value):
            return f"{keyword}={value!r} matches exclude /{pattern}/"
    return None


def evaluate(
    routes: Iterable[Route],
    tags: SeriesTags,
    *,
    model_available: Callable[[str], bool] = lambda _model: True,
) -> RouteDecision:
    """Evaluate the rules in order.

    A route is taken when it is enabled, every ``match`` pattern is found in its tag, no
    ``exclude`` pattern is, and all its models have weights; evaluation stops at the first
    route taken unless that route says ``continue = true``.
    """
    if tags.dataset is not None and is_own_object(tags.dataset):
        return RouteDecision((), ("created by this node (Manufacturer/model name)",), True)
    taken: list[Route] = []
    reasons: list[str] = []
    for route in routes:
        if not route.enabled:
            reasons.append(f"{route.name}: disabled")
            continue
        mismatch = _first_mismatch(route.match, tags)
        if mismatch:
            reasons.append(f"{route.name}: {mismatch}")
            continue
        excluded = _first_match(route.exclude, tags)
        if excluded:
            reasons.append(f"{route.name}: {excluded}")
            continue
        missing = [m for m in route.models if not model_available(m)]
        if missing:
            reasons.append(f"{route.name}: waiting for weights of {', '.join(missing)}")
            continue
        matched = ", ".join(f"{k}={tags.get(k)!r}" for k in route.match) or "no conditions"
        reasons.append(f"{route.name}: taken ({matched})")
        taken.append(route)
        if not route.continue_:
            break
    return RouteDecision(tuple(taken), tuple(reasons))


def tags_for(ds: Dataset, calling_ae: str = "") -> SeriesTags:
    return SeriesTags({CALLING_AE_KEY: calling_ae}, ds)
