"""The DICOM File Meta Information writer (PS3.10 7.1).

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
"""

from __future__ import annotations

import struct

__all__ = ["encode_file_meta", "PREAMBLE", "PREFIX"]

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
