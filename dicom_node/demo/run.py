"""``dicom-node demo``: the whole data path on real images, on one machine, offline.

The demo answers "what does this node do?" by doing it: it starts the node with the
embedded defaults (data in ``./demo-data``), a local PACS to receive results (Orthanc when
installed, else :class:`~dicom_node.demo.minipacs.BuiltinPacs`), turns real images that ship
with installed packages into demo studies with synthetic patients, has them pushed to the
node, waits until every routed series has its results in the PACS, and prints a table of
what happened. Then the node (and its admin page) keeps running until Ctrl-C, so a person
can look around.

Studies are pushed by Orthanc itself (``POST /modalities/node/store``) when Orthanc is the
PACS, as a hospital PACS would; with the built-in receiver the demo sends them with
:func:`dicom_node.dispatch.sender.send_paths`.

Everything here is NOT FOR DIAGNOSTIC USE: research models, demo images, synthetic names.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import __version__
from dicom_node.config import Settings
from dicom_node.demo.minipacs import (
    BuiltinPacs,
    LocalPacs,
    OrthancPacs,
    have_orthanc,
    orthanc_binary,
    port_or_free,
)
from dicom_node.identity import NOT_FOR_DIAGNOSTIC_USE
from dicom_node.store.db import Delivery, Job, Result, Series, Study
from dicom_node.store.states import OPEN_JOB_STATES, DeliveryState, SeriesState
from dicom_node.wording import probability_value

log = logging.getLogger(__name__)

PacsChoice = Literal["auto", "orthanc", "builtin"]
Print = Callable[[str], None]

# The pretend PACS's AE title when the demo itself sends the studies (built-in receiver).
DEMO_SENDER_AE = "DEMO_PACS"
# Series states after which the node does nothing more with a series (``db.Series``).
_FINAL_SERIES_STATES = frozenset({SeriesState.UNROUTED, SeriesState.IGNORED})
# How result kinds are named in the table, in the order they are listed.
_KIND_LABELS = {"sr": "SR", "sc": "SC", "pdf": "PDF", "forward": "copy"}


@dataclass(frozen=True)
class DemoOptions:
    """What ``dicom-node demo`` was asked to do (see ``commands/demo.py`` for the flags)."""

    data_dir: Path
    quiet_seconds: float = 3.0
    timeout: float = 900.0
    keep_running: bool = True
    pacs: PacsChoice = "auto"
    chest_images: int = 16
    web: bool = True


@dataclass(frozen=True)
class DemoSeries:
    """One demo series (each demo study has one series of one image)."""

    path: Path
    patient: str
    study_uid: str
    series_uid: str
    label: str = ""  # the class its source publishes (the chest X-rays' folder), if any


@dataclass(frozen=True)
class DemoRow:
    """One line of the result table: one model's result on one series (or why none)."""

    patient: str
    modality: str
    body_part: str
    route: str
    model: str = "-"
    predicted_class: str = "-"
    probability: float | None = None
    label: str = ""
    received: str = "nothing"
    seconds: float | None = None


@dataclass
class DemoRun:
    """What one demo run started, so that it can all be stopped in one place."""

    node: Any = None
    pacs: LocalPacs | None = None

    def stop(self) -> None:
        """Stop the node first (no delivery to a PACS that is going away), then the PACS."""
        if self.node is not None:
            self.node.stop()
            self.node = None
        if self.pacs is not None:
            self.pacs.stop()
            self.pacs = None


# -- demo studies ------------------------------------------------------------------------

# pydicom's real test images as demo studies: (file, synthetic patient, tags to set).
# The brain is emri_small: an Enhanced MR of the brain, 10 frames, Body Part HEAD. MR2_UNCI
# (StudyDescription SHOULDER) and MR_small are not brains, so they are not labelled as one.
_PYDICOM_STUDIES: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("RG1_UNCI.dcm", "DEMO^CR CHEST", {}),  # CR chest 1955 x 1841, MONOCHROME1
    ("emri_small.dcm", "DEMO^MR BRAIN", {}),  # the route takes 3 key slices and a PDF
    ("US1_UNCI.dcm", "DEMO^ULTRASOUND", {}),  # no route: nothing comes back
    ("CT_small.dcm", "DEMO^CT", {}),  # no route either
)


