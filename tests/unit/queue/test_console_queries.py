"""The console's store reads (issue 18): one mixin run against the in-memory store, SQLite and (in tests/adapters) PostgreSQL.

``ConsoleQueryTests`` pins the conventions listed in
:mod:`gateway.queue.memory_console`: dead-letter keyset pages newest first
with every filter, capped counts, bulk ids, the delivery histogram and
``find_page``; and that the SQL reason filter agrees with
:meth:`DeadLetterKind.of_reason` on every kind, tricky texts included.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from gateway.console.data import DeadFilter
from gateway.queue.console_sql import reason_clause
from gateway.queue.interfaces import NewEntry
from gateway.queue.memory import MemoryQueueStore
from gateway.queue.outcome import _LEGACY_PREFIXES, DeadLetterKind
from gateway.queue.sqlite import SqliteQueueStore
from tests.unit.queue.test_store import T0, make_record

#: Stored reason texts: every legacy prefix, the gave-up phrase alone and after
#: a prefix, and texts SQL could get wrong (case, LIKE wildcards, a prefix not at the start).
REASONS: tuple[str, ...] = tuple(prefix + " x" for prefix, _ in _LEGACY_PREFIXES) + (
    "refused (status 0xa700); gave up after 5 attempts",
    "association aborted; gave up after 3 attempts",
    "Morph: upper case is not the morph prefix",
    "MORPH: shouting",
    "morph_ no colon",
    "%orph: wildcard",
    "m_rph: wildcard",
    "the morph: is not at the start",
    "refused (status",
    "",
    "gave up after",
    "Gave Up After 3 attempts",
    "unsafe path\u00e9 unicode",
)


class ConsoleQueryTests:
    """Behaviour every store's console reads must have; mixed into a TestCase with ``make_store``."""

    assertEqual: Any
    assertRaises: Any
    addCleanup: Any

    def make_store(self) -> Any:
        """Return a fresh, empty store (implemented by each concrete class)."""
        raise NotImplementedError

    def store(self) -> Any:
        """A fresh store closed at cleanup."""
        s = self.make_store()
        self.addCleanup(s.close)
        return s

    def add(self, store: Any, n: int, destination: str = "pacs", route: str = "ct", at: float = T0, **record: Any) -> int:
        """Journal instance ``i<n>`` with one entry; returns the entry id."""
        values = dict(sop_instance_uid=f"1.2.3.{n}", received_at=at)
        values.update(record)
        result = store.add_instance(make_record(f"i{n}", **values), [NewEntry(route, destination)], at, 0.0)
        (entry_id,) = result.entry_ids
        return int(entry_id)

    def dead(self, store: Any, n: int, reason: str = "refused (status 0xa700)", **kw: Any) -> int:
        """A dead letter with ``reason``; returns its id."""
        entry_id = self.add(store, n, **kw)
        store.dead_letter(entry_id, reason, kw.get("at", T0) + 1)
        return entry_id

    def deliver(self, store: Any, destination: str, at: float, count: int = 1) -> list[int]:
        """Lease and deliver ``count`` queued entries of ``destination`` at ``at``."""
        leased = store.lease(destination, count, at, 30)
        store.complete([e.entry_id for e in leased], at)
        return [e.entry_id for e in leased]

    # -- dead_page ---------------------------------------------------------------------

    def test_dead_page_is_newest_first_and_pages_by_keyset(self) -> None:
        """Pages of 2 over 5 dead letters: newest first, the cursor exclusive, nothing repeated or lost."""
        s = self.store()
        ids = [self.dead(s, n) for n in range(5)]
        self.add(s, 99)  # queued: never listed
        first = s.dead_page(DeadFilter(), None, 2)
        self.assertEqual([e.entry_id for e in first], [ids[4], ids[3]])
        second = s.dead_page(DeadFilter(), first[-1].entry_id, 2)
        self.assertEqual([e.entry_id for e in second], [ids[2], ids[1]])
        third = s.dead_page(None, second[-1].entry_id, 2)
        self.assertEqual([e.entry_id for e in third], [ids[0]])
        self.assertEqual(third[0].dead_reason, "refused (status 0xa700)")
        self.assertEqual(third[0].instance.sop_instance_uid, "1.2.3.0")
        self.assertEqual(s.dead_page(DeadFilter(), None, 0), [])

    def test_dead_page_filters_by_destination_route_and_age(self) -> None:
        """Each filter alone and together; enqueued_before is exclusive."""
        s = self.store()
        a = self.dead(s, 1, destination="pacs", route="ct", at=T0)
        b = self.dead(s, 2, destination="archive", route="ct", at=T0 + 10)
        c = self.dead(s, 3, destination="pacs", route="mr", at=T0 + 20)

        def ids(where: DeadFilter) -> list[int]:
            return [e.entry_id for e in s.dead_page(where, None, 10)]

        self.assertEqual(ids(DeadFilter(destination="pacs")), [c, a])
        self.assertEqual(ids(DeadFilter(route="ct")), [b, a])
        self.assertEqual(ids(DeadFilter(enqueued_before=T0 + 10)), [a])
        self.assertEqual(ids(DeadFilter(enqueued_before=T0 + 10.5)), [b, a])
        self.assertEqual(ids(DeadFilter(destination="pacs", route="ct")), [a])
        self.assertEqual(ids(DeadFilter(destination="nowhere")), [])
        # The destination filter with the keyset cursor.
        self.assertEqual([e.entry_id for e in s.dead_page(DeadFilter(destination="pacs"), c, 10)], [a])

    def test_reason_filter_agrees_with_of_reason_on_every_kind(self) -> None:
        """For every kind, the dead letters listed are exactly those whose text of_reason classifies as that kind."""
        s = self.store()
        by_id = {self.dead(s, n, reason=text): text for n, text in enumerate(REASONS)}
        seen: set[int] = set()
        for kind in DeadLetterKind:
            listed = [e.entry_id for e in s.dead_page(DeadFilter(reason=kind.value), None, 1000)]
            expected = sorted((i for i, text in by_id.items() if DeadLetterKind.of_reason(text) is kind), reverse=True)
            self.assertEqual((kind, listed), (kind, expected))
            self.assertEqual(s.dead_count(DeadFilter(reason=kind.value), 1000), len(expected))
            self.assertEqual(s.dead_ids(DeadFilter(reason=kind.value), 1000), expected)
            seen.update(listed)
        # Every dead letter is of exactly one kind.
        self.assertEqual(seen, set(by_id))

    def test_unknown_reason_is_refused(self) -> None:
        """A reason that is no kind raises ValueError (the page answers 400), it never matches nothing silently."""
        s = self.store()
        self.dead(s, 1)
        self.assertRaises(ValueError, s.dead_page, DeadFilter(reason="nonsense"), None, 10)

    # -- dead_count, dead_ids ----------------------------------------------------------

    def test_dead_count_stops_at_the_cap(self) -> None:
        """count answers the number matching, at most cap."""
        s = self.store()
        for n in range(6):
            self.dead(s, n, destination="pacs" if n % 2 else "archive")
        self.assertEqual(s.dead_count(DeadFilter(), 100), 6)
        self.assertEqual(s.dead_count(DeadFilter(), 4), 4)
        self.assertEqual(s.dead_count(DeadFilter(destination="pacs"), 100), 3)
        self.assertEqual(s.dead_count(DeadFilter(), 0), 0)

    def test_dead_ids_newest_first_with_limit(self) -> None:
        """ids of the matching dead letters, newest first, at most limit."""
        s = self.store()
        ids = [self.dead(s, n) for n in range(5)]
        self.assertEqual(s.dead_ids(DeadFilter(), 3), [ids[4], ids[3], ids[2]])
        self.assertEqual(s.dead_ids(DeadFilter(route="other"), 3), [])

    # -- console_stats ------------------------------------------------------------------

    def test_console_stats_agree_with_stats(self) -> None:
        """Queued, in flight, dead, oldest, paused and circuit as stats() says; named destinations without entries too."""
        s = self.store()
        self.add(s, 1, destination="pacs", at=T0 + 5)
        self.add(s, 2, destination="pacs", at=T0 + 7)
        self.add(s, 3, destination="pacs", at=T0 + 9)
        s.lease("pacs", 1, T0 + 20, 30)
        self.dead(s, 4, destination="archive")
        self.add(s, 5, destination="archive", at=T0 + 30)
        self.deliver(s, "archive", T0 + 40)
        s.set_paused("research", True)
        s.set_circuit("archive", True, "refused", T0 + 50)
        full = s.stats(T0 + 60)
        mine = s.console_stats(["pacs", "archive", "idle"])
        self.assertEqual(list(mine), ["pacs", "archive", "idle", "research"])
        for name in ("pacs", "archive", "research"):
            a, b = full[name], mine[name]
            self.assertEqual(
                (name, b.queued, b.in_flight, b.dead, b.oldest_queued_at, b.paused, b.circuit_open, b.circuit_reason, b.last_error),
                (name, a.queued, a.in_flight, a.dead, a.oldest_queued_at, a.paused, a.circuit_open, a.circuit_reason, a.last_error),
            )
        self.assertEqual((mine["pacs"].queued, mine["pacs"].in_flight, mine["pacs"].oldest_queued_at), (2, 1, T0 + 5))
        self.assertEqual((mine["archive"].dead, mine["archive"].queued, mine["archive"].oldest_queued_at), (1, 0, None))
        self.assertEqual((mine["idle"].queued, mine["idle"].paused), (0, False))

    # -- delivery_histogram -----------------------------------------------------------

    def test_delivery_histogram_buckets_per_destination(self) -> None:
        """Deliveries land in the bucket of their time; outside the window, queued or dead ones do not count."""
        s = self.store()
        for n in range(4):
            self.add(s, n, destination="pacs")
        for n in range(4, 6):
            self.add(s, n, destination="archive")
        self.dead(s, 50, destination="pacs")
        since = T0 + 100
        self.deliver(s, "pacs", since - 1)  # before the window
        self.deliver(s, "pacs", since)  # first bucket (inclusive)
        self.deliver(s, "pacs", since + 119.5, 2)  # second bucket
        self.deliver(s, "archive", since + 179.9)  # third bucket, just inside now
        self.add(s, 7, destination="archive")
        self.deliver(s, "archive", since + 180)  # at now: excluded
        histogram = s.delivery_histogram(since, 60.0, since + 180)
        self.assertEqual(histogram, {"pacs": [1, 2, 0], "archive": [0, 0, 1]})
        self.assertEqual(s.delivery_histogram(since, 60.0, since), {})

    # -- find_page --------------------------------------------------------------------

    def test_find_page_by_each_key_with_a_limit(self) -> None:
        """find_page by study, accession, patient and sop; oldest received first; at most limit, with entries."""
        s = self.store()
        for n in range(3):
            self.add(s, n, at=T0 + n, study_instance_uid="1.2.9", patient_id="P7", accession_number="A7")
        self.add(s, 9, study_instance_uid="1.2.8", patient_id="P8", accession_number="A8")
        found = s.find_page("study", "1.2.9", 2)
        self.assertEqual([r.instance_id for r, _ in found], ["i0", "i1"])
        self.assertEqual([[e.destination for e in entries] for _, entries in found], [["pacs"], ["pacs"]])
        self.assertEqual([r.instance_id for r, _ in s.find_page("patient", "P7", 10)], ["i0", "i1", "i2"])
        self.assertEqual([r.instance_id for r, _ in s.find_page("accession", "A8", 10)], ["i9"])
        self.assertEqual([r.instance_id for r, _ in s.find_page("sop", "1.2.3.1", 10)], ["i1"])
        self.assertEqual(s.find_page("sop", "nothing", 10), [])
        self.assertRaises(ValueError, s.find_page, "name", "x", 10)

    def test_instance_record_by_id(self) -> None:
        """instance_record answers the instance on record, KeyError for none."""
        s = self.store()
        self.add(s, 3, patient_id="P3")
        record = s.instance_record("i3")
        self.assertEqual((record.instance_id, record.patient_id, record.sop_instance_uid), ("i3", "P3", "1.2.3.3"))
        self.assertRaises(KeyError, s.instance_record, "i4")


