"""The ``QueueStoreTests`` mixin, run against the SQLite store and the in-memory fake.

Buildbot's ``Tests``/``RealTests`` idea: one set of behaviour tests, two
implementations, so the fake the forwarder's tests use cannot drift from the
durable store. Signature parity is checked as Buildbot's
``assertArgSpecMatches`` does.
"""

from __future__ import annotations

import inspect
import os
import zlib
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.interface import Method
from zope.interface.verify import verifyObject

from gateway.queue.interfaces import (
    AddResult,
    Attempt,
    DestinationStats,
    EntryState,
    EXPIRED_LEASE_PREFIX,
    InstanceRecord,
    IQueueStore,
    LeaseLost,
    NewEntry,
    NodeStatus,
    PlanRecord,
    RECOVERED_IN_FLIGHT,
    Settled,
    UNRECORDED_DELIVERIES,
)
from gateway.queue.memory import MemoryQueueStore
from gateway.queue.sqlite import SqliteQueueStore

T0 = 1_700_000_000.0
#: Two journaled plans (the store does not read their text; only the hash keys them).
PLAN_A = PlanRecord("a" * 64, '{"actions":[{"deidentify":"basic"}],"v":1}')
PLAN_B = PlanRecord("b" * 64, '{"actions":[],"v":1}')
STUDY = "1.2.826.0.1.3680043.8.498.10"


def make_record(instance_id: str, **overrides: Any) -> InstanceRecord:
    """An InstanceRecord with plausible defaults; keyword arguments override fields."""
    values: dict[str, Any] = dict(
        instance_id=instance_id,
        path=f"/spool/{instance_id}.dcm",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
        sop_instance_uid=f"1.2.826.0.1.3680043.8.498.{zlib.crc32(instance_id.encode())}",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        size=1234,
        sha256="ab" * 32,
        received_at=T0,
        correlation_id=f"corr-{instance_id}",
        study_instance_uid=STUDY,
        series_instance_uid=STUDY + ".1",
        patient_id="PID1",
        accession_number="ACC1",
        modality="CT",
        calling_ae_title="MODALITY",
        called_ae_title="GATEWAY",
        source_address="192.0.2.1",
    )
    values.update(overrides)
    return InstanceRecord(**values)


