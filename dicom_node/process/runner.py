"""One job: load the series, run the route's models, build result objects, queue deliveries.

Every output is idempotent: result UIDs are derived from (series, model, version, kind,
generation) and deliveries are unique per (destination, SOP Instance UID), so a job re-run
after a crash rewrites the same files and sends nothing twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import LiveSettings, Route, Settings
from dicom_node.dispatch.delivery import ensure_delivery
from dicom_node.process import queue
from dicom_node.process.heatmap import display_png
from dicom_node.receive.objectstore import Storage, storage_for
from dicom_node.store import history
from dicom_node.store.db import Instance, Job, Result, Series, Study
from dicom_node.store.states import EventKind, JobState
from inference.types import SeriesPrediction

if TYPE_CHECKING:
    from dicom_node.results import SRClass

log = logging.getLogger(__name__)


class SeriesModel(Protocol):
    """What the pipeline needs from a loaded model (``inference.registry.LoadedModel``)."""

    def predict_series(
        self, datasets: Sequence[Dataset], *, key_slices: int = 1, explain: bool = True
    ) -> SeriesPrediction: ...


class ModelProvider(Protocol):
    def get(self, model_id: str) -> SeriesModel: ...


class JobError(Exception):
    """A job failed for a reason worth showing to the admin as it is."""


@dataclass(frozen=True)
class JobContext:
    job_id: int
    generation: int
    route: Route
    study_uid: str
    series_uid: str
    # (sop_class_uid, sop_instance_uid, location: a spool file or an object)
    instances: tuple[tuple[str, str, str], ...]
    # The settings in force when the job started: an edit of the routes or destinations
    # on the admin page while it runs applies to the next job, not half of this one.
    settings: Settings


def _load_context(session: Session, settings: Settings, job: Job) -> JobContext:
    series = session.get(Series, job.series_id)
    if series is None:
        raise JobError(f"series {job.series_id} no longer exists")
    study_uid = session.scalar(select(Study.study_uid).where(Study.id == series.study_id)) or ""
    try:
        route = settings.route(job.route_name)
    except KeyError:
        raise JobError(f"route {job.route_name!r} is no longer configured") from None
    rows = session.execute(
        select(Instance.sop_class_uid, Instance.sop_instance_uid, Instance.path)
        .where(Instance.series_id == series.id)
        .order_by(Instance.instance_number.is_(None), Instance.instance_number, Instance.id)
    ).all()
    if not rows:
        raise JobError("series has no instances")
    return JobContext(
        job_id=job.id,
        generation=job.generation,
        route=route,
        study_uid=study_uid,
        series_uid=series.series_uid,
        instances=tuple((r[0], r[1], r[2]) for r in rows),
        settings=settings,
    )


class JobRunner:
    """Runs jobs; the model provider is injected so tests and the CLI can pass their own."""

    def __init__(
        self,
        settings: Settings | LiveSettings,
        sessions: sessionmaker[Session],
        models: ModelProvider | None,
        *,
        on_deliveries: Callable[[], None] | None = None,
        storage: Storage | None = None,
    ) -> None:
        """``on_deliveries`` is called after each commit that queued deliveries (the
        node rings the delivery thread's doorbell: results go out without a poll wait).
        ``settings`` may be live (``LiveSettings``): each job reads it once as it starts.
        ``storage`` reads the instances and keeps the results (default: the settings')."""
        self.live = LiveSettings.of(settings)
        self.sessions = sessions
        self.models = models
        self.on_deliveries = on_deliveries
        self.storage = storage if storage is not None else storage_for(self.live.current)

    @property
    def settings(self) -> Settings:
        """The settings in force now; a running job uses its ``JobContext.settings``."""
        return self.live.current

    def _deliveries_queued(self) -> None:
        if self.on_deliveries is not None:
            try:
                self.on_deliveries()
            except Exception:  # the delivery poll sends them anyway
                log.exception("could not wake the delivery")

    def run(self, job_id: int, worker: str | None = None) -> None:
        """Run a claimed job to ``done`` or ``failed``; never raises for job errors.

        ``worker`` (cluster mode) is who claimed it: the outcome is written only while
        that worker still holds the job (``queue.finish``).
        """
        started = time.monotonic()
        with self.sessions() as session:
            job = session.get(Job, job_id)
            if job is None:
                return
            try:
                ctx = _load_context(session, self.settings, job)
            except JobError as exc:
                log.warning("job %d failed: %s", job_id, exc)
                queue.finish(
                    self.sessions,
                    job_id,
                    JobState.FAILED,
                    error=str(exc),
                    started=started,
                    worker=worker,
                )
                return
        try:
            if ctx.route.forward:
                self._forward(ctx)
            for model_id in ctx.route.models:
                self._run_model(ctx, model_id)
        except Exception as exc:
            log.exception("job %d failed", job_id)
            queue.finish(
                self.sessions,
                job_id,
                JobState.FAILED,
                error=f"{type(exc).__name__}: {exc}",
                started=started,
                worker=worker,
            )
            return
        queue.finish(self.sessions, job_id, JobState.DONE, started=started, worker=worker)

    # -- steps ------------------------------------------------------------------------
    def _forward(self, ctx: JobContext) -> None:
        with self.sessions() as session:
            created = 0
            for dest in ctx.route.destinations:
                for sop_class, sop_uid, path in ctx.instances:
                    _, new = ensure_delivery(
                        session,
                        destination=dest,
                        sop_class_uid=sop_class,
                        sop_instance_uid=sop_uid,
                        path=path,
                        study_uid=ctx.study_uid,
                        kind="forward",
                        job_id=ctx.job_id,
                    )
                    created += int(new)
            history.record(
                session,
                EventKind.JOB_FORWARD_QUEUED,
                study_uid=ctx.study_uid,
                series_uid=ctx.series_uid,
                job_id=ctx.job_id,
                deliveries=created,
                destinations=list(ctx.route.destinations),
            )
            session.commit()
        if created:
            self._deliveries_queued()

    def _run_model(self, ctx: JobContext, model_id: str) -> None:
        if self.models is None:
            raise JobError("no model runtime in this process")
        t0 = time.monotonic()
        model = self.models.get(model_id)
        load_s = time.monotonic() - t0
        t1 = time.monotonic()
        datasets = [self.storage.read_dataset(location) for _, _, location in ctx.instances]
        read_s = time.monotonic() - t1
        prediction = model.predict_series(datasets, key_slices=ctx.route.key_slices)
        t2 = time.monotonic()
        objects = self._build_and_store(ctx, datasets, prediction)
        # Each step's time is kept with the result, so a slow step shows on the admin
        # page and in the latency benchmark instead of hiding in the job's total.
        timings = {
            "model_load": load_s,
            "read": read_s,
            **prediction.timings,
            "results": time.monotonic() - t2,
        }
        with self.sessions() as session:
            result = session.scalar(
                select(Result).where(Result.job_id == ctx.job_id, Result.model_id == model_id)
            )
            if result is None:
                result = Result(job_id=ctx.job_id, model_id=model_id)
                session.add(result)
            result.model_version = prediction.model.version
            result.predicted_class = prediction.predicted_class
            result.positive_probability = prediction.positive_probability
            result.probabilities = dict(prediction.probabilities)
            result.slice_scores = [
                {
                    "sop_instance_uid": s.sop_instance_uid,
                    "frame": s.frame,
                    "score": s.positive_score,
                    "probabilities": dict(s.probabilities),
                }
                for s in prediction.slices
            ]
            result.timings = {k: round(v, 4) for k, v in timings.items()}
            # Outside the intended use: stored and sent all the same, flagged everywhere.
            result.out_of_scope = bool(prediction.out_of_scope)
            result.scope_reasons = list(prediction.out_of_scope)
            result.objects = [
                {"kind": kind, "sop_instance_uid": uid, "sop_class_uid": cls, "path": str(p)}
                for kind, uid, cls, p in objects
            ]
            session.flush()
            history.record(
                session,
                EventKind.MODEL_RESULT,
                study_uid=ctx.study_uid,
                series_uid=ctx.series_uid,
                job_id=ctx.job_id,
                duration_ms=round(timings.get("total", 0.0) * 1000, 1),
                model=model_id,
                version=prediction.model.version,
                predicted_class=prediction.predicted_class,
                probability=prediction.positive_probability,
                out_of_scope=bool(prediction.out_of_scope),
            )
            for dest in ctx.route.destinations:
                for kind, uid, cls, path in objects:
                    if not _object_for_destination(kind, ctx.settings, dest):
                        continue
                    ensure_delivery(
                        session,
                        destination=dest,
                        sop_class_uid=cls,
                        sop_instance_uid=uid,
                        path=path,
                        study_uid=ctx.study_uid,
                        kind=kind.split(":")[0],
                        job_id=ctx.job_id,
                    )
            session.commit()
            result_id = result.id
        if ctx.route.destinations:
            self._deliveries_queued()
        # The admin page's picture is not on the way to the PACS: it is written once the
        # results are queued, while the delivery thread (in the node process) sends them.
        t3 = time.monotonic()
        heatmap_path = self._store_heatmap(ctx, model_id, prediction)
        with self.sessions() as session:
            stored = session.get(Result, result_id)
            if stored is not None:
                stored.heatmap_path = heatmap_path or ""
                stored.timings = {
                    **stored.timings,
                    "heatmap_png": round(time.monotonic() - t3, 4),
                }
                session.commit()

    def _build_and_store(
        self, ctx: JobContext, datasets: Sequence[Dataset], prediction: SeriesPrediction
    ) -> list[tuple[str, str, str, str]]:
        """Build SR/SC(/PDF) objects and store them (``data/results`` or the bucket).

        One SR is built per SR class needed by the route's destinations (a PACS without 3D
        SR support gets a Comprehensive SR); the kind is "sr:<class>" to keep their UIDs apart.
        """
        from dicom_node.results import build_results

        sr_classes: list[SRClass] = sorted(
            {ctx.settings.destination(d).sr_class for d in ctx.route.destinations}
            or {"comprehensive3d"}
        )
        predecessor = self._predecessor(ctx, prediction.model.id)
        stored: dict[str, tuple[str, str, str, str]] = {}
        for sr_class in sr_classes:
            built = build_results(
                datasets,
                prediction,
                generation=ctx.generation,
                sr_class=sr_class,
                include_pdf=ctx.route.pdf,
                key_slices=ctx.route.key_slices,
                predecessor=predecessor.get(sr_class),
            )
            for obj in built:
                ds = obj.dataset
                uid = str(ds.SOPInstanceUID)
                kind = f"sr:{sr_class}" if obj.kind == "sr" else obj.kind
                if uid in {v[1] for v in stored.values()}:
                    continue
                location = self.storage.write_result(self._result_name(ctx, ds), _encode(ds))
                stored[f"{kind}:{uid}"] = (kind, uid, str(ds.SOPClassUID), location)
        return list(stored.values())

    def _predecessor(self, ctx: JobContext, model_id: str) -> dict[str, Any]:
        """The SR of the previous generation, per SR class, for PredecessorDocumentsSequence."""
        if ctx.generation == 0:
            return {}
        from dicom_node.results import Predecessor

        with self.sessions() as session:
            previous = session.execute(
                select(Result.objects)
                .join(Job, Job.id == Result.job_id)
                .join(Series, Series.id == Job.series_id)
                .where(
                    Series.series_uid == ctx.series_uid,
                    Job.generation < ctx.generation,
                    Job.state == JobState.DONE,
                    Result.model_id == model_id,
                )
                .order_by(Job.generation.desc())
                .limit(1)
            ).scalar()
        found: dict[str, Any] = {}
        for obj in previous or []:
            kind = str(obj.get("kind", ""))
            if not kind.startswith("sr:") or not self.storage.exists(obj["path"]):
                continue
            ds = self.storage.read_dataset(obj["path"], stop_before_pixels=True)
            found[kind.split(":", 1)[1]] = Predecessor.from_dataset(ds)
        return found

    def _result_name(self, ctx: JobContext, ds: Dataset) -> str:
        """``<study>/<series>/<sop>.dcm`` under the results folder or prefix."""
        return f"{ctx.study_uid}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"

    def _store_heatmap(
        self, ctx: JobContext, model_id: str, prediction: SeriesPrediction
    ) -> str | None:
        """Write the admin page's picture of the key heatmap: the Secondary Capture's
        labelled picture at display size (see ``dicom_node.process.heatmap``)."""
        if not prediction.heatmaps:
            return None
        from dicom_node.results.picture import labelled_heatmap

        name = f"heatmaps/{ctx.series_uid}_{model_id}_g{ctx.generation}.png"
        picture = labelled_heatmap(prediction, prediction.heatmaps[0])
        return self.storage.write_result(name, display_png(picture))


def _object_for_destination(kind: str, settings: Settings, dest: str) -> bool:
    """SR objects go only to destinations that asked for their SR class."""
    if not kind.startswith("sr:"):
        return True
    return kind.split(":", 1)[1] == settings.destination(dest).sr_class


def _encode(ds: Dataset) -> bytes:
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
