"""Build raw, possibly malformed, DICOM data sets and command sets byte by byte.

pydicom refuses to write most of what HARDENING section B needs (a length
past the end, a bad VR, a 1,100-level nesting without recursion limits, a
command set without a Message ID), so these builders write the bytes
directly from PS3.5 7.1 (element encoding), 7.5 (items and delimiters) and
PS3.7 E.1 (command sets, always Implicit VR Little Endian).

Every builder returns plain ``bytes``; nothing here validates, on purpose.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator

__all__ = [
    "CT_IMAGE_STORAGE",
    "EXPLICIT_VR_LE",
    "IMPLICIT_VR_LE",
    "EXPLICIT_VR_BE",
    "DEFLATED",
    "UNDEFINED",
    "explicit",
    "explicit_be",
    "implicit",
    "item",
    "item_delimiter",
    "sequence_delimiter",
    "dataset",
    "minimal",
    "nested_sequences",
    "private_elements",
    "long_sequence",
    "deflate_bomb",
    "command",
    "c_store_rq",
    "pad_uid",
]

#: PS3.4 B.5: CT Image Storage.
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
#: PS3.5 A.1, A.2, A.3, A.5.
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
#: PS3.5 7.1.2: undefined length.
UNDEFINED = 0xFFFFFFFF

#: VRs with 2 reserved bytes and a 32-bit length in explicit VR (PS3.5 7.1.2).
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})


def pad_uid(value: bytes) -> bytes:
    """Pad a value to even length: UI with NUL, others callers pad themselves (PS3.5 6.2).

    :param value: the raw value.
    :returns: the value, with one trailing NUL if its length was odd.
    """
    return value + b"\x00" if len(value) % 2 else value


def _tag(tag: int, fmt: str) -> bytes:
    """Encode a tag as group then element.

    :param tag: ``0xGGGGEEEE``.
    :param fmt: ``"<"`` or ``">"``.
    :returns: 4 bytes.
    """
    return struct.pack(fmt + "HH", tag >> 16, tag & 0xFFFF)


def explicit(tag: int, vr: str, value: bytes = b"", *, length: int | None = None) -> bytes:
    """One Explicit VR Little Endian element (PS3.5 7.1.2).

    :param tag: ``0xGGGGEEEE``.
    :param vr: two letters (any two bytes: invalid VRs are the point of some cases).
    :param value: the value bytes, written verbatim.
    :param length: the declared length if not ``len(value)`` (lies are allowed).
    :returns: the element bytes.
    """
    declared = len(value) if length is None else length
    head = _tag(tag, "<") + vr.encode("latin-1")
    if vr in _LONG_VRS:
        return head + b"\x00\x00" + struct.pack("<I", declared) + value
    return head + struct.pack("<H", declared & 0xFFFF) + value


def explicit_be(tag: int, vr: str, value: bytes = b"", *, length: int | None = None) -> bytes:
    """One Explicit VR Big Endian element (PS3.5 A.3).

    :param tag: ``0xGGGGEEEE``.
    :param vr: two letters.
    :param value: the value bytes, verbatim (callers byte-swap binary values).
    :param length: the declared length if not ``len(value)``.
    :returns: the element bytes.
    """
    declared = len(value) if length is None else length
    head = _tag(tag, ">") + vr.encode("latin-1")
    if vr in _LONG_VRS:
        return head + b"\x00\x00" + struct.pack(">I", declared) + value
    return head + struct.pack(">H", declared & 0xFFFF) + value


def implicit(tag: int, value: bytes = b"", *, length: int | None = None) -> bytes:
    """One Implicit VR Little Endian element (PS3.5 7.1.3).

    :param tag: ``0xGGGGEEEE``.
    :param value: the value bytes.
    :param length: the declared length if not ``len(value)``.
    :returns: the element bytes.
    """
    declared = len(value) if length is None else length
    return _tag(tag, "<") + struct.pack("<I", declared) + value


def item(content: bytes = b"", *, length: int | None = None) -> bytes:
    """An Item (FFFE,E000) (PS3.5 7.5).

    :param content: the item's data set bytes.
    :param length: the declared length (``UNDEFINED`` for a delimited item).
    :returns: the item bytes; no delimiter is added.
    """
    return implicit(0xFFFEE000, content, length=length)


def item_delimiter() -> bytes:
    """An Item Delimitation Item (FFFE,E00D) (PS3.5 7.5.2).

    :returns: 8 bytes.
    """
    return implicit(0xFFFEE00D)


def sequence_delimiter() -> bytes:
    """A Sequence Delimitation Item (FFFE,E0DD) (PS3.5 7.5.1).

    :returns: 8 bytes.
    """
    return implicit(0xFFFEE0DD)


def dataset(parts: Iterable[bytes], *, big_endian: bool = False) -> bytes:
    """Join encoded elements in ascending tag order (PS3.5 7.1).

    :param parts: encoded elements, each starting with its own tag.
    :param big_endian: the parts' byte order, to read their tags.
    :returns: the data set bytes.
    """
    fmt = ">HH" if big_endian else "<HH"
    return b"".join(sorted(parts, key=lambda part: struct.unpack(fmt, part[:4])))


def minimal(
    sop_instance: str,
    *,
    sop_class: str | None = CT_IMAGE_STORAGE,
    extra: Iterable[bytes] = (),
    syntax: str = EXPLICIT_VR_LE,
    study: str = "1.2.826.0.1.3680043.10.543.1",
    series: str = "1.2.826.0.1.3680043.10.543.1.1",
    patient_id: bytes = b"HOSTILE1",
    patient_name: bytes = b"HOSTILE^TEST",
    modality: bytes = b"CT",
) -> bytes:
    """A small valid data set: SOP class and instance, study, series, patient, modality.

    :param sop_instance: SOP Instance UID (``""`` to leave it out, D05).
    :param sop_class: SOP Class UID, or ``None`` to leave it out (D05).
    :param extra: more encoded elements in the same syntax (merged in tag order).
    :param syntax: Implicit VR LE, Explicit VR LE or Explicit VR BE.
    :param study: Study Instance UID.
    :param series: Series Instance UID.
    :param patient_id: Patient ID bytes (padded to even length with a space).
    :param patient_name: Patient Name bytes (padded to even length with a space).
    :param modality: Modality bytes.
    :returns: the data set bytes.
    """
    big = syntax == EXPLICIT_VR_BE

    def text(value: bytes) -> bytes:
        return value + b" " if len(value) % 2 else value

    values: list[tuple[int, str, bytes]] = []
    if sop_class is not None:
        values.append((0x00080016, "UI", pad_uid(sop_class.encode("latin-1"))))
    if sop_instance:
        values.append((0x00080018, "UI", pad_uid(sop_instance.encode("latin-1"))))
    values += [
        (0x00080060, "CS", text(modality)),
        (0x00100010, "PN", text(patient_name)),
        (0x00100020, "LO", text(patient_id)),
        (0x0020000D, "UI", pad_uid(study.encode("latin-1"))),
        (0x0020000E, "UI", pad_uid(series.encode("latin-1"))),
    ]
    if syntax == IMPLICIT_VR_LE:
        parts = [implicit(tag, value) for tag, _vr, value in values]
    elif big:
        parts = [explicit_be(tag, vr, value) for tag, vr, value in values]
    else:
        parts = [explicit(tag, vr, value) for tag, vr, value in values]
    return dataset([*parts, *extra], big_endian=big)


def nested_sequences(depth: int, tag: int = 0x00081115) -> bytes:
    """``depth`` SQ elements nested one in another, all of undefined length.

    The shape of the IC-DCMTK-0003 proof of concept: each level costs 16 bytes
    plus 16 of delimiters, so 1,100 levels is about 35 KB (HARDENING D02).
    Built iteratively, so building it needs no recursion either.

    :param depth: the nesting depth.
    :param tag: the SQ tag used at every level (Referenced Series Sequence).
    :returns: one explicit VR LE element.
    """
    opening = explicit(tag, "SQ", length=UNDEFINED) + item(length=UNDEFINED)
    closing = item_delimiter() + sequence_delimiter()
    return opening * depth + closing * depth


def private_elements(count: int, group: int = 0x0009) -> bytes:
    """``count`` tiny private elements (HARDENING D18), explicit VR LE.

    A private creator (gggg,0010) reserves block 0x10; then elements
    ``(gggg,xxyy)`` are spread over further groups when one is full.

    :param count: how many 2-byte SH elements.
    :param group: the first odd private group.
    :returns: the encoded elements, in ascending order.
    """
    out = bytearray()
    g = group
    remaining = count
    while remaining > 0:
        out += explicit((g << 16) | 0x0010, "LO", b"HOSTILE ")
        n = min(remaining, 0xFF)
        for e in range(n):
            out += explicit((g << 16) | 0x1000 | e, "SH", b"x ")
        remaining -= n
        g += 2
    return bytes(out)


def long_sequence(items: int, tag: int = 0x00081115) -> bytes:
    """One SQ of defined length with ``items`` small defined-length items (D18).

    :param items: the number of items.
    :param tag: the SQ tag.
    :returns: the element, explicit VR LE.
    """
    one = item(explicit(0x00081155, "UI", b"1.2.3.4\x00"))
    value = one * items
    return explicit(tag, "SQ", value)


def deflate_bomb(sop_instance: str, inflated: int, chunk: int = 1 << 20) -> bytes:
    """A Deflated Explicit VR LE data set whose OB value inflates to ``inflated`` zeros (D09).

    The value is compressed a chunk at a time, so building a 1 GB bomb needs
    no 1 GB buffer: zlib's best ratio on zeros is about 1000:1.

    :param sop_instance: the SOP Instance UID.
    :param inflated: the OB value length before deflation.
    :param chunk: zeros fed to the compressor at a time.
    :returns: the raw deflate stream (PS3.5 A.5: no zlib header).
    """
    head = minimal(sop_instance) + explicit(0x7FE00010, "OB", length=inflated)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = [compressor.compress(head)]
    zeros = bytes(chunk)
    left = inflated
    while left > 0:
        n = min(left, chunk)
        out.append(compressor.compress(zeros if n == chunk else bytes(n)))
        left -= n
    out.append(compressor.flush())
    stream = b"".join(out)
    # PS3.5 A.5: the deflated stream is padded with one NUL to an even length.
    return stream + b"\x00" if len(stream) % 2 else stream


def command(elements: Iterable[tuple[int, bytes]], *, group_length: bool = True,
            sort: bool = True) -> bytes:
    """A command set in Implicit VR LE (PS3.7 6.3.1, E.1), group length first.

    :param elements: (tag, value) pairs, values already padded.
    :param group_length: prefix Command Group Length (0000,0000).
    :param sort: put elements in ascending tag order (``False`` to break it, D20).
    :returns: the command bytes.
    """
    pairs = sorted(elements, key=lambda pair: pair[0]) if sort else list(elements)
    body = b"".join(implicit(tag, value) for tag, value in pairs)
    if not group_length:
        return body
    return implicit(0x00000000, struct.pack("<I", len(body))) + body


def c_store_rq(
    sop_instance: str,
    *,
    sop_class: str = CT_IMAGE_STORAGE,
    message_id: int | None = 1,
    command_field: int = 0x0001,
    data_set_type: int = 0x0000,
    omit: Iterable[int] = (),
    duplicate: Iterable[int] = (),
    sort: bool = True,
) -> bytes:
    """A C-STORE-RQ command set (PS3.7 9.3.1.1), with switches to break it.

    :param sop_instance: Affected SOP Instance UID.
    :param sop_class: Affected SOP Class UID.
    :param message_id: Message ID, or ``None`` to leave it out (D20).
    :param command_field: 0x0001 normally; any value for D21.
    :param data_set_type: 0x0000 (present) or 0x0101 (none, D19).
    :param omit: tags to leave out (D20).
    :param duplicate: tags to send twice (D20).
    :param sort: ``False`` sends tags in descending order (D20).
    :returns: the command bytes.
    """
    elements: list[tuple[int, bytes]] = [
        (0x00000002, pad_uid(sop_class.encode("latin-1"))),
        (0x00000100, struct.pack("<H", command_field)),
        (0x00000700, struct.pack("<H", 0)),
        (0x00000800, struct.pack("<H", data_set_type)),
        (0x00001000, pad_uid(sop_instance.encode("latin-1"))),
    ]
    if message_id is not None:
        elements.append((0x00000110, struct.pack("<H", message_id)))
    skip = set(omit)
    elements = [pair for pair in elements if pair[0] not in skip]
    twice = set(duplicate)
    elements += [pair for pair in elements if pair[0] in twice]
    if not sort:
        elements.sort(key=lambda pair: pair[0], reverse=True)
    return command(elements, sort=sort)


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    """Split ``data`` into pieces of at most ``size`` bytes (at least one piece).

    :param data: the bytes.
    :param size: the largest piece.
    :returns: an iterator of pieces.
    """
    if not data:
        yield b""
        return
    for start in range(0, len(data), size):
        yield data[start:start + size]