class QueueStoreTests:
    """Behaviour every IQueueStore must have; mixed into a TestCase with ``make_store`` and ``make_peer``.

    ``make_store()`` returns a fresh, empty store (node ``"node"``);
    ``make_peer(store, node, local_only=False)`` returns another store object
    for ``node`` on the same tables (the memory fake's ``peer``, a second
    SQLite store on the same file, a second PostgreSQL store on the same
    database), so the cluster cases run two nodes on one queue. A store
    whose ``hold_singleton`` is a timed lease (memory, SQLite) also mixes in
    :class:`TimedSingletonTests`.
    """

    # Provided by the concrete TestCase classes below.
    assertEqual: Any
    assertTrue: Any
    assertFalse: Any
    assertIsNone: Any
    assertRaises: Any
    assertIn: Any
    assertNotIn: Any
    assertGreater: Any
    assertLess: Any
    assertNotEqual: Any
    assertIsInstance: Any
    addCleanup: Any

    def make_store(self) -> Any:
        """Return a fresh, empty store (implemented by each concrete class)."""
        raise NotImplementedError

    def make_peer(self, store: Any, node: str, local_only: bool = False) -> Any:
        """Return a store object for ``node`` sharing ``store``'s tables (implemented by each concrete class)."""
        raise NotImplementedError

    def store(self) -> Any:
        """A fresh store closed at cleanup."""
        s = self.make_store()
        self.addCleanup(s.close)
        return s

    def peer(self, store: Any, node: str, local_only: bool = False) -> Any:
        """Another node's store object on ``store``'s tables, closed at cleanup."""
        p = self.make_peer(store, node, local_only)
        self.addCleanup(p.close)
        return p

    def cluster(self, *names: str, local_only: bool = False) -> list[Any]:
        """Store objects for the named nodes, all on one fresh queue."""
        base = self.store()
        return [self.peer(base, name, local_only) for name in names]

    def add(
        self,
        store: Any,
        instance_id: str,
        destinations: tuple[str, ...] = ("A",),
        now: float = T0,
        window: float = 0.0,
        **overrides: Any,
    ) -> AddResult:
        """Add an instance routed by route ``r`` to each of ``destinations``."""
        record = make_record(instance_id, received_at=now, **overrides)
        return store.add_instance(record, [NewEntry("r", d) for d in destinations], now, window)

    # -- interface ----------------------------------------------------------

    def test_provides_the_interface(self) -> None:
        """The store fully provides IQueueStore (every method with its signature)."""
        self.assertTrue(verifyObject(IQueueStore, self.store()))

    # -- add_instance -----------------------------------------------------------

    def test_add_instance_creates_queued_entries_in_order(self) -> None:
        """Each NewEntry becomes a QUEUED entry due now, ids returned in the order given."""
        s = self.store()
        result = self.add(s, "i1", ("A", "B", "C"))
        self.assertEqual(len(result.entry_ids), 3)
        self.assertEqual(result.duplicates, ())
        entries = [s.get(i) for i in result.entry_ids]
        self.assertEqual([e.destination for e in entries], ["A", "B", "C"])
        for e in entries:
            self.assertEqual(e.state, EntryState.QUEUED)
            self.assertEqual((e.attempts, e.enqueued_at, e.next_attempt_at), (0, T0, T0))
            self.assertEqual((e.route, e.last_error, e.delivered_at, e.dead_reason, e.history), ("r", "", None, "", ()))
        self.assertEqual(sorted(result.entry_ids), list(result.entry_ids))

    def test_entry_carries_its_full_instance_record(self) -> None:
        """An entry returns the InstanceRecord exactly as it was added, every field."""
        s = self.store()
        record = make_record("i1", modality="MR", source_address="198.51.100.7")
        ids = s.add_instance(record, [NewEntry("r", "A")], T0, 0.0).entry_ids
        self.assertEqual(s.get(ids[0]).instance, record)

    def test_entry_path_is_instance_path_unless_morphed(self) -> None:
        """An unmorphed entry sends the spooled file; a morphed one its own copy."""
        s = self.store()
        record = make_record("i1")
        ids = s.add_instance(record, [NewEntry("plain", "A"), NewEntry("morph", "B", "/spool/i1.morph.dcm")], T0, 0.0).entry_ids
        self.assertEqual(s.get(ids[0]).path, record.path)
        self.assertEqual(s.get(ids[1]).path, "/spool/i1.morph.dcm")

    def test_add_instance_without_entries_records_the_instance(self) -> None:
        """An unrouted instance is on record with no entries."""
        s = self.store()
        result = self.add(s, "i1", ())
        self.assertEqual(result.entry_ids, ())
        self.assertEqual(s.instance_ids(), {"i1"})

    def test_add_instance_twice_is_refused_and_changes_nothing(self) -> None:
        """A second add with the same instance id raises ValueError and adds no entries."""
        s = self.store()
        self.add(s, "i1", ("A",))
        self.assertRaises(ValueError, self.add, s, "i1", ("B",))
        self.assertEqual([e.destination for e in s.entries()], ["A"])

    # -- duplicates (HARDENING decision 5) --------------------------------------

    def test_identical_resend_within_window_is_duplicate(self) -> None:
        """Same UID and same sha256 within the window: stored as DUPLICATE and reported."""
        s = self.store()
        self.add(s, "i1", ("A", "B"), sop_instance_uid="1.2.3", window=3600)
        result = self.add(s, "i2", ("A", "B"), now=T0 + 60, sop_instance_uid="1.2.3", window=3600)
        self.assertEqual(result.duplicates, ("A", "B"))
        self.assertEqual([s.get(i).state for i in result.entry_ids], [EntryState.DUPLICATE] * 2)
        self.assertEqual((s.stats(T0)["A"].duplicates, s.stats(T0)["A"].queued), (1, 1))

    def test_duplicate_is_never_leased(self) -> None:
        """A DUPLICATE entry is not forwarded: only the original is leased."""
        s = self.store()
        first = self.add(s, "i1", ("A",), sop_instance_uid="1.2.3", window=3600)
        self.add(s, "i2", ("A",), now=T0 + 1, sop_instance_uid="1.2.3", window=3600)
        self.assertEqual([e.entry_id for e in s.lease("A", 10, T0 + 2, 30)], list(first.entry_ids))

    def test_duplicate_only_for_destinations_that_have_it(self) -> None:
        """A destination without the earlier instance gets a QUEUED entry."""
        s = self.store()
        self.add(s, "i1", ("A",), sop_instance_uid="1.2.3", window=3600)
        result = self.add(s, "i2", ("A", "B"), now=T0 + 1, sop_instance_uid="1.2.3", window=3600)
        self.assertEqual(result.duplicates, ("A",))
        self.assertEqual(s.get(result.entry_ids[1]).state, EntryState.QUEUED)

    def test_resend_after_window_is_queued(self) -> None:
        """Past the window an identical re-send is forwarded again."""
        s = self.store()
        self.add(s, "i1", ("A",), sop_instance_uid="1.2.3", window=3600)
        result = self.add(s, "i2", ("A",), now=T0 + 3600.5, sop_instance_uid="1.2.3", window=3600)
        self.assertEqual(result.duplicates, ())
        self.assertEqual(s.get(result.entry_ids[0]).state, EntryState.QUEUED)

    def test_resend_exactly_at_window_edge_is_duplicate(self) -> None:
        """The window is inclusive: enqueued exactly ``window`` seconds ago still counts."""
        s = self.store()
        self.add(s, "i1", ("A",), sop_instance_uid="1.2.3", window=3600)
        result = self.add(s, "i2", ("A",), now=T0 + 3600, sop_instance_uid="1.2.3", window=3600)
        self.assertEqual(result.duplicates, ("A",))

    def test_resend_with_other_bytes_is_queued(self) -> None:
        """Same UID with another sha256 (a corrected instance) is forwarded."""
        s = self.store()
        self.add(s, "i1", ("A",), sop_instance_uid="1.2.3", window=3600)
        result = self.add(s, "i2", ("A",), now=T0 + 1, sop_instance_uid="1.2.3", sha256="cd" * 32, window=3600)
        self.assertEqual(result.duplicates, ())

    def test_resend_of_other_uid_with_same_bytes_is_queued(self) -> None:
        """Same sha256 under another SOP Instance UID is not a duplicate."""
        s = self.store()
        self.add(s, "i1", ("A",), sop_instance_uid="1.2.3", window=3600)
        result = self.add(s, "i2", ("A",), now=T0 + 1, sop_instance_uid="1.2.4", window=3600)
        self.assertEqual(result.duplicates, ())

    def test_resend_after_dead_letter_is_queued(self) -> None:
        """A DEAD previous entry does not make the re-send a duplicate (the archive lacks it)."""
        s = self.store()
        first = self.add(s, "i1", ("A",), sop_instance_uid="1.2.3", window=3600)
        s.dead_letter(first.entry_ids[0], "refused", T0 + 1)
        result = self.add(s, "i2", ("A",), now=T0 + 2, sop_instance_uid="1.2.3", window=3600)
        self.assertEqual(result.duplicates, ())

    def test_delivered_previous_entry_makes_duplicate(self) -> None:
        """A DELIVERED previous entry within the window makes the re-send a duplicate."""
        s = self.store()
        first = self.add(s, "i1", ("A",), sop_instance_uid="1.2.3", window=3600)
        s.lease("A", 1, T0, 30)
        s.complete(first.entry_ids, T0 + 1)
        result = self.add(s, "i2", ("A",), now=T0 + 2, sop_instance_uid="1.2.3", window=3600)
        self.assertEqual(result.duplicates, ("A",))

    def test_duplicate_entry_does_not_extend_the_window(self) -> None:
        """The window runs from the forwarded entry, not from a later DUPLICATE one."""
        s = self.store()
        self.add(s, "i1", ("A",), sop_instance_uid="1.2.3", window=100)
        self.assertEqual(self.add(s, "i2", ("A",), now=T0 + 90, sop_instance_uid="1.2.3", window=100).duplicates, ("A",))
        self.assertEqual(self.add(s, "i3", ("A",), now=T0 + 150, sop_instance_uid="1.2.3", window=100).duplicates, ())

    def test_window_zero_disables_duplicate_control(self) -> None:
        """With a window of 0 every re-send is queued."""
        s = self.store()
        self.add(s, "i1", ("A",), sop_instance_uid="1.2.3")
        result = self.add(s, "i2", ("A",), sop_instance_uid="1.2.3", window=0)
        self.assertEqual(result.duplicates, ())

    # -- lease ----------------------------------------------------------------

    def test_lease_takes_oldest_first_up_to_limit(self) -> None:
        """Lease returns the lowest ids first, at most ``limit``, and marks them LEASED."""
        s = self.store()
        ids = [self.add(s, f"i{n}").entry_ids[0] for n in range(5)]
        leased = s.lease("A", 3, T0, 30)
        self.assertEqual([e.entry_id for e in leased], ids[:3])
        self.assertEqual({e.state for e in leased}, {EntryState.LEASED})
        self.assertEqual(s.get(ids[0]).state, EntryState.LEASED)
        self.assertEqual(s.get(ids[3]).state, EntryState.QUEUED)

    def test_lease_never_hands_an_entry_twice(self) -> None:
        """A second lease gets the next entries, never one already leased."""
        s = self.store()
        ids = [self.add(s, f"i{n}").entry_ids[0] for n in range(5)]
        first = [e.entry_id for e in s.lease("A", 3, T0, 30)]
        second = [e.entry_id for e in s.lease("A", 3, T0, 30)]
        self.assertEqual(second, ids[3:])
        self.assertEqual(set(first) & set(second), set())
        self.assertEqual(s.lease("A", 3, T0, 30), [])

    def test_lease_only_its_destination(self) -> None:
        """Entries of another destination are never leased."""
        s = self.store()
        result = self.add(s, "i1", ("A", "B"))
        self.assertEqual([e.entry_id for e in s.lease("B", 10, T0, 30)], [result.entry_ids[1]])

    def test_lease_respects_due_time(self) -> None:
        """An entry whose next attempt is in the future is not leased until it is due."""
        s = self.store()
        entry_id = self.add(s, "i1").entry_ids[0]
        s.lease("A", 1, T0, 30)
        s.retry(entry_id, T0 + 100, "A700", T0 + 1)
        self.assertEqual(s.lease("A", 1, T0 + 99.9, 30), [])
        self.assertEqual([e.entry_id for e in s.lease("A", 1, T0 + 100, 30)], [entry_id])

    def test_lease_skips_not_due_and_keeps_order(self) -> None:
        """A backed-off head does not block later due entries, which come in id order."""
        s = self.store()
        ids = [self.add(s, f"i{n}").entry_ids[0] for n in range(3)]
        s.lease("A", 1, T0, 30)
        s.retry(ids[0], T0 + 100, "A700", T0)
        self.assertEqual([e.entry_id for e in s.lease("A", 5, T0 + 1, 30)], ids[1:])

    def test_lease_zero_limit_takes_nothing(self) -> None:
        """A limit of 0 leases nothing."""
        s = self.store()
        self.add(s, "i1")
        self.assertEqual(s.lease("A", 0, T0, 30), [])
        self.assertEqual(s.stats(T0)["A"].queued, 1)

    def test_paused_destination_leases_nothing_and_keeps_queueing(self) -> None:
        """While paused nothing is leased; entries keep arriving; resume leases them."""
        s = self.store()
        self.add(s, "i1")
        s.set_paused("A", True)
        self.add(s, "i2")
        self.assertEqual(s.lease("A", 10, T0, 30), [])
        self.assertTrue(s.stats(T0)["A"].paused)
        self.assertEqual(s.stats(T0)["A"].queued, 2)
        s.set_paused("A", False)
        self.assertEqual(len(s.lease("A", 10, T0, 30)), 2)
        self.assertFalse(s.stats(T0)["A"].paused)

    def test_pause_is_per_destination(self) -> None:
        """Pausing one destination does not hold another."""
        s = self.store()
        self.add(s, "i1", ("A", "B"))
        s.set_paused("A", True)
        self.assertEqual(len(s.lease("B", 10, T0, 30)), 1)

    def test_shards_partition_by_study(self) -> None:
        """With shard (k, n) each entry goes to exactly the slot crc32(study) % n."""
        s = self.store()
        studies = [f"1.2.3.{n}" for n in range(12)]
        for n, study in enumerate(studies):
            for m in range(2):
                self.add(s, f"i{n}-{m}", study_instance_uid=study)
        seen: dict[int, set[str]] = {}
        for k in range(3):
            for e in s.lease("A", 100, T0, 30, shard=(k, 3)):
                self.assertEqual(zlib.crc32(e.instance.study_instance_uid.encode()) % 3, k)
                seen.setdefault(k, set()).add(e.instance.study_instance_uid)
        self.assertEqual(sum(len(v) for v in seen.values()), len(studies))
        self.assertGreater(len(seen), 1)
        self.assertEqual(s.stats(T0)["A"].in_flight, 24)

    def test_shard_keeps_study_order(self) -> None:
        """Within one shard a study's entries come oldest first."""
        s = self.store()
        ids = [self.add(s, f"i{n}", study_instance_uid="1.2.3.7").entry_ids[0] for n in range(4)]
        k = zlib.crc32(b"1.2.3.7") % 4
        self.assertEqual([e.entry_id for e in s.lease("A", 10, T0, 30, shard=(k, 4))], ids)
        self.assertEqual(s.lease("A", 10, T0, 30, shard=((k + 1) % 4, 4)), [])

    def test_malformed_shard_is_refused(self) -> None:
        """A shard (k, n) without 0 <= k < n raises ValueError and leases nothing."""
        s = self.store()
        self.add(s, "i1")
        for shard in [(0, 0), (3, 3), (-1, 2)]:
            self.assertRaises(ValueError, s.lease, "A", 10, T0, 30, shard)
        self.assertEqual(s.stats(T0)["A"].in_flight, 0)

    def test_non_positive_limits_return_nothing(self) -> None:
        """A limit of 0 or less gives an empty list from entries and finished_instances."""
        s = self.store()
        self.add(s, "i1", ())
        self.add(s, "i2")
        for limit in (0, -1):
            self.assertEqual(s.entries(limit=limit), [])
            self.assertEqual(s.finished_instances(T0 + 1, limit=limit), [])
        self.assertEqual(len(s.entries(limit=1)), 1)

    def test_leased_entry_carries_instance_and_history(self) -> None:
        """A leased entry comes with its instance record and its history so far."""
        s = self.store()
        entry_id = self.add(s, "i1").entry_ids[0]
        s.lease("A", 1, T0, 30)
        s.retry(entry_id, T0, "A700", T0 + 1)
        (e,) = s.lease("A", 1, T0 + 2, 30)
        self.assertEqual(e.instance.instance_id, "i1")
        self.assertEqual(e.history, (Attempt(T0 + 1, "A700", True),))
        self.assertEqual(e.attempts, 1)

    # -- complete / retry / release -------------------------------------------

    def test_complete_marks_delivered(self) -> None:
        """complete moves leased entries to DELIVERED with the time and records success."""
        s = self.store()
        ids = [self.add(s, f"i{n}").entry_ids[0] for n in range(2)]
        s.lease("A", 2, T0, 30)
        s.complete(ids, T0 + 5)
        for entry_id in ids:
            e = s.get(entry_id)
            self.assertEqual((e.state, e.delivered_at, e.last_error), (EntryState.DELIVERED, T0 + 5, ""))
        self.assertEqual(s.stats(T0)["A"].last_success_at, T0 + 5)
        self.assertEqual(s.stats(T0)["A"].delivered, 2)

    def test_complete_with_warning_keeps_it(self) -> None:
        """A warning status is delivered and kept as last_error."""
        s = self.store()
        entry_id = self.add(s, "i1").entry_ids[0]
        s.lease("A", 1, T0, 30)
        s.complete([entry_id], T0 + 1, warning="B000 coercion of data elements")
        e = s.get(entry_id)
        self.assertEqual((e.state, e.last_error), (EntryState.DELIVERED, "B000 coercion of data elements"))

    def test_complete_skips_entries_not_leased(self) -> None:
        """complete leaves a QUEUED entry QUEUED and ignores unknown ids."""
        s = self.store()
        entry_id = self.add(s, "i1").entry_ids[0]
        s.complete([entry_id, 999], T0)
        self.assertEqual(s.get(entry_id).state, EntryState.QUEUED)
        self.assertIsNone(s.stats(T0)["A"].last_success_at)

    def test_retry_counts_attempt_and_records_history(self) -> None:
        """retry returns a leased entry to QUEUED, counts the attempt and records it."""
        s = self.store()
        entry_id = self.add(s, "i1").entry_ids[0]
        s.lease("A", 1, T0, 30)
        s.retry(entry_id, T0 + 10, "A700 out of resources", T0 + 1)
        e = s.get(entry_id)
        self.assertEqual((e.state, e.attempts, e.next_attempt_at, e.last_error), (EntryState.QUEUED, 1, T0 + 10, "A700 out of resources"))
        self.assertEqual(e.history, (Attempt(T0 + 1, "A700 out of resources", True),))
        stats = s.stats(T0)["A"]
        self.assertEqual((stats.last_error, stats.last_error_at), ("A700 out of resources", T0 + 1))

    def test_retry_uncounted_records_without_counting(self) -> None:
        """counted=False records the error in history but does not count an attempt."""
        s = self.store()
        entry_id = self.add(s, "i1").entry_ids[0]
        s.lease("A", 1, T0, 30)
        s.retry(entry_id, T0 + 10, "connection refused", T0 + 1, counted=False)
        e = s.get(entry_id)
        self.assertEqual(e.attempts, 0)
        self.assertEqual(e.history, (Attempt(T0 + 1, "connection refused", False),))

    def test_retry_history_accumulates_in_order(self) -> None:
        """Successive retries append to the history in order."""
        s = self.store()
        entry_id = self.add(s, "i1").entry_ids[0]
        for n in range(3):
            s.lease("A", 1, T0 + n, 30)
            s.retry(entry_id, T0 + n + 1, f"err{n}", T0 + n, counted=n != 1)
        e = s.get(entry_id)
        self.assertEqual([a.error for a in e.history], ["err0", "err1", "err2"])
        self.assertEqual(e.attempts, 2)

    def test_retry_of_entry_not_leased_raises(self) -> None:
        """retry of a QUEUED or unknown entry raises KeyError and changes nothing."""
        s = self.store()
        entry_id = self.add(s, "i1").entry_ids[0]
        self.assertRaises(KeyError, s.retry, entry_id, T0 + 1, "x", T0)
        self.assertRaises(KeyError, s.retry, 999, T0 + 1, "x", T0)
        self.assertEqual(s.get(entry_id).history, ())

    def test_release_returns_unchanged(self) -> None:
        """release puts leased entries back as they were: same attempts, due time and order."""
        s = self.store()
        ids = [self.add(s, f"i{n}").entry_ids[0] for n in range(3)]
        s.lease("A", 3, T0, 30)
        s.release(ids[:2] + [999])
        e = s.get(ids[0])
        self.assertEqual((e.state, e.attempts, e.history, e.next_attempt_at), (EntryState.QUEUED, 0, (), T0))
        self.assertEqual(s.get(ids[2]).state, EntryState.LEASED)
        self.assertEqual([e.entry_id for e in s.lease("A", 5, T0, 30)], ids[:2])

    # -- dead letters --------------------------------------------------------

    def test_dead_letter_keeps_reason(self) -> None:
        """dead_letter moves a leased entry to DEAD with its reason, recorded in history."""
        s = self.store()
        entry_id = self.add(s, "i1").entry_ids[0]
        s.lease("A", 1, T0, 30)
        s.dead_letter(entry_id, "no accepted presentation context", T0 + 1)
        e = s.get(entry_id)
        self.assertEqual((e.state, e.dead_reason), (EntryState.DEAD, "no accepted presentation context"))
        self.assertEqual(e.history[-1], Attempt(T0 + 1, "no accepted presentation context", False))
        self.assertEqual(e.attempts, 0)
        self.assertEqual(s.stats(T0)["A"].dead, 1)
        self.assertEqual(s.lease("A", 1, T0 + 2, 30), [])

    def test_dead_letter_of_queued_entry(self) -> None:
        """A QUEUED entry may be dead-lettered directly (for instance past max_age)."""
        s = self.store()
        entry_id = self.add(s, "i1").entry_ids[0]
        s.dead_letter(entry_id, "max_age", T0 + 1)
        self.assertEqual(s.get(entry_id).state, EntryState.DEAD)

    def test_dead_letter_of_delivered_or_unknown_raises(self) -> None:
        """A DELIVERED entry cannot be dead-lettered; neither can an unknown id."""
        s = self.store()
        entry_id = self.add(s, "i1").entry_ids[0]
        s.lease("A", 1, T0, 30)
        s.complete([entry_id], T0)
        self.assertRaises(KeyError, s.dead_letter, entry_id, "x", T0)
        self.assertRaises(KeyError, s.dead_letter, 999, "x", T0)
        self.assertEqual(s.get(entry_id).state, EntryState.DELIVERED)

    def test_dead_letter_does_not_block_those_behind(self) -> None:
        """After a poisoned head is dead-lettered, the next entry is leased."""
        s = self.store()
        ids = [self.add(s, f"i{n}").entry_ids[0] for n in range(2)]
        s.lease("A", 1, T0, 30)
        s.dead_letter(ids[0], "C000", T0)
        self.assertEqual([e.entry_id for e in s.lease("A", 1, T0, 30)], [ids[1]])

    def test_requeue_dead_goes_to_the_tail(self) -> None:
        """A requeued dead letter gets a new id after every other entry and restarts attempts."""
        s = self.store()
        ids = [self.add(s, f"i{n}").entry_ids[0] for n in range(3)]
        s.lease("A", 1, T0, 30)
        s.retry(ids[0], T0, "A700", T0)
        s.lease("A", 1, T0, 30)
        s.dead_letter(ids[0], "C000", T0 + 1)
        new_id = s.requeue_dead(ids[0], T0 + 50)
        self.assertGreater(new_id, max(ids))
        self.assertRaises(KeyError, s.get, ids[0])
        e = s.get(new_id)
        self.assertEqual((e.state, e.attempts, e.destination, e.enqueued_at, e.next_attempt_at), (EntryState.QUEUED, 0, "A", T0 + 50, T0 + 50))
        self.assertEqual([a.error for a in e.history], ["A700", "C000"])
        self.assertEqual([x.entry_id for x in s.lease("A", 10, T0 + 50, 30)], ids[1:] + [new_id])

    def test_requeue_dead_retargets(self) -> None:
        """With a destination the dead letter moves there, keeping route and path."""
        s = self.store()
        record = make_record("i1")
        entry_id = s.add_instance(record, [NewEntry("morph", "A", "/spool/m.dcm")], T0, 0).entry_ids[0]
        s.dead_letter(entry_id, "C000", T0)
        new_id = s.requeue_dead(entry_id, T0 + 1, destination="B")
        e = s.get(new_id)
        self.assertEqual((e.destination, e.route, e.path, e.state), ("B", "morph", "/spool/m.dcm", EntryState.QUEUED))
        self.assertEqual(s.stats(T0)["A"].dead, 0)
        self.assertEqual([x.entry_id for x in s.lease("B", 10, T0 + 1, 30)], [new_id])

    def test_requeue_dead_refuses_entries_not_dead(self) -> None:
        """requeue_dead of a QUEUED or unknown entry raises KeyError."""
        s = self.store()
        entry_id = self.add(s, "i1").entry_ids[0]
        self.assertRaises(KeyError, s.requeue_dead, entry_id, T0)
        self.assertRaises(KeyError, s.requeue_dead, 999, T0)
        self.assertEqual(s.get(entry_id).state, EntryState.QUEUED)

    def test_requeue_instance_is_never_a_duplicate(self) -> None:
        """An operator replay adds a QUEUED entry even when the destination has the instance."""
        s = self.store()
        first = self.add(s, "i1", ("A",), window=3600)
        s.lease("A", 1, T0, 30)
        s.complete(first.entry_ids, T0)
        new_id = s.requeue_instance("i1", "A", "replay", T0 + 1)
        e = s.get(new_id)
        self.assertEqual((e.state, e.route, e.path, e.destination), (EntryState.QUEUED, "replay", "/spool/i1.dcm", "A"))
        self.assertEqual([x.entry_id for x in s.lease("A", 5, T0 + 1, 30)], [new_id])

    def test_requeue_instance_of_unknown_instance_raises(self) -> None:
        """Replaying an instance that is not on record raises KeyError."""
        s = self.store()
        self.assertRaises(KeyError, s.requeue_instance, "nope", "A", "replay", T0)
        self.assertEqual(s.entries(), [])

    def test_purge_deletes_a_dead_letter(self) -> None:
        """purge removes a DEAD entry for good."""
        s = self.store()
        entry_id = self.add(s, "i1").entry_ids[0]
        s.dead_letter(entry_id, "C000", T0)
        s.purge(entry_id)
        self.assertRaises(KeyError, s.get, entry_id)
        self.assertEqual(s.stats(T0)["A"].dead, 0)

    def test_purge_refuses_entries_not_dead(self) -> None:
        """purge of a QUEUED or unknown entry raises KeyError and deletes nothing."""
        s = self.store()
        entry_id = self.add(s, "i1").entry_ids[0]
        self.assertRaises(KeyError, s.purge, entry_id)
        self.assertRaises(KeyError, s.purge, 999)
        self.assertEqual(s.get(entry_id).state, EntryState.QUEUED)

    # -- recover -------------------------------------------------------------

    def test_recover_requeues_leased_keeping_attempts(self) -> None:
        """recover returns every LEASED entry to QUEUED, keeps attempts, returns the count."""
        s = self.store()
        ids = [self.add(s, f"i{n}", ("A", "B")).entry_ids for n in range(3)]
        s.lease("A", 1, T0, 30)
        s.retry(ids[0][0], T0, "A700", T0)
        s.lease("A", 2, T0, 30)
        s.lease("B", 1, T0, 30)
        s.lease("B", 1, T0, 30)
        s.complete([ids[1][1]], T0)
        self.assertEqual(s.recover(T0 + 100), 3)
        self.assertEqual(s.get(ids[0][0]).attempts, 1)
        self.assertEqual(s.get(ids[0][0]).state, EntryState.QUEUED)
        self.assertEqual(s.get(ids[1][1]).state, EntryState.DELIVERED)
        self.assertEqual(s.stats(T0)["A"].in_flight + s.stats(T0)["B"].in_flight, 0)
        self.assertEqual(s.recover(T0 + 100), 0)

    def test_recover_notes_the_first_entries_of_each_lease_as_ambiguous(self) -> None:
        """recover marks the lowest UNRECORDED_DELIVERIES + 1 leased ids of each lease ambiguous, not the rest (F13, issue 13)."""
        s = self.store()
        window = UNRECORDED_DELIVERIES + 1
        ids = [self.add(s, f"i{n}", ("A", "B")).entry_ids for n in range(window + 5)]
        s.lease("A", window + 2, T0, 30)  # one lease: its lowest `window` ids may be at the destination
        s.lease("A", 3, T0 + 1, 30)  # another (another slot)
        later = [ids[n][0] for n in range(window + 2, window + 5)]
        s.complete(later[:1], T0 + 1)  # its first was recorded delivered: the next two may be out
        s.lease("B", 1, T0, 30)
        s.recover(T0 + 100)
        ambiguous = {e.entry_id for e in s.entries(limit=100)
                     if any(a.error == RECOVERED_IN_FLIGHT and not a.counted for a in e.history)}
        self.assertEqual(ambiguous, {ids[n][0] for n in range(window)} | set(later[1:]) | {ids[0][1]})
        self.assertTrue(RECOVERED_IN_FLIGHT.startswith("ambiguous: "))
        self.assertEqual(s.get(ids[0][0]).last_error, RECOVERED_IN_FLIGHT)
        self.assertEqual(s.get(ids[0][0]).attempts, 0)
        self.assertEqual(s.get(ids[window][0]).history, ())
        self.assertEqual(s.get(ids[window + 1][0]).history, ())

    # -- settle (issue 13: the worker's turn in one transaction) -------------

    def test_settle_records_deliveries_and_leases_the_next_entries(self) -> None:
        """settle marks the given ids DELIVERED with their own warnings and leases the next due entries."""
        s = self.store()
        ids = [self.add(s, f"i{n}").entry_ids[0] for n in range(5)]
        first = s.settle("A", [], T0, 2, 30)
        self.assertEqual([e.entry_id for e in first.leased], ids[:2])
        self.assertIsNone(first.next_due)
        second = s.settle("A", [(ids[0], ""), (ids[1], "0xB000")], T0 + 1, 10, 30)
        self.assertEqual([e.entry_id for e in second.leased], ids[2:])
        self.assertEqual([e.state for e in second.leased], [EntryState.LEASED] * 3)
        self.assertEqual((s.get(ids[0]).state, s.get(ids[0]).last_error), (EntryState.DELIVERED, ""))
        self.assertEqual((s.get(ids[1]).state, s.get(ids[1]).last_error), (EntryState.DELIVERED, "0xB000"))
        self.assertEqual(s.get(ids[1]).delivered_at, T0 + 1)
        self.assertEqual(s.stats(T0)["A"].last_success_at, T0 + 1)

    def test_settle_with_nothing_due_says_when_the_next_entry_is(self) -> None:
        """With nothing leased, settle records the deliveries and returns the earliest due time."""
        s = self.store()
        a, b = (self.add(s, f"i{n}").entry_ids[0] for n in range(2))
        s.lease("A", 2, T0, 30)
        s.retry(b, T0 + 60, "A700", T0)
        settled = s.settle("A", [(a, "")], T0 + 1, 10, 30)
        self.assertEqual(settled.leased, ())
        self.assertEqual(settled.next_due, T0 + 60)
        self.assertEqual(s.get(a).state, EntryState.DELIVERED)
        self.assertEqual(s.settle("B", [], T0, 10, 30), Settled((), None))

    def test_settle_with_limit_zero_only_records(self) -> None:
        """limit 0 records the deliveries and leases nothing (a flush); ids not LEASED are skipped."""
        s = self.store()
        a, b = (self.add(s, f"i{n}").entry_ids[0] for n in range(2))
        s.lease("A", 1, T0, 30)
        self.assertEqual(s.settle("A", [(a, ""), (b, "")], T0, 0, 30), Settled())
        self.assertEqual((s.get(a).state, s.get(b).state), (EntryState.DELIVERED, EntryState.QUEUED))

    def test_settle_respects_pause_and_shard(self) -> None:
        """settle leases nothing of a paused destination and only its shard's studies."""
        s = self.store()
        one = self.add(s, "i1", study_instance_uid="1.2.3").entry_ids[0]
        two = self.add(s, "i2", study_instance_uid="1.2.4").entry_ids[0]
        s.set_paused("A", True)
        self.assertEqual(s.settle("A", [], T0, 10, 30).leased, ())
        s.set_paused("A", False)
        shard = (zlib.crc32(b"1.2.4") % 2, 2)
        self.assertEqual([e.entry_id for e in s.settle("A", [], T0, 10, 30, shard).leased], [two])
        self.assertEqual(s.get(one).state, EntryState.QUEUED)

    def test_recovered_entries_are_leased_first(self) -> None:
        """After recovery the in-flight entries (the oldest) are leased again first."""
        s = self.store()
        ids = [self.add(s, f"i{n}").entry_ids[0] for n in range(3)]
        s.lease("A", 2, T0, 30)
        s.recover(T0 + 1)
        self.assertEqual([e.entry_id for e in s.lease("A", 3, T0 + 1, 30)], ids)

    # -- reading ---------------------------------------------------------------

    def test_get_unknown_raises(self) -> None:
        """get of an unknown id raises KeyError."""
        self.assertRaises(KeyError, self.store().get, 12345)

    def test_entries_filters_and_orders(self) -> None:
        """entries filters by destination and state, oldest first, up to limit."""
        s = self.store()
        ids = [self.add(s, f"i{n}", ("A", "B")).entry_ids for n in range(3)]
        s.lease("A", 1, T0, 30)
        self.assertEqual([e.entry_id for e in s.entries()], [i for pair in ids for i in pair])
        self.assertEqual([e.entry_id for e in s.entries("A")], [p[0] for p in ids])
        self.assertEqual([e.entry_id for e in s.entries("A", EntryState.QUEUED)], [p[0] for p in ids[1:]])
        self.assertEqual([e.entry_id for e in s.entries(state=EntryState.LEASED)], [ids[0][0]])
        self.assertEqual([e.entry_id for e in s.entries("B", limit=2)], [p[1] for p in ids[:2]])

    def test_find_by_each_criterion(self) -> None:
        """find matches by study, SOP instance, patient id and accession, each alone."""
        s = self.store()
        self.add(s, "i1", sop_instance_uid="1.1", study_instance_uid="9.1", patient_id="P1", accession_number="A1")
        self.add(s, "i2", sop_instance_uid="1.2", study_instance_uid="9.1", patient_id="P2", accession_number="A2", now=T0 + 1)
        self.add(s, "i3", sop_instance_uid="1.3", study_instance_uid="9.2", patient_id="P2", accession_number="A1", now=T0 + 2)
        ids = lambda found: [r.instance_id for r, _ in found]  # noqa: E731
        self.assertEqual(ids(s.find(study_instance_uid="9.1")), ["i1", "i2"])
        self.assertEqual(ids(s.find(sop_instance_uid="1.3")), ["i3"])
        self.assertEqual(ids(s.find(patient_id="P2")), ["i2", "i3"])
        self.assertEqual(ids(s.find(accession_number="A1")), ["i1", "i3"])
        self.assertEqual(ids(s.find(patient_id="P2", accession_number="A1")), ["i3"])
        self.assertEqual(s.find(study_instance_uid="none"), [])

    def test_find_returns_every_entry_with_its_state(self) -> None:
        """find answers where an instance went: each destination and its state there."""
        s = self.store()
        ids = self.add(s, "i1", ("A", "B", "C"), sop_instance_uid="1.1").entry_ids
        s.lease("A", 1, T0, 30)
        s.complete([ids[0]], T0 + 1)
        s.dead_letter(ids[1], "C000", T0 + 2)
        ((record, entries),) = s.find(sop_instance_uid="1.1")
        self.assertEqual(record.instance_id, "i1")
        self.assertEqual([(e.destination, e.state) for e in entries], [("A", EntryState.DELIVERED), ("B", EntryState.DEAD), ("C", EntryState.QUEUED)])
        self.assertEqual(entries[0].delivered_at, T0 + 1)
        self.assertEqual(entries[1].dead_reason, "C000")

    def test_stats_figures(self) -> None:
        """stats counts each state and reports the oldest queued or in-flight enqueue time."""
        s = self.store()
        ids = [self.add(s, f"i{n}", ("A", "B"), now=T0 + n, sop_instance_uid=f"1.{n}").entry_ids for n in range(5)]
        s.lease("A", 2, T0 + 10, 30)  # i0, i1 leased
        s.complete([ids[0][0]], T0 + 11)  # i0 delivered
        s.lease("A", 1, T0 + 10, 30)  # i2 leased
        s.dead_letter(ids[2][0], "C000", T0 + 12)  # i2 dead
        self.add(s, "dup", ("A",), now=T0 + 13, sop_instance_uid="1.4", window=100)
        a = s.stats(T0 + 20)["A"]
        self.assertEqual((a.queued, a.in_flight, a.dead, a.delivered, a.duplicates), (2, 1, 1, 1, 1))
        self.assertEqual(a.oldest_queued_at, T0 + 1)
        self.assertEqual((a.last_error, a.last_error_at, a.last_success_at), ("C000", T0 + 12, T0 + 11))
        b = s.stats(T0 + 20)["B"]
        self.assertEqual(b, DestinationStats("B", queued=5, oldest_queued_at=T0))

    def test_stats_empty_destination_has_no_oldest(self) -> None:
        """A destination with only delivered entries has no oldest queued time."""
        s = self.store()
        entry_id = self.add(s, "i1").entry_ids[0]
        s.lease("A", 1, T0, 30)
        s.complete([entry_id], T0)
        self.assertIsNone(s.stats(T0)["A"].oldest_queued_at)

    def test_stats_lists_paused_destination_without_entries(self) -> None:
        """A destination with only a pause flag appears in stats, and an unknown one does not."""
        s = self.store()
        self.assertEqual(dict(s.stats(T0)), {})
        s.set_paused("X", True)
        self.assertEqual(dict(s.stats(T0)), {"X": DestinationStats("X", paused=True)})

    def test_next_due(self) -> None:
        """next_due is the earliest due time among QUEUED entries, ignoring leased ones."""
        s = self.store()
        self.assertIsNone(s.next_due("A"))
        ids = [self.add(s, f"i{n}", now=T0 + n).entry_ids[0] for n in range(2)]
        self.assertEqual(s.next_due("A"), T0)
        s.lease("A", 1, T0, 30)
        self.assertEqual(s.next_due("A"), T0 + 1)
        s.retry(ids[0], T0 + 500, "x", T0)
        self.assertEqual(s.next_due("A"), T0 + 1)
        s.lease("A", 1, T0 + 1, 30)
        self.assertEqual(s.next_due("A"), T0 + 500)
        self.assertIsNone(s.next_due("B"))

    def test_shift_schedule_moves_future_retries_and_caps_them(self) -> None:
        """A clock step moves only QUEUED entries due after ``after`` of that destination; ``latest`` caps them."""
        s = self.store()
        ids = [self.add(s, f"i{n}", ("A", "B")).entry_ids for n in range(3)]
        s.lease("A", 3, T0, 30)
        s.retry(ids[0][0], T0 + 100, "x", T0)
        s.retry(ids[1][0], T0 + 5000, "x", T0)
        # ids[2][0] stays leased; the B entries are due at T0.
        self.assertEqual(s.shift_schedule("A", T0 + 10, -3600.0), 2)
        self.assertEqual(s.get(ids[0][0]).next_attempt_at, T0 + 100 - 3600)
        self.assertEqual(s.get(ids[1][0]).next_attempt_at, T0 + 5000 - 3600)
        self.assertEqual(s.get(ids[2][0]).state, EntryState.LEASED)
        self.assertEqual(s.get(ids[0][1]).next_attempt_at, T0)
        self.assertEqual(s.shift_schedule("A", T0, 0.0, latest=T0 + 60), 1)
        self.assertEqual(s.next_due("A"), T0 + 100 - 3600)
        self.assertEqual(s.get(ids[1][0]).next_attempt_at, T0 + 60)
        self.assertEqual(s.shift_schedule("B", T0 + 1, 10.0), 0)

    def test_expire_dead_letters_only_old_queued_entries_of_the_destination(self) -> None:
        """expire takes QUEUED entries of one destination enqueued before the cut, oldest first, up to the limit."""
        s = self.store()
        old = [self.add(s, f"o{n}", ("A", "B"), now=T0 + n).entry_ids for n in range(3)]
        young = self.add(s, "y", ("A",), now=T0 + 100).entry_ids
        s.lease("A", 1, T0 + 200, 30)  # o0's A entry is leased: in flight, not expired
        expired = s.expire("A", T0 + 50, "gave up: down", T0 + 200, limit=1)
        self.assertEqual([e.entry_id for e in expired], [old[1][0]])
        self.assertEqual(expired[0].state, EntryState.DEAD)
        self.assertEqual(expired[0].dead_reason, "gave up: down")
        self.assertEqual([e.entry_id for e in s.expire("A", T0 + 50, "gave up: down", T0 + 200)], [old[2][0]])
        self.assertEqual(s.get(old[0][0]).state, EntryState.LEASED)
        self.assertEqual(s.get(young[0]).state, EntryState.QUEUED)
        self.assertEqual({s.get(ids[1]).state for ids in old}, {EntryState.QUEUED})
        self.assertEqual(s.expire("A", T0 + 50, "x", T0 + 200), [])

    # -- retention -------------------------------------------------------------

    def test_finished_instances(self) -> None:
        """Only instances whose entries are all DELIVERED or DUPLICATE, or that have none, are finished."""
        s = self.store()
        done = self.add(s, "done", ("A", "B"), sop_instance_uid="1.1", window=10).entry_ids
        dup = self.add(s, "dup", ("A",), sop_instance_uid="1.1", window=10, now=T0 + 1).entry_ids
        self.add(s, "unrouted", (), now=T0 + 2)
        queued = self.add(s, "queued", ("A",), now=T0 + 3).entry_ids
        dead = self.add(s, "dead", ("B",), now=T0 + 4).entry_ids
        self.assertEqual(s.get(dup[0]).state, EntryState.DUPLICATE)
        s.lease("A", 1, T0, 30)
        s.lease("B", 1, T0, 30)
        s.complete(done, T0 + 5)
        s.lease("B", 1, T0 + 5, 30)
        s.dead_letter(dead[0], "C000", T0 + 5)
        self.assertEqual(s.get(queued[0]).state, EntryState.QUEUED)
        self.assertEqual([r.instance_id for r in s.finished_instances(T0 + 100)], ["done", "dup", "unrouted"])
        # "done" was delivered at T0 + 5: its age counts from then (retention after delivery).
        self.assertEqual([r.instance_id for r in s.finished_instances(T0 + 3)], ["dup", "unrouted"])
        self.assertEqual([r.instance_id for r in s.finished_instances(T0 + 6)], ["done", "dup", "unrouted"])
        self.assertEqual([r.instance_id for r in s.finished_instances(T0 + 100, limit=2)], ["done", "dup"])

    def test_purged_dead_letter_finishes_its_instance(self) -> None:
        """Once its only dead letter is purged, an instance is finished."""
        s = self.store()
        entry_id = self.add(s, "i1").entry_ids[0]
        s.dead_letter(entry_id, "C000", T0)
        self.assertEqual(s.finished_instances(T0 + 1), [])
        s.purge(entry_id)
        self.assertEqual([r.instance_id for r in s.finished_instances(T0 + 1)], ["i1"])

    def test_forget_instance(self) -> None:
        """forget_instance removes the record and every entry; unknown ids are ignored."""
        s = self.store()
        ids = self.add(s, "i1", ("A", "B")).entry_ids
        self.add(s, "i2")
        s.forget_instance("i1")
        s.forget_instance("never")
        self.assertEqual(s.instance_ids(), {"i2"})
        for entry_id in ids:
            self.assertRaises(KeyError, s.get, entry_id)
        self.assertEqual(s.find(sop_instance_uid=make_record("i1").sop_instance_uid), [])
        self.assertEqual(s.stats(T0)["A"].queued, 1)

    def test_instance_ids(self) -> None:
        """instance_ids lists every instance on record, routed or not."""
        s = self.store()
        self.assertEqual(s.instance_ids(), set())
        self.add(s, "i1")
        self.add(s, "i2", ())
        self.assertEqual(s.instance_ids(), {"i1", "i2"})

    def test_circuit_state_is_recorded(self) -> None:
        """set_circuit shows in stats (open with its reason and time), and closing clears the reason."""
        s = self.store()
        s.set_circuit("A", True, "association rejected (1, 1, 7)", T0)
        stats = s.stats(T0)["A"]
        self.assertEqual((stats.circuit_open, stats.circuit_reason, stats.circuit_since), (True, "association rejected (1, 1, 7)", T0))
        s.set_circuit("A", False, "", T0 + 5)
        stats = s.stats(T0 + 5)["A"]
        self.assertEqual((stats.circuit_open, stats.circuit_reason, stats.circuit_since), (False, "", T0 + 5))


    # -- several nodes, one queue (issue 14) ------------------------------------

    def test_lease_names_owner_generation_and_until(self) -> None:
        """A lease records its node, the generation grows by one at each lease (any node), and until is now + lease_seconds."""
        n1, n2 = self.cluster("n1", "n2")
        (entry_id,) = self.add(n1, "i1").entry_ids
        self.assertEqual((n1.get(entry_id).lease_owner, n1.get(entry_id).lease_generation), ("", 0))
        self.assertIsNone(n1.get(entry_id).leased_until)
        (e,) = n1.lease("A", 1, T0, 30)
        self.assertEqual((e.lease_owner, e.lease_generation, e.leased_until), ("n1", 1, T0 + 30))
        self.assertEqual(n2.get(entry_id), e)
        n1.retry(entry_id, T0 + 1, "A700", T0, generation=1)
        self.assertEqual((n2.get(entry_id).lease_owner, n2.get(entry_id).leased_until), ("n1", None))
        (e,) = n2.lease("A", 1, T0 + 1, 10)
        self.assertEqual((e.lease_owner, e.lease_generation, e.leased_until), ("n2", 2, T0 + 11))
        n2.complete([entry_id], T0 + 2, generations={entry_id: 2})
        done = n1.get(entry_id)
        self.assertEqual((done.state, done.lease_owner, done.lease_generation, done.leased_until), (EntryState.DELIVERED, "n2", 2, None))

    def expired_and_taken_over(self) -> tuple[Any, Any, int]:
        """n1 leases an entry (generation 1) and stalls past its lease; n2 takes it over (generation 2)."""
        n1, n2 = self.cluster("n1", "n2")
        (entry_id,) = self.add(n1, "i1").entry_ids
        n1.lease("A", 1, T0, 30)
        (e,) = n2.lease("A", 1, T0 + 31, 30)
        self.assertEqual((e.entry_id, e.lease_owner, e.lease_generation), (entry_id, "n2", 2))
        return n1, n2, entry_id

    def test_fenced_complete_skips_a_lost_lease(self) -> None:
        """complete under a generation that no longer holds records nothing; the new holder's complete stands."""
        n1, n2, entry_id = self.expired_and_taken_over()
        n1.complete([entry_id], T0 + 32, generations={entry_id: 1})
        e = n2.get(entry_id)
        self.assertEqual((e.state, e.lease_owner, e.lease_generation), (EntryState.LEASED, "n2", 2))
        self.assertIsNone(n2.stats(T0)["A"].last_success_at)
        n2.complete([entry_id], T0 + 33, "B000", generations={entry_id: 2})
        self.assertEqual((n1.get(entry_id).state, n1.get(entry_id).last_error), (EntryState.DELIVERED, "B000"))

    def test_fenced_settle_lists_lost_deliveries(self) -> None:
        """settle records the deliveries still held and lists the lost ones in Settled.lost, untouched."""
        n1, n2 = self.cluster("n1", "n2")
        lost, kept = (self.add(n1, f"i{n}").entry_ids[0] for n in range(2))
        n1.lease("A", 1, T0, 30)  # `lost`, generation 1
        n1.lease("A", 1, T0 + 20, 30)  # `kept`, generation 1, until T0 + 50
        n2.lease("A", 1, T0 + 31, 30)  # takes `lost` back (generation 2)
        settled = n1.settle("A", [(lost, ""), (kept, "")], T0 + 32, 0, 30, generations={lost: 1, kept: 1})
        self.assertEqual(settled, Settled(lost=(lost,)))
        self.assertEqual((n2.get(lost).state, n2.get(kept).state), (EntryState.LEASED, EntryState.DELIVERED))
        again = n1.settle("A", [(lost, "")], T0 + 33, 5, 30, generations={lost: 1})
        self.assertEqual(again, Settled((), None, (lost,)))

    def test_fenced_release_skips_a_lost_lease(self) -> None:
        """release under a lost generation leaves the new holder's lease alone."""
        n1, n2, entry_id = self.expired_and_taken_over()
        n1.release([entry_id], generations={entry_id: 1})
        self.assertEqual((n2.get(entry_id).state, n2.get(entry_id).lease_owner), (EntryState.LEASED, "n2"))
        n2.release([entry_id], generations={entry_id: 2})
        self.assertEqual(n2.get(entry_id).state, EntryState.QUEUED)

    def test_fenced_retry_raises_lease_lost(self) -> None:
        """retry under a lost generation raises LeaseLost (a KeyError) and records no attempt."""
        n1, n2, entry_id = self.expired_and_taken_over()
        before = n2.get(entry_id)
        with self.assertRaises(LeaseLost) as caught:
            n1.retry(entry_id, T0 + 40, "A700", T0 + 32, generation=1)
        self.assertIsInstance(caught.exception, KeyError)
        self.assertEqual(n2.get(entry_id), before)
        self.assertRaises(LeaseLost, n1.retry, 999, T0 + 40, "A700", T0 + 32, True, 1)

    def test_fenced_dead_letter_raises_lease_lost(self) -> None:
        """dead_letter under a lost generation raises LeaseLost; a QUEUED entry is not held under any generation either."""
        n1, n2, entry_id = self.expired_and_taken_over()
        self.assertRaises(LeaseLost, n1.dead_letter, entry_id, "C000", T0 + 32, 1)
        n2.release([entry_id])
        self.assertRaises(LeaseLost, n2.dead_letter, entry_id, "C000", T0 + 32, 2)
        e = n2.get(entry_id)
        self.assertEqual((e.state, e.dead_reason), (EntryState.QUEUED, ""))
        n2.dead_letter(entry_id, "max_age", T0 + 33)  # the operator's call is unfenced
        self.assertEqual(n1.get(entry_id).state, EntryState.DEAD)

    def test_fenced_writes_under_the_held_generation_succeed(self) -> None:
        """retry and dead_letter given the generation still held behave as unfenced ones."""
        n1, n2, entry_id = self.expired_and_taken_over()
        n2.retry(entry_id, T0 + 40, "A700", T0 + 32, generation=2)
        self.assertEqual((n1.get(entry_id).state, n1.get(entry_id).attempts), (EntryState.QUEUED, 1))
        (e,) = n1.lease("A", 1, T0 + 40, 30)
        self.assertEqual(e.lease_generation, 3)
        n1.dead_letter(entry_id, "C000", T0 + 41, generation=3)
        self.assertEqual((n2.get(entry_id).state, n2.get(entry_id).dead_reason), (EntryState.DEAD, "C000"))

    def test_unfenced_calls_ignore_the_lease_owner(self) -> None:
        """Without generations (the operator's calls) complete acts on any LEASED entry, whoever holds it."""
        n1, n2, entry_id = self.expired_and_taken_over()
        n1.complete([entry_id], T0 + 32)
        self.assertEqual(n2.get(entry_id).state, EntryState.DELIVERED)

    def test_fence_covers_only_the_ids_it_names(self) -> None:
        """An id absent from ``generations`` is written unfenced; the fenced one is checked."""
        n1, n2 = self.cluster("n1", "n2")
        a, b = (self.add(n1, f"i{n}").entry_ids[0] for n in range(2))
        n1.lease("A", 2, T0, 30)
        n1.complete([a, b], T0 + 1, generations={a: 7})
        self.assertEqual((n2.get(a).state, n2.get(b).state), (EntryState.LEASED, EntryState.DELIVERED))

    def test_renew_extends_only_held_leases(self) -> None:
        """renew moves until for the leases still held and returns the lost ids; a renewed lease is not taken back."""
        n1, n2 = self.cluster("n1", "n2")
        a, b, c = (self.add(n1, f"i{n}").entry_ids[0] for n in range(3))
        n1.lease("A", 1, T0, 30)  # a
        n1.lease("A", 2, T0 + 20, 30)  # b, c: until T0 + 50
        n2.lease("A", 10, T0 + 31, 30)  # a is taken over
        self.assertEqual(n1.renew({a: 1, b: 1, c: 5, 999: 1}, T0 + 40, 30), {a, c, 999})
        self.assertEqual(n2.get(b).leased_until, T0 + 70)
        self.assertEqual(n2.get(c).leased_until, T0 + 50)
        self.assertEqual(n2.get(a).leased_until, T0 + 61)
        self.assertEqual([e.entry_id for e in n2.lease("A", 10, T0 + 60, 30)], [c])
        self.assertEqual(n2.get(b).lease_owner, "n1")
        self.assertEqual(n1.renew({}, T0, 30), set())

    def test_lease_takes_back_another_nodes_expired_lease_noting_the_first_in_flight(self) -> None:
        """After n1's leases expire n2 leases them in id order; the lowest UNRECORDED_DELIVERIES + 1 of each lease are noted ambiguous."""
        n1, n2 = self.cluster("n1", "n2")
        window = UNRECORDED_DELIVERIES + 1
        ids = [self.add(n1, f"i{n}").entry_ids[0] for n in range(window + 4)]
        n1.lease("A", window + 2, T0, 30)  # one lease, until T0 + 30
        n1.lease("A", 2, T0 + 1, 30)  # another, until T0 + 31
        self.assertEqual(n2.lease("A", 100, T0 + 30, 30), [])  # at until the lease still holds
        taken = n2.lease("A", 100, T0 + 32, 30)
        self.assertEqual([e.entry_id for e in taken], ids)
        self.assertEqual({(e.lease_owner, e.lease_generation) for e in taken}, {("n2", 2)})
        note = EXPIRED_LEASE_PREFIX + "n1 expired"
        self.assertEqual(note, "ambiguous: lease of node n1 expired")
        noted = {e.entry_id for e in taken if e.history == (Attempt(T0 + 32, note, False),)}
        self.assertEqual(noted, set(ids[:window]) | set(ids[window + 2:]))
        self.assertEqual([e.history for e in taken if e.entry_id not in noted], [(), ()])
        self.assertEqual({e.attempts for e in taken}, {0})
        self.assertEqual(n2.get(ids[0]).last_error, note)

    def test_expired_lease_of_another_destination_is_left_alone(self) -> None:
        """Leasing for A takes back only A's expired leases; B's stays LEASED until B is leased."""
        n1, n2 = self.cluster("n1", "n2")
        a, b = self.add(n1, "i1", ("A", "B")).entry_ids
        n1.lease("A", 1, T0, 30)
        n1.lease("B", 1, T0, 30)
        self.assertEqual([e.entry_id for e in n2.lease("A", 5, T0 + 40, 30)], [a])
        self.assertEqual((n2.get(b).state, n2.get(b).lease_owner), (EntryState.LEASED, "n1"))
        self.assertEqual([e.entry_id for e in n2.lease("B", 5, T0 + 40, 30)], [b])

    def test_expired_lease_is_taken_back_even_while_paused(self) -> None:
        """A paused destination leases nothing, but its expired leases go back to the queue (not stuck LEASED)."""
        n1, n2 = self.cluster("n1", "n2")
        (entry_id,) = self.add(n1, "i1").entry_ids
        n1.lease("A", 1, T0, 30)
        n2.set_paused("A", True)
        self.assertEqual(n2.settle("A", [], T0 + 40, 5, 30), Settled((), T0))
        self.assertEqual(n1.get(entry_id).state, EntryState.QUEUED)

    def test_two_nodes_never_hold_the_same_entry(self) -> None:
        """Interleaved leases (whole queue and shards) by two nodes hand each entry to one node only."""
        n1, n2 = self.cluster("n1", "n2")
        for n in range(30):
            self.add(n1 if n % 2 else n2, f"i{n}", study_instance_uid=f"1.2.{n % 7}")
        held: dict[str, set[int]] = {"n1": set(), "n2": set()}
        for turn in range(12):
            node = (n1, n2)[turn % 2]
            shard = None if turn % 3 == 0 else (turn % 2, 2)
            for e in node.lease("A", 3, T0 + turn, 600, shard):
                self.assertEqual(e.lease_owner, node.node)
                held[node.node].add(e.entry_id)
        self.assertEqual(held["n1"] & held["n2"], set())
        self.assertEqual(len(held["n1"] | held["n2"]), 30)
        for name, ids in held.items():
            self.assertEqual({e.entry_id for e in n1.entries(state=EntryState.LEASED) if e.lease_owner == name}, ids)

    def test_recover_returns_only_this_nodes_leases(self) -> None:
        """recover at n1's start requeues n1's leases and leaves n2's live leases alone."""
        n1, n2 = self.cluster("n1", "n2")
        a, b = (self.add(n1, f"i{n}").entry_ids[0] for n in range(2))
        n1.lease("A", 1, T0, 30)
        n2.lease("A", 1, T0, 30)
        self.assertEqual(n1.recover(T0 + 1), 1)
        self.assertEqual((n2.get(a).state, n2.get(a).last_error), (EntryState.QUEUED, RECOVERED_IN_FLIGHT))
        self.assertEqual((n2.get(b).state, n2.get(b).lease_owner, n2.get(b).history), (EntryState.LEASED, "n2", ()))
        self.assertEqual(n1.recover(T0 + 2), 0)

    def test_claim_slot_has_one_holder_cluster_wide(self) -> None:
        """A slot claimed by n1 is refused to n2 while live; n1's own re-claim renews it; other slots are free."""
        n1, n2 = self.cluster("n1", "n2")
        self.assertTrue(n1.claim_slot("A", 0, 2, T0, 10))
        self.assertFalse(n2.claim_slot("A", 0, 2, T0 + 1, 10))
        self.assertTrue(n2.claim_slot("A", 1, 2, T0 + 1, 10))
        self.assertTrue(n2.claim_slot("B", 0, 2, T0 + 1, 10))
        self.assertTrue(n1.claim_slot("A", 0, 2, T0 + 8, 10))  # renewed until T0 + 18
        self.assertFalse(n2.claim_slot("A", 0, 2, T0 + 15, 10))
        self.assertFalse(n2.claim_slot("A", 0, 2, T0 + 18, 10))  # at until it still holds
        self.assertTrue(n2.claim_slot("A", 0, 2, T0 + 18.5, 10))  # expiry frees it
        self.assertFalse(n1.claim_slot("A", 0, 2, T0 + 19, 10))

    def test_claim_slot_waits_for_another_nodes_live_lease_in_its_shard(self) -> None:
        """n2's claim on slot k ran out but its lease of shard k did not: n1 gets slot k only once that lease expires.

        (A lease taken after the claim's last renewal outlasts the claim: had
        n1 claimed and leased at once, the study's later entries would have
        overtaken n2's batch.) The other shard, and n2's own renewal, are free.
        """
        n1, n2 = self.cluster("n1", "n2")
        study = "1.2.840.99.7"
        k = zlib.crc32(study.encode()) % 2
        ids = [self.add(n1, f"s{n}", study_instance_uid=study).entry_ids[0] for n in range(4)]
        self.assertTrue(n2.claim_slot("A", k, 2, T0, 10))
        self.assertEqual([e.entry_id for e in n2.lease("A", 2, T0 + 5, 30, shard=(k, 2))], ids[:2])  # until T0 + 35
        self.assertFalse(n1.claim_slot("A", k, 2, T0 + 11, 10))
        self.assertTrue(n1.claim_slot("A", 1 - k, 2, T0 + 11, 10))
        self.assertTrue(n2.claim_slot("A", k, 2, T0 + 11, 10))  # its own lease does not block n2
        n2.release_slot("A", k)
        self.assertFalse(n1.claim_slot("A", k, 2, T0 + 35, 10))
        self.assertTrue(n1.claim_slot("A", k, 2, T0 + 35.5, 10))
        self.assertEqual([e.entry_id for e in n1.lease("A", 10, T0 + 35.5, 30, shard=(k, 2))], ids)

    def test_release_slot_frees_only_this_nodes_claim(self) -> None:
        """release_slot lets another node claim at once; releasing a slot another node holds does nothing."""
        n1, n2 = self.cluster("n1", "n2")
        n1.claim_slot("A", 0, 1, T0, 60)
        n2.release_slot("A", 0)
        self.assertFalse(n2.claim_slot("A", 0, 1, T0 + 1, 60))
        n1.release_slot("A", 0)
        self.assertTrue(n2.claim_slot("A", 0, 1, T0 + 1, 60))
        n1.release_slot("Z", 3)  # nothing held: nothing happens

    def test_claim_slot_refuses_a_slot_that_does_not_exist(self) -> None:
        """claim_slot outside 0 <= slot < slots raises ValueError and claims nothing."""
        n1, n2 = self.cluster("n1", "n2")
        for slot, slots in [(-1, 2), (2, 2), (0, 0)]:
            self.assertRaises(ValueError, n1.claim_slot, "A", slot, slots, T0, 10)
        self.assertEqual([node.slots for node in n1.nodes(T0)], [])
        n1.heartbeat(T0, T0)
        self.assertEqual(n1.nodes(T0)[0].slots, 0)

    def test_study_order_is_kept_across_nodes(self) -> None:
        """Entries of one study received by two nodes go through the one slot of its shard, in id order, even after the holder dies."""
        n1, n2 = self.cluster("n1", "n2")
        study = "1.2.840.99.7"
        k = zlib.crc32(study.encode()) % 2
        ids = [self.add((n1, n2)[n % 2], f"s{n}", study_instance_uid=study, node=f"n{n % 2 + 1}").entry_ids[0] for n in range(6)]
        self.assertTrue(n2.claim_slot("A", k, 2, T0, 10))
        self.assertFalse(n1.claim_slot("A", k, 2, T0, 10))
        self.assertTrue(n1.claim_slot("A", 1 - k, 2, T0, 10))
        self.assertEqual(n1.lease("A", 10, T0, 30, shard=(1 - k, 2)), [])  # n1's slot serves the other shard
        first = n2.lease("A", 3, T0, 30, shard=(k, 2))
        self.assertEqual([e.entry_id for e in first], ids[:3])
        # n2 dies: its slot and its lease expire, n1 takes over the slot and the lease, in order.
        self.assertTrue(n1.claim_slot("A", k, 2, T0 + 31, 10))
        rest = n1.lease("A", 10, T0 + 31, 30, shard=(k, 2))
        self.assertEqual([e.entry_id for e in rest], ids)

    def test_circuit_is_read_by_every_node(self) -> None:
        """circuit() on n2 returns what n1's set_circuit wrote, and the reverse; an unknown destination is closed."""
        n1, n2 = self.cluster("n1", "n2")
        self.assertEqual(n2.circuit("A"), (False, "", None))
        n1.set_circuit("A", True, "association rejected (1, 1, 7)", T0)
        self.assertEqual(n2.circuit("A"), (True, "association rejected (1, 1, 7)", T0))
        n2.set_circuit("A", False, "probe accepted", T0 + 5)
        self.assertEqual(n1.circuit("A"), (False, "", T0 + 5))

    def test_heartbeat_and_nodes(self) -> None:
        """nodes() lists each node by name with its last heartbeat, detail, live leases and live slots."""
        n1, n2 = self.cluster("n1", "n2")
        self.assertEqual(n1.nodes(T0), [])
        for n in range(4):
            self.add(n1, f"i{n}")
        n2.heartbeat(T0, T0 - 100, "10.0.0.2:11112")
        n1.heartbeat(T0, T0 - 50)
        n2.claim_slot("A", 1, 2, T0, 30)  # (before n1's unsharded lease, which may hold entries of shard 1)
        n1.lease("A", 2, T0, 30)
        n2.lease("A", 1, T0 - 40, 30)  # expired at T0 - 10: not held now
        n1.claim_slot("A", 0, 2, T0, 30)
        n1.claim_slot("B", 0, 1, T0 - 60, 30)  # expired
        n2.heartbeat(T0 + 5, T0 - 100, "10.0.0.2:11112 draining")
        self.assertEqual(
            n2.nodes(T0 + 10),
            [
                NodeStatus("n1", T0 - 50, T0, leases=2, slots=1, detail=""),
                NodeStatus("n2", T0 - 100, T0 + 5, leases=0, slots=1, detail="10.0.0.2:11112 draining"),
            ],
        )

    def test_hold_singleton_has_one_holder(self) -> None:
        """The first node to ask holds the named job; another is refused while it holds it; the holder keeps it."""
        n1, n2 = self.cluster("n1", "n2")
        self.assertTrue(n1.hold_singleton("housekeeping", T0, 30))
        self.assertFalse(n2.hold_singleton("housekeeping", T0 + 1, 30))
        self.assertTrue(n1.hold_singleton("housekeeping", T0 + 2, 30))
        self.assertTrue(n2.hold_singleton("retention", T0 + 3, 30))
        self.assertFalse(n1.hold_singleton("retention", T0 + 4, 30))

    def test_local_only_leases_only_this_nodes_instances(self) -> None:
        """With node-local spools each node leases the instances it received; a shared-spool node leases any."""
        n1, n2 = self.cluster("n1", "n2", local_only=True)
        ids = [self.add((n1, n2)[n % 2], f"i{n}", node=f"n{n % 2 + 1}").entry_ids[0] for n in range(6)]
        self.assertEqual([e.entry_id for e in n1.lease("A", 10, T0, 30)], ids[0::2])
        self.assertEqual([e.entry_id for e in n2.lease("A", 1, T0, 30, shard=None)], ids[1:2])
        shared = self.peer(n1, "n3")
        self.assertEqual([e.entry_id for e in shared.lease("A", 10, T0, 30)], ids[3::2])

    def test_stats_counts_stranded_entries_of_an_absent_node(self) -> None:
        """A node-local store counts QUEUED entries of another node with no heartbeat for stranded_after (or none ever)."""
        n1, n2 = self.cluster("n1", "n2", local_only=True)
        self.add(n1, "mine", ("A",), node="n1")
        for n in range(3):
            self.add(n2, f"theirs{n}", ("A", "B"), node="n2")
        self.add(n2, "ghost", ("A",), node="n9")  # a node that never sent a heartbeat
        n2.lease("B", 1, T0, 30)  # in flight: not stranded
        n1.heartbeat(T0, T0)
        n2.heartbeat(T0, T0)
        stats = n1.stats(T0 + 60, stranded_after=120)
        self.assertEqual((stats["A"].stranded, stats["B"].stranded), (1, 0))
        stats = n1.stats(T0 + 121, stranded_after=120)
        self.assertEqual((stats["A"].stranded, stats["B"].stranded), (4, 2))
        # From n2: n1's heartbeat is as old, so n1's entry and n9's are stranded, not n2's own.
        self.assertEqual(n2.stats(T0 + 121, stranded_after=120)["A"].stranded, 2)
        shared = self.peer(n1, "n3")
        self.assertEqual(shared.stats(T0 + 121, stranded_after=120)["A"].stranded, 0)

    def test_pause_is_shared_across_nodes(self) -> None:
        """A destination paused through one node leases nothing on another, and resuming there releases it."""
        n1, n2 = self.cluster("n1", "n2")
        self.add(n1, "i1")
        n1.set_paused("A", True)
        self.assertEqual(n2.lease("A", 5, T0, 30), [])
        self.assertTrue(n2.stats(T0)["A"].paused)
        n2.set_paused("A", False)
        self.assertEqual(len(n1.lease("A", 5, T0, 30)), 1)

    def test_duplicate_window_spans_nodes(self) -> None:
        """An identical re-send received by another node within the window is a duplicate there too."""
        n1, n2 = self.cluster("n1", "n2")
        self.add(n1, "i1", ("A",), sop_instance_uid="1.2.3", window=3600, node="n1")
        result = self.add(n2, "i2", ("A",), now=T0 + 5, sop_instance_uid="1.2.3", window=3600, node="n2")
        self.assertEqual(result.duplicates, ("A",))

    def test_instance_node_round_trips(self) -> None:
        """InstanceRecord.node is kept as given and read back by every node ("" when not given)."""
        n1, n2 = self.cluster("n1", "n2")
        (a,) = self.add(n1, "i1", node="n1").entry_ids
        (b,) = self.add(n2, "i2").entry_ids
        self.assertEqual((n2.get(a).instance.node, n1.get(b).instance.node), ("n1", ""))
        self.assertEqual([r.node for r, _ in n2.find(sop_instance_uid=make_record("i1").sop_instance_uid)], ["n1"])

    def test_entry_ids_are_unique_across_nodes(self) -> None:
        """Entries added through two nodes get distinct, growing ids, and each node sees all of them."""
        n1, n2 = self.cluster("n1", "n2")
        ids = [self.add((n1, n2)[n % 2], f"i{n}").entry_ids[0] for n in range(6)]
        self.assertEqual(ids, sorted(set(ids)))
        self.assertEqual([e.entry_id for e in n2.entries()], ids)

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors])
    @given(st.lists(st.tuples(st.integers(0, 1), st.sampled_from(["lease", "settle", "renew", "retry"]), st.integers(0, 20)), min_size=5, max_size=25))
    def test_interleaved_nodes_never_hold_an_entry_twice(self, steps: list[tuple[int, str, int]]) -> None:
        """Random interleavings of two nodes' leases, settles, renewals and retries: an entry is never handed out while another node's lease of it is live, and a lost lease is never recorded."""
        n1, n2 = self.cluster("n1", "n2")
        nodes = (n1, n2)
        for n in range(8):
            self.add(n1, f"i{n}", study_instance_uid=f"1.2.{n % 3}")
        held: list[dict[int, tuple[int, float]]] = [{}, {}]  # entry id -> (generation, until), as each node believes
        delivered_once: set[int] = set()
        now = T0
        for who, action, step in steps:
            now += step
            node, mine, other = nodes[who], held[who], held[1 - who]
            if action in ("lease", "settle"):
                delivered = sorted(mine)[:2] if action == "settle" else []
                fence = {i: mine[i][0] for i in delivered}
                if action == "settle":
                    result = node.settle("A", [(i, "") for i in delivered], now, 2, 15, None, fence)
                    for i in delivered:
                        if i in result.lost:  # only a lease past its until can be lost
                            self.assertLess(mine[i][1], now)
                            after = node.get(i)
                            self.assertNotEqual((after.state, after.lease_generation), (EntryState.LEASED, fence[i]))
                        else:  # recorded: and never twice
                            self.assertEqual(node.get(i).state, EntryState.DELIVERED)
                            self.assertNotIn(i, delivered_once)
                            delivered_once.add(i)
                        del mine[i]
                    leased = list(result.leased)
                else:
                    leased = node.lease("A", 2, now, 15)
                for e in leased:
                    if e.entry_id in other:
                        self.assertLess(other[e.entry_id][1], now, "taken while another node's lease was live")
                        self.assertGreater(e.lease_generation, other[e.entry_id][0])
                    mine[e.entry_id] = (e.lease_generation, now + 15)
            elif action == "renew":
                lost = node.renew({i: g for i, (g, _) in mine.items()}, now, 15)
                for i in list(mine):
                    if i in lost:
                        del mine[i]
                    else:
                        mine[i] = (mine[i][0], now + 15)
            elif mine:
                entry_id = min(mine)
                generation, until = mine.pop(entry_id)
                try:
                    node.retry(entry_id, now, "A700", now, True, generation)
                except LeaseLost:
                    self.assertLess(until, now)
                    self.assertNotEqual(
                        (node.get(entry_id).state, node.get(entry_id).lease_generation), (EntryState.LEASED, generation)
                    )

    # -- group commit -------------------------------------------------------

    def test_add_instances_records_a_batch_in_order(self) -> None:
        """add_instances records every instance of the batch, and a later identical one in it is a duplicate."""
        s = self.store()
        first = make_record("g1", received_at=T0, sha256="aa", sop_instance_uid="1.2.3.4")
        second = make_record("g2", received_at=T0, sha256="aa", sop_instance_uid="1.2.3.4")
        results = s.add_instances([(first, [NewEntry("r", "A")]), (second, [NewEntry("r", "A")])], T0, 3600.0)
        self.assertEqual(len(results), 2)
        self.assertEqual(results[0].duplicates, ())
        self.assertEqual(results[1].duplicates, ("A",))
        self.assertEqual(s.instance_ids(), {"g1", "g2"})

    def test_add_instances_is_all_or_nothing(self) -> None:
        """A batch with an already recorded instance raises ValueError and records none of the batch."""
        s = self.store()
        self.add(s, "old")
        batch = [(make_record("new"), [NewEntry("r", "A")]), (make_record("old"), [NewEntry("r", "A")])]
        self.assertRaises(ValueError, s.add_instances, batch, T0, 0.0)
        self.assertEqual(s.instance_ids(), {"old"})
        self.assertEqual(len(s.entries(destination="A")), 1)

    # -- journaled morph plans (issue 11) -------------------------------------

    def test_entries_carry_the_plan_they_were_journaled_with(self) -> None:
        """Each entry returns its plan's hash; plan() gives the definition; an entry given none has None."""
        s = self.store()
        ids = s.add_instance(
            make_record("i1"), [NewEntry("r", "A", plan=PLAN_A), NewEntry("q", "B", plan=PLAN_B), NewEntry("r", "C")],
            T0, 0.0,
        ).entry_ids
        self.assertEqual([s.get(i).plan_hash for i in ids], [PLAN_A.plan_hash, PLAN_B.plan_hash, None])
        self.assertEqual(s.plan(PLAN_A.plan_hash), PLAN_A.definition)
        self.assertEqual(s.plan(PLAN_B.plan_hash), PLAN_B.definition)
        (leased,) = s.lease("A", 10, T0, 30.0)
        self.assertEqual(leased.plan_hash, PLAN_A.plan_hash)
        self.assertEqual([e.plan_hash for e in s.entries(destination="A")], [PLAN_A.plan_hash])

    def test_unknown_plan_raises(self) -> None:
        """plan() of a hash nothing was journaled with raises KeyError."""
        self.assertRaises(KeyError, self.store().plan, "c" * 64)

    def test_a_plan_shared_by_many_entries_stays_readable_after_some_are_forgotten(self) -> None:
        """Two instances with one plan: forgetting one keeps the plan for the other."""
        s = self.store()
        s.add_instance(make_record("i1"), [NewEntry("r", "A", plan=PLAN_A)], T0, 0.0)
        (kept,) = s.add_instance(make_record("i2"), [NewEntry("r", "A", plan=PLAN_A)], T0, 0.0).entry_ids
        s.forget_instance("i1")
        self.assertEqual(s.plan(s.get(kept).plan_hash or ""), PLAN_A.definition)

    def test_requeue_dead_keeps_the_plan_also_when_retargeted(self) -> None:
        """An operator retry, to the same or another destination, sends the entry's own copy: its plan is kept."""
        s = self.store()
        (first, second) = s.add_instance(
            make_record("i1"), [NewEntry("r", "A", plan=PLAN_A), NewEntry("r", "B", plan=PLAN_A)], T0, 0.0
        ).entry_ids
        s.dead_letter(first, "C000", T0)
        s.dead_letter(second, "C000", T0)
        again = s.requeue_dead(first, T0 + 1)
        moved = s.requeue_dead(second, T0 + 1, "Z")
        self.assertEqual((s.get(again).plan_hash, s.get(moved).plan_hash), (PLAN_A.plan_hash, PLAN_A.plan_hash))
        self.assertEqual(s.get(moved).destination, "Z")

    def test_requeue_instance_records_the_given_plan(self) -> None:
        """A replay's entry has the plan it was given (None when none is given)."""
        s = self.store()
        self.add(s, "i1")
        with_plan = s.requeue_instance("i1", "Z", "replay", T0 + 1, PLAN_B)
        without = s.requeue_instance("i1", "Z", "replay", T0 + 2)
        self.assertEqual((s.get(with_plan).plan_hash, s.get(without).plan_hash), (PLAN_B.plan_hash, None))
        self.assertEqual(s.plan(PLAN_B.plan_hash), PLAN_B.definition)

    def test_adopt_plans_resolves_entries_without_a_plan_by_route(self) -> None:
        """Entries without a plan get their route's (if given); others, delivered ones and planned ones are untouched."""
        s = self.store()
        ids = s.add_instance(
            make_record("i1"),
            [NewEntry("kept", "A"), NewEntry("gone", "A"), NewEntry("kept", "B", plan=PLAN_B), NewEntry("kept", "C")],
            T0, 0.0,
        ).entry_ids
        (delivered,) = s.lease("C", 1, T0, 30.0)
        s.complete([delivered.entry_id], T0)
        (dead,) = s.add_instance(make_record("i2"), [NewEntry("kept", "D")], T0, 0.0).entry_ids
        s.dead_letter(dead, "C000", T0)
        self.assertEqual(s.adopt_plans({"kept": PLAN_A}), 2)
        self.assertEqual(
            [s.get(i).plan_hash for i in (*ids, dead)],
            [PLAN_A.plan_hash, None, PLAN_B.plan_hash, None, PLAN_A.plan_hash],
        )
        self.assertEqual(s.plan(PLAN_A.plan_hash), PLAN_A.definition)
        self.assertEqual(s.adopt_plans({"kept": PLAN_B}), 0)


