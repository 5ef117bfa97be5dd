"""Tests for the splice writer: header rewritten, pixel data and tail copied verbatim."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tempfile
import tracemalloc

import pydicom
from pydicom.data import get_testdata_file
from twisted.trial.unittest import SynchronousTestCase

from gateway.morph import MorphError
from gateway.splice import write_morphed
from gateway.parse import element_end, read_header
from tests.unit.morph.helpers import CONTEXT, plan_of
from tests.unit.test_spool import RecordingFileOps

_PLAN = "- set: {InstitutionName: 'Example {calling_ae_title}'}\n- delete: [PatientName]\n- uid_remap: {salt: s}\n"


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _tail(path: str) -> bytes:
    """The bytes from the pixel data tag to the end of the file."""
    offset = read_header(path).pixel_offset
    assert offset is not None
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read()


class SpliceTests(SynchronousTestCase):
    """Output validity, verbatim pixel data, untouched source, every encoding."""

    def setUp(self) -> None:
        self.folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.folder)

    def check_file(self, name: str) -> None:
        src = os.path.join(self.folder, "src-" + name)
        shutil.copy(get_testdata_file(name, download=False), src)
        before = _digest(src)
        dst = os.path.join(self.folder, name)
        changes = write_morphed(src, dst, plan_of(_PLAN), CONTEXT)
        self.assertEqual(_digest(src), before)
        ds = pydicom.dcmread(dst)
        original = pydicom.dcmread(src)
        self.assertEqual(ds.InstitutionName, "Example CT01")
        self.assertNotIn("PatientName", ds)
        self.assertEqual(ds.file_meta.MediaStorageSOPInstanceUID, ds.SOPInstanceUID)
        self.assertNotEqual(ds.SOPInstanceUID, original.SOPInstanceUID)
        self.assertEqual(ds.file_meta.TransferSyntaxUID, original.file_meta.TransferSyntaxUID)
        self.assertEqual(_tail(dst), _tail(src))
        self.assertEqual(ds.PixelData, original.PixelData)
        self.assertTrue(any(c.path == "InstitutionName" for c in changes))
        self.assertFalse(os.path.exists(dst + ".tmp"))

    def test_explicit_little_endian(self) -> None:
        """Explicit VR LE (with trailing padding after the pixel data) splices verbatim."""
        self.check_file("CT_small.dcm")

    def test_implicit_little_endian(self) -> None:
        """Implicit VR LE splices verbatim."""
        self.check_file("MR_small_implicit.dcm")

    def test_explicit_big_endian(self) -> None:
        """Explicit VR BE splices verbatim."""
        self.check_file("MR_small_bigendian.dcm")

    def test_encapsulated_jpeg(self) -> None:
        """Encapsulated JPEG fragments are copied verbatim."""
        self.check_file("JPEG-lossy.dcm")

    def test_encapsulated_rle(self) -> None:
        """Encapsulated RLE fragments are copied verbatim."""
        self.check_file("SC_rgb_rle.dcm")

    def test_deflated_is_refused(self) -> None:
        """A deflated data set is a MorphError and leaves no output."""
        dst = os.path.join(self.folder, "out.dcm")
        with self.assertRaises(MorphError):
            write_morphed(get_testdata_file("image_dfl.dcm", download=False), dst, plan_of(_PLAN), CONTEXT)
        self.assertFalse(os.path.exists(dst) or os.path.exists(dst + ".tmp"))

    def test_runtime_failure_leaves_no_output(self) -> None:
        """A value invalid at run time raises MorphError and writes nothing."""
        dst = os.path.join(self.folder, "out.dcm")
        with self.assertRaises(MorphError):
            write_morphed(get_testdata_file("CT_small.dcm", download=False), dst, plan_of("- set: {StudyDate: '{PatientID}'}\n"), CONTEXT)
        self.assertEqual(os.listdir(self.folder), [])

    def _with_trailer(self) -> tuple[str, int]:
        """CT_small cut after its pixel data, then a private group 7FE1 and (FFFA,FFFA) appended."""
        src = get_testdata_file("CT_small.dcm", download=False)
        header = read_header(src)
        with open(src, "rb") as f:
            pixel_end = element_end(f, header.pixel_offset or 0, implicit=False, little=True).end
            f.seek(0)
            body = f.read(pixel_end)
        trailer = struct.pack("<HH2sH", 0x7FE1, 0x0010, b"LO", 4) + b"ACME"
        trailer += struct.pack("<HH2sHI", 0x7FE1, 0x1001, b"OB", 0, 4) + b"ABCD"
        # (FFFA,FFFA) SQ of undefined length: one empty item of undefined length, then delimiters.
        trailer += struct.pack("<HH2sHI", 0xFFFA, 0xFFFA, b"SQ", 0, 0xFFFFFFFF)
        trailer += struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
        trailer += struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
        path = os.path.join(self.folder, "trailer.dcm")
        with open(path, "wb") as f:
            f.write(body + trailer)
        return path, pixel_end

    def test_deidentify_removes_signature_and_trailing_private(self) -> None:
        """The tail walk drops (FFFA,FFFA) and a trailing private group; pixel data stays verbatim."""
        src, pixel_end = self._with_trailer()
        self.assertIn(0xFFFAFFFA, pydicom.dcmread(src))
        dst = os.path.join(self.folder, "out.dcm")
        write_morphed(src, dst, plan_of("- deidentify: basic\n"), CONTEXT)
        ds = pydicom.dcmread(dst)
        self.assertNotIn(0xFFFAFFFA, ds)
        self.assertNotIn(0x7FE11001, ds)
        with open(src, "rb") as f:
            f.seek(read_header(src).pixel_offset or 0)
            pixel_bytes = f.read(pixel_end - f.tell())
        self.assertEqual(_tail(dst), pixel_bytes)

    def test_plan_not_touching_tail_keeps_trailer(self) -> None:
        """Without a tail action, the trailer is copied byte for byte."""
        src, _ = self._with_trailer()
        dst = os.path.join(self.folder, "out.dcm")
        write_morphed(src, dst, plan_of(_PLAN), CONTEXT)
        self.assertEqual(_tail(dst), _tail(src))

    def test_large_file_morphs_in_bounded_memory(self) -> None:
        """A 200 MB instance morphs with well under 32 MB of Python allocations."""
        src = get_testdata_file("CT_small.dcm", download=False)
        header = read_header(src)
        big = os.path.join(self.folder, "big.dcm")
        size = 200 * 1024 * 1024
        with open(src, "rb") as f, open(big, "wb") as out:
            out.write(f.read(header.pixel_offset))
            out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, size))
            chunk = bytes(range(256)) * 4096
            for _ in range(size // len(chunk)):
                out.write(chunk)
        dst = os.path.join(self.folder, "big-out.dcm")
        tracemalloc.start()
        try:
            write_morphed(big, dst, plan_of(_PLAN), CONTEXT)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertLess(peak, 32 * 1024 * 1024)
        self.assertEqual(os.path.getsize(dst) - (read_header(dst).pixel_offset or 0), 12 + size)
        with open(big, "rb") as a, open(dst, "rb") as b:
            a.seek(read_header(big).pixel_offset or 0)
            b.seek(read_header(dst).pixel_offset or 0)
            while True:
                x, y = a.read(1 << 22), b.read(1 << 22)
                self.assertEqual(x, y)
                if not x:
                    break


class SpliceCustodyTests(SynchronousTestCase):
    """The morphed copy is written through :mod:`gateway.durable`: a unique temporary name, fsync, rename, fsync."""

    def setUp(self) -> None:
        """A fresh folder."""
        self.folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.folder)

    def test_copy_is_fsynced_renamed_and_its_folder_fsynced(self) -> None:
        """The temporary file is not ``<target>.tmp`` opened with truncate, but an exclusive unique name."""
        ops = RecordingFileOps()
        dst = os.path.join(self.folder, "out.dcm")
        # A stale ``.tmp`` of a crashed run (or a planted one) is neither reused nor followed.
        with open(dst + ".tmp", "wb") as f:
            f.write(b"stale")
        write_morphed(get_testdata_file("CT_small.dcm", download=False), dst, plan_of(_PLAN), CONTEXT, ops=ops)
        opened = ops.calls[0]
        self.assertEqual(opened[0], "open")
        self.assertNotEqual(opened[1], dst + ".tmp")
        self.assertEqual(
            [(op, p) for op, p in ops.calls if op in ("fsync", "rename")],
            [("fsync", opened[1]), ("rename", dst), ("fsync", self.folder)],
        )
        with open(dst + ".tmp", "rb") as f:
            self.assertEqual(f.read(), b"stale")
        self.assertEqual(pydicom.dcmread(dst).InstitutionName, "Example CT01")
