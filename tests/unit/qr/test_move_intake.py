"""Tests for the intake's side of a relayed C-MOVE (issue 16): sub-operation C-STOREs matched in the journal.

:class:`~gateway.intake.Intake` over the memory store (its retrieve journal
included) and real spool writers, as in ``tests/unit/test_intake.py``'s
``TakeTests``; the retrieve is opened the way :mod:`gateway.qr.move` opens it.
"""

from __future__ import annotations

from typing import Any

import pydicom
from pydicom.data import get_testdata_file
from twisted.trial.unittest import SynchronousTestCase

from gateway.dimse.status import Status
from gateway.intake import Intake
from gateway.prepare import NO_MORPH
from gateway.qr import move as qrmove
from gateway.queue.commitments import Reference
from gateway.queue.interfaces import EntryState
from gateway.queue.retrieves import NewRetrieve, RetrieveState
from tests.unit import test_intake
from tests.unit.test_intake import INFO, IntakeTestsMixin

CT_SMALL_UID = str(pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False), stop_before_pixels=True).SOPInstanceUID)


class SubOperationTests(IntakeTestsMixin, SynchronousTestCase):
    """A C-STORE carrying the gateway's Move Originator AE Title and a retrieve's Message ID."""

    def setUp(self) -> None:
        """The mixin's store and intake, and a real spool for writers (as ``TakeTests``)."""
        IntakeTestsMixin.setUp(self)
        import os

        from gateway.blocking import SynchronousRunner
        from gateway.spool import Spool

        self.spool = Spool(os.path.join(self.tmp, "spool"), SynchronousRunner(), implementation_class_uid="1.2.3",
                           implementation_version_name="T", max_instance_size=1 << 26, slot_batch=4)
        self.spool.recover()
        self.spool.prepare_slots()

    def writer_for(self) -> Any:
        """A spool writer fed CT_small.dcm's data set (``TakeTests.writer_for``)."""
        return test_intake.TakeTests.writer_for(self, "CT_small.dcm")  # type: ignore[arg-type]

    def make_intake(self, store: Any) -> Intake:
        """The mixin's intake, with retrieve configured (the gateway's AE title is GW)."""
        intake = IntakeTestsMixin.make_intake(self, store)
        intake._retrieve_ae_title = lambda: "GW"
        return intake

    def open_retrieve(self, uids: tuple[str, ...] = (CT_SMALL_UID,)) -> Any:
        """Journal a relayed C-MOVE to the modality ``ws1`` expecting ``uids``."""
        new = NewRetrieve(
            kind="move", requester_ae_title="VIEWER", listener="qr", requester_message_id=7,
            destination="ws1", mode="relay", level="STUDY", sources=("archive1",),
            expected=tuple(Reference("", uid) for uid in uids), deadline=self.now + 3600,
        )
        return self.store.open_retrieve(new, self.now)

    def test_matched_sub_operation_goes_only_to_the_move_destination(self) -> None:
        """A matched instance gets exactly one entry, to move.ws1 under route 'retrieve' (no other route), and its item is linked."""
        retrieve = self.open_retrieve()
        admission = self.successResultOf(self.intake.take(self.writer_for(), INFO, ("GW", retrieve.message_id)))
        self.assertEqual(admission.status, Status.SUCCESS)
        self.assertEqual(admission.matched, (qrmove.RETRIEVE_ROUTE,))
        ((record, entries),) = self.store.find(sop_instance_uid=CT_SMALL_UID)
        self.assertEqual([(e.route, e.destination) for e in entries], [("retrieve", "move.ws1")])
        self.assertEqual(entries[0].plan_hash, NO_MORPH.plan_hash)
        self.assertEqual(self.poked, [["move.ws1"]])
        progress = self.store.progress(retrieve.retrieve_id)
        self.assertEqual((progress.remaining, progress.completed), (1, 0))

    def test_delivery_of_the_entry_completes_the_item(self) -> None:
        """Once the move.ws1 entry is delivered the retrieve's progress counts it completed."""
        retrieve = self.open_retrieve()
        self.successResultOf(self.intake.take(self.writer_for(), INFO, ("GW", retrieve.message_id)))
        ((_, (entry,)),) = self.store.find(sop_instance_uid=CT_SMALL_UID)
        self._deliver(entry)
        progress = self.store.progress(retrieve.retrieve_id)
        self.assertEqual((progress.remaining, progress.completed), (0, 1))

    def _deliver(self, entry: Any) -> None:
        """Lease and deliver one entry the way a worker does."""
        leased = self.store.lease(entry.destination, 10, self.now, 60.0)
        self.assertEqual([e.entry_id for e in leased], [entry.entry_id])
        self.store.complete([entry.entry_id], self.now)

    def test_identical_resend_is_journaled_again(self) -> None:
        """A second C-MOVE of the same instance to the same destination is sent again (no duplicate window)."""
        first = self.open_retrieve()
        self.successResultOf(self.intake.take(self.writer_for(), INFO, ("GW", first.message_id)))
        self.store.finish_retrieve(first.retrieve_id, RetrieveState.DONE, "", self.now)
        second = self.open_retrieve()
        self.successResultOf(self.intake.take(self.writer_for(), INFO, ("GW", second.message_id)))
        entries = [e for e in self.store.entries() if e.destination == "move.ws1"]
        self.assertEqual([e.state for e in entries], [EntryState.QUEUED, EntryState.QUEUED])

    def test_a_get_retrieves_instance_is_journaled_without_entry(self) -> None:
        """A C-GET relayed through a C-MOVE to the gateway: the instance is in custody, linked with no queue entry, no route applied."""
        new = NewRetrieve(
            kind="get", requester_ae_title="VIEWER", listener="qr", requester_message_id=7, destination="",
            mode="relay", level="STUDY", sources=("archive1",), expected=(Reference("", CT_SMALL_UID),), deadline=self.now + 60,
        )
        retrieve = self.store.open_retrieve(new, self.now)
        admission = self.successResultOf(self.intake.take(self.writer_for(), INFO, ("GW", retrieve.message_id)))
        self.assertEqual(admission.status, Status.SUCCESS)
        ((record, entries),) = self.store.find(sop_instance_uid=CT_SMALL_UID)
        self.assertEqual(list(entries), [])
        self.assertEqual(self.poked, [])
        self.assertEqual(self.store.progress(retrieve.retrieve_id).remaining, 1)

    def test_unmatched_message_id_is_routed_as_any_c_store(self) -> None:
        """A Move Originator Message ID no open retrieve holds: the routes apply as to any C-STORE."""
        self.open_retrieve()
        admission = self.successResultOf(self.intake.take(self.writer_for(), INFO, ("GW", 999)))
        self.assertEqual(admission.status, Status.SUCCESS)
        self.assertEqual(sorted(e.destination for e in self.store.entries()), ["folder", "pacs"])

    def test_unexpected_uid_is_routed_as_any_c_store(self) -> None:
        """The right Message ID but a SOP Instance UID the locating C-FIND did not return: not the retrieve's."""
        retrieve = self.open_retrieve(("9.9.9",))
        self.successResultOf(self.intake.take(self.writer_for(), INFO, ("GW", retrieve.message_id)))
        self.assertEqual(sorted(e.destination for e in self.store.entries()), ["folder", "pacs"])

    def test_originator_ae_title_is_not_compared(self) -> None:
        """The Message ID and an expected UID match whatever the Move Originator AE Title (pynetdicom puts the source's own there)."""
        retrieve = self.open_retrieve()
        self.successResultOf(self.intake.take(self.writer_for(), INFO, ("ARCHIVE", retrieve.message_id)))
        self.assertEqual([e.destination for e in self.store.entries()], ["move.ws1"])

    def test_without_retrieve_a_sub_operation_is_routed(self) -> None:
        """With no retrieve configured the journal is not asked: a sub-operation is an ordinary C-STORE."""
        retrieve = self.open_retrieve()
        self.intake._retrieve_ae_title = lambda: None
        self.successResultOf(self.intake.take(self.writer_for(), INFO, ("GW", retrieve.message_id)))
        self.assertEqual(sorted(e.destination for e in self.store.entries()), ["folder", "pacs"])