class TimedSingletonTests:
    """``hold_singleton`` as a lease of ``seconds`` (memory, SQLite; PostgreSQL holds an advisory lock instead)."""

    assertTrue: Any
    assertFalse: Any
    cluster: Any

    def test_singleton_moves_after_expiry(self) -> None:
        """When the holder stops renewing, another node takes the job after ``seconds``, and the old holder is then refused."""
        n1, n2 = self.cluster("n1", "n2")
        self.assertTrue(n1.hold_singleton("housekeeping", T0, 30))
        self.assertFalse(n2.hold_singleton("housekeeping", T0 + 30, 30))
        self.assertTrue(n2.hold_singleton("housekeeping", T0 + 31, 30))
        self.assertFalse(n1.hold_singleton("housekeeping", T0 + 32, 30))
        self.assertTrue(n2.hold_singleton("housekeeping", T0 + 60, 30))


class MemoryQueueStoreTests(QueueStoreTests, TimedSingletonTests, SynchronousTestCase):
    """The mixin against the in-memory fake."""

    def make_store(self) -> MemoryQueueStore:
        """A fresh in-memory store."""
        return MemoryQueueStore()

    def make_peer(self, store: MemoryQueueStore, node: str, local_only: bool = False) -> MemoryQueueStore:
        """Another node on the same tables (:meth:`MemoryQueueStore.peer`)."""
        return store.peer(node, local_only)


