"""Tests for :mod:`gateway.commitment.worker`: leasing, deciding, sending, retrying and dead-lettering reports.

Driven with ``task.Clock``, the synchronous runner and the in-memory store
(the verified fake of :mod:`tests.unit.queue.test_commitments`); the report
sender is a scripted fake recording what it was asked to send.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway import events
from gateway.blocking import SynchronousRunner
from gateway.commitment.model import CommitmentReport, FailedReference
from gateway.commitment.worker import CommitmentWorker, committing_destinations, retry_delay
from gateway.config.schema import (
    AcceptConfig,
    CommitmentConfig,
    DicomDestination,
    GatewayConfig,
    LimitsConfig,
    ListenerConfig,
    ModalityConfig,
    SpoolConfig,
)
from gateway.queue.commitments import Transaction, TransactionState
from gateway.queue.interfaces import LeaseLost, NewEntry, StoreUnavailable
from gateway.queue.memory import MemoryQueueStore
from gateway.queue.sqlite import SqliteQueueStore
from tests.unit.queue.test_commitments import CT, UID, new_transaction, refs
from tests.unit.queue.test_store import T0, make_record

LEASE = 60.0
RECHECK = 10.0


def config(commitment: CommitmentConfig | None = None, **listener: Any) -> GatewayConfig:
    """A configuration with one listener ``main``, a modality ``ct1`` and destinations ``pacs`` and ``archive`` (committing)."""
    return GatewayConfig(
        source="test",
        ae_title="GATEWAY",
        listen=(ListenerConfig(host="127.0.0.1", port=11112, name="main", **listener),),
        accept=AcceptConfig(),
        limits=LimitsConfig(),
        spool=SpoolConfig(path="/nonexistent"),
        destinations=(
            DicomDestination("pacs", "PACS", "127.0.0.1", 104, "GATEWAY"),
            DicomDestination("archive", "ARCH", "127.0.0.1", 105, "GATEWAY", storage_commitment=True),
        ),
        modalities=(ModalityConfig("ct1", "MODALITY", "127.0.0.1", 4006),),
        commitment=commitment or CommitmentConfig(retry_initial=10.0, retry_max=40.0),
    )


class ReportNotDelivered(Exception):
    """A delivery failure as the sender reports it."""


class FakeSender:
    """Records each report it is asked to send; answers from a script (``None``: success; an exception: failure; ``"hang"``: never)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, CommitmentReport]] = []
        self.script: list[Any] = []
        self.hanging: list[Deferred[None]] = []

    def send(self, transaction: Transaction, report: CommitmentReport) -> Deferred[None]:
        """Record and answer the next scripted outcome."""
        self.sent.append((transaction.transaction_uid, report))
        outcome = self.script.pop(0) if self.script else None
        if outcome == "hang":
            d: Deferred[None] = Deferred()
            self.hanging.append(d)
            return d
        if isinstance(outcome, Exception):
            return fail(outcome)
        return succeed(None)