def interleaved_chest_pictures() -> list[Path]:
    """The pneumonia package's 16 JPEGs, alternating NORMAL and PNEUMONIA.

    Alternating means any first ``n`` of them (``--chest-images n``) still show both classes.
    """
    from dicom_node.demo.studymaker import pneumonia_package_pictures

    pictures = pneumonia_package_pictures()
    normal = [p for p in pictures if p.name.upper().startswith("NORMAL")]
    other = [p for p in pictures if p not in normal]
    mixed: list[Path] = []
    for index in range(max(len(normal), len(other))):
        mixed.extend(group[index] for group in (normal, other) if index < len(group))
    return mixed


def chest_label(picture: Path) -> str:
    """The class the package's validation folder gives a picture (from its file name)."""
    return "NORMAL" if picture.name.upper().startswith("NORMAL") else "PNEUMONIA"


def make_chest_series(folder: Path, count: int) -> list[DemoSeries]:
    """Convert up to ``count`` of the package's chest X-rays into DX studies."""
    from dicom_node.demo.studymaker import make_chest_study

    pictures = interleaved_chest_pictures()[: max(count, 0)]
    if not pictures:
        return []
    paths = make_chest_study(folder, pictures, bits_allocated=16)
    made = []
    for picture, path in zip(pictures, paths, strict=True):
        ds = dcmread(path, stop_before_pixels=True)
        made.append(
            DemoSeries(
                path=path,
                patient=str(ds.PatientName),
                study_uid=str(ds.StudyInstanceUID),
                series_uid=str(ds.SeriesInstanceUID),
                label=chest_label(picture),
            )
        )
    return made


def demo_copy(source: Path, target: Path, run_id: str, patient: str, tags: dict[str, str]) -> None:
    """Copy a real DICOM file as a demo study: synthetic patient, new UIDs, extra tags.

    The UIDs derive from the run id and the original UID, so one run is consistent and
    the next run makes new studies (a PACS would otherwise see the same instances again).
    """
    ds = dcmread(source)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        original = str(ds.get(keyword, "") or keyword)
        setattr(ds, keyword, generate_uid(entropy_srcs=[run_id, original]))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName = patient
    ds.PatientID = "DEMO-" + patient.split("^")[-1].replace(" ", "")[:10]
    ds.PatientBirthDate = ""
    ds.AccessionNumber = ""
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=True)


def make_pydicom_series(folder: Path, run_id: str) -> tuple[list[DemoSeries], list[str]]:
    """Demo studies from pydicom's test images; also returns notes on missing files.

    ``download=False``: the demo is offline, and pydicom would otherwise try to fetch a
    pydicom-data file that is not installed.
    """
    made: list[DemoSeries] = []
    notes: list[str] = []
    for name, patient, tags in _PYDICOM_STUDIES:
        found = get_testdata_file(name, download=False)
        if found is None:
            notes.append(f"{name} is not installed (pip install pydicom-data); skipped")
            continue
        target = folder / name
        demo_copy(Path(str(found)), target, run_id, patient, tags)
        ds = dcmread(target, stop_before_pixels=True)
        made.append(
            DemoSeries(
                path=target,
                patient=patient,
                study_uid=str(ds.StudyInstanceUID),
                series_uid=str(ds.SeriesInstanceUID),
            )
        )
    return made, notes


def make_demo_studies(
    folder: Path, run_id: str, chest_images: int
) -> tuple[list[DemoSeries], list[str]]:
    """Every demo study of this run, written under ``folder``; and notes on what is missing."""
    chest = make_chest_series(folder / "chest", chest_images)
    notes = [] if chest else ["pneumonia-model-package is not installed: no DX chest studies"]
    others, missing = make_pydicom_series(folder / "pydicom", run_id)
    return chest + others, notes + missing


