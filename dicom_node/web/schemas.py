"""What the pages and the JSON API show, as pydantic models.

The templates and ``/api`` render the same objects, so the two can never disagree about
what a study's state is; the models double as the OpenAPI schema of the API. Server file
paths are never part of them: files are served through authenticated endpoints by id.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field

Level = Literal["ok", "wait", "fail", "none"]


def _as_utc(value: dt.datetime) -> dt.datetime:
    """The database keeps naive UTC; the API says so (``...Z``), as RFC 3339 requires."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


UtcDatetime = Annotated[dt.datetime, AfterValidator(_as_utc)]


class Step(BaseModel):
    """The state of one step of the data path, with a colour level for the page."""

    state: str
    level: Level
    text: str = ""


class StudySteps(BaseModel):
    received: Step
    complete: Step
    routed: Step
    job: Step
    delivery: Step


class ModelCall(BaseModel):
    """One model's answer on one series (from its most recent job with results)."""

    result_id: int
    series_uid: str
    model_id: str
    model_version: str
    predicted_class: str
    probability: float | None = Field(description="probability of the positive class(es)")
    positive: bool | None = Field(description="probability >= 0.5; None without a probability")
    class_probability: float | None = Field(
        default=None, description="probability of the predicted class"
    )
    text: str = Field(
        default="",
        description="the result as shown to people: class, then its probability, "
        "e.g. 'NORMAL P(NORMAL) = 0.95'",
    )
    out_of_scope: bool = Field(
        default=False, description="the series is outside the model's stated intended use"
    )
    scope_reasons: list[str] = Field(default_factory=list, description="why it is outside")


class StudyRow(BaseModel):
    study_uid: str
    received_at: UtcDatetime
    last_received_at: UtcDatetime
    patient_id: str
    patient_name: str
    accession_number: str
    study_date: str
    modalities: list[str]
    body_parts: list[str]
    calling_aes: list[str]
    series_count: int
    instances: int
    routes: list[str]
    models: list[ModelCall]
    steps: StudySteps
    latency_seconds: float | None = Field(
        description="last instance received -> last result object delivered (slowest series)"
    )


class StudyPage(BaseModel):
    items: list[StudyRow]
    total: int
    page: int
    pages: int
    page_size: int
    sort: str
    direction: str


class DeliveryInfo(BaseModel):
    id: int
    job_id: int | None
    study_uid: str
    destination: str
    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    state: str
    attempts: int
    last_status: int | None
    last_error: str
    created_at: UtcDatetime
    next_attempt_at: UtcDatetime
    delivered_at: UtcDatetime | None


class DeliveryPage(BaseModel):
    items: list[DeliveryInfo]
    total: int
    page: int
    pages: int


class SRNode(BaseModel):
    """One content item of a Structured Report, with its children."""

    relationship: str
    value_type: str
    name: str
    value: str
    children: list[SRNode] = []


class SliceScore(BaseModel):
    index: int
    sop_instance_uid: str
    frame: int | None
    score: float


class ResultObject(BaseModel):
    kind: str
    sop_instance_uid: str
    sop_class_uid: str


class ResultInfo(BaseModel):
    id: int
    model_id: str
    model_version: str
    predicted_class: str
    positive_probability: float | None
    positive: bool | None
    probabilities: dict[str, float]
    class_probability: float | None = None
    text: str = ""
    out_of_scope: bool = False
    scope_reasons: list[str] = Field(default_factory=list)
    slice_scores: list[SliceScore]
    timings: dict[str, float]
    objects: list[ResultObject]
    has_gradcam: bool
    has_pdf: bool
    sr: list[SRNode] | None = None
    sr_error: str = ""
    created_at: UtcDatetime


class JobInfo(BaseModel):
    id: int
    generation: int
    route_name: str
    state: str
    attempts: int
    worker: str
    error: str
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    latency_seconds: float | None
    results: list[ResultInfo]
    deliveries: list[DeliveryInfo]


