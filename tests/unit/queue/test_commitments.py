"""The ``CommitmentJournalTests`` mixin: ICommitmentJournal against every store (issue 15).

The same tests run against the in-memory fake (which the engine's unit tests
use), the SQLite store and (in ``tests.adapters.test_postgres_commitments``)
the PostgreSQL store, so the fake cannot drift from the durable stores
(Buildbot's verified fakes). Conventions the interface leaves open are
listed in :mod:`gateway.queue.memory_commitments`; these tests pin them.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.interface import Method
from zope.interface.verify import verifyObject

from gateway.queue.commitments import (
    CopyState,
    ICommitmentJournal,
    NewTransaction,
    Reference,
    TransactionConflict,
    TransactionState,
    TransactionStats,
    Unforwarded,
)
from gateway.queue.interfaces import Attempt, EntryState, IQueueStore, LeaseLost, NewEntry
from gateway.queue.memory import MemoryQueueStore
from gateway.queue.sqlite import SqliteQueueStore
from tests.unit.queue.test_store import T0, make_record

CT = "1.2.840.10008.5.1.4.1.1.2"
UID = "1.2.826.0.1.3680043.8.498.77."


def refs(*numbers: int) -> tuple[Reference, ...]:
    """References to CT instances ``UID + n``."""
    return tuple(Reference(CT, f"{UID}{n}") for n in numbers)


def new_transaction(uid: str = "2.25.1", references: tuple[Reference, ...] = refs(1, 2), **overrides: Any) -> NewTransaction:
    """A NewTransaction with plausible defaults; keyword arguments override fields."""
    values: dict[str, Any] = dict(
        transaction_uid=uid,
        calling_ae_title="MODALITY",
        called_ae_title="GATEWAY",
        modality="ct1",
        listener="main",
        policy="delivered",
        references=references,
        deadline=T0 + 3600,
        report_deadline=T0 + 86400,
        lookback_from=T0 - 7 * 86400,
        source_address="192.0.2.1",
    )
    values.update(overrides)
    return NewTransaction(**values)


class CommitmentJournalTests:
    """Behaviour every ICommitmentJournal must have; mixed into a TestCase with ``make_store`` and ``make_peer``.

    ``make_store()`` returns a fresh, empty store (node ``"node"``);
    ``make_peer(store, node)`` another node's store object on the same tables.
    """

    assertEqual: Any
    assertTrue: Any
    assertFalse: Any
    assertIsNone: Any
    assertRaises: Any
    assertIn: Any
    assertNotIn: Any
    assertIsInstance: Any
    addCleanup: Any

    def make_store(self) -> Any:
        """Return a fresh, empty store (implemented by each concrete class)."""
        raise NotImplementedError

    def make_peer(self, store: Any, node: str) -> Any:
        """Return a store object for ``node`` sharing ``store``'s tables (implemented by each concrete class)."""
        raise NotImplementedError

    def store(self) -> Any:
        """A fresh store closed at cleanup."""
        s = self.make_store()
        self.addCleanup(s.close)
        return s

    def peer(self, store: Any, node: str) -> Any:
        """Another node's store object on ``store``'s tables, closed at cleanup."""
        p = self.make_peer(store, node)
        self.addCleanup(p.close)
        return p

    def leased(self, store: Any, uid: str = "2.25.1", now: float = T0) -> int:
        """Add a transaction ``uid`` and lease it; returns the generation."""
        store.add_transaction(new_transaction(uid), now)
        (txn,) = store.lease_transactions(now, 1, 30)
        self.assertEqual(txn.transaction_uid, uid)
        return int(txn.lease_generation)

    def receive(
        self, store: Any, instance_id: str, n: int, destinations: tuple[str, ...] = ("A",), now: float = T0, window: float = 0.0,
        sha: str = "ab" * 32,
    ) -> tuple[int, ...]:
        """Journal instance ``instance_id`` as SOP Instance UID ``UID + n``; returns its entry ids."""
        record = make_record(instance_id, sop_instance_uid=f"{UID}{n}", sop_class_uid=CT, received_at=now, sha256=sha)
        result = store.add_instance(record, [NewEntry("r", d) for d in destinations], now, window)
        return tuple(result.entry_ids)

    # -- the interface ---------------------------------------------------------------

    def test_store_provides_both_interfaces(self) -> None:
        """The store is an IQueueStore and an ICommitmentJournal, every method present with its signature."""
        s = self.store()
        self.assertTrue(verifyObject(IQueueStore, s))
        self.assertTrue(verifyObject(ICommitmentJournal, s))

    # -- add_transaction -------------------------------------------------------------

    def test_new_transaction_is_open_due_now_unleased(self) -> None:
        """A new transaction is OPEN, due at ``now``, leased by nobody, taken by this node, and created."""
        s = self.store()
        new = new_transaction()
        txn, created = s.add_transaction(new, T0)
        self.assertTrue(created)
        self.assertEqual(txn.request, new)
        self.assertEqual(txn.transaction_uid, "2.25.1")
        self.assertEqual((txn.state, txn.requested_at, txn.next_attempt_at, txn.node), (TransactionState.OPEN, T0, T0, "node"))
        self.assertEqual((txn.report, txn.decided_at, txn.attempts, txn.history), ("", None, 0, ()))
        self.assertEqual((txn.lease_owner, txn.lease_generation, txn.leased_until), ("", 0, None))
        self.assertEqual(s.get_transaction("2.25.1"), txn)

    def test_repeat_with_same_references_is_idempotent(self) -> None:
        """The same UID with the same references in another order and with repeats returns the first, not created."""
        s = self.store()
        first, _ = s.add_transaction(new_transaction(references=refs(1, 2, 3)), T0)
        again, created = s.add_transaction(new_transaction(references=refs(3, 1, 2, 1)), T0 + 5)
        self.assertFalse(created)
        self.assertEqual(again, first)
        self.assertEqual(len(s.transactions()), 1)

    def test_repeat_after_report_is_still_idempotent(self) -> None:
        """A repeated N-ACTION after the report was acknowledged returns the REPORTED transaction."""
        s = self.store()
        generation = self.leased(s)
        s.transaction_reported("2.25.1", T0 + 1, generation)
        again, created = s.add_transaction(new_transaction(), T0 + 2)
        self.assertFalse(created)
        self.assertEqual(again.state, TransactionState.REPORTED)

    def test_same_uid_other_references_conflicts(self) -> None:
        """The same Transaction UID with other references raises TransactionConflict and changes nothing."""
        s = self.store()
        first, _ = s.add_transaction(new_transaction(references=refs(1, 2)), T0)
        self.assertRaises(TransactionConflict, s.add_transaction, new_transaction(references=refs(1, 3)), T0 + 1)
        self.assertRaises(TransactionConflict, s.add_transaction, new_transaction(references=refs(1)), T0 + 1)
        other_class = (Reference("1.2.840.10008.5.1.4.1.1.4", f"{UID}1"), Reference(CT, f"{UID}2"))
        self.assertRaises(TransactionConflict, s.add_transaction, new_transaction(references=other_class), T0 + 1)
        self.assertEqual(s.get_transaction("2.25.1"), first)

    def test_request_fields_round_trip(self) -> None:
        """Every NewTransaction field, references in request order, comes back as given."""
        s = self.store()
        new = new_transaction(
            references=refs(5, 3, 4), policy="committed", unrouted="success", report_association="open",
            deadline=T0 + 1.5, report_deadline=T0 + 2.25, lookback_from=T0 - 0.5,
        )
        s.add_transaction(new, T0)
        self.assertEqual(s.get_transaction("2.25.1").request, new)

    # -- leasing ------------------------------------------------------------------------

    def test_lease_takes_due_open_transactions_earliest_due_first(self) -> None:
        """Only due OPEN transactions are leased, earliest ``next_attempt_at`` first, up to ``limit``."""
        s = self.store()
        for n, at in enumerate([T0 + 3, T0 + 1, T0 + 2, T0 + 50]):
            s.add_transaction(new_transaction(f"2.25.{n}"), at)
        self.assertEqual(s.lease_transactions(T0, 10, 30), [])
        self.assertEqual(s.lease_transactions(T0 + 10, 0, 30), [])
        taken = s.lease_transactions(T0 + 10, 2, 30)
        self.assertEqual([t.transaction_uid for t in taken], ["2.25.1", "2.25.2"])
        self.assertEqual({(t.lease_owner, t.lease_generation, t.leased_until) for t in taken}, {("node", 1, T0 + 40)})
        self.assertEqual([t.transaction_uid for t in s.lease_transactions(T0 + 10, 10, 30)], ["2.25.0"])

    def test_live_lease_is_not_leased_again(self) -> None:
        """A transaction under a live lease (``leased_until >= now``) is leased by no node, this one included."""
        s = self.store()
        other = self.peer(s, "n2")
        self.leased(s)
        self.assertEqual(s.lease_transactions(T0 + 30, 10, 30), [])
        self.assertEqual(other.lease_transactions(T0 + 30, 10, 30), [])

    def test_expired_lease_of_another_node_is_taken_over(self) -> None:
        """After the lease expires another node leases it with the next generation, and the old holder is fenced."""
        s = self.store()
        other = self.peer(s, "n2")
        generation = self.leased(s)
        (txn,) = other.lease_transactions(T0 + 31, 10, 30)
        self.assertEqual((txn.lease_owner, txn.lease_generation, txn.leased_until), ("n2", generation + 1, T0 + 61))
        self.assertRaises(LeaseLost, s.decide_transaction, "2.25.1", "{}", T0 + 32, generation)
        self.assertEqual(other.decide_transaction("2.25.1", '{"n2":1}', T0 + 32, generation + 1), '{"n2":1}')

    def test_two_nodes_never_hold_one_transaction(self) -> None:
        """Two nodes leasing in turn share the due transactions without overlap."""
        s = self.store()
        other = self.peer(s, "n2")
        for n in range(6):
            s.add_transaction(new_transaction(f"2.25.{n}"), T0)
        a = {t.transaction_uid for t in s.lease_transactions(T0, 4, 30)}
        b = {t.transaction_uid for t in other.lease_transactions(T0, 4, 30)}
        self.assertEqual(len(a), 4)
        self.assertEqual(len(b), 2)
        self.assertEqual(a & b, set())

    def test_deferred_transaction_is_leased_again_when_due(self) -> None:
        """A deferred transaction waits for ``next_attempt_at`` and is then leased with a higher generation."""
        s = self.store()
        generation = self.leased(s)
        s.defer_transaction("2.25.1", T0 + 60, T0 + 1, generation)
        self.assertEqual(s.lease_transactions(T0 + 59, 10, 30), [])
        (txn,) = s.lease_transactions(T0 + 60, 10, 30)
        self.assertEqual(txn.lease_generation, generation + 1)

    def test_renew_extends_held_leases_and_returns_lost(self) -> None:
        """renew_transactions extends leases still held and names those lost (taken over, ended, unknown)."""
        s = self.store()
        other = self.peer(s, "n2")
        g1 = self.leased(s, "2.25.1")
        g2 = self.leased(s, "2.25.2")
        g3 = self.leased(s, "2.25.3")
        s.defer_transaction("2.25.3", T0 + 500, T0, g3)
        lost = s.renew_transactions({"2.25.1": g1, "2.25.3": g3, "2.25.9": 1}, T0 + 20, 30)
        self.assertEqual(lost, {"2.25.3", "2.25.9"})
        self.assertEqual(s.get_transaction("2.25.1").leased_until, T0 + 50)
        (taken,) = other.lease_transactions(T0 + 31, 10, 30)  # 2.25.2 expired; 2.25.1 was renewed
        self.assertEqual(taken.transaction_uid, "2.25.2")
        self.assertEqual(s.renew_transactions({"2.25.2": g2}, T0 + 32, 30), {"2.25.2"})

    def test_every_fenced_write_raises_lease_lost_and_changes_nothing(self) -> None:
        """decide, defer, reported and dead under a stale generation raise LeaseLost and leave the row as it was."""
        s = self.store()
        other = self.peer(s, "n2")
        stale = self.leased(s)
        other.lease_transactions(T0 + 31, 10, 30)
        before = s.get_transaction("2.25.1")
        self.assertRaises(LeaseLost, s.decide_transaction, "2.25.1", "{}", T0 + 32, stale)
        self.assertRaises(LeaseLost, s.defer_transaction, "2.25.1", T0 + 99, T0 + 32, stale, "x", True)
        self.assertRaises(LeaseLost, s.transaction_reported, "2.25.1", T0 + 32, stale)
        self.assertRaises(LeaseLost, s.transaction_dead, "2.25.1", "late", T0 + 32, stale)
        self.assertEqual(s.get_transaction("2.25.1"), before)
        self.assertTrue(issubclass(LeaseLost, KeyError))

    def test_fenced_writes_after_the_lease_ended_raise_lease_lost(self) -> None:
        """Once a lease ended (deferred), its generation no longer holds: a second write raises LeaseLost; unknown UIDs too."""
        s = self.store()
        generation = self.leased(s)
        s.defer_transaction("2.25.1", T0 + 60, T0, generation)
        self.assertRaises(LeaseLost, s.defer_transaction, "2.25.1", T0 + 60, T0, generation)
        self.assertRaises(LeaseLost, s.transaction_reported, "2.25.1", T0, generation)
        self.assertRaises(LeaseLost, s.decide_transaction, "2.25.9", "{}", T0, 1)

    def test_an_expired_lease_nobody_took_still_holds(self) -> None:
        """Past ``leased_until`` but not taken back, the holder's generation still writes (as for entries)."""
        s = self.store()
        generation = self.leased(s)
        s.transaction_reported("2.25.1", T0 + 100, generation)
        self.assertEqual(s.get_transaction("2.25.1").state, TransactionState.REPORTED)

    # -- decide, defer, reported, dead, requeue ---------------------------------------------

    def test_decide_records_once_and_keeps_the_lease(self) -> None:
        """The first report stands: a second decide (this node or the next holder) returns it unchanged."""
        s = self.store()
        other = self.peer(s, "n2")
        generation = self.leased(s)
        self.assertEqual(s.decide_transaction("2.25.1", '{"a":1}', T0 + 1, generation), '{"a":1}')
        self.assertEqual(s.decide_transaction("2.25.1", '{"b":2}', T0 + 2, generation), '{"a":1}')
        txn = s.get_transaction("2.25.1")
        self.assertEqual((txn.report, txn.decided_at, txn.leased_until, txn.state), ('{"a":1}', T0 + 1, T0 + 30, TransactionState.OPEN))
        (taken,) = other.lease_transactions(T0 + 31, 1, 30)
        self.assertEqual(taken.report, '{"a":1}')
        self.assertEqual(other.decide_transaction("2.25.1", '{"c":3}', T0 + 32, taken.lease_generation), '{"a":1}')

    def test_uncounted_defer_sets_only_last_error(self) -> None:
        """An uncounted defer ends the lease and notes ``error`` as last_error, without an attempt or history."""
        s = self.store()
        generation = self.leased(s)
        s.defer_transaction("2.25.1", T0 + 60, T0 + 1, generation, "not decided yet")
        txn = s.get_transaction("2.25.1")
        self.assertEqual((txn.state, txn.next_attempt_at, txn.leased_until), (TransactionState.OPEN, T0 + 60, None))
        self.assertEqual((txn.attempts, txn.history, txn.last_error), (0, (), "not decided yet"))
        self.assertEqual((txn.lease_owner, txn.lease_generation), ("node", generation))

    def test_counted_defer_records_an_attempt(self) -> None:
        """A counted defer adds one attempt with its error to the history, oldest first."""
        s = self.store()
        generation = self.leased(s)
        s.defer_transaction("2.25.1", T0 + 60, T0 + 1, generation, "refused", counted=True)
        (txn,) = s.lease_transactions(T0 + 60, 1, 30)
        s.defer_transaction("2.25.1", T0 + 120, T0 + 61, txn.lease_generation, "timeout", counted=True)
        txn = s.get_transaction("2.25.1")
        self.assertEqual(txn.attempts, 2)
        self.assertEqual(txn.history, (Attempt(T0 + 1, "refused", True), Attempt(T0 + 61, "timeout", True)))
        self.assertEqual(txn.last_error, "timeout")

    def test_reported_ends_the_lease(self) -> None:
        """transaction_reported makes it REPORTED with ``reported_at``; it is never leased again."""
        s = self.store()
        generation = self.leased(s)
        s.decide_transaction("2.25.1", "{}", T0, generation)
        s.transaction_reported("2.25.1", T0 + 2, generation)
        txn = s.get_transaction("2.25.1")
        self.assertEqual((txn.state, txn.reported_at, txn.leased_until, txn.report), (TransactionState.REPORTED, T0 + 2, None, "{}"))
        self.assertEqual(s.lease_transactions(T0 + 1000, 10, 30), [])

    def test_dead_then_requeue(self) -> None:
        """A DEAD transaction keeps its reason until an operator requeues it: OPEN, due now, attempts 0, history and report kept."""
        s = self.store()
        generation = self.leased(s)
        s.decide_transaction("2.25.1", '{"r":1}', T0, generation)
        s.defer_transaction("2.25.1", T0 + 10, T0 + 1, generation, "refused", counted=True)
        (txn,) = s.lease_transactions(T0 + 10, 1, 30)
        s.transaction_dead("2.25.1", "report_deadline passed", T0 + 11, txn.lease_generation)
        dead = s.get_transaction("2.25.1")
        self.assertEqual((dead.state, dead.dead_reason, dead.leased_until), (TransactionState.DEAD, "report_deadline passed", None))
        self.assertEqual(s.lease_transactions(T0 + 1000, 10, 30), [])
        again = s.requeue_transaction("2.25.1", T0 + 500, T0 + 90000)
        self.assertEqual(again, s.get_transaction("2.25.1"))
        self.assertEqual((again.state, again.next_attempt_at, again.attempts, again.dead_reason), (TransactionState.OPEN, T0 + 500, 0, ""))
        self.assertEqual(again.request.report_deadline, T0 + 90000)
        self.assertEqual(again.report, '{"r":1}')
        self.assertEqual(
            again.history,
            (Attempt(T0 + 1, "refused", True), Attempt(T0 + 11, "report_deadline passed", False)),
        )
        (leased,) = s.lease_transactions(T0 + 500, 1, 30)
        self.assertEqual(leased.lease_generation, txn.lease_generation + 1)

    def test_requeue_refuses_what_is_not_dead(self) -> None:
        """requeue_transaction raises KeyError for an unknown, an OPEN or a REPORTED transaction."""
        s = self.store()
        self.assertRaises(KeyError, s.requeue_transaction, "2.25.9", T0, T0 + 1)
        generation = self.leased(s)
        self.assertRaises(KeyError, s.requeue_transaction, "2.25.1", T0, T0 + 1)
        s.transaction_reported("2.25.1", T0, generation)
        self.assertRaises(KeyError, s.requeue_transaction, "2.25.1", T0, T0 + 1)

    # -- reading -----------------------------------------------------------------------------

    def test_get_unknown_transaction_raises(self) -> None:
        """get_transaction of an unknown UID raises KeyError."""
        self.assertRaises(KeyError, self.store().get_transaction, "2.25.404")

    def test_transactions_newest_first_by_state_and_limit(self) -> None:
        """transactions lists newest request first, filters by state and honours ``limit``."""
        s = self.store()
        for n in range(4):
            s.add_transaction(new_transaction(f"2.25.{n}"), T0 + n)
        (txn,) = s.lease_transactions(T0 + 10, 1, 30)
        s.transaction_reported(txn.transaction_uid, T0 + 10, txn.lease_generation)
        self.assertEqual([t.transaction_uid for t in s.transactions()], ["2.25.3", "2.25.2", "2.25.1", "2.25.0"])
        self.assertEqual([t.transaction_uid for t in s.transactions(limit=2)], ["2.25.3", "2.25.2"])
        self.assertEqual([t.transaction_uid for t in s.transactions(TransactionState.REPORTED)], ["2.25.0"])
        self.assertEqual([t.transaction_uid for t in s.transactions(TransactionState.OPEN)], ["2.25.3", "2.25.2", "2.25.1"])
        self.assertEqual(s.transactions(TransactionState.DEAD), [])

    def test_stats(self) -> None:
        """transaction_stats counts open, decided, overdue, dead and reported, and the oldest open request."""
        s = self.store()
        self.assertEqual(s.transaction_stats(T0), TransactionStats())
        s.add_transaction(new_transaction("2.25.1", deadline=T0 + 100), T0)
        s.add_transaction(new_transaction("2.25.2", deadline=T0 + 10), T0 + 1)
        s.add_transaction(new_transaction("2.25.3", deadline=T0 + 10), T0 + 2)
        s.add_transaction(new_transaction("2.25.4", deadline=T0 + 10), T0 + 3)
        leased = {t.transaction_uid: t.lease_generation for t in s.lease_transactions(T0 + 5, 10, 30)}
        s.transaction_reported("2.25.1", T0 + 5, leased["2.25.1"])
        s.transaction_dead("2.25.2", "late", T0 + 5, leased["2.25.2"])
        s.decide_transaction("2.25.3", "{}", T0 + 5, leased["2.25.3"])
        self.assertEqual(
            s.transaction_stats(T0 + 20),
            TransactionStats(open=2, decided=1, overdue=2, dead=1, reported=1, oldest_open_at=T0 + 2),
        )
        self.assertEqual(s.transaction_stats(T0 + 10).overdue, 0)

    # -- received ------------------------------------------------------------------------

    def test_received_returns_entries_of_every_state_with_copies(self) -> None:
        """A journaled instance comes back with all its entries (DUPLICATE and DEAD included) and its copies."""
        s = self.store()
        first = self.receive(s, "i1", 1, ("A", "B"), now=T0, window=60)
        dup = self.receive(s, "i2", 1, ("A",), now=T0 + 1, window=60)
        s.lease("A", 10, T0 + 2, 30)
        s.note_copies([(first[0], "A", CT, f"{UID}1")], T0 + 2)
        s.complete([first[0]], T0 + 2)
        (b,) = s.lease("B", 10, T0 + 2, 30)
        s.dead_letter(b.entry_id, "refused", T0 + 3)
        found = s.received([f"{UID}1"], T0)
        self.assertEqual(list(found), [f"{UID}1"])
        one, two = found[f"{UID}1"]
        self.assertEqual((one.outcome, one.instance_id, one.sop_class_uid, one.received_at), ("journaled", "i1", CT, T0))
        self.assertEqual([(e.entry_id, e.state) for e in one.entries], [(first[0], EntryState.DELIVERED), (first[1], EntryState.DEAD)])
        self.assertEqual(one.entries, (s.get(first[0]), s.get(first[1])))
        self.assertEqual([(c.entry_id, c.state, c.destination) for c in one.copies], [(first[0], CopyState.PENDING, "A")])
        self.assertEqual((two.instance_id, [e.state for e in two.entries], two.copies), ("i2", [EntryState.DUPLICATE], ()))
        self.assertEqual(two.entries[0].entry_id, dup[0])

    def test_received_includes_unforwarded_notes(self) -> None:
        """Dropped and unrouted notes come back with their outcome and no entries, after an instance received at the same time."""
        s = self.store()
        self.receive(s, "i1", 1, now=T0 + 5)
        s.note_unforwarded(
            [
                Unforwarded(CT, f"{UID}1", "dropped", T0 + 5, "MODALITY", "rule 2"),
                Unforwarded(CT, f"{UID}2", "unrouted", T0 + 1),
                Unforwarded(CT, f"{UID}1", "unrouted", T0),
            ],
            T0 + 6,
        )
        found = s.received([f"{UID}1", f"{UID}2"], T0)
        self.assertEqual([(r.outcome, r.received_at) for r in found[f"{UID}1"]], [("unrouted", T0), ("journaled", T0 + 5), ("dropped", T0 + 5)])
        (note,) = found[f"{UID}2"]
        self.assertEqual((note.sop_class_uid, note.sop_instance_uid, note.outcome, note.instance_id, note.entries, note.copies), (CT, f"{UID}2", "unrouted", "", (), ()))

    def test_received_honours_since_and_omits_absent_uids(self) -> None:
        """Records before ``since`` are left out; UIDs with nothing on record are absent from the result."""
        s = self.store()
        self.receive(s, "old", 1, now=T0 - 100)
        self.receive(s, "new", 1, now=T0 + 10)
        self.receive(s, "gone", 2, now=T0 - 100)
        s.note_unforwarded([Unforwarded(CT, f"{UID}3", "dropped", T0 - 1)], T0)
        found = s.received([f"{UID}1", f"{UID}2", f"{UID}3", f"{UID}404"], T0)
        self.assertEqual(list(found), [f"{UID}1"])
        self.assertEqual([r.instance_id for r in found[f"{UID}1"]], ["new"])
        self.assertEqual([r.instance_id for r in s.received([f"{UID}1"], T0 + 10)[f"{UID}1"]], ["new"])
        self.assertEqual(s.received([], T0), {})

    def test_received_answers_five_thousand_uids_in_one_call(self) -> None:
        """A set of 5,000 UIDs (beyond SQLite's variable limit) is answered in one call, hits and misses alike."""
        s = self.store()
        batch = [
            (make_record(f"i{n}", sop_instance_uid=f"{UID}{n}", sop_class_uid=CT), [NewEntry("r", "A")])
            for n in range(0, 5000, 2)
        ]
        s.add_instances(batch, T0, 0.0)
        s.note_unforwarded([Unforwarded(CT, f"{UID}4999", "dropped", T0)], T0)
        found = s.received({f"{UID}{n}" for n in range(5000)}, T0)
        self.assertEqual(len(found), 2501)
        self.assertEqual(found[f"{UID}4998"][0].instance_id, "i4998")
        self.assertEqual(found[f"{UID}4999"][0].outcome, "dropped")
        self.assertNotIn(f"{UID}1", found)

    def test_forgotten_instance_takes_its_copies_along(self) -> None:
        """forget_instance removes the instance from received() and drops its copy commitments."""
        s = self.store()
        (entry_id,) = self.receive(s, "i1", 1)
        s.note_copies([(entry_id, "A", CT, f"{UID}1")], T0)
        s.forget_instance("i1")
        self.assertEqual(s.received([f"{UID}1"], T0), {})
        self.assertEqual(s.pending_copies("A", T0, 60, 10), [])

    # -- copies ----------------------------------------------------------------------------

    def test_note_copies_records_pending(self) -> None:
        """A noted copy is PENDING with its UIDs as sent and ``noted_at``."""
        s = self.store()
        (entry_id,) = self.receive(s, "i1", 1)
        s.note_copies([(entry_id, "A", CT, "2.25.999")], T0 + 1)
        (copy,) = s.pending_copies("A", T0 + 1, 60, 10)
        self.assertEqual(
            (copy.entry_id, copy.destination, copy.sop_class_uid, copy.sop_instance_uid, copy.state, copy.noted_at),
            (entry_id, "A", CT, "2.25.999", CopyState.PENDING, T0 + 1),
        )
        self.assertEqual((copy.transaction_uid, copy.requested_at, copy.answered_at, copy.requests, copy.failure_reason), ("", None, None, 0, 0))

    def test_note_copies_makes_failed_pending_and_keeps_committed(self) -> None:
        """Noting again: FAILED becomes PENDING (asked anew), COMMITTED and REQUESTED keep their state; UIDs are updated."""
        s = self.store()
        a, b, c = (self.receive(s, f"i{n}", n)[0] for n in (1, 2, 3))
        s.note_copies([(a, "A", CT, f"{UID}1"), (b, "A", CT, f"{UID}2"), (c, "A", CT, f"{UID}3")], T0)
        s.copies_requested("A", [a, b, c], "2.25.50", T0 + 1)
        s.copies_answered("2.25.50", [f"{UID}1"], [(f"{UID}2", 0x0110)], T0 + 2)
        s.note_copies([(a, "A", CT, "2.25.1001"), (b, "A", CT, "2.25.1002"), (c, "A", CT, "2.25.1003")], T0 + 3)
        states = {copy.entry_id: copy for r in s.received([f"{UID}1", f"{UID}2", f"{UID}3"], T0).values() for copy in r[0].copies}
        self.assertEqual(states[a].state, CopyState.COMMITTED)
        self.assertEqual(states[a].sop_instance_uid, "2.25.1001")
        self.assertEqual((states[b].state, states[b].failure_reason, states[b].noted_at, states[b].sop_instance_uid), (CopyState.PENDING, 0, T0 + 3, "2.25.1002"))
        self.assertEqual((states[c].state, states[c].transaction_uid, states[c].requests), (CopyState.REQUESTED, "2.25.50", 1))

    def test_pending_copies_pending_and_timed_out_requested_oldest_first(self) -> None:
        """pending_copies gives PENDING copies and REQUESTED ones older than ``timeout``, of one destination, oldest first."""
        s = self.store()
        ids = [self.receive(s, f"i{n}", n, ("A", "B")) for n in range(4)]
        s.note_copies([(ids[n][0], "A", CT, f"{UID}{n}") for n in (3, 2, 1, 0)], T0)
        s.note_copies([(ids[0][1], "B", CT, f"{UID}0")], T0)
        s.note_copies([(ids[3][0], "A", CT, f"{UID}3")], T0 + 5)  # PENDING kept: noted_at unchanged
        s.copies_requested("A", [ids[0][0]], "2.25.60", T0 + 10)
        s.copies_requested("A", [ids[1][0]], "2.25.61", T0 + 100)
        self.assertEqual([c.entry_id for c in s.pending_copies("A", T0 + 100, 60, 10)], [ids[0][0], ids[2][0], ids[3][0]])
        self.assertEqual([c.entry_id for c in s.pending_copies("A", T0 + 100, 60, 2)], [ids[0][0], ids[2][0]])
        self.assertEqual([c.entry_id for c in s.pending_copies("A", T0 + 70, 60, 10)], [ids[2][0], ids[3][0]])
        self.assertEqual([c.entry_id for c in s.pending_copies("B", T0, 60, 10)], [ids[0][1]])
        self.assertEqual(s.pending_copies("A", T0, 60, 0), [])

    def test_copies_requested_counts_requests(self) -> None:
        """copies_requested makes the destination's copies REQUESTED under the Transaction UID, ``requests`` + 1; others untouched."""
        s = self.store()
        a, b = self.receive(s, "i1", 1, ("A", "B"))
        s.note_copies([(a, "A", CT, f"{UID}1"), (b, "B", CT, f"{UID}1")], T0)
        s.copies_requested("A", [a, b, 999], "2.25.70", T0 + 1)
        s.copies_requested("A", [a], "2.25.71", T0 + 2)
        copies = {c.entry_id: c for c in s.received([f"{UID}1"], T0)[f"{UID}1"][0].copies}
        self.assertEqual(
            (copies[a].state, copies[a].transaction_uid, copies[a].requested_at, copies[a].requests),
            (CopyState.REQUESTED, "2.25.71", T0 + 2, 2),
        )
        self.assertEqual((copies[b].state, copies[b].requests), (CopyState.PENDING, 0))

    def test_copies_answered_commits_and_fails(self) -> None:
        """An archive's report makes copies COMMITTED or FAILED with their reason, and counts the changes."""
        s = self.store()
        a, b, c = (self.receive(s, f"i{n}", n)[0] for n in (1, 2, 3))
        s.note_copies([(a, "A", CT, f"{UID}1"), (b, "A", CT, f"{UID}2"), (c, "A", CT, f"{UID}3")], T0)
        s.copies_requested("A", [a, b, c], "2.25.80", T0 + 1)
        self.assertEqual(s.copies_answered("2.25.80", [f"{UID}1"], [(f"{UID}2", 0x0112), ("2.25.nothing", 0x0110)], T0 + 2), 2)
        copies = {c.entry_id: c for r in s.received([f"{UID}1", f"{UID}2", f"{UID}3"], T0).values() for c in r[0].copies}
        self.assertEqual((copies[a].state, copies[a].answered_at, copies[a].failure_reason), (CopyState.COMMITTED, T0 + 2, 0))
        self.assertEqual((copies[b].state, copies[b].answered_at, copies[b].failure_reason), (CopyState.FAILED, T0 + 2, 0x0112))
        self.assertEqual(copies[c].state, CopyState.REQUESTED)

    def test_late_answer_to_an_earlier_request_counts(self) -> None:
        """A report to an earlier Transaction UID (the copy since asked again) still commits the copy."""
        s = self.store()
        (a,) = self.receive(s, "i1", 1)
        s.note_copies([(a, "A", CT, f"{UID}1")], T0)
        s.copies_requested("A", [a], "2.25.90", T0 + 1)
        s.copies_requested("A", [a], "2.25.91", T0 + 100)
        self.assertEqual(s.copies_answered("2.25.90", [f"{UID}1"], [], T0 + 101), 1)
        (copy,) = s.received([f"{UID}1"], T0)[f"{UID}1"][0].copies
        self.assertEqual((copy.state, copy.transaction_uid), (CopyState.COMMITTED, "2.25.91"))

    def test_success_wins_over_failure(self) -> None:
        """A later failure never undoes a commitment; a later success replaces a failure; success in both lists wins."""
        s = self.store()
        a, b = (self.receive(s, f"i{n}", n)[0] for n in (1, 2))
        s.note_copies([(a, "A", CT, f"{UID}1"), (b, "A", CT, f"{UID}2")], T0)
        s.copies_requested("A", [a, b], "2.25.100", T0)
        s.copies_requested("A", [a, b], "2.25.101", T0 + 1)
        self.assertEqual(s.copies_answered("2.25.100", [f"{UID}1"], [(f"{UID}2", 0x0110)], T0 + 2), 2)
        self.assertEqual(s.copies_answered("2.25.101", [f"{UID}2"], [(f"{UID}1", 0x0110)], T0 + 3), 1)
        copies = {c.entry_id: c.state for r in s.received([f"{UID}1", f"{UID}2"], T0).values() for c in r[0].copies}
        self.assertEqual(copies, {a: CopyState.COMMITTED, b: CopyState.COMMITTED})
        (c,) = self.receive(s, "i3", 3)
        s.note_copies([(c, "A", CT, f"{UID}3")], T0)
        s.copies_requested("A", [c], "2.25.102", T0)
        self.assertEqual(s.copies_answered("2.25.102", [f"{UID}3"], [(f"{UID}3", 0x0110)], T0 + 4), 1)
        self.assertEqual(s.received([f"{UID}3"], T0)[f"{UID}3"][0].copies[0].state, CopyState.COMMITTED)

    def test_answer_applies_only_to_the_request_destination(self) -> None:
        """A report from one archive changes only copies of the destination its request went to."""
        s = self.store()
        a, b = self.receive(s, "i1", 1, ("A", "B"))
        s.note_copies([(a, "A", CT, f"{UID}1"), (b, "B", CT, f"{UID}1")], T0)
        s.copies_requested("A", [a], "2.25.110", T0)
        s.copies_requested("B", [b], "2.25.111", T0)
        self.assertEqual(s.copies_answered("2.25.110", [f"{UID}1"], [], T0 + 1), 1)
        copies = {c.entry_id: c.state for c in s.received([f"{UID}1"], T0)[f"{UID}1"][0].copies}
        self.assertEqual(copies, {a: CopyState.COMMITTED, b: CopyState.REQUESTED})

    def test_answer_to_an_unknown_request_raises(self) -> None:
        """copies_answered for a Transaction UID never sent raises KeyError."""
        s = self.store()
        self.assertRaises(KeyError, s.copies_answered, "2.25.404", [f"{UID}1"], [], T0)

    def test_request_without_copies_is_still_remembered(self) -> None:
        """copies_requested remembers the Transaction UID even when no copy matched, so its report is not unknown."""
        s = self.store()
        s.copies_requested("A", [], "2.25.120", T0)
        self.assertEqual(s.copies_answered("2.25.120", [f"{UID}1"], [], T0), 0)