class Recorder:
    """An observer keeping every event."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def observe(self, event: Any) -> None:
        """Keep it."""
        self.events.append(event)

    def of(self, kind: type) -> list[Any]:
        """The events of one kind."""
        return [e for e in self.events if isinstance(e, kind)]


class WorkerTestsMixin:
    """Builds a store, a clock, a sender and a worker; helpers to journal instances and transactions."""

    def setUp(self) -> None:
        """A memory store on node ``a``, a clock at 0 (wall time ``T0``), a fake sender and a worker."""
        self.clock = Clock()
        self.store = self.make_store()
        self.config = config()
        self.sender = FakeSender()
        self.observer = Recorder()
        self.worker = self.make_worker(self.store, self.sender, self.observer)

    def make_store(self) -> Any:
        """The journal of node ``a`` (the memory fake; the SQLite classes below override this)."""
        return MemoryQueueStore("a")

    def make_peer(self, store: Any, node: str) -> Any:
        """Another node's store object on the same journal."""
        return store.peer(node)

    def wall(self) -> float:
        """Wall-clock time: ``T0`` plus the fake clock."""
        return T0 + self.clock.seconds()

    def make_worker(self, store: Any, sender: FakeSender, observer: Recorder) -> CommitmentWorker:
        """A worker on ``store`` sharing this test's clock and configuration."""
        return CommitmentWorker(
            store,
            SynchronousRunner(),
            self.clock,
            self.wall,
            lambda: self.config,
            sender,
            observer,
            lease_seconds=LEASE,
            recheck=RECHECK,
            poll=5.0,
        )

    def receive(self, n: int, destinations: tuple[str, ...] = ("pacs",)) -> list[int]:
        """Journal CT instance ``UID + n`` with an entry per destination; returns the entry ids."""
        record = make_record(f"i{n}", sop_class_uid=CT, sop_instance_uid=f"{UID}{n}", received_at=self.wall())
        result = self.store.add_instance(record, [NewEntry("r", d) for d in destinations], self.wall(), 0.0)
        return list(result.entry_ids)

    def deliver(self, destination: str = "pacs") -> None:
        """Lease and complete every queued entry of ``destination``."""
        leased = self.store.lease(destination, 100, self.wall(), 60.0)
        self.store.complete([e.entry_id for e in leased], self.wall())

    def kill(self, destination: str = "pacs") -> None:
        """Dead-letter every queued entry of ``destination``."""
        for entry in self.store.lease(destination, 100, self.wall(), 60.0):
            self.store.dead_letter(entry.entry_id, "rejected", self.wall())

    def request(self, uid: str = "2.25.1", *numbers: int, **overrides: Any) -> Transaction:
        """Journal an N-ACTION for instances ``numbers`` (1 and 2 by default)."""
        values: dict[str, Any] = dict(
            deadline=self.wall() + 3600, report_deadline=self.wall() + 7200, lookback_from=self.wall() - 86400
        )
        values.update(overrides)
        transaction, created = self.store.add_transaction(new_transaction(uid, refs(*(numbers or (1, 2))), **values), self.wall())
        assert created
        return transaction

    def turn(self, worker: CommitmentWorker | None = None) -> int:
        """One synchronous turn of the worker."""
        d = Deferred.fromCoroutine((worker or self.worker).turn())
        return int(self.successResultOf(d))  # type: ignore[attr-defined]

    def state(self, uid: str = "2.25.1") -> Transaction:
        """The journaled transaction."""
        return self.store.get_transaction(uid)


