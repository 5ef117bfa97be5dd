"""The durable spool: C-STORE data sets to fsynced Part 10 files, then the acknowledgement.

The storage SCP calls :meth:`Spool.begin` when a C-STORE-RQ command arrives,
:meth:`SpoolWriter.write` for each data set fragment, :meth:`SpoolWriter.commit`
after the last one, and :meth:`SpoolWriter.discard` if the association ends
mid-data-set. Only a successful commit may be answered with 0x0000.

Layout under the spool root::

    incoming/<uuid4 hex>.part    being received (mode 0600, O_EXCL)
    instances/<uuid4 hex>.dcm    committed

Names are internal ids only, never anything from peer data (HARDENING D06,
decision 3). A file is the PS3.10 meta header we generate (zero preamble,
HARDENING D16; :mod:`gateway.meta`) followed by every data set byte exactly
as received.

Commit runs on the blocking runner and does, in this order (DESIGN.md 5,
HARDENING decision 10):

1. refuse if a write failed (0xA700, D11) or the size cap was hit (0xC000, D10);
2. walk the data set structure (:func:`gateway.validate.walk_dataset`):
   malformed gives 0xC000 (D01-D03, D09, D18). pynetdicom answers 0xC210 and
   DCMTK 0xC000; both are in the PS3.4 Table B.2-1 "Cannot understand" range,
   and we use 0xC000 for every structural failure;
3. compare the data set's SOP Class and Instance UIDs with the command's:
   missing gives 0xC000 (D05), different gives 0xA900 (D04);
4. ``fsync(file)``, ``rename`` into ``instances/``, ``fsync(instances/)``.
   Any failure gives 0xA700 and never success (D12).

A failed commit removes the temporary file (and a renamed file whose
directory entry could not be made durable), so nothing unacknowledged stays.

Health (HARDENING D11, D12): every operating-system failure while creating,
writing or committing an instance is kept in :attr:`Spool.fault` until a
later commit, or :meth:`Spool.probe`, succeeds. Readiness reads that
attribute (no disk access per request) and runs the probe now and then, so
a fault that no store is hitting (EIO on rename, a read-only remount, a full
disk with no traffic) still shows, and clears once the disk is back.
"""

from __future__ import annotations

import errno
import hashlib
import os
import uuid
from dataclasses import dataclass
from enum import Enum
from typing import Final

from twisted.internet.defer import Deferred

from gateway.blocking import IBlockingRunner
from gateway.dimse.status import Status
from gateway.durable import FileOps, fsync_dir, replace_durably, write_all
from gateway.meta import encode_file_meta
from gateway.private import make_private_dirs
from gateway.validate import DatasetSummary, MalformedDataset, walk_dataset

__all__ = [
    "FileOps",
    "InstanceMeta",
    "Spool",
    "SpoolError",
    "SpoolFailure",
    "SpoolWriter",
    "SpooledInstance",
    "StorageFault",
]

#: The sub-directory of files being received.
INCOMING: Final = "incoming"
#: The sub-directory of committed instances.
INSTANCES: Final = "instances"
#: The suffix of files being received.
PART_SUFFIX: Final = ".part"
#: The suffix of committed instances.
DCM_SUFFIX: Final = ".dcm"
#: The suffix a probe file is renamed to (see :meth:`Spool.probe`).
PROBE_SUFFIX: Final = ".probe"

#: PS3.7 C.4.2.1.2: Error Comment (0000,0902) is LO, at most 64 characters.
_MAX_COMMENT: Final = 64


@dataclass(frozen=True)
class InstanceMeta:
    """What the command set and the association say about an incoming instance.

    :ivar sop_class_uid: the C-STORE-RQ Affected SOP Class UID.
    :ivar sop_instance_uid: the C-STORE-RQ Affected SOP Instance UID.
    :ivar transfer_syntax_uid: the presentation context's transfer syntax.
    :ivar calling_ae_title: the peer's AE title (written as Source AE Title).
    :ivar called_ae_title: our AE title as the peer called it.
    """

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    calling_ae_title: str
    called_ae_title: str