class SqliteQueueStoreTests(QueueStoreTests, TimedSingletonTests, SynchronousTestCase):
    """The mixin against the SQLite store in a temporary directory."""

    def make_store(self) -> SqliteQueueStore:
        """A fresh SQLite store in a new temporary directory."""
        directory = self.mktemp()
        os.makedirs(directory)
        return SqliteQueueStore(os.path.join(directory, "queue.sqlite"))

    def make_peer(self, store: SqliteQueueStore, node: str, local_only: bool = False) -> SqliteQueueStore:
        """A second store object (its own connection) on the same file, for ``node``."""
        return SqliteQueueStore(store.path, node, local_only)

    def writes(self, store: SqliteQueueStore) -> list[str]:
        """The write transactions (``BEGIN IMMEDIATE``) the store's connection makes from now on."""
        seen: list[str] = []
        store._conn.set_trace_callback(lambda sql: seen.append(sql) if sql.startswith("BEGIN IMMEDIATE") else None)
        return seen

    def test_an_idle_settle_takes_no_write_lock(self) -> None:
        """settle with nothing to record and nothing due makes no write transaction (the intake never waits for it)."""
        s = self.store()
        (entry_id,) = self.add(s, "i1").entry_ids
        s.lease("A", 1, T0, 30)
        s.retry(entry_id, T0 + 60, "A700", T0)
        writes = self.writes(s)
        self.assertEqual(s.settle("A", [], T0 + 1, 10, 30), Settled((), T0 + 60))
        self.assertEqual(writes, [])

    def test_settle_is_one_write_transaction(self) -> None:
        """Recording ten deliveries and leasing ten more is a single BEGIN IMMEDIATE."""
        s = self.store()
        ids = [self.add(s, f"i{n}").entry_ids[0] for n in range(20)]
        s.lease("A", 10, T0, 30)
        writes = self.writes(s)
        settled = s.settle("A", [(i, "") for i in ids[:10]], T0, 10, 30)
        self.assertEqual([e.entry_id for e in settled.leased], ids[10:])
        self.assertEqual(len(writes), 1)


