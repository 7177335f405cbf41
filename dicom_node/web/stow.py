"""The STOW-RS door: ``POST /dicomweb/studies`` and ``/dicomweb/studies/{StudyInstanceUID}``
(PS3.18 10.5, Store Transaction).

A DICOMweb sender (a PACS, a cloud archive, ``dicomweb-client``, curl) POSTs instances as
``multipart/related; type="application/dicom"``, one Part 10 file per part. Each part
takes the same durable path as a C-STORE (``receive.ingest``): streamed to a file in the
spool's ``.incoming`` folder as it arrives, header checked and UIDs validated, fsynced,
linked under its final name, indexed; the response is sent only after every part has its
verdict. A refused part does not stop the others: the Store Instances Response
(``store_response``) lists each instance as stored or failed with its Failure Reason, and
the HTTP status says how many made it (200 all, 202 some, 409 none).

Refused whole, nothing stored: no valid bearer token (401), a role that may not store
(403), not ``multipart/related; type="application/dicom"`` (415), a body over
``[dicomweb] max_request_size`` or with more than ``max_instances`` parts (413), a body
that is malformed or ends before its closing boundary (400). To make that promise the
whole body is received before any part is ingested; the parts' files wait in
``.incoming`` (their fsyncs already running) meanwhile.

Authentication is by API token only (``dicom-node users token NAME``), never the session
cookie, so there is no CSRF to guard against. Every request is audited (``stow``) with its
user, client address and counts; each stored instance's ``instance.received`` event has
calling AE ``[dicomweb] calling_ae`` ("STOW") and the user.
"""

from __future__ import annotations

import logging
import os
from concurrent import futures
from typing import Annotated, Any, NoReturn

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from dicom_node.receive.index import IndexCache
from dicom_node.receive.ingest import Claim, Ingestor, Origin, refuse
from dicom_node.receive.meta import file_meta_claims
from dicom_node.receive.spool import SpoolFullError
from dicom_node.receive.statuses import Status
from dicom_node.web.audit import audit
from dicom_node.web.auth import WebUser, bearer_user, client_address, token_problem
from dicom_node.web.context import WebContext, get_context, get_db
from dicom_node.web.multipart import (
    DICOM,
    BodyRefusedError,
    Part,
    PartsReceiver,
    boundary_of,
    receive_parts,
)
from dicom_node.web.pages import UID_PATTERN
from dicom_node.web.store_response import (
    JSON_TYPE,
    XML_TYPE,
    InstanceResult,
    http_status,
    to_json,
    to_xml,
    wants_xml,
)

log = logging.getLogger(__name__)

# Not in the JSON API's OpenAPI schema: a DICOM service whose contract is PS3.18 (multipart
# in, DICOM JSON or XML out), documented in the README's conformance section.
router = APIRouter(prefix="/dicomweb", include_in_schema=False)
StudyPath = Annotated[str, Path(pattern=UID_PATTERN, description="Study Instance UID")]
# Reasons of refused parts, as HTTP Warning headers (PS3.18 8.3.5.1), at most this many.
_MAX_WARNINGS = 20


def store_user(request: Request, db: Session = Depends(get_db)) -> WebUser:
    """The token's user, if its role may store; 401 / 403 (audited) otherwise."""
    user = bearer_user(request, db)
    if user is None:
        problem = token_problem(request)
        audit(db, request, "", "stow", success=False, detail={"reason": problem})
        raise HTTPException(
            status_code=401,
            detail="a valid API token is required: Authorization: Bearer <token> "
            f"(dicom-node users token NAME): {problem}",
            headers={"WWW-Authenticate": 'Bearer realm="dicomweb"'},
        )
    if not user.can_store:
        audit(db, request, user.username, "stow", success=False, detail={"reason": "role"})
        raise HTTPException(
            status_code=403, detail=f"role {user.role} may not store studies (admin or sender)"
        )
    return user


@router.post("/studies", summary="Store instances (STOW-RS)")
async def store_instances(request: Request, user: WebUser = Depends(store_user)) -> Response:
    return await _store(request, user, None)


@router.post("/studies/{study_uid}", summary="Store instances of one study (STOW-RS)")
async def store_study_instances(
    request: Request, study_uid: StudyPath, user: WebUser = Depends(store_user)
) -> Response:
    """Instances of another study than ``study_uid`` are refused (Failure Reason 0x0110)."""
    return await _store(request, user, study_uid)


async def _store(request: Request, user: WebUser, study_uid: str | None) -> Response:
    ctx = get_context(request)
    media, kind, boundary = boundary_of(request.headers.get("content-type", ""))
    if media != "multipart/related" or kind != DICOM:
        shown = f"{media}; type={kind}" if kind else media or "none"
        await _refused(
            request,
            user,
            study_uid,
            415,
            f'Content-Type must be multipart/related; type="{DICOM}" (got {shown})',
        )
    if not boundary:
        await _refused(request, user, study_uid, 400, "Content-Type has no boundary parameter")
    limits = ctx.settings.dicomweb
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_request_size:
        # Refused before a byte is read (a client that sent Expect: 100-continue, like
        # curl, does not even send the body).
        await _refused(
            request,
            user,
            study_uid,
            413,
            f"request body of {declared} bytes is larger than {limits.max_request_size} "
            "(dicomweb.max_request_size)",
        )
    pool = futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="stow-sync")
    receiver: PartsReceiver | None = None
    try:
        try:
            receiver = PartsReceiver(
                boundary,
                ctx.spool.tmp,
                max_bytes=limits.max_request_size,
                max_parts=limits.max_instances,
                background=pool.submit,
            )
            parts = await receive_parts(
                request.stream(),
                receiver,
                body_timeout=limits.body_timeout,
                setting="dicomweb.body_timeout",
            )
        except BodyRefusedError as exc:
            await _refused(request, user, study_uid, exc.status, exc.reason)
        except ClientDisconnect:
            await _refused(request, user, study_uid, 400, "the client went away mid-request")
        origin = Origin(limits.calling_ae, client_address(request), user.username)
        results, reasons = await run_in_threadpool(
            _ingest_parts, ctx, parts, origin, study_uid, pool.submit
        )
    finally:
        if receiver is not None:
            await run_in_threadpool(_discard, receiver.parts)
        pool.shutdown(wait=False)
    return await run_in_threadpool(_answer, request, user, study_uid, results, reasons)