class MemoryCommitmentTests(CommitmentJournalTests, SynchronousTestCase):
    """The mixin against the in-memory fake."""

    def make_store(self) -> MemoryQueueStore:
        """A fresh in-memory store."""
        return MemoryQueueStore()

    def make_peer(self, store: MemoryQueueStore, node: str) -> MemoryQueueStore:
        """Another node on the same tables."""
        return store.peer(node)


class SqliteCommitmentTests(CommitmentJournalTests, SynchronousTestCase):
    """The mixin against the SQLite store in a temporary directory."""

    def make_store(self) -> SqliteQueueStore:
        """A fresh SQLite store in a new temporary directory."""
        directory = self.mktemp()
        os.makedirs(directory)
        return SqliteQueueStore(os.path.join(directory, "queue.sqlite"))

    def make_peer(self, store: SqliteQueueStore, node: str) -> SqliteQueueStore:
        """A second store object (its own connection) on the same file, for ``node``."""
        return SqliteQueueStore(store.path, node)


def journal_methods() -> list[str]:
    """The names of ICommitmentJournal's methods."""
    return sorted(name for name in ICommitmentJournal.names() if isinstance(ICommitmentJournal[name], Method))


class CommitmentSignatureParityTests(SynchronousTestCase):
    """Every store exposes every ICommitmentJournal method with the interface's parameters."""

    stores: tuple[type, ...] = (MemoryQueueStore, SqliteQueueStore)

    def test_signatures_match_the_interface(self) -> None:
        """Each method's parameter names and defaults are the interface's (after self), and identical across stores."""
        names = journal_methods()
        self.assertIn("received", names)
        for cls in self.stores:
            for name in names:
                spec = ICommitmentJournal[name].getSignatureInfo()
                parameters = inspect.signature(getattr(cls, name)).parameters
                self.assertEqual(list(parameters)[1:], list(spec["positional"]), f"{cls.__name__}.{name}")
                self.assertEqual(
                    dict(spec["optional"]),
                    {p.name: p.default for p in parameters.values() if p.default is not inspect.Parameter.empty},
                    f"{cls.__name__}.{name}",
                )
                self.assertEqual(
                    inspect.signature(getattr(self.stores[0], name)), inspect.signature(getattr(cls, name)), f"{cls.__name__}.{name}"
                )


