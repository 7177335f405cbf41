"""TID 1500 Structured Report: valid for dciodvfy and dsrdump, and readable by highdicom."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import cast

import highdicom as hd
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
    sr = hd.sr.srread(path)
    groups = cast(hd.sr.MeasurementReport, sr.content).get_image_measurement_groups()
    assert len(groups) == 1
    return groups[0]


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


def test_headline_is_the_positive_probability(
    pneumonia_prediction: SeriesPrediction, cr: Dataset, write_dicom: WriteDicom
) -> None:
    group = read_back(write_dicom(make_sr([cr], pneumonia_prediction), "sr-headline"))
    headline = group.get_measurements()[0]
    assert headline.name.value == "122157"  # the model's probability concept (default)
    assert headline.value == pytest.approx(0.87)
    assert about(headline) == ("263654008", "SCT")  # PNEUMONIA's concept
    # The positive class is not repeated: headline + NORMAL.
    assert len(group.get_measurements()) == 2


def test_several_positive_classes_report_the_finding(
    brain_prediction: SeriesPrediction, emri: Dataset, write_dicom: WriteDicom
) -> None:
    group = read_back(write_dicom(make_sr([emri], brain_prediction), "sr-brain"))
    headline, *per_class = group.get_measurements()
    assert about(headline) == ("108369006", "SCT")  # Neoplasm: sum of the tumour classes
    assert headline.value == pytest.approx(0.61 + 0.2 + 0.1)
    assert len(per_class) == 4
    presence = group.get_qualitative_evaluations(
        name=hd.sr.CodedConcept("108369006", "SCT", "Neoplasm")
    )
    assert [q[0].value.meaning for q in presence] == ["Present"]


def test_model_probability_concept_names_the_headline(
    pneumonia_prediction: SeriesPrediction, cr: Dataset, write_dicom: WriteDicom
) -> None:
    cancer = Concept("111047", "DCM", "Probability of cancer")
    model = dataclasses.replace(pneumonia_prediction.model, probability_concept=cancer)
    prediction = replace(pneumonia_prediction, model=model)
    group = read_back(write_dicom(make_sr([cr], prediction), "sr-cancer"))
    names = [m.name.value for m in group.get_measurements()]
    assert names == ["111047", "122157", "122157"]


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


def test_image_library_only_holds_images_with_geometry(
    ct: Dataset,
    emri: Dataset,
    brain_prediction: SeriesPrediction,
    make_prediction: PredictionFactory,
    brain_model: ModelInfo,
) -> None:
    probabilities = {"glioma": 0.1, "meningioma": 0.1, "notumor": 0.7, "pituitary": 0.1}
    with_library = _texts_and_names(
        make_sr([ct], make_prediction(brain_model, [ct], probabilities))
    )
    without = _texts_and_names(make_sr([emri], brain_prediction))
    assert "Image Library" in with_library
    assert "Image Library" not in without


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