# -- settings ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Ports:
    """Where the demo node listens."""

    scp: int
    web: int


def demo_settings(base: Settings, options: DemoOptions, ports: Ports, pacs: LocalPacs) -> Settings:
    """The base settings with the demo's data folder, ports, quiet period and PACS.

    Storage is forced to SQLite and a local spool in the demo folder, whatever the base
    configuration says: the demo must never write into a production database. The ``pacs``
    destination is pointed at the demo PACS (added when the configuration has none).

    Raises
    ------
    ValueError
        The combination does not validate (e.g. a negative quiet period).
    """
    data = base.model_dump(by_alias=True)
    data["node"] = {**data["node"], "data_dir": str(options.data_dir)}
    data["scp"] = {**data["scp"], "port": ports.scp}
    data["storage"] = {"spool_dir": "", "database_url": ""}
    data["completion"] = {
        **data["completion"],
        "quiet_seconds": options.quiet_seconds,
        "scan_interval": min(1.0, max(options.quiet_seconds / 4, 0.2)),
    }
    data["destinations"] = _with_demo_pacs(list(data.get("destinations", [])), pacs)
    if "web" in data:
        data["web"] = {**data["web"], "enabled": options.web, "port": ports.web}
    try:
        return Settings.model_validate({**data, "source": f"{base.source} + demo"})
    except ValidationError as exc:
        raise ValueError(str(exc)) from None


def _with_demo_pacs(destinations: list[dict[str, Any]], pacs: LocalPacs) -> list[dict[str, Any]]:
    """Point the ``pacs`` destination at the demo PACS, retrying quickly (it is local)."""
    target = {
        "ae_title": pacs.ae_title,
        "host": pacs.host,
        "port": pacs.port,
        "backoff_seconds": 1.0,
        "backoff_max": 10.0,
    }
    for index, dest in enumerate(destinations):
        if dest["name"] == "pacs":
            destinations[index] = {**dest, **target}
            return destinations
    return [*destinations, {"name": "pacs", **target}]


# -- waiting and reporting ---------------------------------------------------------------


def _current_jobs(session: Session, series: Series) -> list[Job]:
    """The jobs of the series' latest generation (a late instance starts a new one)."""
    return list(
        session.scalars(
            select(Job)
            .where(Job.series_id == series.id, Job.generation == series.generation)
            .order_by(Job.id)
        ).all()
    )


def series_finished(session: Session, series_uid: str) -> bool:
    """Whether the node is done with a series: routed and delivered (or failed), or not routed.

    A series not received yet, still in its quiet period, with a job queued or running, or
    with a delivery still pending (being retried) is not finished.
    """
    series = session.scalar(select(Series).where(Series.series_uid == series_uid))
    if series is None:
        return False
    if series.state in _FINAL_SERIES_STATES:
        return True
    if series.state != SeriesState.ROUTED:
        return False
    jobs = _current_jobs(session, series)
    if not jobs or any(job.state in OPEN_JOB_STATES for job in jobs):
        return False
    pending = session.scalar(
        select(Delivery.id)
        .where(
            Delivery.job_id.in_([job.id for job in jobs]), Delivery.state == DeliveryState.PENDING
        )
        .limit(1)
    )
    return pending is None


def wait_for_results(
    sessions: sessionmaker[Session],
    series_uids: Sequence[str],
    *,
    timeout: float,
    progress: Print | None = None,
    poll: float = 0.5,
) -> bool:
    """Wait until every series is finished (:func:`series_finished`); False on timeout."""
    started = time.monotonic()
    last_report = (-1, 0.0)
    while True:
        with sessions() as session:
            done = sum(series_finished(session, uid) for uid in series_uids)
        elapsed = time.monotonic() - started
        if progress is not None and done != last_report[0] and elapsed - last_report[1] >= 5:
            progress(f"  {done}/{len(series_uids)} series finished ({elapsed:.0f} s)")
            last_report = (done, elapsed)
        if done == len(series_uids):
            return True
        if elapsed > timeout:
            return False
        time.sleep(poll)


