"""IRetrieveJournal (issue 16): one mixin run against the in-memory fake, SQLite and (in tests/adapters) PostgreSQL.

``RetrieveJournalTests`` pins the behaviour the interface documents and the
conventions listed in :mod:`gateway.queue.memory_retrieves`: message-ID
allocation unique among OPEN retrieves of every node (two store objects on
one set of tables), exhaustion, sub-operation matching, progress read from
the linked queue entries, and the remapped-UID table.
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

from gateway.queue.commitments import Reference
from gateway.queue.interfaces import EntryState, NewEntry
from gateway.queue.memory import MemoryQueueStore
from gateway.queue.memory_retrieves import MAX_MESSAGE_ID
from gateway.queue.retrieves import (
    IRetrieveJournal,
    ItemState,
    NewRetrieve,
    RetrieveIdsExhausted,
    RetrieveProgress,
    RetrieveState,
)
from gateway.queue.sqlite import SqliteQueueStore
from tests.unit.queue.test_store import T0, make_record

CT = "1.2.840.10008.5.1.4.1.1.2"
UID = "1.2.826.0.1.3680043.8.498.88."


def refs(*numbers: int) -> tuple[Reference, ...]:
    """References to CT instances ``UID + n``."""
    return tuple(Reference(CT, f"{UID}{n}") for n in numbers)


def new_retrieve(expected: tuple[Reference, ...] = refs(1, 2, 3), **overrides: Any) -> NewRetrieve:
    """A C-MOVE NewRetrieve with plausible defaults; keyword arguments override fields."""
    values: dict[str, Any] = dict(
        kind="move",
        requester_ae_title="VIEWER",
        listener="main",
        requester_message_id=7,
        destination="viewer",
        mode="relay",
        level="STUDY",
        sources=("archive1", "archive2"),
        expected=expected,
        deadline=T0 + 600,
    )
    values.update(overrides)
    return NewRetrieve(**values)


class RetrieveJournalTests:
    """Behaviour every IRetrieveJournal must have; mixed into a TestCase with ``make_store`` and ``make_peer``."""

    assertEqual: Any
    assertTrue: Any
    assertIsNone: Any
    assertRaises: Any
    assertNotEqual: Any
    addCleanup: Any

    def make_store(self) -> Any:
        """Return a fresh, empty store for node ``"node"`` (implemented by each concrete class)."""
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

    def entry(self, store: Any, n: int, destination: str = "move.viewer") -> int:
        """Journal instance ``UID + n`` with one entry to ``destination``; returns the entry id."""
        record = make_record(f"i{n}", sop_instance_uid=f"{UID}{n}", sop_class_uid=CT, received_at=T0)
        result = store.add_instance(record, [NewEntry("retrieve", destination)], T0, 0.0)
        (entry_id,) = result.entry_ids
        return int(entry_id)

    def lease_one(self, store: Any, entry_id: int, destination: str = "move.viewer") -> int:
        """Lease ``entry_id`` (the only due entry of ``destination``); returns its generation."""
        (leased,) = store.lease(destination, 1, T0, 30)
        self.assertEqual(leased.entry_id, entry_id)
        return int(leased.lease_generation)

    # -- the interface ---------------------------------------------------------------

    def test_store_provides_the_interface(self) -> None:
        """The store is an IRetrieveJournal, every method present with its signature."""
        self.assertTrue(verifyObject(IRetrieveJournal, self.store()))

    # -- open_retrieve ---------------------------------------------------------------

    def test_open_retrieve_is_open_with_a_message_id_and_all_items_remaining(self) -> None:
        """A new retrieve is OPEN, taken by this node, with message ID 1, and every expected instance remaining."""
        s = self.store()
        new = new_retrieve()
        r = s.open_retrieve(new, T0)
        self.assertEqual((r.request, r.message_id, r.node, r.state), (new, 1, "node", RetrieveState.OPEN))
        self.assertEqual((r.created_at, r.finished_at, r.error), (T0, None, ""))
        self.assertEqual(s.get_retrieve(r.retrieve_id), r)
        self.assertEqual(s.progress(r.retrieve_id), RetrieveProgress(remaining=3))

    def test_repeated_expected_uids_are_kept_once_in_order(self) -> None:
        """Expected instances come back without repeats, first of each UID, in request order."""
        s = self.store()
        r = s.open_retrieve(new_retrieve(expected=refs(2, 1, 2, 3, 1)), T0)
        self.assertEqual(r.request.expected, refs(2, 1, 3))
        self.assertEqual(s.get_retrieve(r.retrieve_id).request.expected, refs(2, 1, 3))
        self.assertEqual(s.progress(r.retrieve_id).remaining, 3)

    def test_request_fields_round_trip(self) -> None:
        """Every NewRetrieve field (a C-GET with an empty destination, one source, an empty SOP class) comes back as given."""
        s = self.store()
        new = new_retrieve(
            expected=(Reference("", f"{UID}9"),), kind="get", destination="", mode="pass_through",
            level="IMAGE", sources=("only",), requester_message_id=65535, deadline=T0 + 1.5,
        )
        r = s.open_retrieve(new, T0 + 0.25)
        self.assertEqual(s.get_retrieve(r.retrieve_id).request, new)
        self.assertEqual(s.get_retrieve(r.retrieve_id).created_at, T0 + 0.25)

    def test_message_ids_are_distinct_among_open_retrieves_of_two_nodes(self) -> None:
        """Retrieves opened alternately by two nodes on one journal get distinct message IDs, each recorded with its node."""
        a = self.store()
        b = self.peer(a, "other")
        opened = [(a if n % 2 else b).open_retrieve(new_retrieve(), T0 + n) for n in range(20)]
        self.assertEqual(len({r.message_id for r in opened}), 20)
        self.assertEqual({r.node for r in opened}, {"node", "other"})
        self.assertEqual(len({r.retrieve_id for r in opened}), 20)

    def test_finishing_frees_the_message_id_and_allocation_moves_on(self) -> None:
        """A finished retrieve's ID is free again, but the next allocation continues after the last one (round robin)."""
        s = self.store()
        first = s.open_retrieve(new_retrieve(), T0)
        s.finish_retrieve(first.retrieve_id, RetrieveState.DONE, "", T0 + 1)
        second = s.open_retrieve(new_retrieve(), T0 + 2)
        self.assertEqual((first.message_id, second.message_id), (1, 2))
        self.assertIsNone(s.match_sub_operation(1, f"{UID}1"))

    def test_exhaustion_raises_and_a_finish_makes_room(self) -> None:
        """With every ID held, open_retrieve raises RetrieveIdsExhausted (nothing journaled); after one finishes, that ID is reused."""
        s = self.store()
        other = self.peer(s, "other")
        s.max_message_id = other.max_message_id = 3
        held = [s.open_retrieve(new_retrieve(), T0), other.open_retrieve(new_retrieve(), T0), s.open_retrieve(new_retrieve(), T0)]
        self.assertEqual(sorted(r.message_id for r in held), [1, 2, 3])
        with self.assertRaises(RetrieveIdsExhausted):
            other.open_retrieve(new_retrieve(), T0)
        self.assertEqual(len(s.retrieves()), 3)
        other.finish_retrieve(held[1].retrieve_id, RetrieveState.CANCELLED, "", T0)
        again = other.open_retrieve(new_retrieve(), T0)
        self.assertEqual(again.message_id, held[1].message_id)

    def test_message_ids_wrap_after_the_largest(self) -> None:
        """After the largest ID the allocation wraps to the smallest free one."""
        s = self.store()
        s.max_message_id = 3
        ids = []
        for _ in range(5):
            r = s.open_retrieve(new_retrieve(), T0)
            ids.append(r.message_id)
            s.finish_retrieve(r.retrieve_id, RetrieveState.DONE, "", T0)
        self.assertEqual(ids, [1, 2, 3, 1, 2])

    def test_the_real_limit_is_65535(self) -> None:
        """Message IDs are 16-bit and 0 is not used: the limit is 65535."""
        self.assertEqual(MAX_MESSAGE_ID, 65535)
        self.assertEqual(self.store().max_message_id, 65535)

    # -- match_sub_operation --------------------------------------------------------

    def test_match_needs_the_open_retrieve_and_an_expected_uid(self) -> None:
        """A sub-operation matches by message ID and expected UID, on any node; not an unexpected UID, another ID or a finished retrieve."""
        s = self.store()
        other = self.peer(s, "other")
        r = s.open_retrieve(new_retrieve(), T0)
        self.assertEqual(other.match_sub_operation(r.message_id, f"{UID}2"), r)
        self.assertIsNone(s.match_sub_operation(r.message_id, f"{UID}99"))
        self.assertIsNone(s.match_sub_operation(r.message_id + 1, f"{UID}2"))
        s.link_item(r.retrieve_id, f"{UID}2", None, T0)
        self.assertEqual(s.match_sub_operation(r.message_id, f"{UID}2"), r)  # a resend still matches
        s.finish_retrieve(r.retrieve_id, RetrieveState.FAILED, "deadline", T0 + 5)
        self.assertIsNone(other.match_sub_operation(r.message_id, f"{UID}1"))

    def test_match_finds_the_retrieve_holding_the_id_now(self) -> None:
        """After an ID is reused, a sub-operation matches the new retrieve, not the finished one."""
        s = self.store()
        s.max_message_id = 1
        old = s.open_retrieve(new_retrieve(expected=refs(1)), T0)
        s.finish_retrieve(old.retrieve_id, RetrieveState.DONE, "", T0)
        new = s.open_retrieve(new_retrieve(expected=refs(1, 2)), T0)
        self.assertEqual(new.message_id, old.message_id)
        match = s.match_sub_operation(new.message_id, f"{UID}1")
        self.assertEqual(match.retrieve_id if match else None, new.retrieve_id)

    def test_match_returns_each_retrieves_own_expected_instances_among_many(self) -> None:
        """With more open retrieves than a store keeps cached, every match carries its own retrieve's expected list, on either node."""
        s = self.store()
        other = self.peer(s, "other")
        opened = [s.open_retrieve(new_retrieve(expected=refs(n, n + 1000)), T0) for n in range(70)]
        for _ in range(2):
            for n, r in enumerate(opened):
                for store in (s, other):
                    match = store.match_sub_operation(r.message_id, f"{UID}{n + 1000}")
                    self.assertEqual(match, r)
                    self.assertEqual(match.request.expected if match else None, refs(n, n + 1000))

    # -- items and progress ------------------------------------------------------------

    def test_progress_reads_the_linked_entries(self) -> None:
        """Linked items count remaining while queued, completed when DELIVERED, warning when delivered with a warning, failed when DEAD."""
        s = self.store()
        r = s.open_retrieve(new_retrieve(expected=refs(1, 2, 3, 4)), T0)
        ids = {n: self.entry(s, n, f"move.d{n}") for n in (1, 2, 3)}
        for n, entry_id in ids.items():
            s.link_item(r.retrieve_id, f"{UID}{n}", entry_id, T0)
        self.assertEqual(s.progress(r.retrieve_id), RetrieveProgress(remaining=4))
        s.complete([ids[1]], T0, generations={ids[1]: self.lease_one(s, ids[1], "move.d1")})
        s.complete([ids[2]], T0, warning="0xB000 coercion", generations={ids[2]: self.lease_one(s, ids[2], "move.d2")})
        s.dead_letter(ids[3], "refused", T0, self.lease_one(s, ids[3], "move.d3"))
        self.assertEqual(
            s.progress(r.retrieve_id),
            RetrieveProgress(remaining=1, completed=1, warning=1, failed=1, failed_uids=(f"{UID}3",)),
        )

    def test_item_outcomes_without_entries(self) -> None:
        """item_outcome records C-GET results and source failures; failed UIDs come in request order."""
        s = self.store()
        r = s.open_retrieve(new_retrieve(expected=refs(5, 4, 3, 2, 1)), T0)
        s.item_outcome(r.retrieve_id, f"{UID}1", ItemState.FAILED, "not accepted", T0)
        s.item_outcome(r.retrieve_id, f"{UID}4", ItemState.COMPLETED, "", T0)
        s.item_outcome(r.retrieve_id, f"{UID}5", ItemState.FAILED, "source", T0)
        s.item_outcome(r.retrieve_id, f"{UID}3", ItemState.WARNING, "0xB007", T0)
        s.link_item(r.retrieve_id, f"{UID}2", None, T0)  # received for a C-GET, not sent back yet
        self.assertEqual(
            s.progress(r.retrieve_id),
            RetrieveProgress(remaining=1, completed=1, warning=1, failed=2, failed_uids=(f"{UID}5", f"{UID}1")),
        )

    def test_item_outcome_expected_only_leaves_an_instance_in_custody(self) -> None:
        """A source's failure list (expected_only) ends a never-received item, never one RECEIVED and queued."""
        s = self.store()
        r = s.open_retrieve(new_retrieve(expected=refs(2, 1)), T0)
        s.link_item(r.retrieve_id, f"{UID}2", self.entry(s, 2), T0)  # in custody, queued to the move destination
        s.item_outcome(r.retrieve_id, f"{UID}2", ItemState.FAILED, "source 0xB000", T0, expected_only=True)
        s.item_outcome(r.retrieve_id, f"{UID}1", ItemState.FAILED, "source 0xB000", T0, expected_only=True)
        self.assertEqual(
            s.progress(r.retrieve_id),
            RetrieveProgress(remaining=1, completed=0, warning=0, failed=1, failed_uids=(f"{UID}1",)),
        )
        with self.assertRaises(KeyError):
            s.item_outcome(r.retrieve_id, f"{UID}9", ItemState.FAILED, "", T0, expected_only=True)

    def test_fail_expected_ends_only_the_never_received(self) -> None:
        """fail_expected ends the EXPECTED items FAILED (returned in request order); RECEIVED and ended items keep their state."""
        s = self.store()
        r = s.open_retrieve(new_retrieve(expected=refs(4, 3, 2, 1)), T0)
        s.link_item(r.retrieve_id, f"{UID}3", self.entry(s, 3), T0)  # in custody, queued
        s.item_outcome(r.retrieve_id, f"{UID}2", ItemState.COMPLETED, "", T0)
        self.assertEqual(s.fail_expected(r.retrieve_id, "never sent", T0), (f"{UID}4", f"{UID}1"))
        self.assertEqual(
            s.progress(r.retrieve_id),
            RetrieveProgress(remaining=1, completed=1, failed=2, failed_uids=(f"{UID}4", f"{UID}1")),
        )
        self.assertEqual(s.fail_expected(r.retrieve_id, "again", T0), ())
        self.assertRaises(KeyError, s.fail_expected, r.retrieve_id + 99, "x", T0)

    def test_an_entry_gone_from_the_journal_counts_failed(self) -> None:
        """A linked entry no longer in the journal (its instance forgotten) cannot be confirmed delivered: it counts failed."""
        s = self.store()
        r = s.open_retrieve(new_retrieve(expected=refs(1)), T0)
        entry_id = self.entry(s, 1)
        s.link_item(r.retrieve_id, f"{UID}1", entry_id, T0)
        s.forget_instance("i1")
        self.assertEqual(s.progress(r.retrieve_id), RetrieveProgress(failed=1, failed_uids=(f"{UID}1",)))

    def test_unknown_retrieve_or_uid_raises_key_error(self) -> None:
        """link_item, item_outcome, progress, finish_retrieve and get_retrieve raise KeyError for what is not on record."""
        s = self.store()
        r = s.open_retrieve(new_retrieve(), T0)
        for call in (
            lambda: s.link_item(r.retrieve_id + 1, f"{UID}1", None, T0),
            lambda: s.link_item(r.retrieve_id, f"{UID}99", None, T0),
            lambda: s.item_outcome(r.retrieve_id, f"{UID}99", ItemState.FAILED, "", T0),
            lambda: s.progress(r.retrieve_id + 1),
            lambda: s.finish_retrieve(r.retrieve_id + 1, RetrieveState.DONE, "", T0),
            lambda: s.get_retrieve(r.retrieve_id + 1),
        ):
            with self.assertRaises(KeyError):
                call()
        self.assertEqual(s.progress(r.retrieve_id), RetrieveProgress(remaining=3))

    # -- finish and listing ----------------------------------------------------------------

    def test_finish_records_state_error_and_time_and_the_first_end_wins(self) -> None:
        """finish_retrieve records the end; a second finish changes nothing; OPEN is not an end."""
        s = self.store()
        r = s.open_retrieve(new_retrieve(), T0)
        with self.assertRaises(ValueError):
            s.finish_retrieve(r.retrieve_id, RetrieveState.OPEN, "", T0)
        s.finish_retrieve(r.retrieve_id, RetrieveState.CANCELLED, "C-CANCEL", T0 + 3)
        s.finish_retrieve(r.retrieve_id, RetrieveState.FAILED, "deadline", T0 + 9)
        done = s.get_retrieve(r.retrieve_id)
        self.assertEqual((done.state, done.error, done.finished_at), (RetrieveState.CANCELLED, "C-CANCEL", T0 + 3))
        self.assertEqual(done.message_id, r.message_id)

    def test_retrieves_lists_newest_first_filtered_and_limited(self) -> None:
        """retrieves() is newest first (id breaks ties), filtered by state and cut at limit."""
        s = self.store()
        a = s.open_retrieve(new_retrieve(), T0 + 2)
        b = s.open_retrieve(new_retrieve(), T0 + 1)
        c = s.open_retrieve(new_retrieve(), T0 + 2)
        s.finish_retrieve(b.retrieve_id, RetrieveState.DONE, "", T0 + 3)
        self.assertEqual([r.retrieve_id for r in s.retrieves()], [c.retrieve_id, a.retrieve_id, b.retrieve_id])
        self.assertEqual([r.retrieve_id for r in s.retrieves(RetrieveState.OPEN)], [c.retrieve_id, a.retrieve_id])
        self.assertEqual([r.retrieve_id for r in s.retrieves(RetrieveState.DONE)], [b.retrieve_id])
        self.assertEqual([r.retrieve_id for r in s.retrieves(limit=1)], [c.retrieve_id])
        self.assertEqual(s.retrieves(limit=0), [])

    def test_a_large_retrieve_round_trips(self) -> None:
        """A retrieve of 3000 instances (more than one IN list) keeps every item and counts them."""
        s = self.store()
        expected = refs(*range(3000))
        r = s.open_retrieve(new_retrieve(expected=expected), T0)
        self.assertEqual(s.get_retrieve(r.retrieve_id).request.expected, expected)
        for n in range(0, 3000, 2):
            s.item_outcome(r.retrieve_id, f"{UID}{n}", ItemState.COMPLETED, "", T0)
        self.assertEqual(s.progress(r.retrieve_id), RetrieveProgress(remaining=1500, completed=1500))

    # -- remapped UIDs ---------------------------------------------------------------------

    def test_remember_uids_is_idempotent_and_shared_by_nodes(self) -> None:
        """Pairs remembered by one node are found by another; repeating a pair (or a conflicting one) keeps the first."""
        s = self.store()
        other = self.peer(s, "other")
        s.remember_uids([("2.25.100", "1.2.3"), ("2.25.101", "1.2.4")], T0)
        s.remember_uids([("2.25.100", "1.2.3"), ("2.25.100", "9.9.9")], T0 + 1)
        self.assertEqual(dict(other.original_uids(["2.25.100", "2.25.101", "2.25.999"])), {"2.25.100": "1.2.3", "2.25.101": "1.2.4"})
        self.assertEqual(dict(other.original_uids([])), {})

    def test_remember_and_look_up_many_uids(self) -> None:
        """Five thousand pairs (several chunks) are kept and looked up in one call each."""
        s = self.store()
        pairs = [(f"2.25.{n}", f"1.2.{n}") for n in range(5000)]
        s.remember_uids(pairs, T0)
        s.remember_uids(pairs[:10], T0)
        self.assertEqual(dict(s.original_uids([r for r, _ in pairs] + ["2.25.x"])), dict(pairs))