def interface_methods() -> list[str]:
    """The names of IQueueStore's methods (its attributes, such as ``node``, are not methods)."""
    return sorted(name for name in IQueueStore.names() if isinstance(IQueueStore[name], Method))


class SignatureParityTests(SynchronousTestCase):
    """Every store exposes every IQueueStore method with identical parameters.

    ``stores`` lists the classes compared (the first is the reference).
    """

    stores: tuple[type, ...] = (MemoryQueueStore, SqliteQueueStore)

    def test_every_interface_method_has_identical_signature(self) -> None:
        """Each IQueueStore method has the same inspect.signature in every store class (assertArgSpecMatches)."""
        names = interface_methods()
        self.assertIn("lease", names)
        self.assertIn("claim_slot", names)
        reference = self.stores[0]
        for name in names:
            for other in self.stores[1:]:
                self.assertEqual(
                    inspect.signature(getattr(reference, name)), inspect.signature(getattr(other, name)),
                    f"{other.__name__}.{name}",
                )

    def test_signatures_match_the_interface(self) -> None:
        """Each method's parameter names and defaults are the interface's (after self), in every store class."""
        for cls in self.stores:
            for name in interface_methods():
                spec = IQueueStore[name].getSignatureInfo()
                parameters = inspect.signature(getattr(cls, name)).parameters
                self.assertEqual(list(parameters)[1:], list(spec["positional"]), f"{cls.__name__}.{name}")
                self.assertEqual(
                    dict(spec["optional"]),
                    {p.name: p.default for p in parameters.values() if p.default is not inspect.Parameter.empty},
                    f"{cls.__name__}.{name}",
                )

    def test_every_store_names_its_node(self) -> None:
        """The interface's ``node`` attribute is given by each store's constructor (default "node")."""
        self.assertIn("node", IQueueStore.names())
        for cls in self.stores:
            self.assertEqual(inspect.signature(cls.__init__).parameters["node"].default, "node", cls.__name__)


