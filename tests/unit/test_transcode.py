"""Tests for :mod:`gateway.transcode`: re-encoding between the native transfer syntaxes."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from typing import Any

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from twisted.trial.unittest import SynchronousTestCase

from gateway.associate import read_part10_header
from gateway.sopclasses import EXPLICIT_VR_BE, EXPLICIT_VR_LE, IMPLICIT_VR_LE
from gateway.transcode import TranscodeError, transcode
from tests.unit.test_spool import RecordingFileOps

MR_SMALL = get_testdata_file("MR_small.dcm", download=False)  # Explicit VR LE, 16-bit OW pixels
MR_SMALL_BE = get_testdata_file("MR_small_bigendian.dcm", download=False)
MR_SMALL_IMPLICIT = get_testdata_file("MR_small_implicit.dcm", download=False)
CT_SMALL = get_testdata_file("CT_small.dcm", download=False)
JPEG2K = get_testdata_file("MR_small_jp2klossless.dcm", download=False)

OTHER_VRS = {"OW", "OF", "OL", "OD", "OV", "OB or OW"}


def values(path: str, *, skip_other: bool = False) -> list[tuple[Any, Any]]:
    """Every (tag, value) of the data set, nested ones included, in order."""
    ds = pydicom.dcmread(path)
    return [
        (e.tag, e.value if e.VR != "SQ" else len(e.value))
        for e in ds.iterall()
        if not (skip_other and e.VR in OTHER_VRS)
    ]


class TranscodeTests(SynchronousTestCase):
    """Round trips between Implicit VR LE, Explicit VR LE and Explicit VR BE."""

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def out(self, name: str) -> str:
        return os.path.join(self.tmp, name)

    def test_explicit_le_to_implicit_and_back_keeps_every_value(self) -> None:
        """Explicit LE -> Implicit LE -> Explicit LE keeps every element value and the pixel bytes."""
        transcode(CT_SMALL, self.out("i.dcm"), IMPLICIT_VR_LE)
        transcode(self.out("i.dcm"), self.out("e.dcm"), EXPLICIT_VR_LE)
        self.assertEqual(read_part10_header(self.out("i.dcm")).transfer_syntax_uid, IMPLICIT_VR_LE)
        self.assertEqual(read_part10_header(self.out("e.dcm")).transfer_syntax_uid, EXPLICIT_VR_LE)
        self.assertEqual(values(self.out("i.dcm")), values(CT_SMALL))
        self.assertEqual(values(self.out("e.dcm")), values(CT_SMALL))
        self.assertEqual(pydicom.dcmread(self.out("e.dcm")).PixelData, pydicom.dcmread(CT_SMALL).PixelData)

    def test_implicit_source_is_read_as_implicit(self) -> None:
        """pydicom's Implicit VR MR_small becomes Explicit LE with the same values as its Explicit LE twin."""
        transcode(MR_SMALL_IMPLICIT, self.out("e.dcm"), EXPLICIT_VR_LE)
        ours = pydicom.dcmread(self.out("e.dcm"))
        theirs = pydicom.dcmread(MR_SMALL)
        self.assertEqual(ours.PixelData, theirs.PixelData)
        self.assertEqual(ours["PixelData"].VR, "OW")
        self.assertEqual(ours.Rows, theirs.Rows)

    def test_little_to_big_endian_swaps_pixel_words(self) -> None:
        """Explicit LE -> BE gives the pixel bytes of pydicom's own big endian MR_small, other values equal."""
        transcode(MR_SMALL, self.out("be.dcm"), EXPLICIT_VR_BE)
        ours = pydicom.dcmread(self.out("be.dcm"))
        self.assertEqual(str(ours.file_meta.TransferSyntaxUID), EXPLICIT_VR_BE)
        self.assertEqual(ours.PixelData, pydicom.dcmread(MR_SMALL_BE).PixelData)
        self.assertNotEqual(ours.PixelData, pydicom.dcmread(MR_SMALL).PixelData)
        self.assertEqual(values(self.out("be.dcm"), skip_other=True), values(MR_SMALL, skip_other=True))

    def test_big_endian_round_trip_restores_the_original_bytes(self) -> None:
        """LE -> BE -> LE gives back the original pixel bytes and every value."""
        transcode(MR_SMALL, self.out("be.dcm"), EXPLICIT_VR_BE)
        transcode(self.out("be.dcm"), self.out("le.dcm"), EXPLICIT_VR_LE)
        self.assertEqual(values(self.out("le.dcm")), values(MR_SMALL))

    def test_nested_other_vrs_are_swapped_by_their_word_size(self) -> None:
        """An OF value (4-byte words) inside a sequence item is swapped word by word in big endian."""
        ds = Dataset()
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        ds.SOPInstanceUID = "1.2.3.4"
        item = Dataset()
        item.add_new(0x00640009, "OF", bytes(range(8)))  # Vector Grid Data
        ds.add_new(0x00640002, "SQ", Sequence([item]))  # Deformable Registration Grid Sequence
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = EXPLICIT_VR_LE
        ds.save_as(self.out("src.dcm"), enforce_file_format=True)
        transcode(self.out("src.dcm"), self.out("be.dcm"), EXPLICIT_VR_BE)
        grid = pydicom.dcmread(self.out("be.dcm"))[0x00640002].value[0][0x00640009].value
        self.assertEqual(grid, bytes([3, 2, 1, 0, 7, 6, 5, 4]))

    def test_compressed_source_is_refused(self) -> None:
        """A JPEG 2000 source raises TranscodeError and writes nothing."""
        self.assertRaises(TranscodeError, transcode, JPEG2K, self.out("x.dcm"), EXPLICIT_VR_LE)
        self.assertEqual(os.listdir(self.tmp), [])

    def test_compressed_target_is_refused(self) -> None:
        """A JPEG baseline target raises TranscodeError and writes nothing."""
        self.assertRaises(TranscodeError, transcode, MR_SMALL, self.out("x.dcm"), "1.2.840.10008.1.2.4.50")
        self.assertEqual(os.listdir(self.tmp), [])

    def test_unreadable_source_is_refused(self) -> None:
        """A file that is not DICOM raises TranscodeError."""
        with open(self.out("junk"), "wb") as f:
            f.write(b"not dicom at all")
        self.assertRaises(TranscodeError, transcode, self.out("junk"), self.out("x.dcm"), EXPLICIT_VR_LE)
        self.assertFalse(os.path.exists(self.out("x.dcm")))


