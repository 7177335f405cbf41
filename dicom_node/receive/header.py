"""Check the structure of a received file and read the few header values the index needs.

pydicom's reader builds Python objects for every element it passes (about 5 us each, and
a CT header has 250 and more, mostly private), which made reading the header the largest
single cost of answering a C-STORE. Here one pass over the element headers (tag, VR,
length; values are skipped, nested sequences and encapsulated pixel data walked):

* proves that every element, at every nesting level, fits in the bytes received: a file
  truncated anywhere is refused while the sender can still resend it;
* remembers where the top-level elements in ``WANTED`` are. pydicom then decodes only
  those, as ``RawDataElement`` values in a ``Dataset``, so character sets and VR rules
  stay pydicom's.

A deflated dataset is not walked (its offsets refer to the inflated stream): the caller
falls back to pydicom. The file is mapped, not read, so a 500 MB instance costs no memory.
"""

from __future__ import annotations

import functools
import mmap
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID
from pydicom.valuerep import VR

# Explicit VRs whose length field is 4 bytes (after 2 reserved bytes), PS3.5 7.1.2.
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
# Every VR an explicit-VR element may carry; anything else goes to pydicom, which decides.
_KNOWN_VRS = frozenset(vr.value.encode() for vr in VR if len(vr.value) == 2)
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
# Deeper nesting than this is not a real dataset (and would exhaust the stack).
_MAX_DEPTH = 64
_SPECIFIC_CHARACTER_SET = 0x00080005
_TRANSFER_SYNTAX = 0x00020010


class HeaderError(Exception):
    """The bytes are not a complete DICOM file; the message says where and why."""


class TruncatedError(HeaderError):
    """An element (or an item, or the file meta) ends beyond the last byte received."""


# Keywords whose value, when it is printable ASCII, is decoded here rather than by pydicom,
# with pydicom's stripping rules: the "string" VRs (CS, DA, UI) strip trailing spaces and
# NULs from the whole value, the "text" VRs (SH, LO) from each value. Every DICOM
# character set maps printable ASCII to itself (escape sequences are not printable), so
# such bytes decode the same whatever (0008,0005) says. Others (PN, IS, non-ASCII
# values) go through pydicom.
_STRING_VRS = frozenset({"AE", "CS", "DA", "UI"})
_TEXT_VRS = frozenset({"SH", "LO"})


@dataclass(frozen=True)
class Header:
    """What ``read_header`` found: the transfer syntax and the wanted elements."""

    transfer_syntax_uid: str
    dataset: Dataset  # only the wanted top-level elements (and the character set)

    def text(self, keyword: str) -> str:
        """The value as text, multi-values joined with a backslash, "" when absent."""
        tag, vr = _keyword_tag_vr(keyword)
        raw = self.dataset._dict.get(tag)
        if raw is None:
            return ""
        if isinstance(raw, RawDataElement) and isinstance(raw.value, bytes):
            value = raw.value
            if vr in _STRING_VRS and _printable(stripped := value.rstrip(b" \x00")):
                return stripped.decode("ascii")
            if vr in _TEXT_VRS and _printable(value.rstrip(b" \x00")):
                return "\\".join(v.rstrip("\0 ") for v in value.decode("ascii").split("\\"))
        return tag_text(self.dataset, keyword)


@dataclass(frozen=True)
class _Encoding:
    implicit: bool
    little: bool

    @property
    def tag_and_length(self) -> struct.Struct:
        return _TAG_LEN_LE if self.little else _TAG_LEN_BE


_TAG_LEN_LE = struct.Struct("<HHL")
_TAG_LEN_BE = struct.Struct(">HHL")
_EXPLICIT_LE = struct.Struct("<HH2sH")
_EXPLICIT_BE = struct.Struct(">HH2sH")
_LONG_LENGTH_LE = struct.Struct("<L")
_LONG_LENGTH_BE = struct.Struct(">L")


