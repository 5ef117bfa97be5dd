"""Tests for :mod:`gateway.intake`: custody between the spool's commit and the C-STORE-RSP.

:class:`~gateway.intake.Intake` runs over the in-memory queue store (the
verified fake of the SQLite journal) and a
:class:`~gateway.blocking.SynchronousRunner`, so every Deferred it returns
has fired by the time ``admit`` returns. Spooled files are real files in a
temporary spool, so removal (journal failure) and the move to ``unrouted/``
are observed on disk. :class:`~gateway.space.SpaceGuard` runs on a
:class:`~twisted.internet.task.Clock`; :class:`~gateway.recovery.Recovery`
is given real Part 10 files (pydicom's ``CT_small.dcm``) as orphans.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from typing import Any, Callable, Sequence
from unittest import mock

import pydicom
from pydicom.data import get_testdata_file
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from gateway.blocking import SynchronousRunner
from gateway.config.schema import RouteConfig
from gateway.dimse.status import Status
from gateway.intake import Admission, Intake
from gateway.recovery import Recovery
from gateway.space import SpaceGuard
from gateway.queue.commitments import ICommitmentJournal, Unforwarded
from gateway.queue.interfaces import AddResult, EntryState, InstanceRecord, NewEntry, StoreUnavailable
from gateway.queue.memory import MemoryQueueStore
from gateway.receive import AssociationInfo
from gateway.spool import InstanceMeta, SpooledInstance
from gateway.validate import DatasetSummary

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
#: Wall-clock time the tests start at (any fixed value).
T0 = 1_700_000_000.0

INFO = AssociationInfo(
    assoc_id="A1",
    peer_address="10.0.0.7:40000",
    calling_ae_title="CT01",
    called_ae_title="DICOMGW",
    listener="dicom",
    contexts={},
)


class _FailingStore(MemoryQueueStore):
    """A journal whose ``add_instance`` fails (a full disk or a locked database)."""

    def add_instance(self, record: InstanceRecord, entries: Sequence[NewEntry], now: float, duplicate_window: float) -> AddResult:
        raise OSError(28, "database or disk is full")


class _LostCommitStore(MemoryQueueStore):
    """A journal whose commit lands but whose answer is lost (PostgreSQL: the connection dies during COMMIT).

    The one ambiguity of :class:`~gateway.queue.interfaces.StoreUnavailable`:
    the instance *is* journaled, yet the caller is told the store is away.
    """

    #: Whether the next commit's answer is lost (then the store answers again).
    lose_answer = True

    def add_instance(self, record: InstanceRecord, entries: Sequence[NewEntry], now: float, duplicate_window: float) -> AddResult:
        result = super().add_instance(record, entries, now, duplicate_window)
        if self.lose_answer:
            self.lose_answer = False
            raise StoreUnavailable("PostgreSQL at host=db: server closed the connection unexpectedly")
        return result


class _HeldRunner:
    """A store runner whose calls wait until the test releases them (a busy store thread)."""

    def __init__(self) -> None:
        self.held: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []

    def run(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.held.append((f, args, d))
        return d

    def release_one(self) -> str:
        """Run the oldest held call; return its name."""
        f, args, d = self.held.pop(0)
        try:
            result = f(*args)
        except Exception as e:
            d.errback(e)
        else:
            d.callback(result)
        return f.__name__


class IntakeTestsMixin:
    """A temporary spool, a memory store and an :class:`Intake` over them."""

    routes: list[RouteConfig]

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)  # type: ignore[attr-defined]
        self.instances_dir = os.path.join(self.tmp, "instances")
        os.makedirs(self.instances_dir)
        self.now = T0
        self.routes = [RouteConfig("everything", ("pacs", "folder"))]
        self.poked: list[list[str]] = []
        self.store = MemoryQueueStore()
        self.intake = self.make_intake(self.store)

    def make_intake(self, store: MemoryQueueStore) -> Intake:
        return Intake(
            store=store,
            store_runner=SynchronousRunner(),
            file_runner=SynchronousRunner(),
            routes=lambda: self.routes,
            wall=lambda: self.now,
            duplicate_window=3600.0,
            unrouted_dir=os.path.join(self.tmp, "unrouted"),
            on_enqueued=lambda destinations: self.poked.append(list(destinations)),
        )

    def spooled(self, instance_id: str, sop_instance_uid: str = "1.2.3.4.5", body: bytes = b"data") -> SpooledInstance:
        """Write a spool file and describe it the way the spool's commit does."""
        path = os.path.join(self.instances_dir, instance_id + ".dcm")
        with open(path, "wb") as f:
            f.write(body)
        summary = DatasetSummary(
            sop_class_uid=CT_IMAGE,
            sop_instance_uid=sop_instance_uid,
            study_instance_uid="1.2.3",
            series_instance_uid="1.2.3.1",
            modality="CT",
            element_count=5,
            pixel_data_offset=None,
            accession_number="ACC1",
            patient_id="PID1",
        )
        meta = InstanceMeta(CT_IMAGE, sop_instance_uid, EXPLICIT_LE, "CT01", "DICOMGW")
        return SpooledInstance(
            instance_id=instance_id,
            path=path,
            size=len(body),
            summary=summary,
            meta=meta,
            sha256=hashlib.sha256(body).hexdigest(),
        )

    def admit(self, spooled: SpooledInstance, intake: Intake | None = None) -> Admission:
        d = (intake or self.intake).admit(spooled, INFO)
        result: Admission = self.successResultOf(d)  # type: ignore[attr-defined]
        return result


