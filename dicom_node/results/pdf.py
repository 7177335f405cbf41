"""One-page PDF summary of a result, stored in the study as Encapsulated PDF.

Some sites read results outside an image viewer (printouts, the EHR's document tab); an
Encapsulated PDF shows there with patient and study header, the model, the prediction,
a probability table, the key heatmap and the not-for-diagnostic-use statement.

highdicom has no class for the Encapsulated PDF IOD (PS3.3 A.45.1), so the dataset is
built here with pydicom, module by module: Patient, General Study, Encapsulated Document
Series, General Equipment, SC Equipment, Encapsulated Document, SOP Common.

The PDF is rendered with reportlab in *invariant* mode (fixed creation date and document
ID), so the same inputs give the same bytes: a re-run sends an identical document.
"""

from __future__ import annotations

import datetime
import io
from collections.abc import Sequence
from typing import Final
from xml.sax.saxutils import escape

from PIL import Image as PILImage
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
)
from pydicom.valuerep import DA, TM, PersonName
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import cm
from reportlab.platypus import (
    Flowable,
    Image,
    KeepInFrame,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from dicom_node import identity
from dicom_node.results.common import (
    DEFAULT_SERIES_NUMBERS,
    TYPE2_PATIENT_STUDY,
    algorithm_equipment,
    apply_identity,
    as_value_error,
    check_prediction,
    check_sources,
    ensure_encodable,
    header_copy,
    headline_probability,
)
from dicom_node.results.picture import labelled_heatmap, title
from dicom_node.wording import call_text, out_of_scope_text, probability_value
from inference.types import SeriesPrediction

# LOINC 18748-4 "Diagnostic Imaging Report" (CID 7000, document titles): the document
# class of an imaging report. The title and the body say it is not for diagnostic use.
DOCUMENT_CONCEPT: Final = ("18748-4", "LN", "Diagnostic Imaging Report")
PDF_MIME_TYPE: Final = "application/pdf"

_PAGE_WIDTH, _PAGE_HEIGHT = A4
_MARGIN: Final = 1.5 * cm
_FRAME_WIDTH: Final = _PAGE_WIDTH - 2 * _MARGIN
_FRAME_HEIGHT: Final = _PAGE_HEIGHT - 2 * _MARGIN
_HEATMAP_MAX: Final = 10 * cm
_HEATMAP_PIXELS: Final = 800


def build_pdf(
    sources: Sequence[Dataset],
    prediction: SeriesPrediction,
    *,
    series_uid: str,
    instance_uid: str,
    series_number: int = DEFAULT_SERIES_NUMBERS["pdf"],
    instance_number: int = 1,
) -> Dataset:
    """Build the Encapsulated PDF summary of one model's result on one series.

    Parameters
    ----------
    sources : Sequence[pydicom.Dataset]
        The instances of the analysed series; the first gives patient and study, all are
        listed in the Source Instance Sequence.
    prediction : inference.types.SeriesPrediction
        The model's decision; its first heatmap (the most positive slice) is shown.
    series_uid, instance_uid : str
        UIDs of the document (see :mod:`dicom_node.results.uids`).
    series_number, instance_number : int, optional
        Numbers shown by viewers.

    Returns
    -------
    pydicom.Dataset
        The Encapsulated PDF instance, in the study of the sources.

    Raises
    ------
    ValueError
        When the sources or the prediction are inconsistent.
    """
    check_sources(sources)
    check_prediction(prediction)
    header = header_copy(sources[0])
    with as_value_error("encapsulated PDF"):
        document = render_pdf(header_fields(header), prediction)
        dataset = _encapsulate(document, header, sources, prediction)
    dataset.SeriesInstanceUID = series_uid
    dataset.SeriesNumber = series_number
    dataset.SOPInstanceUID = instance_uid
    dataset.file_meta.MediaStorageSOPInstanceUID = UID(instance_uid)
    dataset.InstanceNumber = instance_number
    ensure_encodable(dataset, "encapsulated PDF")
    return dataset


def header_fields(source: Dataset) -> list[tuple[str, str]]:
    """Patient and study lines of the page header, formatted for people."""
    return [
        ("Patient name", _person_name(source.get("PatientName"))),
        ("Patient ID", str(source.get("PatientID") or "")),
        ("Birth date", _date(source.get("PatientBirthDate"))),
        ("Sex", str(source.get("PatientSex") or "")),
        ("Study date", _date(source.get("StudyDate"))),
        ("Accession number", str(source.get("AccessionNumber") or "")),
        ("Modality", str(source.get("Modality") or "")),
        ("Body part", str(source.get("BodyPartExamined") or "")),
        ("Study description", str(source.get("StudyDescription") or "")),
    ]


def _person_name(value: str | bytes | PersonName | None) -> str:
    if not value:
        return ""
    name = value if isinstance(value, PersonName) else PersonName(value)
    given = " ".join(p for p in (name.given_name, name.middle_name) if p)
    return ", ".join(p for p in (name.family_name, given) if p) or str(name)


def _date(value: str | None) -> str:
    text = str(value or "")
    if len(text) == 8 and text.isdigit():
        return f"{text[:4]}-{text[4:6]}-{text[6:]}"
    return text


def render_pdf(header: Sequence[tuple[str, str]], prediction: SeriesPrediction) -> bytes:
    """Render the one-page summary and return the PDF bytes (deterministic)."""
    model = prediction.model
    buffer = io.BytesIO()
    document = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=_MARGIN,
        rightMargin=_MARGIN,
        topMargin=_MARGIN,
        bottomMargin=_MARGIN,
        title=f"AI result: {model.name} {model.version}",
        author=identity.MANUFACTURER,
        creator=identity.SOFTWARE_VERSIONS,
        subject=identity.NOT_FOR_DIAGNOSTIC_USE_SHORT,
        # invariant: fixed creation date and document ID, so equal inputs, equal bytes.
        invariant=1,
    )
    story = _story(header, prediction)
    # KeepInFrame shrinks the content if needed: the summary is always exactly one page.
    document.build([KeepInFrame(_FRAME_WIDTH, _FRAME_HEIGHT, story, mode="shrink")])
    return buffer.getvalue()


