"""The part of a model's intended use that the node can check from DICOM headers.

A model trained on one population answers for any image it is given: the chest model was
trained on films of children aged one to five, and it classifies an adult's film just as
readily. Its manifest may therefore state, in a ``[scope]`` table, which studies it is
meant for (modality, body part, view, patient age); a series outside that still gets
results, but every result object and page says so (``SeriesPrediction.out_of_scope``).

Only what the header says can be checked. A missing value (no Body Part Examined, an
anonymised study without age or birth date) is not flagged: the check cannot tell that
the study is outside, and a model whose use depends on it should say so in
``intended_use``, which every report prints.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydicom.dataset import Dataset

# Age String (AS, PS3.5 6.2): three digits and a unit, days, weeks, months or years.
_AGE_STRING = re.compile(r"^(\d{3})([DWMY])$")
_DAYS_PER_UNIT = {"D": 1.0, "W": 7.0, "M": 365.25 / 12.0, "Y": 365.25}
# The dates an age can be computed at, most specific first (the film's own date wins).
_DATE_KEYWORDS = ("AcquisitionDate", "ContentDate", "SeriesDate", "StudyDate")


class ScopeSpec(BaseModel):
    """``[scope]`` of ``model.toml``: which studies the model is meant for.

    Every key is optional; an empty list or a missing bound does not restrict.
    ``modalities``, ``body_parts`` and ``view_positions`` compare with Modality, Body
    Part Examined and View Position (upper case); ages are in completed years, both
    bounds included (``max_age_years = 17``: up to the day before the 18th birthday).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    modalities: list[Annotated[str, Field(min_length=1, max_length=16)]] = Field(
        default_factory=list
    )
    body_parts: list[Annotated[str, Field(min_length=1, max_length=16)]] = Field(
        default_factory=list
    )
    view_positions: list[Annotated[str, Field(min_length=1, max_length=16)]] = Field(
        default_factory=list
    )
    min_age_years: Annotated[int, Field(ge=0, le=150)] | None = None
    max_age_years: Annotated[int, Field(ge=0, le=150)] | None = None

    @field_validator("modalities", "body_parts", "view_positions")
    @classmethod
    def _upper(cls, values: list[str]) -> list[str]:
        # DICOM code strings (CS) are upper case; accept any case in the manifest.
        return [v.strip().upper() for v in values]

    @model_validator(mode="after")
    def _ordered_ages(self) -> ScopeSpec:
        low, high = self.min_age_years, self.max_age_years
        if low is not None and high is not None and low > high:
            raise ValueError(f"min_age_years {low} is above max_age_years {high}")
        return self

    def describe(self) -> str:
        """The scope in words, e.g. ``CR or DX; body part CHEST; age 0-17 years``."""
        parts = []
        if self.modalities:
            parts.append(" or ".join(self.modalities))
        if self.body_parts:
            parts.append("body part " + " or ".join(self.body_parts))
        if self.view_positions:
            parts.append("view " + " or ".join(self.view_positions))
        low, high = self.min_age_years, self.max_age_years
        if low is not None and high is not None:
            parts.append(f"age {low}-{high} years")
        elif low is not None:
            parts.append(f"age {low} years or more")
        elif high is not None:
            parts.append(f"age up to {high} years")
        return "; ".join(parts)

    def violations(self, dataset: Dataset) -> tuple[str, ...]:
        """Why ``dataset`` is outside the scope, one reason per failed check.

        Parameters
        ----------
        dataset
            An instance of the series (its header suffices).

        Returns
        -------
        tuple of str
            Empty when the header shows nothing outside the scope.
        """
        reasons = []
        for keyword, allowed, what in (
            ("Modality", self.modalities, "modality"),
            ("BodyPartExamined", self.body_parts, "body part"),
            ("ViewPosition", self.view_positions, "view"),
        ):
            value = str(dataset.get(keyword) or "").strip().upper()
            if allowed and value and value not in allowed:
                reasons.append(f"{what} {value}, intended {' or '.join(allowed)}")
        age = age_in_years(dataset)
        low, high = self.min_age_years, self.max_age_years
        if age is not None and (
            (low is not None and age < low) or (high is not None and age > high)
        ):
            reasons.append(f"patient age {age} years, intended {self._age_range()}")
        return tuple(reasons)

    def _age_range(self) -> str:
        low, high = self.min_age_years, self.max_age_years
        if low is not None and high is not None:
            return f"{low}-{high} years"
        return f"{low} years or more" if low is not None else f"up to {high} years"


def age_in_years(dataset: Dataset) -> int | None:
    """The patient's age in completed years at the time of the image, if the header says.

    Patient's Age (0010,1010) when present and well formed; otherwise the difference
    between Patient's Birth Date and the image's date (acquisition, content, series or
    study date, the first present). None when neither is known or a date is invalid.
    """
    match = _AGE_STRING.match(str(dataset.get("PatientAge") or "").strip())
    if match:
        days = int(match.group(1)) * _DAYS_PER_UNIT[match.group(2)]
        return int(days // 365.25) if match.group(2) != "Y" else int(match.group(1))
    born = _date(dataset.get("PatientBirthDate"))
    if born is None:
        return None
    for keyword in _DATE_KEYWORDS:
        taken = _date(dataset.get(keyword))
        if taken is not None and taken >= born:
            had_birthday = (taken.month, taken.day) >= (born.month, born.day)
            return taken.year - born.year - (0 if had_birthday else 1)
    return None


def _date(value: object) -> dt.date | None:
    text = str(value or "").strip()
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None
