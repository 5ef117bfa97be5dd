"""The forwarder notes the copies an archive will commit (issue 15, ``storage_commitment: true``).

The worker of :mod:`tests.adapters.test_forward` (memory store, synchronous
runners, ``task.Clock``, scripted peer), with a store that records its
:meth:`~gateway.queue.commitments.ICommitmentJournal.note_copies` calls in
order with its ``settle`` calls, and can refuse them like a full disk.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import pydicom
from pydicom.uid import ExplicitVRLittleEndian

from twisted.internet.defer import succeed
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from gateway.blocking import SynchronousRunner
from gateway.forward import DestinationWorker, JournalRefused
from gateway.queue.commitments import CopyState, ICommitmentJournal
from gateway.morph import plan_hash
from gateway.prepare import CopyMaker
from gateway.queue.interfaces import EntryState, NewEntry, PlanRecord, Settled
from gateway.queue.memory import MemoryQueueStore
from tests.adapters.test_forward import CT, FakePeer, WorkerTestsMixin
from tests.support.datasets import write_instance
from tests.unit.morph.helpers import plan_of
from tests.unit.queue.test_store import make_record


@implementer(ICommitmentJournal)
class NotingStore(MemoryQueueStore):
    """The memory store, recording ``note_copies`` and ``settle`` in call order; ``refuse`` fails the notes."""

    def __init__(self) -> None:
        super().__init__()
        #: ("note", copies) and ("settle", delivered entry ids), in call order.
        self.calls: list[tuple[str, Any]] = []
        self.noted: list[tuple[int, str, str, str]] = []
        self.refuse = False

    def note_copies(self, copies: Sequence[tuple[int, str, str, str]], now: float) -> None:
        """Record the copies (or fail as a full disk does)."""
        self.calls.append(("note", list(copies)))
        if self.refuse:
            raise OSError(28, "No space left on device")
        self.noted.extend(copies)
        super().note_copies(copies, now)

    def settle(self, destination: str, delivered: Sequence[tuple[int, str]], *args: Any, **kwargs: Any) -> Settled:
        """Record which deliveries the turn writes, then settle."""
        if delivered:
            self.calls.append(("settle", [entry_id for entry_id, _ in delivered]))
        return super().settle(destination, delivered, *args, **kwargs)


class NoteCopiesTests(WorkerTestsMixin, SynchronousTestCase):
    """Delivered copies of a ``storage_commitment`` destination are noted before their delivery is written."""

    def setUp(self) -> None:
        WorkerTestsMixin.setUp(self)
        self.store = NotingStore()

    def test_delivered_copies_are_noted_before_their_deliveries_are_written(self) -> None:
        """Three deliveries: one note of the three copies (entry, destination, class, UID), then the settle that writes them."""
        records = [self.instance() for _ in range(3)]
        ids = [self.enqueue(r)[0] for r in records]
        self.worker(self.destination(storage_commitment=True), FakePeer())
        self.assertEqual(set(self.states().values()), {EntryState.DELIVERED})
        self.assertEqual(
            self.store.calls,
            [
                ("note", [(i, "archive", CT, r.sop_instance_uid) for i, r in zip(ids, records)]),
                ("settle", ids),
            ],
        )

    def test_a_remapped_copy_is_noted_with_the_uids_it_was_sent_under(self) -> None:
        """A route's copy with another SOP Instance UID: the note carries the UID the archive received, not the received one."""
        original = self.instance()
        copy = self.instance()  # the morphed copy: its own file, its own UID
        self.store.forget_instance(copy.instance_id)
        (entry_id,) = self.enqueue(original)

        def prepare(entry: Any) -> Any:
            # As gateway.prepare.CopyMaker does: the record follows the copy (path and UIDs).
            return succeed(
                dataclasses.replace(
                    entry,
                    path=copy.path,
                    instance=dataclasses.replace(entry.instance, path=copy.path, sop_instance_uid=copy.sop_instance_uid),
                )
            )

        peer = FakePeer()
        self.worker(self.destination(storage_commitment=True), peer, prepare=prepare)
        self.assertNotEqual(original.sop_instance_uid, copy.sop_instance_uid)
        self.assertEqual(peer.uids(), [copy.sop_instance_uid])
        self.assertEqual(self.store.noted, [(entry_id, "archive", CT, copy.sop_instance_uid)])
        # What the archive committer will ask about: the copy as sent.
        (pending,) = self.store.pending_copies("archive", self.clock.seconds(), 600.0, 10)
        self.assertEqual((pending.entry_id, pending.sop_instance_uid, pending.state), (entry_id, copy.sop_instance_uid, CopyState.PENDING))

    def test_a_refused_note_keeps_the_deliveries_and_the_turn_is_retried(self) -> None:
        """The note refused (ENOSPC): nothing is written or announced, nothing more is sent; later each copy is noted and delivered once."""
        records = [self.instance() for _ in range(2)]
        ids = [self.enqueue(r)[0] for r in records]
        self.store.refuse = True
        peer = FakePeer()
        worker = self.worker(self.destination(storage_commitment=True), peer)
        self.assertEqual(peer.uids(), [r.sop_instance_uid for r in records])
        self.assertEqual(set(self.states().values()), {EntryState.LEASED}, "a delivery written without its note")
        self.assertEqual(self.observer.kinds("delivered"), [])
        self.assertIn("No space left", worker.status().journal_error)
        later = self.instance()
        self.enqueue(later)
        worker.poke()
        self.clock.advance(5)
        self.assertEqual(peer.uids(), [r.sop_instance_uid for r in records], "sent while the note was refused")
        self.store.refuse = False
        for _ in range(3):
            self.clock.advance(1)
        self.assertEqual(peer.uids(), [r.sop_instance_uid for r in records + [later]])
        self.assertEqual(set(self.states().values()), {EntryState.DELIVERED})
        self.assertEqual(sorted(n[0] for n in self.store.noted), sorted(ids + [ids[-1] + 1]))
        self.assertEqual(len(self.observer.kinds("delivered")), 3)
        self.assertTrue(self.flushLoggedErrors(JournalRefused))
        self.flushLoggedErrors(OSError)

    def test_a_destination_that_does_not_commit_notes_nothing(self) -> None:
        """Without storage_commitment the worker makes no note call at all."""
        record = self.instance()
        self.enqueue(record)
        self.worker(self.destination(), FakePeer())
        self.assertEqual(self.states(), {record.sop_instance_uid: EntryState.DELIVERED})
        self.assertEqual([kind for kind, _ in self.store.calls], ["settle"])

    def test_the_committer_is_poked_once_the_noted_deliveries_are_written(self) -> None:
        """on_noted is called after the turn that wrote noted deliveries (then the copies are pending), not before, not when idle."""
        pokes: list[int] = []
        peer = FakePeer()
        worker = self.worker(self.destination(storage_commitment=True), peer)
        worker.on_noted = lambda: pokes.append(len(self.store.pending_copies("archive", self.clock.seconds(), 600.0, 10)))
        self.clock.advance(3)
        self.assertEqual(pokes, [], "poked without a delivery")
        for _ in range(2):
            self.enqueue(self.instance())
        worker.poke()
        self.assertEqual(set(self.states().values()), {EntryState.DELIVERED})
        self.assertEqual(pokes, [2])

    def test_a_store_without_a_commitment_journal_is_refused_at_construction(self) -> None:
        """storage_commitment on a store that keeps no commitment journal: a TypeError naming the destination, before any send."""

        class NoJournal:
            """A queue store object that provides no ICommitmentJournal."""

            node = "node"

        with self.assertRaises(TypeError) as caught:
            DestinationWorker(
                self.destination(storage_commitment=True), NoJournal(), SynchronousRunner(), SynchronousRunner(), self.clock  # type: ignore[arg-type]
            )
        self.assertIn("destination archive has storage_commitment", str(caught.exception))

    def test_a_copy_deidentified_by_its_route_is_noted_under_its_new_uid(self) -> None:
        """The real CopyMaker with a route's 'deidentify: basic' (new UIDs): the archive receives and the note names the copy's UID."""
        source = write_instance(Path(self.tmp) / "src.dcm", ExplicitVRLittleEndian, 1024, seed=5)
        received_uid = str(pydicom.dcmread(source).SOPInstanceUID)
        morph = plan_of("- deidentify: basic\n")
        plan = PlanRecord(plan_hash(morph.canonical), morph.canonical)
        record = make_record("src", path=str(source), sop_instance_uid=received_uid,
                             sop_class_uid=str(pydicom.dcmread(source).SOPClassUID))
        (entry_id,) = self.store.add_instance(record, [NewEntry("research", "archive", plan=plan)], self.clock.seconds(), 0.0).entry_ids
        maker = CopyMaker(
            lambda digest: SynchronousRunner().run(self.store.plan, digest),
            lambda: {},
            SynchronousRunner(),
            os.path.join(self.tmp, "morphed"),
        )
        peer = FakePeer()
        self.worker(self.destination(storage_commitment=True), peer, prepare=maker)
        (sent_uid,) = peer.uids()
        self.assertNotEqual(sent_uid, received_uid, "the route did not remap the UID")
        self.assertEqual(self.store.noted, [(entry_id, "archive", record.sop_class_uid, sent_uid)])