@dataclass(frozen=True)
class SpooledInstance:
    """A committed, durable instance.

    :ivar instance_id: the internal id (a uuid4 hex string).
    :ivar path: the committed file.
    :ivar size: the file's size in bytes, meta header included.
    :ivar summary: what the structure walk found.
    :ivar meta: the command-side metadata.
    :ivar sha256: hex SHA-256 of the data set bytes as received (duplicate
        control compares it, HARDENING decision 5).
    :ivar dataset_offset: where the data set starts in the file (the length
        of the file meta the spool wrote); 0 when unknown.
    """

    instance_id: str
    path: str
    size: int
    summary: DatasetSummary
    meta: InstanceMeta
    sha256: str = ""
    dataset_offset: int = 0


@dataclass(frozen=True)
class StorageFault:
    """The spool's last file-system failure (HARDENING D11, D12).

    :ivar operation: what failed: ``create``, ``write``, ``commit`` (fsync,
        rename or the directory fsync) or ``probe``.
    :ivar error: the errno's name (``EIO``, ``ENOSPC``, ``EROFS``...).
    :ivar message: the operating system's words for it.
    """

    operation: str
    error: str
    message: str

    @classmethod
    def from_error(cls, operation: str, error: OSError) -> "StorageFault":
        """
        Describe an :class:`OSError`.

        :param operation: what was being done.
        :param error: the failure.
        :returns: the fault.
        """
        return cls(operation, errno.errorcode.get(error.errno or 0, "EIO"), error.strerror or str(error))

    def __str__(self) -> str:
        """One line for a readiness reason or a log (no path)."""
        return f"{self.operation} failed: {self.message} ({self.error})"


class SpoolFailure(Enum):
    """Why a store failed; a bounded label for metrics and logs."""

    WRITE_FAILED = "write_failed"
    TOO_LARGE = "too_large"
    MALFORMED = "malformed"
    MISSING_UID = "missing_uid"
    UID_MISMATCH = "uid_mismatch"
    NOT_DURABLE = "not_durable"


def _fit_comment(comment: str) -> str:
    """
    Cut a comment to fit an Error Comment (LO, 64 characters).

    :param comment: the text.
    :returns: at most 64 characters.
    """
    if len(comment) <= _MAX_COMMENT:
        return comment
    return comment[: _MAX_COMMENT - 3] + "..."


class SpoolError(Exception):
    """A store that must not be acknowledged, with the C-STORE status to answer.

    :ivar status: 0xA700 (out of resources), 0xA900 (data set does not match
        SOP class) or 0xC000 (cannot understand), per PS3.4 Table B.2-1.
    :ivar comment: the Error Comment, at most 64 characters.
    :ivar reason: the failure kind.
    """

    def __init__(self, status: int, comment: str, reason: SpoolFailure) -> None:
        self.status = status
        self.comment = _fit_comment(comment)
        self.reason = reason
        super().__init__(status, self.comment, reason)

    @classmethod
    def out_of_resources(cls, error: OSError, reason: SpoolFailure) -> "SpoolError":
        """
        Build the 0xA700 error for an operating-system failure (D11, D12).

        :param error: the failure.
        :param reason: the failure kind.
        :returns: the error.
        """
        text = error.strerror or (errno.errorcode.get(error.errno or 0) or str(error))
        return cls(Status.OUT_OF_RESOURCES, f"Out of resources: {text}", reason)


class _State(Enum):
    """The life of a :class:`SpoolWriter`."""

    OPEN = "open"
    COMMITTING = "committing"
    COMMITTED = "committed"
    FAILED = "failed"
    DISCARDED = "discarded"


