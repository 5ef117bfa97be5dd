"""The forwarder on several nodes sharing one queue (issue 14).

Two :class:`~gateway.forward.DestinationWorker` objects, one per node, share
one in-memory queue (``MemoryQueueStore`` and its ``peer``): the verified
fake of the PostgreSQL store. Each node has its own ``task.Clock`` (its
reactor), so one node can be *paused* (a stopped process: none of its timers
fire, none of its answers are read) while the shared wall clock and the
other node go on; resuming it fires everything it missed, as a process
woken from SIGSTOP or a long GC pause would. Each node talks to the
destination through its own scripted peer (answers delayed on that node's
clock); both peers count what the destination received and the
associations open on it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.associate import ClientAssociation
from gateway.blocking import SynchronousRunner
from gateway.config.schema import DicomDestination
from gateway.forward import DestinationWorker, JournalRefused
from gateway import events
from gateway.queue.interfaces import UNRECORDED_DELIVERIES, EntryState, InstanceRecord, NewEntry, StoreUnavailable
from gateway.queue.memory import MemoryQueueStore
from gateway.queue.sqlite import SqliteQueueStore
from gateway.queue.sqlite import study_hash
from tests.adapters.test_forward import FakePeer, Recorder, WorkerTestsMixin, neutral

#: Leases (and slot claims) of the tests: renewed every 10 s.
LEASE = 30.0


class Events(Recorder):
    """A recorder that also keeps the cluster's events (lost leases, adopted circuits)."""

    def lease_lost(self, destination: str, entry_id: int, node: str) -> None:
        self.events.append(("lease_lost", entry_id, node))

    def circuit_adopted(self, name: str, circuit_open: bool, reason: str) -> None:
        self.events.append(("adopted", circuit_open))


@dataclasses.dataclass
class Node:
    """One gateway process: its store object, its reactor clock, its view of the destination, its worker."""

    name: str
    store: MemoryQueueStore
    clock: Clock
    peer: FakePeer
    observer: Events
    worker: DestinationWorker | None = None
    paused: bool = False
    #: When the node writes its next heartbeat (wall time).
    beat_at: float = 0.0


def study_for_shard(shard: int, shards: int, prefix: str = "1.2.9") -> str:
    """A Study Instance UID whose hash lands in ``shard`` of ``shards`` (so the test knows its slot)."""
    n = 0
    while True:
        uid = f"{prefix}.{n}"
        if study_hash(uid) % shards == shard:
            return uid
        n += 1


