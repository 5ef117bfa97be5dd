"""The forwarder (:class:`gateway.forward.DestinationWorker`) against scripted destinations.

The worker runs against the in-memory queue store, synchronous runners and a
``task.Clock``. Its ``connect`` is a fake that returns scripted
``ClientAssociation``-like objects (a status per SOP Instance UID, aborts
before or after the data went out, rejections, refused connections, a peer
that never answers); one test uses the real requestor over an in-memory
loopback to our own acceptor. Real-peer interop (DCMTK, pynetdicom) is in
``tests/interop``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase

from gateway.associate import (
    AssociationAborted,
    AssociationRejected,
    ClientAssociation,
    NoPresentationContext,
    RequestorProtocol,
    StoreResult,
    read_part10_header,
)
from gateway.blocking import SynchronousRunner
from gateway.config.schema import CircuitConfig, DicomDestination, FolderDestination, RetryConfig
from gateway.forward import DestinationWorker, ForwardObserver, Proposals, proposals_for
from gateway.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from gateway.queue.interfaces import Entry, EntryState, InstanceRecord, NewEntry, Settled
from gateway.queue.memory import MemoryQueueStore
from gateway.sopclasses import EXPLICIT_VR_LE, IMPLICIT_VR_LE, VERIFICATION_SOP_CLASS
from gateway.ul import pdu
from gateway.ul.negotiate import AcceptedContext, build_request
from tests.adapters.loopback import Loopback
from tests.adapters.test_listen import AcceptorTestsMixin

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"

#: No jitter, so backoff delays are exact: 1, 2, 4, ... seconds.
RETRY = RetryConfig(initial_delay=1.0, max_delay=60.0, multiplier=2.0, jitter=0.2)


def neutral() -> float:
    """rand() giving no jitter."""
    return 0.5


class Recorder(ForwardObserver):
    """Observer that records every event."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def delivered(self, entry: Entry, duration: float, warning: str) -> None:
        self.events.append(("delivered", entry.instance.sop_instance_uid, warning))

    def retried(self, entry: Entry, reason: str) -> None:
        self.events.append(("retried", entry.instance.sop_instance_uid, reason))

    def dead_lettered(self, entry: Entry, reason: str) -> None:
        self.events.append(("dead", entry.instance.sop_instance_uid, reason))

    def destination_down(self, name: str, reason: str, permanent: bool) -> None:
        self.events.append(("down", name, permanent))

    def destination_up(self, name: str) -> None:
        self.events.append(("up", name))

    def redelivered(self, entry: Entry) -> None:
        self.events.append(("redelivered", entry.instance.sop_instance_uid))

    def kinds(self, kind: str) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == kind]


class FakeAssociation:
    """A ClientAssociation stand-in driven by its :class:`FakePeer`'s script."""

    def __init__(self, peer: "FakePeer", contexts: dict[int, AcceptedContext]) -> None:
        self.peer = peer
        self.contexts = contexts
        self.open = True
        self.pending: Deferred[None] | None = None
        self.number = len(peer.associations)

    @property
    def is_open(self) -> bool:
        return self.open

    def context_for(self, sop: str, ts: str) -> AcceptedContext | None:
        return next((c for c in self.contexts.values() if c.abstract_syntax == sop and c.transfer_syntax == ts), None)

    async def echo(self) -> int:
        return 0

    async def store(self, path: str, known: Any = None, zero_copy: bool = True) -> StoreResult:
        self.peer.known.append(known)
        if self.peer.delay:
            # The destination takes this long to answer (on the test's clock).
            await deferLater(self.peer.clock, self.peer.delay, lambda: None)
        header = read_part10_header(path)
        if self.context_for(header.sop_class_uid, header.transfer_syntax_uid) is None:
            raise NoPresentationContext("no context")
        if not self.open:
            raise AssociationAborted("association is not open")
        script = self.peer.script.get(header.sop_instance_uid, [])
        action: Any = script.pop(0) if script else 0
        if action == "abort-before":
            self.open = False
            raise AssociationAborted("association ended while sending")
        self.peer.received.append((header.sop_instance_uid, header.transfer_syntax_uid, self.number))
        if action == "abort-after":
            self.open = False
            raise AssociationAborted("transport connection closed")
        if action == "hang":
            self.pending = Deferred()
            await self.pending
        return StoreResult(int(action), header.sop_class_uid, header.sop_instance_uid, header.size)

    def release(self) -> Deferred[None]:
        self.open = False
        self.peer.released += 1
        return succeed(None)

    def abort(self) -> None:
        self.open = False
        if self.pending is not None and not self.pending.called:
            self.pending.errback(AssociationAborted("aborted by us"))


class FakePeer:
    """A scripted destination: what it accepts, how it fails, what it received."""

    def __init__(self) -> None:
        self.script: dict[str, list[Any]] = {}
        self.refuse: Exception | None = None
        self.rejected_sop_classes: set[str] = set()
        self.syntaxes: set[str] | None = None
        self.received: list[tuple[str, str, int]] = []
        self.associations: list[FakeAssociation] = []
        self.proposals: list[Proposals] = []
        self.released = 0
        self.hang_connect = False
        #: The header the sender passed with each C-STORE.
        self.known: list[Any] = []
        #: Seconds each C-STORE takes to be answered, on ``clock`` (0: at once).
        self.delay = 0.0
        self.clock: Any = None

    def connect(self, destination: DicomDestination, proposals: Proposals) -> Deferred[ClientAssociation]:
        self.proposals.append(proposals)
        if self.refuse is not None:
            return fail(self.refuse)
        if self.hang_connect:
            return Deferred()
        contexts: dict[int, AcceptedContext] = {}
        for i, (sop, syntaxes) in enumerate(proposals):
            if sop in self.rejected_sop_classes:
                continue
            chosen = next((ts for ts in syntaxes if self.syntaxes is None or ts in self.syntaxes), None)
            if chosen is not None:
                contexts[2 * i + 1] = AcceptedContext(2 * i + 1, sop, chosen, True, False)
        association = FakeAssociation(self, contexts)
        self.associations.append(association)
        return succeed(association)  # type: ignore[arg-type]

    def uids(self) -> list[str]:
        return [uid for uid, _, _ in self.received]


