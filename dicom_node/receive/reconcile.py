"""Start-up reconciliation of the spool with the index.

A crash between the fsync of a received file and the commit of its index row leaves a file
that never got a Success answer but whose bytes are safe; indexing it at start-up means a
sender that does not retry still has its instance processed.
"""

from __future__ import annotations

import logging

from pydicom import dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.receive.index import index_instance
from dicom_node.receive.meta import meta_from_dataset
from dicom_node.receive.spool import Spool, valid_uid
from dicom_node.store.db import Instance

log = logging.getLogger(__name__)


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
            ds = dcmread(path, stop_before_pixels=True)
            meta = meta_from_dataset(ds)
            if not all(
                valid_uid(u) for u in (meta.study_uid, meta.series_uid, meta.sop_instance_uid)
            ):
                continue
            outcome = index_instance(sessions, meta, path, path.stat().st_size)
            added += int(outcome.created)
        except Exception:
            log.exception("cannot index spool file %s", path.name)
    if added:
        log.warning("indexed %d spool file(s) that had no index row", added)
    return added
