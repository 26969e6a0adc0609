"""Inflating a deflated DICOM data set without letting the upload choose how much memory it takes.

pydicom inflates a Deflated Explicit VR Little Endian data set in one `zlib.decompress` call inside
`dcmread`: a 1 MB upload holding a private element of 1 GiB of zeros took the process from 91 MiB to
2,140 MiB before any check ran. Here the data set is inflated in 64 KiB steps while its elements are
walked (explicit VR little endian, sequences of undefined length included), so that:

- no element before the pixel data may declare more than `element_bytes`, and everything before the
  pixel data together may not exceed `header_bytes` (bombs hide in private elements and sequences);
- the pixel data, native in this transfer syntax, may hold no more than Rows x Columns x frames x
  samples x bytes (plus one pad byte) that the header promised and `check_size` accepted;
- after the pixel data, at most `_TRAILER_BYTES` more (padding, signatures) are inflated.

Errors say what was wrong by tag number and size, never an element's value.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

__all__ = ["DicomTooLarge", "MalformedDicom", "inflate_data_set"]

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = (0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)
_PIXEL_DATA = (0x7FE0, 0x0010)
_IMAGE_ATTRIBUTES = {
    (0x0028, 0x0010): "Rows",
    (0x0028, 0x0011): "Columns",
    (0x0028, 0x0008): "NumberOfFrames",
    (0x0028, 0x0002): "SamplesPerPixel",
    (0x0028, 0x0100): "BitsAllocated",
}
_STEP = 1 << 16
_TRAILER_BYTES = 64 << 10
_MAX_DEPTH = 8


class DicomTooLarge(ValueError):
    """The data set inflates (or would) beyond what its header or the limits allow."""


class MalformedDicom(ValueError):
    """The deflated data set cannot be walked: truncated, corrupt, or nested too deep."""


def _tag(tag: tuple[int, int]) -> str:
    return f"({tag[0]:04X},{tag[1]:04X})"


class _Inflater:
    """The inflated bytes so far, grown on demand in steps, never past `cap`."""

    def __init__(self, deflated: bytes, cap: int) -> None:
        self._stream = zlib.decompressobj(-zlib.MAX_WBITS)
        self._input = deflated
        self.buffer = bytearray()
        self.cap = cap

    def _step(self) -> bool:
        """Inflate up to one more step; False when the stream has ended."""
        if self._stream.eof:
            return False
        data = self._stream.unconsumed_tail if self._input is None else self._input
        self._input = None
        room = self.cap + 1 - len(self.buffer)  # one byte past the cap proves the cap was exceeded
        try:
            chunk = self._stream.decompress(data, max(1, min(_STEP, room))) if data else self._stream.flush()
        except zlib.error as exc:
            raise MalformedDicom(f"the deflated data set is corrupt ({exc})") from None
        self.buffer += chunk
        if len(self.buffer) > self.cap:
            raise DicomTooLarge(f"the deflated data set inflates beyond {self.cap} bytes")
        return bool(chunk) or not self._stream.eof and bool(self._stream.unconsumed_tail)

    def has(self, end: int) -> bool:
        """Whether the data set holds at least `end` bytes (inflating as far as needed)."""
        if end > self.cap:
            raise DicomTooLarge(f"the deflated data set would inflate beyond {self.cap} bytes")
        while len(self.buffer) < end:
            if not self._step():
                return False
        return True

    def need(self, end: int) -> None:
        if not self.has(end):
            raise MalformedDicom("the deflated data set ends inside an element")

    def to_end(self) -> None:
        while self._step():
            pass

    def unpack(self, fmt: str, offset: int) -> tuple:
        return struct.unpack_from(fmt, self.buffer, offset)


def _header(inflater: _Inflater, pos: int) -> tuple[tuple[int, int], bytes | None, int, int]:
    """(tag, VR or None for items and delimiters, value length, value offset) of the element at pos."""
    inflater.need(pos + 8)
    tag = inflater.unpack("<HH", pos)
    if tag[0] == 0xFFFE:
        return tag, None, inflater.unpack("<I", pos + 4)[0], pos + 8
    vr = bytes(inflater.buffer[pos + 4 : pos + 6])
    if vr in _LONG_VRS:
        inflater.need(pos + 12)
        return tag, vr, inflater.unpack("<I", pos + 8)[0], pos + 12
    return tag, vr, inflater.unpack("<H", pos + 6)[0], pos + 8


def _skip(inflater: _Inflater, tag, length: int, pos: int, depth: int, element_bytes: int) -> int:
    """The offset after an element's value that starts at pos."""
    if length != _UNDEFINED:
        if length > element_bytes:
            raise DicomTooLarge(
                f"DICOM element {_tag(tag)} declares {length} bytes, over the limit of {element_bytes} for "
                f"an element other than the pixel data"
            )
        inflater.need(pos + length)
        return pos + length
    if depth >= _MAX_DEPTH:
        raise MalformedDicom(f"DICOM sequences are nested deeper than {_MAX_DEPTH} levels")
    while True:  # a sequence of undefined length: items up to its delimiter
        item, _, item_length, value = _header(inflater, pos)
        if item == _SEQUENCE_END:
            return value
        if item != _ITEM:
            raise MalformedDicom(f"DICOM element {_tag(tag)} holds {_tag(item)} where an item belongs")
        if item_length != _UNDEFINED:
            pos = _skip(inflater, item, item_length, value, depth + 1, element_bytes)
            continue
        pos = value
        while True:  # an item of undefined length: a data set up to its delimiter
            inner, _, inner_length, value = _header(inflater, pos)
            if inner == _ITEM_END:
                pos = value
                break
            pos = _skip(inflater, inner, inner_length, value, depth + 1, element_bytes)