# One random operation: (name, arguments) applied identically to both stores.
_DESTINATIONS = st.sampled_from(["A", "B"])
_TIMES = st.integers(min_value=0, max_value=50).map(lambda n: T0 + n)
_LEASE_TIMES = st.one_of(_TIMES, st.just(T0 + 100))  # often: everything is due
_IDS = st.integers(min_value=1, max_value=12)
_ADD = st.tuples(
        st.just("add"),
        st.integers(min_value=0, max_value=3),  # which SOP Instance UID
        st.booleans(),  # other bytes
        st.lists(_DESTINATIONS, max_size=2),
        _TIMES,
        st.sampled_from([0.0, 10.0]),
)
_LEASE = st.tuples(st.just("lease"), _DESTINATIONS, st.integers(0, 5), _LEASE_TIMES, st.sampled_from([None, (0, 2), (1, 2)]))
# Adds and leases weigh more, so sequences reach interesting states.
_OPERATIONS = st.one_of(
    _ADD,
    _ADD,
    _ADD,
    _LEASE,
    _LEASE,
    st.tuples(st.just("complete"), st.lists(_IDS, max_size=3), _TIMES),
    st.tuples(st.just("retry"), _IDS, _TIMES, st.booleans()),
    st.tuples(st.just("release"), st.lists(_IDS, max_size=3)),
    # The forwarder's usual calls: complete or release everything it holds.
    st.tuples(st.just("complete_leased"), _TIMES, st.sampled_from(["", "B000"])),
    st.tuples(st.just("release_leased")),
    # The forwarder's turn: record what it holds, lease more.
    st.tuples(st.just("settle"), _DESTINATIONS, st.integers(0, 5), _LEASE_TIMES, st.sampled_from([None, (0, 2), (1, 2)])),
    st.tuples(st.just("dead_letter"), _IDS, _TIMES),
    st.tuples(st.just("requeue_dead"), _IDS, _TIMES, st.sampled_from([None, "B"])),
    st.tuples(st.just("purge"), _IDS),
    st.tuples(st.just("pause"), _DESTINATIONS, st.booleans()),
    st.tuples(st.just("recover"), _TIMES),
    st.tuples(st.just("forget"), st.integers(0, 15)),
)


