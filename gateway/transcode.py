"""Re-encode an uncompressed Part 10 file in another native transfer syntax.

This is the only code in the gateway that re-encodes a data set (DESIGN.md
5). The forwarder uses it when a destination accepts an instance's SOP class
but not its original transfer syntax, only Explicit or Implicit VR Little
Endian, which every Storage SCP must accept (PS3.4 B.4.1 requires Implicit VR
Little Endian; PS3.5 10.1 makes it the default transfer syntax).

Only the three native, uncompressed syntaxes are handled (PS3.5 A.1-A.3):

- Implicit VR Little Endian, 1.2.840.10008.1.2 (PS3.5 A.1);
- Explicit VR Little Endian, 1.2.840.10008.1.2.1 (PS3.5 A.2);
- Explicit VR Big Endian, 1.2.840.10008.1.2.2 (PS3.5 A.3, retired).

Compressed, encapsulated or deflated data is never decoded here:
:class:`TranscodeError` is raised instead. Decompression and compression
for a destination's ``transfer_syntax`` (issue 17) are in
:mod:`gateway.codecs.convert`, which uses this module for native-to-native
re-encoding of instances without pixel data.

pydicom's writer re-encodes every element it holds as a Python value (the
numbers of US, SS, UL, FL, FD... and the text of string VRs) in the target
byte order. It writes the bytes of "other" VRs (OW, OF, OL, OD, OV) as they
are, so between little and big endian we swap their words ourselves, word
size by VR (PS3.5 7.3: the byte ordering applies to each value of the VR's
size; OB and UN are byte streams and never swapped).
"""

from __future__ import annotations

import os
from typing import BinaryIO

import pydicom
from pydicom.dataset import Dataset
from pydicom.filewriter import correct_ambiguous_vr, dcmwrite

from gateway.durable import DEFAULT_FLUSH, SYSTEM, FileOps, FlushPolicy, replace_durably, through_file
from gateway.vrfacts import WORD_SIZE
from gateway.sopclasses import EXPLICIT_VR_BE, EXPLICIT_VR_LE, IMPLICIT_VR_LE

__all__ = ["TranscodeError", "NATIVE_SYNTAXES", "transcode"]

#: The transfer syntaxes this module reads and writes (PS3.5 A.1-A.3).
NATIVE_SYNTAXES: frozenset[str] = frozenset({IMPLICIT_VR_LE, EXPLICIT_VR_LE, EXPLICIT_VR_BE})

#: Word size of each VR whose value pydicom keeps as raw bytes and writes unchanged (PS3.5 6.2, 7.3).
_WORD_SIZE: dict[str, int] = WORD_SIZE


class TranscodeError(Exception):
    """The file cannot be re-encoded (compressed source or target, unreadable data)."""


def _swap_words(value: bytes, size: int) -> bytes:
    """Reverse the bytes of every ``size``-byte word of ``value``.

    :raises TranscodeError: when the length is not a multiple of ``size``.
    """
    if len(value) % size:
        raise TranscodeError(f"value of {len(value)} bytes is not a whole number of {size}-byte words")
    out = bytearray(len(value))
    # Byte k of each output word is byte size-1-k of the input word.
    for k in range(size):
        out[k::size] = value[size - 1 - k :: size]
    return bytes(out)


def _swap_other_vrs(ds: Dataset) -> None:
    """Swap the words of every OW/OF/OL/OD/OV value, nested sequences included (PS3.5 7.3)."""
    for element in ds.iterall():
        size = _WORD_SIZE.get(element.VR)
        if size is not None and isinstance(element.value, (bytes, bytearray)) and element.value:
            element.value = _swap_words(bytes(element.value), size)


def transcode(
    src_path: str,
    dst_path: str,
    transfer_syntax_uid: str,
    *,
    ops: FileOps = SYSTEM,
    flush: FlushPolicy = DEFAULT_FLUSH,
) -> None:
    """Write ``src_path`` re-encoded in ``transfer_syntax_uid`` to ``dst_path``.

    The destination is written through a temporary file in its directory,
    fsynced, renamed into place and the directory fsynced
    (:func:`gateway.durable.replace_durably`), so a reader never sees half a
    file and a power cut never loses a file already renamed. Element values,
    the preamble and the rest of the file meta are kept; only (0002,0010)
    Transfer Syntax UID changes, as PS3.10 7.1 requires.

    :param src_path: a Part 10 file in a native syntax.
    :param dst_path: where to write the result.
    :param transfer_syntax_uid: one of :data:`NATIVE_SYNTAXES`.
    :param ops: the system calls of the durable write.
    :param flush: the order of its flushes.
    :raises TranscodeError: for a compressed, deflated or unknown source or
        target syntax, or a file pydicom cannot read.
    """
    if transfer_syntax_uid not in NATIVE_SYNTAXES:
        raise TranscodeError(f"cannot transcode to {transfer_syntax_uid}: only native syntaxes are supported")
    try:
        ds = pydicom.dcmread(src_path)
    except Exception as e:  # pydicom raises many types for unreadable input
        raise TranscodeError(f"cannot read {src_path}: {e}") from e
    source = str(getattr(ds.file_meta, "TransferSyntaxUID", ""))
    if source not in NATIVE_SYNTAXES:
        raise TranscodeError(f"cannot transcode from {source or 'an unknown syntax'}: not a native syntax")
    source_little = source != EXPLICIT_VR_BE
    target_little = transfer_syntax_uid != EXPLICIT_VR_BE
    try:
        # Decode every element now (pydicom reads lazily), and resolve the
        # ambiguous VRs of Implicit VR data ("OB or OW", "US or SS") from the
        # data set itself (PS3.5 A.1, PS3.3 C.7.6.3 Bits Allocated).
        for _ in ds.iterall():
            pass
        correct_ambiguous_vr(ds, source_little)
        if source_little != target_little:
            _swap_other_vrs(ds)
        ds.file_meta.TransferSyntaxUID = transfer_syntax_uid
        implicit = transfer_syntax_uid == IMPLICIT_VR_LE

        def write(stream: BinaryIO) -> None:
            """The re-encoded file."""
            dcmwrite(stream, ds, implicit_vr=implicit, little_endian=target_little, force_encoding=True)

        # The copy is sent from, and may be all the destination gets: it is
        # fsynced before the rename and the rename made durable, as every
        # file the gateway writes (gateway.durable).
        replace_durably(os.path.abspath(dst_path), through_file(write), ops=ops, flush=flush)
    except TranscodeError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise TranscodeError(f"cannot re-encode {src_path} as {transfer_syntax_uid}: {e}") from e
