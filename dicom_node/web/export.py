"""CSV and JSON downloads of the studies list, with the filter and sort shown on screen."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator

from sqlalchemy.orm import Session, sessionmaker

from dicom_node.web.filters import StudyFilter
from dicom_node.web.queries import page_studies, summarise
from dicom_node.web.schemas import StudyRow
from dicom_node.wording import OUT_OF_SCOPE, out_of_scope_text

CHUNK = 500
CSV_COLUMNS = [
    "study_uid",
    "received_at",
    "patient_id",
    "patient_name",
    "accession_number",
    "study_date",
    "modalities",
    "body_parts",
    "calling_aes",
    "series",
    "instances",
    "routes",
    "models",
    "complete",
    "routed",
    "job",
    "delivery",
    "latency_seconds",
]


def _rows(
    sessions: sessionmaker[Session], filt: StudyFilter, sort: str, direction: str
) -> Iterator[StudyRow]:
    """All matching studies, a chunk of 500 at a time (memory stays flat for 100,000)."""
    offset = 0
    while True:
        with sessions() as session:
            studies = page_studies(
                session, filt, offset=offset, limit=CHUNK, sort=sort, direction=direction
            )
            rows = summarise(session, studies)
        yield from rows
        if len(studies) < CHUNK:
            return
        offset += CHUNK


def _cell(value: str) -> str:
    """Neutralise spreadsheet formulas: header values come from other systems, and a
    patient name starting with ``=`` must not run as a formula when the CSV is opened."""
    if value and value[0] in "=+-@\t\r":
        return "'" + value
    return value


def _csv_line(values: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerow([_cell(v) for v in values])
    return buf.getvalue()


def csv_lines(
    sessions: sessionmaker[Session], filt: StudyFilter, sort: str, direction: str
) -> Iterator[str]:
    yield _csv_line(CSV_COLUMNS)
    for row in _rows(sessions, filt, sort, direction):
        models = "; ".join(
            f"{m.model_id} {m.model_version}: {m.text or m.predicted_class}"
            + (f" [{out_of_scope_text(m.scope_reasons) or OUT_OF_SCOPE}]" if m.out_of_scope else "")
            for m in row.models
        )
        yield _csv_line(
            [
                row.study_uid,
                row.received_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                row.patient_id,
                row.patient_name,
                row.accession_number,
                row.study_date,
                " ".join(row.modalities),
                " ".join(row.body_parts),
                " ".join(row.calling_aes),
                str(row.series_count),
                str(row.instances),
                " ".join(row.routes),
                models,
                row.steps.complete.state,
                row.steps.routed.state,
                row.steps.job.state,
                row.steps.delivery.text,
                "" if row.latency_seconds is None else f"{row.latency_seconds:.3f}",
            ]
        )


def json_chunks(
    sessions: sessionmaker[Session], filt: StudyFilter, sort: str, direction: str
) -> Iterator[str]:
    """A JSON array of study rows (the API's StudyRow schema), streamed."""
    yield "["
    first = True
    for row in _rows(sessions, filt, sort, direction):
        yield ("\n" if first else ",\n") + json.dumps(row.model_dump(mode="json"))
        first = False
    yield "\n]\n"
