"""Fixtures for the admin page: a migrated database with a few studies in every state.

The data is built through the ``dicom_node.store.db`` models, the way the node writes it: studies,
series, instances, jobs, results (with real SR, Secondary Capture and Encapsulated PDF files
and a heatmap PNG), deliveries and events. Tests run against SQLite in ``tmp_path``; the
core page tests also run against PostgreSQL (a fresh database per test session).
"""

from __future__ import annotations

import datetime as dt
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import Settings
from dicom_node.store import users
from dicom_node.store.db import (
    Base,
    Delivery,
    Event,
    Instance,
    Job,
    Result,
    Series,
    Study,
    User,
    create_engine,
    session_factory,
)
from dicom_node.web import create_app

PG_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
ADMIN = ("alice", "admin-password-1")
VIEWER = ("victor", "viewer-password-1")
T0 = dt.datetime(2026, 1, 10, 8, 0, 0)

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
PDF_CLASS = "1.2.840.10008.5.1.4.1.1.104.1"  # Encapsulated PDF
CR_CLASS = "1.2.840.10008.5.1.4.1.1.1"
MR_CLASS = "1.2.840.10008.5.1.4.1.1.4"


# -- databases ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_engine(postgres_url: str) -> Iterator[Engine]:
    """The session's fresh PostgreSQL database (tests/conftest.py), migrated once."""
    engine = create_engine(postgres_url)
    try:
        yield engine
    finally:
        engine.dispose()


def _truncate(engine: Engine) -> None:
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """SQLite by default; ``parametrize("engine", ["sqlite", "postgres"], indirect=True)``
    runs a test on both."""
    backend = getattr(request, "param", "sqlite")
    if backend == "postgres":
        pg: Engine = request.getfixturevalue("pg_engine")
        _truncate(pg)
        yield pg
        return
    sqlite = create_engine(f"sqlite:///{tmp_path / 'web.db'}")
    yield sqlite
    sqlite.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


# -- settings ----------------------------------------------------------------------------------


REPO_MODELS = Path(__file__).resolve().parents[2] / "models"