class MemoryRetrieveTests(RetrieveJournalTests, SynchronousTestCase):
    """The mixin against the in-memory fake."""

    def make_store(self) -> MemoryQueueStore:
        """A fresh in-memory store."""
        return MemoryQueueStore()

    def make_peer(self, store: MemoryQueueStore, node: str) -> MemoryQueueStore:
        """Another node on the same tables."""
        return store.peer(node)


class SqliteRetrieveTests(RetrieveJournalTests, SynchronousTestCase):
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
    """The names of IRetrieveJournal's methods."""
    return sorted(name for name in IRetrieveJournal.names() if isinstance(IRetrieveJournal[name], Method))


class RetrieveSignatureParityTests(SynchronousTestCase):
    """Every store exposes every IRetrieveJournal method with the interface's parameters."""

    stores: tuple[type, ...] = (MemoryQueueStore, SqliteQueueStore)

    def test_every_method_has_the_interfaces_parameters(self) -> None:
        """Each IRetrieveJournal method of each store takes the interface's positional parameters, in order."""
        names = journal_methods()
        self.assertEqual(len(names), 15)  # + fail_expected (i16-multisrc)
        for cls in self.stores:
            self.assertTrue(IRetrieveJournal.implementedBy(cls), cls)
            for name in names:
                spec = IRetrieveJournal[name].getSignatureInfo()
                params = list(inspect.signature(getattr(cls, name)).parameters)[1:]
                self.assertEqual(params, list(spec["positional"]), (cls, name))


