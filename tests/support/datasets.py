"""Build DICOM test instances with pydicom, and read back data-set bytes.

Two sources of data:

- synthetic CT instances (:func:`ct_dataset`, :func:`write_instance`,
  :func:`write_multiframe`) in the three uncompressed transfer syntaxes, of
  a chosen size, with fresh UIDs;
- pydicom's bundled files (:data:`BUNDLED`, :func:`bundled`) where real
  encoded pixel data is needed (RLE, JPEG baseline).

:func:`dataset_bytes` / :func:`dataset_digest` return what follows a Part 10
file's meta information: the spool contract says those bytes are exactly the
data set the sender put on the wire.
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
from collections.abc import Iterator
from pathlib import Path

from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    PYDICOM_IMPLEMENTATION_UID,
    RLELossless,
    generate_uid,
)

__all__ = [
    "BUNDLED",
    "UNCOMPRESSED",
    "bundled",
    "ct_dataset",
    "dataset_bytes",
    "dataset_digest",
    "dataset_offset",
    "write_instance",
    "write_multiframe",
]

#: The three uncompressed transfer syntaxes every sender can use.
UNCOMPRESSED: tuple[UID, ...] = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)

#: A pydicom bundled file for each transfer syntax the interop tests send.
BUNDLED: dict[UID, str] = {
    ImplicitVRLittleEndian: "MR_small_implicit.dcm",
    ExplicitVRLittleEndian: "CT_small.dcm",
    ExplicitVRBigEndian: "MR_small_bigendian.dcm",
    RLELossless: "MR_small_RLE.dcm",
    JPEGBaseline8Bit: "SC_rgb_jpeg_dcmtk.dcm",
}

#: VRs whose explicit-VR length field is 4 bytes after 2 reserved bytes (PS3.5 7.1.2).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC",
                       b"UN", b"UR", b"UT", b"UV"})


def bundled(name: str) -> Path:
    """Locate one of pydicom's bundled test files (no download).

    :param name: the file name, e.g. ``"CT_small.dcm"``.
    :returns: its path.
    :raises FileNotFoundError: if pydicom does not ship it.
    """
    path = get_testdata_file(name, download=False)
    if not path:
        raise FileNotFoundError(f"pydicom does not bundle {name}")
    return Path(path)


def _file_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> FileMetaDataset:
    """Build Part 10 file meta information (PS3.10 7.1).

    :param sop_class: Media Storage SOP Class UID.
    :param sop_instance: Media Storage SOP Instance UID.
    :param transfer_syntax: Transfer Syntax UID of the data set.
    :returns: the group 2 elements.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def ct_dataset(
    rows: int = 512,
    columns: int = 512,
    *,
    frames: int = 1,
    sop_instance_uid: str | None = None,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    seed: int = 0,
    pixel_data: bool = True,
) -> Dataset:
    """Build a 16-bit CT Image Storage data set with pseudo-random pixels.

    :param rows: Rows.
    :param columns: Columns.
    :param frames: Number of Frames (omitted when 1).
    :param sop_instance_uid: SOP Instance UID; a fresh one by default.
    :param study_instance_uid: Study Instance UID; fresh by default.
    :param series_instance_uid: Series Instance UID; fresh by default.
    :param seed: seed of the pixel bytes, so content is reproducible.
    :param pixel_data: include Pixel Data (``rows * columns * frames * 2`` bytes).
    :returns: the data set, without file meta.
    """
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_instance_uid or generate_uid()
    ds.StudyDate = "20240101"
    ds.Modality = "CT"
    ds.PatientName = "TEST^INTEROP"
    ds.PatientID = "INTEROP-1"
    ds.StudyInstanceUID = study_instance_uid or generate_uid()
    ds.SeriesInstanceUID = series_instance_uid or generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    if pixel_data:
        ds.PixelData = random.Random(seed).randbytes(rows * columns * frames * 2)
    return ds


