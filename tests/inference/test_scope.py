"""The intended use a manifest states, checked from real DICOM headers."""

from __future__ import annotations

import copy

import pytest
from pydantic import ValidationError
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from inference.scope import ScopeSpec, age_in_years

CHEST = ScopeSpec(
    modalities=["cr", "DX"],
    body_parts=["CHEST"],
    view_positions=["AP", "PA"],
    min_age_years=0,
    max_age_years=17,
)


def _header(name: str) -> Dataset:
    path = get_testdata_file(name)
    assert path is not None, f"{name} is missing (pip install pydicom-data)"
    return dcmread(str(path), stop_before_pixels=True)


def test_an_adult_chest_film_is_outside_a_pediatric_scope() -> None:
    cr = _header("RG1_UNCI.dcm")  # CR, CHEST, PA, born 1940-03-05, content 1995-09-26
    assert age_in_years(cr) == 55  # at the image's content date, not the 2004 study date
    assert CHEST.violations(cr) == ("patient age 55 years, intended 0-17 years",)
    assert CHEST.describe() == "CR or DX; body part CHEST; view AP or PA; age 0-17 years"


def test_every_failed_check_is_a_reason() -> None:
    extremity = _header("RG3_UNCI.dcm")  # CR, EXTREMITY, AP, born 1979, acquired 1992
    assert age_in_years(extremity) == 13  # the acquisition date wins over the study date
    assert CHEST.violations(extremity) == ("body part EXTREMITY, intended CHEST",)
    ct = _header("CT_small.dcm")  # CT, no body part, Patient's Age 000Y
    assert CHEST.violations(ct) == ("modality CT, intended CR or DX",)


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({"PatientAge": "017Y"}, 17),
        ({"PatientAge": "018Y"}, 18),
        ({"PatientAge": "030M"}, 2),
        ({"PatientAge": "006W"}, 0),
        ({"PatientAge": "17Y"}, None),  # not an Age String
        ({"PatientBirthDate": "20000301", "StudyDate": "20180228"}, 17),  # day before
        ({"PatientBirthDate": "20000301", "StudyDate": "20180301"}, 18),  # the birthday
        ({"PatientBirthDate": "20000301"}, None),  # no date of the image
        ({"PatientBirthDate": "", "StudyDate": "20180301"}, None),  # anonymised
        ({"PatientBirthDate": "20001301", "StudyDate": "20180301"}, None),  # invalid
        ({"PatientBirthDate": "20200101", "StudyDate": "20180301"}, None),  # born later
    ],
)
def test_age_in_completed_years(attributes: dict[str, str], expected: int | None) -> None:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    assert age_in_years(ds) == expected


def test_unknown_values_are_not_flagged() -> None:
    cr = copy.deepcopy(_header("RG1_UNCI.dcm"))
    del cr.PatientBirthDate, cr.BodyPartExamined, cr.ViewPosition
    assert CHEST.violations(cr) == ()
    assert ScopeSpec().violations(cr) == () and ScopeSpec().describe() == ""


def test_scope_validation() -> None:
    with pytest.raises(ValidationError, match="above max_age_years"):
        ScopeSpec(min_age_years=18, max_age_years=17)
    with pytest.raises(ValidationError):
        ScopeSpec.model_validate({"ages": [0, 17]})  # unknown key: a typo is an error