def _received_label(kinds: Iterable[str]) -> str:
    """``SR+SC+PDF`` from the kinds of objects a PACS holds (``SCx3`` for three SCs)."""
    counts = Counter(kind.split(":", 1)[0] for kind in kinds)
    parts = []
    for kind, label in _KIND_LABELS.items():
        if counts[kind]:
            parts.append(label if counts[kind] == 1 else f"{label}x{counts[kind]}")
    return "+".join(parts) or "nothing"


def _delivery_summary(session: Session, job: Job) -> tuple[dt.datetime | None, int]:
    """(when the last object of a job was delivered, how many deliveries failed)."""
    rows = session.scalars(select(Delivery).where(Delivery.job_id == job.id)).all()
    delivered = [row.delivered_at for row in rows if row.delivered_at is not None]
    return (max(delivered) if delivered else None), sum(
        row.state == DeliveryState.FAILED for row in rows
    )


def _job_rows(session: Session, base: DemoRow, series: Series, pacs: LocalPacs) -> list[DemoRow]:
    """Rows for a routed series: one per model result, or one saying why there is none."""
    rows: list[DemoRow] = []
    for job in _current_jobs(session, series):
        delivered_at, failed = _delivery_summary(session, job)
        seconds = (delivered_at - series.last_received_at).total_seconds() if delivered_at else None
        results = session.scalars(select(Result).where(Result.job_id == job.id)).all()
        if not results:
            state = f"job {job.state}" + (f": {job.error[:60]}" if job.error else "")
            rows.append(_replace(base, route=job.route_name, predicted_class=state))
            continue
        for result in results:
            objects = {str(o["sop_instance_uid"]): str(o["kind"]) for o in result.objects}
            held = pacs.holds(objects)
            received = _received_label(objects[uid] for uid in held)
            if failed:
                received += f" ({failed} failed)"
            probability = result.probabilities.get(result.predicted_class)
            rows.append(
                _replace(
                    base,
                    route=job.route_name,
                    model=result.model_id,
                    predicted_class=result.predicted_class,
                    probability=float(probability) if probability is not None else None,
                    received=received,
                    seconds=seconds,
                )
            )
    return rows or [_replace(base, route=series.route_name or "-", predicted_class="no job")]


def _replace(row: DemoRow, **changes: Any) -> DemoRow:
    """A copy of a row with some cells changed (rows are frozen)."""
    return DemoRow(**{**row.__dict__, **changes})


def collect_rows(
    sessions: sessionmaker[Session], demo: Sequence[DemoSeries], pacs: LocalPacs
) -> list[DemoRow]:
    """The result table from the node's database and what the PACS actually holds."""
    rows: list[DemoRow] = []
    with sessions() as session:
        for item in demo:
            series = session.scalar(select(Series).where(Series.series_uid == item.series_uid))
            if series is None:
                rows.append(DemoRow(item.patient, "?", "?", "not received", label=item.label))
                continue
            study = session.get(Study, series.study_id)
            base = DemoRow(
                patient=study.patient_name if study is not None else item.patient,
                modality=series.modality,
                body_part=series.body_part or "-",
                route="-",
                label=item.label,
            )
            if series.state == SeriesState.ROUTED:
                rows.extend(_job_rows(session, base, series, pacs))
            else:
                rows.append(_replace(base, route=series.state))
    return rows


_COLUMNS = (
    "patient",
    "modality",
    "body part",
    "route",
    "model",
    "class",
    "p(class)",
    "label",
    "PACS received",
    "seconds",
)