def make_settings(root: Path, **web: Any) -> Settings:
    models = root / "models"
    for model_id in ("chest-xray-pneumonia", "brain-mri-tumor"):
        (models / model_id).mkdir(parents=True, exist_ok=True)
        # The real manifests (the models page shows version and intended use); weights
        # are whatever this machine has installed, which no page test relies on.
        manifest = (REPO_MODELS / model_id / "model.toml").read_text(encoding="utf-8")
        (models / model_id / "model.toml").write_text(manifest, encoding="utf-8")
    (root / "data" / "spool").mkdir(parents=True, exist_ok=True)
    return Settings.model_validate(
        {
            "node": {"data_dir": str(root / "data")},
            "models": {"dir": str(models)},
            "destinations": [
                {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}
            ],
            "routes": [
                {"name": "chest", "models": ["chest-xray-pneumonia"], "destinations": ["pacs"]},
                {"name": "brain", "models": ["brain-mri-tumor"], "destinations": ["pacs"]},
            ],
            "web": {"login_rate_limit": 5, "login_rate_window": 300, **web},
        }
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


# -- DICOM result files ------------------------------------------------------------------------


def _file_meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    ds = Dataset()
    ds.CodeValue = value
    ds.CodingSchemeDesignator = scheme
    ds.CodeMeaning = meaning
    return ds


def _item(rel: str, vt: str, name: Dataset, **values: Any) -> Dataset:
    ds = Dataset()
    ds.RelationshipType = rel
    ds.ValueType = vt
    ds.ConceptNameCodeSequence = Sequence([name])
    for key, value in values.items():
        setattr(ds, key, value)
    return ds


def write_sr(path: Path, study_uid: str, finding: str, probability: float) -> str:
    """A small TID 1500-shaped SR: report > measurements > group > finding, probability."""
    uid = generate_uid()
    ds = Dataset()
    ds.file_meta = _file_meta(SR_CLASS, uid)
    ds.SOPClassUID = SR_CLASS
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "PARTIAL"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ConceptNameCodeSequence = Sequence([_code("126000", "DCM", "Imaging Measurement Report")])
    measured = Dataset()
    measured.NumericValue = f"{probability:.4f}"
    measured.MeasurementUnitsCodeSequence = Sequence([_code("1", "UCUM", "no units")])
    group = _item(
        "CONTAINS",
        "CONTAINER",
        _code("125007", "DCM", "Measurement Group"),
        ContinuityOfContent="SEPARATE",
        ContentSequence=Sequence(
            [
                _item(
                    "HAS OBS CONTEXT",
                    "TEXT",
                    _code("112039", "DCM", "Tracking Identifier"),
                    TextValue="finding 1",
                ),
                _item(
                    "CONTAINS",
                    "CODE",
                    _code("121071", "DCM", "Finding"),
                    ConceptCodeSequence=Sequence([_code("233604007", "SCT", finding)]),
                ),
                _item(
                    "CONTAINS",
                    "NUM",
                    _code("122157", "DCM", "Probability"),
                    MeasuredValueSequence=Sequence([measured]),
                ),
            ]
        ),
    )
    measurements = _item(
        "CONTAINS",
        "CONTAINER",
        _code("126010", "DCM", "Imaging Measurements"),
        ContinuityOfContent="SEPARATE",
        ContentSequence=Sequence([group]),
    )
    language = _item(
        "HAS CONCEPT MOD",
        "CODE",
        _code("121049", "DCM", "Language of Content Item and Descendants"),
        ConceptCodeSequence=Sequence([_code("en-US", "RFC5646", "English (United States)")]),
    )
    ds.ContentSequence = Sequence([language, measurements])
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return uid


def write_sc(path: Path, study_uid: str, size: int = 64) -> str:
    """An 8-bit RGB Secondary Capture (what the Grad-CAM SC is)."""
    uid = generate_uid()
    ds = Dataset()
    ds.file_meta = _file_meta(SC_CLASS, uid)
    ds.SOPClassUID = SC_CLASS
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    pixels[..., 0] = np.linspace(0, 255, size, dtype=np.uint8)[None, :]
    pixels[..., 2] = np.linspace(255, 0, size, dtype=np.uint8)[:, None]
    ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return uid


PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"


def write_pdf(path: Path, study_uid: str) -> str:
    uid = generate_uid()
    ds = Dataset()
    ds.file_meta = _file_meta(PDF_CLASS, uid)
    ds.SOPClassUID = PDF_CLASS
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = study_uid
    ds.Modality = "DOC"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    data = PDF + (b"\x00" if len(PDF) % 2 else b"")
    ds.EncapsulatedDocument = data
    ds.EncapsulatedDocumentLength = len(PDF)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return uid


def write_heatmap(path: Path, size: int = 48) -> None:
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    pixels[..., 0] = 200
    pixels[size // 4 : size // 2, size // 4 : size // 2, 1] = 255
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


# -- fixture data ------------------------------------------------------------------------------


@dataclass
class FixtureData:
    """UIDs and ids of what ``populate`` made, for tests to refer to."""

    studies: dict[str, str] = field(default_factory=dict)  # label -> Study Instance UID
    series: dict[str, str] = field(default_factory=dict)
    jobs: dict[str, int] = field(default_factory=dict)
    results: dict[str, int] = field(default_factory=dict)
    deliveries: dict[str, int] = field(default_factory=dict)


def _study(
    session: Session,
    label: str,
    data: FixtureData,
    *,
    day: int,
    patient_id: str,
    patient_name: str,
    accession: str,
    modality: str,
    body_part: str,
    calling_ae: str,
    instances: int,
    state: str,
    route: str | None,
) -> tuple[Study, Series]:
    received = T0 + dt.timedelta(days=day)
    last = received + dt.timedelta(seconds=instances)
    study_uid = f"1.2.826.0.1.3680043.8.498.{day + 1}"
    study = Study(
        study_uid=study_uid,
        patient_id=patient_id,
        patient_name=patient_name,
        accession_number=accession,
        study_date=received.strftime("%Y%m%d"),
        study_description=f"{modality} {body_part}",
        first_received_at=received,
        last_received_at=last,
    )
    session.add(study)
    session.flush()
    series = Series(
        series_uid=f"{study_uid}.1",
        study_id=study.id,
        modality=modality,
        body_part=body_part,
        series_description=f"{body_part} series",
        series_number="1",
        calling_ae=calling_ae,
        instance_count=instances,
        first_received_at=received,
        last_received_at=last,
        state=state,
        generation=0,
        completed_at=last + dt.timedelta(seconds=30) if state != "receiving" else None,
        route_name=route,
        route_reason=f"route {route} matched" if route else "no route matched",
    )
    session.add(series)
    session.flush()
    sop_class = MR_CLASS if modality == "MR" else CR_CLASS
    for i in range(instances):
        uid = f"{series.series_uid}.{i + 1}"
        t = received + dt.timedelta(seconds=i + 1)
        session.add(
            Instance(
                sop_instance_uid=uid,
                sop_class_uid=sop_class,
                transfer_syntax_uid=ExplicitVRLittleEndian,
                series_id=series.id,
                instance_number=i + 1,
                path=f"/spool/{uid}.dcm",
                size=500_000,
                calling_ae=calling_ae,
                remote_address="10.0.0.7",
                received_at=t,
            )
        )
        session.add(
            Event(
                time=t,
                kind="instance.received",
                study_uid=study_uid,
                series_uid=series.series_uid,
                sop_instance_uid=uid,
                detail={"calling_ae": calling_ae},
            )
        )
    if state != "receiving":
        session.add(
            Event(
                time=last + dt.timedelta(seconds=30),
                kind="series.completed",
                study_uid=study_uid,
                series_uid=series.series_uid,
            )
        )
        session.add(
            Event(
                time=last + dt.timedelta(seconds=30),
                kind=f"series.{state}",
                study_uid=study_uid,
                series_uid=series.series_uid,
                detail={"route": route},
            )
        )
    data.studies[label] = study_uid
    data.series[label] = series.series_uid
    return study, series


def _job(session: Session, series: Series, study_uid: str, state: str, error: str = "") -> Job:
    start = series.last_received_at + dt.timedelta(seconds=31)
    job = Job(
        series_id=series.id,
        generation=series.generation,
        route_name=series.route_name or "",
        state=state,
        attempts=1,
        worker="worker-1",
        error=error,
        created_at=start,
        started_at=start,
        finished_at=start + dt.timedelta(seconds=2),
    )
    session.add(job)
    session.flush()
    for kind, t in (("job.queued", 0), ("job.started", 0), (f"job.{state}", 2)):
        session.add(
            Event(
                time=start + dt.timedelta(seconds=t),
                kind=kind,
                study_uid=study_uid,
                series_uid=series.series_uid,
                job_id=job.id,
                detail={"error": error} if error and kind == "job.failed" else {},
            )
        )
    return job


def _delivery(
    session: Session,
    job: Job,
    study_uid: str,
    kind: str,
    sop_class: str,
    sop_uid: str,
    path: Path,
    state: str,
) -> Delivery:
    created = job.finished_at or T0
    delivery = Delivery(
        job_id=job.id,
        destination="pacs",
        kind=kind,
        sop_class_uid=sop_class,
        sop_instance_uid=sop_uid,
        study_uid=study_uid,
        path=str(path),
        state=state,
        attempts=8 if state == "failed" else (1 if state == "done" else 0),
        last_status=0xA700 if state == "failed" else (0 if state == "done" else None),
        last_error="C-STORE status 0xA700 out of resources" if state == "failed" else "",
        created_at=created,
        next_attempt_at=created,
        delivered_at=created + dt.timedelta(seconds=3) if state == "done" else None,
    )
    session.add(delivery)
    session.flush()
    session.add(
        Event(
            time=created + dt.timedelta(seconds=3),
            kind=f"delivery.{state if state != 'pending' else 'retry'}",
            study_uid=study_uid,
            sop_instance_uid=sop_uid,
            job_id=job.id,
            delivery_id=delivery.id,
            detail={"destination": "pacs", "error": delivery.last_error},
        )
    )
    return delivery


def populate(sessions: sessionmaker[Session], results_dir: Path) -> FixtureData:
    """Five studies: delivered with one failure (CR), multi-slice delivered (MR), still
    receiving (CT, name with markup), unrouted (DX), failed job (CR, formula-like name)."""
    data = FixtureData()
    with sessions() as session:
        # 1. chest X-ray: result with heatmap PNG, SR, SC, PDF; SC delivery failed
        _, series = _study(
            session,
            "chest",
            data,
            day=0,
            patient_id="PID001",
            patient_name="DOE^JANE",
            accession="ACC001",
            modality="CR",
            body_part="CHEST",
            calling_ae="PACS_A",
            instances=1,
            state="routed",
            route="chest",
        )
        uid = data.studies["chest"]
        job = _job(session, series, uid, "done")
        folder = results_dir / uid
        heatmap = results_dir / "heatmaps" / "chest.png"
        write_heatmap(heatmap)
        sr_uid = write_sr(folder / "sr.dcm", uid, "Pneumonia", 0.91)
        sc_uid = write_sc(folder / "sc.dcm", uid)
        pdf_uid = write_pdf(folder / "pdf.dcm", uid)
        result = Result(
            job_id=job.id,
            model_id="chest-xray-pneumonia",
            model_version="0.3.0",
            predicted_class="PNEUMONIA",
            positive_probability=0.91,
            probabilities={"NORMAL": 0.09, "PNEUMONIA": 0.91},
            slice_scores=[
                {"sop_instance_uid": f"{series.series_uid}.1", "frame": None, "score": 0.91}
            ],
            timings={"total": 0.42, "infer": 0.07},
            heatmap_path=str(heatmap),
            # An adult's film sent to the pediatric chest model: flagged, still shown.
            out_of_scope=True,
            scope_reasons=["patient age 64 years, intended 0-17 years"],
            objects=[
                {
                    "kind": "sr:comprehensive3d",
                    "sop_instance_uid": sr_uid,
                    "sop_class_uid": SR_CLASS,
                    "path": str(folder / "sr.dcm"),
                },
                {
                    "kind": "sc",
                    "sop_instance_uid": sc_uid,
                    "sop_class_uid": SC_CLASS,
                    "path": str(folder / "sc.dcm"),
                },
                {
                    "kind": "pdf",
                    "sop_instance_uid": pdf_uid,
                    "sop_class_uid": PDF_CLASS,
                    "path": str(folder / "pdf.dcm"),
                },
            ],
            created_at=job.finished_at,
        )
        session.add(result)
        session.flush()
        data.jobs["chest"] = job.id
        data.results["chest"] = result.id
        data.deliveries["chest_sr"] = _delivery(
            session, job, uid, "sr", SR_CLASS, sr_uid, folder / "sr.dcm", "done"
        ).id
        data.deliveries["chest_sc"] = _delivery(
            session, job, uid, "sc", SC_CLASS, sc_uid, folder / "sc.dcm", "failed"
        ).id
        data.deliveries["chest_pdf"] = _delivery(
            session, job, uid, "pdf", PDF_CLASS, pdf_uid, folder / "pdf.dcm", "pending"
        ).id

        # 2. brain MR, 10 slices: Grad-CAM only as SC, everything delivered
        _, series = _study(
            session,
            "brain",
            data,
            day=1,
            patient_id="PID002",
            patient_name="ROE^RICHARD",
            accession="ACC002",
            modality="MR",
            body_part="HEAD",
            calling_ae="PACS_B",
            instances=10,
            state="routed",
            route="brain",
        )
        uid = data.studies["brain"]
        job = _job(session, series, uid, "done")
        folder = results_dir / uid
        sr_uid = write_sr(folder / "sr.dcm", uid, "Glioma", 0.72)
        sc_uid = write_sc(folder / "sc.dcm", uid)
        scores = [0.05, 0.1, 0.2, 0.45, 0.8, 0.95, 0.7, 0.3, 0.1, 0.02]
        result = Result(
            job_id=job.id,
            model_id="brain-mri-tumor",
            model_version="2.1",
            predicted_class="glioma",
            positive_probability=0.72,
            probabilities={"glioma": 0.6, "meningioma": 0.08, "notumor": 0.28, "pituitary": 0.04},
            slice_scores=[
                {"sop_instance_uid": f"{series.series_uid}.{i + 1}", "frame": None, "score": s}
                for i, s in enumerate(scores)
            ],
            timings={"total": 3.5},
            heatmap_path="",
            objects=[
                {
                    "kind": "sr:comprehensive3d",
                    "sop_instance_uid": sr_uid,
                    "sop_class_uid": SR_CLASS,
                    "path": str(folder / "sr.dcm"),
                },
                {
                    "kind": "sc",
                    "sop_instance_uid": sc_uid,
                    "sop_class_uid": SC_CLASS,
                    "path": str(folder / "sc.dcm"),
                },
            ],
            created_at=job.finished_at,
        )
        session.add(result)
        session.flush()
        data.jobs["brain"] = job.id
        data.results["brain"] = result.id
        data.deliveries["brain_sr"] = _delivery(
            session, job, uid, "sr", SR_CLASS, sr_uid, folder / "sr.dcm", "done"
        ).id
        data.deliveries["brain_sc"] = _delivery(
            session, job, uid, "sc", SC_CLASS, sc_uid, folder / "sc.dcm", "done"
        ).id

        # 3. CT still receiving; the name holds markup (must be escaped everywhere)
        _study(
            session,
            "ct",
            data,
            day=2,
            patient_id="PID003",
            patient_name="O'BRIEN^<script>alert(1)</script>",
            accession="ACC003",
            modality="CT",
            body_part="ABDOMEN",
            calling_ae="PACS_A",
            instances=3,
            state="receiving",
            route=None,
        )
        # 4. DX without a matching route
        _study(
            session,
            "dx",
            data,
            day=3,
            patient_id="PID004",
            patient_name="SMITH^ANNA",
            accession="ACC004",
            modality="DX",
            body_part="KNEE",
            calling_ae="PACS_B",
            instances=1,
            state="unrouted",
            route=None,
        )
        # 5. chest X-ray whose job failed; formula-like name (CSV injection)
        _, series = _study(
            session,
            "failed",
            data,
            day=4,
            patient_id="PID005",
            patient_name="=CMD^EVIL",
            accession="ACC005",
            modality="CR",
            body_part="CHEST",
            calling_ae="PACS_A",
            instances=1,
            state="routed",
            route="chest",
        )
        job = _job(session, series, data.studies["failed"], "failed", "ValueError: model crashed")
        data.jobs["failed"] = job.id
        session.commit()
    return data


@pytest.fixture
def data(sessions: sessionmaker[Session], settings: Settings) -> FixtureData:
    return populate(sessions, settings.results_dir)


# -- users, app and clients --------------------------------------------------------------------


@pytest.fixture(scope="session")
def password_hashes() -> dict[str, str]:
    """Argon2 is slow by design: hash the test passwords once per session."""
    return {name: users.hash_password(pw) for name, pw in (ADMIN, VIEWER)}


@pytest.fixture
def accounts(sessions: sessionmaker[Session], password_hashes: dict[str, str]) -> None:
    with sessions() as session:
        session.add(User(username=ADMIN[0], password_hash=password_hashes[ADMIN[0]], role="admin"))
        session.add(
            User(username=VIEWER[0], password_hash=password_hashes[VIEWER[0]], role="viewer")
        )
        session.commit()


@pytest.fixture
def node_status() -> dict[str, Any]:
    """What the node's status callable returns; tests change it to make the node unhealthy."""
    return {
        "scp_listening": True,
        "models": {"chest-xray-pneumonia": {"loaded": True}, "brain-mri-tumor": True},
        "workers_alive": 1,
        "receive": {"instances": 16, "bytes": 8_000_000, "associations": 3},
    }


@pytest.fixture
def app(
    settings: Settings,
    sessions: sessionmaker[Session],
    accounts: None,
    data: FixtureData,
    node_status: dict[str, Any],
) -> FastAPI:
    return create_app(settings, sessions, status=lambda: node_status)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    """An anonymous client (follows no redirects, so tests see them)."""
    with TestClient(app, follow_redirects=False) as c:
        yield c


CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_token(client: TestClient, path: str = "/studies") -> str:
    """The session's CSRF token, read from a form on a page (as a browser would)."""
    response = client.get(path)
    match = CSRF_RE.search(response.text)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def log_in(client: TestClient, username: str, password: str) -> TestClient:
    token = csrf_token(client, "/login")
    response = client.post(
        "/login", data={"username": username, "password": password, "csrf_token": token}
    )
    assert response.status_code == 303, response.text
    return client


@pytest.fixture
def admin(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, follow_redirects=False) as c:
        yield log_in(c, *ADMIN)


@pytest.fixture
def viewer(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, follow_redirects=False) as c:
        yield log_in(c, *VIEWER)


@pytest.fixture
def admin_token(app: FastAPI, sessions: sessionmaker[Session]) -> str:
    return users.create_token(sessions, ADMIN[0], "tests")


@pytest.fixture
def viewer_token(app: FastAPI, sessions: sessionmaker[Session]) -> str:
    return users.create_token(sessions, VIEWER[0], "tests")
