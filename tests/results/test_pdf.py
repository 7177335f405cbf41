"""Encapsulated PDF summary: a valid DICOM object wrapping a deterministic one-page PDF."""

from __future__ import annotations

import base64
import copy
import dataclasses
import re
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import EncapsulatedPDFStorage

from dicom_node import identity
from dicom_node.results import build_pdf, uids
from dicom_node.results.pdf import header_fields, render_pdf
from inference.types import SeriesPrediction
from tests.dicom_validate import assert_dciodvfy_clean
from tests.results.conftest import roundtrip

WriteDicom = Callable[[Dataset, str], Path]

pytestmark = pytest.mark.filterwarnings("ignore:The string .* is unlikely:UserWarning")


def make_pdf(sources: list[Dataset], prediction: SeriesPrediction) -> Dataset:
    series = str(sources[0].SeriesInstanceUID)
    model = prediction.model
    return build_pdf(
        sources,
        prediction,
        series_uid=uids.result_series_uid(series, model.id, "pdf"),
        instance_uid=uids.result_instance_uid(series, model.id, model.version, "pdf", 0),
    )


def page_text(document: bytes) -> str:
    """The text drawn on the pages: reportlab streams are ASCII85 + Flate encoded."""
    text = []
    for stream in re.findall(rb"stream\r?\n(.*?)endstream", document, re.S):
        data = stream.strip()
        data = data[:-2] if data.endswith(b"~>") else data
        try:
            text.append(zlib.decompress(base64.a85decode(data)).decode("latin-1"))
        except (ValueError, zlib.error):
            continue  # an image or another encoding: no text in it
    # PDF string literals escape parentheses and backslashes.
    return re.sub(r"\\([()\\])", r"\1", "\n".join(text))


@pytest.mark.parametrize("source_name", ["cr", "dx"])
def test_pdf_is_valid_and_in_the_source_study(
    request: pytest.FixtureRequest,
    pneumonia_prediction: SeriesPrediction,
    write_dicom: WriteDicom,
    source_name: str,
) -> None:
    source: Dataset = request.getfixturevalue(source_name)
    ds = make_pdf([source], pneumonia_prediction)
    assert_dciodvfy_clean(write_dicom(ds, f"pdf-{source_name}"))
    ds = roundtrip(ds)
    assert ds.SOPClassUID == EncapsulatedPDFStorage
    assert (ds.Modality, ds.ConversionType, ds.BurnedInAnnotation) == ("DOC", "WSD", "YES")
    assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.PatientID == source.PatientID
    assert ds.Manufacturer == identity.MANUFACTURER
    assert [r.ReferencedSOPInstanceUID for r in ds.SourceInstanceSequence] == [
        source.SOPInstanceUID
    ]
    document = bytes(ds.EncapsulatedDocument)
    assert document.startswith(b"%PDF")
    assert len(document) % 2 == 0
    assert ds.EncapsulatedDocumentLength in (len(document), len(document) - 1)


def test_pdf_has_one_page_with_header_result_and_caveat(
    pneumonia_prediction: SeriesPrediction, cr: Dataset
) -> None:
    document = bytes(make_pdf([cr], pneumonia_prediction).EncapsulatedDocument)
    assert re.search(rb"/Count 1\b", document)
    text = page_text(document)
    for expected in (
        "CompressedSamples, RG1",  # patient name
        "1940-03-05",  # birth date
        "exam Number",  # accession number
        "Pneumonia Xception",
        "0.3.0",
        "Result: PNEUMONIA P(PNEUMONIA) = 0.87",
        "Pneumonia: present",
        "Grad-CAM for PNEUMONIA",  # the key image's caption names the class explained
        identity.NOT_FOR_DIAGNOSTIC_USE_SHORT,
    ):
        assert expected in text, expected
    assert "/Subtype /Image" in document.decode("latin-1")  # the key heatmap
    assert "OUTSIDE INTENDED USE" not in text


def test_pdf_flags_a_series_outside_the_intended_use(
    pneumonia_prediction: SeriesPrediction, cr: Dataset
) -> None:
    model = dataclasses.replace(pneumonia_prediction.model, scope="CR or DX; age 0-17 years")
    prediction = dataclasses.replace(
        pneumonia_prediction,
        model=model,
        out_of_scope=("patient age 64 years, intended 0-17 years",),
    )
    text = page_text(bytes(make_pdf([cr], prediction).EncapsulatedDocument))
    assert "OUTSIDE INTENDED USE: patient age 64 years, intended 0-17 years" in text
    assert "Intended use checked" in text and "CR or DX; age 0-17 years" in text


def test_pdf_bytes_are_deterministic(pneumonia_prediction: SeriesPrediction, cr: Dataset) -> None:
    header = header_fields(cr)
    assert render_pdf(header, pneumonia_prediction) == render_pdf(header, pneumonia_prediction)


def test_missing_type2_values_stay_empty(
    dx: Dataset, pneumonia_prediction: SeriesPrediction
) -> None:
    ds = roundtrip(make_pdf([dx], pneumonia_prediction))
    assert (ds.PatientBirthDate, ds.AccessionNumber, ds.StudyID) == ("", "", "")
    assert "PatientBirthDate" not in dx


def test_pdf_without_heatmap(pneumonia_prediction: SeriesPrediction, cr: Dataset) -> None:
    prediction = dataclasses.replace(pneumonia_prediction, heatmaps=())
    document = bytes(make_pdf([cr], prediction).EncapsulatedDocument)
    assert "No heatmap was produced" in page_text(document)


def test_many_classes_still_fit_one_page(
    pneumonia_prediction: SeriesPrediction, cr: Dataset
) -> None:
    classes = tuple(f"class{i}" for i in range(60))
    model = dataclasses.replace(
        pneumonia_prediction.model,
        classes=classes,
        positive_class=None,
        positive_classes=(),
        class_concepts={
            c: dataclasses.replace(pneumonia_prediction.model.class_concepts["NORMAL"], meaning=c)
            for c in classes
        },
    )
    prediction = dataclasses.replace(
        pneumonia_prediction,
        model=model,
        predicted_class="class0",
        probabilities={c: 1 / 60 for c in classes},
        positive_probability=None,
        finding_present=None,
    )
    document = bytes(make_pdf([cr], prediction).EncapsulatedDocument)
    assert re.search(rb"/Count 1\b", document)


def test_source_is_not_modified(dx: Dataset, pneumonia_prediction: SeriesPrediction) -> None:
    before = copy.deepcopy(dx)
    make_pdf([dx], pneumonia_prediction)
    assert dx == before