def _cells(row: DemoRow) -> list[str]:
    """A row as the table's text cells ("-" where there is nothing to say)."""
    return [
        row.patient,
        row.modality,
        row.body_part,
        row.route,
        row.model,
        row.predicted_class,
        "-" if row.probability is None else probability_value(row.probability),
        row.label or "-",
        row.received,
        "-" if row.seconds is None else f"{row.seconds:.1f}",
    ]


def format_table(rows: Sequence[DemoRow]) -> str:
    """A plain-text table, columns as wide as their widest cell."""
    lines = [list(_COLUMNS), *(_cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(_COLUMNS))]
    rule = "  ".join("-" * w for w in widths)
    text = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]
    return "\n".join([text[0], rule, *text[1:]])


def summary_lines(rows: Sequence[DemoRow]) -> list[str]:
    """What the table means in two or three sentences."""
    with_result = [r for r in rows if r.model != "-"]
    delivered = [r for r in with_result if r.received.startswith("SR")]
    lines = [f"{len(delivered)} of {len(with_result)} model result(s) arrived in the PACS."]
    failed = [r for r in rows if r.predicted_class.startswith("job ")]
    if failed:
        lines.append(f"{len(failed)} job(s) without a result (see the class column and the log).")
    labelled = [r for r in with_result if r.label]
    if labelled:
        agree = sum(r.predicted_class == r.label for r in labelled)
        lines.append(
            f"Chest X-rays classed as their source labels them: {agree} of {len(labelled)} "
            "(label: the pneumonia package's validation folder)."
        )
    lines.append(
        "seconds: from the last instance received to the last result delivered; includes "
        "the quiet period, and the first result of each model includes loading the model."
    )
    return lines


# -- the run -----------------------------------------------------------------------------