class DecideTests(WorkerTestsMixin, SynchronousTestCase):
    """Deciding: sent when decided, deferred while undecided, failures at the deadline."""

    def test_decided_transaction_is_reported(self) -> None:
        """Both instances delivered: one report, event type 1, the transaction REPORTED, an event with the latency."""
        self.receive(1)
        self.receive(2)
        self.deliver()
        self.request()
        self.clock.advance(3)
        self.assertEqual(self.turn(), 1)
        self.assertEqual(self.sender.sent, [("2.25.1", CommitmentReport("2.25.1", committed=refs(1, 2)))])
        self.assertEqual(self.state().state, TransactionState.REPORTED)
        (sent,) = self.observer.of(events.CommitmentReportSent)
        self.assertEqual((sent.event_type, sent.committed, sent.failed, sent.attempts), (1, 2, 0, 1))
        self.assertEqual(sent.latency_seconds, 3.0)
        self.assertEqual(self.turn(), 0, "nothing more is owed")

    def test_undecided_transaction_deferred_to_recheck(self) -> None:
        """An instance still queued: no report; the transaction looks again after ``recheck``, then reports once delivered."""
        self.receive(1)
        self.receive(2)
        self.request()
        self.assertEqual(self.turn(), 1)
        self.assertEqual(self.sender.sent, [])
        transaction = self.state()
        self.assertEqual(transaction.state, TransactionState.OPEN)
        self.assertEqual(transaction.report, "")
        self.assertEqual(transaction.next_attempt_at, self.wall() + RECHECK)
        self.assertIn("2 of 2", transaction.last_error)
        self.clock.advance(RECHECK - 1)
        self.assertEqual(self.turn(), 0, "not due yet")
        self.deliver()
        self.clock.advance(1)
        self.assertEqual(self.turn(), 1)
        self.assertEqual([r.event_type for _, r in self.sender.sent], [1])

    def test_recheck_never_later_than_the_deadline(self) -> None:
        """A deadline nearer than ``recheck``: the next look is at the deadline."""
        self.receive(1)
        self.request("2.25.1", 1, deadline=self.wall() + 4)
        self.turn()
        self.assertEqual(self.state().next_attempt_at, self.wall() + 4)

    def test_deadline_reports_failures(self) -> None:
        """At the deadline: the queued instance fails 0x0110, the one never received 0x0112, the delivered one is committed."""
        self.receive(1)
        self.deliver()
        self.receive(2)  # queued: the destination is down
        self.request("2.25.1", 1, 2, 3)
        self.turn()
        self.assertEqual(self.sender.sent, [])
        self.clock.advance(3600)
        self.turn()
        (report,) = [r for _, r in self.sender.sent]
        self.assertEqual(report.committed, refs(1))
        self.assertEqual(
            report.failed, (FailedReference(refs(2)[0], 0x0110), FailedReference(refs(3)[0], 0x0112))
        )
        self.assertEqual(report.event_type, 2)
        self.assertEqual(self.state().state, TransactionState.REPORTED)

    def test_dead_letter_fails_at_once(self) -> None:
        """An instance dead-lettered at its destination is reported failed (0x0110) without waiting for the deadline."""
        self.receive(1)
        self.kill()
        self.request("2.25.1", 1)
        self.turn()
        ((_, report),) = self.sender.sent
        self.assertEqual(report.failed, (FailedReference(refs(1)[0], 0x0110),))

    def test_committed_policy_waits_for_the_archive(self) -> None:
        """``committed``: delivered to the committing archive is not enough; its COMMITTED answer is."""
        (entry_id,) = self.receive(1, ("archive",))
        self.deliver("archive")
        self.store.note_copies([(entry_id, "archive", CT, f"{UID}1")], self.wall())
        self.request("2.25.1", 1, policy="committed")
        self.turn()
        self.assertEqual(self.sender.sent, [])
        self.store.copies_requested("archive", [entry_id], "2.25.77", self.wall())
        self.store.copies_answered("2.25.77", [f"{UID}1"], [], self.wall())
        self.clock.advance(RECHECK)
        self.turn()
        self.assertEqual([r.committed for _, r in self.sender.sent], [refs(1)])

    def test_committing_destinations_from_the_configuration(self) -> None:
        """Only DICOM destinations with ``storage_commitment: true`` commit."""
        self.assertEqual(committing_destinations(self.config), frozenset({"archive"}))

    def test_decided_report_resent_unchanged_after_a_crash(self) -> None:
        """A node decided a report and died before sending it: the next lease sends the recorded report, not a new verdict."""
        self.receive(1)
        self.request("2.25.1", 1)
        (leased,) = self.store.lease_transactions(self.wall(), 1, LEASE)
        recorded = CommitmentReport("2.25.1", failed=(FailedReference(refs(1)[0], 0x0110),))
        self.store.decide_transaction("2.25.1", recorded.to_json(), self.wall(), leased.lease_generation)
        # The node dies here. Meanwhile the instance is delivered: a new verdict would say "committed".
        self.deliver()
        self.clock.advance(LEASE - 1)
        self.assertEqual(self.turn(), 0, "the dead node's lease still runs")
        self.clock.advance(2)
        self.assertEqual(self.turn(), 1)
        self.assertEqual(self.sender.sent, [("2.25.1", recorded)])
        self.assertEqual(self.state().state, TransactionState.REPORTED)

    def test_unknown_policy_deferred_not_reported(self) -> None:
        """A policy this version does not know: no report (it would be a guess), looked at again later."""
        self.receive(1)
        self.request("2.25.1", 1, policy="someday")
        self.turn()
        self.assertEqual(self.sender.sent, [])
        self.assertEqual(self.state().state, TransactionState.OPEN)
        self.assertIn("someday", self.state().last_error)