class TranscodeCustodyTests(SynchronousTestCase):
    """The transcoded copy is made durable: fsync of the file before the rename, of the folder after."""

    def setUp(self) -> None:
        """A fresh folder, removed afterwards."""
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def test_file_fsynced_before_rename_and_folder_fsynced_after(self) -> None:
        """The system calls run in the spool's order: fsync(temp), rename, fsync(folder).

        Before issue 12 the copy was renamed into place with no fsync at all:
        a power cut after the send could leave an empty or missing file.
        """
        ops = RecordingFileOps()
        dst = os.path.join(self.tmp, "t.dcm")
        transcode(CT_SMALL, dst, IMPLICIT_VR_LE, ops=ops)
        calls = [(op, path) for op, path in ops.calls if op in ("fsync", "rename")]
        self.assertEqual(len(calls), 3, ops.calls)
        self.assertEqual(calls[0][0], "fsync")
        self.assertEqual(os.path.dirname(calls[0][1]), self.tmp)
        self.assertNotEqual(calls[0][1], dst)
        self.assertEqual(calls[1:], [("rename", dst), ("fsync", self.tmp)])
        self.assertEqual(read_part10_header(dst).transfer_syntax_uid, IMPLICIT_VR_LE)
        self.assertEqual(os.listdir(self.tmp), ["t.dcm"])

    def test_failed_fsync_leaves_no_file(self) -> None:
        """EIO on the file's fsync: nothing at the target, no temporary file left."""
        ops = RecordingFileOps(fail={"fsync": (1, errno.EIO)})
        dst = os.path.join(self.tmp, "t.dcm")
        error = self.assertRaises(OSError, transcode, CT_SMALL, dst, IMPLICIT_VR_LE, ops=ops)
        self.assertEqual(error.errno, errno.EIO)
        self.assertEqual(os.listdir(self.tmp), [])
