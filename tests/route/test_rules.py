"""Routing rules: ordered, case-insensitive regular expressions, excludes, own objects."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_node.cli import main
from dicom_node.config import Route
from dicom_node.identity import MANUFACTURER, MANUFACTURER_MODEL_NAME
from dicom_node.route.rules import SeriesTags, evaluate, tags_for
from tests.dicom_files import pydicom_file


def _route(name: str, **kw: object) -> Route:
    kw.setdefault("forward", True)
    kw.setdefault("destinations", ("pacs",))
    return Route.model_validate({"name": name, **kw})


def _ds(**attrs: str) -> Dataset:
    ds = Dataset()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


CHEST = _route("chest", match={"Modality": "^(CR|DX)$", "BodyPartExamined": "^chest$"})
BRAIN = _route("brain", match={"Modality": "^MR$", "BodyPartExamined": "^(BRAIN|HEAD)$"})
ANY_CT = _route("ct", match={"Modality": "^CT$"}, exclude={"ImageType": "LOCALIZER"})


def test_first_matching_route_wins_case_insensitively() -> None:
    decision = evaluate([CHEST, BRAIN], tags_for(_ds(Modality="DX", BodyPartExamined="CHEST")))
    assert [r.name for r in decision.routes] == ["chest"]
    assert decision.reasons[0].startswith("chest: taken")


def test_mismatch_reason_names_the_tag() -> None:
    decision = evaluate([CHEST], tags_for(_ds(Modality="DX", BodyPartExamined="HAND")))
    assert not decision.routed
    assert "BodyPartExamined='HAND' does not match" in decision.reasons[0]
    assert decision.summary == "unrouted: no route matched"


def test_exclude_and_multivalued_image_type() -> None:
    scout = _ds(Modality="CT")
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    decision = evaluate([ANY_CT], tags_for(scout))
    assert not decision.routed
    assert "matches exclude" in decision.reasons[0]
    axial = _ds(Modality="CT")
    axial.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert evaluate([ANY_CT], tags_for(axial)).routed


def test_continue_takes_several_routes_and_disabled_is_skipped() -> None:
    first = _route("a", match={"Modality": "CT"}, **{"continue": True})
    off = _route("b", match={"Modality": "CT"}, enabled=False)
    last = _route("c", match={"Modality": "CT"})
    never = _route("d", match={"Modality": "CT"})
    decision = evaluate([first, off, last, never], tags_for(_ds(Modality="CT")))
    assert [r.name for r in decision.routes] == ["a", "c"]
    assert "b: disabled" in decision.reasons


def test_calling_ae_and_any_keyword() -> None:
    route = _route("from-er", match={"CallingAETitle": "^ER_", "StationName": "room ?3"})
    ds = _ds(StationName="ROOM3")
    assert evaluate([route], tags_for(ds, "ER_CT1")).routed
    assert not evaluate([route], tags_for(ds, "OTHER")).routed
    assert evaluate([route], SeriesTags({"CallingAETitle": "ER_X", "StationName": "room 3"})).routed


def test_route_waits_for_missing_model_weights() -> None:
    route = Route.model_validate({"name": "m", "models": ["x"], "match": {"Modality": "CT"}})
    decision = evaluate([route], tags_for(_ds(Modality="CT")), model_available=lambda _m: False)
    assert not decision.routed
    assert decision.reasons == ("m: waiting for weights of x",)


def test_own_objects_are_never_routed() -> None:
    ours = _ds(
        Modality="CT", Manufacturer=MANUFACTURER, ManufacturerModelName=MANUFACTURER_MODEL_NAME
    )
    decision = evaluate([ANY_CT], tags_for(ours))
    assert decision.own_object and not decision.routed
    # A device that only shares the manufacturer name is routed normally.
    other = _ds(Modality="CT", Manufacturer=MANUFACTURER, ManufacturerModelName="Scanner 9000")
    assert evaluate([ANY_CT], tags_for(other)).routed


def test_route_command_prints_rule_and_reasons(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 104\n'
        '[[routes]]\nname = "mr-brain"\nmatch = { Modality = "^MR$" }\nforward = true\n'
        'destinations = ["pacs"]\n'
        '[[routes]]\nname = "ct"\nmatch = { Modality = "^CT$" }\nforward = true\n'
        'destinations = ["pacs"]\n'
    )
    ct = pydicom_file("CT_small.dcm")
    garbage = tmp_path / "not-dicom.txt"
    garbage.write_text("hello")
    status = main(["--config", str(config), "route", str(ct), str(garbage)])
    captured = capsys.readouterr()
    out = captured.out
    assert status == 1  # one file was unreadable
    assert f"{ct}: routed: ct" in out
    assert "mr-brain: Modality='CT' does not match /^MR$/" in out
    assert "=> ct: models no model + forward -> pacs" in out
    # The unreadable file: one line on stderr naming it and what to give instead.
    assert captured.err.count("\n") == 1
    assert f"{garbage} is not a DICOM file" in captured.err
    assert pydicom.dcmread(ct).Modality == "CT"
