"""Send files to a remote AE (``dicom-node send``): folders recursively, one association
per batch of at most 128 presentation contexts, a progress bar and a summary of statuses.

What went wrong is kept as one line per problem (``SendSummary.problems``): each refused
file with its status and what the status means, each file named on the command line that is
not DICOM, and why an association was not made. The command prints them on stderr; the
counts go to stdout.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.status import code_to_category
from tqdm import tqdm

from dicom_node.dispatch.association import NoAssociationError, Peer, request
from dicom_node.dispatch.delivery import MAX_CONTEXTS, DeliveryItem, _contexts
from dicom_node.receive.statuses import status_meaning
from dicom_node.tls import HandshakeRecordingContext

# C-STORE statuses after which the receiver holds the instance (success, or warnings such as
# 0xB000 coercion: stored with remarks).
_STORED_CATEGORIES = ("Success", "Warning")


@dataclass
class SendSummary:
    """What ``send_paths`` did: counts for the summary, and one line per problem."""

    found: int = 0  # DICOM files to send
    sent: int = 0  # C-STOREs the peer answered
    stored: int = 0  # ... with success or a warning: the peer holds them
    statuses: Counter[str] = field(default_factory=Counter)
    skipped: list[str] = field(default_factory=list)  # in folders: not DICOM or unreadable
    problems: list[str] = field(default_factory=list)  # one line each, for stderr

    @property
    def ok(self) -> bool:
        """Every DICOM file was sent and stored, and every named file was DICOM."""
        return not self.problems and self.found > 0 and self.stored == self.found

    def describe(self) -> str:
        """The counts: files sent, per status, and files skipped in folders."""
        if self.found:
            lines = [f"sent {self.sent} of {self.found} file(s), {self.stored} stored"]
        else:
            lines = ["nothing to send: no DICOM files"]
        for status, count in sorted(self.statuses.items()):
            lines.append(f"  {status}: {count}")
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} file(s) that are not DICOM or unreadable")
            lines.extend(f"    {s}" for s in self.skipped[:10])
        return "\n".join(lines)


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """The files named, and the files below the folders named, in a stable order."""
    for path in paths:
        if path.is_dir():
            for root, _dirs, files in sorted(os.walk(path)):
                for name in sorted(files):
                    yield Path(root) / name
        else:
            yield path


def unreadable(path: Path, exc: Exception) -> str:
    """Why a file cannot be sent or read as DICOM, in a few words after its name."""
    if isinstance(exc, InvalidDicomError):
        return (
            f"{path} is not a DICOM file (no 'DICM' marker after the 128-byte preamble); "
            "give DICOM Part 10 files"
        )
    if isinstance(exc, FileNotFoundError):
        return f"{path} does not exist; check the path"
    if isinstance(exc, PermissionError):
        return f"{path} cannot be read: permission denied"
    if isinstance(exc, AttributeError) and getattr(exc, "name", None):
        return f"{path} is DICOM but has no {exc.name}, so it cannot be stored"
    if isinstance(exc, OSError):
        return f"{path} cannot be read: {exc.strerror or exc}"
    return f"{path} cannot be read as DICOM: {exc}"


def _item(index: int, path: Path) -> DeliveryItem:
    ds = dcmread(path, stop_before_pixels=True)
    return DeliveryItem(
        id=index,
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        path=str(path),
        attempts=0,
        study_uid=str(ds.get("StudyInstanceUID", "")),
        kind="send",
    )


def _collect(paths: Iterable[Path], summary: SendSummary) -> list[DeliveryItem]:
    """The DICOM files to send. A file named on the command line that is not DICOM is a
    problem; one found in a folder (a README, a thumbnail) is only counted as skipped."""
    items: list[DeliveryItem] = []
    for named in paths:
        in_folder = named.is_dir()
        for path in iter_files([named]):
            try:
                items.append(_item(len(items), path))
            except (InvalidDicomError, AttributeError, OSError, ValueError) as exc:
                if in_folder:
                    summary.skipped.append(f"{path}: {type(exc).__name__}: {exc}")
                else:
                    summary.problems.append(unreadable(path, exc))
    summary.found = len(items)
    return items


def _batches(items: list[DeliveryItem]) -> Iterator[list[DeliveryItem]]:
    """Files in order, cut where their presentation contexts would exceed the limit."""
    remaining = list(items)
    while remaining:
        batch: list[DeliveryItem] = []
        for item in remaining:
            if batch and len(_contexts([*batch, item])) > MAX_CONTEXTS:
                break
            batch.append(item)
        remaining = remaining[len(batch) :]
        yield batch


def send_paths(
    paths: Iterable[Path],
    *,
    calling_ae: str,
    called_ae: str,
    host: str,
    port: int,
    progress: bool | TextIO = True,
    timeout: float | None = None,
    tls_args: tuple[HandshakeRecordingContext, str] | None = None,
) -> SendSummary:
    """C-STORE the DICOM files among ``paths`` (folders recursively) to ``called_ae``.

    Parameters
    ----------
    paths
        Files and folders.
    calling_ae, called_ae, host, port
        Our AE title and the peer's.
    progress
        Show a progress bar on stderr (True) or on this stream; it counts files the peer
        answered, so a send that fails leaves no full bar behind.
    timeout
        Seconds to wait for the TCP connection and for the association's answer (None:
        pynetdicom's defaults).
    tls_args
        pynetdicom's ``tls_args`` to associate over TLS (``commands.tls_options``).

    Returns
    -------
    SendSummary
        Counts and one line per problem. After an association that is not made, the rest
        is not tried: the next one would fail for the same reason.
    """
    summary = SendSummary()
    items = _collect(paths, summary)
    peer = Peer(called_ae, host, port)
    # Send files as stored, without decoding and re-encoding them (see delivery._contexts).
    _config.STORE_SEND_CHUNKED_DATASET = True
    stream = progress if not isinstance(progress, bool) else sys.stderr
    bar = tqdm(total=len(items), unit="file", file=stream, disable=not progress or not items)
    try:
        for batch in _batches(items):
            if not _send_batch(batch, peer, calling_ae, timeout, summary, bar, tls_args):
                break
    finally:
        if summary.sent == 0:
            bar.leave = False  # nothing was sent: no bar, only the reason
        bar.close()
    return summary


def _send_batch(
    batch: list[DeliveryItem],
    peer: Peer,
    calling_ae: str,
    timeout: float | None,
    summary: SendSummary,
    bar: tqdm[Any],
    tls_args: tuple[HandshakeRecordingContext, str] | None,
) -> bool:
    """Send one batch over one association; False when the association was not made."""
    ae = AE(ae_title=calling_ae)
    if timeout is not None:
        ae.connection_timeout = timeout
        ae.acse_timeout = timeout
    for sop_class, syntaxes in _contexts(batch):
        ae.add_requested_context(sop_class, syntaxes)
    try:
        assoc = request(ae, peer, tls_args=tls_args)
    except NoAssociationError as exc:
        summary.problems.append(f"{exc} ({summary.found - summary.sent} file(s) not sent)")
        return False
    try:
        for item in batch:
            if not assoc.is_established:
                summary.problems.append(
                    f"the association with {peer} ended after {summary.sent} file(s); "
                    f"{summary.found - summary.sent} file(s) not sent"
                )
                return False
            _send_one(assoc, item, peer, summary)
            bar.update(1)
    finally:
        if assoc.is_established:
            assoc.release()
    return True


def _send_one(assoc: Association, item: DeliveryItem, peer: Peer, summary: SendSummary) -> None:
    """C-STORE one file and count its status; a refusal becomes a problem line."""
    try:
        status = assoc.send_c_store(Path(item.path))
    except ValueError:
        # pynetdicom: no accepted context for this file's SOP class and transfer syntax
        # (the peer accepted others of the batch).
        summary.statuses["not sent"] += 1
        summary.problems.append(
            f"{item.path} not sent: {peer} accepts no presentation context for "
            f"{UID(item.sop_class_uid).name} in {UID(item.transfer_syntax_uid).name}"
        )
        return
    code = int(status.Status) if "Status" in status else -1
    if code < 0:
        summary.statuses["no response"] += 1
        summary.problems.append(
            f"{item.path}: no response from {peer} (association aborted or timed out)"
        )
        return
    summary.sent += 1
    category = code_to_category(code)
    summary.statuses[f"0x{code:04X} {category}"] += 1
    if category in _STORED_CATEGORIES:
        summary.stored += 1
    else:
        summary.problems.append(
            f"{item.path} refused by {peer}: status 0x{code:04X} ({category}), "
            f"{status_meaning(code)}"
        )