class RetryTests(WorkerTestsMixin, SynchronousTestCase):
    """Report delivery: retried with backoff, dead at ``report_deadline``."""

    def test_retry_delays_double_up_to_the_maximum(self) -> None:
        """``retry_initial`` doubling, capped by ``retry_max``."""
        settings = CommitmentConfig(retry_initial=10.0, retry_max=40.0)
        self.assertEqual([retry_delay(n, settings) for n in range(1, 6)], [10.0, 20.0, 40.0, 40.0, 40.0])

    def test_report_retried_with_backoff_then_delivered(self) -> None:
        """Two failed deliveries (10 s, then 20 s later), the third succeeds: attempts counted, failures observed."""
        self.receive(1)
        self.deliver()
        self.request("2.25.1", 1)
        self.sender.script = [ReportNotDelivered("refused"), ReportNotDelivered("down")]
        self.turn()
        transaction = self.state()
        self.assertEqual((transaction.attempts, transaction.last_error), (1, "refused"))
        self.assertEqual(transaction.next_attempt_at, self.wall() + 10)
        self.clock.advance(9)
        self.assertEqual(self.turn(), 0)
        self.clock.advance(1)
        self.turn()
        self.assertEqual(self.state().next_attempt_at, self.wall() + 20)
        self.clock.advance(20)
        self.turn()
        self.assertEqual(self.state().state, TransactionState.REPORTED)
        self.assertEqual(len(self.sender.sent), 3)
        self.assertEqual(len({r.to_json() for _, r in self.sender.sent}), 1, "the same report every time")
        failed = self.observer.of(events.CommitmentReportFailed)
        self.assertEqual([(f.attempt, f.retry_in, f.dead) for f in failed], [(1, 10.0, False), (2, 20.0, False)])
        (sent,) = self.observer.of(events.CommitmentReportSent)
        self.assertEqual(sent.attempts, 3)

    def test_retry_timings_of_the_listener(self) -> None:
        """A listener's own ``commitment`` settings give the retry timings of its transactions."""
        self.config = replace(
            config(CommitmentConfig(retry_initial=100.0)),
            listen=(ListenerConfig(host="127.0.0.1", port=1, name="main", commitment=CommitmentConfig(retry_initial=3.0)),),
        )
        self.receive(1)
        self.deliver()
        self.request("2.25.1", 1)
        self.sender.script = [ReportNotDelivered("down")]
        self.turn()
        self.assertEqual(self.state().next_attempt_at, self.wall() + 3)

    def test_last_attempt_at_the_report_deadline(self) -> None:
        """A backoff that would pass ``report_deadline`` is cut to it; failing then makes the transaction DEAD."""
        self.receive(1)
        self.deliver()
        self.request("2.25.1", 1, report_deadline=self.wall() + 15)
        self.sender.script = [ReportNotDelivered("down")] * 3
        self.turn()  # attempt 1 at 0: again at 10
        self.clock.advance(10)
        self.turn()  # attempt 2 at 10: 20 s later is past the deadline, so at 15
        self.assertEqual(self.state().next_attempt_at, T0 + 15)
        self.clock.advance(5)
        self.turn()  # attempt 3 at 15: the report deadline has come
        transaction = self.state()
        self.assertEqual(transaction.state, TransactionState.DEAD)
        self.assertIn("3 attempt(s)", transaction.dead_reason)
        self.assertIn("down", transaction.dead_reason)
        last = self.observer.of(events.CommitmentReportFailed)[-1]
        self.assertEqual((last.attempt, last.dead), (3, True))
        self.assertEqual(self.turn(), 0, "a dead letter is not leased")
        self.assertEqual(self.observer.of(events.CommitmentReportSent), [])

    def test_requeued_dead_letter_sent_again(self) -> None:
        """An operator's retry of a DEAD transaction sends the same recorded report."""
        self.receive(1)
        self.deliver()
        self.request("2.25.1", 1, report_deadline=self.wall())
        self.sender.script = [ReportNotDelivered("down")]
        self.turn()
        self.assertEqual(self.state().state, TransactionState.DEAD)
        self.store.requeue_transaction("2.25.1", self.wall(), self.wall() + 3600)
        self.turn()
        self.assertEqual(self.state().state, TransactionState.REPORTED)
        self.assertEqual(self.sender.sent[0][1], self.sender.sent[1][1])


class FailingStore(MemoryQueueStore):
    """A memory store whose calls named in ``failing`` raise StoreUnavailable."""

    failing: set[str] = set()

    def __getattribute__(self, name: str) -> Any:
        """Fail the named methods."""
        if name in object.__getattribute__(self, "failing"):

            def away(*args: Any, **kwargs: Any) -> Any:
                raise StoreUnavailable(f"{name}: the journal is away")

            return away
        return super().__getattribute__(name)


