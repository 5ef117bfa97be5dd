"""The DICOM File Meta Information: its writer and the gateway's one reader (PS3.10 7.1).

A spooled instance is a PS3.10 file: a 128-byte preamble, the ``DICM``
prefix, then the File Meta Information group (0002,xxxx) encoded in
Explicit VR Little Endian whatever the data set's transfer syntax is
(PS3.10 7.1: "shall be encoded using the Explicit VR Little Endian Transfer
Syntax"). The data set follows verbatim, as the peer sent it.

The preamble we write is always zeros (HARDENING D16, CVE-2019-11687): the
stored file can never double as an executable.

Values such as UIDs come from a peer's command set and may be anything. They
are never refused here: the bytes are stored as they came (see
:func:`_value_bytes`), because refusing a store is a policy decision made
elsewhere (HARDENING decision 3), and the file must always stay readable.

:func:`read_part10_header` reads a file's meta group back without pydicom
(the sender learns SOP class, instance and transfer syntax from it, and
recovery an orphan file's identity); :func:`file_meta_end` finds where the
data set starts (the splice writer). Both walk the group with one loop,
:func:`_walk_meta`, whose element header forms come from
:mod:`gateway.vrfacts`.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

from gateway.vrfacts import LONG_VR_CODES

__all__ = ["encode_file_meta", "file_meta_end", "Part10Header", "PREAMBLE", "PREFIX", "read_part10_header"]

#: PS3.10 7.1: a fixed 128-byte File Preamble. We always write zeros (D16).
PREAMBLE = b"\x00" * 128
#: PS3.10 7.1: the four-byte DICOM prefix "DICM".
PREFIX = b"DICM"

# PS3.10 7.1 Table 7.1-1: (0002,0001) File Meta Information Version is OB
# with the value 00H 01H (version 1 of the meta header).
_META_VERSION = b"\x00\x01"

# PS3.5 7.1.2: in Explicit VR the largest value a 2-byte length can hold; an
# even length must be kept, so 0xFFFE is the largest usable one.
_MAX_SHORT_VALUE = 0xFFFE


def _value_bytes(value: str) -> bytes:
    """
    Turn a value that came from the peer back into the bytes it most likely was.

    Command-set strings decoded as ISO 8859-1 round-trip exactly. Strings
    decoded with ``surrogateescape`` round-trip through UTF-8. Anything else
    is escaped with backslash sequences, which always encodes: the value is
    stored, never refused.

    :param value: the text value.
    :returns: its bytes, unpadded.
    """
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        pass
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("ascii", "backslashreplace")


def _pad(raw: bytes, pad: bytes) -> bytes:
    """
    Pad a value to even length (PS3.5 7.1.1: value lengths are even).

    A value too long for a 2-byte length field is cut to the largest even
    length that fits, so the meta group always encodes.

    :param raw: the value bytes.
    :param pad: the single padding byte: NUL for UI, space for text VRs
        (PS3.5 6.2).
    :returns: the padded value.
    """
    if len(raw) > _MAX_SHORT_VALUE:
        raw = raw[:_MAX_SHORT_VALUE]
    if len(raw) % 2:
        raw += pad
    return raw


def _short_element(element: int, vr: bytes, value: bytes) -> bytes:
    """
    Encode one group-2 element whose VR has a 2-byte length (PS3.5 7.1.2).

    :param element: the element number within group 0002.
    :param vr: the two VR letters.
    :param value: the already padded value.
    :returns: tag, VR, length and value.
    """
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def encode_file_meta(
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    implementation_class_uid: str,
    implementation_version_name: str,
    source_ae_title: str | None = None,
) -> bytes:
    """
    Encode the preamble, prefix and File Meta Information (PS3.10 7.1).

    The elements are written in ascending tag order (PS3.5 7.1) with
    (0002,0000) File Meta Information Group Length first; its value is the
    byte count of the elements that follow it, up to the end of group 2.

    :param sop_class_uid: (0002,0002) Media Storage SOP Class UID.
    :param sop_instance_uid: (0002,0003) Media Storage SOP Instance UID.
    :param transfer_syntax_uid: (0002,0010) Transfer Syntax UID of the data set.
    :param implementation_class_uid: (0002,0012) our Implementation Class UID.
    :param implementation_version_name: (0002,0013) our Implementation Version
        Name; omitted when empty.
    :param source_ae_title: (0002,0016) Source Application Entity Title, the
        calling AE of the association; omitted when ``None`` or empty.
    :returns: 132 + the group's length bytes.
    """
    nul, space = b"\x00", b" "
    # (0002,0001) is OB, which has the 4-byte length form: VR, two reserved
    # zero bytes, then a 32-bit length (PS3.5 7.1.2, Table 7.1-1).
    body = struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, len(_META_VERSION))
    body += _META_VERSION
    # UIDs are padded with a trailing NUL (PS3.5 9.1); text VRs with a space.
    body += _short_element(0x0002, b"UI", _pad(_value_bytes(sop_class_uid), nul))
    body += _short_element(0x0003, b"UI", _pad(_value_bytes(sop_instance_uid), nul))
    body += _short_element(0x0010, b"UI", _pad(_value_bytes(transfer_syntax_uid), nul))
    body += _short_element(0x0012, b"UI", _pad(_value_bytes(implementation_class_uid), nul))
    if implementation_version_name:
        body += _short_element(
            0x0013, b"SH", _pad(_value_bytes(implementation_version_name), space)
        )
    if source_ae_title:
        body += _short_element(0x0016, b"AE", _pad(_value_bytes(source_ae_title), space))
    # (0002,0000) File Meta Information Group Length, UL, 4-byte value.
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body))
    return PREAMBLE + PREFIX + group_length + body


# -- The reader ----------------------------------------------------------------------------

#: PS3.5 7.1.1: the undefined length value (never valid in the file meta).
_UNDEFINED_LENGTH = 0xFFFFFFFF


@dataclass(frozen=True)
class Part10Header:
    """What :func:`read_part10_header` found in a file's meta information (PS3.10 7.1).

    :ivar sop_class_uid: (0002,0002) Media Storage SOP Class UID.
    :ivar sop_instance_uid: (0002,0003) Media Storage SOP Instance UID.
    :ivar transfer_syntax_uid: (0002,0010) Transfer Syntax UID.
    :ivar dataset_offset: the file offset of the data set's first element.
    :ivar size: the data set's size in bytes (the file's, less the meta).
    :ivar source_ae_title: (0002,0016) Source Application Entity Title, or "".
    """

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    dataset_offset: int
    size: int
    source_ae_title: str = ""


def _meta_value(raw: bytes) -> str:
    """A text or UID value of the meta, without its padding (PS3.5 6.2, 9.1)."""
    return raw.decode("latin-1").rstrip("\x00 ")


def _walk_meta(f: BinaryIO, values: dict[int, bytes] | None) -> int:
    """Walk the group 0002 elements from offset 132 (Explicit VR Little Endian, PS3.10 7.1).

    Only the group number of the next element is trusted to tell where the
    group ends: the data set after it may be implicit VR or big endian.

    :param f: the file, positioned anywhere.
    :param values: filled with each element's value bytes when given.
    :returns: the offset just past the group (where the data set starts).
    :raises ValueError: when an element is cut short or has an undefined length.
    """
    offset = 132
    while True:
        f.seek(offset)
        header = f.read(8)
        if len(header) < 2 or struct.unpack("<H", header[:2])[0] != 0x0002:
            return offset
        if len(header) < 8:
            raise ValueError(f"file meta element at {offset} is cut short")
        element = struct.unpack("<H", header[2:4])[0]
        vr = header[4:6]
        if vr in LONG_VR_CODES:
            # PS3.5 7.1.2 Table 7.1-1: two reserved bytes, then a 32-bit length.
            extra = f.read(4)
            if len(extra) < 4:
                raise ValueError(f"file meta element at {offset} is cut short")
            length = struct.unpack("<I", extra)[0]
            start = offset + 12
        else:
            length = struct.unpack("<H", header[6:8])[0]
            start = offset + 8
        if length == _UNDEFINED_LENGTH:
            raise ValueError(f"file meta element (0002,{element:04X}) has an undefined length")
        if values is not None:
            values[0x00020000 | element] = f.read(length)
        offset = start + length


def file_meta_end(f: BinaryIO) -> int:
    """The offset just past a Part 10 file's meta group: where the data set starts.

    :param f: the open file (its position is moved).
    :returns: the offset.
    :raises ValueError: when the meta is malformed.
    """
    return _walk_meta(f, None)


def read_part10_header(path: str) -> Part10Header:
    """Read a Part 10 file's meta group (Explicit VR LE, PS3.10 7.1) without pydicom.

    :param path: the file.
    :returns: what the meta says, and where the data set starts.
    :raises ValueError: when the file has no ``DICM`` prefix or its meta is malformed.
    """
    size = os.path.getsize(path)
    values: dict[int, bytes] = {}
    with open(path, "rb") as f:
        head = f.read(132)
        if len(head) < 132 or head[128:132] != PREFIX:
            raise ValueError(f"{path}: not a DICOM Part 10 file (no DICM prefix)")
        try:
            offset = _walk_meta(f, values)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    try:
        return Part10Header(
            sop_class_uid=_meta_value(values[0x00020002]),
            sop_instance_uid=_meta_value(values[0x00020003]),
            transfer_syntax_uid=_meta_value(values[0x00020010]),
            dataset_offset=offset,
            size=size - offset,
            source_ae_title=_meta_value(values.get(0x00020016, b"")),
        )
    except KeyError as e:
        raise ValueError(f"{path}: file meta lacks {e.args[0]:08X}") from None
