"""Tests that what the gateway writes is owner-only whatever the umask (HARDENING H08).

Each test runs under umask 022, the common default that made the spool
root, the morphed copies, the journal and the logs world-readable.
"""

from __future__ import annotations

import os
import shutil
import stat

from pydicom.data import get_testdata_file
from twisted.trial.unittest import SynchronousTestCase

from gateway.private import make_private_dirs, open_private


def mode(path: str) -> int:
    """The permission bits of ``path``."""
    return stat.S_IMODE(os.stat(path).st_mode)


class UmaskTestCase(SynchronousTestCase):
    """Runs each test with umask 022 in a fresh folder."""

    def setUp(self) -> None:
        previous = os.umask(0o022)
        self.addCleanup(os.umask, previous)
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)


class HelperTests(UmaskTestCase):
    """make_private_dirs and open_private."""

    def test_created_folders_and_parents_are_0700(self) -> None:
        """Every folder make_private_dirs creates, parents included, is 0700; the existing parent is left alone."""
        make_private_dirs(os.path.join(self.dir, "a", "b", "c"))
        self.assertEqual(mode(self.dir), 0o755)
        for path in ("a", "a/b", "a/b/c"):
            self.assertEqual(mode(os.path.join(self.dir, path)), 0o700, path)

    def test_an_existing_open_folder_is_tightened(self) -> None:
        """An existing 0755 folder loses group and other access; with tighten_existing=False it is kept."""
        kept, tightened = os.path.join(self.dir, "kept"), os.path.join(self.dir, "tightened")
        os.mkdir(kept)
        os.mkdir(tightened)
        make_private_dirs(tightened)
        make_private_dirs(kept, tighten_existing=False)
        self.assertEqual((mode(tightened), mode(kept)), (0o700, 0o755))

    def test_open_private_creates_0600_and_tightens_an_existing_file(self) -> None:
        """A new file is 0600; an existing 0644 file opened through it becomes 0600."""
        new, old = os.path.join(self.dir, "new"), os.path.join(self.dir, "old")
        with open(old, "w"):
            pass
        self.assertEqual(mode(old), 0o644)
        for path in (new, old):
            os.close(open_private(path, os.O_WRONLY))
            self.assertEqual(mode(path), 0o600, path)


class StoreTests(UmaskTestCase):
    """The spool tree, the journal and its WAL files, the logs, morphed copies and folder exports."""

    def test_spool_root_and_folders_are_0700(self) -> None:
        """A spool root the service made 0755 becomes 0700, with incoming/ and instances/; instance files are 0600."""
        from gateway.blocking import SynchronousRunner
        from gateway.spool import Spool

        root = os.path.join(self.dir, "spool")
        os.makedirs(root)  # as GatewayService does, with the umask
        spool = Spool(root, SynchronousRunner(), implementation_class_uid="1.2.3", implementation_version_name="T",
                      max_instance_size=1 << 20)
        spool.recover()
        for path in (root, spool.incoming_dir, spool.instances_dir):
            self.assertEqual(mode(path), 0o700, path)

    def test_journal_and_its_wal_and_shm_are_0600(self) -> None:
        """queue.sqlite, queue.sqlite-wal and queue.sqlite-shm are 0600; an older 0644 journal is tightened at open."""
        from gateway.queue.sqlite import SqliteQueueStore

        path = os.path.join(self.dir, "queue.sqlite")
        store = SqliteQueueStore(path)
        store.set_paused("pacs", True)
        for suffix in ("", "-wal", "-shm"):
            self.assertTrue(os.path.exists(path + suffix), suffix)
            self.assertEqual(mode(path + suffix), 0o600, suffix)
        store.close()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.chmod(path + suffix, 0o644)
        SqliteQueueStore(path).close()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                self.assertEqual(mode(path + suffix), 0o600, suffix)

    def test_log_files_and_rotated_ones_are_0600(self) -> None:
        """A log file, its rotated copies and the folder created for them are owner-only."""
        from gateway.logs import RotatingFile

        path = os.path.join(self.dir, "logs", "gateway.log")
        log = RotatingFile(path, max_bytes=100, keep=2)
        for n in range(20):
            log.write(f"line {n} with some text\n")
        log.close()
        self.assertEqual(mode(os.path.dirname(path)), 0o700)
        for name in os.listdir(os.path.dirname(path)):
            self.assertEqual(mode(os.path.join(os.path.dirname(path), name)), 0o600, name)
        self.assertEqual(len(os.listdir(os.path.dirname(path))), 3)

    def test_morphed_copy_is_0600(self) -> None:
        """write_morphed's copy (and the morphed/ folder make_copy creates) are owner-only."""
        from gateway.splice import write_morphed
        from tests.unit.morph.helpers import CONTEXT, plan_of

        src = os.path.join(self.dir, "src.dcm")
        shutil.copy(get_testdata_file("CT_small.dcm", download=False), src)
        dst = os.path.join(self.dir, "copy.dcm")
        write_morphed(src, dst, plan_of("- delete: [PatientName]\n"), CONTEXT)
        self.assertEqual(mode(dst), 0o600)

    def test_folder_export_is_0700_and_0600(self) -> None:
        """A folder destination creates its study and series folders 0700 and files 0600 (its root is left as it is)."""
        from gateway.folder import FolderWriter
        from tests.unit.test_folder import record

        root = os.path.join(self.dir, "out")
        os.mkdir(root)
        src = os.path.join(self.dir, "src.dcm")
        shutil.copy(get_testdata_file("CT_small.dcm", download=False), src)
        path = FolderWriter(root, "{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm").write(src, record())
        self.assertEqual(mode(root), 0o755)
        self.assertEqual(mode(path), 0o600)
        self.assertEqual(mode(os.path.dirname(path)), 0o700)
        self.assertEqual(mode(os.path.dirname(os.path.dirname(path))), 0o700)