class LoopTests(WorkerTestsMixin, SynchronousTestCase):
    """The running service: pokes, polls, store faults, lease renewal."""

    def test_poke_wakes_the_idle_loop(self) -> None:
        """An N-ACTION journaled while the loop sleeps is reported at the poke, not at the next poll."""
        self.receive(1)
        self.deliver()
        self.worker.startService()
        self.addCleanup(self.worker.stopService)
        self.request("2.25.1", 1)
        self.assertEqual(self.sender.sent, [])
        self.worker.poke()
        self.assertEqual(len(self.sender.sent), 1)

    def test_idle_loop_polls(self) -> None:
        """Without a poke, a due transaction is found at the next poll."""
        self.receive(1)
        self.deliver()
        self.worker.startService()
        self.addCleanup(self.worker.stopService)
        self.request("2.25.1", 1)
        self.clock.advance(4.9)
        self.assertEqual(self.sender.sent, [])
        self.clock.advance(0.1)
        self.assertEqual(len(self.sender.sent), 1)

    def test_store_unavailable_backs_off(self) -> None:
        """The journal away: the loop waits ``recheck`` and tries again; nothing is lost meanwhile."""
        store = FailingStore("a")
        store.failing = {"lease_transactions"}
        worker = self.make_worker(store, self.sender, self.observer)
        self.store = store
        self.receive(1)
        self.deliver()
        self.request("2.25.1", 1)
        worker.startService()
        self.addCleanup(worker.stopService)
        self.assertEqual(self.sender.sent, [])
        store.failing = set()
        self.clock.advance(RECHECK - 0.1)
        self.assertEqual(self.sender.sent, [])
        self.clock.advance(0.1)
        self.assertEqual(len(self.sender.sent), 1)
        self.assertEqual(self.state().state, TransactionState.REPORTED)

    def test_lease_renewed_while_a_send_runs(self) -> None:
        """A send taking three leases long keeps its lease: another node takes nothing, one report is recorded."""
        self.receive(1)
        self.deliver()
        self.request("2.25.1", 1)
        self.sender.script = ["hang"]
        self.worker.startService()
        self.addCleanup(self.worker.stopService)
        other_sender = FakeSender()
        other = self.make_worker(self.make_peer(self.store, "b"), other_sender, Recorder())
        for _ in range(9):
            self.clock.advance(LEASE / 3)
            self.assertEqual(self.turn(other), 0)
        self.sender.hanging[0].callback(None)
        self.assertEqual(self.state().state, TransactionState.REPORTED)
        self.assertEqual((len(self.sender.sent), other_sender.sent), (1, []))

    def test_outcome_after_a_lost_lease_is_dropped(self) -> None:
        """Renewals failing, the lease expires and node b reports; node a's late outcome is dropped, not written over b's."""
        store = FailingStore("a")
        self.store = store
        worker = self.make_worker(store, self.sender, self.observer)
        self.receive(1)
        self.deliver()
        self.request("2.25.1", 1)
        self.sender.script = ["hang"]
        worker.startService()
        self.addCleanup(worker.stopService)
        store.failing = {"renew_transactions"}
        self.clock.advance(LEASE + 1)
        other_sender, other_events = FakeSender(), Recorder()
        other = self.make_worker(MemoryQueueStore.peer(store, "b"), other_sender, other_events)
        self.assertEqual(self.turn(other), 1)
        self.assertEqual(len(other_sender.sent), 1)
        self.assertEqual(len(other_events.of(events.CommitmentReportSent)), 1)
        store.failing = set()
        self.sender.hanging[0].callback(None)
        transaction = self.state()
        self.assertEqual((transaction.state, transaction.lease_owner), (TransactionState.REPORTED, "b"))
        self.assertEqual(self.observer.of(events.CommitmentReportSent), [], "node a's outcome is dropped")
        self.assertRaises(LeaseLost, store.transaction_reported, "2.25.1", self.wall(), 1)

    def test_stop_waits_for_the_send_in_flight(self) -> None:
        """stopService fires once the send in flight has finished and been recorded."""
        self.receive(1)
        self.deliver()
        self.request("2.25.1", 1)
        self.sender.script = ["hang"]
        self.worker.startService()
        stopped = self.worker.stopService()
        self.assertNoResult(stopped)
        self.sender.hanging[0].callback(None)
        self.successResultOf(stopped)
        self.assertEqual(self.state().state, TransactionState.REPORTED)


    def test_stop_gives_up_waiting_after_the_grace(self) -> None:
        """A send that does not end: the stop completes after ``grace``; the transaction stays OPEN and leased (taken again later)."""
        self.receive(1)
        self.deliver()
        self.request("2.25.1", 1)
        self.sender.script = ["hang"]
        self.worker.startService()
        stopped = self.worker.stopService()
        self.clock.advance(9.9)
        self.assertNoResult(stopped)
        self.clock.advance(0.1)
        self.successResultOf(stopped)
        self.assertEqual(self.state().state, TransactionState.OPEN)
        self.clock.advance(LEASE)
        self.assertEqual(len(self.store.lease_transactions(self.wall(), 10, LEASE)), 1, "the expired lease is taken again")


