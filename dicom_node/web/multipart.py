"""Stream a ``multipart/related`` request body into one temporary file per part.

STOW-RS (PS3.18 10.5) sends instances of any size, several in one body. Nothing here
holds more than the chunk the server just read: python-multipart's push parser finds the
boundaries, and each part's bytes go straight to an ``IncomingFile`` in the spool's
``.incoming`` folder (the same kind of file the C-STORE receiver streams into, so the
commit is a same-disk link). Each part's fsync starts as soon as the part ends, while the
next one is still arriving.

The whole body is received before any part is ingested: a body cut short, malformed or
over the size limit is refused whole and nothing of it is stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from dicom_node.receive.incoming import IncomingFile
from dicom_node.receive.spool import SpoolFullError

DICOM = "application/dicom"
# A preamble before the first boundary (RFC 2046 5.1.1) is skipped, up to this size.
_MAX_PREAMBLE = 64 * 1024


class BodyRefusedError(Exception):
    """The request body as a whole cannot be taken; ``status`` is the HTTP answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class Part:
    """One body part as received.

    ``file`` is None for a part that is not ``application/dicom`` (its bytes were
    counted, not kept). ``error`` is a write error (disk full): the part fails with
    "out of resources" while the others go on.
    """

    number: int  # from 1, in the order of the body
    content_type: str
    file: IncomingFile | None = None
    size: int = 0
    error: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    # multipart/form-data (``web.formdata``): the field name, the file name a file part
    # was sent with (None: a plain field), and a plain field's value.
    name: str = ""
    filename: str | None = None
    value: bytearray = field(default_factory=bytearray)

    @property
    def path(self) -> Path | None:
        return Path(self.file.name) if self.file is not None else None


def boundary_of(content_type: str) -> tuple[str, str, bytes]:
    """(media type, ``type`` parameter, boundary) of a Content-Type header, lowercased
    except the boundary; "" / b"" for what is absent."""
    media, params = parse_options_header(content_type)
    kind = params.get(b"type", b"").decode("latin-1").strip().lower()
    return media.decode("latin-1").strip().lower(), kind, params.get(b"boundary", b"")