class WorkerTestsMixin:
    """A temporary folder of instances, a memory store and a clock."""

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)  # type: ignore[attr-defined]
        self.clock = Clock()
        self.store = MemoryQueueStore()
        self.observer = Recorder()
        self.count = 0
        #: Added to the wall clock the worker reads, to step it (HARDENING F19).
        self.wall_offset = 0.0

    def instance(self, *, study: str = "1.2.3", sop_class: str = CT, ts: str = EXPLICIT_VR_LE, sop_uid: str | None = None) -> InstanceRecord:
        """Write a small Part 10 file and return its record."""
        self.count += 1
        uid = sop_uid or f"1.2.3.4.{self.count}"
        ds = Dataset()
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = uid
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = study + ".1"
        ds.PatientID = "P1"
        ds.Rows = 2
        ds.Columns = 2
        ds.BitsAllocated = 16
        ds.PixelData = b"\x01\x02\x03\x04\x05\x06\x07\x08"
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.3.4.{self.count}"
        ds.file_meta.TransferSyntaxUID = ts
        path = os.path.join(self.tmp, f"i{self.count}.dcm")
        if ts == JPEG_BASELINE:
            del ds.PixelData  # a stand-in: only the file meta matters to the worker
        ds.save_as(path, enforce_file_format=True)
        return InstanceRecord(
            instance_id=f"i{self.count}",
            path=path,
            sop_class_uid=sop_class,
            sop_instance_uid=uid,
            transfer_syntax_uid=ts,
            size=os.path.getsize(path),
            sha256=f"{self.count:064x}",
            received_at=self.clock.seconds(),
            correlation_id=f"c{self.count}",
            study_instance_uid=study,
            series_instance_uid=study + ".1",
            patient_id="P1",
        )

    def enqueue(self, record: InstanceRecord, *destinations: str) -> list[int]:
        """Journal the instance with one entry per destination."""
        result = self.store.add_instance(
            record, [NewEntry("everything", d) for d in destinations or ("archive",)], self.clock.seconds(), 0.0
        )
        return list(result.entry_ids)

    def destination(self, **overrides: Any) -> DicomDestination:
        """The DICOM destination ``archive`` with test-friendly settings."""
        base = DicomDestination(
            name="archive",
            ae_title="ARCHIVE",
            host="127.0.0.1",
            port=11113,
            calling_ae_title="DICOMGW",
            batch_size=10,
            retry=RETRY,
            circuit=CircuitConfig(failures=3),
        )
        return dataclasses.replace(base, **overrides)

    def worker(
        self,
        config: DicomDestination | FolderDestination,
        peer: FakePeer | None = None,
        prepare: Any = None,
        cleanup: bool = True,
    ) -> DestinationWorker:
        """A started worker; stopped at cleanup (unless ``cleanup`` is false: a test that crashes it)."""
        worker = DestinationWorker(
            config,
            self.store,
            SynchronousRunner(),
            SynchronousRunner(),
            self.clock,
            connect=peer.connect if peer is not None else None,
            rand=neutral,
            observer=self.observer,
            wall=lambda: self.clock.seconds() + self.wall_offset,
            monotonic=self.clock.seconds,
            scratch_dir=self.tmp,
            prepare=prepare,
        )
        worker.startService()
        if cleanup:
            self.addCleanup(self.stop, worker)  # type: ignore[attr-defined]
        return worker

    def stop(self, worker: DestinationWorker) -> None:
        if worker.running:
            d = worker.stopService()
            self.clock.advance(worker.grace)
            self.successResultOf(d)  # type: ignore[attr-defined]

    def states(self, destination: str = "archive") -> dict[str, EntryState]:
        """SOP Instance UID -> state of its entry for ``destination``."""
        return {e.instance.sop_instance_uid: e.state for e in self.store.entries(destination)}


