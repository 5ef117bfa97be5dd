"""Tests for :mod:`gateway.durable`: the directory fsync and the durable-replace order.

The system calls are real (files in a temporary folder) and recorded by a
:class:`~tests.unit.test_spool.RecordingFileOps`, which also injects
``OSError`` at a chosen call, so both the order of the calls and what is
left on disk after a failure are checked.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from gateway.durable import (
    DEFAULT_FLUSH,
    SYSTEM,
    FileOps,
    FlushPolicy,
    create_durably,
    fsync_dir,
    rename_durably,
    replace_durably,
    through_file,
    write_all,
    write_synced,
)
from tests.unit.test_spool import RecordingFileOps


class _ShortWrites(FileOps):
    """Writes one byte fewer than asked (a disk filling up)."""

    def write(self, fd: int, data: memoryview | bytes) -> int:
        """Write all but the last byte."""
        return super().write(fd, bytes(data)[:-1])


class DurableTests(SynchronousTestCase):
    """``fsync_dir``, ``rename_durably``, ``replace_durably`` and ``write_all``."""

    def setUp(self) -> None:
        """A fresh folder, removed afterwards."""
        self.folder = tempfile.mkdtemp(prefix="gw-durable-")
        self.addCleanup(shutil.rmtree, self.folder, True)
        self.target = os.path.join(self.folder, "file.dcm")

    def _write(self, path: str, data: bytes) -> None:
        """Create a file with ``data``."""
        with open(path, "wb") as stream:
            stream.write(data)

    def _read(self, path: str) -> bytes:
        """A file's bytes."""
        with open(path, "rb") as stream:
            return stream.read()

    def test_fsync_dir_opens_syncs_and_closes_the_directory(self) -> None:
        """The directory itself is opened, fsynced and closed."""
        ops = RecordingFileOps()
        fsync_dir(self.folder, ops)
        self.assertEqual(ops.calls, [("open", self.folder), ("fsync", self.folder), ("close", self.folder)])

    def test_fsync_dir_closes_when_the_fsync_fails(self) -> None:
        """EIO on the fsync is raised, and the descriptor is closed all the same."""
        ops = RecordingFileOps(fail={"fsync": (1, errno.EIO)})
        error = self.assertRaises(OSError, fsync_dir, self.folder, ops)
        self.assertEqual(error.errno, errno.EIO)
        self.assertEqual([op for op, _ in ops.calls], ["open", "fsync", "close"])

    def test_fsync_dir_refuses_a_file(self) -> None:
        """A path that is not a directory is an error (O_DIRECTORY), not a silent file fsync."""
        self._write(self.target, b"x")
        self.assertRaises(NotADirectoryError, fsync_dir, self.target)

    def test_rename_durably_syncs_the_new_entrys_directory_after_the_rename(self) -> None:
        """The file moves, then the destination's folder is fsynced."""
        os.mkdir(os.path.join(self.folder, "elsewhere"))
        destination = os.path.join(self.folder, "elsewhere", "moved.dcm")
        self._write(self.target, b"data")
        ops = RecordingFileOps()
        rename_durably(self.target, destination, ops)
        self.assertEqual(
            [call for call in ops.calls if call[0] != "close"],
            [("rename", destination), ("open", os.path.dirname(destination)), ("fsync", os.path.dirname(destination))],
        )
        self.assertEqual(self._read(destination), b"data")
        self.assertFalse(os.path.exists(self.target))

    def test_replace_durably_order_contents_and_mode(self) -> None:
        """Create the temporary file, write, fsync, close, rename over the target, fsync the folder; mode 0600."""
        ops = RecordingFileOps()
        temp = os.path.join(self.folder, "file.part")
        replace_durably(self.target, lambda fd: write_all(fd, b"contents", ops), ops=ops, temp=temp)
        self.assertEqual(
            ops.calls,
            [
                ("open", temp),
                ("write", temp),
                ("fsync", temp),
                ("close", temp),
                ("rename", self.target),
                ("open", self.folder),
                ("fsync", self.folder),
                ("close", self.folder),
            ],
        )
        self.assertEqual(self._read(self.target), b"contents")
        self.assertEqual(stat.S_IMODE(os.stat(self.target).st_mode), 0o600)
        self.assertEqual(os.listdir(self.folder), ["file.dcm"])

    def test_replace_durably_replaces_an_existing_file(self) -> None:
        """An existing target is replaced whole, through a hidden temporary name in its folder."""
        self._write(self.target, b"old")
        ops = RecordingFileOps()
        replace_durably(self.target, lambda fd: write_all(fd, b"new", ops), ops=ops)
        temp = ops.calls[0][1]
        self.assertEqual(os.path.dirname(temp), self.folder)
        self.assertTrue(os.path.basename(temp).startswith(".file.dcm."), temp)
        self.assertEqual(self._read(self.target), b"new")
        self.assertEqual(os.listdir(self.folder), ["file.dcm"])

    def test_replace_durably_failure_before_the_rename_leaves_the_target_and_no_temporary(self) -> None:
        """ENOSPC on the fsync: raised, the temporary file removed, the old target untouched."""
        self._write(self.target, b"old")
        ops = RecordingFileOps(fail={"fsync": (1, errno.ENOSPC)})
        error = self.assertRaises(
            OSError, replace_durably, self.target, lambda fd: write_all(fd, b"new", ops), ops=ops
        )
        self.assertEqual(error.errno, errno.ENOSPC)
        self.assertEqual(self._read(self.target), b"old")
        self.assertEqual(os.listdir(self.folder), ["file.dcm"])
        self.assertNotIn("rename", [op for op, _ in ops.calls])

    def test_replace_durably_failure_in_fill_removes_the_temporary(self) -> None:
        """An exception from the caller's writes closes and removes the temporary file and is raised."""

        def fill(fd: int) -> None:
            raise ValueError("cannot encode")

        ops = RecordingFileOps()
        self.assertRaises(ValueError, replace_durably, self.target, fill, ops=ops)
        self.assertEqual(os.listdir(self.folder), [])
        self.assertEqual([op for op, _ in ops.calls], ["open", "close", "unlink"])

    def test_replace_durably_refuses_an_existing_temporary(self) -> None:
        """The temporary file is created exclusively: one already there (or a planted link) is an error, left alone."""
        temp = os.path.join(self.folder, "planted")
        os.symlink(os.path.join(self.folder, "victim"), temp)
        self.assertRaises(
            FileExistsError, replace_durably, self.target, lambda fd: write_all(fd, b"x"), temp=temp
        )
        self.assertFalse(os.path.exists(os.path.join(self.folder, "victim")))
        self.assertTrue(os.path.islink(temp))

    def test_write_all_short_write_is_eio(self) -> None:
        """A write that takes fewer bytes than given raises EIO."""
        fd = os.open(self.target, os.O_CREAT | os.O_WRONLY, 0o600)
        self.addCleanup(os.close, fd)
        error = self.assertRaises(OSError, write_all, fd, b"abc", _ShortWrites())
        self.assertEqual(error.errno, errno.EIO)
        write_all(fd, b"abc", SYSTEM)