# -- the verified fake: random operations of two nodes agree in memory and in SQLite -------------

_TIMES = st.integers(min_value=0, max_value=60).map(lambda n: T0 + n)
_UIDS = st.integers(0, 3)
_REFS = (refs(0, 1), refs(1, 0, 1), refs(2), refs(0, 1, 2, 3))
_COMMITMENT_OPERATIONS = st.one_of(
    st.tuples(st.just("add_transaction"), _UIDS, st.integers(0, len(_REFS) - 1), _TIMES, _TIMES),
    st.tuples(st.just("lease"), _TIMES, st.integers(0, 3)),
    st.tuples(st.just("lease"), st.just(T0 + 100), st.integers(1, 3)),
    st.tuples(st.just("decide"), _UIDS, st.integers(0, 1), _TIMES, st.booleans()),
    st.tuples(st.just("defer"), _UIDS, st.integers(0, 30), _TIMES, st.booleans(), st.booleans()),
    st.tuples(st.just("reported"), _UIDS, _TIMES, st.booleans()),
    st.tuples(st.just("dead"), _UIDS, _TIMES, st.booleans()),
    st.tuples(st.just("requeue"), _UIDS, _TIMES),
    st.tuples(st.just("renew"), _TIMES),
    st.tuples(st.just("receive"), _UIDS, st.lists(st.sampled_from(["A", "B"]), max_size=2, unique=True), _TIMES, st.booleans()),
    st.tuples(st.just("unforwarded"), _UIDS, st.sampled_from(["dropped", "unrouted"]), _TIMES),
    st.tuples(st.just("note_copies"), st.lists(st.tuples(st.integers(1, 8), st.sampled_from(["A", "B"]), _UIDS), max_size=3), _TIMES),
    st.tuples(st.just("copies_requested"), st.sampled_from(["A", "B"]), st.lists(st.integers(1, 8), max_size=4), st.integers(0, 2), _TIMES),
    st.tuples(
        st.just("copies_answered"), st.integers(0, 3), st.lists(_UIDS, max_size=2),
        st.lists(st.tuples(_UIDS, st.sampled_from([0x0110, 0x0112])), max_size=2), _TIMES,
    ),
    st.tuples(st.just("forget"), st.integers(0, 6)),
)