class TwoNodeTests(WorkerTestsMixin, SynchronousTestCase):
    """Several nodes on one journal: a dead node's transactions are taken over, each reported exactly once."""

    def test_dead_nodes_transactions_reported_once_by_the_other(self) -> None:
        """Node a leases three transactions and dies; node b reports each after the lease expires, exactly once."""
        for n in (1, 2, 3):
            self.receive(n)
        self.deliver()
        for n in (1, 2, 3):
            self.request(f"2.25.{n}", n)
        leased = self.store.lease_transactions(self.wall(), 10, LEASE)  # node a, which dies now
        self.assertEqual(len(leased), 3)
        b_sender = FakeSender()
        b = self.make_worker(self.make_peer(self.store, "b"), b_sender, Recorder())
        self.clock.advance(LEASE - 1)
        self.assertEqual(self.turn(b), 0)
        self.clock.advance(2)
        self.assertEqual(self.turn(b), 3)
        self.assertEqual(sorted(uid for uid, _ in b_sender.sent), ["2.25.1", "2.25.2", "2.25.3"])
        self.assertEqual({t.state for t in self.store.transactions()}, {TransactionState.REPORTED})
        self.clock.advance(LEASE * 10)
        self.assertEqual(self.turn(b), 0)
        self.assertEqual(len(b_sender.sent), 3)
        # The dead node's generation no longer holds: were it to wake, its writes are refused.
        self.assertRaises(LeaseLost, self.store.transaction_reported, "2.25.1", self.wall(), leased[0].lease_generation)

    def test_two_live_nodes_share_without_repeats(self) -> None:
        """Two running nodes and many transactions: every transaction reported exactly once across both."""
        for n in range(1, 21):
            self.receive(n)
        self.deliver()
        for n in range(1, 21):
            self.request(f"2.25.{n}", n)
        b_sender = FakeSender()
        b = self.make_worker(self.make_peer(self.store, "b"), b_sender, Recorder())
        while self.turn(self.worker) + self.turn(b):
            pass
        sent = [uid for uid, _ in self.sender.sent + b_sender.sent]
        self.assertEqual(sorted(sent), sorted(f"2.25.{n}" for n in range(1, 21)))
        self.assertTrue(self.sender.sent and b_sender.sent, "both nodes took a share")


class SqliteStoreMixin:
    """The same tests on the SQLite store (each node its own connection to one file)."""

    mktemp: Any
    addCleanup: Any

    def make_store(self) -> SqliteQueueStore:
        """A fresh SQLite journal for node ``a``."""
        directory = self.mktemp()
        os.makedirs(directory)
        store = SqliteQueueStore(os.path.join(directory, "queue.sqlite"), "a")
        self.addCleanup(store.close)
        return store

    def make_peer(self, store: SqliteQueueStore, node: str) -> SqliteQueueStore:
        """Another node's connection to the same file."""
        peer = SqliteQueueStore(store.path, node)
        self.addCleanup(peer.close)
        return peer


class SqliteDecideTests(SqliteStoreMixin, DecideTests):
    """:class:`DecideTests` on the SQLite store."""


class SqliteRetryTests(SqliteStoreMixin, RetryTests):
    """:class:`RetryTests` on the SQLite store."""


class SqliteTwoNodeTests(SqliteStoreMixin, TwoNodeTests):
    """:class:`TwoNodeTests` on the SQLite store."""
