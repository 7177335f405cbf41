"""What the index keeps of a received instance, read from its header and checked.

The fast path (``header.read_header``: one structural pass, pydicom decodes only the values
we keep) answers for well-formed files; anything it cannot vouch for is read again by
pydicom, whose verdict stands. UIDs are validated here, before they become spool paths.
"""

from __future__ import annotations

import functools
import logging
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dicom_node.receive.header import Header, read_header, tag_text
from dicom_node.receive.index import InstanceMeta
from dicom_node.receive.spool import valid_uid
from dicom_node.receive.statuses import Status, StoreRejectedError

log = logging.getLogger(__name__)

# Only these header attributes are read at receive time; pixel data stays on disk.
_DEFER = 64 * 1024
# How far a deflated dataset may inflate before it is refused (scp.max_inflated_size).
DEFAULT_MAX_INFLATED_SIZE = 256 * 1024 * 1024
_INFLATE_CHUNK = 1024 * 1024


def _check_not_truncated(ds: Dataset, size: int) -> None:
    """Refuse a file whose last element claims more bytes than were received.

    pydicom reads a truncated value without complaint (it just returns fewer bytes), and a
    model would later fail on it; the sender can still fix it now.
    """
    for raw in ds._dict.values():
        if not isinstance(raw, RawDataElement) or raw.length in (0, 0xFFFFFFFF):
            continue
        if raw.value is None:
            if raw.value_tell + raw.length > size:
                raise StoreRejectedError(
                    Status.CANNOT_PARSE,
                    f"element {raw.tag} is truncated: needs {raw.length} bytes, "
                    f"{max(size - raw.value_tell, 0)} received",
                )
        elif len(raw.value) < raw.length:
            raise StoreRejectedError(
                Status.CANNOT_PARSE,
                f"element {raw.tag} is truncated: needs {raw.length} bytes, "
                f"{len(raw.value)} received",
            )


# InstanceMeta's text fields and the header attributes they come from.
_META_FIELDS = (
    ("study_uid", "StudyInstanceUID"),
    ("series_uid", "SeriesInstanceUID"),
    ("sop_instance_uid", "SOPInstanceUID"),
    ("sop_class_uid", "SOPClassUID"),
    ("patient_id", "PatientID"),
    ("patient_name", "PatientName"),
    ("accession_number", "AccessionNumber"),
    ("study_date", "StudyDate"),
    ("study_description", "StudyDescription"),
    ("modality", "Modality"),
    ("body_part", "BodyPartExamined"),
    ("series_description", "SeriesDescription"),
    ("series_number", "SeriesNumber"),
)
# Every header attribute the index keeps (what the fast header read collects).
_META_KEYWORDS = (*(keyword for _field, keyword in _META_FIELDS), "InstanceNumber")


def _meta(text: Callable[[str], str], transfer_syntax_uid: str, ds: Dataset) -> InstanceMeta:
    """The header values the index keeps, ``text`` giving each as text."""
    return InstanceMeta(
        **{field: text(keyword) for field, keyword in _META_FIELDS},
        transfer_syntax_uid=transfer_syntax_uid,
        instance_number=_int_or_none(ds.get("InstanceNumber")),
    )


def meta_from_dataset(ds: Dataset) -> InstanceMeta:
    """The header values the index keeps, as text (multi-values joined like DICOM)."""
    return _meta(functools.partial(tag_text, ds), str(ds.file_meta.TransferSyntaxUID), ds)


def meta_from_header(header: Header) -> InstanceMeta:
    """``meta_from_dataset`` for the fast header read: simple ASCII values are decoded
    without pydicom (``Header.text``); the tests check both give the same for every file."""
    return _meta(header.text, header.transfer_syntax_uid, header.dataset)


def read_meta(
    path: Path,
    command_sop_class: str | None,
    command_sop_instance: str | None,
    *,
    max_inflated_size: int = DEFAULT_MAX_INFLATED_SIZE,
) -> InstanceMeta:
    """Read and check the header of a received file.

    The fast path (``header.read_header``: one structural pass, pydicom decodes only the
    values we keep) answers for well-formed files; anything it cannot vouch for (deflated,
    or any structural complaint) is read again by pydicom, whose verdict stands, so the
    fast path never refuses what pydicom would accept.

    A deflated dataset is first inflated as a stream, counting but keeping nothing, and
    refused when it inflates past ``max_inflated_size``: pydicom inflates a deflated file
    whole in memory, and 1 MB of deflated zeros can claim gigabytes.

    ``command_sop_class`` and ``command_sop_instance`` are what the sender claimed (the
    C-STORE command, or a STOW-RS part's File Meta); ``None`` skips that comparison.

    Raises
    ------
    StoreRejectedError
        With the status to answer and the reason to log.
    """
    try:
        header = read_header(path, _META_KEYWORDS)
        if header is not None:
            meta = meta_from_header(header)
            return _check_meta(meta, command_sop_class, command_sop_instance)
    except Exception as exc:
        log.debug("fast header read of %s failed (%s); reading with pydicom", path.name, exc)
    check_inflated_size(path, max_inflated_size)
    return _check_meta(_read_meta_pydicom(path), command_sop_class, command_sop_instance)