def _story(header: Sequence[tuple[str, str]], prediction: SeriesPrediction) -> list[Flowable]:
    styles = getSampleStyleSheet()
    warning = ParagraphStyle("warning", parent=styles["Heading2"], textColor=colors.red)
    model = prediction.model
    predicted = prediction.predicted_class
    model_rows = [
        ("Name", model.name),
        ("Version", model.version),
        ("Identifier", model.id),
        ("Intended use", model.intended_use),
    ]
    if model.scope:
        model_rows.append(("Intended use checked", model.scope))
    scope = out_of_scope_text(prediction.out_of_scope)
    return [
        Paragraph(escape(f"AI result: {model.name}"), styles["Title"]),
        Paragraph(escape(identity.NOT_FOR_DIAGNOSTIC_USE_SHORT), warning),
        *([Paragraph(escape(scope), warning)] if scope else []),
        _table([(k, v) for k, v in header], header_row=None),
        Spacer(1, 0.4 * cm),
        Paragraph("Model", styles["Heading3"]),
        _table(model_rows, header_row=None),
        Spacer(1, 0.4 * cm),
        Paragraph(
            escape(f"Result: {call_text(predicted, prediction.probabilities[predicted])}"),
            styles["Heading2"],
        ),
        *_finding_paragraph(prediction, styles["Normal"]),
        Spacer(1, 0.3 * cm),
        _table(_probability_rows(prediction), header_row=("Class", "Probability")),
        Spacer(1, 0.4 * cm),
        *_heatmap_flowables(prediction, styles["Normal"]),
        Spacer(1, 0.4 * cm),
        Paragraph(escape(identity.NOT_FOR_DIAGNOSTIC_USE), warning),
    ]


def _finding_paragraph(prediction: SeriesPrediction, style: ParagraphStyle) -> list[Flowable]:
    """The finding's probability (when it is not the predicted class's) and verdict."""
    model = prediction.model
    paragraphs = []
    headline = headline_probability(prediction)
    if headline.label != prediction.predicted_class:
        paragraphs.append(Paragraph(escape(call_text(headline.label, headline.value)), style))
    if prediction.finding_present is not None:
        verdict = "present" if prediction.finding_present else "absent"
        text = f"{model.finding_type.meaning}: {verdict} (threshold {model.threshold:.2f})"
        paragraphs.append(Paragraph(escape(text), style))
    return paragraphs


def _probability_rows(prediction: SeriesPrediction) -> list[tuple[str, str]]:
    concepts = prediction.model.class_concepts
    return [
        (f"{cls} ({concepts[cls].meaning})", probability_value(prediction.probabilities[cls]))
        for cls in prediction.model.classes
    ]