def _apply_commitment(store: Any, op: tuple[Any, ...], counter: list[int]) -> Any:
    """Apply one generated operation; return its result or the exception type it raised."""
    name, *args = op
    try:
        if name == "add_transaction":
            uid, variant, now, deadline = args
            return store.add_transaction(new_transaction(f"2.25.{uid}", _REFS[variant], deadline=deadline), now)
        if name == "lease":
            now, limit = args
            return store.lease_transactions(now, limit, 20.0)
        if name in ("decide", "defer", "reported", "dead"):
            uid = f"2.25.{args[0]}"
            stale = args[-1]
            try:
                generation = store.get_transaction(uid).lease_generation - (1 if stale else 0)
            except KeyError:
                generation = 1
            if name == "decide":
                return store.decide_transaction(uid, f'{{"v":{args[1]}}}', args[2], generation)
            if name == "defer":
                _, delay, now, counted, _ = args
                return store.defer_transaction(uid, now + delay, now, generation, "refused" if counted else "", counted)
            if name == "reported":
                return store.transaction_reported(uid, args[1], generation)
            return store.transaction_dead(uid, "report_deadline", args[1], generation)
        if name == "requeue":
            uid, now = args
            return store.requeue_transaction(f"2.25.{uid}", now, now + 99)
        if name == "renew":
            held = {t.transaction_uid: t.lease_generation for t in store.transactions(TransactionState.OPEN) if t.leased_until is not None}
            return sorted(store.renew_transactions(held, args[0], 20.0))
        if name == "receive":
            n, destinations, now, window = args
            counter[0] += 1
            record = make_record(f"i{counter[0]}", sop_instance_uid=f"{UID}{n}", sop_class_uid=CT, received_at=now)
            return store.add_instance(record, [NewEntry("r", d) for d in destinations], now, 30.0 if window else 0.0)
        if name == "unforwarded":
            n, outcome, now = args
            return store.note_unforwarded([Unforwarded(CT, f"{UID}{n}", outcome, now)], now)
        if name == "note_copies":
            copies, now = args
            return store.note_copies([(entry_id, d, CT, f"{UID}{n}") for entry_id, d, n in copies], now)
        if name == "copies_requested":
            destination, ids, tuid, now = args
            return store.copies_requested(destination, ids, f"2.25.9{tuid}", now)
        if name == "copies_answered":
            tuid, committed, failed, now = args
            return store.copies_answered(
                f"2.25.9{tuid}", [f"{UID}{n}" for n in committed], [(f"{UID}{n}", r) for n, r in failed], now
            )
        if name == "forget":
            return store.forget_instance(f"i{args[0]}")
    except (KeyError, ValueError) as e:
        return type(e)
    raise AssertionError(name)