# -- the verified fake: random operations of two nodes agree in memory and in SQLite -------------

_TIMES = st.integers(min_value=0, max_value=60).map(lambda n: T0 + n)
_RIDS = st.integers(1, 6)
_NS = st.integers(0, 4)
_EXPECTED = (refs(0, 1), refs(1, 0, 1), refs(2), refs(0, 1, 2, 3, 4))
_ITEM_STATES = st.sampled_from(list(ItemState))
_ENDS = st.sampled_from([RetrieveState.DONE, RetrieveState.CANCELLED, RetrieveState.FAILED, RetrieveState.OPEN])
_RETRIEVE_OPERATIONS = st.one_of(
    st.tuples(st.just("open"), st.integers(0, len(_EXPECTED) - 1), _TIMES),
    st.tuples(st.just("match"), st.integers(0, 5), _NS),
    st.tuples(st.just("link"), _RIDS, _NS, st.one_of(st.none(), st.integers(1, 8)), _TIMES),
    st.tuples(st.just("outcome"), _RIDS, _NS, _ITEM_STATES, _TIMES),
    st.tuples(st.just("finish"), _RIDS, _ENDS, _TIMES),
    st.tuples(st.just("receive"), _NS, _TIMES),
    st.tuples(st.just("custody"), st.integers(1, 3), _NS, _TIMES),
    st.tuples(st.just("custody"), st.integers(1, 3), _NS, _TIMES),
    st.tuples(st.just("deliver"), st.integers(1, 5), st.sampled_from(["", "0xB000"]), _TIMES),
    st.tuples(st.just("deliver"), st.integers(1, 5), st.sampled_from(["", "0xB000"]), _TIMES),
    st.tuples(st.just("dead"), st.integers(1, 5), _TIMES),
    st.tuples(st.just("forget"), st.integers(1, 5)),
    st.tuples(st.just("remember"), st.lists(st.tuples(_NS, _NS), max_size=3), _TIMES),
    # The clean-up (the housekeeping's batches) and a lookup that counts as a use.
    st.tuples(st.just("purge"), _TIMES, st.integers(0, 7)),
    st.tuples(st.just("purge_uids"), st.integers(0, 60).map(lambda n: T0 - 86400 + n * 2000), st.integers(0, 3)),
    st.tuples(st.just("lookup"), st.lists(_NS, max_size=3), st.integers(0, 3).map(lambda n: T0 + n * 50000)),
)


