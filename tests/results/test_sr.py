"""TID 1500 Structured Report: valid for dciodvfy and dsrdump, and readable by highdicom."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import cast

import highdicom as hd
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage, ComprehensiveSRStorage, EnhancedSRStorage

from dicom_node import identity
from dicom_node.results import Predecessor, build_sr, uids
from dicom_node.results.sr import procedure_reported
from inference.types import PRIVATE_SCHEME, Concept, ModelInfo, SeriesPrediction
from tests.dicom_validate import assert_dciodvfy_clean, assert_dsrdump_ok
from tests.results.conftest import PredictionFactory, frames_of, replace, roundtrip

WriteDicom = Callable[[Dataset, str], Path]
SR_UIDS = {
    "comprehensive3d": Comprehensive3DSRStorage,
    "comprehensive": ComprehensiveSRStorage,
    "enhanced": EnhancedSRStorage,
}


def make_sr(sources: list[Dataset], prediction: SeriesPrediction, **kwargs: object) -> Dataset:
    series = str(sources[0].SeriesInstanceUID)
    model = prediction.model
    return build_sr(
        sources,
        prediction,
        series_uid=uids.result_series_uid(series, model.id, "sr"),
        instance_uid=uids.result_instance_uid(series, model.id, model.version, "sr", 0),
        **kwargs,  # type: ignore[arg-type]
    )


def read_back(path: Path) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """Read an SR file with highdicom and return its only measurement group."""
    (group,) = groups_of(path)
    return group


def groups_of(path: Path) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """Read an SR file with highdicom and return its measurement groups, in order."""
    sr = hd.sr.srread(path)
    return list(cast(hd.sr.MeasurementReport, sr.content).get_image_measurement_groups())


def drawn_labels(sr: Dataset) -> list[tuple[list[str], dict[str, object]]]:
    """What OHIF 3.13.2 draws for each measurement group, or an assertion error where it
    would throw.

    Mirrors ``_processNonGeometricallyDefinedMeasurement`` and
    ``_checkIfCanAddMeasurementsToDisplaySet`` of @ohif/extension-cornerstone-dicom-sr
    3.13.2 (read in its dist bundle): a group with a top-level SCOORD would take the TID
    1410 path instead, so there must be none; the label lines are the TEXT Comment items
    (as "<text>: "), then "<meaning>: <value to 2 decimals> <unit code>" of every NUM
    whose children hold a SCOORD; the first such SCOORD is where the group is drawn, and
    a group without one makes OHIF read ``coords[0].ReferencedSOPSequence`` of nothing.
    Returns, per group, (lines, first SCOORD's {"type", "points", "uid", "frame"}).
    """
    (imaging,) = [
        item for item in sr.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "126010"
    ]
    out = []
    for group in imaging.ContentSequence:
        items = list(group.ContentSequence)
        assert not [i for i in items if i.ValueType in ("SCOORD", "SCOORD3D")]
        assert len([i for i in items if i.ValueType == "UIDREF"]) == 1  # Tracking UID
        lines = [
            f"{i.TextValue}: "
            for i in items
            if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "121106"
        ]
        coords = []
        for num in (i for i in items if i.ValueType == "NUM"):
            scoords = [c for c in num.get("ContentSequence", []) if c.ValueType == "SCOORD"]
            if not scoords:
                continue  # OHIF skips the NUM: no label, no place
            scoord = scoords[0]
            assert scoord.RelationshipType == "INFERRED FROM"
            (image,) = scoord.ContentSequence
            (ref,) = image.ReferencedSOPSequence
            coords.append(
                {
                    "type": scoord.GraphicType,
                    "points": [float(v) for v in scoord.GraphicData],
                    "uid": ref.ReferencedSOPInstanceUID,
                    "frame": ref.get("ReferencedFrameNumber"),
                }
            )
            value = num.MeasuredValueSequence[0]
            unit = value.MeasurementUnitsCodeSequence[0].CodeValue
            meaning = num.ConceptNameCodeSequence[0].CodeMeaning
            lines.append(f"{meaning}: {float(value.NumericValue):.2f} {unit}")
        assert coords, "a group without a SCOORD makes OHIF throw"
        out.append((lines, coords[0]))
    return out


def about(measurement: hd.sr.Measurement) -> tuple[str, str]:
    """(code value, scheme) of the Finding modifier: what the probability is of."""
    finding = [i for i in measurement[0].ContentSequence if i.name.meaning == "Finding"]
    assert len(finding) == 1
    return finding[0].value.value, finding[0].value.scheme_designator


def key(concept: Concept) -> tuple[str, str]:
    return concept.value, concept.scheme_designator


SOURCE_CASES = [
    ("ct", "brain_model", {"glioma": 0.1, "meningioma": 0.7, "notumor": 0.1, "pituitary": 0.1}),
    ("mr", "brain_model", {"glioma": 0.05, "meningioma": 0.05, "notumor": 0.8, "pituitary": 0.1}),
    ("emri", "brain_model", {"glioma": 0.6, "meningioma": 0.2, "notumor": 0.1, "pituitary": 0.1}),
    ("cr", "pneumonia_model", {"NORMAL": 0.25, "PNEUMONIA": 0.75}),
    ("dx", "pneumonia_model", {"NORMAL": 0.9, "PNEUMONIA": 0.1}),
]


@pytest.mark.dcmtk
@pytest.mark.parametrize("sr_class", ["comprehensive3d", "comprehensive", "enhanced"])
@pytest.mark.parametrize(("source_name", "model_name", "probabilities"), SOURCE_CASES)
def test_sr_is_valid_and_reads_back(
    request: pytest.FixtureRequest,
    make_prediction: PredictionFactory,
    write_dicom: WriteDicom,
    source_name: str,
    model_name: str,
    probabilities: dict[str, float],
    sr_class: str,
) -> None:
    source: Dataset = request.getfixturevalue(source_name)
    model: ModelInfo = request.getfixturevalue(model_name)
    prediction = make_prediction(model, [source], probabilities, finding_present=False)
    sr = make_sr([source], prediction, sr_class=sr_class)
    path = write_dicom(sr, f"sr-{source_name}-{sr_class}")

    assert_dciodvfy_clean(path)
    assert_dsrdump_ok(path)
    assert sr.SOPClassUID == SR_UIDS[sr_class]
    group = read_back(path)

    predicted = group.get_qualitative_evaluations(
        name=hd.sr.CodedConcept("PREDCLASS", PRIVATE_SCHEME, "Predicted class")
    )
    assert [q[0].value.value for q in predicted] == [
        model.class_concepts[max(probabilities, key=lambda c: probabilities[c])].value
    ]

    measurements = group.get_measurements()
    # Every "Probability" NUM, the headline included (it stands for its class's item).
    class_numbers = {about(m): m.value for m in measurements if m.name.value == "122157"}
    for cls, value in probabilities.items():
        assert class_numbers[key(model.class_concepts[cls])] == pytest.approx(value)
    assert all(m.unit.value == "1" and m.unit.scheme_designator == "UCUM" for m in measurements)

    referenced = [s.referenced_sop_instance_uid for s in group.source_images]
    assert referenced == [source.SOPInstanceUID]
    evidence = {e[2] for e in hd.sr.srread(path).get_evidence()}
    assert evidence == {source.SOPInstanceUID}
    # Without a heatmap the result is drawn around the whole scored image.
    ((lines, place),) = drawn_labels(hd.sr.srread(path))
    predicted = max(probabilities, key=lambda c: probabilities[c])
    assert lines[-1] == f"{predicted} P({predicted}): {probabilities[predicted]:.2f} 1"
    assert place["uid"] == source.SOPInstanceUID
    assert place["points"] == [
        0, 0, source.Columns, 0, source.Columns, source.Rows, 0, source.Rows, 0, 0
    ]  # fmt: skip
    assert place["frame"] == (1 if "NumberOfFrames" in source else None)


def test_predicted_class_is_drawn_on_its_region(
    pneumonia_prediction: SeriesPrediction, cr: Dataset, write_dicom: WriteDicom
) -> None:
    path = write_dicom(make_sr([cr], pneumonia_prediction), "sr-drawn")
    assert_dciodvfy_clean(path)
    assert_dsrdump_ok(path)
    # One image whose map explains the predicted class: one group, drawn on its region.
    group = read_back(path)
    first, *others = group.get_measurements()
    assert (first.name.value, first.name.meaning) == ("122157", "PNEUMONIA P(PNEUMONIA)")
    assert first.value == pytest.approx(0.87)
    assert about(first) == ("263654008", "SCT")  # PNEUMONIA's concept
    assert [(m.name.meaning, m.value) for m in others] == [("NORMAL P(NORMAL)", 0.13)]
    assert first.referenced_coordinates is not None
    assert not any(m.referenced_coordinates for m in others)
    ((lines, place),) = drawn_labels(hd.sr.srread(path))
    assert lines == [f"{identity.NOT_FOR_DIAGNOSTIC_USE_SHORT}: ", "PNEUMONIA P(PNEUMONIA): 0.87 1"]
    assert place["type"] == "POLYLINE" and place["uid"] == cr.SOPInstanceUID
    assert place["frame"] is None
    points = np.array(place["points"]).reshape(-1, 2)
    assert np.array_equal(points[0], points[-1])  # closed
    assert (points >= 0).all() and (points[:, 0] <= cr.Columns).all()
    assert (points[:, 1] <= cr.Rows).all()
    # conftest's map peaks at (rows / 2, columns / 3): the outline surrounds that spot
    # and is far smaller than the image.
    peak = np.array([cr.Columns / 3, cr.Rows / 2])
    assert (points.min(axis=0) < peak).all() and (points.max(axis=0) > peak).all()
    width, height = points.max(axis=0) - points.min(axis=0)
    assert width < cr.Columns / 2 and height < cr.Rows / 2


def test_a_map_of_another_class_gets_its_own_group(
    pneumonia_model: ModelInfo,
    cr: Dataset,
    make_prediction: PredictionFactory,
    write_dicom: WriteDicom,
) -> None:
    # A NORMAL result whose map explains PNEUMONIA (explain.target = "positive").
    prediction = make_prediction(
        pneumonia_model, [cr], {"NORMAL": 0.96, "PNEUMONIA": 0.04}, [(cr, None)], False
    )
    heatmap = dataclasses.replace(
        prediction.heatmaps[0], target="PNEUMONIA", target_probability=0.04
    )
    prediction = replace(prediction, heatmaps=(heatmap,))
    path = write_dicom(make_sr([cr], prediction), "sr-other-class")
    assert_dciodvfy_clean(path)
    series, image = groups_of(path)
    assert series.tracking_identifier == "pneumonia-xception: Pneumonia"
    assert image.tracking_uid != series.tracking_uid
    (drawn_series, drawn_image) = drawn_labels(hd.sr.srread(path))
    assert drawn_series[0][-1] == "NORMAL P(NORMAL): 0.96 1"
    # The series decision is drawn around the whole image...
    assert drawn_series[1]["points"] == [0, 0, cr.Columns, 0, cr.Columns, cr.Rows, 0, cr.Rows, 0, 0]
    # ...the map's class on its region, with the image-level verdict.
    assert drawn_image[0][-1] == "PNEUMONIA P(PNEUMONIA): 0.04 1"
    assert len(drawn_image[1]["points"]) < 200
    presence = image.get_qualitative_evaluations(
        name=hd.sr.CodedConcept("233604007", "SCT", "Pneumonia")
    )
    assert [q[0].value.meaning for q in presence] == ["Absent"]


def test_key_slices_of_a_series_are_findings_on_their_frames(
    brain_prediction: SeriesPrediction, emri: Dataset, write_dicom: WriteDicom
) -> None:
    path = write_dicom(make_sr([emri], brain_prediction), "sr-brain")
    assert_dciodvfy_clean(path)
    assert_dsrdump_ok(path)
    series, *images = groups_of(path)
    # The series result references the key slices the heatmaps come from.
    (source,) = series.source_images
    assert list(source.ReferencedSOPSequence[0].ReferencedFrameNumber) == [4, 7]
    headline, *per_class = series.get_measurements()
    assert headline.name.meaning == "glioma P(glioma)"
    assert about(per_class[-1]) == ("108369006", "SCT")  # Neoplasm: sum of the tumour classes
    assert per_class[-1].value == pytest.approx(0.61 + 0.2 + 0.1)
    assert per_class[-1].name.meaning == "Neoplasm P(Neoplasm)"
    assert len(per_class) == 4
    presence = series.get_qualitative_evaluations(
        name=hd.sr.CodedConcept("108369006", "SCT", "Neoplasm")
    )
    assert [q[0].value.meaning for q in presence] == ["Present"]
    # One image-level finding per key slice, each on its own frame, each tracked apart.
    assert len(images) == 2
    assert len({g.tracking_uid for g in (series, *images)}) == 3
    drawn = drawn_labels(hd.sr.srread(path))
    assert [place["frame"] for _, place in drawn] == [4, 4, 7]
    assert all(place["uid"] == emri.SOPInstanceUID for _, place in drawn)
    assert [lines[-1] for lines, _ in drawn[1:]] == ["glioma P(glioma): 0.61 1"] * 2


def test_model_probability_concept_names_the_finding(
    pneumonia_prediction: SeriesPrediction, cr: Dataset, write_dicom: WriteDicom
) -> None:
    cancer = Concept("111047", "DCM", "Probability of cancer")
    model = dataclasses.replace(pneumonia_prediction.model, probability_concept=cancer)
    prediction = replace(pneumonia_prediction, model=model)
    group = read_back(write_dicom(make_sr([cr], prediction), "sr-cancer"))
    names = [(m.name.value, m.name.meaning) for m in group.get_measurements()]
    assert names == [
        ("122157", "PNEUMONIA P(PNEUMONIA)"),
        ("122157", "NORMAL P(NORMAL)"),
        ("111047", "Probability of cancer"),
    ]


def test_outside_intended_use_is_flagged_in_every_group_and_the_report(
    brain_prediction: SeriesPrediction, emri: Dataset, write_dicom: WriteDicom
) -> None:
    reason = "modality MR, intended CT"
    model = dataclasses.replace(brain_prediction.model, scope="CT")
    prediction = replace(brain_prediction, model=model, out_of_scope=(reason,))
    path = write_dicom(make_sr([emri], prediction), "sr-out-of-scope")
    assert_dciodvfy_clean(path)
    sr = hd.sr.srread(path)
    for lines, _ in drawn_labels(sr):
        assert lines[0] == f"OUTSIDE INTENDED USE: {reason}: "
    flag = hd.sr.CodedConcept("INTENDEDUSE", PRIVATE_SCHEME, "Within intended use")
    for group in groups_of(path):
        assert [q[0].value.meaning for q in group.get_qualitative_evaluations(name=flag)] == ["No"]
    assert f"OUTSIDE INTENDED USE: {reason}. Intended use: CT" in _texts(sr)
    # In scope: the flag says Yes, and no notice is drawn.
    inside = write_dicom(make_sr([emri], replace(brain_prediction, model=model)), "sr-in-scope")
    for group in groups_of(inside):
        assert [q[0].value.meaning for q in group.get_qualitative_evaluations(name=flag)] == ["Yes"]
    assert not any(
        "OUTSIDE" in line for lines, _ in drawn_labels(hd.sr.srread(inside)) for line in lines
    )


def test_multi_frame_source_references_the_scored_frames(
    brain_model: ModelInfo,
    emri: Dataset,
    make_prediction: PredictionFactory,
    write_dicom: WriteDicom,
) -> None:
    prediction = make_prediction(
        brain_model, [emri], {"glioma": 0.4, "meningioma": 0.2, "notumor": 0.2, "pituitary": 0.2}
    )
    scored = [s for s in prediction.slices if s.frame in (2, 3, 5)]
    group = read_back(
        write_dicom(make_sr([emri], replace(prediction, slices=tuple(scored))), "sr-frames")
    )
    (image,) = group.source_images
    assert list(image.ReferencedSOPSequence[0].ReferencedFrameNumber) == [2, 3, 5]
    assert frames_of(emri) == list(range(1, 11))


def test_every_scored_source_of_a_series_is_referenced(
    brain_model: ModelInfo, ct: Dataset, make_prediction: PredictionFactory, write_dicom: WriteDicom
) -> None:
    # Three slices of one series: copies of CT_small with their own instance UIDs.
    sources = []
    for number in range(3):
        ds = copy.deepcopy(ct)
        ds.SOPInstanceUID = f"{ct.SOPInstanceUID}.{number + 1}"
        sources.append(ds)
    prediction = make_prediction(
        brain_model, sources, {"glioma": 0.1, "meningioma": 0.1, "notumor": 0.7, "pituitary": 0.1}
    )
    path = write_dicom(make_sr(sources, prediction), "sr-series")
    assert_dciodvfy_clean(path)
    group = read_back(path)
    assert [s.referenced_sop_instance_uid for s in group.source_images] == [
        ds.SOPInstanceUID for ds in sources
    ]


def test_document_attributes(pneumonia_prediction: SeriesPrediction, cr: Dataset) -> None:
    sr = roundtrip(make_sr([cr], pneumonia_prediction))
    model = pneumonia_prediction.model
    assert sr.StudyInstanceUID == cr.StudyInstanceUID
    assert sr.SeriesInstanceUID != cr.SeriesInstanceUID
    assert (sr.CompletionFlag, sr.VerificationFlag) == ("COMPLETE", "UNVERIFIED")
    assert sr.Manufacturer == identity.MANUFACTURER
    assert sr.ManufacturerModelName == identity.MANUFACTURER_MODEL_NAME
    assert sr.SoftwareVersions == identity.SOFTWARE_VERSIONS
    algorithm = [e for e in sr.ContributingEquipmentSequence if "DeviceUID" in e]
    assert len(algorithm) == 1
    assert algorithm[0].ManufacturerModelName == model.name
    assert algorithm[0].SoftwareVersions == model.version
    assert algorithm[0].DeviceUID == uids.model_device_uid(model.id, model.version)
    assert algorithm[0].PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    assert identity.NOT_FOR_DIAGNOSTIC_USE in _texts(sr)
    assert "PredecessorDocumentsSequence" not in sr


def _texts(ds: Dataset) -> list[str]:
    found = [str(ds.TextValue)] if "TextValue" in ds else []
    for item in ds.get("ContentSequence", []):
        found.extend(_texts(item))
    return found


def test_observer_is_the_model_as_device(
    pneumonia_prediction: SeriesPrediction, cr: Dataset
) -> None:
    sr = hd.sr.Comprehensive3DSR.from_dataset(roundtrip(make_sr([cr], pneumonia_prediction)))
    (observer,) = cast(hd.sr.MeasurementReport, sr.content).get_observer_contexts(
        observer_type=hd.sr.CodedConcept("121007", "DCM", "Device")
    )
    device = observer.observer_identifying_attributes
    assert isinstance(device, hd.sr.DeviceObserverIdentifyingAttributes)
    model = pneumonia_prediction.model
    assert device.uid == uids.model_device_uid(model.id, model.version)
    assert device.name == model.name


def test_missing_type2_attributes_are_added_empty_without_touching_the_source(
    dx: Dataset,
    pneumonia_prediction: SeriesPrediction,
    make_prediction: PredictionFactory,
    pneumonia_model: ModelInfo,
    write_dicom: WriteDicom,
) -> None:
    prediction = make_prediction(pneumonia_model, [dx], {"NORMAL": 0.4, "PNEUMONIA": 0.6})
    path = write_dicom(make_sr([dx], prediction), "sr-dx-type2")
    assert_dciodvfy_clean(path)
    sr = roundtrip(make_sr([dx], prediction))
    assert sr.PatientBirthDate == "" and sr.AccessionNumber == "" and sr.StudyID == ""
    assert "PatientBirthDate" not in dx and "AccessionNumber" not in dx


def test_predecessor_is_referenced(
    pneumonia_prediction: SeriesPrediction, cr: Dataset, write_dicom: WriteDicom
) -> None:
    first = make_sr([cr], pneumonia_prediction)
    second = make_sr([cr], pneumonia_prediction, predecessor=Predecessor.from_dataset(first))
    assert_dciodvfy_clean(write_dicom(second, "sr-with-predecessor"))
    (study,) = roundtrip(second).PredecessorDocumentsSequence
    (series,) = study.ReferencedSeriesSequence
    (instance,) = series.ReferencedSOPSequence
    assert (study.StudyInstanceUID, series.SeriesInstanceUID) == (
        first.StudyInstanceUID,
        first.SeriesInstanceUID,
    )
    assert instance.ReferencedSOPInstanceUID == first.SOPInstanceUID


@pytest.mark.parametrize(
    ("source_name", "model_name", "code"),
    [
        ("cr", "pneumonia_model", "399208008"),  # Plain chest X-ray
        ("dx", "pneumonia_model", "399208008"),
        ("ct", "pneumonia_model", "169069000"),  # CT chest, from the lung finding site
        ("ct", "brain_model", "303653007"),  # CT head, from the brain finding site
        ("mr", "brain_model", "241601008"),  # MRI of head
        ("emri", "pneumonia_model", "241601008"),  # Body Part Examined HEAD wins
    ],
)
def test_procedure_reported_suits_modality_and_body_part(
    request: pytest.FixtureRequest, source_name: str, model_name: str, code: str
) -> None:
    source = request.getfixturevalue(source_name)
    assert procedure_reported(source, request.getfixturevalue(model_name)).value == code


def test_procedure_reported_falls_back_to_modality_then_imaging(
    ct: Dataset, pneumonia_model: ModelInfo
) -> None:
    model = dataclasses.replace(pneumonia_model, finding_site=None)
    assert procedure_reported(ct, model).value == "25045-6"  # CT unspecified body region
    ultrasound = Dataset()
    ultrasound.Modality = "US"
    assert procedure_reported(ultrasound, model).value == "363679005"  # Imaging procedure


def test_image_library_describes_every_referenced_image(
    ct: Dataset,
    cr: Dataset,
    emri: Dataset,
    brain_prediction: SeriesPrediction,
    pneumonia_prediction: SeriesPrediction,
    make_prediction: PredictionFactory,
    brain_model: ModelInfo,
    write_dicom: WriteDicom,
) -> None:
    probabilities = {"glioma": 0.1, "meningioma": 0.1, "notumor": 0.7, "pituitary": 0.1}
    cases = {
        "ct": ([ct], make_prediction(brain_model, [ct], probabilities)),
        "cr": ([cr], pneumonia_prediction),  # no Imager Pixel Spacing, Pixel Spacing 0\\0
        "emri": ([emri], brain_prediction),  # spacing in functional groups only
    }
    for name, (sources, prediction) in cases.items():
        path = write_dicom(make_sr(sources, prediction), f"sr-library-{name}")
        assert_dciodvfy_clean(path)
        names = _texts_and_names(hd.sr.srread(path))
        assert names.count("Image Library") == 1, name
        # CT has the geometry TID 1604 asks for; the others get the general descriptors.
        assert ("Horizontal Pixel Spacing" in names) == (name == "ct"), name
        assert "Pixel Data Rows" in names


def _texts_and_names(ds: Dataset) -> list[str]:
    names = [ds.ConceptNameCodeSequence[0].CodeMeaning] if "ConceptNameCodeSequence" in ds else []
    for item in ds.get("ContentSequence", []):
        names.extend(_texts_and_names(item))
    return names


@pytest.mark.parametrize(
    "problem",
    [
        "unknown class",
        "missing probability",
        "probability above one",
        "foreign slice",
        "bad frame",
        "bad sr class",
        "no sources",
        "mixed series",
    ],
)
def test_invalid_input_raises_value_error(
    problem: str,
    pneumonia_prediction: SeriesPrediction,
    cr: Dataset,
    ct: Dataset,
    emri: Dataset,
    brain_prediction: SeriesPrediction,
) -> None:
    sources, prediction, extra = [cr], pneumonia_prediction, {}
    if problem == "unknown class":
        prediction = replace(prediction, predicted_class="COVID")
    elif problem == "missing probability":
        prediction = replace(prediction, probabilities={"NORMAL": 1.0})
    elif problem == "probability above one":
        prediction = replace(prediction, probabilities={"NORMAL": 0.1, "PNEUMONIA": 1.5})
    elif problem == "foreign slice":
        sources = [ct]  # the prediction scored the CR, not this CT
    elif problem == "bad frame":
        bad = dataclasses.replace(brain_prediction.slices[0], frame=11)
        sources, prediction = [emri], replace(brain_prediction, slices=(bad,))
    elif problem == "bad sr class":
        extra = {"sr_class": "basic"}
    elif problem == "no sources":
        sources = []
    elif problem == "mixed series":
        sources = [cr, ct]
    with pytest.raises(ValueError):
        build_sr(sources, prediction, series_uid="1.2.3", instance_uid="1.2.3.4", **extra)  # type: ignore[arg-type]
