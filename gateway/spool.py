"""The durable spool: C-STORE data sets into Part 10 files, durable before the acknowledgement.

The storage SCP calls :meth:`Spool.begin` when a C-STORE-RQ command arrives,
:meth:`SpoolWriter.write` for each data set fragment, then :meth:`SpoolWriter.end`
after the last one (the intake then routes and journals it, waiting for
:meth:`SpoolWriter.wait_durable` on the journal's thread), or
:meth:`SpoolWriter.commit` when nothing is journaled, and
:meth:`SpoolWriter.discard` if the association ends mid-data-set. Only a
durable instance whose journal record has committed may be answered 0x0000.

Layout under the spool root::

    instances/<uuid4 hex>.dcm    slots made ahead of time, instances written in place
                                 (<node>~<uuid4 hex>.dcm on a shared spool: the owner node first, issue 14)
    incoming/                    the readiness probe's files (and .part files of older versions)

Names are internal ids only, never anything from peer data (HARDENING D06,
decision 3). A file is the PS3.10 meta header we generate (zero preamble,
HARDENING D16; :mod:`gateway.meta`) followed by every data set byte exactly
as received.

Theory of operation (issue 13)
------------------------------
Custody order, for one instance (HARDENING decision 10, F12; the strace
test in ``tests/interop/test_forward_durability.py`` checks it)::

    ahead of time   empty slot files created, instances/ fsynced once per batch
    each fragment   write, sync_file_range(SYNC_FILE_RANGE_WRITE), SHA-256 update,
                    structure walk (the walk on the reactor, the rest on the lane)
    last fragment   walk finished, UIDs checked, routed (the intake)
    then            fdatasync(file)                       [the instance's bytes durable]
                    journal transaction (WAL, synchronous=FULL) [its record durable]
                    C-STORE-RSP 0x0000

There is no rename and no per-instance directory fsync: the slot's entry
was durable before the data arrived (:mod:`gateway.slots`), and the journal,
not the file's name, is the record of custody. A file in ``instances/``
with no journal row was never acknowledged; start-up recovery deletes it, as
it deletes a ``.part`` file (:mod:`gateway.recovery`).

Each writer has a :class:`~gateway.blocking.Lane`: the fragments are
written, handed to the disk (``sync_file_range`` starts write-back at
once, so the final ``fdatasync`` has little left to do) and hashed in
arrival order on a lane thread, while the reactor goes on reading the
network; hashlib releases the GIL. The structure walk
(:class:`gateway.validate.DatasetWalker`) runs on the reactor as each
fragment arrives: it is pure Python and holds the GIL wherever it runs, and
its result is needed on the reactor to route. Nothing reads the file again
after the last fragment.

When the last fragment has arrived, :meth:`SpoolWriter.end` finishes the
walk and checks the data set against the command, and queues the seal on
the lane: refuse if a write failed (0xA700, D11), the size cap was hit
(0xC000, D10), the walk found the data set malformed (0xC000: D01-D03, D09,
D18; pynetdicom answers 0xC210 and DCMTK 0xC000, both in the PS3.4 Table
B.2-1 "Cannot understand" range) or the SOP UIDs are missing (0xC000, D05)
or differ (0xA900, D04); otherwise ``fdatasync`` and close. Any OS failure
gives 0xA700 and never success (D12). A refused instance's file is removed,
so nothing unacknowledged stays.

Health (HARDENING D11, D12): every operating-system failure while creating,
writing or committing an instance is kept in :attr:`Spool.fault` until a
later commit, or :meth:`Spool.probe`, succeeds. Readiness reads that
attribute (no disk access per request) and runs the probe now and then, so
a fault that no store is hitting (EIO, a read-only remount, a full disk with
no traffic) still shows, and clears once the disk is back.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import uuid
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Final

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from gateway.blocking import IBlockingRunner, Lane, SynchronousLane
from gateway.dimse.status import Status
from gateway.durable import CREATE_FLAGS, FileOps, fsync_dir, replace_durably, write_all
from gateway.meta import encode_file_meta
from gateway.private import make_private_dirs
from gateway.slots import DCM_SUFFIX, SlotPool, owner_prefix
from gateway.validate import DatasetSummary, DatasetWalker, MalformedDataset

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
#: The suffix a probe file is renamed to (see :meth:`Spool.probe`).
PROBE_SUFFIX: Final = ".probe"

#: Fragments are handed to the lane in batches of at least this many bytes
#: (or at the end): each hand-off wakes a thread, which costs more CPU than
#: writing a fragment of a few KiB. 256 KiB is the default PDU size, so a
#: CT-sized instance is one or two hand-offs; memory held per association
#: stays under one batch plus one fragment.
LANE_BATCH: Final = 256 * 1024

#: The most bytes one writer may have handed to its lane and not yet written.
#: Beyond it the reactor waits for the lane (as it waited for its own writes
#: before issue 13): a disk slower than the network must not turn into memory
#: that grows with the instance (HARDENING R4, the 2 GB instance stays flat).
LANE_BACKLOG: Final = 8 * 1024 * 1024

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
    SEALING = "sealing"
    SEALED = "sealed"
    DISCARDED = "discarded"


class Spool:
    """A directory of durable instances.

    :param root: the spool directory.
    :param blocking: file work off the reactor (slot batches, the commit's wait).
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
    :param lanes: makes each writer's :class:`~gateway.blocking.Lane`; by
        default the work runs on the caller's thread. Production gives lanes
        on a thread pool of their own, never ``blocking``'s: a commit waits on
        ``blocking`` for its lane, which must not wait for the same threads.
    :param slot_batch: slot files made per folder fsync (:mod:`gateway.slots`).
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
        lanes: Callable[[], Lane] = SynchronousLane,
        slot_batch: int = 256,
        owner: str = "",
    ) -> None:
        self.root = root
        #: The node whose files this object makes, on a shared spool (issue 14); "" otherwise.
        self.owner = owner
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
        self._lanes = lanes
        self.slots = SlotPool(
            self.instances_dir, self.fs, blocking, batch=slot_batch, low_water=max(1, slot_batch // 4), prefix=owner_prefix(owner)
        )
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
        Remove the temporary files an earlier run left behind in ``incoming/``.

        Called once at start-up, before listening: a ``.part`` file (written
        by versions before issue 13) is an instance that was never
        acknowledged (HARDENING F10), so its sender saw a failure or abort and
        will send it again. Files in ``instances/`` that the journal does not
        know are :class:`gateway.recovery.Recovery`'s (it has the journal).

        On a shared spool only this node's files go (their names start with
        its :func:`~gateway.slots.owner_prefix`): another node may be probing.

        :returns: the paths removed, for the caller to log.
        """
        self._ensure_dirs()
        removed = []
        mine = owner_prefix(self.owner)
        for name in sorted(os.listdir(self.incoming_dir)):
            if not name.endswith((PART_SUFFIX, PROBE_SUFFIX)) or not name.startswith(mine):
                continue
            path = os.path.join(self.incoming_dir, name)
            try:
                self.fs.unlink(path)
            except FileNotFoundError:
                continue
            removed.append(path)
        return removed

    def prepare_slots(self) -> None:
        """Make the first batch of slot files (blocking; at start-up, after recovery, before listening).

        A failure is kept as the spool's fault (the listeners still start:
        each instance then makes its own file and syncs the folder, and
        reports its own failure).
        """
        try:
            self._ensure_dirs()
            self.slots.fill_now()
        except OSError as e:
            self.fault = StorageFault.from_error("create", e)

    def free_bytes(self) -> int:
        """
        The space left for the spool, as an unprivileged process sees it.

        :returns: ``f_bavail * f_frsize`` of the spool's filesystem.
        """
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def probe(self) -> None:
        """
        Prove the spool can commit, with the commit's own kinds of system calls (blocking; run it on a runner).

        A small file is created in ``incoming/`` (``O_EXCL | O_NOFOLLOW``),
        written, fsynced, renamed, both folders fsynced, then removed: a
        read-only filesystem, EIO on a flush or a full disk show here as
        they would on the next instance. Success clears :attr:`fault`;
        failure sets it (HARDENING D11, D12).

        :raises OSError: the spool cannot commit now.
        """
        name = owner_prefix(self.owner) + "probe-" + uuid.uuid4().hex
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
        Start receiving one instance, into the next slot file.

        :param meta: the command-side metadata.
        :returns: a writer holding the open file, meta header on its way.
        :raises SpoolError: 0xA700 if the file cannot be opened or created.
        """
        instance_id, durable_entry = self.slots.take()
        path = os.path.join(self.instances_dir, instance_id + DCM_SUFFIX)
        try:
            self._ensure_dirs()
            if durable_entry:
                fd = self.fs.open(path, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
            else:
                # Mode 0600: stored instances are never executable nor world-readable (D16).
                fd = self.fs.open(path, CREATE_FLAGS, 0o600)
        except OSError as e:
            # A slot that cannot be opened is not handed out again; recovery removes it.
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
        walker = DatasetWalker(
            meta.transfer_syntax_uid,
            max_depth=self.max_depth,
            max_elements=self.max_elements,
            max_inflated_size=self.max_inflated_size,
            allow_odd_lengths=self.allow_odd_lengths,
            start_offset=len(header),
        )
        return SpoolWriter(self, meta, instance_id, path, fd, header, walker, self._lanes(), durable_entry)


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
    """One instance being received into the spool (see the theory of operation).

    Created by :meth:`Spool.begin`. :meth:`write`, :meth:`end` and
    :meth:`discard` are called on the reactor thread and never block; the
    file work runs on the writer's lane; :meth:`wait_durable` blocks until
    the lane has sealed the instance, on any thread but the lane's.

    :ivar bytes_written: data set bytes accepted so far (the meta header excluded).
    """

    log = Logger(namespace="gateway.spool")
    _walker: Any

    def __init__(
        self,
        spool: Spool,
        meta: InstanceMeta,
        instance_id: str,
        path: str,
        fd: int,
        header: bytes,
        walker: Any,
        lane: Lane,
        durable_entry: bool,
    ) -> None:
        self._spool = spool
        self._fs = spool.fs
        self.meta = meta
        self.instance_id = instance_id
        self.path = path
        self._header_size = len(header)
        self._walker = walker
        self._lane = lane
        self._durable_entry = durable_entry
        self._state = _State.OPEN
        self._too_large = False
        self._walk_error: MalformedDataset | None = None
        self._refusal: SpoolError | None = None
        self.summary: DatasetSummary | None = None
        self.bytes_written = 0
        # Lane-side state: touched only by lane work, read after ``_sealed`` is set.
        self._fd: int | None = fd
        self._offset = 0
        self._error: OSError | None = None
        self._digest = hashlib.sha256()
        self._sealed = threading.Event()
        self._outcome: "SpooledInstance | SpoolError | None" = None
        # Reactor-side batch of fragments not yet handed to the lane (references, not copies).
        self._header: bytes | None = header
        self._batch: list[bytes] = []
        self._batched = 0
        # Bytes handed to the lane and not yet written (both threads, under the condition).
        self._backlog = 0
        self._drained = threading.Condition()

    # -- the reactor's side --------------------------------------------------------------

    def write(self, chunk: bytes) -> None:
        """
        Append data set bytes (never blocks, never raises).

        The chunk is walked here and written, handed to the disk and hashed
        on the lane. A chunk that would take the data set past
        ``max_instance_size`` is not written (D10): the file is removed and
        the seal refuses it. After a malformed structure is found nothing
        more is written (the instance will be refused).

        :param chunk: the next fragment, exactly as received.
        """
        if self._state is not _State.OPEN or self._too_large:
            return
        if self.bytes_written + len(chunk) > self._spool.max_instance_size:
            self._too_large = True
            self._drop_batch()
            self._lane.submit(self._abandon)
            return
        if self._walk_error is None:
            try:
                self._walker.feed(chunk)
            except MalformedDataset as e:
                self._walk_error = e
                self._drop_batch()
                self._lane.submit(self._abandon)
        self.bytes_written += len(chunk)
        if self._walk_error is None:
            self._batch.append(chunk)
            self._batched += len(chunk)
            if self._batched >= LANE_BATCH:
                self._hand_over()

    def _hand_over(self, then: "Callable[[], None] | None" = None) -> None:
        """Give the batched fragments (and the meta header, the first time) to the lane, with ``then`` after them."""
        header, self._header = self._header, None
        batch, self._batch, size, self._batched = self._batch, [], self._batched, 0
        with self._drained:
            # Backpressure: wait while the lane is far behind (a slow disk).
            while self._backlog > LANE_BACKLOG:
                self._drained.wait()
            self._backlog += size
        self._lane.submit(self._put_batch, header, batch, then, size)

    def _put_batch(
        self, header: bytes | None, batch: list[bytes], then: "Callable[[], None] | None", size: int = 0
    ) -> None:
        """Write the meta header (the first time) and a batch of fragments, then run ``then`` (lane)."""
        try:
            start = self._offset
            if header is not None:
                self._put(header, False)
            for chunk in batch:
                self._put(chunk, True)
            if self._fd is not None and self._offset > start:
                # One write-back request for the whole batch (issue 13).
                self._fs.start_writeback(self._fd, start, self._offset - start)
        except OSError as e:
            self._error = self._error or e
            self._spool.fault = StorageFault.from_error("write", e)
            self._remove()
        except BaseException:
            # A bug, not the disk: the instance is refused (0xA700), never lost silently.
            self.log.failure("writing a spooled instance failed unexpectedly")
            self._error = self._error or OSError(errno.EIO, "internal error while writing")
            self._remove()
        finally:
            with self._drained:
                self._backlog -= size
                self._drained.notify_all()
            if then is not None:
                # The seal always runs: the journal's thread may be waiting for it.
                then()

    def end(self) -> DatasetSummary | None:
        """
        The last fragment has arrived: finish the walk, check the data set against the command, and seal on the lane.

        :returns: the walk's summary when the instance can be routed; ``None``
            when it will be refused (:meth:`wait_durable` then raises the
            :class:`SpoolError` with the status, in the order the theory of
            operation gives).
        :raises RuntimeError: if called twice or after :meth:`discard`.
        """
        if self._state is not _State.OPEN:
            raise RuntimeError(f"end() on a {self._state.value} spool writer")
        self._state = _State.SEALING
        if not self._too_large and self._walk_error is None:
            try:
                self.summary = self._walker.finish()
            except MalformedDataset as e:
                self._walk_error = e
        if self.summary is not None:
            try:
                self._check_uids(self.summary)
            except SpoolError as e:
                self._refusal = e
                self.summary = None
        self._walker = None
        if self._walk_error is None and not self._too_large:
            self._hand_over(self._seal)
        else:
            self._lane.submit(self._seal)
        return self.summary

    def commit(self) -> "Deferred[SpooledInstance]":
        """
        End the instance and wait for it to be durable (nothing journaled: the network-core configuration).

        :returns: a Deferred firing with the :class:`SpooledInstance` once it
            is durable, or failing with :class:`SpoolError`.
        """
        self.end()
        return self._spool._blocking.run(self.wait_durable)

    def discard(self) -> None:
        """
        Abandon the instance: close and remove its file (on the lane, after the writes queued).

        Idempotent. It does nothing once :meth:`end` was called: the seal owns
        the file then (a refused instance's file is removed by the seal; an
        accepted one is the intake's).
        """
        if self._state is _State.OPEN:
            self._state = _State.DISCARDED
            self._drop_batch()
            self._lane.submit(self._abandon)

    def _drop_batch(self) -> None:
        """Forget the meta header and the fragments not handed over: the instance will not be kept."""
        self._batch, self._batched, self._header = [], 0, None

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

    @property
    def backlog(self) -> int:
        """Bytes handed to the lane and not yet written, plus those batched on the reactor (issue 17).

        The STOW-RS service pauses reading its client while this is large,
        so a disk slower than the network holds the client back (TCP
        back-pressure) instead of blocking the reactor in :meth:`_hand_over`.
        """
        with self._drained:
            return self._backlog + self._batched

    def wait_drained(self, limit: int) -> None:
        """Block until at most ``limit`` bytes wait for the lane (never on the reactor thread; issue 17).

        :param limit: the backlog to wait for.
        """
        with self._drained:
            while self._backlog > limit and not self._sealed.is_set():
                self._drained.wait(1.0)

    # -- any thread but the lane's ---------------------------------------------------------

    def wait_durable(self) -> "SpooledInstance":
        """
        Block until the lane has sealed the instance (blocking: never on the reactor thread).

        :returns: the durable instance (data and size flushed).
        :raises SpoolError: the instance was refused or could not be made durable.
        """
        self._sealed.wait()
        outcome = self._outcome
        if isinstance(outcome, SpoolError):
            raise outcome
        assert outcome is not None
        return outcome

    @property
    def sealed(self) -> bool:
        """Whether the seal has finished (with either outcome)."""
        return self._sealed.is_set()

    # -- the lane's side -------------------------------------------------------------------

    def _put(self, data: bytes, dataset: bool) -> None:
        """Write ``data`` at the end of the file and hash it (lane; its batch starts the write-back).

        The first error is remembered and the file removed at once: on ENOSPC
        that frees the space for other associations (D11).
        """
        fd = self._fd
        if fd is None:
            return
        fs = self._fs
        view = memoryview(data)
        start = self._offset
        try:
            while view:
                n = fs.write(fd, view)
                if n <= 0:
                    raise OSError(errno.EIO, os.strerror(errno.EIO))
                view = view[n:]
            self._offset = start + len(data)
        except OSError as e:
            self._error = e
            self._spool.fault = StorageFault.from_error("write", e)
            self._remove()
            return
        if dataset:
            self._digest.update(data)

    def _abandon(self) -> None:
        """Close and remove the file (lane): the instance is discarded or will be refused."""
        self._remove()

    def _remove(self) -> None:
        """Close the descriptor and unlink the file, best effort (lane)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                self._fs.close(fd)
            except OSError:
                pass
        try:
            self._fs.unlink(self.path)
        except OSError:
            pass

    def _seal(self) -> None:
        """Refuse the instance or make it durable: the last work on the lane (see the theory of operation)."""
        try:
            self._outcome = self._sealed_instance()
        except SpoolError as e:
            self._remove()
            self._outcome = e
        except OSError as e:
            self._remove()
            self._spool.fault = StorageFault.from_error("commit", e)
            self._outcome = SpoolError.out_of_resources(e, SpoolFailure.NOT_DURABLE)
        except BaseException:
            self._remove()
            self.log.failure("sealing a spooled instance failed unexpectedly")
            self._outcome = SpoolError(Status.OUT_OF_RESOURCES, "internal error while storing", SpoolFailure.NOT_DURABLE)
        finally:
            self._state = _State.SEALED
            self._sealed.set()

    def _sealed_instance(self) -> "SpooledInstance":
        """The checks, then fdatasync (lane).

        :raises SpoolError: with the status to answer.
        :raises OSError: from the flush.
        """
        # 1. Failures already seen while receiving, in this order.
        if self._error is not None:
            raise SpoolError.out_of_resources(self._error, SpoolFailure.WRITE_FAILED)
        if self._too_large:
            raise SpoolError(
                Status.CANNOT_UNDERSTAND,
                f"Instance larger than {self._spool.max_instance_size} bytes",
                SpoolFailure.TOO_LARGE,
            )
        if self._walk_error is not None:
            raise SpoolError(Status.CANNOT_UNDERSTAND, self._walk_error.short_comment, SpoolFailure.MALFORMED)
        if self._refusal is not None:
            raise self._refusal
        assert self.summary is not None and self._fd is not None
        # 2. Durability: the data and the size that addresses it (issue 13).
        fd, self._fd = self._fd, None
        try:
            self._fs.fdatasync(fd)
        finally:
            self._fs.close(fd)
        if not self._durable_entry:
            # No slot was ready: this file's entry is new, make it durable too.
            fsync_dir(self._spool.instances_dir, self._fs)
        # Durable: the disk works again (D12 readiness clears).
        self._spool.fault = None
        return SpooledInstance(
            instance_id=self.instance_id,
            path=self.path,
            size=self._header_size + self.bytes_written,
            summary=self.summary,
            meta=self.meta,
            sha256=self._digest.hexdigest(),
            dataset_offset=self._header_size,
        )
