"""Stream a ``multipart/form-data`` upload: files to the spool, fields to memory.

The upload page and ``POST /api/predict`` take files as browsers and ``curl -F`` send
them (RFC 7578). They take the same way in as STOW-RS (``web.multipart``): each file is
streamed into its own file in the spool's ``.incoming`` folder while it arrives (so a
DICOM file is later linked into the spool, never copied), with its fsync started when it
ends; the small text fields (modality, body part, patient, CSRF token) stay in memory,
bounded. Starlette's own form parser would keep every file in a temporary folder elsewhere
and could only bound the body as a whole; here each file is bounded as it streams and the
request is refused the moment one passes ``[upload] max_file_size``.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

from python_multipart.multipart import parse_options_header

from dicom_node.receive.incoming import IncomingFile
from dicom_node.web.multipart import BodyRefusedError, PartsReceiver

# A text field (not a file) larger than this refuses the request: the form's fields are
# a few words each.
MAX_FIELD_BYTES = 8 * 1024
# Text fields allowed besides the files (the form has about ten).
MAX_FIELDS = 64


class FormReceiver(PartsReceiver):
    """A :class:`PartsReceiver` for ``multipart/form-data``.

    A part with a ``filename`` in its Content-Disposition is a file, written to
    ``folder`` whatever its Content-Type (the caller checks what the bytes are); an empty
    file part (a file input left empty: no name, no bytes) is kept as such. Any other part
    is a field whose value is kept in :attr:`Part.value`.

    Parameters
    ----------
    max_file_bytes
        One file larger than this refuses the request (413, ``upload.max_file_size``).
    max_files
        Files in the request; the part limit is this plus :data:`MAX_FIELDS`.
    """

    def __init__(
        self,
        boundary: bytes,
        folder: Path,
        *,
        max_bytes: int,
        max_file_bytes: int,
        max_files: int,
        background: Callable[..., futures.Future[Any]],
    ) -> None:
        super().__init__(
            boundary,
            folder,
            max_bytes=max_bytes,
            max_parts=max_files + MAX_FIELDS,
            background=background,
            bytes_setting="upload.max_request_size",
            parts_setting="upload.max_files",
        )
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files

    def _headers_finished(self) -> None:
        part = self.parts[-1]
        media, _params = parse_options_header(part.headers.get("content-type", ""))
        part.content_type = media.decode("latin-1").strip().lower()
        _disposition, params = parse_options_header(part.headers.get("content-disposition", ""))
        part.name = params.get(b"name", b"").decode("utf-8", "replace")
        filename = params.get(b"filename")
        if filename is None:
            return
        # Browsers send the bare name; keep only that in case a client sends a path.
        part.filename = filename.decode("utf-8", "replace").replace("\\", "/").rsplit("/", 1)[-1]
        if sum(p.filename is not None for p in self.parts) > self.max_files:
            raise BodyRefusedError(
                413, f"more than {self.max_files} files in one upload (upload.max_files)"
            )
        part.file = IncomingFile(self.folder)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.parts[-1]
        part.size += end - start
        if part.filename is not None:
            if part.size > self.max_file_bytes:
                raise BodyRefusedError(
                    413,
                    f"file {part.filename!r} is larger than {self.max_file_bytes} bytes "
                    "(upload.max_file_size)",
                )
            if part.file is not None:
                part.file.write(data[start:end])
            return
        if part.size > MAX_FIELD_BYTES:
            raise BodyRefusedError(
                413, f"form field {part.name!r} is larger than {MAX_FIELD_BYTES} bytes"
            )
        part.value += data[start:end]
