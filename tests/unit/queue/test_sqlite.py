"""SQLite-only tests of :class:`gateway.queue.sqlite.SqliteQueueStore`.

What the in-memory fake cannot show: the state survives closing and
reopening; ``kill -9`` in the middle of transitions leaves a database that
opens, passes ``PRAGMA integrity_check`` and holds each entry in exactly one
state with every transaction whole (HARDENING F14); another process (the CLI)
reads while the gateway holds a write transaction (WAL) and its writes are
seen by the gateway's connection; the schema and its migration hook.

Child processes are real (``python -c``); the parent waits for them by
reading their output, never by sleeping.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

import gateway
from gateway.queue import sqlite as sqlite_module
from gateway.queue.interfaces import RECOVERED_IN_FLIGHT, EntryState, NewEntry
from gateway.queue.sqlite import SCHEMA_VERSION, SchemaError, SqliteQueueStore

from tests.unit.queue.test_store import T0, make_record

REPO = os.path.dirname(os.path.dirname(os.path.abspath(gateway.__file__)))

# The child of the kill -9 test: add an instance with two entries, lease,
# complete some, retry or dead-letter others, forever; a line after each commit
# of an instance tells the parent that instance is acknowledged.
CHURN = """
import sys
from gateway.queue.interfaces import NewEntry
from gateway.queue.sqlite import SqliteQueueStore
from tests.unit.queue.test_store import make_record
path, prefix = sys.argv[1], sys.argv[2]
store = SqliteQueueStore(path)
store.recover(0.0)
n = 0
while True:
    now = 1000.0 + n
    iid = f"{prefix}-{n}"
    store.add_instance(make_record(iid, received_at=now), [NewEntry("r", "A"), NewEntry("r", "B")], now, 0.0)
    print(iid, flush=True)
    for e in store.lease("A", 3, now, 30.0):
        if e.entry_id % 3:
            store.complete([e.entry_id], now)
        else:
            store.retry(e.entry_id, now, "A700", now)
    for e in store.lease("B", 2, now, 30.0):
        if e.entry_id % 5 == 0:
            store.dead_letter(e.entry_id, "C000", now)
        elif e.entry_id % 2:
            store.complete([e.entry_id], now, warning="B000")
    n += 1
"""


def run_child(code: str, *args: str) -> str:
    """Run ``python -c code args`` in the repository and return its stdout (fails on a non-zero exit)."""
    result = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"child failed ({result.returncode}): {result.stderr}")
    return result.stdout


class SqliteStoreTestCase(SynchronousTestCase):
    """Common helpers: a database path in a fresh temporary directory."""

    def db_path(self) -> str:
        """An absolute path for a new database file (children run in the repository)."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        return os.path.join(directory, "queue.sqlite")

    def open(self, path: str) -> SqliteQueueStore:
        """Open a store closed at cleanup."""
        store = SqliteQueueStore(path)
        self.addCleanup(store.close)
        return store


class PersistenceTests(SqliteStoreTestCase):
    """The state survives closing and reopening."""

    def test_state_survives_reopen(self) -> None:
        """Every entry's state, history, and each destination's flags are read back after reopening."""
        path = self.db_path()
        store = SqliteQueueStore(path)
        ids = store.add_instance(make_record("i1"), [NewEntry("r", "A"), NewEntry("r", "B", "/m.dcm")], T0, 0).entry_ids
        store.lease("A", 1, T0, 30)
        store.retry(ids[0], T0 + 9, "A700", T0 + 1)
        store.dead_letter(ids[1], "C000", T0 + 2)
        store.set_paused("B", True)
        before = [store.get(i) for i in ids], dict(store.stats(T0))
        store.close()
        reopened = self.open(path)
        self.assertEqual(([reopened.get(i) for i in ids], dict(reopened.stats(T0))), before)
        self.assertEqual(reopened.get(ids[1]).path, "/m.dcm")

    def test_ids_are_never_reused_after_reopen(self) -> None:
        """A purged entry's id is not given out again, even after reopening (AUTOINCREMENT)."""
        path = self.db_path()
        store = SqliteQueueStore(path)
        (first,) = store.add_instance(make_record("i1"), [NewEntry("r", "A")], T0, 0).entry_ids
        store.dead_letter(first, "C000", T0)
        store.purge(first)
        store.close()
        reopened = self.open(path)
        (second,) = reopened.add_instance(make_record("i2"), [NewEntry("r", "A")], T0, 0).entry_ids
        self.assertGreater(second, first)

    def test_leased_entries_stay_leased_until_recover(self) -> None:
        """A lease held when the store closed is still LEASED on reopen and recover requeues it."""
        path = self.db_path()
        store = SqliteQueueStore(path)
        store.add_instance(make_record("i1"), [NewEntry("r", "A")], T0, 0)
        store.lease("A", 1, T0, 30)
        store.close()
        reopened = self.open(path)
        self.assertEqual(reopened.stats(T0)["A"].in_flight, 1)
        self.assertEqual(reopened.recover(T0 + 1), 1)
        self.assertEqual(len(reopened.lease("A", 1, T0 + 1, 30)), 1)

    def test_store_may_be_used_from_another_thread(self) -> None:
        """The connection is not tied to its creating thread (the gateway's runner thread owns it)."""
        store = self.open(self.db_path())
        results: list[object] = []

        def work() -> None:
            try:
                store.add_instance(make_record("i1"), [NewEntry("r", "A")], T0, 0)
                results.append(len(store.lease("A", 1, T0, 30)))
            except Exception as e:  # reported to the main thread below
                results.append(e)

        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
        self.assertEqual(results, [1])
        self.assertEqual(store.stats(T0)["A"].in_flight, 1)

    def test_failed_transaction_leaves_nothing(self) -> None:
        """An add_instance that fails (duplicate instance id) rolls back its entries."""
        store = self.open(self.db_path())
        store.add_instance(make_record("i1"), [NewEntry("r", "A")], T0, 0)
        self.assertRaises(ValueError, store.add_instance, make_record("i1"), [NewEntry("r", "B")], T0, 0)
        self.assertEqual([e.destination for e in store.entries()], ["A"])
        # The connection is usable afterwards (no transaction left open).
        store.set_paused("A", True)
        self.assertTrue(store.stats(T0)["A"].paused)


