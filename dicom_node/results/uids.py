"""Deterministic UIDs for the objects the node sends back to the PACS.

A job may run more than once: a worker crashes after sending half its results, a delivery
is retried, an operator re-runs a series. If every run minted fresh UIDs, the PACS would
store every run as new objects and the study would fill with duplicates. Instead every UID
here is *name-based*: the same inputs always give the same UID, so a re-sent object
replaces the one the PACS already holds (same SOP Instance UID) instead of adding to it.

Policy
------
* Series Instance UID: from (source series, model id, result kind). It stays the same
  across model versions and generations, so a viewer shows one AI series per model and
  kind, and a newer result appears in the series it already knows.
* SOP Instance UID: from (source series, model id, model version, kind, generation,
  index, variant), the variant being the SR class for SRs. A new ``generation`` (the
  series was processed again because late instances arrived) or a new model version
  gives a *new* instance in the same series; the new SR names the old one in its
  Predecessor Documents Sequence.
* Device UID of the model (IHE AI Results, Contributing Equipment and the SR device
  observer): from (model id, model version), so it changes exactly when the model does.
* Tracking UID of the finding (TID 4108): from (source series, model id), so the same
  finding keeps its identity across generations and versions; an image-level finding's
  from (source series, model id, image instance, frame).

Why not ``pydicom.uid.generate_uid(prefix=None, entropy_srcs=...)``
------------------------------------------------------------------
pydicom 3 ignores ``entropy_srcs`` when ``prefix`` is ``None`` and returns a random
``2.25.<uuid4>`` UID, so it is not deterministic. With a prefix it hashes
``"".join(entropy_srcs)``, so ``["ab", "c"]`` and ``["a", "bc"]`` collide, and
``2.25.`` + a 512-bit hash is not a valid UUID-derived UID. We therefore build the UID the
way ISO/IEC 9834-8 (PS3.5 B.2) intends: a name-based (version 5) UUID of an unambiguous
JSON encoding of the inputs, written as ``2.25.<decimal UUID>`` (at most 44 characters).
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Final, Literal, get_args

ResultKind = Literal["sr", "sc", "pdf"]
RESULT_KINDS: Final[tuple[ResultKind, ...]] = get_args(ResultKind)

# uuid5(NAMESPACE_URL, "urn:dicom-node:result-uids"), fixed here so that a change of
# this module cannot silently change every UID the node has ever sent.
_NAMESPACE: Final = uuid.UUID("c86c7de3-efd5-53ee-855a-5073be25e0f7")

# UIDs from the network must look like UIDs before they become names of other UIDs.
_UID_PATTERN: Final = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def name_based_uid(purpose: str, *parts: str | int) -> str:
    """Return the ``2.25.`` UID of a version 5 UUID over ``purpose`` and ``parts``.

    Parameters
    ----------
    purpose : str
        What the UID names (``"series"``, ``"instance"``...). Part of the name so that two
        kinds of UID never coincide even when built from the same values.
    *parts : str or int
        The values the UID depends on.

    Returns
    -------
    str
        A UID of at most 44 characters under the ``2.25`` arc.
    """
    # JSON keeps the parts apart ("ab","c" differs from "a","bc") and keeps str 1 != int 1.
    name = json.dumps([purpose, *parts], separators=(",", ":"), ensure_ascii=True)
    return f"2.25.{uuid.uuid5(_NAMESPACE, name).int}"


def _check_uid(value: str, what: str) -> None:
    if not (0 < len(value) <= 64 and _UID_PATTERN.match(value)):
        raise ValueError(f"{what} is not a valid DICOM UID: {value!r}")


def _check_text(value: str, what: str) -> None:
    if not value or not value.strip():
        raise ValueError(f"{what} must not be empty")


def _check_kind(kind: str) -> None:
    if kind not in RESULT_KINDS:
        raise ValueError(f"result kind must be one of {RESULT_KINDS}, not {kind!r}")


def _check_count(value: int, what: str) -> None:
    # bool is an int in Python; True as a generation is always a caller's bug.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, not {value!r}")


def result_series_uid(source_series_uid: str, model_id: str, kind: ResultKind) -> str:
    """Series Instance UID of the results of one kind from one model on one series.

    Independent of model version and generation: a viewer keeps showing one AI series per
    model and kind, and newer results land in it.
    """
    _check_uid(source_series_uid, "source series UID")
    _check_text(model_id, "model id")
    _check_kind(kind)
    return name_based_uid("series", source_series_uid, model_id, kind)


def result_instance_uid(
    source_series_uid: str,
    model_id: str,
    model_version: str,
    kind: ResultKind,
    generation: int,
    index: int = 0,
    variant: str = "",
) -> str:
    """SOP Instance UID of one result object.

    Parameters
    ----------
    source_series_uid : str
        Series Instance UID of the analysed series.
    model_id, model_version : str
        The model that produced the result.
    kind : {"sr", "sc", "pdf"}
        Kind of result object.
    generation : int
        0 for the first processing of the series, incremented each time the series is
        processed again with different input (late instances). A retry of the same job
        keeps its generation and therefore its UIDs, so the PACS replaces, not adds.
    index : int, optional
        Position of the object among those of the same kind (key slice number for
        Secondary Captures), 0 otherwise.
    variant : str, optional
        What else tells two objects of the same kind apart: the SR class for SRs, since
        one job may build a Comprehensive 3D SR for one PACS and a Comprehensive SR for
        another, and two different objects must never share a SOP Instance UID.
    """
    _check_uid(source_series_uid, "source series UID")
    _check_text(model_id, "model id")
    _check_text(model_version, "model version")
    _check_kind(kind)
    _check_count(generation, "generation")
    _check_count(index, "index")
    return name_based_uid(
        "instance", source_series_uid, model_id, model_version, kind, generation, index, variant
    )


def model_device_uid(model_id: str, model_version: str) -> str:
    """Device UID of a model version (IHE AI Results: changes with the model version)."""
    _check_text(model_id, "model id")
    _check_text(model_version, "model version")
    return name_based_uid("device", model_id, model_version)


def finding_tracking_uid(source_series_uid: str, model_id: str) -> str:
    """Tracking Unique Identifier (TID 4108) of the finding one model reports on a series.

    Stable across generations and versions: it names the finding, not the report.
    """
    _check_uid(source_series_uid, "source series UID")
    _check_text(model_id, "model id")
    return name_based_uid("tracking", source_series_uid, model_id)


def image_finding_tracking_uid(
    source_series_uid: str, model_id: str, sop_instance_uid: str, frame: int | None
) -> str:
    """Tracking Unique Identifier of the finding one model reports on one image (frame).

    Stable across generations and versions, like :func:`finding_tracking_uid`, and
    different for every image and frame, so a viewer keeps the regions of two key images
    apart (OHIF merges measurement groups that share a Tracking UID).
    """
    _check_uid(source_series_uid, "source series UID")
    _check_text(model_id, "model id")
    _check_uid(sop_instance_uid, "image SOP Instance UID")
    if frame is not None:
        _check_count(frame, "frame")
    return name_based_uid(
        "tracking-image", source_series_uid, model_id, sop_instance_uid, frame or 0
    )