def _setup_logging(log_file: Path) -> None:
    """Node logs go to a file; the console keeps the demo's own story (and warnings).

    Worker processes inherit ``DICOM_NODE_LOG_LEVEL`` and log warnings only.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(log_file, encoding="utf-8")
    file_handler.setLevel(logging.INFO)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)-7s [demo] %(name)s: %(message)s",
        handlers=[file_handler, console],
        force=True,
    )
    for noisy in ("pynetdicom", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("DICOM_NODE_LOG_LEVEL", "WARNING")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def start_pacs(choice: PacsChoice, data_dir: Path, node: tuple[str, str, int]) -> LocalPacs:
    """Orthanc when asked for or (``auto``) installed and startable, else the built-in one.

    Raises
    ------
    RuntimeError
        ``orthanc`` was asked for and cannot run.
    """
    if choice in ("auto", "orthanc") and have_orthanc():
        try:
            return OrthancPacs(data_dir / "orthanc", node, binary=orthanc_binary()).start()
        except (RuntimeError, OSError) as exc:
            if choice == "orthanc":
                raise RuntimeError(f"Orthanc cannot start: {exc}") from exc
            log.warning("Orthanc cannot start (%s); using the built-in receiver", exc)
    elif choice == "orthanc":
        raise RuntimeError("Orthanc is not installed (apt-get install orthanc)")
    return BuiltinPacs(data_dir / "pacs", port_or_free(4242)).start()


def push_studies(pacs: LocalPacs, demo: Sequence[DemoSeries], node: Any, out: Print) -> None:
    """Have the studies arrive at the node: pushed by Orthanc, or sent by the demo.

    Raises
    ------
    RuntimeError
        The node did not accept every instance.
    """
    paths = [item.path for item in demo]
    if isinstance(pacs, OrthancPacs):
        out(f"Uploading {len(paths)} studies to Orthanc, then Orthanc pushes them to the node")
        out("  (POST /modalities/node/store, as a hospital PACS would)...")
        try:
            pacs.push_to_node(pacs.upload(paths))
        except OSError as exc:  # urllib's HTTPError and URLError are OSErrors
            raise RuntimeError(f"Orthanc could not push the studies: {exc}") from exc
        return
    from dicom_node.dispatch.sender import send_paths

    out(f"Sending {len(paths)} studies to the node (C-STORE as {DEMO_SENDER_AE})...")
    settings = node.settings
    summary = send_paths(
        paths,
        calling_ae=DEMO_SENDER_AE,
        called_ae=settings.node.ae_title,
        host="127.0.0.1",
        port=node.scp.bound_port,
        progress=False,
    )
    if not summary.ok:
        raise RuntimeError("the node did not accept every study:\n" + summary.describe())


def _web_lines(node: Any, settings: Settings) -> list[str]:
    """Where the admin page is and how to get an account (it has no sign-up)."""
    url = node.web_url
    if url is None:
        return ["Admin page: not running."]
    return [
        f"Admin page: {url}",
        "  create a user first (in another terminal):",
        f"  DICOM_NODE__NODE__DATA_DIR={settings.data_dir} "
        ".venv/bin/dicom-node users add admin --role admin",
    ]


def _model_notes(settings: Settings) -> list[str]:
    """Routes whose models have no weights installed: their series are not processed."""
    from dicom_node.route.waits import model_availability

    available = model_availability(settings)
    waiting = [r.name for r in settings.routes if not all(available(m) for m in r.models)]
    if not waiting:
        return []
    return [
        f"routes waiting for model weights (not used by the demo): {', '.join(waiting)}; "
        "`dicom-node models list` says how to install them"
    ]


def _start_node(settings: Settings) -> Any:
    """Start the node as ``serve`` would; a half-started node is stopped before re-raising."""
    from dicom_node.node import Node

    node = Node(settings, web=settings.web.enabled if hasattr(settings, "web") else False)
    try:
        node.start()
    except BaseException:
        node.stop()
        raise
    _quiet_web_server_logs()
    return node


def _quiet_web_server_logs() -> None:
    """Send uvicorn's request and shutdown lines to the demo log instead of the console.

    uvicorn installs its own console handlers when it starts; the demo's console is for
    the demo's story, and the log file keeps everything.
    """
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def _wait_for_interrupt() -> None:
    """Block until Ctrl-C or SIGTERM (the node runs in its own threads and processes)."""
    stop = threading.Event()

    def _on_signal(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    stop.wait()


def run_demo(base: Settings, options: DemoOptions, out: Print = print) -> int:
    """Run the demo; returns the exit status (0: every routed series got its results).

    Parameters
    ----------
    base
        The configuration the demo starts from (the embedded defaults, or ``--config``).
    options
        Data folder, quiet period, timeout, PACS choice, whether to keep running.
    out
        Where the demo's story goes (the console).
    """
    if threading.current_thread() is threading.main_thread():
        # SIGTERM like Ctrl-C: the finally below stops the node, worker and Orthanc.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    data_dir = options.data_dir.resolve()
    options = _replace_options(options, data_dir=data_dir)
    _setup_logging(data_dir / "logs" / "demo.log")
    run = DemoRun()
    try:
        return _run(base, options, run, out)
    except KeyboardInterrupt:
        out("Interrupted; stopping.")
        return 130
    except RuntimeError as exc:
        out(f"demo failed: {exc}")
        return 1
    finally:
        run.stop()


def _replace_options(options: DemoOptions, **changes: Any) -> DemoOptions:
    """A copy of the options with some changed (options are frozen)."""
    return DemoOptions(**{**options.__dict__, **changes})


def _run(base: Settings, options: DemoOptions, run: DemoRun, out: Print) -> int:
    """The demo's story, step by step; ``run`` collects what must be stopped afterwards."""
    out(f"dicom-node {__version__} demo. {NOT_FOR_DIAGNOSTIC_USE}")
    out(f"Data folder: {options.data_dir} (node log: {options.data_dir / 'logs' / 'demo.log'})")
    demo = _make_studies(options, out)
    if not demo:
        out("No demo images are installed; nothing to show.")
        return 1
    node, pacs = _start_services(base, options, run, out)
    push_studies(pacs, demo, node, out)
    out(f"Waiting for results (models load on first use; timeout {options.timeout:g} s)...")
    finished = wait_for_results(
        node.sessions, [item.series_uid for item in demo], timeout=options.timeout, progress=out
    )
    rows = collect_rows(node.sessions, demo, pacs)
    _report(rows, finished, options, out)
    if options.keep_running:
        out("")
        out("The node keeps running (send your own studies to it, look at the admin page).")
        out("Ctrl-C stops it.")
        _wait_for_interrupt()
        out("Stopping.")
    return 0 if finished and all_delivered(rows) else 1