class SchemaTests(SqliteStoreTestCase):
    """Pragmas, schema version, indexes and the migration hook."""

    def test_pragmas(self) -> None:
        """The connection runs WAL, synchronous=FULL, foreign keys on and a busy timeout."""
        store = self.open(self.db_path())
        conn = store._conn
        self.assertEqual(conn.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        self.assertEqual(conn.execute("PRAGMA synchronous").fetchone()[0], 2)  # 2 = FULL
        self.assertEqual(conn.execute("PRAGMA foreign_keys").fetchone()[0], 1)
        self.assertGreaterEqual(conn.execute("PRAGMA busy_timeout").fetchone()[0], 1000)

    def test_schema_version_is_recorded(self) -> None:
        """A new file is at SCHEMA_VERSION in PRAGMA user_version."""
        path = self.db_path()
        self.open(path)
        with sqlite3.connect(path) as conn:
            self.assertEqual(conn.execute("PRAGMA user_version").fetchone()[0], SCHEMA_VERSION)
        self.assertEqual(SCHEMA_VERSION, 9)

    def test_version_1_file_gains_the_circuit_columns(self) -> None:
        """A journal written at schema version 1 opens, keeps its data and gains the circuit columns."""
        path = self.db_path()
        conn = sqlite3.connect(path)
        sqlite_module.MIGRATIONS[0](conn)
        conn.execute("PRAGMA user_version = 1")
        conn.execute("INSERT INTO destinations (name, paused) VALUES ('A', 1)")
        conn.commit()
        conn.close()
        store = self.open(path)
        stats = store.stats(T0)["A"]
        self.assertTrue(stats.paused)
        self.assertFalse(stats.circuit_open)

    def version_2_journal(self) -> str:
        """A journal written by schema version 2 (before plans): two queued entries, route 'research' and 'gone'."""
        path = self.db_path()
        conn = sqlite3.connect(path)
        sqlite_module.MIGRATIONS[0](conn)
        sqlite_module.MIGRATIONS[1](conn)
        conn.execute("PRAGMA user_version = 2")
        record = make_record("i1")
        conn.execute(
            "INSERT INTO instances (instance_id, path, sop_class_uid, sop_instance_uid, transfer_syntax_uid, size,"
            " sha256, received_at, correlation_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (record.instance_id, record.path, record.sop_class_uid, record.sop_instance_uid,
             record.transfer_syntax_uid, record.size, record.sha256, record.received_at, record.correlation_id),
        )
        for route in ("research", "gone"):
            conn.execute(
                "INSERT INTO entries (instance_id, route, destination, state, enqueued_at, next_attempt_at, study_hash)"
                " VALUES ('i1', ?, 'A', 'queued', ?, ?, 0)",
                (route, T0, T0),
            )
        conn.commit()
        conn.close()
        return path

    def test_version_2_journal_keeps_its_entries_without_a_plan(self) -> None:
        """Opening a version-2 journal migrates it to the current version: a plans table, its entries carry no plan (None), and its instances no data set offset (0)."""
        store = self.open(self.version_2_journal())
        self.assertEqual([(e.route, e.plan_hash, e.state) for e in store.entries()],
                         [("research", None, EntryState.QUEUED), ("gone", None, EntryState.QUEUED)])
        self.assertEqual([e.instance.dataset_offset for e in store.entries()], [0, 0])
        with sqlite3.connect(store.path) as conn:
            self.assertEqual(conn.execute("PRAGMA user_version").fetchone()[0], SCHEMA_VERSION)
            self.assertEqual(conn.execute("SELECT count(*) FROM plans").fetchone()[0], 0)

    def version_4_journal(self) -> str:
        """A journal written by schema version 4 (before issue 14): one queued entry, one leased (no owner), a paused destination."""
        path = self.db_path()
        conn = sqlite3.connect(path)
        for migration in sqlite_module.MIGRATIONS[:4]:
            migration(conn)
        conn.execute("PRAGMA user_version = 4")
        record = make_record("i1")
        conn.execute(
            "INSERT INTO instances (instance_id, path, sop_class_uid, sop_instance_uid, transfer_syntax_uid, size,"
            " sha256, received_at, correlation_id, study_instance_uid, dataset_offset) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 352)",
            (record.instance_id, record.path, record.sop_class_uid, record.sop_instance_uid, record.transfer_syntax_uid,
             record.size, record.sha256, record.received_at, record.correlation_id, record.study_instance_uid),
        )
        conn.execute(
            "INSERT INTO entries (instance_id, route, destination, state, enqueued_at, next_attempt_at, study_hash)"
            " VALUES ('i1', 'r', 'A', 'queued', ?, ?, 0)",
            (T0, T0),
        )
        conn.execute(
            "INSERT INTO entries (instance_id, route, destination, state, enqueued_at, next_attempt_at, leased_until,"
            " study_hash) VALUES ('i1', 'r', 'B', 'leased', ?, ?, ?, 0)",
            (T0, T0, T0 + 30),
        )
        conn.execute("INSERT INTO destinations (name, paused) VALUES ('A', 1)")
        conn.commit()
        conn.close()
        return path

    def test_version_4_journal_migrates_to_several_nodes_keeping_its_data(self) -> None:
        """A version-4 journal opens at version 5: entries, instance and pause kept, no owner or node, generation 0, the new tables empty."""
        path = self.version_4_journal()
        store = self.open(path)
        queued, leased = store.entries()
        self.assertEqual((queued.destination, queued.state, queued.lease_owner, queued.lease_generation), ("A", EntryState.QUEUED, "", 0))
        self.assertEqual((leased.state, leased.lease_owner, leased.leased_until), (EntryState.LEASED, "", T0 + 30))
        self.assertEqual((queued.instance.node, queued.instance.dataset_offset, queued.instance.instance_id), ("", 352, "i1"))
        self.assertTrue(store.stats(T0)["A"].paused)
        self.assertEqual((store.nodes(T0), store.circuit("A")), ([], (False, "", None)))
        with sqlite3.connect(path) as conn:
            self.assertEqual(conn.execute("PRAGMA user_version").fetchone()[0], SCHEMA_VERSION)
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")}
        self.assertLessEqual({"slots", "nodes", "singletons", "entries_leased"}, tables)

    def version_5_journal(self) -> str:
        """A journal written by schema version 5 (before issue 15): a delivered entry of an instance, a queued one, a node."""
        path = self.db_path()
        conn = sqlite3.connect(path)
        for migration in sqlite_module.MIGRATIONS[:5]:
            migration(conn)
        conn.execute("PRAGMA user_version = 5")
        record = make_record("i1", sop_instance_uid="2.25.5001")
        conn.execute(
            "INSERT INTO instances (instance_id, path, sop_class_uid, sop_instance_uid, transfer_syntax_uid, size,"
            " sha256, received_at, correlation_id, study_instance_uid, node) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'n1')",
            (record.instance_id, record.path, record.sop_class_uid, record.sop_instance_uid, record.transfer_syntax_uid,
             record.size, record.sha256, record.received_at, record.correlation_id, record.study_instance_uid),
        )
        conn.execute(
            "INSERT INTO entries (instance_id, route, destination, state, enqueued_at, next_attempt_at, delivered_at,"
            " study_hash, lease_owner, lease_generation) VALUES ('i1', 'r', 'A', 'delivered', ?, ?, ?, 0, 'n1', 1)",
            (T0, T0, T0 + 1),
        )
        conn.execute(
            "INSERT INTO entries (instance_id, route, destination, state, enqueued_at, next_attempt_at, study_hash)"
            " VALUES ('i1', 'r', 'B', 'queued', ?, ?, 0)",
            (T0, T0),
        )
        conn.execute("INSERT INTO nodes (node, started_at, last_seen) VALUES ('n1', ?, ?)", (T0, T0))
        conn.commit()
        conn.close()
        return path

    def test_version_5_journal_migrates_to_storage_commitment_keeping_its_data(self) -> None:
        """A version-5 journal opens at version 6: its entries, instance and node kept, received() finds them, the commitment tables work."""
        from gateway.queue.commitments import CopyState, NewTransaction, Reference

        store = self.open(self.version_5_journal())
        delivered, queued = store.entries()
        self.assertEqual((delivered.state, delivered.lease_owner, delivered.lease_generation), (EntryState.DELIVERED, "n1", 1))
        self.assertEqual((queued.state, queued.instance.node), (EntryState.QUEUED, "n1"))
        self.assertEqual([n.node for n in store.nodes(T0)], ["n1"])
        (found,) = store.received(["2.25.5001"], T0)["2.25.5001"]
        self.assertEqual([e.entry_id for e in found.entries], [delivered.entry_id, queued.entry_id])
        store.note_copies([(delivered.entry_id, "A", delivered.instance.sop_class_uid, "2.25.5001")], T0 + 2)
        self.assertEqual([c.state for c in store.pending_copies("A", T0 + 2, 60, 10)], [CopyState.PENDING])
        new = NewTransaction("2.25.9", "MOD", "GW", "mod", "main", "delivered", (Reference("1.2", "2.25.5001"),), T0 + 9, T0 + 99, T0 - 9)
        self.assertTrue(store.add_transaction(new, T0)[1])
        with sqlite3.connect(store.path) as conn:
            self.assertEqual(conn.execute("PRAGMA user_version").fetchone()[0], SCHEMA_VERSION)
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")}
        self.assertLessEqual(
            {"commitment_transactions", "commitment_attempts", "unforwarded", "copy_commitments", "commitment_requests",
             "commitment_transactions_due", "unforwarded_sop", "copy_commitments_pending", "copy_commitments_sop"},
            tables,
        )

    def version_6_journal(self) -> str:
        """A journal written by schema version 6 (before issue 16): a delivered entry, a commitment transaction, a copy noted."""
        path = self.db_path()
        conn = sqlite3.connect(path)
        for migration in sqlite_module.MIGRATIONS[:6]:
            migration(conn)
        conn.execute("PRAGMA user_version = 6")
        old = conn
        record = make_record("i1", sop_instance_uid="2.25.6001")
        old.execute(
            "INSERT INTO instances (instance_id, path, sop_class_uid, sop_instance_uid, transfer_syntax_uid, size,"
            " sha256, received_at, correlation_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (record.instance_id, record.path, record.sop_class_uid, record.sop_instance_uid, record.transfer_syntax_uid,
             record.size, record.sha256, record.received_at, record.correlation_id),
        )
        old.execute(
            "INSERT INTO entries (instance_id, route, destination, state, enqueued_at, next_attempt_at, delivered_at,"
            " study_hash) VALUES ('i1', 'r', 'A', 'delivered', ?, ?, ?, 0)",
            (T0, T0, T0 + 1),
        )
        from gateway.queue.commitments import NewTransaction, Reference

        new = NewTransaction("2.25.9", "MOD", "GW", "mod", "main", "delivered", (Reference("1.2", "2.25.6001"),), T0 + 9, T0 + 99, T0 - 9)
        old.execute(
            "INSERT INTO commitment_transactions (transaction_uid, calling_ae_title, called_ae_title, modality, listener,"
            " policy, refs, deadline, report_deadline, lookback_from, unrouted, report_association, requested_at, node,"
            " state, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, '[[\"1.2\",\"2.25.6001\"]]', ?, ?, ?, 'fail', 'new', ?, 'n1', 'open', ?)",
            (new.transaction_uid, new.calling_ae_title, new.called_ae_title, new.modality, new.listener, new.policy,
             new.deadline, new.report_deadline, new.lookback_from, T0, T0),
        )
        old.commit()
        old.close()
        return path

    def test_version_6_journal_migrates_to_query_retrieve_keeping_its_data(self) -> None:
        """A version-6 journal opens at version 7: its entry and commitment transaction kept, the retrieve tables work from message ID 1."""
        from gateway.queue.commitments import Reference
        from gateway.queue.retrieves import NewRetrieve, RetrieveState

        store = self.open(self.version_6_journal())
        (delivered,) = store.entries()
        self.assertEqual((delivered.state, delivered.instance.sop_instance_uid), (EntryState.DELIVERED, "2.25.6001"))
        txn = store.get_transaction("2.25.9")
        self.assertEqual((txn.node, txn.request.references), ("n1", (Reference("1.2", "2.25.6001"),)))
        r = store.open_retrieve(
            NewRetrieve("move", "VIEWER", "main", 3, "viewer", "relay", "STUDY", ("a",), (Reference("1.2", "2.25.6001"),), T0 + 60),
            T0,
        )
        self.assertEqual((r.message_id, r.state), (1, RetrieveState.OPEN))
        store.link_item(r.retrieve_id, "2.25.6001", delivered.entry_id, T0)
        self.assertEqual(store.progress(r.retrieve_id).completed, 1)
        store.remember_uids([("2.25.77", "2.25.6001")], T0)
        self.assertEqual(dict(store.original_uids(["2.25.77"])), {"2.25.77": "2.25.6001"})
        with sqlite3.connect(store.path) as conn:
            self.assertEqual(conn.execute("PRAGMA user_version").fetchone()[0], SCHEMA_VERSION)
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")}
        self.assertLessEqual(
            {"retrieves", "retrieve_items", "retrieve_counters", "remapped_uids", "retrieves_open_message_id",
             "retrieves_created", "retrieve_items_seq"},
            tables,
        )

    def test_the_open_message_id_index_refuses_a_second_open_retrieve(self) -> None:
        """The database itself refuses two OPEN retrieves with one message ID (the partial unique index), but not a finished one."""
        from gateway.queue.retrieves import RetrieveState
        from tests.unit.queue.test_retrieves import new_retrieve

        store = self.open(self.db_path())
        r = store.open_retrieve(new_retrieve(), T0)
        insert = (
            "INSERT INTO retrieves (kind, requester_ae_title, listener, requester_message_id, destination, mode, level,"
            " sources, refs, deadline, message_id, node, state, created_at) VALUES"
            " ('move', 'X', 'main', 1, 'd', 'relay', 'STUDY', '[]', '[]', 0, ?, 'n', ?, 0)"
        )
        with sqlite3.connect(store.path) as conn:
            with self.assertRaises(sqlite3.IntegrityError):
                conn.execute(insert, (r.message_id, "open"))
            conn.execute(insert, (r.message_id, "done"))
        store.finish_retrieve(r.retrieve_id, RetrieveState.DONE, "", T0)

    def test_retrieve_journal_queries_use_indexes(self) -> None:
        """The queries of open_retrieve, match_sub_operation, progress and original_uids use indexes, never a table scan."""
        store = self.open(self.db_path())
        plans = [
            " ".join(str(row[-1]) for row in store._conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall())
            for sql, params in [
                ("SELECT message_id FROM retrieves WHERE state = 'open'", ()),
                ("SELECT r.retrieve_id FROM retrieves r JOIN retrieve_items i ON i.retrieve_id = r.retrieve_id"
                 " WHERE r.state = 'open' AND r.message_id = ? AND i.sop_instance_uid = ?", (1, "2.25.1")),
                ("SELECT i.sop_instance_uid, e.state FROM retrieve_items i LEFT JOIN entries e ON e.entry_id = i.entry_id"
                 " WHERE i.retrieve_id = ? ORDER BY i.seq", (1,)),
                ("SELECT remapped, original FROM remapped_uids WHERE remapped IN (?, ?)", ("2.25.1", "2.25.2")),
            ]
        ]
        for plan in plans:
            # A walk of the partial index of open retrieves is fine; a scan of a whole table is not.
            self.assertNotRegex(plan, r"SCAN (r|i|e|retrieves|retrieve_items|remapped_uids)\b(?! USING (COVERING )?INDEX)", plan)
            self.assertIn("USING", plan)

    def test_received_and_lease_transactions_use_indexes(self) -> None:
        """The queries received() and lease_transactions() make are index searches, never a scan of a whole table."""
        store = self.open(self.db_path())
        plans = [
            " ".join(str(row[-1]) for row in store._conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall())
            for sql, params in [
                ("SELECT i.instance_id FROM instances i LEFT JOIN entries e ON e.instance_id = i.instance_id"
                 " LEFT JOIN copy_commitments c ON c.entry_id = e.entry_id WHERE i.sop_instance_uid IN (?, ?)"
                 " AND i.received_at >= ?", ("1", "2", T0)),
                ("SELECT note_id FROM unforwarded WHERE sop_instance_uid IN (?, ?) AND received_at >= ?", ("1", "2", T0)),
                ("SELECT transaction_uid FROM commitment_transactions WHERE state = 'open' AND next_attempt_at <= ?"
                 " AND (leased_until IS NULL OR leased_until < ?) ORDER BY next_attempt_at, seq LIMIT ?", (T0, T0, 10)),
                ("SELECT entry_id FROM copy_commitments WHERE destination = ? AND state <> 'committed'"
                 " AND sop_instance_uid IN (?, ?)", ("A", "1", "2")),
            ]
        ]
        for plan in plans:
            self.assertNotRegex(plan, r"SCAN (i|e|c|unforwarded|commitment_transactions|copy_commitments)\b", plan)
            self.assertIn("USING", plan)

    def test_lease_from_before_several_nodes_is_recovered_by_any_node(self) -> None:
        """A lease journaled without an owner (version 4) is returned by the recover of whichever node starts first."""
        store = self.open(self.version_4_journal())
        other = SqliteQueueStore(store.path, "n2")
        self.addCleanup(other.close)
        self.assertEqual(other.recover(T0 + 1), 1)
        (entry,) = store.entries(destination="B")
        self.assertEqual((entry.state, entry.last_error), (EntryState.QUEUED, RECOVERED_IN_FLIGHT))
        (again,) = store.lease("B", 1, T0 + 1, 30)
        self.assertEqual((again.lease_owner, again.lease_generation), ("node", 1))

    def test_migrated_entries_adopt_the_plan_of_a_route_still_configured(self) -> None:
        """At start the gateway gives them their route's plan; the entry of a route gone keeps none (dead-lettered later)."""
        from gateway.queue.interfaces import PlanRecord

        store = self.open(self.version_2_journal())
        plan = PlanRecord("d" * 64, '{"actions":[{"deidentify":"basic"}],"v":1}')
        self.assertEqual(store.adopt_plans({"research": plan}), 1)
        self.assertEqual([(e.route, e.plan_hash) for e in store.entries()], [("research", plan.plan_hash), ("gone", None)])
        store.close()
        reopened = self.open(store.path)
        self.assertEqual(reopened.plan(plan.plan_hash), plan.definition)

    def test_one_plan_row_for_many_entries(self) -> None:
        """A thousand entries of one route share one plans row (the journal stays small)."""
        from gateway.queue.interfaces import PlanRecord

        store = self.open(self.db_path())
        plan = PlanRecord("e" * 64, '{"actions":[{"deidentify":"basic"}],"v":1}')
        store.add_instances(
            [(make_record(f"i{n}"), [NewEntry("r", "A", plan=plan), NewEntry("r", "B", plan=plan)]) for n in range(500)],
            T0, 0.0,
        )
        with sqlite3.connect(store.path) as conn:
            self.assertEqual(conn.execute("SELECT count(*) FROM plans").fetchone()[0], 1)
            self.assertEqual(conn.execute("SELECT count(DISTINCT plan_hash) FROM entries").fetchone()[0], 1)

    def test_entry_state_is_constrained(self) -> None:
        """The state column refuses a value outside EntryState (one state, always a known one)."""
        store = self.open(self.db_path())
        (entry_id,) = store.add_instance(make_record("i1"), [NewEntry("r", "A")], T0, 0).entry_ids
        with self.assertRaises(sqlite3.IntegrityError):
            store._conn.execute("UPDATE entries SET state = 'limbo' WHERE entry_id = ?", (entry_id,))
        self.assertEqual(store.get(entry_id).state, EntryState.QUEUED)

    def test_entries_need_their_instance(self) -> None:
        """The foreign key refuses an entry whose instance is not on record."""
        store = self.open(self.db_path())
        with self.assertRaises(sqlite3.IntegrityError):
            store._conn.execute(
                "INSERT INTO entries (instance_id, route, destination, state, enqueued_at, next_attempt_at, study_hash)"
                " VALUES ('ghost', 'r', 'A', 'queued', 0, 0, 0)"
            )
        self.assertEqual(store.entries(), [])

    def test_hot_queries_use_indexes(self) -> None:
        """lease, next_due, find and the duplicate lookup are index searches, not table scans."""
        store = self.open(self.db_path())
        conn = store._conn

        def plan(sql: str, *params: Any) -> str:
            return " | ".join(row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))

        lease = plan(
            "SELECT entry_id FROM entries INDEXED BY entries_lease WHERE destination = ? AND state = 'queued'"
            " AND next_attempt_at <= ? AND study_hash % ? = ? ORDER BY entry_id LIMIT ?", "A", 0, 2, 1, 10
        )
        self.assertIn("USING COVERING INDEX entries_lease", lease)
        self.assertNotIn("TEMP B-TREE", lease)
        self.assertIn("entries_due", plan("SELECT min(next_attempt_at) FROM entries WHERE destination = ? AND state = 'queued'", "A"))
        for column, index in [
            ("study_instance_uid", "instances_study"),
            ("sop_instance_uid", "instances_sop"),
            ("patient_id", "instances_patient"),
            ("accession_number", "instances_accession"),
        ]:
            self.assertIn(index, plan(f"SELECT * FROM instances WHERE {column} = ?", "x"))
        self.assertIn("entries_instance", plan("SELECT * FROM entries WHERE instance_id = ?", "x"))

    def test_cluster_queries_use_indexes(self) -> None:
        """The expired-lease reclaim reads only the destination's expired LEASED rows (partial index); a node-local lease still walks entries_lease."""
        store = self.open(self.db_path())
        conn = store._conn

        def plan(sql: str, *params: Any) -> str:
            return " | ".join(row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))

        reclaim = plan(
            "SELECT entry_id, COALESCE(lease_owner, ''), leased_until, history FROM entries INDEXED BY entries_leased"
            " WHERE destination = ? AND state = 'leased' AND leased_until < ? ORDER BY entry_id", "A", 0
        )
        self.assertIn("USING INDEX entries_leased (destination=? AND leased_until<?)", reclaim)
        self.assertNotIn("SCAN", reclaim)
        local = plan(
            "SELECT e.entry_id FROM entries e INDEXED BY entries_lease CROSS JOIN instances i"
            " ON i.instance_id = e.instance_id WHERE e.destination = ? AND e.state = 'queued'"
            " AND e.next_attempt_at <= ? AND i.node = ? ORDER BY e.entry_id LIMIT ?", "A", 0, "n1", 10
        )
        self.assertIn("SEARCH e USING INDEX entries_lease (destination=? AND state=?)", local)
        self.assertNotIn("TEMP B-TREE", local)
        self.assertNotIn("SCAN", local)
        # The index holds LEASED rows only: a queue of delivered entries leaves it empty.
        store.add_instances([(make_record(f"i{n}"), [NewEntry("r", "A")]) for n in range(50)], T0, 0.0)
        store.lease("A", 50, T0, 30)
        store.complete([e.entry_id for e in store.entries()], T0)
        store.lease("A", 1, T0, 30)
        self.assertEqual(conn.execute("SELECT count(*) FROM entries INDEXED BY entries_leased WHERE state = 'leased'").fetchone()[0], 0)

    def test_newer_schema_is_refused(self) -> None:
        """A file written by a newer version is refused rather than misread."""
        path = self.db_path()
        with sqlite3.connect(path) as conn:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        self.assertRaises(SchemaError, SqliteQueueStore, path)

    def test_migration_hook_upgrades_in_place(self) -> None:
        """A file at the current version is taken one version further by a new migration, keeping its data."""
        path = self.db_path()
        store = SqliteQueueStore(path)
        store.add_instance(make_record("i1"), [NewEntry("r", "A")], T0, 0)
        store.close()

        def migrate_next(conn: sqlite3.Connection) -> None:
            conn.execute("ALTER TABLE destinations ADD COLUMN note TEXT NOT NULL DEFAULT ''")

        following = SCHEMA_VERSION + 1
        self.patch(sqlite_module, "MIGRATIONS", sqlite_module.MIGRATIONS + (migrate_next,))
        self.patch(sqlite_module, "SCHEMA_VERSION", following)
        upgraded = self.open(path)
        self.assertEqual(upgraded._conn.execute("PRAGMA user_version").fetchone()[0], following)
        self.assertIn("note", [row[1] for row in upgraded._conn.execute("PRAGMA table_info(destinations)")])
        self.assertEqual([e.instance.instance_id for e in upgraded.entries()], ["i1"])