class DicomWorkerTests(WorkerTestsMixin, SynchronousTestCase):
    """A DICOM destination driven by a scripted fake peer."""

    def test_delivers_oldest_first(self) -> None:
        """Five queued instances are sent in the order they were enqueued, on one association."""
        records = [self.instance() for _ in range(5)]
        for record in records:
            self.enqueue(record)
        peer = FakePeer()
        self.worker(self.destination(), peer)
        self.assertEqual(peer.uids(), [r.sop_instance_uid for r in records])
        self.assertEqual(set(self.states().values()), {EntryState.DELIVERED})
        self.assertEqual(len(peer.associations), 1)

    def test_poke_wakes_an_idle_worker(self) -> None:
        """An instance enqueued after start is sent at poke(), without waiting for the poll."""
        peer = FakePeer()
        worker = self.worker(self.destination(), peer)
        record = self.instance()
        self.enqueue(record)
        self.assertEqual(peer.uids(), [])
        worker.poke()
        self.assertEqual(peer.uids(), [record.sop_instance_uid])

    def test_polls_the_store_for_changes_made_elsewhere(self) -> None:
        """Without poke(), an entry added by another process is sent within the 1 s poll."""
        peer = FakePeer()
        self.worker(self.destination(), peer)
        record = self.instance()
        self.enqueue(record)
        self.clock.advance(1.0)
        self.assertEqual(peer.uids(), [record.sop_instance_uid])

    def test_fan_out_destinations_are_independent(self) -> None:
        """With one destination refusing connections, the other still delivers everything."""
        records = [self.instance() for _ in range(3)]
        for record in records:
            self.enqueue(record, "archive", "backup")
        down, up = FakePeer(), FakePeer()
        down.refuse = ConnectionRefusedError()
        self.worker(self.destination(), down)
        self.worker(self.destination(name="backup"), up)
        self.clock.advance(10)
        self.assertEqual(up.uids(), [r.sop_instance_uid for r in records])
        self.assertEqual(set(self.states("backup").values()), {EntryState.DELIVERED})
        self.assertEqual(set(self.states("archive").values()), {EntryState.QUEUED})
        self.assertEqual(self.observer.kinds("dead"), [])

    def test_out_of_resources_then_success_is_delivered_after_backoff(self) -> None:
        """0xA700 twice, then 0x0000: retried after 1 s then 2 s, and delivered with two counted attempts."""
        record = self.instance()
        (entry_id,) = self.enqueue(record)
        peer = FakePeer()
        peer.script[record.sop_instance_uid] = [0xA700, 0xA700, 0]
        self.worker(self.destination(), peer)
        self.assertEqual(len(peer.received), 1)
        self.clock.advance(0.99)
        self.assertEqual(len(peer.received), 1)
        self.clock.advance(0.01)
        self.assertEqual(len(peer.received), 2)
        self.clock.advance(1.99)
        self.assertEqual(len(peer.received), 2)
        self.clock.advance(0.01)
        self.assertEqual(len(peer.received), 3)
        entry = self.store.get(entry_id)
        self.assertEqual(entry.state, EntryState.DELIVERED)
        self.assertEqual(entry.attempts, 2)
        self.assertEqual(len(self.observer.kinds("retried")), 2)
        self.assertEqual(self.observer.kinds("redelivered"), [])

    def retry_in_20s_then_step(self, step: float) -> tuple[FakePeer, int]:
        """One 0xA700 schedules a retry 20 s ahead; then the wall clock steps by ``step``."""
        record = self.instance()
        (entry_id,) = self.enqueue(record)
        peer = FakePeer()
        peer.script[record.sop_instance_uid] = [0xA700, 0]
        self.worker(self.destination(retry=dataclasses.replace(RETRY, initial_delay=20.0, jitter=0.0)), peer)
        self.assertEqual(len(peer.received), 1)
        self.wall_offset = step
        return peer, entry_id

    def test_wall_clock_step_back_does_not_stall_a_retry(self) -> None:
        """F19: after the wall clock steps back 1 h, a retry due in 20 s is still sent after 20 s."""
        peer, entry_id = self.retry_in_20s_then_step(-3600.0)
        for _ in range(19):
            self.clock.advance(1.0)
        self.assertEqual(len(peer.received), 1)
        self.clock.advance(1.0)
        self.assertEqual(len(peer.received), 2)
        self.assertEqual(self.store.get(entry_id).state, EntryState.DELIVERED)

    def test_wall_clock_step_forward_does_not_fire_a_retry_early(self) -> None:
        """F19: after the wall clock steps forward 1 h, a retry due in 20 s is not sent at once."""
        peer, entry_id = self.retry_in_20s_then_step(3600.0)
        for _ in range(19):
            self.clock.advance(1.0)
        self.assertEqual(len(peer.received), 1)
        self.clock.advance(1.0)
        self.assertEqual(len(peer.received), 2)
        self.assertEqual(self.store.get(entry_id).state, EntryState.DELIVERED)

    def test_retry_scheduled_far_ahead_before_a_restart_is_capped_at_max_delay(self) -> None:
        """F19: a due time beyond max_delay (the clock stepped back while stopped) is pulled in at start."""
        record = self.instance()
        (entry_id,) = self.enqueue(record)
        self.store.lease("archive", 1, self.clock.seconds(), 30)
        self.store.retry(entry_id, self.clock.seconds() + 3600, "stepped", self.clock.seconds())
        peer = FakePeer()
        self.worker(self.destination(), peer)
        self.assertEqual(self.store.get(entry_id).next_attempt_at, self.clock.seconds() + RETRY.max_delay)
        self.clock.pump([1.0] * int(RETRY.max_delay))
        self.assertEqual(peer.uids(), [record.sop_instance_uid])

    def test_warning_status_counts_as_delivered(self) -> None:
        """0xB000 is delivered, with the warning passed to the observer."""
        record = self.instance()
        self.enqueue(record)
        peer = FakePeer()
        peer.script[record.sop_instance_uid] = [0xB000]
        self.worker(self.destination(), peer)
        self.assertEqual(self.states(), {record.sop_instance_uid: EntryState.DELIVERED})
        self.assertIn("0xB000", self.observer.kinds("delivered")[0][2])

    def test_rejected_sop_class_is_dead_lettered_and_others_keep_flowing(self) -> None:
        """An MR instance whose SOP class the peer refuses is dead at once; the CTs around it are delivered."""
        first, mr, last = self.instance(), self.instance(sop_class=MR), self.instance()
        for record in (first, mr, last):
            self.enqueue(record)
        peer = FakePeer()
        peer.rejected_sop_classes.add(MR)
        self.worker(self.destination(), peer)
        self.assertEqual(peer.uids(), [first.sop_instance_uid, last.sop_instance_uid])
        states = self.states()
        self.assertEqual(states[mr.sop_instance_uid], EntryState.DEAD)
        self.assertEqual(states[last.sop_instance_uid], EntryState.DELIVERED)
        self.assertIn("no accepted presentation context", self.store.entries("archive", EntryState.DEAD)[0].dead_reason)

    def test_retried_dead_letter_gets_a_fresh_association(self) -> None:
        """After the archive is fixed, an operator's retry is not sent down the association that refused its class."""
        mr = self.instance(sop_class=MR)
        self.enqueue(mr)
        peer = FakePeer()
        peer.rejected_sop_classes.add(MR)
        worker = self.worker(self.destination(idle_release=300.0), peer)
        (dead,) = self.store.entries("archive", EntryState.DEAD)
        self.assertEqual(len(peer.associations), 1)
        peer.rejected_sop_classes.clear()
        self.store.requeue_dead(dead.entry_id, self.clock.seconds())
        worker.poke()
        self.assertEqual(peer.uids(), [mr.sop_instance_uid])
        self.assertEqual(len(peer.associations), 2)
        # Poked right after its last batch, the slot streams: the delivery is written within linger.
        self.clock.advance(worker.linger)
        self.assertEqual(self.states()[mr.sop_instance_uid], EntryState.DELIVERED)

    def test_a_new_worker_adopts_a_recorded_open_circuit_and_its_probe_closes_it(self) -> None:
        """Issue 14: a worker that finds the circuit recorded open (another node, or the worker before a reload)
        starts open without overwriting the record, probes after initial_delay, and records it closed when the probe succeeds."""
        self.store.set_circuit("archive", True, "association rejected (1, 1, 7)", self.clock.seconds())
        self.clock.advance(1)
        record = self.instance()
        self.enqueue(record)
        peer = FakePeer()
        worker = self.worker(self.destination(), peer)
        self.assertEqual(worker.status().circuit, "open")
        self.assertEqual(worker.status().last_error, "association rejected (1, 1, 7)")
        self.assertTrue(self.store.stats(self.clock.seconds())["archive"].circuit_open)
        self.assertEqual(peer.uids(), [])
        self.clock.advance(RETRY.initial_delay)
        self.assertEqual(worker.status().circuit, "closed")
        self.assertFalse(self.store.stats(self.clock.seconds())["archive"].circuit_open)
        self.assertEqual(peer.uids(), [record.sop_instance_uid])

    def test_permanent_failure_status_is_dead_lettered_at_once(self) -> None:
        """0xA900 dead-letters the instance on its first attempt, naming the status."""
        record = self.instance()
        self.enqueue(record)
        peer = FakePeer()
        peer.script[record.sop_instance_uid] = [0xA900]
        self.worker(self.destination(), peer)
        (dead,) = self.store.entries("archive", EntryState.DEAD)
        self.assertIn("0xA900", dead.dead_reason)

    def test_destination_down_past_max_age_dead_letters_its_entries_at_a_probe(self) -> None:
        """F17: entries of a destination down for longer than max_age are dead-lettered (gave_up) by the probe loop."""
        records = [self.instance() for _ in range(3)]
        for record in records:
            self.enqueue(record)
        peer = FakePeer()
        peer.refuse = ConnectionRefusedError()
        retry = dataclasses.replace(RETRY, max_age=120.0, jitter=0.0)
        self.worker(self.destination(retry=retry), peer)
        self.clock.pump([1.0] * 100)
        self.assertEqual(set(self.states().values()), {EntryState.QUEUED}, "dead before max_age")
        self.clock.pump([1.0] * 100)
        self.assertEqual(set(self.states().values()), {EntryState.DEAD})
        reasons = {e.dead_reason for e in self.store.entries("archive")}
        self.assertEqual(len(reasons), 1)
        (reason,) = reasons
        self.assertIn("max_age", reason)
        self.assertIn("ConnectionRefusedError", reason)
        self.assertEqual(len(self.observer.kinds("dead")), 3)

    def test_permanent_rejection_opens_the_circuit_without_dead_letters(self) -> None:
        """RJ(1,1,7) three times opens the circuit; probes at max_delay; a fixed peer gets everything."""
        records = [self.instance() for _ in range(4)]
        for record in records:
            self.enqueue(record)
        peer = FakePeer()
        peer.refuse = AssociationRejected(pdu.AAssociateRJ(1, 1, 7))
        worker = self.worker(self.destination(), peer)
        self.clock.advance(1.0)  # second try after 1 s
        self.clock.advance(2.0)  # third try after 2 s: the circuit opens
        self.assertEqual(worker.status().circuit, "open")
        self.assertEqual(self.observer.kinds("down"), [("down", "archive", True)])
        journal = self.store.stats(self.clock.seconds())["archive"]
        self.assertTrue(journal.circuit_open, "the open circuit is recorded for queue list")
        self.assertIn("rejected", journal.circuit_reason)
        tries = len(peer.proposals)
        self.assertEqual(tries, 3)
        self.clock.advance(59.0)
        self.assertEqual(len(peer.proposals), tries, "no probe before max_delay")
        self.clock.advance(1.0)
        self.assertEqual(len(peer.proposals), tries + 1, "one probe at max_delay")
        self.assertEqual(peer.proposals[-1], [], "a probe proposes only Verification")
        peer.refuse = None
        self.clock.advance(60.0)
        self.assertEqual(worker.status().circuit, "closed")
        self.assertFalse(self.store.stats(self.clock.seconds())["archive"].circuit_open)
        self.assertEqual(self.observer.kinds("up"), [("up", "archive")])
        self.assertEqual(peer.uids(), [r.sop_instance_uid for r in records])
        self.assertEqual(self.observer.kinds("dead"), [])
        self.assertEqual([e.attempts for e in self.store.entries("archive")], [0, 0, 0, 0])

    def test_transient_rejection_probes_at_backoff_intervals(self) -> None:
        """RJ(2,3,1) opens the circuit after three faults and probes at growing intervals (1, 2, 4 s)."""
        self.enqueue(self.instance())
        peer = FakePeer()
        peer.refuse = AssociationRejected(pdu.AAssociateRJ(2, 3, 1))
        worker = self.worker(self.destination(), peer)
        self.clock.advance(1.0)
        self.clock.advance(2.0)
        self.assertEqual(worker.status().circuit, "open")
        self.assertEqual(self.observer.kinds("down"), [("down", "archive", False)])
        counts = []
        for step in (1.0, 2.0, 4.0):
            self.clock.advance(step)
            counts.append(len(peer.proposals))
        self.assertEqual(counts, [4, 5, 6])
        self.assertEqual(self.states(), {"1.2.3.4.1": EntryState.QUEUED})

    def test_abort_mid_batch_resends_the_rest_and_counts_the_redelivery(self) -> None:
        """An abort after instance 2's data went out: 3-5 go on a new association, 2 is re-sent once and counted."""
        records = [self.instance() for _ in range(5)]
        for record in records:
            self.enqueue(record)
        peer = FakePeer()
        peer.script[records[1].sop_instance_uid] = ["abort-after"]
        self.worker(self.destination(), peer)
        self.clock.advance(1.0)
        uids = [r.sop_instance_uid for r in records]
        self.assertEqual(sorted(set(peer.uids())), sorted(uids))
        self.assertEqual(peer.uids().count(uids[1]), 2)
        self.assertEqual(set(self.states().values()), {EntryState.DELIVERED})
        self.assertEqual(self.observer.kinds("redelivered"), [("redelivered", uids[1])])
        # The aborted association is never reused; the retry rides the second one.
        self.assertEqual(len(peer.associations), 2)
        self.assertEqual([n for _, _, n in peer.received], [0, 0, 1, 1, 1, 1])

    def test_abort_before_the_data_went_out_is_not_a_redelivery(self) -> None:
        """An abort while sending is retried and delivered without counting a redelivery."""
        record = self.instance()
        self.enqueue(record)
        peer = FakePeer()
        peer.script[record.sop_instance_uid] = ["abort-before"]
        self.worker(self.destination(), peer)
        self.clock.advance(1.0)
        self.assertEqual(peer.uids(), [record.sop_instance_uid])
        self.assertEqual(self.observer.kinds("redelivered"), [])

    def test_unknown_status_is_retried_a_bounded_number_of_times(self) -> None:
        """0xD123 every time: three attempts, then a dead letter naming the code."""
        record = self.instance()
        self.enqueue(record)
        peer = FakePeer()
        peer.script[record.sop_instance_uid] = [0xD123] * 10
        self.worker(self.destination(), peer)
        self.clock.pump([1.0, 2.0, 4.0, 8.0])
        self.assertEqual(len(peer.received), 3)
        (dead,) = self.store.entries("archive", EntryState.DEAD)
        self.assertIn("0xD123", dead.dead_reason)

    def test_max_attempts_dead_letters(self) -> None:
        """With max_attempts=2, two 0xA700 answers dead-letter the instance."""
        record = self.instance()
        self.enqueue(record)
        peer = FakePeer()
        peer.script[record.sop_instance_uid] = [0xA700] * 10
        self.worker(self.destination(retry=dataclasses.replace(RETRY, max_attempts=2)), peer)
        self.clock.pump([1.0, 2.0, 4.0])
        self.assertEqual(len(peer.received), 2)
        (dead,) = self.store.entries("archive", EntryState.DEAD)
        self.assertIn("max_attempts", dead.dead_reason)

    def test_max_age_dead_letters(self) -> None:
        """With max_age=5 s and a 10 s backoff, the second failure (at 10 s) dead-letters the instance."""
        record = self.instance()
        self.enqueue(record)
        peer = FakePeer()
        peer.script[record.sop_instance_uid] = [0xA700] * 10
        self.worker(self.destination(retry=dataclasses.replace(RETRY, initial_delay=10.0, max_age=5.0)), peer)
        self.assertEqual(self.states(), {record.sop_instance_uid: EntryState.QUEUED})
        self.clock.advance(10.0)
        (dead,) = self.store.entries("archive", EntryState.DEAD)
        self.assertIn("max_age", dead.dead_reason)

    def test_paused_destination_sends_nothing_until_resumed(self) -> None:
        """While paused nothing is leased; after resume the poll delivers."""
        record = self.instance()
        self.enqueue(record)
        self.store.set_paused("archive", True)
        peer = FakePeer()
        self.worker(self.destination(), peer)
        self.clock.advance(5.0)
        self.assertEqual(peer.received, [])
        self.store.set_paused("archive", False)
        self.clock.advance(1.0)
        self.assertEqual(peer.uids(), [record.sop_instance_uid])

    def test_studies_keep_their_order_through_their_own_slot(self) -> None:
        """With two associations, each study's instances travel through one association, in order."""
        studies = ["1.2.3", "1.2.4", "1.2.5", "1.2.6"]
        records = [self.instance(study=studies[i % 4]) for i in range(16)]
        for record in records:
            self.enqueue(record)
        peer = FakePeer()
        # Studies 1.2.3 hashes to slot 0, the others to slot 1 (crc32 modulo 2).
        self.worker(self.destination(max_associations=2, batch_size=50), peer)
        by_uid = {r.sop_instance_uid: r.study_instance_uid for r in records}
        for study in studies:
            sent = [(uid, number) for uid, _, number in peer.received if by_uid[uid] == study]
            expected = [r.sop_instance_uid for r in records if r.study_instance_uid == study]
            self.assertEqual([uid for uid, _ in sent], expected)
            self.assertEqual(len({number for _, number in sent}), 1, study)
        self.assertEqual(len(peer.associations), 2)

    def test_batch_size_renews_the_association(self) -> None:
        """With batch_size=2, five instances use three associations, each released."""
        for _ in range(5):
            self.enqueue(self.instance())
        peer = FakePeer()
        self.worker(self.destination(batch_size=2), peer)
        self.assertEqual([n for _, _, n in peer.received], [0, 0, 1, 1, 2])
        self.assertEqual(peer.released, 2)

    def test_idle_association_is_released(self) -> None:
        """An association idle for idle_release seconds is released, and reopened for later work."""
        self.enqueue(self.instance())
        peer = FakePeer()
        worker = self.worker(self.destination(idle_release=5.0), peer)
        self.assertEqual(worker.status().active_associations, 1)
        self.clock.advance(5.0)
        self.assertEqual(worker.status().active_associations, 0)
        self.assertEqual(peer.released, 1)

    def test_unaccepted_original_syntax_is_converted_to_a_fallback(self) -> None:
        """A peer accepting only Implicit VR LE gets an Explicit VR LE instance re-encoded."""
        record = self.instance()
        self.enqueue(record)
        peer = FakePeer()
        peer.syntaxes = {IMPLICIT_VR_LE}
        self.worker(self.destination(), peer)
        self.assertEqual(peer.received, [(record.sop_instance_uid, IMPLICIT_VR_LE, 0)])
        self.assertEqual(self.states(), {record.sop_instance_uid: EntryState.DELIVERED})
        self.assertEqual(sorted(os.listdir(self.tmp)), ["i1.dcm"], "the converted copy was removed")

    def test_compressed_instance_without_its_syntax_is_dead_lettered(self) -> None:
        """A JPEG instance whose syntax is refused gets no fallback and is dead-lettered."""
        record = self.instance(ts=JPEG_BASELINE)
        self.enqueue(record)
        peer = FakePeer()
        peer.syntaxes = {EXPLICIT_VR_LE, IMPLICIT_VR_LE}
        self.worker(self.destination(), peer)
        self.assertEqual(self.states(), {record.sop_instance_uid: EntryState.DEAD})
        self.assertEqual(peer.proposals[0], [(CT, [JPEG_BASELINE])])

    def test_stop_releases_unsent_leases_and_aborts_after_grace(self) -> None:
        """stopService waits the grace period for a hung send, aborts it, and leaves every entry QUEUED."""
        records = [self.instance() for _ in range(3)]
        for record in records:
            self.enqueue(record)
        peer = FakePeer()
        peer.script[records[0].sop_instance_uid] = ["hang"]
        worker = self.worker(self.destination(), peer)
        self.assertEqual(set(self.states().values()), {EntryState.LEASED})
        d = worker.stopService()
        self.assertNoResult(d)
        self.clock.advance(worker.grace)
        self.successResultOf(d)
        self.assertEqual(set(self.states().values()), {EntryState.QUEUED})
        first = self.store.entries("archive")[0]
        self.assertTrue(first.last_error.startswith("ambiguous"), first.last_error)

    def test_stop_while_connecting_releases_the_batch(self) -> None:
        """A connect that never answers is cancelled at the end of the grace period; nothing stays leased."""
        self.enqueue(self.instance())
        peer = FakePeer()
        peer.hang_connect = True
        worker = self.worker(self.destination(), peer)
        d = worker.stopService()
        self.clock.advance(worker.grace)
        self.successResultOf(d)
        self.assertEqual(set(self.states().values()), {EntryState.QUEUED})

    def test_stop_while_the_circuit_is_open_completes(self) -> None:
        """With the circuit open and slots waiting for it, stopService fires and nothing stays leased."""
        self.enqueue(self.instance())
        peer = FakePeer()
        peer.refuse = ConnectionRefusedError()
        worker = self.worker(self.destination(max_associations=2), peer)
        self.clock.pump([1.0, 2.0])
        self.assertEqual(worker.status().circuit, "open")
        d = worker.stopService()
        self.successResultOf(d)
        self.assertEqual(set(self.states().values()), {EntryState.QUEUED})


