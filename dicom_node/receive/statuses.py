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