class CrashTests(SqliteStoreTestCase):
    """kill -9 at arbitrary instants (HARDENING F14)."""

    def check_consistent(self, path: str, acknowledged: list[str]) -> None:
        """Assert the file is intact, every transaction whole, every entry in exactly one valid state."""
        conn = sqlite3.connect(path)
        self.addCleanup(conn.close)
        self.assertEqual(conn.execute("PRAGMA integrity_check").fetchall(), [("ok",)])
        self.assertEqual(conn.execute("PRAGMA foreign_key_check").fetchall(), [])
        # add_instance is atomic: every instance has both of its entries, or is absent.
        per_instance = dict(
            conn.execute(
                "SELECT i.instance_id, count(e.entry_id) FROM instances i"
                " LEFT JOIN entries e USING (instance_id) GROUP BY i.instance_id"
            )
        )
        self.assertEqual(set(per_instance.values()) - {2}, set())
        # Every instance the child reported as committed is there.
        self.assertEqual(set(acknowledged) - set(per_instance), set())
        states = {state for (state,) in conn.execute("SELECT DISTINCT state FROM entries")}
        self.assertTrue(states <= {s.value for s in EntryState}, states)
        # Each state's own columns agree with it (a half-applied transition would not).
        incoherent = conn.execute(
            "SELECT count(*) FROM entries WHERE"
            " (state = 'leased') != (leased_until IS NOT NULL)"
            " OR (state = 'delivered') != (delivered_at IS NOT NULL)"
            " OR (state = 'dead') != (dead_reason != '')"
            " OR attempts != (SELECT count(*) FROM json_each(history) WHERE json_extract(value, '$.counted'))"
        ).fetchone()[0]
        self.assertEqual(incoherent, 0)

    def test_kill_9_in_a_loop_leaves_a_consistent_journal(self) -> None:
        """A child killed with SIGKILL mid-churn, five times, always leaves a consistent, recoverable file."""
        path = self.db_path()
        acknowledged: list[str] = []
        for round_ in range(5):
            child = subprocess.Popen(
                [sys.executable, "-c", CHURN, path, f"r{round_}"], cwd=REPO, stdout=subprocess.PIPE, text=True
            )
            assert child.stdout is not None
            # Let it commit a round-dependent number of instances, then kill it wherever it is.
            for _ in range(5 + 7 * round_):
                line = child.stdout.readline()
                self.assertTrue(line, "child exited early")
                acknowledged.append(line.strip())
            child.send_signal(signal.SIGKILL)
            child.wait()
            child.stdout.close()
            self.assertEqual(child.returncode, -signal.SIGKILL)
            self.check_consistent(path, acknowledged)
        store = self.open(path)
        store.recover(T0)
        self.assertEqual(store.entries(state=EntryState.LEASED), [])
        stats = store.stats(T0)
        self.assertGreaterEqual(sum(s.delivered for s in stats.values()), 1)
        self.assertEqual(
            sum(s.queued + s.in_flight + s.dead + s.delivered + s.duplicates for s in stats.values()),
            2 * len(store.instance_ids()),
        )


