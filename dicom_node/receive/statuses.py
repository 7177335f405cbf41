"""C-STORE and C-ECHO statuses the node answers, with what each means to an operator.

A handler answers with one of these and never raises: pynetdicom turns an exception into
0xC211 without a reason in our log. ``StoreRejectedError`` carries the status and the reason
from the check that refused an instance to the handler, which logs one line and answers.
"""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    """C-STORE statuses (PS3.4 Annex B.2.3 and PS3.7 C.4.2.1.4), also the STOW-RS Failure
    Reasons (PS3.18 I.2.2 uses the same codes and ranges)."""

    SUCCESS = 0x0000
    PROCESSING_FAILURE = 0x0110  # STOW-RS: the instance is not of the request's study
    OUT_OF_RESOURCES = 0xA700  # disk full, I/O or database error: the sender should retry
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    CANNOT_PARSE = 0xC210  # the dataset could not be decoded (truncated, not DICOM)
    INVALID_UID = 0xC220  # a required UID is missing or not a valid UID
    UID_MISMATCH = 0xC221  # command and dataset disagree on the SOP Instance UID
    INTERNAL_ERROR = 0xC2FF

    @property
    def meaning(self) -> str:
        """One line for logs, the console and ``dicom-node send``."""
        return _MEANINGS[self]


_MEANINGS = {
    Status.SUCCESS: "stored",
    Status.PROCESSING_FAILURE: "processing failure (not of the study the request named)",
    Status.OUT_OF_RESOURCES: "out of resources (disk full, I/O or database error); retry later",
    Status.DATASET_DOES_NOT_MATCH_SOP_CLASS: "dataset does not match the SOP class of the request",
    Status.CANNOT_UNDERSTAND: "cannot understand the request",
    Status.CANNOT_PARSE: "dataset cannot be parsed (truncated or not DICOM)",
    Status.INVALID_UID: "a required UID is missing or invalid",
    Status.UID_MISMATCH: "command and dataset disagree on the SOP Instance UID",
    Status.INTERNAL_ERROR: "unexpected internal error in the receiver",
}


class StoreRejectedError(Exception):
    """Carries the status and the reason for a refused C-STORE."""

    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# Other C-STORE response statuses a sender meets (PS3.4 B.2.3, PS3.7 C), in the words an
# operator needs; ranges are matched on their high byte. Ours (``Status``) come first.
_OTHER_MEANINGS = {
    0x0107: "stored, but the receiver reports an attribute list error",
    0x0110: "the receiver failed while processing the instance",
    0x0111: "the receiver already has this SOP Instance UID and refuses duplicates",
    0x0117: "the receiver finds the instance invalid",
    0x0118: "the receiver does not know this SOP class",
    0x0122: "the receiver does not store this SOP class",
    0x0124: "the receiver does not allow this sender to store",
    0x0211: "the receiver does not know the operation",
    0x0212: "the request has a mistyped argument",
    0x0213: "the receiver has reached a resource limit; retry later",
    0xB000: "stored, with some data elements changed (coerced) by the receiver",
    0xB006: "stored, without some data elements (discarded by the receiver)",
    0xB007: "stored, although the dataset does not match its SOP class",
    0xC211: "the receiver failed while handling the instance (an error in its handler)",
    0xFE00: "cancelled",
}
_RANGE_MEANINGS = {
    0xA7: "the receiver is out of resources (disk full or similar); retry later",
    0xA9: "dataset does not match the SOP class of the request",
}


def status_meaning(code: int) -> str:
    """What a C-STORE response status means, for ``dicom-node send`` and delivery errors.

    The node's own statuses keep their specific meaning (``0xC210``: cannot be parsed);
    other receivers' statuses get the standard meaning of the code or of its range
    (``0xA7xx`` out of resources, ``0xA9xx`` dataset/SOP class mismatch, ``0xCxxx``
    cannot understand), and pynetdicom's table for the rest.
    """
    try:
        return Status(code).meaning
    except ValueError:
        pass
    if code in _OTHER_MEANINGS:
        return _OTHER_MEANINGS[code]
    high = code >> 8
    if high in _RANGE_MEANINGS:
        return _RANGE_MEANINGS[high]
    if 0xC0 <= high <= 0xCF:
        return "the receiver cannot understand the instance (its own reason code)"
    from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

    known = STORAGE_SERVICE_CLASS_STATUS.get(code)
    return known[1].lower() if known and known[1] else "status not defined for C-STORE"
