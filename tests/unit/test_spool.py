"""Tests for :mod:`gateway.spool`, the durable spool."""

from __future__ import annotations

import errno
import os
import stat
import struct
from unittest import mock

import pydicom
from pydicom.data import get_testdata_file
from twisted.trial.unittest import SynchronousTestCase

from gateway.blocking import SynchronousRunner
from gateway.dimse.status import Status
from gateway.meta import encode_file_meta
from gateway.spool import LANE_BATCH, FileOps, InstanceMeta, Spool, SpooledInstance, SpoolError, SpoolFailure, StorageFault

EXPLICIT = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
INSTANCE_UID = "1.2.826.0.1.3680043.8.498.1"
IMPL_UID = "1.2.826.0.1.3680043.10.1234.1"


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    """An Explicit VR Little Endian element with a short or long length form."""
    if vr in (b"OB", b"OW", b"UN", b"UT", b"SQ"):
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def _uid(text: str) -> bytes:
    """A UI value padded to even length with NUL."""
    raw = text.encode()
    return raw + b"\x00" if len(raw) % 2 else raw


def make_dataset(sop_class: str | None = SC_STORAGE, sop_instance: str | None = INSTANCE_UID, pixels: int = 4096) -> bytes:
    """A small Explicit VR LE data set with optional SOP UIDs and native pixel data."""
    data = b""
    if sop_class is not None:
        data += _element(0x00080016, b"UI", _uid(sop_class))
    if sop_instance is not None:
        data += _element(0x00080018, b"UI", _uid(sop_instance))
    data += _element(0x00080060, b"CS", b"OT")
    data += _element(0x00100010, b"PN", b"DOE^JOHN")
    data += _element(0x7FE00010, b"OW", bytes(range(256)) * (pixels // 256))
    return data


def make_meta(**overrides: str) -> InstanceMeta:
    """Command-side metadata matching :func:`make_dataset` unless overridden."""
    fields = dict(
        sop_class_uid=SC_STORAGE,
        sop_instance_uid=INSTANCE_UID,
        transfer_syntax_uid=EXPLICIT,
        calling_ae_title="MODALITY",
        called_ae_title="GATEWAY",
    )
    fields.update(overrides)
    return InstanceMeta(**fields)


class RecordingFileOps(FileOps):
    """Real system calls, recorded by path, with injectable failures.

    :param fail: maps an operation name to ``(n, errno)``: its n-th call
        (1-based) raises ``OSError(errno)`` instead of running.
    """

    def __init__(self, fail: dict[str, tuple[int, int]] | None = None) -> None:
        self.fail = fail or {}
        self.counts: dict[str, int] = {}
        self.calls: list[tuple[str, str]] = []
        self.paths: dict[int, str] = {}
        self.written: dict[str, int] = {}

    def _enter(self, op: str, path: str) -> None:
        """Record a call and raise the injected failure if it is due."""
        self.counts[op] = self.counts.get(op, 0) + 1
        self.calls.append((op, path))
        if op in self.fail and self.fail[op][0] == self.counts[op]:
            code = self.fail[op][1]
            raise OSError(code, os.strerror(code))

    def open(self, path: str, flags: int, mode: int = 0o777) -> int:
        """Open and remember which path the descriptor names."""
        self._enter("open", path)
        fd = super().open(path, flags, mode)
        self.paths[fd] = path
        return fd

    def write(self, fd: int, data: memoryview | bytes) -> int:
        """Write and count bytes per path."""
        path = self.paths[fd]
        self._enter("write", path)
        n = super().write(fd, data)
        self.written[path] = self.written.get(path, 0) + n
        return n

    def fsync(self, fd: int) -> None:
        """fsync, recorded by path."""
        self._enter("fsync", self.paths[fd])
        super().fsync(fd)

    def fdatasync(self, fd: int) -> None:
        """fdatasync, recorded by path."""
        self._enter("fdatasync", self.paths[fd])
        super().fdatasync(fd)

    def start_writeback(self, fd: int, offset: int, length: int) -> None:
        """sync_file_range, recorded by path."""
        self._enter("start_writeback", self.paths[fd])
        super().start_writeback(fd, offset, length)

    def rename(self, src: str, dst: str) -> None:
        """rename, recorded by destination."""
        self._enter("rename", dst)
        super().rename(src, dst)

    def unlink(self, path: str) -> None:
        """unlink, recorded."""
        self._enter("unlink", path)
        super().unlink(path)

    def close(self, fd: int) -> None:
        """close, recorded by path."""
        self._enter("close", self.paths.pop(fd))
        super().close(fd)


class SpoolTestMixin(SynchronousTestCase):
    """Builds a spool in a fresh directory with a synchronous runner."""

    def make_spool(self, fs: FileOps | None = None, max_instance_size: int = 1 << 20, slots: bool = True) -> Spool:
        """A recovered spool under a new temporary root, with a batch of 4 slot files ready unless ``slots`` is false."""
        root = self.mktemp()
        os.makedirs(root)
        spool = Spool(
            root,
            SynchronousRunner(),
            implementation_class_uid=IMPL_UID,
            implementation_version_name="DCMGW_01",
            max_instance_size=max_instance_size,
            fs=fs,
            slot_batch=4,
        )
        spool.recover()
        if slots:
            spool.prepare_slots()
        else:
            spool.slots.low_water = 0
        return spool

    def store(self, spool: Spool, data: bytes, meta: InstanceMeta | None = None, size: int = 1000) -> SpooledInstance:
        """Write ``data`` in ``size``-byte fragments and commit successfully."""
        writer = spool.begin(meta or make_meta())
        for i in range(0, len(data), size):
            writer.write(data[i : i + size])
        return self.successResultOf(writer.commit())

    def refused(self, spool: Spool, data: bytes, meta: InstanceMeta | None = None) -> SpoolError:
        """Write ``data`` and assert the commit fails with SpoolError."""
        writer = spool.begin(meta or make_meta())
        writer.write(data)
        failure = self.failureResultOf(writer.commit(), SpoolError)
        return failure.value  # type: ignore[return-value]

    def assertSpoolEmpty(self, spool: Spool) -> None:
        """Nothing is left in incoming/, and instances/ holds only unused (empty) slot files."""
        self.assertEqual(os.listdir(spool.incoming_dir), [])
        kept = [n for n in os.listdir(spool.instances_dir) if os.path.getsize(os.path.join(spool.instances_dir, n))]
        self.assertEqual(kept, [])


class RoundTripTests(SpoolTestMixin):
    """A committed instance is a readable Part 10 file with the data set bytes verbatim."""

    def test_pydicom_reads_committed_file_and_data_set_is_verbatim(self) -> None:
        """The file reads with pydicom and its bytes after the meta equal the input."""
        spool = self.make_spool()
        data = make_dataset()
        instance = self.store(spool, data)
        ds = pydicom.dcmread(instance.path)
        self.assertEqual(ds.SOPInstanceUID, INSTANCE_UID)
        self.assertEqual(ds.file_meta.MediaStorageSOPClassUID, SC_STORAGE)
        self.assertEqual(ds.file_meta.TransferSyntaxUID, EXPLICIT)
        self.assertEqual(ds.file_meta.SourceApplicationEntityTitle, "MODALITY")
        self.assertEqual(ds.file_meta.ImplementationClassUID, IMPL_UID)
        with open(instance.path, "rb") as fp:
            content = fp.read()
        self.assertEqual(content[-len(data) :], data)
        self.assertEqual(content[:128], b"\x00" * 128)
        self.assertEqual(instance.size, len(content))
        self.assertEqual(os.listdir(spool.incoming_dir), [])

    def test_summary_and_ids(self) -> None:
        """The result carries the walk summary, the meta and an internal id naming the file."""
        spool = self.make_spool()
        instance = self.store(spool, make_dataset())
        self.assertEqual(instance.summary.sop_instance_uid, INSTANCE_UID)
        self.assertEqual(instance.summary.modality, "OT")
        self.assertEqual(instance.meta, make_meta())
        self.assertEqual(instance.path, os.path.join(spool.instances_dir, instance.instance_id + ".dcm"))
        self.assertEqual(len(instance.instance_id), 32)

    def test_fragment_sizes(self) -> None:
        """Fragments of 1, 7, 4096 bytes and one whole piece give identical data sets."""
        data = make_dataset(pixels=2048)
        spool = self.make_spool()
        for size in [1, 7, 4096, len(data)]:
            instance = self.store(spool, data, size=size)
            with open(instance.path, "rb") as fp:
                self.assertEqual(fp.read()[-len(data) :], data, size)
            self.assertEqual(instance.summary.element_count, 5)

    def test_bytes_written_counts_data_set_bytes(self) -> None:
        """bytes_written counts data set bytes only, not the meta header."""
        spool = self.make_spool()
        writer = spool.begin(make_meta())
        writer.write(b"\x08\x00")
        writer.write(b"\x16\x00")
        self.assertEqual(writer.bytes_written, 4)
        writer.discard()

    def test_real_files_round_trip(self) -> None:
        """pydicom's CT_small (explicit LE) and image_dfl (deflated) data sets commit and read back."""
        for name in ["CT_small.dcm", "image_dfl.dcm"]:
            path = get_testdata_file(name, download=False)
            ds = pydicom.dcmread(path)
            with open(path, "rb") as fp:
                raw = fp.read()
            data = raw[ds.file_meta.FileMetaInformationGroupLength + 132 + 12 :]
            meta = make_meta(
                sop_class_uid=ds.SOPClassUID,
                sop_instance_uid=ds.SOPInstanceUID,
                transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
            )
            spool = self.make_spool()
            instance = self.store(spool, data, meta, size=16384)
            again = pydicom.dcmread(instance.path)
            self.assertEqual(again.SOPInstanceUID, ds.SOPInstanceUID, name)
            self.assertEqual(again.PatientName, ds.PatientName, name)

    def test_file_mode_is_0600(self) -> None:
        """Slot files and committed instances are 0600: not executable, not world-readable (D16)."""
        old = os.umask(0)
        self.addCleanup(os.umask, old)
        spool = self.make_spool()
        writer = spool.begin(make_meta())
        temp_mode = stat.S_IMODE(os.stat(writer.path).st_mode)
        writer.write(make_dataset())
        instance = self.successResultOf(writer.commit())
        self.assertEqual(temp_mode, 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(instance.path).st_mode), 0o600)

    def test_hostile_uids_never_name_files(self) -> None:
        """Path-like UIDs and AE titles never reach a file name (D06)."""
        hostile = "../../etc/x"
        spool = self.make_spool()
        meta = make_meta(sop_instance_uid=hostile, calling_ae_title="../../AE")
        instance = self.store(spool, make_dataset(sop_instance=hostile), meta)
        self.assertEqual(os.path.dirname(instance.path), spool.instances_dir)
        self.assertNotIn("..", os.path.basename(instance.path))
        self.assertEqual(instance.summary.sop_instance_uid, hostile)

    def test_durable_order_is_writeback_per_batch_then_fdatasync(self) -> None:
        """Each batch of fragments handed to the lane is written, then its write-back started; the seal is one fdatasync of the file, no rename, no directory fsync (issue 13)."""
        fs = RecordingFileOps()
        spool = self.make_spool(fs)
        fs.calls.clear()
        writer = spool.begin(make_meta())
        data = make_dataset()
        for i in range(0, len(data), 1000):
            writer.write(data[i : i + 1000])
        instance = self.successResultOf(writer.commit())
        ops = [op for op, path in fs.calls if path == instance.path]
        fragments = -(-len(data) // 1000)
        # One batch: the data set is smaller than LANE_BATCH, so it goes with the seal.
        self.assertEqual(ops, ["open"] + ["write"] * (1 + fragments) + ["start_writeback", "fdatasync", "close"])
        self.assertEqual([c for c in fs.calls if c[0] in ("fsync", "rename")], [])
        self.assertEqual(instance.dataset_offset, instance.size - len(data))

    def test_without_a_ready_slot_the_folder_is_synced_for_that_instance(self) -> None:
        """An empty slot pool: the file is created (O_EXCL) and the folder fsynced after the fdatasync, as safe as before."""
        fs = RecordingFileOps()
        spool = self.make_spool(fs, slots=False)
        instance = self.store(spool, make_dataset())
        durable = [c for c in fs.calls if c[0] in ("fdatasync", "fsync", "rename")]
        self.assertEqual(durable, [("fdatasync", instance.path), ("fsync", spool.instances_dir)])
        self.assertEqual(spool.slots.misses, 1)

    def test_slots_are_made_in_batches_with_one_folder_fsync(self) -> None:
        """prepare_slots makes a batch of empty 0600 files and fsyncs instances/ once; each instance takes one and none is reused."""
        fs = RecordingFileOps()
        spool = self.make_spool(fs)
        self.assertEqual([c for c in fs.calls if c[0] == "fsync"], [("fsync", spool.instances_dir)])
        slots = sorted(os.listdir(spool.instances_dir))
        self.assertEqual(len(slots), 4)
        for name in slots:
            st = os.stat(os.path.join(spool.instances_dir, name))
            self.assertEqual((st.st_size, stat.S_IMODE(st.st_mode)), (0, 0o600))
        first = self.store(spool, make_dataset())
        second = self.store(spool, make_dataset())
        self.assertIn(os.path.basename(first.path), slots)
        self.assertNotEqual(first.path, second.path)


class FailureTests(SpoolTestMixin):
    """Every failure maps to its status and leaves no file behind."""

    def test_enospc_on_nth_write(self) -> None:
        """ENOSPC on the third write gives 0xA700, drops later writes and removes the file (D11)."""
        fs = RecordingFileOps(fail={"write": (3, errno.ENOSPC)})
        spool = self.make_spool(fs)
        writer = spool.begin(make_meta())  # write 1: the meta header
        data = make_dataset()
        writer.write(data[:100])  # write 2
        writer.write(data[100:200])  # write 3: ENOSPC
        writer.write(data[200:])  # dropped
        error = self.failureResultOf(writer.commit(), SpoolError).value
        self.assertEqual(fs.counts["write"], 3)
        self.assertEqual(error.status, Status.OUT_OF_RESOURCES)
        self.assertEqual(error.comment, "Out of resources: No space left on device")
        self.assertEqual(error.reason, SpoolFailure.WRITE_FAILED)
        self.assertSpoolEmpty(spool)

    def test_enospc_frees_space_before_commit(self) -> None:
        """The partial file is removed as soon as the write fails, not at commit."""
        fs = RecordingFileOps()
        spool = self.make_spool(fs)
        fs.fail = {"write": (fs.counts.get("write", 0) + 2, errno.ENOSPC)}
        writer = spool.begin(make_meta())
        writer.write(make_dataset(pixels=LANE_BATCH))  # a whole batch: handed to the lane at once
        self.assertFalse(os.path.exists(writer.path))
        writer.discard()

    def test_eio_on_fdatasync(self) -> None:
        """EIO from fdatasync(file) gives 0xA700 and never success (D12)."""
        spool = self.make_spool(RecordingFileOps(fail={"fdatasync": (1, errno.EIO)}))
        error = self.refused(spool, make_dataset())
        self.assertEqual(error.status, Status.OUT_OF_RESOURCES)
        self.assertIn("Input/output error", error.comment)
        self.assertEqual(error.reason, SpoolFailure.NOT_DURABLE)
        self.assertSpoolEmpty(spool)

    def test_slot_batch_failure_falls_back_to_a_synced_folder(self) -> None:
        """EROFS while making slots: the fault is kept, and an instance then makes its own file and fsyncs the folder."""
        fs = RecordingFileOps(fail={"fsync": (1, errno.EROFS)})
        spool = self.make_spool(fs, slots=False)
        spool.prepare_slots()
        self.assertEqual((spool.fault.operation, spool.fault.error), ("create", "EROFS"))  # type: ignore[union-attr]
        self.assertEqual(os.listdir(spool.instances_dir), [])
        instance = self.store(spool, make_dataset())
        self.assertIn(("fsync", spool.instances_dir), fs.calls[fs.calls.index(("fdatasync", instance.path)):])
        self.assertIsNone(spool.fault)

    def test_directory_fsync_failure_removes_the_new_file(self) -> None:
        """No slot ready and EIO on fsync(instances/): 0xA700 and the unacknowledged file is removed (D12)."""
        spool = self.make_spool(RecordingFileOps(fail={"fsync": (1, errno.EIO)}), slots=False)
        self.assertEqual(self.refused(spool, make_dataset()).status, Status.OUT_OF_RESOURCES)
        self.assertSpoolEmpty(spool)

    def test_malformed_data_set(self) -> None:
        """A structurally broken data set gives 0xC000 with the walker's comment (D01)."""
        spool = self.make_spool()
        data = make_dataset() + _element(0x7FE10010, b"OB", b"")[:-4] + struct.pack("<I", 5000)
        error = self.refused(spool, data)
        self.assertEqual(error.status, Status.CANNOT_UNDERSTAND)
        self.assertIn("(7FE1,0010) length 5000", error.comment)
        self.assertLessEqual(len(error.comment), 64)
        self.assertEqual(error.reason, SpoolFailure.MALFORMED)
        self.assertSpoolEmpty(spool)

    def test_data_set_in_wrong_transfer_syntax(self) -> None:
        """Implicit VR bytes under an explicit VR context give 0xC000 (D08)."""
        implicit = struct.pack("<HHI", 0x0008, 0x0016, 26) + _uid(SC_STORAGE)
        self.assertEqual(self.refused(self.make_spool(), implicit).status, Status.CANNOT_UNDERSTAND)

    def test_missing_sop_uids(self) -> None:
        """A data set without SOP Class or Instance UID gives 0xC000 (D05)."""
        for data, word in [(make_dataset(sop_class=None), "Class"), (make_dataset(sop_instance=None), "Instance")]:
            spool = self.make_spool()
            error = self.refused(spool, data)
            self.assertEqual(error.status, Status.CANNOT_UNDERSTAND)
            self.assertIn(word, error.comment)
            self.assertEqual(error.reason, SpoolFailure.MISSING_UID)
            self.assertSpoolEmpty(spool)

    def test_uid_mismatch(self) -> None:
        """A data set whose SOP Class or Instance UID differs from the command's gives 0xA900 (D04)."""
        for meta in [make_meta(sop_class_uid="1.2.840.10008.5.1.4.1.1.2"), make_meta(sop_instance_uid="1.2.3")]:
            spool = self.make_spool()
            error = self.refused(spool, make_dataset(), meta)
            self.assertEqual(error.status, Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS)
            self.assertEqual(error.reason, SpoolFailure.UID_MISMATCH)
            self.assertSpoolEmpty(spool)

    def test_instance_over_size_cap(self) -> None:
        """Over max_instance_size gives 0xC000 with a comment, and writing stops at the cap (D10)."""
        fs = RecordingFileOps()
        spool = self.make_spool(fs, max_instance_size=3000)
        writer = spool.begin(make_meta())
        data = make_dataset()
        for i in range(0, len(data), 1000):
            writer.write(data[i : i + 1000])
        self.assertEqual(writer.bytes_written, 3000)
        header = encode_file_meta(
            sop_class_uid=SC_STORAGE,
            sop_instance_uid=INSTANCE_UID,
            transfer_syntax_uid=EXPLICIT,
            implementation_class_uid=IMPL_UID,
            implementation_version_name="DCMGW_01",
            source_ae_title="MODALITY",
        )
        # Nothing past the cap reaches the file (fragments still batched are never written).
        self.assertLessEqual(fs.written.get(writer.path, 0), len(header) + 3000)
        error = self.failureResultOf(writer.commit(), SpoolError).value
        self.assertEqual(error.status, Status.CANNOT_UNDERSTAND)
        self.assertEqual(error.comment, "Instance larger than 3000 bytes")
        self.assertEqual(error.reason, SpoolFailure.TOO_LARGE)
        self.assertSpoolEmpty(spool)

    def test_odd_length_refused_unless_allowed(self) -> None:
        """An odd value length is 0xC000 by default and stored when the spool allows it."""
        data = make_dataset()
        odd = data.replace(_element(0x00100010, b"PN", b"DOE^JOHN"), _element(0x00100010, b"PN", b"DOE^JON"))
        self.assertEqual(self.refused(self.make_spool(), odd).status, Status.CANNOT_UNDERSTAND)
        lenient = self.make_spool()
        lenient.allow_odd_lengths = True
        self.assertEqual(self.store(lenient, odd).summary.sop_instance_uid, INSTANCE_UID)

    def test_begin_failure_raises_out_of_resources(self) -> None:
        """If the instance's file cannot be opened, begin() raises 0xA700."""
        fs = RecordingFileOps()
        spool = self.make_spool(fs)
        fs.fail = {"open": (fs.counts["open"] + 1, errno.ENOSPC)}
        error = self.assertRaises(SpoolError, spool.begin, make_meta())
        self.assertEqual(error.status, Status.OUT_OF_RESOURCES)

    def test_comment_fits_error_comment(self) -> None:
        """SpoolError comments are cut to 64 characters (LO)."""
        self.assertEqual(len(SpoolError(0xC000, "x" * 200, SpoolFailure.MALFORMED).comment), 64)


class LifecycleTests(SpoolTestMixin):
    """discard(), double commit and recovery."""

    def test_discard_removes_temp_and_is_idempotent(self) -> None:
        """discard() removes the partial file; a second call does nothing."""
        spool = self.make_spool()
        writer = spool.begin(make_meta())
        writer.write(make_dataset()[:50])
        writer.discard()
        writer.discard()
        self.assertSpoolEmpty(spool)
        writer.write(b"more")  # dropped, no error
        self.assertEqual(writer.bytes_written, 50)

    def test_discard_after_commit_keeps_instance(self) -> None:
        """discard() after a successful commit leaves the committed instance alone."""
        spool = self.make_spool()
        writer = spool.begin(make_meta())
        writer.write(make_dataset())
        instance = self.successResultOf(writer.commit())
        writer.discard()
        self.assertTrue(os.path.exists(instance.path))

    def test_discard_after_failed_commit(self) -> None:
        """discard() after a failed commit is harmless."""
        spool = self.make_spool()
        writer = spool.begin(make_meta())
        writer.write(b"\xff" * 10)
        self.failureResultOf(writer.commit(), SpoolError)
        writer.discard()
        self.assertSpoolEmpty(spool)

    def test_commit_twice_is_a_caller_error(self) -> None:
        """A second commit() raises RuntimeError instead of committing twice."""
        spool = self.make_spool()
        writer = spool.begin(make_meta())
        writer.write(make_dataset())
        self.successResultOf(writer.commit())
        self.assertRaises(RuntimeError, writer.commit)

    def test_recover_removes_stale_part_files_only(self) -> None:
        """recover() removes leftover .part files, keeps instances and other files, and reports them."""
        spool = self.make_spool()
        instance = self.store(spool, make_dataset())
        stale = [os.path.join(spool.incoming_dir, f"{n}.part") for n in ("a" * 32, "b" * 32)]
        for path in stale:
            with open(path, "wb") as fp:
                fp.write(b"partial")
        other = os.path.join(spool.incoming_dir, "README")
        with open(other, "w") as fp:
            fp.write("keep")
        removed = spool.recover()
        self.assertEqual(sorted(removed), sorted(stale))
        self.assertEqual(os.listdir(spool.incoming_dir), ["README"])
        self.assertTrue(os.path.exists(instance.path))

    def test_recover_creates_directories(self) -> None:
        """recover() on an empty root creates incoming/ and instances/ and removes nothing."""
        root = self.mktemp()
        os.makedirs(root)
        spool = Spool(root, SynchronousRunner(), implementation_class_uid=IMPL_UID, implementation_version_name="X", max_instance_size=10)
        self.assertEqual(spool.recover(), [])
        self.assertTrue(os.path.isdir(spool.incoming_dir))
        self.assertTrue(os.path.isdir(spool.instances_dir))

    def test_free_bytes(self) -> None:
        """free_bytes() reports the filesystem's available space."""
        spool = self.make_spool()
        st = os.statvfs(spool.root)
        self.assertEqual(spool.free_bytes(), st.f_bavail * st.f_frsize)
        self.assertIsInstance(spool.free_bytes(), int)

    def test_deflated_bomb_refused(self) -> None:
        """A deflated data set inflating past the cap is refused with 0xC000 (D09)."""
        import zlib

        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        packed = c.compress(make_dataset()[:-4096 - 12] + _element(0x7FE00010, b"OW", b"\x00" * (2 << 20))) + c.flush()
        spool = self.make_spool(max_instance_size=1 << 20)
        error = self.refused(spool, packed, make_meta(transfer_syntax_uid=DEFLATED))
        self.assertEqual(error.status, Status.CANNOT_UNDERSTAND)
        self.assertIn("inflates past", error.comment)
        self.assertSpoolEmpty(spool)



class HealthTests(SpoolTestMixin):
    """``Spool.fault`` and ``Spool.probe``: the spool's health for readiness (HARDENING D11, D12)."""

    def test_write_failure_sets_fault_and_a_later_commit_clears_it(self) -> None:
        """ENOSPC on a write is kept as the spool's fault until an instance commits again."""
        fs = RecordingFileOps(fail={"write": (2, errno.ENOSPC)})
        spool = self.make_spool(fs)
        self.assertIsNone(spool.fault)
        self.refused(spool, make_dataset())
        self.assertEqual(spool.fault, StorageFault("write", "ENOSPC", os.strerror(errno.ENOSPC)))
        self.assertNotIn(spool.root, str(spool.fault))
        self.store(spool, make_dataset())
        self.assertIsNone(spool.fault)

    def test_commit_and_create_failures_set_fault(self) -> None:
        """EIO on the fdatasync is a ``commit`` fault; EROFS when opening the file is a ``create`` fault."""
        spool = self.make_spool(RecordingFileOps(fail={"fdatasync": (1, errno.EIO)}))
        self.refused(spool, make_dataset())
        self.assertEqual((spool.fault.operation, spool.fault.error), ("commit", "EIO"))  # type: ignore[union-attr]
        fs = RecordingFileOps()
        spool = self.make_spool(fs)
        fs.fail = {"open": (fs.counts["open"] + 1, errno.EROFS)}
        self.assertRaises(SpoolError, spool.begin, make_meta())
        self.assertEqual((spool.fault.operation, spool.fault.error), ("create", "EROFS"))  # type: ignore[union-attr]

    def test_probe_makes_the_commit_calls_clears_fault_and_leaves_nothing(self) -> None:
        """The probe creates, writes, fsyncs, renames and fsyncs both folders, then removes its file; success clears the fault."""
        fs = RecordingFileOps()
        spool = self.make_spool(fs)
        spool.fault = StorageFault("write", "EIO", "Input/output error")
        fs.calls.clear()
        spool.probe()
        self.assertIsNone(spool.fault)
        ops = [op for op, _ in fs.calls if op != "close"]
        self.assertEqual(ops, ["open", "write", "fsync", "rename", "open", "fsync", "open", "fsync", "unlink"])
        self.assertSpoolEmpty(spool)

    def test_probe_failure_sets_fault_raises_and_leaves_nothing(self) -> None:
        """EIO on the probe's rename: OSError, fault ``probe``/``EIO``, no file left in incoming/."""
        spool = self.make_spool(RecordingFileOps(fail={"rename": (1, errno.EIO)}))
        self.assertRaises(OSError, spool.probe)
        self.assertEqual((spool.fault.operation, spool.fault.error), ("probe", "EIO"))  # type: ignore[union-attr]
        self.assertSpoolEmpty(spool)

    def test_recover_removes_a_stale_probe_file(self) -> None:
        """A probe file left by a crash is removed at start like a ``.part`` file."""
        spool = self.make_spool()
        stale = os.path.join(spool.incoming_dir, "probe-1.probe")
        open(stale, "wb").close()
        self.assertEqual(spool.recover(), [stale])


class UnexpectedErrorTests(SpoolTestMixin):
    """A bug while writing on the lane refuses the instance and still seals it: nothing waits forever."""

    def test_a_failing_hash_refuses_the_instance_and_seals(self) -> None:
        """An exception other than OSError in the lane's writing gives 0xA700, removes the file, and wait_durable returns."""
        spool = self.make_spool()
        writer = spool.begin(make_meta())
        broken = mock.Mock(update=mock.Mock(side_effect=RuntimeError("boom")))
        writer._digest = broken  # type: ignore[assignment]
        writer.write(make_dataset())
        error = self.failureResultOf(writer.commit(), SpoolError).value
        self.assertEqual(error.status, Status.OUT_OF_RESOURCES)
        self.assertTrue(writer.sealed)
        self.assertFalse(os.path.exists(writer.path))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