class OrphanRetrieveTests(IntakeTestsMixin, SynchronousTestCase):
    """:func:`gateway.qr.move.close_orphan_retrieves`: a restart ends this node's open retrieves."""

    def test_own_open_retrieves_end_failed_and_others_stay(self) -> None:
        """This node's OPEN retrieve ends FAILED (its message ID free again); another node's and a finished one are left."""
        from gateway.queue.memory import MemoryQueueStore

        new = NewRetrieve(
            kind="move", requester_ae_title="VIEWER", listener="qr", requester_message_id=7, destination="ws1",
            mode="relay", level="STUDY", sources=("archive1",), expected=(Reference("", "1.1"),), deadline=self.now + 60,
        )
        store = MemoryQueueStore(node="n1")
        mine = store.open_retrieve(new, self.now)
        done = store.open_retrieve(new, self.now)
        store.finish_retrieve(done.retrieve_id, RetrieveState.DONE, "", self.now)
        theirs = store.peer("n2").open_retrieve(new, self.now)
        self.assertEqual(qrmove.close_orphan_retrieves(store, "n1", self.now), 1)
        self.assertEqual(store.get_retrieve(mine.retrieve_id).state, RetrieveState.FAILED)
        self.assertEqual(store.get_retrieve(done.retrieve_id).state, RetrieveState.DONE)
        self.assertEqual(store.get_retrieve(theirs.retrieve_id).state, RetrieveState.OPEN)