class Spool:
    """A directory of durable instances.

    :param root: the spool directory.
    :param blocking: where fsync and the structure walk run.
    :param implementation_class_uid: written as (0002,0012).
    :param implementation_version_name: written as (0002,0013).
    :param max_instance_size: the most data set bytes accepted per instance (D10).
    :param fs: the system calls; the real ones by default.
    :param max_depth: the deepest sequence nesting accepted (D02).
    :param max_elements: the most element headers walked per instance (D18).
    :param max_inflated_size: the largest inflated size of a deflated data
        set (D09); by default ``max_instance_size``, so a data set can be no
        larger inflated than it may be as received.
    :param allow_odd_lengths: accept odd value lengths (PS3.5 7.1.1 forbids
        them; this is for sites with a known broken modality).
    """

    def __init__(
        self,
        root: str,
        blocking: IBlockingRunner,
        *,
        implementation_class_uid: str,
        implementation_version_name: str,
        max_instance_size: int,
        fs: FileOps | None = None,
        max_depth: int = 64,
        max_elements: int = 1_000_000,
        max_inflated_size: int | None = None,
        allow_odd_lengths: bool = False,
    ) -> None:
        self.root = root
        self.incoming_dir = os.path.join(root, INCOMING)
        self.instances_dir = os.path.join(root, INSTANCES)
        self._blocking = blocking
        self._implementation_class_uid = implementation_class_uid
        self._implementation_version_name = implementation_version_name
        self.max_instance_size = max_instance_size
        self.fs = fs if fs is not None else FileOps()
        self.max_depth = max_depth
        self.max_elements = max_elements
        self.max_inflated_size = (
            max_inflated_size if max_inflated_size is not None else max_instance_size
        )
        self.allow_odd_lengths = allow_odd_lengths
        self._dirs_ready = False
        #: The last storage failure, ``None`` once a commit or probe has succeeded since.
        self.fault: StorageFault | None = None

    def _ensure_dirs(self) -> None:
        """Create the root, ``incoming/`` and ``instances/`` (mode 0700) if missing.

        The root is created by the service with the process umask, or by the
        operator; it and both folders lose any group or other access here
        (HARDENING H08), once per process.
        """
        if not self._dirs_ready:
            make_private_dirs(self.root)
            make_private_dirs(self.incoming_dir)
            make_private_dirs(self.instances_dir)
            self._dirs_ready = True

    def recover(self) -> list[str]:
        """
        Remove the temporary files an earlier run left behind.

        Called once at start-up, before listening: a ``.part`` file is an
        instance that was never acknowledged (HARDENING F10), so its sender
        saw a failure or abort and will send it again.

        :returns: the paths removed, for the caller to log.
        """
        self._ensure_dirs()
        removed = []
        for name in sorted(os.listdir(self.incoming_dir)):
            if not name.endswith((PART_SUFFIX, PROBE_SUFFIX)):
                continue
            path = os.path.join(self.incoming_dir, name)
            try:
                self.fs.unlink(path)
            except FileNotFoundError:
                continue
            removed.append(path)
        return removed

    def free_bytes(self) -> int:
        """
        The space left for the spool, as an unprivileged process sees it.

        :returns: ``f_bavail * f_frsize`` of the spool's filesystem.
        """
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def probe(self) -> None:
        """
        Prove the spool can commit, with the commit's own system calls (blocking; run it on a runner).

        A small file is created in ``incoming/`` (``O_EXCL | O_NOFOLLOW``),
        written, fsynced, renamed, both folders fsynced, then removed: the
        calls a commit makes, so EIO on rename or a read-only filesystem
        show here as they would on the next instance. Success clears
        :attr:`fault`; failure sets it (HARDENING D11, D12).

        :raises OSError: the spool cannot commit now.
        """
        name = "probe-" + uuid.uuid4().hex
        temp = os.path.join(self.incoming_dir, name + PART_SUFFIX)
        final = os.path.join(self.incoming_dir, name + PROBE_SUFFIX)
        try:
            self._ensure_dirs()
            replace_durably(final, lambda fd: write_all(fd, b"probe\n", self.fs), ops=self.fs, temp=temp)
            fsync_dir(self.instances_dir, self.fs)
            self.fs.unlink(final)
        except OSError as e:
            self.fault = StorageFault.from_error("probe", e)
            for path in (temp, final):
                try:
                    self.fs.unlink(path)
                except OSError:
                    pass
            raise
        self.fault = None

    def begin(self, meta: InstanceMeta) -> "SpoolWriter":
        """
        Start receiving one instance.

        :param meta: the command-side metadata.
        :returns: a writer holding the new temporary file, meta header written.
        :raises SpoolError: 0xA700 if the temporary file cannot be created.
        """
        instance_id = uuid.uuid4().hex
        temp_path = os.path.join(self.incoming_dir, instance_id + PART_SUFFIX)
        flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
        try:
            self._ensure_dirs()
            # Mode 0600: stored instances are never executable nor world-readable (D16).
            fd = self.fs.open(temp_path, flags, 0o600)
        except OSError as e:
            self.fault = StorageFault.from_error("create", e)
            raise SpoolError.out_of_resources(e, SpoolFailure.WRITE_FAILED) from e
        header = encode_file_meta(
            sop_class_uid=meta.sop_class_uid,
            sop_instance_uid=meta.sop_instance_uid,
            transfer_syntax_uid=meta.transfer_syntax_uid,
            implementation_class_uid=self._implementation_class_uid,
            implementation_version_name=self._implementation_version_name,
            source_ae_title=meta.calling_ae_title or None,
        )
        writer = SpoolWriter(self, meta, instance_id, temp_path, fd, len(header))
        writer._write_raw(header)
        return writer