class AdmitTests(IntakeTestsMixin, SynchronousTestCase):
    """``Intake.admit``: route, journal, answer."""

    def test_one_entry_per_route_and_destination(self) -> None:
        """Two routes over two destinations journal one QUEUED entry per (route, destination) pair."""
        self.routes = [RouteConfig("r1", ("pacs", "folder")), RouteConfig("r2", ("pacs",))]
        admission = self.admit(self.spooled("i1"))
        self.assertEqual((admission.status, admission.entries, admission.duplicates), (Status.SUCCESS, 3, ()))
        entries = self.store.entries()
        self.assertEqual(
            sorted((e.route, e.destination, e.state) for e in entries),
            [("r1", "folder", EntryState.QUEUED), ("r1", "pacs", EntryState.QUEUED), ("r2", "pacs", EntryState.QUEUED)],
        )
        self.assertEqual({e.path for e in entries}, {os.path.join(self.instances_dir, "i1.dcm")})

    def test_record_carries_header_and_association_fields(self) -> None:
        """The journal's instance record has the header's identifiers, the peer and the hash (for find and duplicates)."""
        spooled = self.spooled("i1")
        self.admit(spooled)
        ((record, _),) = self.store.find(sop_instance_uid="1.2.3.4.5")
        self.assertEqual(
            (record.instance_id, record.study_instance_uid, record.patient_id, record.accession_number),
            ("i1", "1.2.3", "PID1", "ACC1"),
        )
        self.assertEqual((record.calling_ae_title, record.source_address, record.received_at), ("CT01", "10.0.0.7:40000", T0))
        self.assertEqual(record.sha256, spooled.sha256)

    def test_new_entries_wake_their_destinations(self) -> None:
        """The destinations that got new entries are poked once, sorted."""
        self.admit(self.spooled("i1"))
        self.assertEqual(self.poked, [["folder", "pacs"]])

    def test_identical_resend_within_window_is_a_duplicate_and_not_poked(self) -> None:
        """Same SOP Instance UID and bytes within the window: DUPLICATE entries, Admission.duplicates, no wake-up."""
        self.admit(self.spooled("i1"))
        self.now += 60
        admission = self.admit(self.spooled("i2"))
        self.assertEqual(admission.status, Status.SUCCESS)
        self.assertEqual(sorted(admission.duplicates), ["folder", "pacs"])
        self.assertEqual(self.poked, [["folder", "pacs"]])
        self.assertEqual(self.intake.duplicates_total, 2)
        states = sorted(e.state.value for e in self.store.entries() if e.instance.instance_id == "i2")
        self.assertEqual(states, ["duplicate", "duplicate"])

    def test_different_bytes_are_forwarded_again(self) -> None:
        """Same SOP Instance UID with different bytes is not a duplicate: queued and poked."""
        self.admit(self.spooled("i1", body=b"one"))
        admission = self.admit(self.spooled("i2", body=b"two"))
        self.assertEqual(admission.duplicates, ())
        self.assertEqual(len(self.poked), 2)

    def test_resend_after_the_window_is_forwarded_again(self) -> None:
        """An identical re-send after the window has passed is queued again (an administrator's repair)."""
        self.admit(self.spooled("i1"))
        self.now += 3601
        admission = self.admit(self.spooled("i2"))
        self.assertEqual(admission.duplicates, ())
        self.assertEqual(len(self.poked), 2)

    def test_zero_window_disables_duplicate_control(self) -> None:
        """With a window of 0 every re-send is forwarded."""
        self.intake.duplicate_window = 0
        self.admit(self.spooled("i1"))
        self.assertEqual(self.admit(self.spooled("i2")).duplicates, ())

    def test_failing_wake_up_still_acknowledges_a_journaled_instance(self) -> None:
        """If waking a worker raises after the journal committed, the answer is still 0x0000 (custody is held)."""

        def broken(destinations: Sequence[str]) -> None:
            raise RuntimeError("worker gone")

        intake = self.make_intake(self.store)
        intake._on_enqueued = broken  # type: ignore[method-assign]
        admission = self.admit(self.spooled("i1"), intake)
        self.assertEqual((admission.status, admission.entries), (Status.SUCCESS, 2))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_journal_failure_answers_a700_and_removes_the_spooled_file(self) -> None:
        """When add_instance raises, the answer is 0xA700 (never 0x0000) and the spooled file is gone."""
        intake = self.make_intake(_FailingStore())
        spooled = self.spooled("i1")
        admission = self.admit(spooled, intake)
        self.assertEqual(admission.status, Status.OUT_OF_RESOURCES)
        self.assertNotEqual(admission.status, Status.SUCCESS)
        self.assertIn("journal", admission.comment)
        self.assertFalse(os.path.exists(spooled.path))
        self.assertEqual(self.poked, [])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_journal_failure_with_file_already_gone_still_answers_a700(self) -> None:
        """If the file cannot be removed (already gone) the answer is still 0xA700."""
        intake = self.make_intake(_FailingStore())
        spooled = self.spooled("i1")
        os.unlink(spooled.path)
        self.assertEqual(self.admit(spooled, intake).status, Status.OUT_OF_RESOURCES)
        self.flushLoggedErrors(OSError)

    def test_store_unavailable_answers_a700_and_keeps_the_spooled_file(self) -> None:
        """A StoreUnavailable may hide a commit that landed: 0xA700, and the file the journal may name is kept (issue 14).

        Were it removed, the entry committed with the lost answer would name
        a missing file, and the modality's re-send, a DUPLICATE of that entry
        within the window, would be acknowledged and never forwarded.
        """
        store = _LostCommitStore()
        intake = self.make_intake(store)
        spooled = self.spooled("i1")
        self.assertEqual(self.admit(spooled, intake).status, Status.OUT_OF_RESOURCES)
        self.assertTrue(os.path.exists(spooled.path))
        [entry] = [e for e in store.entries(destination="pacs")]
        self.assertTrue(os.path.exists(entry.path))
        # The modality sends it again (it was told 0xA700): a duplicate of the
        # journaled entry, whose file is still there to be forwarded.
        resent = self.spooled("i2")
        admission = self.admit(resent, intake)
        self.assertEqual((admission.status, admission.duplicates), (Status.SUCCESS, ("pacs", "folder")))
        self.assertEqual(store.get(entry.entry_id).state, EntryState.QUEUED)
        self.assertTrue(os.path.exists(entry.path))

    def test_no_route_moves_the_file_to_unrouted_and_acknowledges(self) -> None:
        """With no route the file moves to unrouted/, nothing is journaled, the answer is 0x0000 and it is counted."""
        self.routes = []
        spooled = self.spooled("i1")
        admission = self.admit(spooled)
        self.assertEqual((admission.status, admission.unrouted, admission.entries), (Status.SUCCESS, True, 0))
        self.assertFalse(os.path.exists(spooled.path))
        self.assertTrue(os.path.exists(os.path.join(self.tmp, "unrouted", "i1.dcm")))
        self.assertEqual(self.store.instance_ids(), set())
        self.assertEqual(self.intake.unrouted_total, 1)
        self.assertEqual(self.poked, [])

    def test_rejecting_route_answers_its_status_and_removes_the_file(self) -> None:
        """A route with ``reject: 0xA900`` answers 0xA900, journals nothing and deletes the spooled file."""
        self.routes = [RouteConfig("refuse", (), reject=0xA900), RouteConfig("r1", ("pacs",))]
        spooled = self.spooled("i1")
        admission = self.admit(spooled)
        self.assertEqual((int(admission.status), admission.entries), (0xA900, 0))
        self.assertFalse(os.path.exists(spooled.path))
        self.assertEqual(self.store.instance_ids(), set())
        self.assertEqual(self.poked, [])

    def test_dropping_route_acknowledges_and_removes_the_file(self) -> None:
        """A route with ``drop: true`` answers 0x0000, journals nothing and deletes the spooled file."""
        self.routes = [RouteConfig("discard", (), drop=True)]
        spooled = self.spooled("i1")
        admission = self.admit(spooled)
        self.assertEqual((admission.status, admission.entries), (Status.SUCCESS, 0))
        self.assertFalse(os.path.exists(spooled.path))
        self.assertEqual(self.store.instance_ids(), set())

    def test_unrouted_directory_is_fsynced_after_the_move(self) -> None:
        """The move into unrouted/ is made durable: the directory is fsynced after the rename."""
        self.routes = []
        calls: list[str] = []
        real_rename, real_fsync = os.rename, os.fsync

        def rename(src: str, dst: str) -> None:
            calls.append("rename")
            real_rename(src, dst)

        def fsync(fd: int) -> None:
            calls.append("fsync:" + ("dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file"))
            real_fsync(fd)

        with mock.patch("gateway.intake.os.rename", rename), mock.patch("gateway.intake.os.fsync", fsync):
            self.admit(self.spooled("i1"))
        self.assertEqual(calls, ["rename", "fsync:dir"])

    def test_unrouted_move_failure_answers_a700(self) -> None:
        """If the unrouted instance cannot be kept, the answer is 0xA700, not success."""
        self.routes = []
        with open(os.path.join(self.tmp, "unrouted"), "w"):
            pass  # a file where the folder should be: makedirs fails
        spooled = self.spooled("i1")
        admission = self.admit(spooled)
        self.assertEqual(admission.status, Status.OUT_OF_RESOURCES)
        self.assertIn("Not a directory", admission.comment)
        self.assertEqual(self.intake.unrouted_total, 0)
        # Never acknowledged: the file is removed at once, not left for the next start.
        self.assertFalse(os.path.exists(spooled.path))

    def test_each_entry_is_journaled_with_its_routes_plan(self) -> None:
        """A morphing route's entries carry its canonical plan; an unmorphed route's carry NO_MORPH; a later reload changes neither."""
        import yaml

        from gateway.config.morph import compile_morph
        from gateway.prepare import NO_MORPH, route_plan

        class Sink:
            def error(self, node: Any, key_path: str, message: str) -> None:
                raise AssertionError(message)

        morph = compile_morph(yaml.compose("- deidentify: basic\n"), "m", Sink())
        research = RouteConfig("research", ("folder",), morph=morph)
        self.routes = [RouteConfig("clinical", ("pacs",)), research]
        self.admit(self.spooled("i1"))
        self.routes = [RouteConfig("research", ("folder",))]
        by_route = {e.route: e.plan_hash for e in self.store.entries()}
        self.assertEqual(by_route, {"clinical": NO_MORPH.plan_hash, "research": route_plan(research).plan_hash})
        self.assertEqual(self.store.plan(by_route["research"]), morph.canonical)
        self.assertNotEqual(by_route["research"], NO_MORPH.plan_hash)

    def test_routes_are_read_at_each_admission(self) -> None:
        """A route change (reload) applies to the next instance."""
        self.admit(self.spooled("i1"))
        self.routes = [RouteConfig("new", ("other",))]
        self.admit(self.spooled("i2", sop_instance_uid="9.9"))
        self.assertEqual([e.destination for e in self.store.entries() if e.instance.instance_id == "i2"], ["other"])