def _apply(store: Any, op: tuple[Any, ...], counter: list[int]) -> Any:
    """Apply one generated operation; return its result or the exception type it raised."""
    name, *args = op
    try:
        if name == "add":
            uid, other_bytes, destinations, now, window = args
            counter[0] += 1
            record = make_record(
                f"i{counter[0]}", sop_instance_uid=f"1.2.{uid}", sha256=("cd" if other_bytes else "ab") * 32,
                received_at=now, study_instance_uid=f"9.{uid}",
            )
            plan = (None, PLAN_A, PLAN_B)[uid % 3]
            return store.add_instance(record, [NewEntry("r", d, plan=plan) for d in destinations], now, window)
        if name == "lease":
            destination, limit, now, shard = args
            return store.lease(destination, limit, now, 30.0, shard)
        if name == "complete":
            return store.complete(args[0], args[1], "")
        if name == "retry":
            entry_id, now, counted = args
            return store.retry(entry_id, now + 5, "A700", now, counted)
        if name == "release":
            return store.release(args[0])
        if name == "complete_leased":
            held = [e.entry_id for e in store.entries(state=EntryState.LEASED)]
            return store.complete(held, args[0], args[1])
        if name == "settle":
            destination, limit, now, shard = args
            held = [(e.entry_id, "B000" if e.entry_id % 2 else "") for e in store.entries(destination, EntryState.LEASED)]
            return store.settle(destination, held, now, limit, 30.0, shard)
        if name == "release_leased":
            return store.release([e.entry_id for e in store.entries(state=EntryState.LEASED)])
        if name == "dead_letter":
            return store.dead_letter(args[0], "C000", args[1])
        if name == "requeue_dead":
            return store.requeue_dead(*args)
        if name == "purge":
            return store.purge(args[0])
        if name == "pause":
            return store.set_paused(*args)
        if name == "recover":
            return store.recover(args[0])
        if name == "forget":
            return store.forget_instance(f"i{args[0]}")
    except (KeyError, ValueError) as e:
        return type(e)
    raise AssertionError(name)