def _make_studies(options: DemoOptions, out: Print) -> list[DemoSeries]:
    """This run's demo studies, in a folder of their own (a run id keeps runs apart)."""
    run_id = dt.datetime.now().strftime("%Y%m%d%H%M%S")
    folder = options.data_dir / "studies" / run_id
    demo, notes = make_demo_studies(folder, run_id, options.chest_images)
    for note in notes:
        out(f"note: {note}")
    if demo:
        out(f"Made {len(demo)} demo studies (synthetic patients) from real images in {folder}")
    return demo


def _start_services(
    base: Settings, options: DemoOptions, run: DemoRun, out: Print
) -> tuple[Any, LocalPacs]:
    """Start the PACS, then the node pointed at it; returns both (also kept in ``run``).

    The node's port is chosen first because Orthanc's configuration must name it.

    Raises
    ------
    RuntimeError
        The PACS cannot start, or the demo settings are invalid.
    """
    ports = Ports(scp=port_or_free(base.scp.port), web=port_or_free(_web_port(base)))
    pacs = run.pacs = start_pacs(
        options.pacs, options.data_dir, (base.node.ae_title, "127.0.0.1", ports.scp)
    )
    out(f"PACS: {pacs.description}")
    try:
        settings = demo_settings(base, options, ports, pacs)
    except ValueError as exc:
        raise RuntimeError(f"invalid demo settings: {exc}") from exc
    for note in _model_notes(settings):
        out(f"note: {note}")
    run.node = _start_node(settings)
    out(
        f"Node: {settings.node.ae_title} on 127.0.0.1:{run.node.scp.bound_port}, "
        f"quiet period {settings.completion.quiet_seconds:g} s, "
        f"{settings.workers.processes} worker process(es); results go to 'pacs' "
        f"({pacs.ae_title}@{pacs.host}:{pacs.port})"
    )
    for line in _web_lines(run.node, settings):
        out(line)
    return run.node, pacs


def all_delivered(rows: Sequence[DemoRow]) -> bool:
    """Whether every series a route took has its SR in the PACS (the demo's success)."""
    routed = [r for r in rows if r.route not in _FINAL_SERIES_STATES]
    return all(r.received.startswith("SR") for r in routed)


def _web_port(base: Settings) -> int:
    """The configured admin page port (8080 when the settings have no web section)."""
    web = getattr(base, "web", None)
    return int(getattr(web, "port", 8080))


def _report(rows: Sequence[DemoRow], finished: bool, options: DemoOptions, out: Print) -> None:
    """Print the table, what it means, and the disclaimer once more."""
    out("")
    out("RESULTS - NOT FOR DIAGNOSTIC USE (research models, demo images, synthetic patients)")
    out(format_table(rows))
    out("")
    for line in summary_lines(rows):
        out(line)
    if not finished:
        out(f"Timed out after {options.timeout:g} s: some series were still being processed.")
    out(NOT_FOR_DIAGNOSTIC_USE)


__all__ = [
    "DemoOptions",
    "DemoRow",
    "DemoSeries",
    "all_delivered",
    "collect_rows",
    "demo_settings",
    "format_table",
    "make_demo_studies",
    "run_demo",
    "wait_for_results",
]