class _CountingRunner(SynchronousRunner):
    """A synchronous runner that counts the jobs handed to it (each is a thread hand-off in production)."""

    def __init__(self) -> None:
        self.jobs: list[str] = []

    def run(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        self.jobs.append(getattr(f, "__name__", repr(f)))
        return super().run(f, *args, **kwargs)


class TakeTests(IntakeTestsMixin, SynchronousTestCase):
    """:meth:`Intake.take`: an instance straight from the spool's writer, routed from the walked header, in one hand-off (issue 13)."""

    def setUp(self) -> None:
        super().setUp()
        from gateway.spool import Spool

        self.spool = Spool(os.path.join(self.tmp, "spool"), SynchronousRunner(), implementation_class_uid="1.2.3",
                           implementation_version_name="T", max_instance_size=1 << 26, slot_batch=4)
        self.spool.recover()
        self.spool.prepare_slots()
        self.store_runner = _CountingRunner()
        self.file_runner = _CountingRunner()
        self.intake._store_runner = self.store_runner  # type: ignore[assignment]
        self.intake._file_runner = self.file_runner  # type: ignore[assignment]

    def writer_for(self, name: str = "CT_small.dcm") -> Any:
        """A spool writer fed a real file's data set in 4 KiB fragments."""
        path = get_testdata_file(name, download=False)
        ds = pydicom.dcmread(path)
        with open(path, "rb") as f:
            raw = f.read()
        data = raw[ds.file_meta.FileMetaInformationGroupLength + 132 + 12 :]
        meta = InstanceMeta(ds.SOPClassUID, ds.SOPInstanceUID, ds.file_meta.TransferSyntaxUID, "CT01", "DICOMGW")
        writer = self.spool.begin(meta)
        for i in range(0, len(data), 4096):
            writer.write(data[i : i + 4096])
        return writer

    def test_journaled_instance_takes_one_store_job_and_no_file_job(self) -> None:
        """Seal wait and journal run as one job on the store's thread; nothing goes to the file runner; the admission carries the durable instance."""
        admission = self.successResultOf(self.intake.take(self.writer_for(), INFO))
        self.assertEqual(admission.status, Status.SUCCESS)
        self.assertEqual(self.store_runner.jobs, ["_custody_turn"])
        self.assertEqual(self.file_runner.jobs, [])
        ((record, entries),) = self.store.find(sop_instance_uid=admission.spooled.summary.sop_instance_uid)
        self.assertEqual(record.path, admission.spooled.path)
        self.assertEqual(record.sha256, admission.spooled.sha256)
        self.assertGreater(record.dataset_offset, 128)
        self.assertEqual(sorted(e.destination for e in entries), ["folder", "pacs"])

    def test_conditions_are_evaluated_on_the_walked_header_without_reading_the_file(self) -> None:
        """A route with a condition routes from the header the walk kept: no file job, and the condition sees the data set."""
        from tests.unit.match.test_match import compile_text

        self.routes = [
            RouteConfig("ct-only", ("pacs",), match=compile_text("Modality: CT")),
            RouteConfig("mr-only", ("folder",), match=compile_text("Modality: MR")),
        ]
        admission = self.successResultOf(self.intake.take(self.writer_for(), INFO))
        self.assertEqual(admission.status, Status.SUCCESS)
        self.assertEqual(admission.matched, ("ct-only",))
        self.assertEqual(self.file_runner.jobs, [])
        self.assertEqual([e.destination for e in self.store.entries()], ["pacs"])

    def test_a_refused_instance_is_answered_from_the_seal(self) -> None:
        """A data set whose UID differs from the command's: 0xA900 from the seal, nothing journaled, no file left."""
        path = get_testdata_file("CT_small.dcm", download=False)
        ds = pydicom.dcmread(path)
        with open(path, "rb") as f:
            raw = f.read()
        writer = self.spool.begin(InstanceMeta(ds.SOPClassUID, "1.2.3.999", ds.file_meta.TransferSyntaxUID, "CT01", "GW"))
        writer.write(raw[ds.file_meta.FileMetaInformationGroupLength + 144 :])
        admission = self.successResultOf(self.intake.take(writer, INFO))
        self.assertEqual(admission.status, Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS)
        self.assertEqual(self.store.instance_ids(), set())
        self.assertFalse(os.path.exists(writer.path))


class GroupCommitTests(IntakeTestsMixin, SynchronousTestCase):
    """Journal writes that arrive while a transaction runs go together into the next one."""

    def test_waiting_writes_share_one_transaction(self) -> None:
        """Two instances arriving while the first commits are journaled by one add_instances call."""
        runner = _HeldRunner()
        intake = self.make_intake(self.store)
        intake._store_runner = runner  # type: ignore[assignment]
        first = intake.admit(self.spooled("i1"), INFO)
        second = intake.admit(self.spooled("i2", sop_instance_uid="2.2"), INFO)
        third = intake.admit(self.spooled("i3", sop_instance_uid="3.3"), INFO)
        self.assertEqual(len(runner.held), 1)
        self.assertNoResult(second)
        self.assertEqual(runner.release_one(), "_custody_turn")
        self.assertEqual(self.successResultOf(first).status, Status.SUCCESS)
        self.assertEqual(len(runner.held), 1)
        f, (batch, _, _), _ = runner.held[0]
        self.assertEqual([item.record.instance_id for item in batch], ["i2", "i3"])
        transactions: list[int] = []
        add = self.store.add_instances
        self.patch(self.store, "add_instances", lambda items, *a: transactions.append(len(items)) or add(items, *a))
        runner.release_one()
        self.assertEqual([self.successResultOf(d).status for d in (second, third)], [Status.SUCCESS, Status.SUCCESS])
        self.assertEqual(transactions, [2])
        self.assertEqual(self.store.instance_ids(), {"i1", "i2", "i3"})

    def test_one_bad_instance_does_not_fail_the_others_of_its_batch(self) -> None:
        """When a batch fails, each instance is retried alone: the good ones are acknowledged, the bad one gets 0xA700."""
        runner = _HeldRunner()
        intake = self.make_intake(self.store)
        intake._store_runner = runner  # type: ignore[assignment]
        self.store.add_instance(  # an id already on record makes i2's write fail
            InstanceRecord("i2", "/x", CT_IMAGE, "0.0", EXPLICIT_LE, 1, "h", T0, "c"), [], T0, 0
        )
        first = intake.admit(self.spooled("i1"), INFO)
        second = intake.admit(self.spooled("i2", sop_instance_uid="2.2"), INFO)
        third = intake.admit(self.spooled("i3", sop_instance_uid="3.3"), INFO)
        runner.release_one()
        self.assertEqual(runner.release_one(), "_custody_turn")  # i2 + i3 together fails, then each alone, on the same turn
        self.assertEqual(runner.held, [])
        statuses = [self.successResultOf(d).status for d in (first, second, third)]
        self.assertEqual(statuses, [Status.SUCCESS, Status.OUT_OF_RESOURCES, Status.SUCCESS])
        self.assertFalse(os.path.exists(os.path.join(self.instances_dir, "i2.dcm")))
        self.assertTrue(os.path.exists(os.path.join(self.instances_dir, "i3.dcm")))
        self.flushLoggedErrors(ValueError)


class SpaceGuardTests(SynchronousTestCase):
    """``SpaceGuard``: the spool's free-space floor with hysteresis and a cached reading."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.free = 1000
        self.reads = 0
        self.guard = SpaceGuard(self.read, self.clock, min_free=100, margin=50, interval=1.0)

    def read(self) -> int:
        self.reads += 1
        return self.free

    def check(self, free: int) -> bool:
        """Set the free space, let the cache expire, and ask."""
        self.free = free
        self.clock.advance(1.0)
        return self.guard.low()

    def test_above_floor_is_not_low(self) -> None:
        """Plenty of space: not low."""
        self.assertFalse(self.guard.low())

    def test_below_floor_is_low(self) -> None:
        """Free space under the floor: low."""
        self.assertTrue(self.check(99))

    def test_exactly_at_floor_is_not_low(self) -> None:
        """The floor itself is not below the floor."""
        self.assertFalse(self.check(100))

    def test_hysteresis_stays_low_until_above_floor_plus_margin(self) -> None:
        """Once low, back above the floor is not enough: only above floor + margin accepts again."""
        self.assertTrue(self.check(50))
        self.assertTrue(self.check(120))
        self.assertTrue(self.check(150))
        self.assertFalse(self.check(151))
        self.assertFalse(self.check(120))

    def test_reading_is_cached_for_the_interval(self) -> None:
        """statvfs is read at most once per interval; the answer changes only after it."""
        self.assertFalse(self.guard.low())
        self.free = 10
        self.clock.advance(0.5)
        self.assertFalse(self.guard.low())
        self.assertEqual(self.reads, 1)
        self.clock.advance(0.5)
        self.assertTrue(self.guard.low())
        self.assertEqual(self.reads, 2)

    def test_statvfs_failure_counts_as_low(self) -> None:
        """An OSError reading the free space is treated as no space at all."""

        def broken() -> int:
            raise OSError(5, "Input/output error")

        guard = SpaceGuard(broken, self.clock, min_free=100, margin=50)
        self.assertTrue(guard.low())


class RecoveryTests(IntakeTestsMixin, SynchronousTestCase):
    """``Recovery.recover`` and ``Recovery.clean``."""

    def setUp(self) -> None:
        super().setUp()
        self.recovery = Recovery(
            store=self.store,
            store_runner=SynchronousRunner(),
            file_runner=SynchronousRunner(),
            instances_dir=self.instances_dir,
            wall=lambda: self.now,
        )

    def recover(self) -> tuple[int, int]:
        result: tuple[int, int] = self.successResultOf(Deferred.fromCoroutine(self.recovery.recover()))
        return result

    def clean(self, keep: float, window: float = 0.0) -> int:
        removed: int = self.successResultOf(Deferred.fromCoroutine(self.recovery.clean(keep, window)))
        return removed

    def test_leased_entries_return_to_the_queue(self) -> None:
        """Entries in flight when the gateway stopped are QUEUED again and counted."""
        self.admit(self.spooled("i1"))
        leased = self.store.lease("pacs", 10, self.now, 600)
        self.assertEqual(len(leased), 1)
        self.assertEqual(self.recover(), (1, 0))
        self.assertEqual([e.state for e in self.store.entries(destination="pacs")], [EntryState.QUEUED])

    def test_file_without_journal_record_is_removed_never_routed(self) -> None:
        """A complete Part 10 file in instances/ that the journal lacks was never acknowledged: recovery deletes it, journals nothing (issue 13)."""
        source = get_testdata_file("CT_small.dcm", download=False)
        path = os.path.join(self.instances_dir, "orphan1.dcm")
        shutil.copy(source, path)
        self.assertEqual(self.recover(), (0, 1))
        self.assertFalse(os.path.exists(path))
        self.assertEqual(self.store.instance_ids(), set())
        self.assertEqual(self.poked, [])

    def test_journaled_instances_and_other_files_are_kept(self) -> None:
        """Recovery keeps the files the journal knows, and files that are not .dcm; it removes empty unused slots without counting them."""
        spooled = self.spooled("i1")
        self.admit(spooled)
        notes = os.path.join(self.instances_dir, "notes.txt")
        shutil.copy(get_testdata_file("CT_small.dcm", download=False), notes)
        slot = os.path.join(self.instances_dir, "f" * 32 + ".dcm")
        open(slot, "wb").close()
        torn = os.path.join(self.instances_dir, "torn.dcm")
        with open(torn, "wb") as f:
            f.write(b"\0" * 128 + b"DICM" + b"\x02\x00\x01\x00OB\x00\x00\x02")
        self.assertEqual(self.recover(), (0, 1))
        self.assertTrue(os.path.exists(spooled.path))
        self.assertTrue(os.path.exists(notes))
        self.assertFalse(os.path.exists(slot))
        self.assertFalse(os.path.exists(torn))
        self.assertEqual(self.recover(), (0, 0))
        self.assertEqual(self.store.instance_ids(), {"i1"})

    def test_unrouted_instances_are_outside_the_rule(self) -> None:
        """An acknowledged unrouted instance lives in unrouted/, which has no journal row and which recovery never touches."""
        self.routes = []
        intake = self.make_intake(self.store)
        spooled = self.spooled("u1")
        admission = self.successResultOf(intake.admit(spooled, INFO))
        self.assertTrue(admission.unrouted)
        kept = os.path.join(self.tmp, "unrouted", "u1.dcm")
        self.assertTrue(os.path.exists(kept))
        self.assertEqual(self.recover(), (0, 0))
        self.assertTrue(os.path.exists(kept))

    def test_clean_deletes_delivered_files_and_forgets_them_after_keep_delivered(self) -> None:
        """Delivered instances' files are deleted and their records forgotten once keep_delivered has passed."""
        spooled = self.spooled("i1")
        self.admit(spooled)
        for destination in ("pacs", "folder"):
            (entry,) = self.store.lease(destination, 10, self.now, 600)
            self.store.complete([entry.entry_id], self.now)
        self.now += 100
        self.assertEqual(self.clean(keep=200), 0)
        self.assertTrue(os.path.exists(spooled.path))
        self.now += 101
        self.assertEqual(self.clean(keep=200), 1)
        self.assertFalse(os.path.exists(spooled.path))
        self.assertEqual(self.store.instance_ids(), set())

    def test_clean_removes_the_morphed_copies_of_finished_instances_only(self) -> None:
        """The clean pass deletes a delivered instance's morphed copies with its file; a queued one's copies stay."""
        morphed = os.path.join(os.path.dirname(self.instances_dir), "morphed")
        os.makedirs(morphed, exist_ok=True)
        recovery = Recovery(store=self.store, store_runner=SynchronousRunner(),
                            file_runner=SynchronousRunner(), instances_dir=self.instances_dir,
                            wall=lambda: self.now, morphed_dir=morphed)
        self.admit(self.spooled("i1"))
        self.admit(self.spooled("i2", sop_instance_uid="7.7"))  # stays queued
        for name in ("i1.aaaa.dcm", "i1.bbbb.dcm", "i2.aaaa.dcm"):
            with open(os.path.join(morphed, name), "wb"):
                pass
        for destination in ("pacs", "folder"):
            entry = next(e for e in self.store.lease(destination, 10, self.now, 600) if e.instance.instance_id == "i1")
            self.store.complete([entry.entry_id], self.now)
        self.now += 1
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(recovery.clean(0))), 1)
        self.assertEqual(os.listdir(morphed), ["i2.aaaa.dcm"])

    def test_clean_keeps_dead_letters_and_queued_entries(self) -> None:
        """An instance with a dead letter (or anything still queued) keeps its file and record."""
        spooled = self.spooled("i1")
        self.admit(spooled)
        (pacs,) = self.store.lease("pacs", 10, self.now, 600)
        self.store.dead_letter(pacs.entry_id, "0xA900 rejected", self.now)
        (folder,) = self.store.lease("folder", 10, self.now, 600)
        self.store.complete([folder.entry_id], self.now)
        self.admit(self.spooled("i2", sop_instance_uid="7.7"))  # queued everywhere
        self.now += 10
        self.assertEqual(self.clean(keep=0), 0)
        self.assertTrue(os.path.exists(spooled.path))
        self.assertEqual(self.store.instance_ids(), {"i1", "i2"})

    def test_clean_of_a_missing_file_still_forgets_the_record(self) -> None:
        """A delivered instance whose file is already gone is forgotten (a crash between unlink and forget)."""
        spooled = self.spooled("i1")
        self.admit(spooled)
        for destination in ("pacs", "folder"):
            (entry,) = self.store.lease(destination, 10, self.now, 600)
            self.store.complete([entry.entry_id], self.now)
        os.unlink(spooled.path)
        self.now += 1
        self.assertEqual(self.clean(keep=0), 1)
        self.assertEqual(self.store.instance_ids(), set())

    def test_duplicate_control_survives_cleaning_within_the_window(self) -> None:
        """An identical re-send within the window after the original was delivered and cleaned is still a duplicate."""
        self.admit(self.spooled("i1"))
        for destination in ("pacs", "folder"):
            (entry,) = self.store.lease(destination, 10, self.now, 600)
            self.store.complete([entry.entry_id], self.now)
        self.now += 30
        self.assertEqual(self.clean(keep=0, window=3600), 1)
        self.assertEqual(os.listdir(self.instances_dir), [])
        self.now += 30
        admission = self.admit(self.spooled("i2"))
        self.assertEqual(sorted(admission.duplicates), ["folder", "pacs"])

    def test_record_is_forgotten_once_the_duplicate_window_has_passed(self) -> None:
        """After the window the cleaned instance's record goes too, and an identical re-send is forwarded."""
        self.admit(self.spooled("i1"))
        for destination in ("pacs", "folder"):
            (entry,) = self.store.lease(destination, 10, self.now, 600)
            self.store.complete([entry.entry_id], self.now)
        self.now += 1
        self.clean(keep=0, window=3600)
        self.assertEqual(self.store.instance_ids(), {"i1"})
        self.now += 3600
        self.clean(keep=0, window=3600)
        self.assertEqual(self.store.instance_ids(), set())
        self.assertEqual(self.admit(self.spooled("i2")).duplicates, ())


