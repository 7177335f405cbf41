"""The job runner and the job queue with a fake model provider (no TensorFlow).

The runner is given its models through the ``ModelProvider`` protocol, so these tests run
the real queue, result builders and delivery bookkeeping on a real CR chest image with a
model whose answer the test chooses.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from sqlalchemy import select

from dicom_node.config import Settings
from dicom_node.process import queue
from dicom_node.process.heatmap import display_png
from dicom_node.process.runner import JobRunner
from dicom_node.receive.index import index_instance
from dicom_node.receive.meta import meta_from_dataset
from dicom_node.results.picture import labelled_heatmap
from dicom_node.route.completion import complete_due_series
from dicom_node.store.db import Delivery, Event, Job, Result, create_engine, session_factory
from dicom_node.store.states import DeliveryState, EventKind, JobState
from inference.types import SeriesPrediction, SliceScore
from tests.conftest import make_settings
from tests.results.conftest import PNEUMONIA_MODEL, make_heatmap

# A configured model id: the route names it, the provider is asked for it.
MODEL_ID = "chest-xray-pneumonia"


class FakeModel:
    """Answers PNEUMONIA 0.8 with a heatmap on the first image, or raises."""

    def __init__(self, fail: str = "", out_of_scope: tuple[str, ...] = ()) -> None:
        self.fail = fail
        self.out_of_scope = out_of_scope
        self.calls = 0
        self.last: SeriesPrediction | None = None

    def predict_series(
        self, datasets: Sequence[Dataset], *, key_slices: int = 1, explain: bool = True
    ) -> SeriesPrediction:
        self.calls += 1
        if self.fail:
            raise RuntimeError(self.fail)
        probabilities = {"NORMAL": 0.2, "PNEUMONIA": 0.8}
        self.last = SeriesPrediction(
            model=PNEUMONIA_MODEL,
            predicted_class="PNEUMONIA",
            probabilities=probabilities,
            positive_probability=0.8,
            slices=tuple(
                SliceScore(str(ds.SOPInstanceUID), None, probabilities, 0.8) for ds in datasets
            ),
            heatmaps=(make_heatmap(datasets[0]),),
            timings={"infer": 0.01},
            finding_present=True,
            out_of_scope=self.out_of_scope,
        )
        return self.last


class FakeProvider:
    def __init__(self, model: FakeModel) -> None:
        self.model = model
        self.asked: list[str] = []

    def get(self, model_id: str) -> FakeModel:
        self.asked.append(model_id)
        return self.model


def _settings(tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path,
        destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 1}],
        routes=[
            {
                "name": "chest",
                "match": {"Modality": "CR"},
                "models": [MODEL_ID],
                "destinations": ["pacs"],
            }
        ],
        completion={"quiet_seconds": 0},
    )


@pytest.fixture
def queued_job(tmp_path: Path) -> tuple[Settings, Any, int]:
    """A real CR chest image indexed, completed and routed: one queued job."""
    settings = _settings(tmp_path)
    sessions = session_factory(create_engine(settings.database_url))
    source = Path(str(get_testdata_file("RG1_UNCI.dcm")))
    ds = dcmread(source, stop_before_pixels=True)
    ds.BodyPartExamined = "CHEST"
    meta = meta_from_dataset(ds)
    path = tmp_path / "spool" / f"{meta.sop_instance_uid}.dcm"
    path.parent.mkdir()
    shutil.copyfile(source, path)
    index_instance(sessions, meta, path, path.stat().st_size)
    assert complete_due_series(sessions, settings) == 1
    job_id = queue.claim_next(sessions, "test")
    assert job_id is not None
    return settings, sessions, job_id


def _events(sessions: Any, job_id: int) -> list[str]:
    with sessions() as session:
        return list(
            session.scalars(select(Event.kind).where(Event.job_id == job_id).order_by(Event.id))
        )


def test_runner_stores_result_objects_and_queues_deliveries(
    queued_job: tuple[Settings, Any, int],
) -> None:
    settings, sessions, job_id = queued_job
    provider = FakeProvider(FakeModel())
    JobRunner(settings, sessions, provider).run(job_id)

    assert provider.asked == [MODEL_ID]
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.state is JobState.DONE and job.error == ""
        result = session.scalars(select(Result).where(Result.job_id == job_id)).one()
        assert result.predicted_class == "PNEUMONIA"
        assert result.positive_probability == pytest.approx(0.8)
        assert not result.out_of_scope and result.scope_reasons == []
        kinds = sorted(o["kind"].split(":")[0] for o in result.objects)
        assert kinds == ["sc", "sr"]
        for obj in result.objects:
            written = dcmread(obj["path"])
            assert str(written.SOPInstanceUID) == obj["sop_instance_uid"]
        assert Path(result.heatmap_path).is_file()
        deliveries = session.scalars(select(Delivery).where(Delivery.job_id == job_id)).all()
        assert {d.sop_instance_uid for d in deliveries} == {
            o["sop_instance_uid"] for o in result.objects
        }
        assert {d.state for d in deliveries} == {DeliveryState.PENDING}
    assert _events(sessions, job_id) == [
        EventKind.JOB_QUEUED,
        EventKind.JOB_STARTED,
        EventKind.MODEL_RESULT,
        EventKind.JOB_DONE,
    ]


def test_runner_records_a_failing_model_and_sends_nothing(
    queued_job: tuple[Settings, Any, int],
) -> None:
    settings, sessions, job_id = queued_job
    JobRunner(settings, sessions, FakeProvider(FakeModel(fail="weights corrupt"))).run(job_id)

    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.state is JobState.FAILED
        assert job.error == "RuntimeError: weights corrupt"
        assert session.scalars(select(Result).where(Result.job_id == job_id)).all() == []
        assert session.scalars(select(Delivery)).all() == []
    assert _events(sessions, job_id)[-1] == EventKind.JOB_FAILED


def test_runner_fails_a_job_whose_route_is_gone(
    queued_job: tuple[Settings, Any, int], tmp_path: Path
) -> None:
    _settings_then, sessions, job_id = queued_job
    without_route = make_settings(tmp_path, routes=[], destinations=[])
    model = FakeModel()
    JobRunner(without_route, sessions, FakeProvider(model)).run(job_id)

    assert model.calls == 0
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.state is JobState.FAILED
        assert job.error == "route 'chest' is no longer configured"


def test_queue_claims_once_requeues_and_reruns(queued_job: tuple[Settings, Any, int]) -> None:
    _settings_unused, sessions, job_id = queued_job
    assert queue.claim_next(sessions, "other") is None  # the only job is running
    assert queue.requeue_interrupted(sessions, worker="other") == 0
    assert queue.requeue_interrupted(sessions, worker="test") == 1
    assert queue.claim_next(sessions, "other") == job_id
    queue.finish(sessions, job_id, JobState.DONE)
    with pytest.raises(ValueError, match="done or failed"):
        queue.finish(sessions, job_id, JobState.RUNNING)

    with sessions() as session:
        series_uid = session.get(Job, job_id).series.series_uid  # type: ignore[union-attr]
    [rerun] = queue.rerun_series(sessions, series_uid, reason="test")
    with sessions() as session:
        job = session.get(Job, rerun)
        assert job is not None and job.state is JobState.QUEUED and job.generation == 1
    with pytest.raises(queue.QueueError, match="unknown series"):
        queue.rerun_series(sessions, "1.2.3.999", reason="test")


def test_runner_flags_a_series_outside_the_intended_use(
    queued_job: tuple[Settings, Any, int],
) -> None:
    """The result is stored and sent all the same, flagged in the row, the event, the SR
    and the SC; the page's picture is the SC's labelled picture at display size."""
    settings, sessions, job_id = queued_job
    reason = "patient age 64 years, intended 0-17 years"
    model = FakeModel(out_of_scope=(reason,))
    JobRunner(settings, sessions, FakeProvider(model)).run(job_id)

    with sessions() as session:
        result = session.scalars(select(Result).where(Result.job_id == job_id)).one()
        assert result.out_of_scope and result.scope_reasons == [reason]
        detail = session.scalars(
            select(Event.detail).where(Event.job_id == job_id, Event.kind == EventKind.MODEL_RESULT)
        ).one()
        assert detail["out_of_scope"] is True
        assert len(session.scalars(select(Delivery)).all()) == len(result.objects) == 2
        objects = {o["kind"].split(":")[0]: dcmread(o["path"]) for o in result.objects}
        heatmap_path = Path(result.heatmap_path)
    assert objects["sc"].ImageComments.startswith(f"OUTSIDE INTENDED USE: {reason}")
    assert f"OUTSIDE INTENDED USE: {reason}" in _sr_texts(objects["sr"])
    assert model.last is not None
    expected = display_png(labelled_heatmap(model.last, model.last.heatmaps[0]))
    with Image.open(heatmap_path) as stored, Image.open(io.BytesIO(expected)) as wanted:
        assert stored.size == wanted.size
        assert np.array_equal(np.asarray(stored), np.asarray(wanted))
        columns, rows = stored.size
    # The band above the picture: taller than the source's aspect (1955 x 1841) alone.
    assert rows / columns > 1955 / 1841


def _sr_texts(ds: Dataset) -> list[str]:
    found = [str(ds.TextValue)] if "TextValue" in ds else []
    for item in ds.get("ContentSequence", []):
        found.extend(_sr_texts(item))
    return found