def _apply_retrieve(store: Any, op: tuple[Any, ...], counter: list[int]) -> Any:
    """Apply one generated operation; return its result or the exception type it raised."""
    name, *args = op
    try:
        if name == "open":
            variant, now = args
            return store.open_retrieve(new_retrieve(expected=_EXPECTED[variant]), now)
        if name == "match":
            message_id, n = args
            return store.match_sub_operation(message_id, f"{UID}{n}")
        if name == "link":
            retrieve_id, n, entry_id, now = args
            return store.link_item(retrieve_id, f"{UID}{n}", entry_id, now)
        if name == "outcome":
            retrieve_id, n, state, now = args
            return store.item_outcome(retrieve_id, f"{UID}{n}", state, state.value, now)
        if name == "finish":
            retrieve_id, state, now = args
            return store.finish_retrieve(retrieve_id, state, f"ended {state.value}", now)
        if name == "receive":
            n, now = args
            counter[0] += 1
            record = make_record(f"i{counter[0]}", sop_instance_uid=f"{UID}{n}", sop_class_uid=CT, received_at=now)
            return store.add_instance(record, [NewEntry("retrieve", f"move.d{counter[0]}")], now, 0.0).entry_ids
        if name == "custody":  # a sub-operation taken into custody and linked, as the intake does
            retrieve_id, n, now = args
            counter[0] += 1
            record = make_record(f"i{counter[0]}", sop_instance_uid=f"{UID}{n}", sop_class_uid=CT, received_at=now)
            (entry_id,) = store.add_instance(record, [NewEntry("retrieve", f"move.d{counter[0]}")], now, 0.0).entry_ids
            return store.link_item(retrieve_id, f"{UID}{n}", entry_id, now)
        if name in ("deliver", "dead"):
            entry_id, *rest = args
            entry = store.get(entry_id)
            if entry.state is not EntryState.QUEUED:
                return "not queued"
            (leased,) = store.lease(entry.destination, 1, T0 + 100, 30)
            if name == "deliver":
                warning, now = rest
                return store.complete([entry_id], now, warning, {entry_id: leased.lease_generation})
            return store.dead_letter(entry_id, "refused", rest[0], leased.lease_generation)
        if name == "forget":
            return store.forget_instance(f"i{args[0]}")
        if name == "remember":
            pairs, now = args
            return store.remember_uids([(f"2.25.{a}", f"1.2.{b}") for a, b in pairs], now)
        if name == "purge":
            return store.purge_retrieves(*args)
        if name == "purge_uids":
            return store.purge_remapped_uids(*args)
        if name == "lookup":
            ns, now = args
            return dict(store.original_uids([f"2.25.{n}" for n in ns], now))
    except (KeyError, ValueError, RetrieveIdsExhausted) as e:
        return type(e)
    raise AssertionError(name)


