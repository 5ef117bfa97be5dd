"""Write a Part 10 file whose pixel data arrives frame by frame (issue 17).

The elements before the pixel data are written by pydicom (Explicit VR
Little Endian: every target syntax encodes its data set that way, PS3.5
A.2, A.4), then the pixel data element is written as the frames come:

- native (PS3.5 A.2, 8.1.1): ``(7FE0,0010) OB|OW`` with its length known in
  advance (frames x frame size), then each frame's bytes;
- encapsulated (PS3.5 A.4): ``(7FE0,0010) OB`` of undefined length, a Basic
  Offset Table item, one fragment per frame (an odd-length fragment padded
  to even length with a zero byte, PS3.5 A.4), and the Sequence Delimitation
  Item. The Basic Offset Table is reserved as the first item (4 bytes per
  announced frame) and filled in once every frame is written (the file is
  seekable). Fragments over 4 GiB cannot be addressed by it (an Extended
  Offset Table would be needed, PS3.3 C.7.6.3.1.8): refused.

Then the elements after the pixel data, if any.
"""

from __future__ import annotations

import struct
from typing import BinaryIO, Iterable

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import dcmwrite, write_dataset

__all__ = ["write_part10"]

_ITEM = struct.pack("<HH", 0xFFFE, 0xE000)
_SEQUENCE_DELIMITER = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
_UNDEFINED = 0xFFFFFFFF


def _split(dataset: Dataset) -> tuple[Dataset, Dataset]:
    """The elements before and after the pixel data (group 7FE0 element 0010)."""
    before, after = Dataset(), Dataset()
    for element in dataset:
        (after if element.tag > 0x7FE00010 else before).add(element)
    return before, after


def write_part10(
    stream: BinaryIO,
    dataset: Dataset,
    file_meta: FileMetaDataset,
    frames: Iterable[bytes],
    *,
    encapsulated: bool,
    native_length: int = 0,
    native_vr: str = "OW",
    frame_count: int = 1,
    preamble: bytes | None = None,
) -> int:
    """Write a Part 10 file to ``stream``: ``dataset`` with a pixel data element made of ``frames``.

    :param stream: a seekable binary file open for writing, at its start.
    :param dataset: the data set without pixel data.
    :param file_meta: its file meta (the target Transfer Syntax UID set).
    :param frames: each frame's bytes (encoded, or native), in order.
    :param encapsulated: an encapsulated syntax (fragments) or native.
    :param native_length: native only: the pixel data length (the sum of the frames' lengths, even).
    :param native_vr: native only: ``OB`` (8 bits allocated) or ``OW``.
    :param frame_count: encapsulated only: the number of frames (Number of Frames).
    :param preamble: the 128-byte preamble to keep (zeros if ``None``).
    :returns: the number of pixel data bytes written (fragments or native).
    :raises ValueError: the native frames do not add up to ``native_length``, the
        frames are not ``frame_count``, or the fragments pass 4 GiB.
    """
    before, after = _split(dataset)
    before.file_meta = file_meta
    before.preamble = preamble or b"\0" * 128
    dcmwrite(stream, before, enforce_file_format=True, little_endian=True, implicit_vr=False)
    written = 0
    if encapsulated:
        stream.write(struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, _UNDEFINED))
        # The Basic Offset Table is reserved for the announced frame count and
        # filled in once the fragments are written (PS3.5 A.4, Table A.4-1).
        table_at = stream.tell()
        stream.write(_ITEM + struct.pack("<L", 4 * frame_count) + b"\0" * (4 * frame_count))
        first_fragment = stream.tell()
        offsets: list[int] = []
        for data in frames:
            offsets.append(stream.tell() - first_fragment)
            pad = len(data) % 2
            stream.write(_ITEM + struct.pack("<L", len(data) + pad))
            stream.write(data)
            if pad:
                stream.write(b"\0")
            written += len(data) + pad
        end = stream.tell()
        if len(offsets) != frame_count:
            raise ValueError(f"{len(offsets)} frames written, {frame_count} announced")
        if offsets and offsets[-1] > 0xFFFFFFFF:
            raise ValueError("encapsulated pixel data over 4 GiB: the Basic Offset Table cannot address it")
        stream.seek(table_at + 8)
        stream.write(struct.pack(f"<{frame_count}L", *offsets))
        stream.seek(end)
        stream.write(_SEQUENCE_DELIMITER)
    else:
        stream.write(struct.pack("<HH2sHL", 0x7FE0, 0x0010, native_vr.encode("ascii"), 0, native_length))
        for data in frames:
            stream.write(data)
            written += len(data)
        if written % 2:
            stream.write(b"\0")
            written += 1
        if written != native_length:
            raise ValueError(f"native pixel data of {written} bytes, {native_length} announced")
    if len(after):
        fp = DicomFileLike(stream)
        fp.is_little_endian = True
        fp.is_implicit_VR = False
        write_dataset(fp, after)
    return written

