"""Deterministic result UIDs: same inputs, same UIDs; any input changed, another UID."""

from __future__ import annotations

import pytest
from pydicom.uid import UID, generate_uid

from dicom_node.results import uids

SERIES = "1.2.826.0.1.3680043.8.498.1"


def instance(**changes: object) -> str:
    args: dict[str, object] = {
        "source_series_uid": SERIES,
        "model_id": "m",
        "model_version": "1.0",
        "kind": "sr",
        "generation": 0,
        "index": 0,
        "variant": "",
    }
    args.update(changes)
    return uids.result_instance_uid(**args)  # type: ignore[arg-type]


def test_uids_are_valid_2_25_uids() -> None:
    for uid in (
        instance(),
        uids.result_series_uid(SERIES, "m", "sc"),
        uids.model_device_uid("m", "1.0"),
        uids.finding_tracking_uid(SERIES, "m"),
    ):
        assert uid.startswith("2.25.")
        assert UID(uid).is_valid
        assert len(uid) <= 64


def test_same_inputs_give_the_same_uid() -> None:
    assert instance() == instance()
    assert uids.result_series_uid(SERIES, "m", "sr") == uids.result_series_uid(SERIES, "m", "sr")


@pytest.mark.parametrize(
    "change",
    [
        {"source_series_uid": SERIES + "1"},
        {"model_id": "other"},
        {"model_version": "1.1"},
        {"kind": "pdf"},
        {"generation": 1},
        {"index": 1},
        {"variant": "comprehensive"},
    ],
)
def test_every_input_changes_the_instance_uid(change: dict[str, object]) -> None:
    assert instance(**change) != instance()


def test_series_uid_is_stable_across_versions_and_generations() -> None:
    # Only (source series, model id, kind) name the series: one AI series per model.
    series = uids.result_series_uid(SERIES, "m", "sr")
    assert series != uids.result_series_uid(SERIES, "m", "sc")
    assert series != uids.result_series_uid(SERIES, "n", "sr")


def test_device_uid_changes_with_model_version() -> None:
    assert uids.model_device_uid("m", "1.0") != uids.model_device_uid("m", "1.1")


def test_parts_cannot_run_into_each_other() -> None:
    # pydicom's generate_uid joins its entropy sources without a separator.
    assert uids.name_based_uid("x", "ab", "c") != uids.name_based_uid("x", "a", "bc")
    assert uids.name_based_uid("x", "1") != uids.name_based_uid("x", 1)


def test_pydicom_generate_uid_without_prefix_is_random() -> None:
    # Why uids.py does not use generate_uid(prefix=None, entropy_srcs=...): it ignores the
    # entropy and returns a random UUID-based UID.
    first = generate_uid(prefix=None, entropy_srcs=["same"])
    assert first != generate_uid(prefix=None, entropy_srcs=["same"])


@pytest.mark.parametrize(
    "change",
    [
        {"source_series_uid": "1.2.abc"},
        {"source_series_uid": ""},
        {"model_id": " "},
        {"model_version": ""},
        {"kind": "seg"},
        {"generation": -1},
        {"generation": True},
        {"index": -2},
    ],
)
def test_invalid_inputs_raise_value_error(change: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        instance(**change)