def _observe_retrieves(store: Any) -> Any:
    """Everything a caller can see of a store's retrieve journal."""
    listed = store.retrieves()
    return (
        listed,
        [store.progress(r.retrieve_id) for r in listed],
        [store.match_sub_operation(m, f"{UID}{n}") for m in range(1, 5) for n in range(5)],
        dict(store.original_uids([f"2.25.{n}" for n in range(5)])),
        [store.retrieve_items(r.retrieve_id) for r in listed],
        dict(store.open_retrieve_counts()),
    )


class RetrieveVerifiedFakeTests(SynchronousTestCase):
    """Random operation sequences of two nodes give the same results and state in the fake and in SQLite."""

    @settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.tuples(st.integers(0, 1), _RETRIEVE_OPERATIONS), min_size=10, max_size=40))
    def test_random_operations_of_two_nodes_agree(self, operations: list[tuple[int, tuple[Any, ...]]]) -> None:
        """After each operation, through either node, both stores returned the same thing and look the same."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "q.sqlite")
        memory = MemoryQueueStore("n1")
        fakes = (memory, memory.peer("n2"))
        reals = (SqliteQueueStore(path, "n1"), SqliteQueueStore(path, "n2"))
        for store in (*fakes, *reals):
            store.max_message_id = 4  # reach exhaustion and wrapping
        try:
            counters = ([0], [0])
            for who, op in operations:
                self.assertEqual(
                    _apply_retrieve(fakes[who], op, counters[0]), _apply_retrieve(reals[who], op, counters[1]), (who, op)
                )
                self.assertEqual(_observe_retrieves(fakes[0]), _observe_retrieves(reals[0]), (who, op))
        finally:
            for real in reals:
                real.close()