class SeriesInfo(BaseModel):
    series_uid: str
    modality: str
    body_part: str
    series_description: str
    series_number: str
    calling_ae: str
    remote_addresses: list[str]
    instance_count: int
    state: str
    generation: int
    first_received_at: UtcDatetime
    last_received_at: UtcDatetime
    completed_at: UtcDatetime | None
    route_name: str | None
    route_reason: str
    jobs: list[JobInfo]


class EventInfo(BaseModel):
    time: UtcDatetime
    last_time: UtcDatetime
    count: int = Field(description="consecutive events of this kind collapsed into this row")
    kind: str
    series_uid: str
    sop_instance_uid: str
    job_id: int | None
    delivery_id: int | None
    duration_ms: float | None
    detail: dict[str, Any]


class StudyDetail(BaseModel):
    study_uid: str
    patient_id: str
    patient_name: str
    accession_number: str
    study_date: str
    study_description: str
    first_received_at: UtcDatetime
    last_received_at: UtcDatetime
    series: list[SeriesInfo]
    other_deliveries: list[DeliveryInfo]
    events: list[EventInfo]
    events_truncated: bool


class ModelStats(BaseModel):
    model_id: str
    versions: list[str]
    routes: list[str]
    studies: int
    results: int
    positives: int
    mean_latency_seconds: float | None
    p95_latency_seconds: float | None


class AuditRow(BaseModel):
    id: int
    time: UtcDatetime
    username: str
    action: str
    target: str
    client_address: str
    success: bool
    detail: dict[str, Any]


class AuditPage(BaseModel):
    items: list[AuditRow]
    total: int
    page: int
    pages: int


class RerunResult(BaseModel):
    study_uid: str
    jobs: list[int]


class Me(BaseModel):
    username: str
    role: str


# -- the operator's console: queue, routes, destinations, models, refusals -------------------


class QueuedJob(BaseModel):
    """A job on the queue page: UIDs and states only, no patient data."""

    id: int
    state: str
    study_uid: str
    series_uid: str
    modality: str
    body_part: str
    route_name: str
    generation: int
    attempts: int
    worker: str
    error: str
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None


class PauseInfo(BaseModel):
    by: str
    since: str


class QueuePage(BaseModel):
    paused: PauseInfo | None = Field(description="processing paused: no job starts")
    counts: dict[str, int] = Field(description="jobs per state")
    items: list[QueuedJob]
    total: int
    page: int
    pages: int


class RefusalRow(BaseModel):
    id: int
    time: UtcDatetime
    kind: str = Field(description="connection, association or store")
    calling_ae: str
    called_ae: str
    address: str
    status: int | None = Field(description="C-STORE status answered (store refusals)")
    meaning: str
    reason: str
    sop_instance_uid: str


class RefusalPage(BaseModel):
    items: list[RefusalRow]
    total: int
    page: int
    pages: int


class DestinationView(BaseModel):
    name: str
    ae_title: str
    host: str
    port: int
    tls: bool = Field(description="DICOM TLS; the node sends without TLS for now")
    enabled: bool
    configured: bool = Field(description="False: no longer configured, deliveries remain")
    concurrency: int | None
    timeout: float | None
    max_attempts: int | None
    sr_class: str
    routes: list[str]
    pending: int
    failed: int
    last_success_at: UtcDatetime | None
    last_error_at: UtcDatetime | None
    last_status: int | None
    last_error: str


class EchoAnswer(BaseModel):
    destination: str
    ok: bool
    message: str
    seconds: float


class RouteView(BaseModel):
    position: int = Field(description="1-based evaluation order")
    name: str
    enabled: bool
    status: str = Field(description="active, disabled or waiting (for model weights)")
    waiting: list[str] = Field(description="why the route waits: one line per model")
    match: dict[str, str]
    exclude: dict[str, str]
    models: list[str]
    destinations: list[str]
    forward: bool
    pdf: bool
    key_slices: int
    continue_: bool = Field(alias="continue")

    model_config = {"populate_by_name": True}


class ModelView(BaseModel):
    """A model package: its manifest and whether its weights are there."""

    model_id: str
    name: str
    version: str
    description: str
    intended_use: str
    weights_format: str
    weights_present: bool
    missing_reason: str
    routes: list[str]
    error: str = Field("", description="the manifest could not be read: why")