class ClusterTestsMixin(WorkerTestsMixin):
    """Nodes ``a`` and ``b`` on one memory queue; ``self.time`` is the wall clock both read."""

    def make_store(self, node: str, local_only: bool = False) -> Any:
        """Node ``node``'s store object on the test's one queue (the memory fake; SQLite in a subclass)."""
        if node == "a":
            return MemoryQueueStore(node, local_only)
        return self.store.peer(node, local_only)

    def setUp(self) -> None:
        super().setUp()
        self.time = 0.0
        self.store = self.make_store("a")
        self.nodes: dict[str, Node] = {}
        for name in ("a", "b", "c"):
            store = self.store if name == "a" else self.make_store(name)
            clock = Clock()
            peer = FakePeer()
            peer.clock = clock
            self.nodes[name] = Node(name, store, clock, peer, Events())

    def config(self, **overrides: Any) -> DicomDestination:
        """The destination ``archive`` every node forwards to."""
        return self.destination(**overrides)

    def start(
        self,
        name: str,
        config: DicomDestination,
        connect: Callable[..., Any] | None = None,
        heartbeat: float | None = None,
    ) -> DestinationWorker:
        """Start node ``name``'s worker (stopped at cleanup); ``heartbeat`` as ``cluster.heartbeat``."""
        node = self.nodes[name]
        worker = DestinationWorker(
            config,
            node.store,
            SynchronousRunner(),
            SynchronousRunner(),
            node.clock,
            connect=connect or node.peer.connect,
            rand=neutral,
            observer=node.observer,
            wall=lambda: self.time,
            monotonic=lambda: self.time,
            scratch_dir=self.tmp,
            lease_seconds=LEASE,
            heartbeat_seconds=heartbeat,
        )
        node.worker = worker
        worker.startService()
        self.addCleanup(self.stop_node, node)
        return worker

    def stop_node(self, node: Node) -> None:
        """Stop a node's worker (resumed first if paused)."""
        node.paused = False
        self.advance(0)
        worker = node.worker
        if worker is not None and worker.running:
            d = worker.stopService()
            node.clock.advance(worker.grace)
            self.successResultOf(d)  # type: ignore[attr-defined]

    def advance(self, seconds: float, step: float = 0.25, check: Callable[[], None] | None = None) -> None:
        """Let ``seconds`` of wall time pass in steps; running nodes' clocks follow, paused ones stand still.

        A node no longer paused first catches up at once (everything it missed fires).
        Each running node writes its heartbeat every second, as its
        :class:`gateway.heartbeat.NodeHeartbeat` would (a paused one does not).
        """
        end = self.time + seconds
        while True:
            for node in self.nodes.values():
                if not node.paused and node.clock.seconds() < self.time:
                    node.clock.advance(self.time - node.clock.seconds())
                worker = node.worker
                if not node.paused and worker is not None and worker.running and self.time >= node.beat_at:
                    detail = json.dumps({"address": [], "version": "test", "draining": worker.draining})
                    node.beat_at = self.time + 1.0
                    try:
                        node.store.heartbeat(self.time, 0.0, detail)
                    except StoreUnavailable:
                        pass  # (the real heartbeat marks the journal unavailable; tried again next second)
            if check is not None:
                check()
            if self.time >= end:
                return
            self.time = min(end, self.time + step)

    def add(self, node: str = "a", study: str = "1.2.3", store: Any = None) -> InstanceRecord:
        """An instance received by ``node`` and journaled there (or through ``store``), with one entry for ``archive``."""
        record = dataclasses.replace(self.instance(study=study), node=node, received_at=self.time)
        (store or self.nodes[node].store).add_instance(record, [NewEntry("everything", "archive")], self.time, 0.0)
        return record

    def received(self) -> list[str]:
        """SOP Instance UIDs the destination received, from either node (one item per C-STORE)."""
        return [uid for node in self.nodes.values() for uid, _, _ in node.peer.received]

    def open_associations(self) -> int:
        """Associations open on the destination now, from either node (probes excluded: they close at once)."""
        return sum(1 for node in self.nodes.values() for a in node.peer.associations if a.open)