def _observe_commitments(store: Any) -> Any:
    """Everything a caller can see of a store's commitment journal."""
    return (
        store.transactions(),
        store.transaction_stats(T0 + 30),
        store.received([f"{UID}{n}" for n in range(4)], T0 + 10),
        [store.pending_copies(d, T0 + 50, 20.0, 100) for d in ("A", "B")],
    )


class CommitmentVerifiedFakeTests(SynchronousTestCase):
    """Random operation sequences of two nodes give the same results and state in the fake and in SQLite."""

    @settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.tuples(st.integers(0, 1), _COMMITMENT_OPERATIONS), min_size=10, max_size=40))
    def test_random_operations_of_two_nodes_agree(self, operations: list[tuple[int, tuple[Any, ...]]]) -> None:
        """After each operation, through either node, both stores returned the same thing and look the same."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "q.sqlite")
        memory = MemoryQueueStore("n1")
        fakes = (memory, memory.peer("n2"))
        reals = (SqliteQueueStore(path, "n1"), SqliteQueueStore(path, "n2"))
        try:
            counters = ([0], [0])
            for who, op in operations:
                self.assertEqual(
                    _apply_commitment(fakes[who], op, counters[0]), _apply_commitment(reals[who], op, counters[1]), (who, op)
                )
                self.assertEqual(_observe_commitments(fakes[0]), _observe_commitments(reals[0]), (who, op))
        finally:
            for real in reals:
                real.close()