class FullJournal(MemoryQueueStore):
    """A memory store whose outcome writes fail with ENOSPC while ``full`` is set (a lease alone still works)."""

    full = False
    leases = 0

    def _refuse(self) -> None:
        if self.full:
            raise OSError(28, "No space left on device")

    def complete(self, entry_ids: Any, now: float, warning: str = "", generations: Any = None) -> None:
        self._refuse()
        super().complete(entry_ids, now, warning, generations)

    def release(self, entry_ids: Any, generations: Any = None) -> None:
        self._refuse()
        super().release(entry_ids, generations)

    def settle(self, destination: str, delivered: Any, *args: Any, **kwargs: Any) -> Settled:
        if delivered:
            self._refuse()
        settled = super().settle(destination, delivered, *args, **kwargs)
        self.leases += 1 if settled.leased else 0
        return settled


class FullJournalTests(WorkerTestsMixin, SynchronousTestCase):
    """HARDENING F15: the journal refuses outcomes (ENOSPC): fail closed, record them when space returns."""

    def test_refused_completion_stops_dequeuing_and_is_recorded_not_resent_when_space_returns(self) -> None:
        """Deliveries the journal refuses (ENOSPC): no more leases or sends; once it works they are recorded, nothing sent twice."""
        self.store = FullJournal()
        self.store.full = True
        records = [self.instance() for _ in range(3)]
        for record in records:
            self.enqueue(record)
        peer = FakePeer()
        worker = self.worker(self.destination(), peer)
        self.assertEqual(peer.uids(), [r.sop_instance_uid for r in records])
        self.assertIn("No space left", worker.status().journal_error)
        self.assertEqual(self.observer.kinds("delivered"), [], "a delivery announced before the journal took it")
        later = self.instance()
        self.enqueue(later)
        worker.poke()
        self.clock.advance(10)
        self.assertEqual(peer.uids(), [r.sop_instance_uid for r in records], "sent while the journal was full")
        self.assertEqual(self.store.leases, 1, "leased again while the journal was full")
        self.assertEqual(set(self.states().values()), {EntryState.LEASED, EntryState.QUEUED})
        self.store.full = False
        self.clock.advance(1)
        self.clock.advance(1)
        self.assertEqual(peer.uids(), [r.sop_instance_uid for r in records + [later]])
        self.assertEqual(set(self.states().values()), {EntryState.DELIVERED})
        self.assertEqual(worker.status().journal_error, "")
        self.assertEqual(len(self.observer.kinds("delivered")), 4)
        from gateway.forward import JournalRefused

        self.assertTrue(self.flushLoggedErrors(JournalRefused))
        self.flushLoggedErrors(OSError)


    def test_a_refused_flush_in_the_middle_of_a_batch_is_written_once_when_space_returns(self) -> None:
        """ENOSPC when UNRECORDED_DELIVERIES gather mid-batch: the rest is not sent; later each is sent and announced exactly once."""
        from gateway.forward import JournalRefused
        from gateway.queue.interfaces import UNRECORDED_DELIVERIES

        self.store = FullJournal()
        records = [self.instance() for _ in range(UNRECORDED_DELIVERIES + 4)]
        for record in records:
            self.enqueue(record)
        self.store.full = True
        self.store.leases = 0
        peer = FakePeer()
        worker = self.worker(self.destination(batch_size=50), peer)
        self.assertEqual(len(peer.received), UNRECORDED_DELIVERIES, "sent past a refused write")
        self.assertIn("No space left", worker.status().journal_error)
        self.clock.advance(5)
        self.assertEqual(len(peer.received), UNRECORDED_DELIVERIES)
        self.store.full = False
        for _ in range(5):
            self.clock.advance(1)
        self.assertEqual(sorted(peer.uids()), sorted(r.sop_instance_uid for r in records))
        self.assertEqual(set(self.states().values()), {EntryState.DELIVERED})
        delivered = [uid for _, uid, _ in self.observer.kinds("delivered")]
        self.assertEqual(sorted(delivered), sorted(r.sop_instance_uid for r in records))
        self.assertTrue(self.flushLoggedErrors(JournalRefused))
        self.flushLoggedErrors(OSError)


