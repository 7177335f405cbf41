"""The upload door, as the original apps had it: DICOM files or one picture in, a result out.

Shared by the upload page (``upload_pages``) and ``POST /api/predict`` (``predict``).
A request is ``multipart/form-data``: DICOM files, or one JPEG/PNG picture with the
modality and body part chosen and the patient typed in or marked anonymous. It takes the
node's one durable path:

1. The body streams into the spool's ``.incoming`` folder (``formdata``), every file and
   the whole request bounded while they arrive (413).
2. Everything is checked before anything is stored (``upload_plan``): each file is a DICOM
   file that passes the receiver's header check, or the one picture is a JPEG or PNG that
   becomes a Secondary Capture (``results.capture``); images are at least
   ``[upload] min_image_size`` and the input of the models their route runs; a route takes
   the upload (evaluated as completion will, ``route.rules``). A refusal is a 4xx with the
   reason, and nothing is stored.
3. Each instance goes through ``receive.ingest.Ingestor.ingest``, as a C-STORE or a
   STOW-RS part does: header checked, fsynced, linked, indexed, with calling AE
   ``[upload] calling_ae`` and the user in its ``instance.received`` event.
4. The upload has ended, so its series are complete now: they are completed and routed
   like the series of a clean association release (``route.completion``, policy
   "upload"), not after the quiet period; the worker is woken.

Every upload, refused or not, is audited with the user and the client address.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from concurrent import futures
from dataclasses import dataclass
from typing import Literal

from fastapi import HTTPException, Request
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from dicom_node.receive.incoming import IncomingFile
from dicom_node.receive.index import IndexCache
from dicom_node.receive.ingest import Claim, Ingestor, Origin, refuse
from dicom_node.receive.spool import SpoolFullError
from dicom_node.receive.statuses import StoreRejectedError
from dicom_node.route.completion import complete_uploaded_series
from dicom_node.store.db import Series, utcnow
from dicom_node.web import csrf
from dicom_node.web.audit import audit
from dicom_node.web.auth import WebUser, client_address
from dicom_node.web.context import WebContext, get_context
from dicom_node.web.formdata import FormReceiver
from dicom_node.web.multipart import BodyRefusedError, Part, boundary_of, receive_parts
from dicom_node.web.upload_plan import (
    Plan,
    UploadRefusedError,
    fields_of,
    plan,
)

__all__ = ["UploadOutcome", "UploadRefusedError", "fields_of", "handle", "store"]

log = logging.getLogger(__name__)

FORM_DATA = "multipart/form-data"


@dataclass(frozen=True)
class SeriesRoute:
    """Where an uploaded series went, as the study page and the API show it."""

    series_uid: str
    modality: str
    body_part: str
    state: str
    route: str
    reasons: list[str]


@dataclass(frozen=True)
class UploadOutcome:
    """A stored upload: its study and the route of each of its series."""

    kind: Literal["dicom", "picture"]
    study_uid: str
    stored: int
    duplicates: int
    series: list[SeriesRoute]

    @property
    def summary(self) -> str:
        """One line for the page: what was stored and where it goes."""
        what = (
            "1 picture as a Secondary Capture in a new study"
            if self.kind == "picture"
            else f"{self.stored + self.duplicates} DICOM file(s)"
        )
        routes = "; ".join(
            f"series {s.modality} {s.body_part}: "
            + (f"route {s.route}" if s.route else f"not routed ({s.state})")
            for s in self.series
        )
        return f"Uploaded {what}. {routes}."


# -- receiving the body ------------------------------------------------------------------


async def receive(request: Request, ctx: WebContext, pool: futures.Executor) -> FormReceiver:
    """Stream the request's form into ``.incoming``; the receiver holds every part.

    Raises
    ------
    UploadRefusedError
        415 not ``multipart/form-data``, 413 over a limit, 400 malformed or cut short.
        The parts received so far are in the exception's ``receiver`` attribute when one
        was made (the caller removes their files).
    """
    media, _kind, boundary = boundary_of(request.headers.get("content-type", ""))
    if media != FORM_DATA:
        raise UploadRefusedError(
            415,
            f"Content-Type must be {FORM_DATA} (a form with files: curl -F file=@x.dcm); "
            f"got {media or 'none'}",
        )
    if not boundary:
        raise UploadRefusedError(400, "Content-Type has no boundary parameter")
    limits = ctx.settings.upload
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_request_size:
        raise UploadRefusedError(
            413,
            f"request body of {declared} bytes is larger than {limits.max_request_size} "
            "(upload.max_request_size)",
        )
    try:
        receiver = FormReceiver(
            boundary,
            ctx.spool.tmp,
            max_bytes=limits.max_request_size,
            max_file_bytes=limits.max_file_size,
            max_files=limits.max_files,
            background=pool.submit,
        )
    except BodyRefusedError as exc:
        raise UploadRefusedError(exc.status, exc.reason) from None
    request.state.upload_receiver = receiver  # for the caller's clean-up, whatever happens
    try:
        await receive_parts(
            request.stream(),
            receiver,
            body_timeout=limits.body_timeout,
            setting="upload.body_timeout",
        )
    except BodyRefusedError as exc:
        raise UploadRefusedError(exc.status, exc.reason) from None
    except ClientDisconnect:
        raise UploadRefusedError(400, "the client went away mid-request") from None
    return receiver


def discard(parts: Iterable[Part], made: Iterable[IncomingFile] = ()) -> None:
    """Remove the request's temporary files (stored ones are linked under their final
    names already), after their fsyncs: no fsync outlives its file."""
    files = [p.file for p in parts if p.file is not None] + list(made)
    futures.wait([f.synced for f in files if f.synced is not None])
    for incoming in files:
        incoming.close()
        try:
            os.unlink(incoming.name)
        except FileNotFoundError:
            pass
        except OSError as exc:  # removed at the next start-up (clean_incoming)
            log.warning("could not remove %s: %s", incoming.name, exc)


# -- storing it ---------------------------------------------------------------------------


def store(ctx: WebContext, planned: Plan, origin: Origin) -> UploadOutcome:
    """Ingest every instance of a checked upload, then complete and route its series.

    Raises
    ------
    UploadRefusedError
        507 / 503 when the spool or the database fails (what was stored before stays
        durable and indexed, as after a C-STORE association cut short); 422 when an
        instance is refused after all (it changed on disk: not expected).
    """
    ingestor = Ingestor(ctx.settings, ctx.sessions, ctx.spool)
    cache = IndexCache()
    stored = duplicates = 0
    series_uids: list[str] = []
    for item in planned.staged:
        try:
            done = ingestor.ingest(
                item.path,
                Claim(item.sop_class_uid, item.sop_instance_uid),
                origin,
                file_synced=item.synced,
                cache=cache,
            )
        except Exception as exc:
            refusal = refuse("upload", item.sop_instance_uid or item.label, exc)
            status = 422 if isinstance(exc, StoreRejectedError) else 503
            if isinstance(exc, SpoolFullError):
                status = 507
            raise UploadRefusedError(
                status,
                f"file {item.label!r}: 0x{refusal.status:04X} {refusal.reason}"
                + (f" ({stored} file(s) before it were stored)" if stored else ""),
            ) from None
        if done.outcome.created:
            stored += 1
        else:
            duplicates += 1
        if done.meta.series_uid not in series_uids:
            series_uids.append(done.meta.series_uid)
    # Taken after the last instance was indexed: the claim completes a series only if
    # nothing of it arrived later (from another sender).
    complete_uploaded_series(
        ctx.sessions,
        ctx.settings,
        series_uids,
        uploaded_at=utcnow(),
        calling_ae=origin.calling_ae,
        model_available=ctx.model_available,
        on_queued=ctx.on_queued,
    )
    return UploadOutcome(
        planned.kind, planned.study_uid, stored, duplicates, series_routes(ctx, series_uids)
    )


def series_routes(ctx: WebContext, series_uids: list[str]) -> list[SeriesRoute]:
    """State and route of each series, as completion recorded them."""
    with ctx.sessions() as db:
        rows = {
            s.series_uid: s
            for s in db.scalars(select(Series).where(Series.series_uid.in_(series_uids)))
        }
    out = []
    for uid in series_uids:
        row = rows.get(uid)
        if row is None:
            continue
        out.append(
            SeriesRoute(
                series_uid=uid,
                modality=row.modality,
                body_part=row.body_part,
                state=str(row.state),
                route=row.route_name or "",
                reasons=[r for r in (row.route_reason or "").splitlines() if r],
            )
        )
    return out


# -- the whole door -----------------------------------------------------------------------


async def handle(request: Request, user: WebUser, *, via: str) -> UploadOutcome:
    """Receive, check, store and route one upload; audited either way.

    Raises
    ------
    UploadRefusedError
        Refused whole, nothing stored (see :func:`receive`, ``upload_plan.plan``, :func:`store`).
    HTTPException
        403 when the form carries no valid CSRF token (a session upload from a page).
    """
    ctx = get_context(request)
    action = "predict" if via == "api" else "upload"
    pool = futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="upload-sync")
    planned: Plan | None = None
    try:
        try:
            receiver = await receive(request, ctx, pool)
            if getattr(request.state, "csrf_deferred", False):
                csrf.verify(request, fields_of(receiver.parts).get(csrf.FIELD, ""))
            planned = await run_in_threadpool(plan, ctx, receiver.parts)
            origin = Origin(ctx.settings.upload.calling_ae, client_address(request), user.username)
            outcome = await run_in_threadpool(store, ctx, planned, origin)
        except UploadRefusedError as exc:
            await run_in_threadpool(_audit_refused, request, user, action, via, exc)
            # The reason may name an uploaded file (a file name can be a patient's name):
            # it goes to the answer and the audit log, not to the log file.
            log.warning(
                "upload from %s by %s refused: %d",
                client_address(request),
                user.username,
                exc.status,
            )
            raise
        except HTTPException as exc:
            refused = UploadRefusedError(exc.status_code, str(exc.detail))
            await run_in_threadpool(_audit_refused, request, user, action, via, refused)
            raise
        except Exception as exc:  # a bug: still audited, answered 500, nothing left behind
            failed = UploadRefusedError(500, f"internal error: {type(exc).__name__}")
            await run_in_threadpool(_audit_refused, request, user, action, via, failed)
            log.exception("upload from %s failed", client_address(request))
            raise
    finally:
        receiver_parts = getattr(request.state, "upload_receiver", None)
        parts = receiver_parts.parts if receiver_parts is not None else []
        await run_in_threadpool(discard, parts, planned.made if planned else [])
        pool.shutdown(wait=False)
    await run_in_threadpool(_audit_stored, request, user, action, via, planned, outcome)
    log.info(
        "upload from %s by %s: %d stored, %d already stored, study %s",
        client_address(request),
        user.username,
        outcome.stored,
        outcome.duplicates,
        outcome.study_uid,
    )
    return outcome


def _audit_refused(
    request: Request, user: WebUser, action: str, via: str, exc: UploadRefusedError
) -> None:
    with get_context(request).sessions() as db:
        audit(
            db,
            request,
            user.username,
            action,
            success=False,
            detail={"status": exc.status, "reason": exc.reason[:500], "via": via},
        )


def _audit_stored(
    request: Request,
    user: WebUser,
    action: str,
    via: str,
    planned: Plan | None,
    outcome: UploadOutcome,
) -> None:
    with get_context(request).sessions() as db:
        audit(
            db,
            request,
            user.username,
            action,
            outcome.study_uid,
            detail={
                "via": via,
                "kind": outcome.kind,
                "files": len(planned.files) if planned else 0,
                "stored": outcome.stored,
                "duplicates": outcome.duplicates,
                "series": {s.series_uid: s.route or s.state for s in outcome.series},
            },
        )