class ConcurrencyTests(SqliteStoreTestCase):
    """A second process (the CLI) uses the same file while the gateway's store is open."""

    def test_second_process_reads_stats_during_open_write_transaction(self) -> None:
        """With a write transaction held open, another process opens the store and reads the committed stats."""
        path = self.db_path()
        store = self.open(path)
        store.add_instance(make_record("i1"), [NewEntry("r", "A")], T0, 0)
        writer = sqlite3.connect(path, isolation_level=None)
        self.addCleanup(writer.close)
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE entries SET state = 'dead', dead_reason = 'x'")
        try:
            out = run_child(
                "import sys, json\n"
                "from gateway.queue.sqlite import SqliteQueueStore\n"
                "s = SqliteQueueStore(sys.argv[1])\n"
                "a = s.stats(0.0)['A']\n"
                "print(json.dumps([a.queued, a.dead]))\n",
                path,
            )
        finally:
            writer.execute("ROLLBACK")
        self.assertEqual(json.loads(out), [1, 0])

    def test_pause_from_second_process_is_seen(self) -> None:
        """set_paused in another process stops the open store's leases, and resume restarts them."""
        path = self.db_path()
        store = self.open(path)
        store.add_instance(make_record("i1"), [NewEntry("r", "A")], T0, 0)
        pause = "import sys\nfrom gateway.queue.sqlite import SqliteQueueStore\nSqliteQueueStore(sys.argv[1]).set_paused('A', sys.argv[2] == 'on')\n"
        run_child(pause, path, "on")
        self.assertTrue(store.stats(T0)["A"].paused)
        self.assertEqual(store.lease("A", 1, T0, 30), [])
        run_child(pause, path, "off")
        self.assertEqual(len(store.lease("A", 1, T0, 30)), 1)

    def test_two_processes_never_lease_the_same_entry(self) -> None:
        """Two processes leasing one destination at once take disjoint sets covering every entry."""
        path = self.db_path()
        store = self.open(path)
        for n in range(200):
            store.add_instance(make_record(f"i{n}"), [NewEntry("r", "A")], T0, 0)
        code = (
            "import sys\n"
            "from gateway.queue.sqlite import SqliteQueueStore\n"
            "s = SqliteQueueStore(sys.argv[1])\n"
            "while True:\n"
            "    got = s.lease('A', 3, 2e9, 30.0)\n"
            "    if not got: break\n"
            "    print(*[e.entry_id for e in got], flush=True)\n"
        )
        children = [
            subprocess.Popen([sys.executable, "-c", code, path], cwd=REPO, stdout=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        taken = []
        for child in children:
            out, _ = child.communicate(timeout=60)
            self.assertEqual(child.returncode, 0)
            taken.append([int(x) for x in out.split()])
        self.assertEqual(set(taken[0]) & set(taken[1]), set())
        self.assertEqual(sorted(taken[0] + taken[1]), [e.entry_id for e in store.entries(limit=1000)])
        self.assertEqual(store.stats(T0)["A"].in_flight, 200)