class ProposalTests(SynchronousTestCase):
    """Presentation contexts proposed for a batch."""

    def test_native_syntax_gets_a_fallback_context(self) -> None:
        """Explicit VR BE is proposed alone, then with Explicit LE and Implicit LE as a fallback."""
        self.assertEqual(
            proposals_for([(CT, "1.2.840.10008.1.2.2")]),
            [(CT, ["1.2.840.10008.1.2.2"]), (CT, [EXPLICIT_VR_LE, IMPLICIT_VR_LE])],
        )

    def test_pairs_are_deduplicated(self) -> None:
        """Two CT Explicit LE and one MR Implicit LE give four contexts without repeats."""
        self.assertEqual(
            proposals_for([(CT, EXPLICIT_VR_LE), (CT, EXPLICIT_VR_LE), (MR, IMPLICIT_VR_LE)]),
            [(CT, [EXPLICIT_VR_LE]), (MR, [IMPLICIT_VR_LE]), (CT, [IMPLICIT_VR_LE]), (MR, [EXPLICIT_VR_LE])],
        )


class FolderWorkerTests(WorkerTestsMixin, SynchronousTestCase):
    """A folder destination."""

    def test_writes_files_and_dead_letters_a_crafted_uid(self) -> None:
        """Good instances land under the folder; a '../../x' SOP Instance UID is dead-lettered, nothing escapes."""
        root = os.path.join(self.tmp, "archive")
        os.mkdir(root)
        good = self.instance(study="1.2.3")
        crafted = dataclasses.replace(self.instance(study="1.2.3"), sop_instance_uid="../../x")
        self.enqueue(good)
        self.enqueue(crafted)
        self.worker(FolderDestination(name="archive", path=root, retry=RETRY))
        written = os.path.join(root, "1.2.3", "1.2.3.1", good.sop_instance_uid + ".dcm")
        with open(written, "rb") as f, open(good.path, "rb") as g:
            self.assertEqual(f.read(), g.read())
        states = self.states()
        self.assertEqual(states[good.sop_instance_uid], EntryState.DELIVERED)
        self.assertEqual(states["../../x"], EntryState.DEAD)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "..", "x")))
        self.assertEqual(sorted(os.listdir(self.tmp)), ["archive", "i1.dcm", "i2.dcm"])

    def test_missing_folder_opens_the_circuit_and_recovers(self) -> None:
        """A missing folder is destination-wide: circuit open, nothing dead; once created, delivered."""
        root = os.path.join(self.tmp, "share")
        record = self.instance()
        self.enqueue(record)
        worker = self.worker(FolderDestination(name="archive", path=root, retry=RETRY))
        self.clock.pump([1.0, 2.0])
        self.assertEqual(worker.status().circuit, "open")
        self.assertEqual(self.states(), {record.sop_instance_uid: EntryState.QUEUED})
        os.mkdir(root)
        self.clock.advance(1.0)
        self.assertEqual(worker.status().circuit, "closed")
        self.assertEqual(self.states(), {record.sop_instance_uid: EntryState.DELIVERED})
        self.assertEqual(self.store.get(1).attempts, 0)