def dataset_sha256(path: str, offset: int) -> str:
    """Hex SHA-256 of a file's bytes from ``offset`` (the data set after the file meta) to the end.

    :param path: the Part 10 file.
    :param offset: where its data set starts.
    :returns: the hex digest (duplicate control compares it, HARDENING decision 5).
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fp:
        fp.seek(offset)
        while chunk := fp.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


class SpoolWriter:
    """One instance being received into the spool.

    Created by :meth:`Spool.begin`. Writes go straight to the page cache on
    the caller's thread (they are fast); only :meth:`commit` blocks, and it
    runs on the spool's blocking runner.

    :ivar bytes_written: data set bytes written so far (the meta header excluded).
    """

    def __init__(
        self,
        spool: Spool,
        meta: InstanceMeta,
        instance_id: str,
        temp_path: str,
        fd: int,
        header_size: int,
    ) -> None:
        self._spool = spool
        self._fs = spool.fs
        self.meta = meta
        self.instance_id = instance_id
        self.temp_path = temp_path
        self.final_path = os.path.join(spool.instances_dir, instance_id + DCM_SUFFIX)
        self._fd: int | None = fd
        self._header_size = header_size
        self._state = _State.OPEN
        self._error: OSError | None = None
        self._too_large = False
        self.bytes_written = 0

    # -- writing ---------------------------------------------------------------

    def _write_raw(self, data: bytes) -> None:
        """
        Write all of ``data``, remembering the first error instead of raising.

        After an error the temporary file is removed at once: on ENOSPC that
        frees the space for other associations (D11).

        :param data: the bytes.
        """
        if self._fd is None:
            return
        view = memoryview(data)
        try:
            while view:
                n = self._fs.write(self._fd, view)
                if n <= 0:
                    raise OSError(errno.EIO, os.strerror(errno.EIO))
                view = view[n:]
        except OSError as e:
            self._error = e
            self._spool.fault = StorageFault.from_error("write", e)
            self._remove_temp()

    def write(self, chunk: bytes) -> None:
        """
        Append data set bytes.

        Never raises: a write error is remembered and reported by
        :meth:`commit`, and later writes are dropped. A chunk that would
        take the data set past ``max_instance_size`` is not written (D10):
        the file stops at the cap and is removed.

        :param chunk: the next fragment, exactly as received.
        """
        if self._state is not _State.OPEN or self._error is not None or self._too_large:
            return
        if self.bytes_written + len(chunk) > self._spool.max_instance_size:
            self._too_large = True
            self._remove_temp()
            return
        self._write_raw(chunk)
        if self._error is None:
            self.bytes_written += len(chunk)

    # -- ending ------------------------------------------------------------------

    def commit(self) -> "Deferred[SpooledInstance]":
        """
        Make the instance durable, or refuse it.

        :returns: a Deferred firing with the :class:`SpooledInstance` once
            the file is fsynced, renamed and its directory fsynced, or
            failing with :class:`SpoolError`.
        :raises RuntimeError: if called twice or after :meth:`discard`.
        """
        if self._state is not _State.OPEN:
            raise RuntimeError(f"commit() on a {self._state.value} spool writer")
        self._state = _State.COMMITTING
        d: Deferred[SpooledInstance] = self._spool._blocking.run(self._finish)

        def done(instance: SpooledInstance) -> SpooledInstance:
            self._state = _State.COMMITTED
            return instance

        def failed(failure: object) -> object:
            self._state = _State.FAILED
            return failure

        d.addCallbacks(done, failed)
        return d

    def discard(self) -> None:
        """
        Abandon the instance: close and remove the temporary file.

        Idempotent. It does nothing while a commit runs (the commit owns the
        file then) or after a commit (a committed instance is never removed
        here; a failed commit has already cleaned up).
        """
        if self._state is _State.OPEN:
            self._state = _State.DISCARDED
            self._remove_temp()

    def _remove_temp(self) -> None:
        """Close the descriptor and unlink the temporary file, best effort."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                self._fs.close(fd)
            except OSError:
                pass
        try:
            self._fs.unlink(self.temp_path)
        except OSError:
            pass

    def _finish(self) -> SpooledInstance:
        """
        The commit itself, on the blocking runner (see the module docstring).

        :returns: the committed instance.
        :raises SpoolError: with the status to answer; files are removed.
        """
        renamed = False
        try:
            # 1. Failures already seen while receiving.
            if self._error is not None:
                raise SpoolError.out_of_resources(self._error, SpoolFailure.WRITE_FAILED)
            if self._too_large:
                raise SpoolError(
                    Status.CANNOT_UNDERSTAND,
                    f"Instance larger than {self._spool.max_instance_size} bytes",
                    SpoolFailure.TOO_LARGE,
                )
            # 2. The structure walk (reads the page cache, not the disk).
            summary = self._walk()
            # 3. The data set against the command (D05, D04).
            self._check_uids(summary)
            digest = self._digest()
            # 4. Durability, in this exact order (HARDENING decision 10).
            assert self._fd is not None
            fd, self._fd = self._fd, None
            try:
                self._fs.fsync(fd)
            finally:
                self._fs.close(fd)
            self._fs.rename(self.temp_path, self.final_path)
            renamed = True
            fsync_dir(self._spool.instances_dir, self._fs)
            # Durable: the disk works again (D12 readiness clears).
            self._spool.fault = None
            return SpooledInstance(
                instance_id=self.instance_id,
                path=self.final_path,
                size=self._header_size + self.bytes_written,
                summary=summary,
                meta=self.meta,
                sha256=digest,
                dataset_offset=self._header_size,
            )
        except OSError as e:
            self._cleanup_after_failure(renamed)
            self._spool.fault = StorageFault.from_error("commit", e)
            raise SpoolError.out_of_resources(e, SpoolFailure.NOT_DURABLE) from e
        except BaseException:
            self._cleanup_after_failure(renamed)
            raise

    def _walk(self) -> DatasetSummary:
        """
        Walk the spooled data set after the meta header.

        :returns: the summary.
        :raises SpoolError: 0xC000 if the structure is malformed.
        """
        spool = self._spool
        with open(self.temp_path, "rb") as fp:
            fp.seek(self._header_size)
            try:
                return walk_dataset(
                    fp,
                    self.meta.transfer_syntax_uid,
                    max_depth=spool.max_depth,
                    max_elements=spool.max_elements,
                    max_inflated_size=spool.max_inflated_size,
                    allow_odd_lengths=spool.allow_odd_lengths,
                )
            except MalformedDataset as e:
                raise SpoolError(
                    Status.CANNOT_UNDERSTAND, e.short_comment, SpoolFailure.MALFORMED
                ) from e

    def _digest(self) -> str:
        """
        SHA-256 of the data set bytes, read back from the page cache.

        Done here, on the blocking runner, rather than per fragment on the
        reactor thread: hashlib releases the GIL for large buffers.

        :returns: the hex digest.
        """
        return dataset_sha256(self.temp_path, self._header_size)

    def _check_uids(self, summary: DatasetSummary) -> None:
        """
        Compare the data set's SOP UIDs with the command's.

        PS3.4 B.2.3 (DCMTK storescp behaviour): a data set without SOP
        Class or Instance UID cannot be understood (0xC000, D05); one whose
        UIDs differ from the command's Affected SOP Class/Instance UID does
        not match the SOP class (0xA900, D04).

        :param summary: what the walk found.
        :raises SpoolError: on a missing or differing UID.
        """
        if not summary.sop_class_uid:
            raise SpoolError(
                Status.CANNOT_UNDERSTAND, "Data set has no SOP Class UID", SpoolFailure.MISSING_UID
            )
        if not summary.sop_instance_uid:
            raise SpoolError(
                Status.CANNOT_UNDERSTAND, "Data set has no SOP Instance UID", SpoolFailure.MISSING_UID
            )
        if summary.sop_class_uid != self.meta.sop_class_uid:
            raise SpoolError(
                Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                "SOP Class UID differs from Affected SOP Class UID",
                SpoolFailure.UID_MISMATCH,
            )
        if summary.sop_instance_uid != self.meta.sop_instance_uid:
            raise SpoolError(
                Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                "SOP Instance UID differs from Affected SOP Instance UID",
                SpoolFailure.UID_MISMATCH,
            )

    def _cleanup_after_failure(self, renamed: bool) -> None:
        """
        Remove what a failed commit leaves.

        :param renamed: whether the file already sits in ``instances/``; it
            is removed too, since it was never acknowledged (D12).
        """
        self._remove_temp()
        if renamed:
            try:
                self._fs.unlink(self.final_path)
            except OSError:
                pass
