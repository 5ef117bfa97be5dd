"""Reading a spooled instance's header, and walking raw elements without decoding them.

Routing and morphing look only at the header: everything before the pixel
data. :func:`read_header` reads it with pydicom (``stop_before_pixels`` and
``defer_size``, so large values in the header are read only when used) and
notes where the pixel data element starts, so the splice writer in
:mod:`gateway.morph` can copy the pixel data and what follows verbatim.

The raw walker (:func:`iter_raw_elements`, :func:`element_end`) reads element
headers only: tag, VR, length (PS3.5 7.1.2 explicit VR, 7.1.3 implicit VR),
and seeks over values. Undefined lengths (PS3.5 7.5.1 sequences, 7.5.2
items, A.4 encapsulated pixel data) are followed through their items to the
matching delimiter, so the pixel data of a 1 GB instance is skipped with a
handful of small reads.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID

from gateway.meta import file_meta_end
from gateway.vrfacts import LONG_VR_CODES

__all__ = [
    "Header",
    "RawElement",
    "RawParseError",
    "PIXEL_DATA_TAGS",
    "read_header",
    "iter_raw_elements",
    "element_end",
    "encoding_of",
]

#: (7FE0,0008) Float Pixel Data, (7FE0,0009) Double Float Pixel Data and
#: (7FE0,0010) Pixel Data: pydicom's ``stop_before_pixels`` stops at any of them.
PIXEL_DATA_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})

# PS3.5 7.5: item, item delimitation and sequence delimitation tags. They
# never carry a VR, even in explicit VR syntaxes (7.5: "encoded as implicit").
_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_DELIMITERS = frozenset({_ITEM, _ITEM_DELIMITER, _SEQUENCE_DELIMITER})

# PS3.5 7.1.1: the undefined length value.
UNDEFINED_LENGTH = 0xFFFFFFFF

# Nesting guard (HARDENING D18): a hostile file could nest sequences deeply.
_MAX_DEPTH = 64

#: Explicit VR Little Endian, Implicit VR Little Endian and Explicit VR Big
#: Endian (PS3.5 Annex A) are the three uncompressed encodings; every other
#: transfer syntax but Deflate encodes the data set as Explicit VR LE.
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"


class RawParseError(ValueError):
    """The bytes do not form valid element headers (truncated, bad delimiter, too deep)."""


@dataclass
class Header:
    """The header of a Part 10 file: the data set up to the pixel data.

    :ivar dataset: the data set without the pixel data and what follows it
        (the file meta is in ``dataset.file_meta``).
    :ivar transfer_syntax_uid: (0002,0010) of the file meta.
    :ivar dataset_offset: file offset of the first data set element.
    :ivar pixel_offset: file offset of the pixel data element's tag, or None
        when the data set has no pixel data (the whole file was read).
    :ivar size: the file's size in bytes.
    """

    dataset: Dataset
    transfer_syntax_uid: str
    dataset_offset: int
    pixel_offset: int | None
    size: int = 0


@dataclass(frozen=True)
class RawElement:
    """One element's header as found in the byte stream.

    :ivar tag: the 32-bit tag.
    :ivar vr: the two VR letters, or None (implicit VR, items, delimiters).
    :ivar offset: file offset of the tag.
    :ivar length: the value length field (may be :data:`UNDEFINED_LENGTH`).
    :ivar end: file offset just past the element, including any items and
        delimiter an undefined length implies.
    """

    tag: int
    vr: str | None
    offset: int
    length: int
    end: int


def encoding_of(transfer_syntax_uid: str) -> tuple[bool, bool]:
    """``(is_implicit_vr, is_little_endian)`` of a transfer syntax's data set (PS3.5 Annex A).

    :param transfer_syntax_uid: the UID.
    :returns: the encoding; unknown syntaxes are taken as explicit VR LE
        (every compressed syntax encodes the data set that way, PS3.5 A.4).
    """
    if transfer_syntax_uid == _IMPLICIT_LE:
        return True, True
    if transfer_syntax_uid == _EXPLICIT_BE:
        return False, False
    return False, True


def read_header(path: str, defer_size: int = 16384) -> Header:
    """Read a Part 10 file's header without touching its pixel data.

    :param path: the file.
    :param defer_size: values larger than this are read from the file only
        when used (pydicom ``defer_size``).
    :returns: the header and the pixel data offset.
    :raises ValueError: when pydicom cannot read the file (wrapped
        ``InvalidDicomError`` and friends).
    """
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
        try:
            dataset = pydicom.dcmread(f, stop_before_pixels=True, defer_size=defer_size)
        except Exception as e:  # pydicom raises many kinds on malformed input
            raise ValueError(f"{path}: cannot read the header: {e}") from e
        stopped_at = f.tell()
        # pydicom leaves the file at the pixel data tag when it stops before it;
        # at the end of the file when there is none.
        f.seek(stopped_at)
        head = f.read(4)
        dataset_offset = file_meta_end(f)
    file_meta: FileMetaDataset = dataset.file_meta
    syntax = str(file_meta.get("TransferSyntaxUID", ""))
    implicit, little = encoding_of(syntax)
    pixel_offset: int | None = None
    if len(head) == 4:
        group, element = struct.unpack("<HH" if little else ">HH", head)
        if (group << 16) | element in PIXEL_DATA_TAGS:
            pixel_offset = stopped_at
    return Header(
        dataset=dataset,
        transfer_syntax_uid=syntax,
        dataset_offset=dataset_offset,
        pixel_offset=pixel_offset,
        size=size,
    )


def _read_exact(f: BinaryIO, count: int) -> bytes:
    data = f.read(count)
    if len(data) != count:
        raise RawParseError(f"truncated element header at offset {f.tell() - len(data)}")
    return data


def _read_header_at(f: BinaryIO, offset: int, implicit: bool, little: bool) -> tuple[int, str | None, int, int] | None:
    """Read one element header at ``offset``: ``(tag, vr, length, header_size)``, or None at EOF."""
    f.seek(offset)
    first = f.read(4)
    if not first:
        return None
    if len(first) < 4:
        raise RawParseError(f"truncated tag at offset {offset}")
    endian = "<" if little else ">"
    group, element = struct.unpack(endian + "HH", first)
    tag = (group << 16) | element
    if tag in _DELIMITERS or implicit:
        # PS3.5 7.1.3 implicit VR, and 7.5 items/delimiters: tag + 32-bit length.
        (length,) = struct.unpack(endian + "I", _read_exact(f, 4))
        return tag, None, length, 8
    vr = _read_exact(f, 2)
    if vr in LONG_VR_CODES:
        # PS3.5 7.1.2: 2 reserved bytes, then a 32-bit length.
        (length,) = struct.unpack(endian + "I", _read_exact(f, 6)[2:])
        return tag, vr.decode("ascii"), length, 12
    if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
        raise RawParseError(f"invalid VR {vr!r} at offset {offset}")
    (length,) = struct.unpack(endian + "H", _read_exact(f, 2))
    return tag, vr.decode("ascii"), length, 8


def element_end(f: BinaryIO, offset: int, implicit: bool, little: bool, _depth: int = 0) -> RawElement:
    """Find where the element starting at ``offset`` ends, reading only headers.

    :param f: the open file.
    :param offset: the file offset of the element's tag.
    :param implicit: whether the data set is implicit VR (PS3.5 7.1.3).
    :param little: whether it is little endian.
    :returns: the element's header and its end offset.
    :raises RawParseError: on truncation, a missing delimiter or excessive nesting.
    """
    if _depth > _MAX_DEPTH:
        raise RawParseError(f"sequences nested more than {_MAX_DEPTH} deep at offset {offset}")
    head = _read_header_at(f, offset, implicit, little)
    if head is None:
        raise RawParseError(f"no element at offset {offset}")
    tag, vr, length, header_size = head
    start = offset + header_size
    if length != UNDEFINED_LENGTH:
        return RawElement(tag, vr, offset, length, start + length)
    if tag == _ITEM:
        # PS3.5 7.5.2: an item of undefined length holds elements up to an
        # Item Delimitation Item.
        end = _walk_until(f, start, _ITEM_DELIMITER, implicit, little, _depth + 1)
        return RawElement(tag, vr, offset, length, end)
    # PS3.5 7.5.1 (SQ), A.4 (encapsulated pixel data) and 6.2.2 (UN of
    # undefined length, whose content is implicit VR LE): items up to a
    # Sequence Delimitation Item.
    if vr == "UN":
        implicit, little = True, True
    position = start
    while True:
        item = element_end(f, position, implicit, little, _depth + 1)
        position = item.end
        if item.tag == _SEQUENCE_DELIMITER:
            return RawElement(tag, vr, offset, length, position)
        if item.tag != _ITEM:
            raise RawParseError(f"expected an item in ({tag >> 16:04X},{tag & 0xFFFF:04X}) at offset {item.offset}")


def _walk_until(f: BinaryIO, position: int, delimiter: int, implicit: bool, little: bool, depth: int) -> int:
    """Skip elements from ``position`` until ``delimiter``; returns the offset past it."""
    while True:
        element = element_end(f, position, implicit, little, depth)
        position = element.end
        if element.tag == delimiter:
            return position


def iter_raw_elements(
    f: BinaryIO, offset: int, end: int | None, *, implicit: bool, little: bool
) -> Iterator[RawElement]:
    """Every top-level element from ``offset`` to ``end`` (or the end of the file).

    :param f: the open file.
    :param offset: where the first element's tag is.
    :param end: where to stop, or None for the end of the file.
    :param implicit: implicit VR encoding (PS3.5 7.1.3).
    :param little: little endian.
    :returns: an iterator of element headers; values are seeked over, never read.
    :raises RawParseError: on malformed headers or a truncated value.
    """
    size = f.seek(0, 2)
    limit = size if end is None else min(end, size)
    position = offset
    while position < limit:
        element = element_end(f, position, implicit, little)
        if element.end > size:
            raise RawParseError(f"element at offset {position} runs past the end of the file")
        yield element
        position = element.end


def is_deflated(transfer_syntax_uid: str) -> bool:
    """Whether the data set is deflated (PS3.5 A.5: Deflated Explicit VR Little Endian).

    :param transfer_syntax_uid: the UID.
    :returns: True for the deflate syntaxes.
    """
    return UID(transfer_syntax_uid).is_deflated if transfer_syntax_uid else False