class PrepareTests(WorkerTestsMixin, SynchronousTestCase):
    """The hook that swaps in a route's morphed copy before sending (HARDENING decision 4, D15)."""

    def test_the_prepared_copy_is_what_is_sent(self) -> None:
        """A prepared entry's path and UIDs are used by a folder destination, not the received file's."""
        root = os.path.join(self.tmp, "archive")
        os.mkdir(root)
        original = self.instance(study="1.2.3")
        morphed = self.instance(study="9.9.9")
        self.store.forget_instance(morphed.instance_id)
        self.enqueue(original)

        def prepare(entry: Any) -> Any:
            return succeed(dataclasses.replace(entry, path=morphed.path, instance=morphed))

        self.worker(FolderDestination(name="archive", path=root, retry=RETRY), prepare=prepare)
        written = os.path.join(root, "9.9.9", "9.9.9.1", morphed.sop_instance_uid + ".dcm")
        with open(written, "rb") as f, open(morphed.path, "rb") as g:
            self.assertEqual(f.read(), g.read())
        self.assertFalse(os.path.exists(os.path.join(root, "1.2.3")))

    def test_a_morphed_copy_is_sent_with_its_own_file_meta(self) -> None:
        """A copy made by prepare keeps the record's fields but not its data set offset: the copy's own meta is read and used."""
        original = self.instance()
        copy = self.instance(ts=JPEG_BASELINE)  # a meta of another length
        offset = read_part10_header(original.path).dataset_offset
        copy_offset = read_part10_header(copy.path).dataset_offset
        self.assertNotEqual(offset, copy_offset)
        self.enqueue(dataclasses.replace(original, dataset_offset=offset))

        def prepare(entry: Any) -> Any:
            # As gateway.prepare.CopyMaker does: the record follows the copy's path, the rest is the original's.
            return succeed(dataclasses.replace(entry, path=copy.path, instance=dataclasses.replace(entry.instance, path=copy.path)))

        peer = FakePeer()
        self.worker(self.destination(), peer, prepare=prepare)
        self.assertEqual(peer.received, [(copy.sop_instance_uid, JPEG_BASELINE, 0)])
        (known,) = peer.known
        self.assertEqual((known.dataset_offset, known.transfer_syntax_uid), (copy_offset, JPEG_BASELINE))

    def test_a_copy_that_cannot_be_made_is_dead_lettered_and_never_sent(self) -> None:
        """PrepareError dead-letters the entry with a 'morph:' reason; the next entry still goes."""
        from gateway.forward import PrepareError

        bad, good = self.instance(), self.instance()
        self.enqueue(bad)
        self.enqueue(good)

        def prepare(entry: Any) -> Any:
            if entry.instance.instance_id == bad.instance_id:
                return fail(PrepareError("PatientName: value too long for PN"))
            return succeed(entry)

        peer = FakePeer()
        self.worker(self.destination(), peer, prepare=prepare)
        self.assertEqual(peer.uids(), [good.sop_instance_uid])
        dead = self.store.entries("archive", EntryState.DEAD)
        self.assertEqual([e.instance.instance_id for e in dead], [bad.instance_id])
        self.assertTrue(dead[0].dead_reason.startswith("morph: PatientName"))


