"""Start-up reconciliation of the spool with the index.

A crash between the fsync of a received file and the commit of its index row leaves a file
that never got a Success answer but whose bytes are safe; indexing it at start-up means a
sender that does not retry still has its instance processed. With the spool in a bucket
(cluster mode, ``storage.backend = "s3"``) the same crash, between the PUT and the index
commit, leaves an object no row names, and the received file still in this receiver's own
incoming folder (it is removed only after the index commit): :func:`reconcile_incoming`
indexes those objects from that file, without listing the bucket.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.receive.index import index_instance
from dicom_node.receive.meta import InstanceMeta, meta_from_dataset
from dicom_node.receive.objectstore import ObjectSpool
from dicom_node.receive.spool import Spool, valid_uid
from dicom_node.store.db import Instance

log = logging.getLogger(__name__)


def _header_meta(path: Path) -> InstanceMeta | None:
    """The header of a received file, or None when its UIDs cannot name a spool file."""
    meta = meta_from_dataset(dcmread(path, stop_before_pixels=True))
    if not all(valid_uid(u) for u in (meta.study_uid, meta.series_uid, meta.sop_instance_uid)):
        return None
    return meta


def reconcile_spool(spool: Spool, sessions: sessionmaker[Session]) -> int:
    """Index spool files that have no index row (a crash between fsync and commit).

    Such a file never got a Success answer, but its bytes are safe; indexing it now means a
    sender that does not retry still has its instance processed.
    """
    with sessions() as session:
        known = set(session.scalars(select(Instance.path)).all())
    added = 0
    for path in spool.iter_files():
        if str(path) in known:
            continue
        try:
            meta = _header_meta(path)
            if meta is None:
                continue
            outcome = index_instance(sessions, meta, path, path.stat().st_size)
            added += int(outcome.created)
        except Exception:
            log.exception("cannot index spool file %s", path.name)
    if added:
        log.warning("indexed %d spool file(s) that had no index row", added)
    return added


def reconcile_incoming(spool: Spool, sessions: sessionmaker[Session]) -> int:
    """Index the objects whose PUT returned but whose index commit did not happen (the
    receiver died between the two); call before ``spool.clean_incoming()``.

    Each file in this receiver's incoming folder names its object through its UIDs. When
    that object exists, it was stored whole (a PUT is atomic), so it is indexed, like a
    spool file at :func:`reconcile_spool`; a file whose object does not exist never got
    that far (and its sender never got Success). A spool on disk has nothing to do here.
    """
    if not isinstance(spool, ObjectSpool) or not spool.tmp.is_dir():
        return 0
    added = 0
    for path in sorted(spool.tmp.iterdir()):
        try:
            meta = _header_meta(path)
            if meta is None:
                continue
            location = spool.objects.location(
                spool.key_for(meta.study_uid, meta.series_uid, meta.sop_instance_uid)
            )
            if not spool.objects.exists(location):
                continue
            outcome = index_instance(sessions, meta, location, path.stat().st_size)
            added += int(outcome.created)
        except Exception as exc:  # a partial file, an unreachable store: left to the sender
            log.info("incoming file %s not reconciled: %s", path.name, type(exc).__name__)
    if added:
        log.warning("indexed %d stored object(s) that had no index row", added)
    return added
