"""Tests for :mod:`gateway.folder`: safe paths and atomic writes (HARDENING D06)."""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import stat
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from gateway.folder import FolderWriter, UnsafePath
from gateway.queue.interfaces import InstanceRecord
from tests.unit.test_spool import RecordingFileOps

DEFAULT = "{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"


def record(path: str = "/nonexistent", **fields: str) -> InstanceRecord:
    """An instance record with good UIDs, overridden by ``fields``."""
    base = InstanceRecord(
        instance_id="i1",
        path=path,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid="1.2.3.4.5",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        size=4,
        sha256="00",
        received_at=0.0,
        correlation_id="c1",
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.4",
        patient_id="PAT1",
        accession_number="ACC1",
        modality="CT",
        calling_ae_title="CT01",
    )
    return dataclasses.replace(base, **fields)


def all_files(root: str) -> set[str]:
    """Every file below ``root``, relative to it."""
    found = set()
    for directory, _, names in os.walk(root):
        for name in names:
            found.add(os.path.relpath(os.path.join(directory, name), root))
    return found


class FolderWriterTests(SynchronousTestCase):
    """Path building, validation and writing."""

    def setUp(self) -> None:
        self.base = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.base, True)
        self.root = os.path.join(self.base, "archive")
        os.mkdir(self.root)
        self.src = os.path.join(self.base, "src.dcm")
        with open(self.src, "wb") as f:
            f.write(b"DICM-bytes")

    def test_default_pattern_builds_study_series_instance_path(self) -> None:
        """The default pattern gives <root>/<study>/<series>/<sop>.dcm."""
        writer = FolderWriter(self.root, DEFAULT)
        self.assertEqual(writer.path_for(record()), os.path.join(self.root, "1.2.3", "1.2.3.4", "1.2.3.4.5.dcm"))

    def test_write_copies_the_bytes_and_leaves_no_temporary_file(self) -> None:
        """write() puts the source bytes at the path and nothing else in the folder."""
        writer = FolderWriter(self.root, DEFAULT)
        path = writer.write(self.src, record())
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"DICM-bytes")
        self.assertEqual(all_files(self.root), {os.path.join("1.2.3", "1.2.3.4", "1.2.3.4.5.dcm")})

    def test_redelivery_overwrites_the_same_path(self) -> None:
        """Writing the same instance twice leaves one file with the latest bytes."""
        writer = FolderWriter(self.root, DEFAULT)
        writer.write(self.src, record())
        with open(self.src, "wb") as f:
            f.write(b"second")
        path = writer.write(self.src, record())
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"second")
        self.assertEqual(len(all_files(self.root)), 1)

    def test_crafted_uids_are_refused_and_nothing_is_written(self) -> None:
        """D06 values in any UID field raise UnsafePath and write nothing anywhere."""
        writer = FolderWriter(self.root, DEFAULT)
        crafted = ["../../x", "/etc/cron.d/x", "..\\..\\x", "1.2\x00.3", "1." + "2" * 64, "1.2.abc", "", "1..2", ".", ".."]
        for value in crafted:
            for field in ("sop_instance_uid", "study_instance_uid", "series_instance_uid"):
                rec = record(**{field: value})
                self.assertRaises(UnsafePath, writer.path_for, rec)
                self.assertRaises(UnsafePath, writer.write, self.src, rec)
        self.assertEqual(all_files(self.base), {"src.dcm"})

    def test_uid_of_exactly_64_characters_is_accepted(self) -> None:
        """A 64-character UID is valid (PS3.5 9.1) and a 65-character one is not."""
        writer = FolderWriter(self.root, "{SOPInstanceUID}.dcm")
        uid64 = "1." + "2" * 62
        self.assertTrue(writer.path_for(record(sop_instance_uid=uid64)).endswith(uid64 + ".dcm"))
        self.assertRaises(UnsafePath, writer.path_for, record(sop_instance_uid=uid64 + "3"))

    def test_other_values_have_unsafe_characters_replaced(self) -> None:
        """Path separators, NUL and spaces in Patient ID or AE title become underscores."""
        writer = FolderWriter(self.root, "{PatientID}/{calling_ae_title}/{SOPInstanceUID}.dcm")
        path = writer.path_for(record(patient_id="../../etc/x\x00 y", calling_ae_title="C:\\AE"))
        self.assertEqual(os.path.relpath(path, self.root), os.path.join(".._.._etc_x__y", "C__AE", "1.2.3.4.5.dcm"))

    def test_empty_or_dot_values_are_refused(self) -> None:
        """An empty Accession Number, or one that is '.' or '..', raises UnsafePath."""
        writer = FolderWriter(self.root, "{AccessionNumber}/{SOPInstanceUID}.dcm")
        for value in ("", ".", ".."):
            self.assertRaises(UnsafePath, writer.path_for, record(accession_number=value))

    def test_symlink_inside_root_pointing_outside_is_refused(self) -> None:
        """A study folder that is a symbolic link to outside the root is refused after realpath."""
        outside = os.path.join(self.base, "outside")
        os.mkdir(outside)
        os.symlink(outside, os.path.join(self.root, "1.2.3"))
        writer = FolderWriter(self.root, DEFAULT)
        self.assertRaises(UnsafePath, writer.write, self.src, record())
        self.assertEqual(os.listdir(outside), [])

    def test_study_date_is_read_from_the_file(self) -> None:
        """{StudyDate} comes from the injected header reader, made safe."""
        writer = FolderWriter(self.root, "{StudyDate}/{SOPInstanceUID}.dcm", read_study_date=lambda path: "20240102")
        self.assertEqual(os.path.relpath(writer.path_for(record()), self.root), os.path.join("20240102", "1.2.3.4.5.dcm"))

    def test_bad_patterns_are_refused(self) -> None:
        """Unknown fields, absolute patterns and '..' components raise ValueError at construction."""
        for pattern in ("{PatientName}.dcm", "/abs/{SOPInstanceUID}.dcm", "../{SOPInstanceUID}.dcm"):
            self.assertRaises(ValueError, FolderWriter, self.root, pattern)

    def test_missing_root_is_an_os_error_and_is_not_created(self) -> None:
        """Writing to a root that does not exist raises OSError and does not create it."""
        root = os.path.join(self.base, "unmounted")
        writer = FolderWriter(root, DEFAULT)
        self.assertRaises(OSError, writer.write, self.src, record())
        self.assertRaises(OSError, writer.check_writable)
        self.assertFalse(os.path.exists(root))

    def test_check_writable_passes_on_a_writable_root_and_leaves_nothing(self) -> None:
        """The probe succeeds on a writable folder and removes its probe file."""
        FolderWriter(self.root, DEFAULT).check_writable()
        self.assertEqual(os.listdir(self.root), [])