def _table(rows: Sequence[tuple[str, str]], header_row: tuple[str, str] | None) -> Table:
    styles = getSampleStyleSheet()
    cells = [[Paragraph(escape(a), styles["Normal"]), Paragraph(escape(b), styles["Normal"])]
             for a, b in rows]  # fmt: skip
    commands = [
        ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
    ]
    if header_row is not None:
        header = [Paragraph(f"<b>{escape(h)}</b>", styles["Normal"]) for h in header_row]
        cells.insert(0, header)
        commands.append(("BACKGROUND", (0, 0), (-1, 0), colors.lightgrey))
    table = Table(cells, colWidths=[6 * cm, _FRAME_WIDTH - 6 * cm], hAlign="LEFT")
    table.setStyle(TableStyle(commands))
    return table


def _heatmap_flowables(prediction: SeriesPrediction, style: ParagraphStyle) -> list[Flowable]:
    if not prediction.heatmaps:
        return [Paragraph("No heatmap was produced for this series.", style)]
    key = prediction.heatmaps[0]
    # The same labelled picture as the Secondary Capture: class explained, colour scale.
    picture = PILImage.fromarray(labelled_heatmap(prediction, key), mode="RGB")
    # About 200 dpi at the printed size is plenty; a full-size CR would add megabytes.
    picture.thumbnail((_HEATMAP_PIXELS, _HEATMAP_PIXELS), PILImage.Resampling.LANCZOS)
    png = io.BytesIO()
    picture.save(png, format="PNG")
    png.seek(0)
    scale = _HEATMAP_MAX / max(picture.size)
    frame = f", frame {key.frame}" if key.frame is not None else ""
    caption = f"Key image ({title(prediction, key)}): instance {key.sop_instance_uid}{frame}"
    return [
        Image(png, width=picture.width * scale, height=picture.height * scale, hAlign="LEFT"),
        Paragraph(escape(caption), style),
    ]


def _encapsulate(
    document: bytes, header: Dataset, sources: Sequence[Dataset], prediction: SeriesPrediction
) -> Dataset:
    model = prediction.model
    ds = Dataset()
    ds.file_meta = _file_meta()
    # UTF-8: patient names arrive in any character set; pydicom decoded them, and UTF-8
    # re-encodes every one of them without loss.
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = EncapsulatedPDFStorage
    _copy_patient_study(ds, header)
    # Encapsulated Document Series: Modality DOC is the only value the IOD allows.
    ds.Modality = "DOC"
    ds.SeriesDescription = f"AI {model.name} report"[:64]
    apply_identity(ds)
    # SC Equipment module: WSD, the document was made by a workstation.
    ds.ConversionType = "WSD"
    now = datetime.datetime.now()
    ds.ContentDate = DA(now.date())
    ds.ContentTime = TM(now.time())
    ds.AcquisitionDateTime = None  # Type 2: nothing was acquired
    # The page shows patient identification and result text.
    ds.BurnedInAnnotation = "YES"
    ds.SourceInstanceSequence = [_reference(src) for src in sources]
    ds.DocumentTitle = f"AI result: {model.name} {model.version}"[:1024]
    ds.ConceptNameCodeSequence = [_code(*DOCUMENT_CONCEPT)]
    ds.MIMETypeOfEncapsulatedDocument = PDF_MIME_TYPE
    # OB values must have even length: pad with one NUL, and record the true length.
    ds.EncapsulatedDocumentLength = len(document)
    ds.EncapsulatedDocument = document + b"\x00" * (len(document) % 2)
    ds.ContributingEquipmentSequence = [algorithm_equipment(model)]
    return ds


def _file_meta() -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = EncapsulatedPDFStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = identity.IMPLEMENTATION_VERSION_NAME
    return meta


def _copy_patient_study(ds: Dataset, header: Dataset) -> None:
    # header_copy added every Type 2 attribute, so each is present, possibly empty.
    for keyword in TYPE2_PATIENT_STUDY:
        setattr(ds, keyword, header.get(keyword))
    ds.StudyInstanceUID = header.StudyInstanceUID
    for keyword in ("StudyDescription", "IssuerOfPatientID", "PatientAge"):
        if header.get(keyword):
            setattr(ds, keyword, header.get(keyword))


def _reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item
