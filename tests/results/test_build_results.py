"""build_results: all objects of one result, valid, with idempotent UIDs and versioning."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import cast

import highdicom as hd
import pytest
from pydicom.dataset import Dataset

from dicom_node import identity
from dicom_node.results import (
    Predecessor,
    ResultObject,
    build_results,
    predecessor_for,
)
from inference.types import SeriesPrediction
from tests.dicom_validate import assert_dciodvfy_clean, assert_dsrdump_ok

WriteDicom = Callable[[Dataset, str], Path]

pytestmark = pytest.mark.filterwarnings("ignore:The string .* is unlikely:UserWarning")


def uid_map(results: list[ResultObject]) -> list[tuple[str, str, str]]:
    return [(r.kind, r.series_instance_uid, r.sop_instance_uid) for r in results]


@pytest.mark.dcmtk
def test_all_objects_are_valid_and_ours(
    brain_prediction: SeriesPrediction, emri: Dataset, write_dicom: WriteDicom
) -> None:
    results = build_results([emri], brain_prediction, generation=0, key_slices=2)
    assert [r.kind for r in results] == ["sr", "sc", "sc", "pdf"]
    for number, result in enumerate(results):
        path = write_dicom(result.dataset, f"all-{number}-{result.kind}")
        assert_dciodvfy_clean(path)
        if result.kind == "sr":
            assert_dsrdump_ok(path)
        # Routing recognises our own objects by Manufacturer when a PACS forwards them.
        assert result.dataset.Manufacturer == identity.MANUFACTURER
        assert result.dataset.StudyInstanceUID == emri.StudyInstanceUID
    frames = [r.dataset.SourceImageSequence[0].ReferencedFrameNumber for r in results[1:3]]
    assert frames == [4, 7]  # key slices in the runtime's order
    assert [r.dataset.InstanceNumber for r in results[1:3]] == [1, 2]


def test_same_input_gives_the_same_uids(
    pneumonia_prediction: SeriesPrediction, cr: Dataset
) -> None:
    first = build_results([cr], pneumonia_prediction, generation=0)
    again = build_results([cr], pneumonia_prediction, generation=0)
    assert uid_map(first) == uid_map(again)
    assert len({r.sop_instance_uid for r in first}) == len(first)


def test_new_generation_is_a_new_version_in_the_same_series(
    pneumonia_prediction: SeriesPrediction, cr: Dataset, write_dicom: WriteDicom
) -> None:
    first = build_results([cr], pneumonia_prediction, generation=0)
    predecessor = Predecessor.from_dataset(first[0].dataset)
    later = build_results([cr], pneumonia_prediction, generation=1, predecessor=predecessor)
    assert [r.series_instance_uid for r in later] == [r.series_instance_uid for r in first]
    assert not {r.sop_instance_uid for r in later} & {r.sop_instance_uid for r in first}
    sr = later[0].dataset
    assert_dciodvfy_clean(write_dicom(sr, "generation-1-sr"))
    referenced = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert referenced.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        first[0].sop_instance_uid
    )
    assert sr.InstanceNumber == 2
    assert later[1].dataset.InstanceNumber == 2  # numbering goes on after generation 0


def test_predecessor_for_names_the_previous_generation(
    pneumonia_prediction: SeriesPrediction, cr: Dataset
) -> None:
    model = pneumonia_prediction.model
    assert predecessor_for([cr], model, 0, "comprehensive3d") is None
    first = build_results([cr], pneumonia_prediction, generation=0, sr_class="comprehensive")
    predecessor = predecessor_for([cr], model, 1, "comprehensive")
    assert predecessor == Predecessor.from_dataset(first[0].dataset)


def test_each_sr_class_is_its_own_object(
    pneumonia_prediction: SeriesPrediction, cr: Dataset
) -> None:
    # One job may build a 3D SR for one PACS and a Comprehensive SR for another: two
    # different objects must not share a SOP Instance UID. SC and PDF are the same.
    three_d = build_results([cr], pneumonia_prediction, generation=0)
    plain = build_results([cr], pneumonia_prediction, generation=0, sr_class="comprehensive")
    assert three_d[0].sop_instance_uid != plain[0].sop_instance_uid
    assert three_d[0].dataset.SOPClassUID != plain[0].dataset.SOPClassUID
    assert uid_map(three_d)[1:] == uid_map(plain)[1:]


def test_options_select_the_objects(pneumonia_prediction: SeriesPrediction, cr: Dataset) -> None:
    assert [r.kind for r in build_results([cr], pneumonia_prediction, generation=0)] == [
        "sr",
        "sc",
        "pdf",
    ]
    only_sr = build_results(
        [cr], pneumonia_prediction, generation=0, include_pdf=False, key_slices=0
    )
    assert [r.kind for r in only_sr] == ["sr"]
    # More key slices than heatmaps: as many SCs as there are heatmaps.
    many = build_results([cr], pneumonia_prediction, generation=0, key_slices=5)
    assert [r.kind for r in many].count("sc") == 1


def test_sr_reads_back_with_highdicom(
    pneumonia_prediction: SeriesPrediction, cr: Dataset, write_dicom: WriteDicom
) -> None:
    (sr, *_) = build_results([cr], pneumonia_prediction, generation=0)
    report = hd.sr.srread(write_dicom(sr.dataset, "build-results-sr"))
    (group,) = cast(hd.sr.MeasurementReport, report.content).get_image_measurement_groups()
    assert group.get_measurements()[0].value == pytest.approx(0.87)


@pytest.mark.parametrize("problem", ["foreign heatmap", "negative key slices", "no sources"])
def test_invalid_input_raises_value_error(
    problem: str, pneumonia_prediction: SeriesPrediction, cr: Dataset
) -> None:
    sources, prediction, key_slices = [cr], pneumonia_prediction, 1
    if problem == "foreign heatmap":
        heatmap = dataclasses.replace(pneumonia_prediction.heatmaps[0], sop_instance_uid="1.2.3")
        prediction = dataclasses.replace(pneumonia_prediction, heatmaps=(heatmap,))
    elif problem == "negative key slices":
        key_slices = -1
    else:
        sources = []
    with pytest.raises(ValueError):
        build_results(sources, prediction, generation=0, key_slices=key_slices)