class PartsReceiver:
    """Feed body chunks with :meth:`feed`, then :meth:`close`; :attr:`parts` holds the
    parts in order. Every file it opened is in :attr:`parts`, for the caller to remove.

    Parameters
    ----------
    boundary
        From the request's Content-Type.
    folder
        Where part files are written (the spool's ``.incoming``).
    max_bytes, max_parts
        The request's limits (``[dicomweb] max_request_size``, ``max_instances``);
        beyond them :class:`BodyRefusedError` 413.
    background
        Runs each part's fsync (a disk barrier) while the next part arrives.
    bytes_setting, parts_setting
        The settings named in the 413 reasons.
    """

    def __init__(
        self,
        boundary: bytes,
        folder: Path,
        *,
        max_bytes: int,
        max_parts: int,
        background: Callable[..., futures.Future[Any]],
        bytes_setting: str = "dicomweb.max_request_size",
        parts_setting: str = "dicomweb.max_instances",
    ) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.max_parts = max_parts
        self.background = background
        self.bytes_setting = bytes_setting
        self.parts_setting = parts_setting
        self.parts: list[Part] = []
        self.received = 0
        self.ended = False
        self._dash_boundary = b"--" + boundary
        self._preamble = bytearray()
        self._started = False
        self._field = bytearray()
        self._value = bytearray()
        try:
            self._parser = MultipartParser(
                boundary,
                {
                    "on_part_begin": self._part_begin,
                    "on_header_field": self._header_field,
                    "on_header_value": self._header_value,
                    "on_header_end": self._header_end,
                    "on_headers_finished": self._headers_finished,
                    "on_part_data": self._part_data,
                    "on_part_end": self._part_end,
                    "on_end": self._end,
                },
            )
        except (ValueError, MultipartParseError) as exc:
            raise BodyRefusedError(400, f"unusable multipart boundary: {exc}") from None

    # -- feeding ---------------------------------------------------------------------
    def feed(self, chunk: bytes) -> None:
        """Parse the next chunk of the body.

        Raises
        ------
        BodyRefusedError
            413 past the size or part limit, 400 when the body is not valid multipart.
        """
        self.received += len(chunk)
        if self.received > self.max_bytes:
            raise BodyRefusedError(
                413, f"request body larger than {self.max_bytes} bytes ({self.bytes_setting})"
            )
        if self.ended or not chunk:
            return  # the epilogue after the closing boundary is ignored (RFC 2046)
        if not self._started:
            chunk = self._skip_preamble(chunk)
            if not chunk:
                return
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise BodyRefusedError(400, f"malformed multipart body: {exc}") from None

    def _skip_preamble(self, chunk: bytes) -> bytes:
        self._preamble += chunk
        data = bytes(self._preamble)
        if data.startswith(self._dash_boundary):
            at = 0
        else:
            found = data.find(b"\r\n" + self._dash_boundary)
            if found < 0:
                if len(data) > _MAX_PREAMBLE:
                    raise BodyRefusedError(400, "no multipart boundary in the request body")
                return b""
            at = found + 2
        self._started = True
        self._preamble.clear()
        return data[at:]

    def close(self) -> None:
        """The body has ended.

        Raises
        ------
        BodyRefusedError
            400 when it ended before the closing boundary (a cut connection, a truncated
            body): the parts received may be incomplete, so none is stored.
        """
        if not self.ended:
            raise BodyRefusedError(400, "request body ended before the closing boundary")

    # -- parser callbacks ------------------------------------------------------------
    def _part_begin(self) -> None:
        if len(self.parts) >= self.max_parts:
            raise BodyRefusedError(
                413, f"more than {self.max_parts} parts in one request ({self.parts_setting})"
            )
        self.parts.append(Part(number=len(self.parts) + 1, content_type=""))

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self.parts[-1].headers[name] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        part = self.parts[-1]
        # A part without Content-Type is of the request's root type (RFC 2387 3.1).
        media, _params = parse_options_header(part.headers.get("content-type", DICOM))
        part.content_type = media.decode("latin-1").strip().lower()
        if part.content_type == DICOM:
            part.file = IncomingFile(self.folder)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.parts[-1]
        part.size += end - start
        if part.file is not None:
            part.file.write(data[start:end])

    def _part_end(self) -> None:
        part = self.parts[-1]
        if part.file is None:
            return
        try:
            part.file.finish()
        except SpoolFullError as exc:
            part.error = str(exc)
            return
        part.file.start_sync(self.background)

    def _end(self) -> None:
        self.ended = True


# A body must keep moving: each this many bytes of it (and its end) within body_timeout.
PACE_BYTES = 1024 * 1024


async def receive_parts(
    stream: AsyncIterator[bytes], receiver: PartsReceiver, *, body_timeout: float, setting: str
) -> list[Part]:
    """Read the whole body from ``stream`` into ``receiver``; its parts, in order.

    A slow body is refused (408) when a mebibyte of it (or its rest) does not arrive within
    ``body_timeout`` seconds of the previous one: a client trickling bytes cannot hold a
    connection and its temporary files for hours, while a 2 GiB body on a link of 35 KB/s
    or more still gets through. ``setting`` names the key to change, for the reason.

    Raises
    ------
    BodyRefusedError
        The body is over a limit, malformed or too slow.
    """
    loop = asyncio.get_running_loop()
    chunks = stream.__aiter__()
    window_start, window_got = loop.time(), 0
    while True:
        left = window_start + body_timeout - loop.time()
        try:
            chunk = await asyncio.wait_for(chunks.__anext__(), timeout=max(left, 0.0))
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise BodyRefusedError(
                408,
                f"request body too slow: less than {PACE_BYTES} bytes in {body_timeout:g} s "
                f"({setting})",
            ) from None
        receiver.feed(chunk)
        window_got += len(chunk)
        if window_got >= PACE_BYTES:
            window_start, window_got = loop.time(), window_got % PACE_BYTES
    receiver.close()
    return receiver.parts
