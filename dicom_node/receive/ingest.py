"""One step shared by every door into the node: an incoming file becomes a checked, durable,
indexed instance, or is refused with a DICOM status.

The C-STORE SCP (``receive.scp``) and the STOW-RS door (``web.stow``) both stream what they
receive into a temporary file in the spool's ``.incoming`` folder, then hand it here. What
happens next is the same for both, so a study sent over DICOMweb is as safe as one sent
over DIMSE before its sender hears "stored": the header is checked and the UIDs validated
(``meta.read_meta``), the file is fsynced and linked under its final name
(``spool.commit``), the folder is fsynced, and the instance is indexed in one transaction
(``index.index_instance``). A failure at any step leaves nothing under a final name and no
index row, and maps to one status (:func:`refuse`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import Settings
from dicom_node.receive.index import IndexCache, IndexOutcome, InstanceMeta, index_instance
from dicom_node.receive.meta import read_meta
from dicom_node.receive.spool import Spool, SpoolFullError, SpoolResult
from dicom_node.receive.statuses import Status, StoreRejectedError

log = logging.getLogger(__name__)

# Runs a callable (an fsync) somewhere, and gives a future of its result.
Background = Callable[..., "futures.Future[Any]"]


def inline(fn: Callable[..., Any], *args: Any) -> futures.Future[Any]:
    """A :data:`Background` that runs ``fn`` at once, in the calling thread."""
    done: futures.Future[Any] = futures.Future()
    try:
        done.set_result(fn(*args))
    except Exception as exc:
        done.set_exception(exc)
    return done


@dataclass(frozen=True)
class Claim:
    """What the sender said the file is, checked against the dataset itself.

    C-STORE: the command's Affected SOP Class and Instance UIDs. STOW-RS: the File Meta's
    Media Storage SOP Class and Instance UIDs, and the Study Instance UID of the request's
    target resource (``/studies/{StudyInstanceUID}``). ``None``: nothing was claimed.
    """

    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_uid: str | None = None


@dataclass(frozen=True)
class Origin:
    """Who sent the instance: kept on the instance row and in its ``instance.received``
    event. ``calling_ae`` is also what routes and the completion policy match on."""

    calling_ae: str
    remote_address: str
    user: str = ""  # the web user whose token stored it (STOW-RS); "" for DIMSE


@dataclass(frozen=True)
class Ingested:
    meta: InstanceMeta
    stored: SpoolResult
    outcome: IndexOutcome


@dataclass(frozen=True)
class Refusal:
    """The status a refused instance is answered with, and the reason logged."""

    status: Status
    reason: str


class Ingestor:
    """Makes received files durable instances; one per receiver (SCP, web app).

    Parameters
    ----------
    settings
        ``scp.max_inflated_size`` bounds deflated datasets, ``completion.late_instances``
        decides what a late instance does to its series; both doors obey the same ones.
    background
        Where the fsyncs run, overlapped with the header check and the index rows (each
        fsync is a disk barrier of a few ms that releases the GIL). Default: inline.
    """

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        spool: Spool,
        *,
        background: Background = inline,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.spool = spool
        self.background = background

    def ingest(
        self,
        temp: Path,
        claim: Claim,
        origin: Origin,
        *,
        file_synced: futures.Future[Any] | None = None,
        cache: IndexCache | None = None,
    ) -> Ingested:
        """Check, commit and index the received file ``temp`` (in ``spool.tmp``).

        ``file_synced`` is the file's fsync when the caller started it already (the SCP
        starts it the moment the last fragment is written); without one, the commit
        fsyncs the file itself. ``temp`` stays where it is: the caller removes it.

        Raises
        ------
        StoreRejectedError
            The dataset cannot be parsed, lacks or has invalid UIDs, or contradicts the
            claim; nothing was stored.
        SpoolFullError
            A write or fsync failed (disk full, I/O error); nothing under a final name.
        sqlalchemy.exc.SQLAlchemyError
            The file is durable but not indexed: the sender should retry (a retry, or the
            start-up reconciliation, completes the index).
        """
        try:
            meta = read_meta(
                temp,
                claim.sop_class_uid,
                claim.sop_instance_uid,
                max_inflated_size=self.settings.scp.max_inflated_size,
            )
            if claim.study_uid is not None and meta.study_uid != claim.study_uid:
                # PS3.18 10.5: a store to /studies/{uid} keeps only that study's instances.
                raise StoreRejectedError(
                    Status.PROCESSING_FAILURE,
                    f"instance of study {meta.study_uid} sent to study {claim.study_uid}",
                )
        finally:
            # Always wait: the caller closes or removes the file after we return.
            if file_synced is not None:
                futures.wait([file_synced])
        if file_synced is not None:
            file_synced.result()  # raises SpoolFullError -> 0xA700 if the fsync failed
        stored = self.spool.commit(
            temp,
            meta.study_uid,
            meta.series_uid,
            meta.sop_instance_uid,
            synced=file_synced is not None,
            sync_folder=False,
        )
        # The name is made durable (the folder's fsync; for an object store, the upload)
        # while the index rows are written; the commit waits for it.
        folder_synced = self.background(self.spool.make_durable, stored)
        try:
            outcome = index_instance(
                self.sessions,
                meta,
                stored.location,
                stored.size,
                calling_ae=origin.calling_ae,
                remote_address=origin.remote_address,
                user=origin.user,
                late_rule=self.settings.completion.late_instances,
                cache=cache,
                before_commit=folder_synced.result,
            )
        finally:
            futures.wait([folder_synced])
        folder_synced.result()  # success needs the name durable, whatever index_instance did
        return Ingested(meta, stored, outcome)


def refuse(door: str, sop_uid: str, exc: BaseException) -> Refusal:
    """The status for a failed :meth:`Ingestor.ingest`, logged in one line with UIDs only.

    Shared by the doors, so a C-STORE and a STOW-RS part refused for the same reason get
    the same code: ``StoreRejectedError`` carries its own; a spool or database failure is
    "out of resources" (0xA700: the sender should retry later); anything else is an
    internal error (0xC2FF), logged with its traceback.
    """
    uid = sop_uid[:64]
    if isinstance(exc, StoreRejectedError):
        log.warning("%s %s refused 0x%04X: %s", door, uid, exc.status, exc.reason)
        return Refusal(exc.status, exc.reason)
    if isinstance(exc, SpoolFullError):
        log.error("%s %s: out of resources: %s", door, uid, exc)
        return Refusal(Status.OUT_OF_RESOURCES, f"out of resources: {exc}")
    if isinstance(exc, SQLAlchemyError):
        # The file is durable but not indexed: the retry (or reconciliation) completes it.
        log.error("%s %s: database error: %s", door, uid, type(exc).__name__)
        return Refusal(Status.OUT_OF_RESOURCES, f"database error: {type(exc).__name__}")
    log.error("%s %s: unexpected error", door, uid, exc_info=exc)
    return Refusal(Status.INTERNAL_ERROR, f"unexpected error: {type(exc).__name__}")