async def _refused(
    request: Request, user: WebUser, study_uid: str | None, status: int, reason: str
) -> NoReturn:
    """Audit a request refused whole, and raise its 4xx (nothing of it was stored)."""

    def record() -> None:
        with get_context(request).sessions() as db:
            audit(
                db,
                request,
                user.username,
                "stow",
                study_uid or "",
                success=False,
                detail={"status": status, "reason": reason},
            )

    await run_in_threadpool(record)
    log.warning("STOW-RS from %s refused %d: %s", client_address(request), status, reason)
    raise HTTPException(status_code=status, detail=reason)


def _ingest_parts(
    ctx: WebContext,
    parts: list[Part],
    origin: Origin,
    study_uid: str | None,
    background: Any,
) -> tuple[list[InstanceResult], list[str]]:
    """Each part through the durable path, in body order; (results, refusal reasons)."""
    ingestor = Ingestor(ctx.settings, ctx.sessions, ctx.spool, background=background)
    cache = IndexCache()  # the parts of one request are usually one series
    results: list[InstanceResult] = []
    reasons: list[str] = []
    for part in parts:
        result, reason = _ingest_part(ingestor, cache, part, origin, study_uid)
        results.append(result)
        if reason:
            reasons.append(f"part {part.number}: {reason}")
    return results, reasons


def _ingest_part(
    ingestor: Ingestor, cache: IndexCache, part: Part, origin: Origin, study_uid: str | None
) -> tuple[InstanceResult, str]:
    path = part.path
    if part.file is None or path is None:
        status = Status.CANNOT_UNDERSTAND
        reason = f"a part of type {part.content_type or 'none'} is not {DICOM}"
        log.warning("STOW-RS part %d refused 0x%04X: %s", part.number, status, reason)
        return InstanceResult(None, None, status), f"0x{status:04X} {reason}"
    sop_class, sop_instance = file_meta_claims(path)
    try:
        if part.error:  # the part could not be written (disk full): out of resources
            raise SpoolFullError(part.error)
        done = ingestor.ingest(
            path,
            Claim(sop_class, sop_instance, study_uid),
            origin,
            file_synced=part.file.synced,
            cache=cache,
        )
    except Exception as exc:
        refusal = refuse("STOW-RS", sop_instance or f"part {part.number}", exc)
        result = InstanceResult(sop_class, sop_instance, int(refusal.status))
        return result, f"0x{refusal.status:04X} {refusal.reason}"
    if not done.outcome.created:
        log.info("STOW-RS %s: duplicate, already stored", done.meta.sop_instance_uid)
    return InstanceResult(done.meta.sop_class_uid, done.meta.sop_instance_uid), ""


def _discard(parts: list[Part]) -> None:
    """Remove the request's part files (stored ones are linked under their final names
    already); their fsyncs are waited for first, so no fsync outlives its file."""
    pending = [p.file.synced for p in parts if p.file is not None and p.file.synced is not None]
    futures.wait(pending)
    for part in parts:
        if part.file is not None:
            part.file.close()
            try:
                os.unlink(part.file.name)
            except FileNotFoundError:
                pass
            except OSError as exc:  # removed at the next start-up (clean_incoming)
                log.warning("could not remove %s: %s", part.file.name, exc)


def _answer(
    request: Request,
    user: WebUser,
    study_uid: str | None,
    results: list[InstanceResult],
    reasons: list[str],
) -> Response:
    """The Store Instances Response, after every part has its verdict; audited."""
    status = http_status(results)
    stored = [r for r in results if r.stored]
    with get_context(request).sessions() as db:
        audit(
            db,
            request,
            user.username,
            "stow",
            study_uid or "",
            success=bool(stored),
            detail={
                "status": status,
                "stored": len(stored),
                "failed": len(results) - len(stored),
                "instances": [r.sop_instance_uid for r in stored[:100]],
            },
        )
    log.info(
        "STOW-RS from %s by %s: %d stored, %d failed",
        client_address(request),
        user.username,
        len(stored),
        len(results) - len(stored),
    )
    xml = wants_xml(request.headers.get("accept", ""))
    headers = (
        {"Warning": ", ".join(_warning(r) for r in reasons[:_MAX_WARNINGS])} if reasons else {}
    )
    if not results:
        headers = {"Warning": _warning("the request had no parts")}
    return Response(
        content=to_xml(results) if xml else to_json(results),
        status_code=status,
        media_type=XML_TYPE if xml else JSON_TYPE,
        headers=headers,
    )


def _warning(text: str) -> str:
    """A Warning header value (RFC 7234 5.5): code 299, our agent name, the quoted text in
    printable ASCII (reasons hold UIDs and codes, never patient data)."""
    clean = "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in text)[:300]
    return f'299 dicom-node "{clean}"'