@implementer(ICommitmentJournal)
class _NotingStore(MemoryQueueStore):
    """A journal that keeps the Storage Commitment notes it is given (or refuses them)."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.fail = fail
        self.notes: list[tuple[Unforwarded, float]] = []

    def note_unforwarded(self, items: Sequence[Unforwarded], now: float) -> None:
        if self.fail:
            raise StoreUnavailable("PostgreSQL at host=db: connection refused")
        self.notes.extend((item, now) for item in items)


class CommitmentNoteTests(IntakeTestsMixin, SynchronousTestCase):
    """Issue 15: dropped and unrouted instances are noted for Storage Commitment before the ack."""

    def setUp(self) -> None:
        super().setUp()
        self.committing = True
        self.store = _NotingStore()
        self.intake = self.make_intake(self.store)

    def make_intake(self, store: MemoryQueueStore) -> Intake:
        return Intake(
            store=store,
            store_runner=SynchronousRunner(),
            file_runner=SynchronousRunner(),
            routes=lambda: self.routes,
            wall=lambda: self.now,
            duplicate_window=3600.0,
            unrouted_dir=os.path.join(self.tmp, "unrouted"),
            commitment=lambda: self.committing,
        )

    def test_dropped_instance_is_noted_as_dropped(self) -> None:
        """A drop route's instance is acknowledged and noted ``dropped`` with its UIDs, AE title and time."""
        self.routes = [RouteConfig("discard", (), drop=True)]
        admission = self.admit(self.spooled("i1", "1.2.3.4.9"))
        self.assertEqual((admission.status, admission.dropped), (Status.SUCCESS, True))
        [(note, now)] = self.store.notes
        self.assertEqual(
            (note.sop_class_uid, note.sop_instance_uid, note.outcome, note.received_at, note.calling_ae_title),
            (CT_IMAGE, "1.2.3.4.9", "dropped", T0, "CT01"),
        )
        self.assertIn("discard", note.reason)
        self.assertEqual(now, T0)

    def test_unrouted_instance_is_noted_as_unrouted(self) -> None:
        """An instance no route takes is kept in unrouted/, acknowledged and noted ``unrouted``."""
        self.routes = []
        admission = self.admit(self.spooled("i1", "1.2.3.4.8"))
        self.assertEqual((admission.status, admission.unrouted), (Status.SUCCESS, True))
        self.assertEqual([(n.sop_instance_uid, n.outcome) for n, _ in self.store.notes], [("1.2.3.4.8", "unrouted")])

    def test_routed_instance_is_not_noted(self) -> None:
        """A journaled instance needs no note: the journal has its record and entries."""
        self.admit(self.spooled("i1"))
        self.assertEqual(self.store.notes, [])

    def test_nothing_is_noted_without_commitment(self) -> None:
        """Without a ``commitment`` section nothing changes: no note, no store call."""
        self.committing = False
        self.routes = [RouteConfig("discard", (), drop=True)]
        self.assertEqual(self.admit(self.spooled("i1")).status, Status.SUCCESS)
        self.routes = []
        self.assertEqual(self.admit(self.spooled("i2", "1.2.3.4.6")).status, Status.SUCCESS)
        self.assertEqual(self.store.notes, [])

    def test_a_failed_note_still_acknowledges(self) -> None:
        """A note the journal refuses is logged; the C-STORE is still answered 0x0000 (then reported as never received)."""
        self.store.fail = True
        self.routes = []
        admission = self.admit(self.spooled("i1"))
        self.assertEqual((admission.status, admission.unrouted), (Status.SUCCESS, True))
        self.assertEqual(self.store.notes, [])

    def test_unrouted_move_failure_is_not_noted(self) -> None:
        """An instance answered 0xA700 (not kept) is not noted: the modality keeps it and sends it again."""
        self.routes = []
        with open(os.path.join(self.tmp, "unrouted"), "w"):
            pass
        self.assertEqual(self.admit(self.spooled("i1")).status, Status.OUT_OF_RESOURCES)
        self.assertEqual(self.store.notes, [])

    def test_note_is_written_before_the_answer(self) -> None:
        """The answer waits for the note's store call, so a commitment request right after the ack finds it."""
        runner = _HeldRunner()
        self.routes = [RouteConfig("discard", (), drop=True)]
        intake = Intake(
            store=self.store,
            store_runner=runner,
            file_runner=SynchronousRunner(),
            routes=lambda: self.routes,
            wall=lambda: self.now,
            duplicate_window=3600.0,
            unrouted_dir=os.path.join(self.tmp, "unrouted"),
            commitment=lambda: True,
        )
        d = intake.admit(self.spooled("i1"), INFO)
        self.assertNoResult(d)
        self.assertEqual(runner.release_one(), "write")
        self.assertEqual(self.successResultOf(d).status, Status.SUCCESS)
        self.assertEqual(len(self.store.notes), 1)

    def test_memory_journal_reports_the_note_as_received(self) -> None:
        """With the real (memory) journal, ``received`` then finds the dropped instance as ``dropped``, not absent."""
        store = MemoryQueueStore()
        self.intake = self.make_intake(store)
        self.routes = [RouteConfig("discard", (), drop=True)]
        self.admit(self.spooled("i1", "1.2.3.4.7"))
        [found] = store.received(["1.2.3.4.7"], since=T0 - 1)["1.2.3.4.7"]
        self.assertEqual((found.outcome, found.sop_class_uid, found.entries), ("dropped", CT_IMAGE, ()))