class MemoryConsoleQueryTests(ConsoleQueryTests, SynchronousTestCase):
    """The mixin against the in-memory store."""

    def make_store(self) -> MemoryQueueStore:
        """A fresh in-memory store."""
        return MemoryQueueStore()


class SqliteConsoleQueryTests(ConsoleQueryTests, SynchronousTestCase):
    """The mixin against the SQLite store in a temporary directory."""

    def make_store(self) -> SqliteQueueStore:
        """A fresh SQLite store in a new temporary directory."""
        directory = self.mktemp()
        os.makedirs(directory)
        return SqliteQueueStore(os.path.join(directory, "queue.sqlite"))

    def test_queries_use_the_console_indexes(self) -> None:
        """SQLite's plan walks entries_dead (no destination), entries_lease (a destination), entries_delivered_at."""
        s = self.store()

        def plan(sql: str, params: tuple[Any, ...]) -> str:
            return " | ".join(str(row[-1]) for row in s._conn.execute("EXPLAIN QUERY PLAN " + sql, params))

        clause, params = s._dead_where(DeadFilter(), None)
        self.assertIn("entries_dead", plan("SELECT e.entry_id FROM entries e" + clause + " ORDER BY e.entry_id DESC LIMIT 5", tuple(params)))
        clause, params = s._dead_where(DeadFilter(destination="pacs"), 10)
        self.assertIn("entries_lease", plan("SELECT e.entry_id FROM entries e" + clause + " ORDER BY e.entry_id DESC LIMIT 5", tuple(params)))
        self.assertIn(
            "entries_delivered_at",
            plan("SELECT e.destination FROM entries e WHERE e.state = 'delivered' AND e.delivered_at >= ? AND e.delivered_at < ?", (T0, T0 + 1)),
        )


class ReasonClauseTests(SynchronousTestCase):
    """The reason clause itself, on SQLite's in-memory engine (the shape both dialects share)."""

    def test_every_kind_agrees_with_of_reason(self) -> None:
        """Evaluated on each text alone, the clause of each kind is true exactly when of_reason says that kind."""
        import sqlite3

        conn = sqlite3.connect(":memory:")
        self.addCleanup(conn.close)
        for text in REASONS:
            for kind in DeadLetterKind:
                clause, params = reason_clause(kind, "?", "instr")
                (value,) = conn.execute("SELECT " + clause, _bind(clause, text, params)).fetchone()
                self.assertEqual((text, kind, bool(value)), (text, kind, DeadLetterKind.of_reason(text) is kind))


def _bind(clause: str, text: str, params: list[Any]) -> list[Any]:
    """The parameters for ``clause`` written with the column as ``?``: ``text`` at each column mark, ``params`` in order."""
    result: list[Any] = []
    values = iter(params)
    # In the clause, every column mark is followed by "," (instr(?, ?), substr(?, 1, n)).
    pieces = clause.split("?")
    for piece in pieces[1:]:
        result.append(text if piece.startswith(",") else next(values))
    return result