class RealRequestorTests(AcceptorTestsMixin, WorkerTestsMixin, SynchronousTestCase):
    """The worker with the real requestor, over a loopback to our own acceptor."""

    def setUp(self) -> None:
        WorkerTestsMixin.setUp(self)
        # The acceptor's spool folder and clock replace the worker mixin's.
        AcceptorTestsMixin.setUp(self)
        self.loops: list[Loopback] = []

    def connect(self, destination: DicomDestination, proposals: Proposals) -> Deferred[ClientAssociation]:
        """Build the real RequestorProtocol and join it to a fresh acceptor protocol."""
        wanted = [(VERIFICATION_SOP_CLASS, [IMPLICIT_VR_LE])] + [(sop, list(ts)) for sop, ts in proposals]
        request = build_request(
            destination.calling_ae_title,
            destination.ae_title,
            wanted,
            max_pdu_length=16384,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        )
        client = RequestorProtocol(request, self.clock, 30.0, 16384)
        loop = Loopback(self.factory.buildProtocol(None), client)
        self.loops.append(loop)
        loop.pump()
        return client.established

    def test_real_requestor_delivers_through_the_worker(self) -> None:
        """Three CT instances reach our acceptor's spool through the worker and are marked delivered."""
        records = [self.instance() for _ in range(3)]
        for record in records:
            self.enqueue(record)
        worker = DestinationWorker(
            self.destination(calling_ae_title="CT01", ae_title="DICOMGW"),
            self.store,
            SynchronousRunner(),
            SynchronousRunner(),
            self.clock,
            connect=self.connect,
            rand=neutral,
            observer=self.observer,
            wall=self.clock.seconds,
            monotonic=self.clock.seconds,
        )
        worker.startService()
        for _ in range(20):
            for loop in self.loops:
                loop.pump()
        self.assertEqual(set(self.states().values()), {EntryState.DELIVERED})
        self.assertEqual(len(self.committed()), 3)
        d = worker.stopService()
        for loop in self.loops:
            loop.pump()
        self.clock.advance(worker.grace)
        self.successResultOf(d)
