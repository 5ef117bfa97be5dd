"""The forwarder's journal writes per instance (issue 13): batched completions, many entries per lease.

The worker runs against the real :class:`~gateway.queue.sqlite.SqliteQueueStore`
(its connection traced, so every ``BEGIN IMMEDIATE``, i.e. every write
transaction and journal commit, is counted), a ``task.Clock`` and a scripted
destination that answers each C-STORE after a delay on that clock. Instances
are added one at a time, as the intake does, each followed by a poke.
"""

from __future__ import annotations

import gc
import os

from twisted.trial.unittest import SynchronousTestCase

from gateway.forward import JournalRefused
from gateway.queue.interfaces import RECOVERED_IN_FLIGHT, EntryState, InstanceRecord
from gateway.queue.sqlite import SqliteQueueStore
from tests.adapters.test_forward import FakePeer, WorkerTestsMixin

#: Instances in the steady stream.
COUNT = 200
#: Seconds between two arrivals (about 330 instances/s, the single-association intake rate).
ARRIVAL = 0.003
#: Seconds the destination takes to answer one C-STORE.
ANSWER = 0.002


class JournalWritesTests(WorkerTestsMixin, SynchronousTestCase):
    """Counted journal commits of the forwarder, and what a crash between them costs."""

    def setUp(self) -> None:
        WorkerTestsMixin.setUp(self)
        self.journal = os.path.join(self.tmp, "queue.sqlite")
        self.store = SqliteQueueStore(self.journal)  # type: ignore[assignment]
        self.addCleanup(lambda: self.store.close())
        #: True while the test itself (the "intake") writes.
        self.intake = False
        self.worker_writes = 0
        self.trace(self.store)  # type: ignore[arg-type]

    def trace(self, store: SqliteQueueStore) -> None:
        """Count the write transactions ``store`` makes outside the test's own intake writes."""

        def seen(sql: str) -> None:
            if sql.startswith("BEGIN IMMEDIATE") and not self.intake:
                self.worker_writes += 1

        store._conn.set_trace_callback(seen)

    def enqueue(self, record: InstanceRecord, *destinations: str) -> list[int]:
        """Journal the instance as the intake does (one transaction, not counted)."""
        self.intake = True
        try:
            return super().enqueue(record, *destinations)
        finally:
            self.intake = False

    def peer(self) -> FakePeer:
        """A destination answering each C-STORE after ``ANSWER`` seconds."""
        peer = FakePeer()
        peer.delay = ANSWER
        peer.clock = self.clock
        return peer

    def advance(self, seconds: float, step: float = 0.001) -> None:
        """Move the clock forward in small steps, as time passes for the reactor."""
        for _ in range(round(seconds / step)):
            self.clock.advance(step)

    def test_steady_stream_costs_at_most_a_quarter_commit_per_instance(self) -> None:
        """200 instances arriving one by one, forwarded as they come: <= 0.25 forwarder commits each, each delivered once."""
        peer = self.peer()
        worker = self.worker(self.destination(batch_size=50), peer)
        records = []
        for _ in range(COUNT):
            record = self.instance()
            records.append(record)
            self.enqueue(record)
            worker.poke()
            self.advance(ARRIVAL)
        self.advance(1.0)
        self.stop(worker)
        per_instance = self.worker_writes / COUNT
        print(f"\nforwarder journal commits: {self.worker_writes} for {COUNT} instances ({per_instance:.3f} each)")
        self.assertEqual(set(self.states().values()), {EntryState.DELIVERED})
        self.assertEqual(sorted(peer.uids()), sorted(r.sop_instance_uid for r in records), "sent twice or never")
        self.assertEqual(len(self.observer.kinds("delivered")), COUNT)
        self.assertLessEqual(per_instance, 0.25, f"{self.worker_writes} commits for {COUNT}")
        self.assertGreater(len(peer.received), 0)

    def test_backlog_is_leased_a_batch_at_a_time(self) -> None:
        """A queue of 200 waiting entries costs the forwarder a handful of commits, not one or more per instance."""
        records = [self.instance() for _ in range(COUNT)]
        for record in records:
            self.enqueue(record)
        peer = self.peer()
        worker = self.worker(self.destination(batch_size=50), peer)
        self.advance(1.0)
        self.stop(worker)
        self.assertEqual(peer.uids(), [r.sop_instance_uid for r in records])
        self.assertEqual(set(self.states().values()), {EntryState.DELIVERED})
        # 4 leases of 50 (each also writing the last batch's deliveries), flushes
        # every UNRECORDED_DELIVERIES, the last deliveries, the start-up writes.
        self.assertLessEqual(self.worker_writes / COUNT, 0.1, self.worker_writes)

    def crash_after_two_answers(self, records: list[InstanceRecord]) -> list[str]:
        """Forward ``records`` until two are answered, then kill: the journal is closed under the worker.

        :returns: the SOP Instance UIDs the destination received before the kill.
        """
        first = self.peer()
        self.worker(self.destination(), first, cleanup=False)
        self.advance(0.005)  # two answered (2 ms, 4 ms), the third on the wire
        self.store.close()
        return first.uids()

    def test_deliveries_not_written_at_a_crash_are_resent_never_lost(self) -> None:
        """Killed with deliveries unwritten: they stay LEASED, recovery queues them as in flight, and they are sent again."""
        records = [self.instance() for _ in range(5)]
        for record in records:
            self.enqueue(record)
        delivered = self.crash_after_two_answers(records)
        self.assertEqual(delivered, [r.sop_instance_uid for r in records[:2]])
        # The dead worker is never heard of again (its clock is dropped): its
        # coroutines, closed by the garbage collector, find the journal closed.
        self.clock = type(self.clock)()
        gc.collect()
        self.flushLoggedErrors(JournalRefused)
        self.store = SqliteQueueStore(self.journal)  # type: ignore[assignment]
        self.assertEqual(set(self.states().values()), {EntryState.LEASED}, "a delivery was written before the crash")
        self.assertEqual(self.store.recover(self.clock.seconds()), 5)
        in_flight = {e.instance.sop_instance_uid for e in self.store.entries("archive")
                     if e.last_error == RECOVERED_IN_FLIGHT}
        self.assertLessEqual(set(delivered) | {records[2].sop_instance_uid}, in_flight)
        second = self.peer()
        self.worker(self.destination(), second)
        self.advance(1.0)
        self.assertEqual(second.uids(), [r.sop_instance_uid for r in records])
        self.assertEqual(set(self.states().values()), {EntryState.DELIVERED})
        redelivered = {uid for _, uid in self.observer.kinds("redelivered")}
        self.assertLessEqual(set(delivered), redelivered, "a re-sent delivery was not counted as a redelivery")

    def test_a_delivery_is_written_before_the_worker_stops(self) -> None:
        """A clean stop writes the slot's deliveries: nothing is sent again after a restart."""
        record = self.instance()
        self.enqueue(record)
        peer = self.peer()
        worker = self.worker(self.destination(), peer)
        self.advance(0.002)
        self.stop(worker)
        self.assertEqual(self.states(), {record.sop_instance_uid: EntryState.DELIVERED})
        self.assertEqual(self.store.recover(self.clock.seconds()), 0)