def inflate_data_set(
    deflated: bytes,
    check_size: Callable[[int, int, int], None],
    *,
    header_bytes: int,
    element_bytes: int,
) -> bytes:
    """The inflated data set (explicit VR little endian), or DicomTooLarge / MalformedDicom.
    `check_size(columns, rows, frames)` raises for images the service refuses, before their pixels
    are inflated."""
    inflater = _Inflater(deflated, cap=header_bytes)
    attributes: dict[str, int] = {}
    pos = 0
    while True:
        if not inflater.has(pos + 1):
            inflater.need(pos)
            return bytes(inflater.buffer)  # no pixel data: the caller's reader says so
        tag, _, length, value = _header(inflater, pos)
        if tag == _PIXEL_DATA:
            break
        name = _IMAGE_ATTRIBUTES.get(tag)
        if name is not None and length <= 16:
            inflater.need(value + length)
            raw = bytes(inflater.buffer[value : value + length])
            try:
                attributes[name] = (
                    int(raw.strip(b" \0")) if name == "NumberOfFrames" else inflater.unpack("<H", value)[0]
                )
            except (ValueError, struct.error):
                raise MalformedDicom(f"DICOM attribute {name} is not a number") from None
        pos = _skip(inflater, tag, length, value, 0, element_bytes)
    missing = [n for n in ("Rows", "Columns", "BitsAllocated") if n not in attributes]
    if missing:
        raise MalformedDicom(f"the DICOM image attributes {', '.join(missing)} are missing")
    rows, columns = attributes["Rows"], attributes["Columns"]
    frames = attributes.get("NumberOfFrames", 1) or 1
    check_size(columns, rows, frames)
    expected = (
        rows * columns * frames * attributes.get("SamplesPerPixel", 1) * -(-attributes["BitsAllocated"] // 8)
    )
    if length == _UNDEFINED:
        raise MalformedDicom("deflated DICOM pixel data must be native (a defined length), not encapsulated")
    if length > expected + 1:
        raise DicomTooLarge(
            f"the DICOM pixel data declares {length} bytes; {frames} frame(s) of {columns}x{rows} "
            f"hold {expected}"
        )
    inflater.cap = value + length + _TRAILER_BYTES
    inflater.to_end()
    return bytes(inflater.buffer)