def _tag_text(group: int, element: int) -> str:
    return f"({group:04X},{element:04X})"


class _Walker:
    """One pass over a buffer; ``found`` collects (VR, length, offset) of wanted tags."""

    def __init__(self, buf: mmap.mmap | bytes, wanted: frozenset[int]) -> None:
        self.buf = buf
        self.end = len(buf)
        self.wanted = wanted
        self.found: dict[int, tuple[str | None, int, int]] = {}

    def _truncated(self, what: str, needs: int, start: int) -> TruncatedError:
        return TruncatedError(
            f"{what} is truncated: needs {needs} bytes, {max(self.end - start, 0)} received"
        )

    def dataset(self, pos: int, enc: _Encoding, depth: int, in_item: bool, stop: int) -> int:
        """Walk elements from ``pos``; returns the offset after the dataset (or item).

        ``stop``: a group number at which to return (the file meta walk stops at the
        first element that is not group 2); 0 walks to the end.
        """
        if depth > _MAX_DEPTH:
            raise HeaderError(f"sequences nested deeper than {_MAX_DEPTH} levels")
        buf, end = self.buf, self.end
        explicit = _EXPLICIT_LE if enc.little else _EXPLICIT_BE
        long_length = _LONG_LENGTH_LE if enc.little else _LONG_LENGTH_BE
        tag_and_length = enc.tag_and_length
        while pos < end:
            if pos + 8 > end:
                raise self._truncated("an element header", 8, pos)
            if enc.implicit:
                group, element, length = tag_and_length.unpack_from(buf, pos)
                vr: bytes | None = None
                header = 8
                if stop and group != stop:
                    return pos
            else:
                group, element, vr, length = explicit.unpack_from(buf, pos)
                header = 8
                if stop and group != stop:
                    return pos  # the first element after the file meta
                if group == 0xFFFE:  # items and delimiters carry no VR
                    group, element, length = tag_and_length.unpack_from(buf, pos)
                    vr = None
                elif vr not in _KNOWN_VRS:
                    raise HeaderError(f"element {_tag_text(group, element)}: unknown VR {vr!r}")
                elif vr in _LONG_VRS:
                    if pos + 12 > end:
                        raise self._truncated(f"element {_tag_text(group, element)}", 12, pos)
                    length = long_length.unpack_from(buf, pos + 8)[0]
                    header = 12
            tag = group << 16 | element
            if group == 0xFFFE:
                if tag == _ITEM_END and in_item:
                    return pos + 8
                raise HeaderError(f"unexpected {_tag_text(group, element)} in a dataset")
            value = pos + header
            if length == _UNDEFINED:
                # A sequence, encapsulated pixel data, or UN holding an implicit sequence.
                inner = _Encoding(True, True) if vr == b"UN" else enc
                pos = self.items(value, inner, depth + 1, _tag_text(group, element))
                continue
            if value + length > end:
                raise self._truncated(f"element {_tag_text(group, element)}", length, value)
            if depth == 0 and tag in self.wanted:
                self.found[tag] = (vr.decode("ascii", "replace") if vr else None, length, value)
            pos = value + length
        if in_item:
            raise self._truncated("an item without its end", 8, pos)
        return pos

    def items(self, pos: int, enc: _Encoding, depth: int, owner: str) -> int:
        """Walk the items of an undefined-length value up to its sequence delimiter."""
        buf, end = self.buf, self.end
        tag_and_length = enc.tag_and_length
        while True:
            if pos + 8 > end:
                raise self._truncated(f"element {owner} (no sequence delimiter)", 8, pos)
            group, element, length = tag_and_length.unpack_from(buf, pos)
            tag = group << 16 | element
            if tag == _SEQUENCE_END:
                return pos + 8
            if tag != _ITEM:
                raise HeaderError(
                    f"element {owner}: expected an item, found {_tag_text(group, element)}"
                )
            if length == _UNDEFINED:
                pos = self.dataset(pos + 8, enc, depth, True, 0)
            elif pos + 8 + length > end:
                raise self._truncated(f"an item of {owner}", length, pos + 8)
            else:
                pos += 8 + length


