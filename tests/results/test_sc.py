"""Grad-CAM Secondary Capture: valid, in the source's study, text and colour scale burned in."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from dicom_node import identity
from dicom_node.results import build_sc, uids
from dicom_node.results.picture import WARNING_COLOUR, enlarged, labelled_heatmap, lines
from dicom_node.results.sc import anatomy, patient_orientation
from inference import colormap
from inference.types import Heatmap, ModelInfo, SeriesPrediction
from tests.dicom_validate import assert_dciodvfy_clean
from tests.results.conftest import PredictionFactory, make_heatmap, roundtrip

WriteDicom = Callable[[Dataset, str], Path]

# RG1_UNCI's Referring Physician's Name "ward" makes highdicom warn; the data is real.
pytestmark = pytest.mark.filterwarnings("ignore:The string .* is unlikely:UserWarning")


def make_sc(source: Dataset, heatmap: Heatmap, prediction: SeriesPrediction) -> Dataset:
    series = str(source.SeriesInstanceUID)
    model = prediction.model
    return build_sc(
        source,
        heatmap,
        prediction,
        series_uid=uids.result_series_uid(series, model.id, "sc"),
        instance_uid=uids.result_instance_uid(series, model.id, model.version, "sc", 0),
        instance_number=1,
    )


CASES = [
    ("ct", None, "brain_model"),
    ("mr", None, "brain_model"),
    ("emri", 4, "brain_model"),
    ("cr", None, "pneumonia_model"),
    ("dx", None, "pneumonia_model"),
]


@pytest.fixture(params=CASES, ids=[c[0] for c in CASES])
def case(
    request: pytest.FixtureRequest, make_prediction: PredictionFactory
) -> tuple[Dataset, Heatmap, SeriesPrediction]:
    """(source, heatmap, prediction) for one source image."""
    name, frame, model_name = request.param
    source: Dataset = request.getfixturevalue(name)
    model: ModelInfo = request.getfixturevalue(model_name)
    probabilities = {c: 0.5 / (len(model.classes) - 1) for c in model.classes}
    probabilities[model.classes[-1]] = 0.5
    heatmap = make_heatmap(source, frame)
    prediction = make_prediction(model, [source], probabilities, finding_present=True)
    return source, heatmap, dataclasses.replace(prediction, heatmaps=(heatmap,))


def test_sc_is_valid_and_references_its_source(
    case: tuple[Dataset, Heatmap, SeriesPrediction], write_dicom: WriteDicom
) -> None:
    source, heatmap, prediction = case
    sc = make_sc(source, heatmap, prediction)
    assert_dciodvfy_clean(write_dicom(sc, f"sc-{source.Modality}-{heatmap.frame}"))
    sc = roundtrip(sc)
    assert sc.ConversionType == "WSD"
    assert sc.BurnedInAnnotation == "YES"
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    assert sc.SeriesInstanceUID != source.SeriesInstanceUID
    assert sc.PatientID == source.PatientID
    (reference,) = sc.SourceImageSequence
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert reference.ReferencedSOPClassUID == source.SOPClassUID
    assert reference.get("ReferencedFrameNumber") == heatmap.frame
    assert (sc.Manufacturer, sc.ManufacturerModelName, sc.SoftwareVersions) == (
        identity.MANUFACTURER,
        identity.MANUFACTURER_MODEL_NAME,
        identity.SOFTWARE_VERSIONS,
    )
    model = prediction.model
    devices = [e.DeviceUID for e in sc.ContributingEquipmentSequence if "DeviceUID" in e]
    assert devices == [uids.model_device_uid(model.id, model.version)]
    assert (sc.PhotometricInterpretation, sc.SamplesPerPixel, sc.BitsAllocated) == ("RGB", 3, 8)


def test_text_is_burned_above_the_unchanged_picture(
    case: tuple[Dataset, Heatmap, SeriesPrediction],
) -> None:
    source, heatmap, prediction = case
    pixels = roundtrip(make_sc(source, heatmap, prediction)).pixel_array
    picture = enlarged(heatmap.overlay)
    band = pixels.shape[0] - picture.shape[0]
    assert band > 0
    # The heatmap itself is intact below the band...
    assert np.array_equal(pixels[band:], picture)
    # ...and the band is no longer black: text was drawn, the caveat in yellow.
    assert pixels[:band].any()
    assert np.all(pixels[:band] == WARNING_COLOUR, axis=-1).any()
    assert min(pixels.shape[:2]) >= 512 or min(heatmap.overlay.shape[:2]) >= 512


def test_annotation_names_explained_class_result_and_caveat(
    pneumonia_prediction: SeriesPrediction,
) -> None:
    texts = [line.text for line in lines(pneumonia_prediction, pneumonia_prediction.heatmaps[0])]
    # A heatmap without a recorded target explains the predicted class.
    assert texts[0] == "Grad-CAM for PNEUMONIA"
    assert "Pneumonia Xception 0.3.0" in texts
    assert "Result: PNEUMONIA P(PNEUMONIA) = 0.87" in texts
    assert "Pneumonia: present (threshold 0.50)" in texts
    assert texts[-1] == identity.NOT_FOR_DIAGNOSTIC_USE_SHORT
    assert not any("OUTSIDE" in t for t in texts)


def test_a_map_of_another_class_says_so_with_its_own_probability(
    pneumonia_prediction: SeriesPrediction,
) -> None:
    # A NORMAL result whose map explains PNEUMONIA (explain.target = "positive").
    heatmap = dataclasses.replace(
        pneumonia_prediction.heatmaps[0], target="PNEUMONIA", target_probability=0.04
    )
    prediction = dataclasses.replace(
        pneumonia_prediction,
        predicted_class="NORMAL",
        probabilities={"NORMAL": 0.96, "PNEUMONIA": 0.04},
        positive_probability=0.04,
        finding_present=False,
        heatmaps=(heatmap,),
    )
    texts = [line.text for line in lines(prediction, heatmap)]
    assert texts[0] == "Grad-CAM for PNEUMONIA"
    assert "Result: NORMAL P(NORMAL) = 0.96" in texts
    assert "This image: PNEUMONIA P(PNEUMONIA) = 0.04" in texts


def test_out_of_scope_is_burned_in_and_commented(
    pneumonia_prediction: SeriesPrediction, cr: Dataset
) -> None:
    reason = "patient age 64 years, intended 0-17 years"
    prediction = dataclasses.replace(pneumonia_prediction, out_of_scope=(reason,))
    warnings = [line.text for line in lines(prediction, prediction.heatmaps[0]) if line.warning]
    assert warnings == [f"OUTSIDE INTENDED USE: {reason}", identity.NOT_FOR_DIAGNOSTIC_USE_SHORT]
    sc = roundtrip(make_sc(cr, prediction.heatmaps[0], prediction))
    assert sc.ImageComments.startswith(f"OUTSIDE INTENDED USE: {reason}")
    assert identity.NOT_FOR_DIAGNOSTIC_USE in sc.ImageComments
    plain = roundtrip(make_sc(cr, pneumonia_prediction.heatmaps[0], pneumonia_prediction))
    # The notice takes a line of its own: the in-scope picture's band is shorter.
    assert sc.Rows > plain.Rows


def test_colour_scale_shows_the_colour_map_above_the_floor(
    pneumonia_prediction: SeriesPrediction,
) -> None:
    heatmap = dataclasses.replace(pneumonia_prediction.heatmaps[0], floor=0.2)
    picture = labelled_heatmap(pneumonia_prediction, heatmap)
    band = picture[: picture.shape[0] - enlarged(heatmap.overlay).shape[0]]
    table = (colormap.lookup_table("inferno") * 255).round()
    # The scale's right end is the peak colour, and the map's low colours are absent
    # from the scale's left part (uncoloured grey there).
    peak = table[255]
    assert np.any(np.all(np.abs(band.astype(int) - peak) <= 2, axis=-1))
    grey = np.all(band == 128, axis=-1)
    assert grey.sum() > band.shape[1]  # a grey stretch at least one bar row long


def test_same_input_gives_the_same_pixels(
    pneumonia_prediction: SeriesPrediction, cr: Dataset
) -> None:
    heatmap = pneumonia_prediction.heatmaps[0]
    first = make_sc(cr, heatmap, pneumonia_prediction)
    second = make_sc(cr, heatmap, pneumonia_prediction)
    assert first.PixelData == second.PixelData
    assert first.SOPInstanceUID == second.SOPInstanceUID


def test_patient_orientation(ct: Dataset, cr: Dataset) -> None:
    assert patient_orientation(cr, None) == ["L", "F"]  # given by the CR
    assert patient_orientation(ct, None) == ["L", "P"]  # from axial orientation cosines
    oblique = Dataset()
    oblique.ImageOrientationPatient = [0.8, -0.6, 0.0, 0.0, 0.0, -1.0]
    assert patient_orientation(oblique, None) == ["LA", "F"]
    assert patient_orientation(Dataset(), None) == ["", ""]


def test_patient_orientation_of_an_enhanced_frame() -> None:
    ds = Dataset()
    plane = Dataset()
    plane.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    group = Dataset()
    group.PlaneOrientationSequence = [plane]
    ds.PerFrameFunctionalGroupsSequence = [Dataset(), group]
    assert patient_orientation(ds, 2) == ["P", "F"]  # sagittal frame
    assert patient_orientation(ds, 1) == ["", ""]


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({"BodyPartExamined": "CHEST"}, ("CHEST", None)),  # unpaired: no Laterality
        ({"BodyPartExamined": "KNEE", "Laterality": "L"}, ("KNEE", "L")),
        ({"BodyPartExamined": "BREAST", "ImageLaterality": "R"}, ("BREAST", "R")),
        ({"BodyPartExamined": "HAND", "ImageLaterality": "B"}, ("HAND", "")),  # both: unknown
        ({"BodyPartExamined": "KNEE"}, ("KNEE", "")),  # paired, side unknown
        ({}, (None, "")),  # unknown part: dciodvfy wants Laterality, empty
    ],
)
def test_laterality_only_for_paired_body_parts(
    attributes: dict[str, str], expected: tuple[str | None, str | None]
) -> None:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    assert anatomy(ds) == expected


@pytest.mark.parametrize(
    "attributes",
    [{"BodyPartExamined": "KNEE", "ImageLaterality": "L"}, {"BodyPartExamined": "KNEE"}],
)
def test_paired_body_part_passes_dciodvfy(
    dx: Dataset,
    pneumonia_prediction: SeriesPrediction,
    write_dicom: WriteDicom,
    attributes: dict[str, str],
) -> None:
    knee = copy.deepcopy(dx)
    for keyword, value in attributes.items():
        setattr(knee, keyword, value)
    heatmap = make_heatmap(knee)
    sc = make_sc(knee, heatmap, pneumonia_prediction)
    assert_dciodvfy_clean(write_dicom(sc, f"sc-knee-{len(attributes)}"))
    assert sc.Laterality == attributes.get("ImageLaterality", "")


def test_source_is_not_modified(dx: Dataset, pneumonia_prediction: SeriesPrediction) -> None:
    before = copy.deepcopy(dx)
    make_sc(dx, make_heatmap(dx), pneumonia_prediction)
    assert dx == before


@pytest.mark.parametrize(
    "problem", ["other instance", "float overlay", "grey overlay", "no frame", "frame of single"]
)
def test_unusable_heatmap_raises_value_error(
    problem: str,
    cr: Dataset,
    emri: Dataset,
    brain_prediction: SeriesPrediction,
    pneumonia_prediction: SeriesPrediction,
) -> None:
    source, prediction = cr, pneumonia_prediction
    heatmap = pneumonia_prediction.heatmaps[0]
    if problem == "other instance":
        heatmap = dataclasses.replace(heatmap, sop_instance_uid="1.2.3")
    elif problem == "float overlay":
        heatmap = dataclasses.replace(heatmap, overlay=heatmap.overlay.astype(np.float32))
    elif problem == "grey overlay":
        heatmap = dataclasses.replace(heatmap, overlay=heatmap.overlay[..., 0])
    elif problem == "no frame":
        source, prediction = emri, brain_prediction
        heatmap = dataclasses.replace(brain_prediction.heatmaps[0], frame=None)
    elif problem == "frame of single":
        heatmap = dataclasses.replace(heatmap, frame=2)
    with pytest.raises(ValueError):
        make_sc(source, heatmap, prediction)
