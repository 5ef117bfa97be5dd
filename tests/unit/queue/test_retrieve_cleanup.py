"""The retrieve journal's clean-up and operator reads (issue 16): one mixin on the fake, SQLite and (tests/adapters) PostgreSQL.

``RetrieveCleanupTests`` pins ``purge_retrieves`` (only ended retrieves past
the bound, bounded batches, a large retrieve over several batches),
``purge_remapped_uids`` with the last use recorded by writes and lookups (at
most once per :data:`~gateway.queue.retrieves.REMAP_TOUCH_INTERVAL`),
``retrieve_items``, ``open_retrieve_counts`` and the keyset cursor of
``retrieves``. ``SqliteCleanupSchemaTests`` pins the version 7 -> 8
migration with data and that the clean-up queries use the new indexes.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from gateway.queue import sqlite as sqlite_module
from gateway.queue.interfaces import EntryState
from gateway.queue.memory import MemoryQueueStore
from gateway.queue.retrieves import REMAP_TOUCH_INTERVAL, ItemState, RetrievePurge, RetrieveState
from gateway.queue.sqlite import SCHEMA_VERSION, SqliteQueueStore
from tests.unit.queue.test_retrieves import UID, new_retrieve, refs
from tests.unit.queue.test_store import T0

DAY = 86400.0


class RetrieveCleanupTests:
    """Behaviour of the clean-up every IRetrieveJournal must have; mixed into a TestCase with ``make_store``."""

    assertEqual: Any
    assertRaises: Any
    assertLessEqual: Any
    addCleanup: Any

    def make_store(self) -> Any:
        """A fresh, empty store for node ``"node"`` (each concrete class)."""
        raise NotImplementedError

    def store(self) -> Any:
        """A fresh store closed at cleanup."""
        s = self.make_store()
        self.addCleanup(s.close)
        return s

    def ended(self, s: Any, n_items: int, finished_at: float, state: RetrieveState = RetrieveState.DONE) -> int:
        """Open a retrieve of ``n_items`` instances and end it at ``finished_at``; its id."""
        r = s.open_retrieve(new_retrieve(expected=refs(*range(n_items))), finished_at - 10)
        s.finish_retrieve(r.retrieve_id, state, "", finished_at)
        return int(r.retrieve_id)

    # -- purge_retrieves ----------------------------------------------------------------

    def test_purge_deletes_only_ended_retrieves_finished_before_the_bound(self) -> None:
        """DONE, CANCELLED and FAILED retrieves ended before the bound go with their items; OPEN ones and later ends stay."""
        s = self.store()
        done = self.ended(s, 2, T0 + 10)
        cancelled = self.ended(s, 1, T0 + 20, RetrieveState.CANCELLED)
        failed = self.ended(s, 1, T0 + 30, RetrieveState.FAILED)
        late = self.ended(s, 1, T0 + 100)
        still_open = s.open_retrieve(new_retrieve(), T0).retrieve_id
        self.assertEqual(s.purge_retrieves(T0 + 100, 1000), RetrievePurge(retrieves=3, items=4))
        for gone in (done, cancelled, failed):
            with self.assertRaises(KeyError):
                s.get_retrieve(gone)
            with self.assertRaises(KeyError):
                s.retrieve_items(gone)
        self.assertEqual(sorted(r.retrieve_id for r in s.retrieves()), sorted([late, still_open]))
        self.assertEqual(len(s.retrieve_items(still_open)), 3)
        self.assertEqual(s.purge_retrieves(T0 + 100, 1000), RetrievePurge())

    def test_purge_never_touches_an_open_retrieve_however_old(self) -> None:
        """An OPEN retrieve created long before the bound is kept, items and message ID included."""
        s = self.store()
        r = s.open_retrieve(new_retrieve(), T0 - 365 * DAY)
        self.assertEqual(s.purge_retrieves(T0 + 365 * DAY, 1000), RetrievePurge())
        self.assertEqual(s.get_retrieve(r.retrieve_id).state, RetrieveState.OPEN)
        self.assertEqual(s.match_sub_operation(r.message_id, f"{UID}1").retrieve_id, r.retrieve_id)

    def test_each_batch_deletes_at_most_limit_rows_oldest_end_first(self) -> None:
        """With limit 4, batches delete items and retrieves 4 rows at a time, oldest end first, until nothing is left."""
        s = self.store()
        second = self.ended(s, 2, T0 + 20)
        first = self.ended(s, 3, T0 + 10)
        batches = []
        while True:
            purge = s.purge_retrieves(T0 + 50, 4)
            if purge == RetrievePurge():
                break
            self.assertLessEqual(purge.retrieves + purge.items, 4)
            batches.append(purge)
            if len(batches) == 1:  # the oldest end goes first: the first retrieve's 3 items and the row
                self.assertEqual(purge, RetrievePurge(retrieves=1, items=3))
                with self.assertRaises(KeyError):
                    s.get_retrieve(first)
                self.assertEqual(len(s.retrieve_items(second)), 2)
        self.assertEqual(sum(b.retrieves for b in batches), 2)
        self.assertEqual(sum(b.items for b in batches), 5)
        self.assertEqual(s.retrieves(), [])

    def test_a_large_retrieve_goes_over_several_batches(self) -> None:
        """A retrieve of 2500 items with limit 1000: 1000, 1000, then 500 items and the row; it stays listed until its last item went."""
        s = self.store()
        r = self.ended(s, 2500, T0)
        self.assertEqual(s.purge_retrieves(T0 + 1, 1000), RetrievePurge(retrieves=0, items=1000))
        self.assertEqual(len(s.retrieve_items(r)), 1500)
        self.assertEqual(s.purge_retrieves(T0 + 1, 1000), RetrievePurge(retrieves=0, items=1000))
        self.assertEqual(s.purge_retrieves(T0 + 1, 1000), RetrievePurge(retrieves=1, items=500))
        self.assertEqual(s.retrieves(), [])

    def test_a_zero_limit_deletes_nothing(self) -> None:
        """purge_retrieves(bound, 0) and purge_remapped_uids(bound, 0) delete nothing."""
        s = self.store()
        self.ended(s, 1, T0)
        s.remember_uids([("2.25.1", "1.2.1")], T0)
        self.assertEqual(s.purge_retrieves(T0 + DAY, 0), RetrievePurge())
        self.assertEqual(s.purge_remapped_uids(T0 + DAY, 0), 0)
        self.assertEqual(len(s.retrieves()), 1)

    def test_a_link_after_the_purge_raises_key_error(self) -> None:
        """A late sub-operation of a purged retrieve cannot be linked (KeyError, which the intake logs)."""
        s = self.store()
        r = self.ended(s, 1, T0)
        s.purge_retrieves(T0 + 1, 1000)
        with self.assertRaises(KeyError):
            s.link_item(r, f"{UID}0", None, T0 + 2)
        with self.assertRaises(KeyError):
            s.progress(r)

    # -- remapped UIDs ------------------------------------------------------------------

    def test_unused_remapped_uids_are_purged_and_used_ones_kept(self) -> None:
        """A pair written at T0 and never used goes; one looked up two days later stays; the bound is strict."""
        s = self.store()
        s.remember_uids([("2.25.1", "1.2.1"), ("2.25.2", "1.2.2")], T0)
        self.assertEqual(dict(s.original_uids(["2.25.2"], T0 + 2 * DAY)), {"2.25.2": "1.2.2"})
        self.assertEqual(s.purge_remapped_uids(T0, 1000), 0)  # used at T0: not strictly before T0
        self.assertEqual(s.purge_remapped_uids(T0 + DAY, 1000), 1)
        self.assertEqual(dict(s.original_uids(["2.25.1", "2.25.2"])), {"2.25.2": "1.2.2"})

    def test_a_lookup_without_now_is_not_a_use(self) -> None:
        """original_uids without ``now`` (a read for an operator) records no use."""
        s = self.store()
        s.remember_uids([("2.25.1", "1.2.1")], T0)
        s.original_uids(["2.25.1"])
        self.assertEqual(s.purge_remapped_uids(T0 + 1, 1000), 1)

    def test_writing_a_pair_again_is_a_use(self) -> None:
        """remember_uids of a known pair two days later moves its last use; the first original stays."""
        s = self.store()
        s.remember_uids([("2.25.1", "1.2.1")], T0)
        s.remember_uids([("2.25.1", "9.9.9")], T0 + 2 * DAY)
        self.assertEqual(s.purge_remapped_uids(T0 + DAY, 1000), 0)
        self.assertEqual(dict(s.original_uids(["2.25.1"])), {"2.25.1": "1.2.1"})

    def test_a_use_within_a_day_is_not_written(self) -> None:
        """A use less than REMAP_TOUCH_INTERVAL after the recorded one does not move it (at most one write a day)."""
        s = self.store()
        s.remember_uids([("2.25.1", "1.2.1")], T0)
        s.original_uids(["2.25.1"], T0 + REMAP_TOUCH_INTERVAL - 1)
        s.remember_uids([("2.25.1", "1.2.1")], T0 + REMAP_TOUCH_INTERVAL - 1)
        self.assertEqual(s.purge_remapped_uids(T0 + 1, 1000), 1)

    def test_remapped_uid_purge_is_bounded_oldest_first(self) -> None:
        """With limit 2, three stale pairs go 2 then 1, the least recently used first."""
        s = self.store()
        s.remember_uids([("2.25.3", "1.2.3")], T0 + 3)
        s.remember_uids([("2.25.1", "1.2.1")], T0 + 1)
        s.remember_uids([("2.25.2", "1.2.2")], T0 + 2)
        self.assertEqual(s.purge_remapped_uids(T0 + 10, 2), 2)
        self.assertEqual(dict(s.original_uids(["2.25.1", "2.25.2", "2.25.3"])), {"2.25.3": "1.2.3"})
        self.assertEqual(s.purge_remapped_uids(T0 + 10, 2), 1)
        self.assertEqual(s.purge_remapped_uids(T0 + 10, 2), 0)

    # -- operator reads -------------------------------------------------------------------

    def test_retrieve_items_show_state_entry_reason_and_count(self) -> None:
        """Items in request order with their state, entry, reason (the entry's dead reason when it has none) and what they count."""
        from gateway.queue.interfaces import NewEntry
        from tests.unit.queue.test_store import make_record

        s = self.store()
        r = s.open_retrieve(new_retrieve(expected=refs(3, 1, 2)), T0)
        record = make_record("i1", sop_instance_uid=f"{UID}1", received_at=T0)
        (entry_id,) = s.add_instance(record, [NewEntry("retrieve", "move.viewer")], T0, 0.0).entry_ids
        s.link_item(r.retrieve_id, f"{UID}1", entry_id, T0 + 1)
        (leased,) = s.lease("move.viewer", 1, T0 + 2, 30)
        s.dead_letter(entry_id, "refused 0xA700", T0 + 3, leased.lease_generation)
        s.item_outcome(r.retrieve_id, f"{UID}2", ItemState.FAILED, "not at the source", T0 + 4)
        items = s.retrieve_items(r.retrieve_id)
        self.assertEqual(
            [(i.sop_instance_uid, i.state, i.entry_id, i.reason, i.counted) for i in items],
            [
                (f"{UID}3", ItemState.EXPECTED, None, "", "remaining"),
                (f"{UID}1", ItemState.RECEIVED, entry_id, "refused 0xA700", "failed"),
                (f"{UID}2", ItemState.FAILED, None, "not at the source", "failed"),
            ],
        )
        self.assertEqual(s.get(entry_id).state, EntryState.DEAD)
        self.assertEqual(len(s.retrieve_items(r.retrieve_id, 1)), 1)
        with self.assertRaises(KeyError):
            s.retrieve_items(999)

    def test_open_retrieve_counts_by_kind(self) -> None:
        """OPEN retrieves counted by kind; an ended one is not counted."""
        s = self.store()
        self.assertEqual(dict(s.open_retrieve_counts()), {})
        s.open_retrieve(new_retrieve(), T0)
        s.open_retrieve(new_retrieve(), T0)
        s.open_retrieve(new_retrieve(kind="get", destination=""), T0)
        self.ended(s, 1, T0)
        self.assertEqual(dict(s.open_retrieve_counts()), {"move": 2, "get": 1})

    def test_keyset_pages_cover_every_retrieve_once(self) -> None:
        """Pages of 2 after the last row's (created_at, id) list every retrieve once, newest first, ties by id."""
        s = self.store()
        ids = [s.open_retrieve(new_retrieve(), T0 + t).retrieve_id for t in (1, 2, 2, 3, 1)]
        everything = [r.retrieve_id for r in s.retrieves()]
        pages: list[int] = []
        cursor = None
        while True:
            page = s.retrieves(None, 2, cursor)
            if not page:
                break
            self.assertLessEqual(len(page), 2)
            pages.extend(r.retrieve_id for r in page)
            cursor = (page[-1].created_at, page[-1].retrieve_id)
        self.assertEqual(pages, everything)
        self.assertEqual(sorted(pages), sorted(ids))
        self.assertEqual([r.retrieve_id for r in s.retrieves(RetrieveState.OPEN, 10, (T0 + 2, ids[2]))], [ids[1], ids[4], ids[0]])


class MemoryRetrieveCleanupTests(RetrieveCleanupTests, SynchronousTestCase):
    """The mixin against the in-memory fake."""

    def make_store(self) -> MemoryQueueStore:
        """A fresh in-memory store."""
        return MemoryQueueStore()


class SqliteRetrieveCleanupTests(RetrieveCleanupTests, SynchronousTestCase):
    """The mixin against the SQLite store."""

    def make_store(self) -> SqliteQueueStore:
        """A fresh SQLite store in a new temporary directory."""
        directory = self.mktemp()
        os.makedirs(directory)
        return SqliteQueueStore(os.path.join(directory, "queue.sqlite"))


class SqliteCleanupSchemaTests(SynchronousTestCase):
    """Schema version 8: the migration from 7 with data, and the clean-up queries on indexes."""

    def test_version_7_journal_migrates_keeping_its_retrieves_and_remapped_uids(self) -> None:
        """A version-7 journal with a finished retrieve and a remapped UID opens at 8: both kept, the pair's last use its remember time, both purgeable."""
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "queue.sqlite")
        conn = sqlite3.connect(path)
        for migration in sqlite_module.MIGRATIONS[:7]:
            migration(conn)
        conn.execute("PRAGMA user_version = 7")
        conn.execute(
            "INSERT INTO retrieves (kind, requester_ae_title, listener, requester_message_id, destination, mode, level,"
            " sources, refs, deadline, message_id, node, state, created_at, finished_at) VALUES"
            " ('move', 'VIEWER', 'main', 3, 'viewer', 'relay', 'STUDY', '[\"a\"]', '[[\"1.2\",\"2.25.5\"]]', ?, 4, 'n1',"
            " 'done', ?, ?)",
            (T0 + 60, T0, T0 + 5),
        )
        conn.execute(
            "INSERT INTO retrieve_items (retrieve_id, seq, sop_class_uid, sop_instance_uid, state, updated_at)"
            " VALUES (1, 0, '1.2', '2.25.5', 'completed', ?)",
            (T0 + 4,),
        )
        conn.execute("INSERT INTO remapped_uids (remapped, original, remembered_at) VALUES ('2.25.77', '2.25.5', ?)", (T0,))
        conn.commit()
        conn.close()
        store = SqliteQueueStore(path)
        self.addCleanup(store.close)
        with sqlite3.connect(path) as check:
            self.assertEqual(check.execute("PRAGMA user_version").fetchone()[0], SCHEMA_VERSION)
            self.assertEqual(check.execute("SELECT last_used_at FROM remapped_uids").fetchall(), [(T0,)])
            names = {row[0] for row in check.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        self.assertEqual(SCHEMA_VERSION, 9)
        self.assertLessEqual({"retrieves_finished", "remapped_uids_last_used"}, names)
        kept = store.get_retrieve(1)
        self.assertEqual((kept.state, kept.finished_at, kept.node), (RetrieveState.DONE, T0 + 5, "n1"))
        self.assertEqual([i.state for i in store.retrieve_items(1)], [ItemState.COMPLETED])
        self.assertEqual(dict(store.original_uids(["2.25.77"])), {"2.25.77": "2.25.5"})
        self.assertEqual(store.purge_remapped_uids(T0, 10), 0)
        self.assertEqual(store.purge_remapped_uids(T0 + 1, 10), 1)
        self.assertEqual(store.purge_retrieves(T0 + 6, 10), RetrievePurge(retrieves=1, items=1))
        r = store.open_retrieve(new_retrieve(), T0 + 10)
        self.assertEqual(r.message_id, 1)  # the counter row of version 7 was kept (at 0)

    def test_clean_up_queries_use_indexes(self) -> None:
        """The purges' selections and the keyset page are index searches, never a scan of a whole table."""
        directory = self.mktemp()
        os.makedirs(directory)
        store = SqliteQueueStore(os.path.join(directory, "queue.sqlite"))
        self.addCleanup(store.close)
        plans = [
            " ".join(str(row[-1]) for row in store._conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall())
            for sql, params in [
                ("SELECT retrieve_id FROM retrieves WHERE state <> 'open' AND finished_at < ?"
                 " ORDER BY finished_at, retrieve_id LIMIT ?", (T0, 10)),
                ("SELECT remapped FROM remapped_uids WHERE last_used_at < ? ORDER BY last_used_at, remapped LIMIT ?", (T0, 10)),
                ("SELECT sop_instance_uid FROM retrieve_items WHERE retrieve_id = ? ORDER BY seq LIMIT ?", (1, 10)),
                ("SELECT retrieve_id FROM retrieves r WHERE (r.created_at < ? OR (r.created_at = ? AND r.retrieve_id < ?))"
                 " ORDER BY r.created_at DESC, r.retrieve_id DESC LIMIT ?", (T0, T0, 5, 10)),
            ]
        ]
        for plan in plans:
            self.assertNotRegex(plan, r"SCAN (r|retrieves|retrieve_items|remapped_uids)\b(?! USING (COVERING )?INDEX)", plan)
            self.assertIn("USING", plan)