class FolderCustodyTests(SynchronousTestCase):
    """The folder write goes through :mod:`gateway.durable`'s seam, in its order."""

    def setUp(self) -> None:
        """A root folder and a source file, removed afterwards."""
        self.base = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.base, True)
        self.root = os.path.join(self.base, "archive")
        os.mkdir(self.root)
        self.src = os.path.join(self.base, "src.dcm")
        with open(self.src, "wb") as f:
            f.write(b"DICM-bytes")

    def test_new_folders_then_file_then_rename_then_folder_are_synced(self) -> None:
        """Each new folder's parent is fsynced, then the temporary file, the rename, the target's folder."""
        ops = RecordingFileOps()
        path = FolderWriter(self.root, DEFAULT, ops=ops).write(self.src, record())
        study = os.path.join(self.root, "1.2.3")
        series = os.path.join(study, "1.2.3.4")
        syncs = [(op, p) for op, p in ops.calls if op in ("fsync", "rename")]
        # Two new folders: the entries of study (in root) and series (in study).
        self.assertEqual(syncs[:2], [("fsync", self.root), ("fsync", study)])
        self.assertEqual(syncs[2][0], "fsync")
        self.assertEqual(os.path.dirname(syncs[2][1]), series)
        self.assertEqual(syncs[3:], [("rename", path), ("fsync", series)])
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

    def test_failed_rename_leaves_nothing(self) -> None:
        """EIO on the rename: no target, no temporary file."""
        ops = RecordingFileOps(fail={"rename": (1, errno.EIO)})
        writer = FolderWriter(self.root, DEFAULT, ops=ops)
        self.assertRaises(OSError, writer.write, self.src, record())
        self.assertEqual(all_files(self.root), set())