def _printable(value: bytes) -> bool:
    return value.isascii() and not value.translate(None, _PRINTABLE)


_PRINTABLE = bytes(range(0x20, 0x7F))


@functools.lru_cache(maxsize=64)
def _keyword_tag_vr(keyword: str) -> tuple[BaseTag, str]:
    tag = Tag(keyword)
    return tag, dictionary_VR(tag)


def tag_text(ds: Dataset, keyword: str) -> str:
    """pydicom's value of ``keyword`` as text: multi-values joined with a backslash as in
    DICOM, "" when absent, empty or binary (routing matches and the index keep text)."""
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, list | tuple | MultiValue):
        return "\\".join(str(v) for v in value)
    if isinstance(value, bytes):
        return ""
    return str(value)


@functools.lru_cache(maxsize=16)
def _wanted_tags(keywords: tuple[str, ...]) -> frozenset[int]:
    return frozenset(int(Tag(keyword)) for keyword in keywords) | {_SPECIFIC_CHARACTER_SET}


def _ascii(value: bytes) -> str:
    return value.rstrip(b"\x00 ").decode("ascii", "replace").strip()


def read_header(path: Path, keywords: Iterable[str]) -> Header | None:
    """Walk a Part 10 file; returns None for a deflated dataset (the caller uses pydicom).

    Raises
    ------
    HeaderError
        Not a Part 10 file, a malformed structure, or (``TruncatedError``) missing bytes.
    """
    wanted = _wanted_tags(tuple(keywords))
    with open(path, "rb") as fh:
        size = fh.seek(0, 2)
        if size < 132:
            raise HeaderError(f"{size} bytes: too short for a DICOM file")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if buf[128:132] != b"DICM":
                raise HeaderError("no DICM prefix: not a DICOM Part 10 file")
            meta = _Walker(buf, frozenset({_TRANSFER_SYNTAX}))
            start = meta.dataset(132, _Encoding(False, True), 0, False, 0x0002)
            if _TRANSFER_SYNTAX not in meta.found:
                raise HeaderError("the file meta has no Transfer Syntax UID")
            _vr, length, offset = meta.found[_TRANSFER_SYNTAX]
            syntax = UID(_ascii(buf[offset : offset + length]))
            if not syntax.is_transfer_syntax:  # pydicom knows each syntax's encoding
                raise HeaderError(f"{syntax[:64]!r} is not a known transfer syntax")
            if syntax.is_deflated:  # offsets refer to the inflated stream, not the file
                return None
            enc = _Encoding(implicit=syntax.is_implicit_VR, little=syntax.is_little_endian)
            walker = _Walker(buf, wanted)
            walker.dataset(start, enc, 0, False, 0)
            raw: dict[BaseTag, DataElement | RawDataElement] = {
                BaseTag(tag): RawDataElement(
                    BaseTag(tag),
                    vr,
                    length,
                    buf[offset : offset + length],
                    offset,
                    enc.implicit,
                    enc.little,
                    True,
                    False,
                )
                for tag, (vr, length, offset) in sorted(walker.found.items())
            }
    return Header(str(syntax), _dataset(raw, enc))


def _dataset(raw: dict[BaseTag, DataElement | RawDataElement], enc: _Encoding) -> Dataset:
    """A Dataset of raw elements, its character set set as pydicom's reader sets it."""
    ds = Dataset(raw)
    encoding: str | list[str] = default_encoding
    charset = raw.get(BaseTag(_SPECIFIC_CHARACTER_SET))
    if isinstance(charset, RawDataElement):
        encoding = convert_encodings(convert_raw_data_element(charset).value)
    ds.set_original_encoding(enc.implicit, enc.little, encoding)
    return ds