def file_meta_claims(path: Path) -> tuple[str | None, str | None]:
    """The Media Storage SOP Class and Instance UIDs of a Part 10 file's File Meta.

    A STOW-RS part has no command: its File Meta is what the sender says the dataset is,
    checked against the dataset like a C-STORE command (0xA900, 0xC221). ``None`` for a
    value that is absent, or when the File Meta cannot be read (the header check then
    refuses the file with its own reason).
    """
    try:
        with open(path, "rb") as fh:
            read_preamble(fh, False)
            meta = _read_file_meta_info(fh)
    except Exception:  # not Part 10, truncated: read_meta says why
        return None, None
    sop_class = meta.get("MediaStorageSOPClassUID")
    sop_instance = meta.get("MediaStorageSOPInstanceUID")
    return (
        str(sop_class).rstrip("\x00 ") if sop_class else None,
        str(sop_instance).rstrip("\x00 ") if sop_instance else None,
    )


def _dataset_offset(fh: BinaryIO) -> tuple[int, bytes] | None:
    """Where the dataset starts after the File Meta, and the transfer syntax's UID bytes.

    Only for files as the receiver writes them: preamble, "DICM", then group 0002 in
    explicit VR little endian starting with its group length (pynetdicom always writes
    it). None for anything else (pydicom then decides).
    """
    head = fh.read(132 + 12)
    if len(head) < 144 or head[128:132] != b"DICM" or head[132:136] != b"\x02\x00\x00\x00":
        return None
    group_length = struct.unpack("<L", head[140:144])[0]
    meta = fh.read(min(group_length, 64 * 1024))
    at = meta.find(b"\x02\x00\x10\x00UI")
    if at < 0:
        return None
    length = struct.unpack("<H", meta[at + 6 : at + 8])[0]
    return 144 + group_length, meta[at + 8 : at + 8 + length].rstrip(b"\x00 ")


def check_inflated_size(path: Path, limit: int) -> None:
    """Refuse a deflated dataset that inflates past ``limit`` bytes, without keeping them.

    Raises
    ------
    StoreRejectedError
        CANNOT_PARSE, with the limit and its setting named.
    """
    with open(path, "rb") as fh:
        found = _dataset_offset(fh)
        if found is None or found[1] != DeflatedExplicitVRLittleEndian.encode():
            return
        fh.seek(found[0])
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        inflated = 0
        while chunk := fh.read(_INFLATE_CHUNK):
            pending = chunk
            while pending:
                # max_length bounds each step's output, so memory stays one chunk.
                inflated += len(inflater.decompress(pending, _INFLATE_CHUNK))
                if inflated > limit:
                    raise StoreRejectedError(
                        Status.CANNOT_PARSE,
                        f"deflated dataset inflates past {limit} bytes (scp.max_inflated_size)",
                    )
                pending = inflater.unconsumed_tail
            if inflater.eof:
                return


def _read_meta_pydicom(path: Path) -> InstanceMeta:
    size = path.stat().st_size
    try:
        ds = dcmread(path, defer_size=_DEFER)
        # Touch the header attributes we need: decoding errors surface here, not later.
        meta = meta_from_dataset(ds)
    except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError, OSError) as exc:
        raise StoreRejectedError(Status.CANNOT_PARSE, f"dataset cannot be parsed: {exc}") from exc
    except Exception as exc:  # pydicom raises many kinds of errors on corrupt data
        raise StoreRejectedError(Status.CANNOT_PARSE, f"dataset cannot be parsed: {exc!r}") from exc
    if meta.transfer_syntax_uid != DeflatedExplicitVRLittleEndian:
        # Offsets in a deflated file refer to the inflated stream, not the file size.
        _check_not_truncated(ds, size)
    return meta


def _check_meta(
    meta: InstanceMeta, command_sop_class: str | None, command_sop_instance: str | None
) -> InstanceMeta:
    sop_uid, sop_class = meta.sop_instance_uid, meta.sop_class_uid
    for name, uid in (
        ("SOPClassUID", sop_class),
        ("SOPInstanceUID", sop_uid),
        ("StudyInstanceUID", meta.study_uid),
        ("SeriesInstanceUID", meta.series_uid),
    ):
        if not uid:
            raise StoreRejectedError(Status.INVALID_UID, f"{name} is missing")
        if not valid_uid(uid):
            raise StoreRejectedError(Status.INVALID_UID, f"{name} {uid[:80]!r} is not a valid UID")
    if command_sop_class is not None and sop_class != command_sop_class:
        raise StoreRejectedError(
            Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"dataset SOP Class {sop_class} differs from the request's {command_sop_class}",
        )
    if command_sop_instance is not None and sop_uid != command_sop_instance:
        raise StoreRejectedError(
            Status.UID_MISMATCH,
            f"dataset SOP Instance UID {sop_uid} differs from the request's "
            f"{command_sop_instance[:80]!r}",
        )
    return meta


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