def _shape_for(size: int) -> tuple[int, int]:
    """Pick Rows x Columns so 16-bit pixel data is about ``size`` bytes.

    :param size: the target total size in bytes.
    :returns: (rows, columns), both at least 1.
    """
    pixels = max(1, (size - 1024) // 2)
    columns = min(512, pixels)
    rows = max(1, pixels // columns)
    return rows, columns


def write_instance(
    path: str | os.PathLike[str],
    transfer_syntax: str = ExplicitVRLittleEndian,
    size: int = 16 * 1024,
    sop_instance_uid: str | None = None,
    *,
    seed: int = 0,
    **uids: str,
) -> Path:
    """Write one CT instance of about ``size`` bytes as a Part 10 file.

    :param path: the file to write.
    :param transfer_syntax: Implicit VR LE, Explicit VR LE or Explicit VR BE.
    :param size: approximate file size in bytes (at least about 1 KiB).
    :param sop_instance_uid: SOP Instance UID; fresh by default.
    :param seed: seed of the pixel bytes.
    :param uids: ``study_instance_uid`` / ``series_instance_uid`` to share.
    :returns: the path written.
    :raises ValueError: for a compressed transfer syntax.
    """
    if transfer_syntax not in UNCOMPRESSED:
        raise ValueError(f"write_instance writes uncompressed syntaxes only, not {transfer_syntax}")
    rows, columns = _shape_for(size)
    ds = ct_dataset(rows, columns, sop_instance_uid=sop_instance_uid, seed=seed, **uids)
    ds.file_meta = _file_meta(ds.SOPClassUID, ds.SOPInstanceUID, transfer_syntax)
    ts = UID(transfer_syntax)
    if ts == ExplicitVRBigEndian:
        # Native 16-bit words must be byte-swapped for big endian (PS3.5 7.3).
        data = bytearray(ds.PixelData)
        data[0::2], data[1::2] = data[1::2], data[0::2]
        ds.PixelData = bytes(data)
    ds.save_as(
        os.fspath(path),
        implicit_vr=ts.is_implicit_VR,
        little_endian=ts.is_little_endian,
        enforce_file_format=True,
    )
    return Path(path)


def write_multiframe(
    path: str | os.PathLike[str],
    total_bytes: int,
    *,
    transfer_syntax: str = ExplicitVRLittleEndian,
    sop_instance_uid: str | None = None,
    chunk_size: int = 4 * 1024 * 1024,
) -> Path:
    """Write a large multi-frame CT instance without holding its pixels in memory.

    The header is written by pydicom without Pixel Data; the Pixel Data
    element header and value are then appended in chunks (it is the last
    element, so the data set stays in ascending tag order, PS3.5 7.1).

    :param path: the file to write.
    :param total_bytes: approximate file size in bytes.
    :param transfer_syntax: Implicit VR LE or Explicit VR LE.
    :param sop_instance_uid: SOP Instance UID; fresh by default.
    :param chunk_size: bytes generated and written at a time.
    :returns: the path written.
    :raises ValueError: for a syntax other than the two little-endian ones.
    """
    ts = UID(transfer_syntax)
    if ts not in (ImplicitVRLittleEndian, ExplicitVRLittleEndian):
        raise ValueError(f"write_multiframe supports little endian only, not {ts}")
    rows = columns = 512
    frame_bytes = rows * columns * 2
    frames = max(1, total_bytes // frame_bytes)
    ds = ct_dataset(rows, columns, frames=frames, sop_instance_uid=sop_instance_uid,
                    pixel_data=False)
    ds.file_meta = _file_meta(ds.SOPClassUID, ds.SOPInstanceUID, ts)
    ds.save_as(os.fspath(path), implicit_vr=ts.is_implicit_VR, little_endian=True,
               enforce_file_format=True)
    length = frames * frame_bytes
    if ts.is_implicit_VR:
        header = struct.pack("<HHI", 0x7FE0, 0x0010, length)
    else:
        header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length)
    rng = random.Random(1)
    block = rng.randbytes(min(chunk_size, length))
    with open(path, "ab") as out:
        out.write(header)
        remaining = length
        counter = 0
        while remaining:
            # Vary each chunk cheaply so frames are not all identical.
            piece = struct.pack("<Q", counter) + block[8:min(len(block), remaining)]
            piece = piece[:remaining]
            out.write(piece)
            remaining -= len(piece)
            counter += 1
    return Path(path)


def dataset_offset(path: str | os.PathLike[str]) -> int:
    """Find where the data set starts in a Part 10 file (after group 2).

    Walks the file meta elements (always Explicit VR Little Endian, PS3.10
    7.1) rather than trusting (0002,0000), so a file without or with a wrong
    group length still works.

    :param path: a Part 10 file.
    :returns: the byte offset of the first data-set element.
    :raises ValueError: if the file has no ``DICM`` prefix.
    """
    with open(path, "rb") as f:
        head = f.read(132)
        if len(head) < 132 or head[128:132] != b"DICM":
            raise ValueError(f"{path} is not a Part 10 file (no DICM prefix)")
        offset = 132
        while True:
            f.seek(offset)
            tag = f.read(8)
            if len(tag) < 8:
                return offset
            group = struct.unpack("<H", tag[:2])[0]
            if group != 0x0002:
                return offset
            vr = tag[4:6]
            if vr in _LONG_VRS:
                extra = f.read(4)
                length = struct.unpack("<I", extra)[0]
                offset += 12 + length
            else:
                length = struct.unpack("<H", tag[6:8])[0]
                offset += 8 + length


def dataset_bytes(path: str | os.PathLike[str]) -> bytes:
    """Read the data set bytes of a Part 10 file (everything after the file meta).

    :param path: a Part 10 file.
    :returns: the data set bytes.
    """
    offset = dataset_offset(path)
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read()


def _chunks(path: str | os.PathLike[str], offset: int, size: int) -> Iterator[bytes]:
    """Yield a file's bytes from ``offset`` in chunks.

    :param path: the file.
    :param offset: where to start.
    :param size: chunk size.
    :returns: an iterator of chunks.
    """
    with open(path, "rb") as f:
        f.seek(offset)
        while chunk := f.read(size):
            yield chunk


def dataset_digest(path: str | os.PathLike[str]) -> str:
    """Hash the data set bytes of a Part 10 file without loading it whole.

    :param path: a Part 10 file.
    :returns: the SHA-256 hex digest of the data set bytes.
    """
    digest = hashlib.sha256()
    for chunk in _chunks(path, dataset_offset(path), 1 << 20):
        digest.update(chunk)
    return digest.hexdigest()
