"""Send files to a remote AE (``dicom-node send``): folders recursively, one association
per batch of at most 128 presentation contexts, a progress bar and a summary of statuses."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, _config
from pynetdicom.status import code_to_category
from tqdm import tqdm

from dicom_node.dispatch.delivery import MAX_CONTEXTS, DeliveryItem, _contexts
from dicom_node.tls import HandshakeRecordingContext


@dataclass
class SendSummary:
    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    skipped: list[str] = field(default_factory=list)  # not DICOM / unreadable
    association_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        failures = sum(n for s, n in self.statuses.items() if not s.startswith(("0x0000", "0xB")))
        return failures == 0 and not self.association_errors and self.sent > 0

    def describe(self) -> str:
        lines = [f"sent {self.sent} file(s)"]
        for status, count in sorted(self.statuses.items()):
            lines.append(f"  {status}: {count}")
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} file(s) that are not DICOM or unreadable")
            lines.extend(f"    {s}" for s in self.skipped[:10])
        lines.extend(f"  association error: {e}" for e in self.association_errors)
        return "\n".join(lines)


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            for root, _dirs, files in sorted(os.walk(path)):
                for name in sorted(files):
                    yield Path(root) / name
        else:
            yield path


def _describe_status(code: int) -> str:
    return f"0x{code:04X} {code_to_category(code)}"


def send_paths(
    paths: Iterable[Path],
    *,
    calling_ae: str,
    called_ae: str,
    host: str,
    port: int,
    progress: bool = True,
    tls_args: tuple[HandshakeRecordingContext, str] | None = None,
) -> SendSummary:
    summary = SendSummary()
    items: list[DeliveryItem] = []
    for index, path in enumerate(iter_files(paths)):
        try:
            ds = dcmread(path, stop_before_pixels=True)
            items.append(
                DeliveryItem(
                    id=index,
                    sop_class_uid=str(ds.SOPClassUID),
                    sop_instance_uid=str(ds.SOPInstanceUID),
                    transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                    path=str(path),
                    attempts=0,
                    study_uid=str(ds.get("StudyInstanceUID", "")),
                    kind="send",
                )
            )
        except (InvalidDicomError, AttributeError, OSError, ValueError) as exc:
            summary.skipped.append(f"{path}: {type(exc).__name__}: {exc}")
    # Send files as stored, without decoding and re-encoding them (see delivery._contexts).
    _config.STORE_SEND_CHUNKED_DATASET = True
    bar = tqdm(total=len(items), unit="file", disable=not progress)
    remaining = list(items)
    while remaining:
        # Take files until their presentation contexts would exceed the limit.
        batch: list[DeliveryItem] = []
        for item in remaining:
            if len(_contexts([*batch, item])) > MAX_CONTEXTS:
                break
            batch.append(item)
        remaining = remaining[len(batch) :]
        ae = AE(ae_title=calling_ae)
        for sop_class, syntaxes in _contexts(batch):
            ae.add_requested_context(sop_class, syntaxes)
        ae.connection_timeout = 30
        assoc = ae.associate(host, port, ae_title=called_ae, tls_args=tls_args)
        if not assoc.is_established:
            handshake = tls_args[0].handshake_error if tls_args is not None else None
            summary.association_errors.append(
                f"{called_ae}@{host}:{port}: association "
                + ("rejected" if assoc.is_rejected else "failed")
                + (f": TLS handshake failed: {handshake}" if handshake else "")
            )
            summary.statuses["not sent"] += len(batch)
            bar.update(len(batch))
            continue
        for item in batch:
            try:
                status = assoc.send_c_store(Path(item.path))
                code = int(getattr(status, "Status", -1)) if status else -1
                label = _describe_status(code) if code >= 0 else "no response"
            except Exception as exc:
                label = f"error: {type(exc).__name__}"
            summary.statuses[label] += 1
            summary.sent += 1
            bar.update(1)
        assoc.release()
    bar.close()
    return summary