def _observe(store: Any) -> Any:
    """Everything a caller can see of a store's state."""
    return (
        store.entries(limit=10_000),
        dict(store.stats(T0)),
        sorted(store.instance_ids()),
        store.finished_instances(T0 + 100),
        [store.next_due(d) for d in ("A", "B")],
        store.find(study_instance_uid="9.1"),
    )


# Issue 14: operations of two nodes on one queue ("n1" shares the spool, "n2"
# is node-local), each applied through the node drawn with it.
_FENCED_SETTLE = st.tuples(
    st.just("fenced_settle"), _DESTINATIONS, st.integers(0, 5), _LEASE_TIMES, st.sampled_from([None, (0, 2), (1, 2)])
)
_NODE_OPERATIONS = st.sampled_from(
    [  # a strategy per draw, repeated for weight (adds, leases and fenced settles make the interesting states)
        _OPERATIONS, _OPERATIONS, _OPERATIONS,
        _ADD, _ADD, _ADD, _ADD,
        _LEASE, _LEASE, _LEASE,
        _FENCED_SETTLE, _FENCED_SETTLE, _FENCED_SETTLE,
        st.tuples(st.just("fenced_retry"), _IDS, _TIMES, st.booleans()),
        st.tuples(st.just("fenced_dead_letter"), _IDS, _TIMES, st.booleans()),
        st.tuples(st.just("fenced_release"), _DESTINATIONS),
        st.tuples(st.just("renew"), _LEASE_TIMES),
        st.tuples(st.just("renew"), _TIMES),
        st.tuples(st.just("claim_slot"), _DESTINATIONS, st.integers(0, 1), _TIMES),
        st.tuples(st.just("release_slot"), _DESTINATIONS, st.integers(0, 1)),
        st.tuples(st.just("heartbeat"), _TIMES),
        st.tuples(st.just("singleton"), _TIMES),
        st.tuples(st.just("circuit"), _DESTINATIONS, st.booleans(), _TIMES),
    ]
).flatmap(lambda strategy: strategy)


def _stale(entry_id: int, generation: int) -> int:
    """The generation a node gives for ``entry_id``: every third one a generation it no longer holds."""
    return generation - 1 if entry_id % 3 == 0 else generation


def _apply_node(store: Any, op: tuple[Any, ...], counter: list[int]) -> Any:
    """Apply one operation through one node's store object (issue 14 operations, else :func:`_apply`)."""
    name, *args = op
    try:
        if name == "add":
            uid, other_bytes, destinations, now, window = args
            counter[0] += 1
            record = make_record(
                f"i{counter[0]}", sop_instance_uid=f"1.2.{uid}", sha256=("cd" if other_bytes else "ab") * 32,
                received_at=now, study_instance_uid=f"9.{uid}", node=("n1", "n2", "n9")[uid % 3],
            )
            return store.add_instance(record, [NewEntry("r", d) for d in destinations], now, window)
        mine = {e.entry_id: e.lease_generation for e in store.entries(state=EntryState.LEASED) if e.lease_owner == store.node}
        if name == "fenced_settle":
            destination, limit, now, shard = args
            held = {i: g for i, g in mine.items() if store.get(i).destination == destination}
            fence = {i: _stale(i, g) for i, g in held.items()}
            return store.settle(destination, [(i, "") for i in sorted(held)], now, limit, 30.0, shard, fence)
        if name in ("fenced_retry", "fenced_dead_letter"):
            entry_id, now, stale = args
            generation = store.get(entry_id).lease_generation - (1 if stale else 0)
            if name == "fenced_retry":
                return store.retry(entry_id, now + 5, "A700", now, True, generation)
            return store.dead_letter(entry_id, "C000", now, generation)
        if name == "fenced_release":
            held = [i for i in mine if store.get(i).destination == args[0]]
            return store.release(held, {i: _stale(i, mine[i]) for i in held})
        if name == "renew":
            return sorted(store.renew({i: _stale(i, g) for i, g in mine.items()}, args[0], 30.0))
        if name == "claim_slot":
            destination, slot, now = args
            return store.claim_slot(destination, slot, 2, now, 20.0)
        if name == "release_slot":
            return store.release_slot(*args)
        if name == "heartbeat":
            return store.heartbeat(args[0], T0, f"detail {args[0]}")
        if name == "singleton":
            return store.hold_singleton("housekeeping", args[0], 20.0)
        if name == "circuit":
            destination, is_open, now = args
            return store.set_circuit(destination, is_open, "down", now)
    except (KeyError, ValueError) as e:
        return type(e)
    return _apply(store, op, counter)


def _observe_nodes(nodes: tuple[Any, Any]) -> Any:
    """What a caller can see of a two-node store, through both nodes."""
    n1, n2 = nodes
    return (
        _observe(n1),
        dict(n2.stats(T0 + 100, stranded_after=30.0)),
        n1.nodes(T0 + 25),
        [n2.circuit(d) for d in ("A", "B")],
    )


class VerifiedFakeTests(SynchronousTestCase):
    """Random operation sequences give the same results and state in both stores."""

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(_OPERATIONS, min_size=10, max_size=40))
    def test_random_operations_agree(self, operations: list[tuple[Any, ...]]) -> None:
        """After each operation both stores returned the same thing and look the same."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        memory, real = MemoryQueueStore(), SqliteQueueStore(os.path.join(directory, "q.sqlite"))
        try:
            counters = ([0], [0])
            for op in operations:
                self.assertEqual(_apply(memory, op, counters[0]), _apply(real, op, counters[1]), op)
                self.assertEqual(_observe(memory), _observe(real), op)
        finally:
            real.close()

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.tuples(st.integers(0, 1), _NODE_OPERATIONS), min_size=10, max_size=40))
    def test_random_operations_of_two_nodes_agree(self, operations: list[tuple[int, tuple[Any, ...]]]) -> None:
        """Two nodes (one node-local) on one queue: after each operation, through either node, both stores agree (issue 14)."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "q.sqlite")
        memory = MemoryQueueStore("n1")
        fakes = (memory, memory.peer("n2", local_only=True))
        reals = (SqliteQueueStore(path, "n1"), SqliteQueueStore(path, "n2", local_only=True))
        try:
            counters = ([0], [0])
            for who, op in operations:
                self.assertEqual(
                    _apply_node(fakes[who], op, counters[0]), _apply_node(reals[who], op, counters[1]), (who, op)
                )
                self.assertEqual(_observe_nodes(fakes), _observe_nodes(reals), (who, op))
        finally:
            for real in reals:
                real.close()