class CreateDurablyTests(SynchronousTestCase):
    """``create_durably``, ``write_synced``, ``through_file`` and the flush policy parameter."""

    def setUp(self) -> None:
        """A fresh folder, removed afterwards."""
        self.folder = tempfile.mkdtemp(prefix="gw-durable-")
        self.addCleanup(shutil.rmtree, self.folder, True)
        self.target = os.path.join(self.folder, "token")

    def test_create_syncs_the_file_then_the_folder(self) -> None:
        """Created in place (no rename), file fsynced, then its folder, mode exactly 0600."""
        ops = RecordingFileOps()
        old = os.umask(0o277)
        try:
            create_durably(self.target, b"secret\n", ops=ops)
        finally:
            os.umask(old)
        self.assertEqual(
            [call for call in ops.calls if call[0] in ("open", "fsync", "rename")],
            [("open", self.target), ("fsync", self.target), ("open", self.folder), ("fsync", self.folder)],
        )
        self.assertEqual(stat.S_IMODE(os.stat(self.target).st_mode), 0o600)
        with open(self.target, "rb") as stream:
            self.assertEqual(stream.read(), b"secret\n")

    def test_create_never_overwrites(self) -> None:
        """An existing file (a racing creator's) is FileExistsError and stays as it was."""
        with open(self.target, "wb") as stream:
            stream.write(b"first")
        self.assertRaises(FileExistsError, create_durably, self.target, b"second")
        with open(self.target, "rb") as stream:
            self.assertEqual(stream.read(), b"first")

    def test_write_synced_does_not_sync_the_folder(self) -> None:
        """The probe's write: the file fsynced, the folder not opened."""
        ops = RecordingFileOps()
        write_synced(self.target, b"ok\n", ops=ops)
        self.assertEqual([op for op, _ in ops.calls], ["open", "write", "fsync", "close"])

    def test_through_file_writes_a_stream_in_the_durable_order(self) -> None:
        """A writer of a file object fills the temporary file; the order is the default policy's."""
        ops = RecordingFileOps()
        replace_durably(
            self.target,
            through_file(lambda stream: stream.write(b"abc") and None),
            ops=ops,
            flush=FlushPolicy.SYNC_FILE_RENAME_SYNC_DIR,
        )
        self.assertEqual([op for op, _ in ops.calls if op != "close"], ["open", "fsync", "rename", "open", "fsync"])
        with open(self.target, "rb") as stream:
            self.assertEqual(stream.read(), b"abc")

    def test_default_policy_is_todays_order(self) -> None:
        """The default flush policy is fsync(file), rename, fsync(directory)."""
        self.assertIs(DEFAULT_FLUSH, FlushPolicy.SYNC_FILE_RENAME_SYNC_DIR)