class ClusterWorkerTests(ClusterTestsMixin, SynchronousTestCase):
    """Two nodes forwarding one destination's queue."""

    def test_two_nodes_never_send_the_same_entry(self) -> None:
        """Both nodes send (one slot each): every instance reaches the destination exactly once, all DELIVERED."""
        config = self.config(max_associations=2, batch_size=4)
        # Node b holds slot 1 before a starts: a serves shard 0, b shard 1.
        self.assertTrue(self.nodes["b"].store.claim_slot("archive", 1, 2, self.time, LEASE))
        for node in self.nodes.values():
            node.peer.delay = 0.5
        records = [self.add(node=("a", "b")[i % 2], study=f"1.2.7.{i % 6}") for i in range(30)]
        self.start("a", config)
        self.start("b", config)
        self.advance(60)
        self.assertEqual(sorted(self.received()), sorted(r.sop_instance_uid for r in records))
        self.assertTrue(self.nodes["a"].peer.received and self.nodes["b"].peer.received, "one node sent everything")
        self.assertEqual({e.state for e in self.store.entries("archive")}, {EntryState.DELIVERED})

    def test_a_paused_node_loses_its_batch_to_the_node_that_took_over(self) -> None:
        """Node a, paused mid-send past its lease: b takes the batch over; a, resumed, drops its outcome and sends no more of it."""
        config = self.config(max_associations=1)
        a, b = self.nodes["a"], self.nodes["b"]
        a.peer.delay = 5.0
        records = [self.add() for _ in range(3)]
        self.start("a", config)
        self.start("b", config)
        self.advance(1)
        self.assertEqual(len(a.peer.known), 1)  # the first is on the wire, answered at a's t=5
        a.paused = True
        self.advance(44)  # a's lease and slot claim (30 s) run out; b claims the slot and takes the batch
        self.assertEqual(b.peer.uids(), [r.sop_instance_uid for r in records])
        self.assertEqual({e.lease_owner for e in self.store.entries("archive")}, {"b"})
        a.paused = False
        self.advance(10)
        self.assertEqual(a.peer.uids(), [records[0].sop_instance_uid], "a sent entries b had taken over")
        lost = a.observer.kinds("lease_lost")
        self.assertEqual(sorted(entry_id for _, entry_id, _ in lost), sorted(e.entry_id for e in self.store.entries("archive")))
        self.assertEqual({node for _, _, node in lost}, {"a"})
        self.assertEqual(a.observer.kinds("delivered"), [])
        self.assertEqual(len(b.observer.kinds("delivered")), 3)
        self.assertEqual({e.state for e in self.store.entries("archive")}, {EntryState.DELIVERED})
        self.assertEqual(a.worker.status().journal_error if a.worker else "?", "")

    def test_a_stale_delivery_is_fenced_when_it_is_written(self) -> None:
        """A lone entry delivered by a paused node after b took it over: the fenced write refuses it; counted, not announced, no journal error."""
        config = self.config(max_associations=1)
        a, b = self.nodes["a"], self.nodes["b"]
        a.peer.delay = 5.0
        (record,) = [self.add()]
        self.start("a", config)
        self.start("b", config)
        self.advance(1)
        a.paused = True
        self.advance(44)
        (entry,) = self.store.entries("archive")
        self.assertEqual((entry.state, entry.lease_owner), (EntryState.DELIVERED, "b"))
        a.paused = False
        self.advance(10)
        self.assertEqual(a.observer.kinds("lease_lost"), [("lease_lost", entry.entry_id, "a")])
        self.assertEqual(a.observer.kinds("delivered"), [])
        self.assertEqual(self.store.get(entry.entry_id).lease_owner, "b")
        self.assertEqual(a.worker.status().journal_error if a.worker else "?", "")
        self.assertEqual(b.peer.uids(), [record.sop_instance_uid])

    def test_a_stale_retry_is_fenced(self) -> None:
        """0xA700 answered to a paused node after b took the entry over: a's retry is refused (LeaseLost), b's delivery stands."""
        config = self.config(max_associations=1)
        a = self.nodes["a"]
        a.peer.delay = 5.0
        record = self.add()
        a.peer.script[record.sop_instance_uid] = [0xA700]
        self.start("a", config)
        self.start("b", config)
        self.advance(1)
        a.paused = True
        self.advance(44)
        a.paused = False
        self.advance(10)
        (entry,) = self.store.entries("archive")
        self.assertEqual((entry.state, entry.attempts), (EntryState.DELIVERED, 0))
        self.assertEqual(len(a.observer.kinds("lease_lost")), 1)
        self.assertEqual(a.observer.kinds("retried"), [])

    def test_renewal_keeps_a_long_sends_lease(self) -> None:
        """A send that takes 100 s (over three leases): the heartbeat renews its lease, so no other node can take it."""
        config = self.config(max_associations=1)
        a = self.nodes["a"]
        a.peer.delay = 100.0
        record = self.add()
        self.start("a", config)
        other = self.nodes["b"].store

        def never_taken() -> None:
            entry = self.store.entries("archive")[0]
            if entry.state is EntryState.LEASED:
                self.assertGreater(entry.leased_until or 0.0, self.time)
                self.assertEqual(other.lease("archive", 10, self.time, LEASE), [], "another node took a live send")

        self.advance(110, check=never_taken)
        (entry,) = self.store.entries("archive")
        self.assertEqual((entry.state, entry.lease_owner), (EntryState.DELIVERED, "a"))
        self.assertEqual(a.peer.uids(), [record.sop_instance_uid])
        self.assertEqual(a.observer.kinds("lease_lost"), [])

    def test_the_association_cap_holds_across_the_cluster(self) -> None:
        """Two nodes with max_associations=2 each never hold more than 2 associations at once between them."""
        config = self.config(max_associations=2, batch_size=3)
        for node in self.nodes.values():
            node.peer.delay = 1.0
        records = [self.add(node=("a", "b")[i % 2], study=f"1.2.8.{i % 10}") for i in range(40)]
        self.start("a", config)
        self.start("b", config)
        seen: list[int] = []
        self.advance(60, check=lambda: seen.append(self.open_associations()))
        self.assertEqual(max(seen), 2)
        self.assertEqual(sorted(self.received()), sorted(r.sop_instance_uid for r in records))

    def test_a_node_added_while_running_picks_up_work(self) -> None:
        """a alone holds both slots of a backlog; b starts and heartbeats: a gives one slot up between batches, b sends through it, never more than 2 associations."""
        config = self.config(max_associations=2, batch_size=2)
        b = self.nodes["b"]
        for node in self.nodes.values():
            node.peer.delay = 1.0
        records = [self.add(study=f"1.2.4.{i % 8}") for i in range(60)]
        worker_a = self.start("a", config)
        self.advance(5)
        self.assertEqual(worker_a.status().slots_held, 2)
        worker_b = self.start("b", config)
        seen: list[int] = []
        self.advance(25, check=lambda: seen.append(self.open_associations()))
        self.assertEqual((worker_a.status().slots_held, worker_b.status().slots_held), (1, 1))
        self.assertTrue(b.peer.uids(), "the added node sent nothing")
        self.advance(60, check=lambda: seen.append(self.open_associations()))
        self.assertLessEqual(max(seen), 2)
        self.assertEqual(sorted(self.received()), sorted(r.sop_instance_uid for r in records))
        self.assertEqual({e.state for e in self.store.entries("archive")}, {EntryState.DELIVERED})

    def test_a_third_node_gets_a_share_of_four_slots(self) -> None:
        """Four slots held two and two by a and b; c joins: b (second by name) gives one up, c claims it and sends; never more than 4 associations."""
        config = self.config(max_associations=4, batch_size=2)
        for node in self.nodes.values():
            node.peer.delay = 3.0
        records = [self.add(study=f"1.2.4.{i % 16}") for i in range(120)]
        workers = {name: self.start(name, config) for name in ("a", "b")}
        self.advance(25)
        self.assertEqual([w.status().slots_held for w in workers.values()], [2, 2])
        workers["c"] = self.start("c", config)
        seen: list[int] = []
        self.advance(25, check=lambda: seen.append(self.open_associations()))
        self.assertEqual([w.status().slots_held for w in workers.values()], [2, 1, 1])
        self.assertTrue(self.nodes["c"].peer.uids(), "the added node sent nothing")
        self.advance(100, check=lambda: seen.append(self.open_associations()))
        self.assertLessEqual(max(seen), 4)
        self.assertEqual(sorted(self.received()), sorted(r.sop_instance_uid for r in records))

    def test_a_dead_nodes_backlog_flows_again_within_four_thirds_of_a_lease(self) -> None:
        """a and b hold one slot each; a dies (kill -9: never heard from again) mid-backlog; b sends a's shard within lease * 4/3 + poll_interval."""
        took_over, worker_b = self.kill_a_mid_backlog(heartbeat=None)
        self.assertLessEqual(took_over, LEASE * 4 / 3 + worker_b.poll_interval + 1.0 + 0.25)

    def test_a_dead_nodes_backlog_flows_again_within_lease_plus_one_heartbeat(self) -> None:
        """With cluster.heartbeat given (a sixth of the lease), b sends a's shard within lease + heartbeat + poll_interval (the issue's bound)."""
        heartbeat = LEASE / 6
        took_over, worker_b = self.kill_a_mid_backlog(heartbeat=heartbeat)
        self.assertLessEqual(took_over, LEASE + heartbeat + worker_b.poll_interval + 1.0 + 0.25)
        self.assertEqual(self.nodes["b"].worker.membership.heartbeat_interval, heartbeat)

    def kill_a_mid_backlog(self, heartbeat: float | None) -> tuple[float, DestinationWorker]:
        """a and b send a 60-instance backlog, a stops for good; how long until b sends a's shard (and everything arrives)."""
        config = self.config(max_associations=2, batch_size=2)
        a, b = self.nodes["a"], self.nodes["b"]
        for node in self.nodes.values():
            node.peer.delay = 1.0
        theirs = study_for_shard(0, 2)
        ours = study_for_shard(1, 2)
        self.assertTrue(b.store.claim_slot("archive", 1, 2, self.time, LEASE))
        records = [self.add(study=(theirs, ours)[i % 2]) for i in range(60)]
        self.start("a", config, heartbeat=heartbeat)
        worker_b = self.start("b", config, heartbeat=heartbeat)
        self.advance(5)
        self.assertTrue(a.peer.uids() and b.peer.uids())
        a.paused = True
        died = self.time
        took_over: list[float] = []

        def b_sends_theirs() -> None:
            if not took_over and any(self.instance_study(uid) == theirs for uid in b.peer.uids()):
                took_over.append(self.time)

        self.uid_study = {r.sop_instance_uid: r.study_instance_uid for r in records}
        self.advance(120, check=b_sends_theirs)
        self.assertTrue(took_over, "b never took a's shard over")
        delivered = {e.instance.sop_instance_uid for e in self.store.entries("archive") if e.state is EntryState.DELIVERED}
        self.assertEqual(delivered, set(self.uid_study))
        return took_over[0] - died, worker_b

    def instance_study(self, uid: str) -> str:
        """The study of an instance this test journaled."""
        return self.uid_study[uid]

    def test_every_entry_a_dead_node_sent_from_either_slot_is_counted_as_redelivered(self) -> None:
        """a sends through two slots, renews, dies: b's re-sends of what a delivered (unwritten) from either slot are Redelivered.

        The take-over notes the lowest ``UNRECORDED_DELIVERIES + 1`` entries
        of each lease, told apart by owner and ``leased_until``; a renewal
        that gave both slots' leases one ``leased_until`` made them one lease,
        and the second slot's deliveries were re-sent uncounted.
        """
        config = self.config(max_associations=2, batch_size=20)
        a, b = self.nodes["a"], self.nodes["b"]
        a.peer.delay = 1.0
        shards = (study_for_shard(0, 2), study_for_shard(1, 2))
        for i in range(40):
            self.add(study=shards[i % 2])  # ids alternate between the two slots' shards
        self.start("a", config)
        self.advance(12.5)  # a renewed at t=10; each slot delivered about 12 (none written yet)
        sent_by_a = set(a.peer.uids())
        self.assertGreater(len(sent_by_a), UNRECORDED_DELIVERIES + 1)
        a.paused = True
        self.start("b", config)
        self.advance(60)
        again = sent_by_a & set(b.peer.uids())
        self.assertTrue(again, "b re-sent nothing a had delivered")
        redelivered = {uid for _, uid in b.observer.kinds("redelivered")}
        self.assertEqual(again - redelivered, set(), "re-sent without being counted as a redelivery")

    def test_a_study_keeps_its_order_when_a_dead_nodes_lease_outlasts_its_slot_claim(self) -> None:
        """a leases a batch after its last claim renewal and dies: b, claiming the slot, sends nothing of the shard before a's lease is back.

        a's claim was renewed at t=20 (until 50), its last batch leased at
        about t=28 (until 58). Had b leased at t=51, the study's next
        instances would have reached the destination before a's batch.
        """
        config = self.config(max_associations=1, batch_size=2)
        a, b = self.nodes["a"], self.nodes["b"]
        for node in self.nodes.values():
            node.peer.delay = 1.0
        records = [self.add(study="1.2.3") for _ in range(60)]
        order = [r.sop_instance_uid for r in records]
        self.start("a", config)
        self.advance(1)
        self.start("b", config)
        self.advance(19)
        a.beat_at = float("inf")  # a's node heartbeat (every 10 s in production): last written at t=20
        self.advance(9.5)
        a.paused = True  # killed: nothing of a runs any more
        self.advance(90)
        sent = b.peer.uids()
        self.assertTrue(sent, "b never took the slot over")
        self.assertEqual(sent, sorted(sent, key=order.index), "b sent the study out of order")
        self.assertEqual(set(self.received()), set(order))

    def test_a_draining_node_does_not_count_for_the_shares(self) -> None:
        """Two nodes hold one slot each; a drains: b's share becomes both slots and it claims the one a released."""
        config = self.config(max_associations=2)
        self.start("a", config)
        worker_b = self.start("b", config)
        self.advance(25)
        self.assertEqual(worker_b.status().slots_held, 1)
        assert self.nodes["a"].worker is not None
        self.nodes["a"].worker.set_draining(True)
        self.advance(25)
        self.assertEqual(worker_b.status().slots_held, 2)

    def test_drain_while_the_circuit_is_open_releases_the_slots_at_once(self) -> None:
        """A node whose slots wait for an open circuit drains at once: claims released, no wait for a probe."""
        config = self.config(max_associations=2)
        a = self.nodes["a"]
        a.peer.refuse = ConnectionRefusedError()
        self.add(study=study_for_shard(0, 2))
        self.add(study=study_for_shard(1, 2))
        worker = self.start("a", config)
        self.advance(4)
        self.assertEqual(worker.status().circuit, "open")
        self.assertEqual(worker.status().slots_held, 2)
        drained = worker.set_draining(True)
        self.advance(0)
        self.successResultOf(drained)
        self.assertEqual(worker.status().slots_held, 0)
        self.assertTrue(self.nodes["b"].store.claim_slot("archive", 0, 2, self.time, LEASE))

    def test_a_stopped_node_releases_its_slots_at_once(self) -> None:
        """a holds the only slot; stopped, it releases the claim, and b sends the next instance within a poll, not after the claim runs out."""
        config = self.config(max_associations=1)
        worker_a = self.start("a", config)
        self.start("b", config)
        self.advance(1)
        self.assertEqual(worker_a.status().slots_held, 1)
        d = worker_a.stopService()
        self.advance(0.5)
        self.successResultOf(d)
        record = self.add(node="b")
        self.advance(2)
        self.assertEqual(self.nodes["b"].peer.uids(), [record.sop_instance_uid])

    def test_a_slot_taken_by_another_node_closes_its_association(self) -> None:
        """Node a, paused with an idle association past its claim, closes it when it resumes and finds b holding the slot."""
        config = self.config(max_associations=1, idle_release=600.0)
        a, b = self.nodes["a"], self.nodes["b"]
        self.add()
        self.start("a", config)
        self.start("b", config)
        self.advance(1)
        self.assertEqual(len([x for x in a.peer.associations if x.open]), 1)
        a.paused = True
        self.advance(40)
        later = self.add(node="b")
        assert b.worker is not None
        b.worker.poke()
        self.advance(1)
        self.assertEqual(b.peer.uids(), [later.sop_instance_uid])
        a.paused = False
        self.advance(2)
        self.assertEqual([x for x in a.peer.associations if x.open], [])
        self.assertEqual(self.open_associations(), 1)

    def test_study_order_is_kept_across_nodes(self) -> None:
        """Instances of four studies received alternately by a and b arrive in order, each study through one node."""
        config = self.config(max_associations=2, batch_size=2)
        self.assertTrue(self.nodes["b"].store.claim_slot("archive", 1, 2, self.time, LEASE))
        studies = [study_for_shard(0, 2, "1.2.5"), study_for_shard(0, 2, "1.2.6"), study_for_shard(1, 2, "1.2.5"), study_for_shard(1, 2, "1.2.6")]
        for node in self.nodes.values():
            node.peer.delay = 0.3
        order: dict[str, list[str]] = {s: [] for s in studies}
        by_uid: dict[str, str] = {}
        self.start("a", config)
        self.start("b", config)
        for burst in range(6):
            # Two instances of each study at once, received by a or b; both nodes poked (b first).
            for i in range(8):
                study = studies[i % 4]
                record = self.add(node=("a", "b")[(burst + i // 4) % 2], study=study)
                order[study].append(record.sop_instance_uid)
                by_uid[record.sop_instance_uid] = study
            for name in ("b", "a"):
                worker = self.nodes[name].worker
                assert worker is not None
                worker.poke()
            self.advance(0.5)
        self.advance(60)
        for name, node in self.nodes.items():
            carried: dict[str, list[str]] = {}
            for uid in node.peer.uids():
                carried.setdefault(by_uid[uid], []).append(uid)
            for study, uids in carried.items():
                self.assertEqual(uids, order[study], f"study {study} out of order on node {name}")
        self.assertEqual(
            {by_uid[u] for u in self.nodes["a"].peer.uids()} & {by_uid[u] for u in self.nodes["b"].peer.uids()},
            set(),
            "a study went through both nodes",
        )
        self.assertEqual(sorted(self.received()), sorted(by_uid))

    def test_a_circuit_opened_on_one_node_stops_the_other_until_a_probe_closes_it(self) -> None:
        """a's circuit opens: b (idle meanwhile) opens at its heartbeat and sends nothing; a's probe succeeds and b closes and sends, though b's own probes fail."""
        config = self.config(max_associations=2)
        a, b = self.nodes["a"], self.nodes["b"]
        self.assertTrue(b.store.claim_slot("archive", 1, 2, self.time, LEASE))
        down = [True]
        data_connects = {"a": 0, "b": 0}

        def connect(name: str) -> Callable[..., Any]:
            peer = self.nodes[name].peer

            def opener(destination: DicomDestination, proposals: Any) -> "Deferred[ClientAssociation]":
                if proposals:
                    data_connects[name] += 1
                if down[0] or (name == "b" and not proposals):
                    return fail(ConnectionRefusedError())
                return peer.connect(destination, proposals)

            return opener

        worker_a = self.start("a", config, connect("a"))
        worker_b = self.start("b", config, connect("b"))
        first = self.add(study=study_for_shard(0, 2))
        worker_a.poke()
        self.advance(4)  # refused at 0, 1 and 3 s: a's circuit opens
        self.assertEqual(worker_a.status().circuit, "open")
        self.advance(10)  # b's heartbeat reads the record
        self.assertEqual(worker_b.status().circuit, "open")
        self.assertEqual(b.observer.kinds("adopted"), [("adopted", True)])
        second = self.add(node="b", study=study_for_shard(1, 2))
        worker_b.poke()
        self.advance(5)
        self.assertEqual(data_connects["b"], 0, "b tried the destination while a's circuit was open")
        down[0] = False
        self.advance(40)
        self.assertEqual(worker_a.status().circuit, "closed")
        self.assertEqual(worker_b.status().circuit, "closed")
        self.assertEqual(b.observer.kinds("adopted"), [("adopted", True), ("adopted", False)])
        self.assertEqual(a.peer.uids(), [first.sop_instance_uid])
        self.assertEqual(b.peer.uids(), [second.sop_instance_uid])
        self.assertEqual(b.observer.kinds("down"), [], "b counted a down event of its own")

    def test_drain_finishes_the_batch_releases_the_slot_and_undrain_resumes(self) -> None:
        """Draining a: its batch in flight is delivered and written, its claim released, b takes the next entries; undrained, a goes on."""
        config = self.config(max_associations=1)
        a, b = self.nodes["a"], self.nodes["b"]
        a.peer.delay = 1.0
        batch = [self.add() for _ in range(3)]
        worker_a = self.start("a", config)
        self.start("b", config)
        self.advance(0.5)
        self.assertEqual(worker_a.status().slots_held, 1)
        drained = worker_a.set_draining(True)
        self.advance(1)
        self.assertNoResult(drained)
        self.advance(2)
        self.successResultOf(drained)
        self.assertEqual((worker_a.status().slots_held, worker_a.status().draining), (0, True))
        self.assertEqual(a.peer.uids(), [r.sop_instance_uid for r in batch])
        self.assertEqual({e.state for e in self.store.entries("archive")}, {EntryState.DELIVERED})
        self.assertEqual([x for x in a.peer.associations if x.open], [])
        later = self.add()
        worker_a.poke()
        self.advance(2)
        self.assertEqual(b.peer.uids(), [later.sop_instance_uid], "the drained node's slot was not free for b")
        self.assertEqual(len(a.peer.uids()), 3)
        # Undrained while b holds the slot: a polls, and takes the slot once b drains in turn.
        self.successResultOf(worker_a.set_draining(False))
        assert b.worker is not None
        b.worker.set_draining(True)
        last = self.add()
        self.advance(3)
        self.assertEqual(a.peer.uids()[-1], last.sop_instance_uid)


class Unreachable:
    """A store that raises StoreUnavailable from every call while ``away`` (PostgreSQL stopped), else the real store's answer."""

    def __init__(self, store: MemoryQueueStore) -> None:
        self.inner = store
        self.node = store.node
        self.away = False
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.away:
                self.refused += 1
                raise StoreUnavailable("connection refused (the test's PostgreSQL is away)")
            return method(*args, **kwargs)

        return call


class StoreUnavailableTests(ClusterTestsMixin, SynchronousTestCase):
    """The store cannot be reached for a while: sends in flight finish, their outcomes wait on the slot."""

    def test_outcomes_wait_for_the_store_and_nothing_new_is_leased(self) -> None:
        """Store away mid-batch: the batch is sent, nothing announced or leased; back 20 s later, each delivery is written once."""
        a = self.nodes["a"]
        away = Unreachable(a.store)
        a.store = away  # type: ignore[assignment]
        a.peer.delay = 1.0
        batch = [self.add() for _ in range(3)]
        worker = self.start("a", self.config())
        self.advance(0.5)
        away.away = True
        later = self.add(store=self.make_store("c"))  # journaled by another node, which still reaches the store
        worker.poke()
        self.advance(20)
        self.assertEqual(a.peer.uids(), [r.sop_instance_uid for r in batch])
        self.assertIn("StoreUnavailable", worker.status().journal_error)
        self.assertEqual(a.observer.kinds("delivered"), [])
        self.assertEqual({e.state for e in self.store.entries("archive")}, {EntryState.LEASED, EntryState.QUEUED})
        self.assertGreater(away.refused, 3)
        away.away = False
        self.advance(3)
        self.assertEqual(a.peer.uids(), [r.sop_instance_uid for r in batch + [later]])
        self.assertEqual({e.state for e in self.store.entries("archive")}, {EntryState.DELIVERED})
        self.assertEqual(len(a.observer.kinds("delivered")), 4)
        self.assertEqual(a.observer.kinds("lease_lost"), [])
        self.assertEqual(worker.status().journal_error, "")
        self.flushLoggedErrors(JournalRefused)
        self.flushLoggedErrors(StoreUnavailable)


class LeaseLostMetricTests(ClusterTestsMixin, SynchronousTestCase):
    """The fenced outcome reaches the metrics as gateway_leases_lost_total{destination}."""

    def test_a_lost_lease_is_counted(self) -> None:
        """The LeaseLost event of a fenced delivery moves dicom_gateway_leases_lost_total for the destination."""
        from prometheus_client import CollectorRegistry

        from gateway.observe import GatewayMetrics

        registry = CollectorRegistry()
        metrics = GatewayMetrics(registry, [], wall=lambda: self.time, version="test")
        a = self.nodes["a"]
        a.observer = events.FanOutObserver(metrics, a.observer)  # type: ignore[assignment]
        a.peer.delay = 5.0
        self.add()
        self.start("a", self.config(max_associations=1))
        self.start("b", self.config(max_associations=1))
        self.advance(1)
        a.paused = True
        self.advance(44)
        a.paused = False
        self.advance(10)
        self.assertEqual(registry.get_sample_value("dicom_gateway_leases_lost_total", {"destination": "archive"}), 1.0)


class LocalSpoolTests(ClusterTestsMixin, SynchronousTestCase):
    """Node-local spools (``spool.shared: false``): each node sends only what it received, through the cluster's slots."""

    def setUp(self) -> None:
        super().setUp()
        self.store = self.make_store("a", local_only=True)
        self.nodes["a"].store = self.store
        self.nodes["b"].store = self.make_store("b", local_only=True)

    def test_an_idle_node_yields_its_slot_to_a_node_with_work(self) -> None:
        """a holds the only slot but has nothing of its own: it gives the claim up within two heartbeats, and b sends what it received; then a gets it back for its own."""
        config = self.config(max_associations=1)
        a, b = self.nodes["a"], self.nodes["b"]
        worker_a = self.start("a", config)
        worker_b = self.start("b", config)
        self.advance(1)
        self.assertEqual((worker_a.status().slots_held, worker_b.status().slots_held), (1, 0))
        theirs = self.add(node="b")
        worker_b.poke()
        self.advance(25)
        self.assertEqual(b.peer.uids(), [theirs.sop_instance_uid])
        self.assertEqual(a.peer.uids(), [])
        ours = self.add(node="a")
        worker_a.poke()
        self.advance(25)
        self.assertEqual(a.peer.uids(), [ours.sop_instance_uid])
        self.assertEqual({e.state for e in self.store.entries("archive")}, {EntryState.DELIVERED})


class SqliteStoreMixin:
    """The same nodes on two SqliteQueueStore objects sharing one journal file (as two processes would)."""

    def make_store(self, node: str, local_only: bool = False) -> Any:
        """Node ``node``'s connection to the test's journal file (closed at cleanup)."""
        store = SqliteQueueStore(os.path.join(self.tmp, "queue.sqlite"), node, local_only)  # type: ignore[attr-defined]
        self.addCleanup(store.close)  # type: ignore[attr-defined]
        return store


class SqliteClusterWorkerTests(SqliteStoreMixin, ClusterWorkerTests):
    """Two nodes forwarding one destination's queue, on the SQLite store."""


class SqliteLocalSpoolTests(SqliteStoreMixin, LocalSpoolTests):
    """Node-local spools, on the SQLite store."""
