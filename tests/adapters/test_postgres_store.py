"""The PostgreSQL queue store against a real PostgreSQL (issue 14).

``PostgresQueueStoreTests`` runs the ``QueueStoreTests`` mixin (the one the
SQLite store and the in-memory fake pass) on :class:`PostgresQueueStore`;
the other classes pin what only PostgreSQL does: two stores (two nodes)
sharing one database, fencing, the advisory-lock singleton, migrations
under the lock, the database going away and coming back, the password kept
out of sight, and the keepalives on every connection.

The server is :mod:`tests.support.postgres` (started once per test process);
each test gets a fresh database.
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
import threading
from typing import Any, Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gateway.queue import pgschema
from gateway.queue.interfaces import (
    EXPIRED_LEASE_PREFIX,
    AddResult,
    EntryState,
    IQueueStore,
    LeaseLost,
    NewEntry,
    StoreUnavailable,
)
from gateway.queue.memory import MemoryQueueStore
from gateway.queue.pgschema import ADVISORY_NAMESPACE, SCHEMA_VERSION, SchemaError
from gateway.queue.postgres import (
    KEEPALIVE_BOUND,
    PostgresQueueStore,
    client_keepalives,
    migrate_database,
    safe_dsn,
)
from tests.support import postgres as pg
from tests.unit.queue import test_store
from tests.unit.queue.test_store import T0, QueueStoreTests, make_record

_SKIP = pg.skip_reason()


class PostgresTestCase(SynchronousTestCase):
    """Gives each test a fresh database and opens stores (nodes) on it."""

    if _SKIP:
        skip = _SKIP

    def setUp(self) -> None:
        """A fresh database for this test."""
        self.database = pg.fresh_database(self)

    def open_store(self, node: str = "node-a", **options: Any) -> PostgresQueueStore:
        """A store on this test's database speaking for ``node``, closed at cleanup."""
        options.setdefault("password", self.database.password)
        store = PostgresQueueStore(self.database.dsn, node, **options)
        self.addCleanup(store.close)
        return store


class PostgresQueueStoreTests(QueueStoreTests, PostgresTestCase):
    """The shared store mixin on PostgreSQL."""

    def make_store(self) -> PostgresQueueStore:
        """A store for node ``"node"`` on an empty queue: this test's fresh database.

        A second call in the same test (each example of a hypothesis test)
        first closes the stores opened so far and empties the tables: a new
        database per example would cost a quarter of a second each, and
        stores left open until the test ends would hold a connection each.
        """
        opened: list[PostgresQueueStore] = self.__dict__.setdefault("_opened", [])
        if opened:
            for old in opened:
                old.close()
            opened.clear()
            pg.server().admin(
                "TRUNCATE entries, instances, plans, destinations, slots, nodes, commitment_attempts,"
                " commitment_transactions, unforwarded, copy_commitments, commitment_requests RESTART IDENTITY",
                database=self.database.name,
            )
        store = PostgresQueueStore(self.database.dsn, "node", password=self.database.password)
        opened.append(store)
        return store

    def make_peer(self, store: PostgresQueueStore, node: str, local_only: bool = False) -> PostgresQueueStore:
        """A second store (its own pool: another node) on the same database."""
        assert self.database.name in str(store)
        peer = PostgresQueueStore(self.database.dsn, node, password=self.database.password, local_only=local_only)
        self.__dict__.setdefault("_opened", []).append(peer)
        return peer


def _run_threads(*targets: Callable[[], None]) -> None:
    """Run each target on its own thread, started together; re-raise the first error after all joined."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(targets))

    def run(target: Callable[[], None]) -> None:
        try:
            barrier.wait(10)
            target()
        except BaseException as e:  # reported on the test's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(target,)) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    if errors:
        raise errors[0]


class TwoNodeTests(PostgresTestCase):
    """Two stores (two nodes) on one database, used at once from threads."""

    def test_concurrent_leases_never_hand_out_the_same_entry(self) -> None:
        """Two nodes settling from two threads until the queue is empty lease every entry exactly once."""
        a, b = self.open_store("node-a"), self.open_store("node-b")
        ids: list[int] = []
        for n in range(40):
            batch = [(make_record(f"i{n}-{k}", study_instance_uid=f"9.{k % 5}"), [NewEntry("r", "A")]) for k in range(10)]
            ids += [i for result in a.add_instances(batch, T0, 0.0) for i in result.entry_ids]
        taken: dict[str, list[int]] = {"node-a": [], "node-b": []}

        def worker(store: PostgresQueueStore) -> None:
            held: list[tuple[int, str]] = []
            generations: dict[int, int] = {}
            while True:
                settled = store.settle("A", held, T0, 3, 3600, generations=generations)
                self.assertEqual(settled.lost, ())
                if not settled.leased:
                    return
                held = [(e.entry_id, "") for e in settled.leased]
                generations = {e.entry_id: e.lease_generation for e in settled.leased}
                taken[store.node] += [e.entry_id for e in settled.leased]
                self.assertEqual({e.lease_owner for e in settled.leased}, {store.node})

        _run_threads(lambda: worker(a), lambda: worker(b))
        everything = taken["node-a"] + taken["node-b"]
        self.assertEqual(sorted(everything), sorted(ids))  # each entry once: none twice, none missed
        self.assertGreater(len(taken["node-a"]), 0)
        self.assertGreater(len(taken["node-b"]), 0)
        self.assertEqual(a.stats(T0)["A"].delivered, len(ids))

    def test_a_node_paused_past_its_lease_cannot_overwrite_the_outcome_of_the_node_that_took_over(self) -> None:
        """Fencing: after node A's lease expired and B re-leased and delivered, A's late writes change nothing."""
        a, b = self.open_store("node-a"), self.open_store("node-b")
        (entry_id,) = self.add(a, "i1")
        (leased,) = a.lease("A", 1, T0, 30)
        self.assertEqual((leased.lease_owner, leased.lease_generation, leased.leased_until), ("node-a", 1, T0 + 30))
        # A is paused (GC, partition); at T0 + 31 its lease has expired and B takes the entry.
        (taken,) = b.lease("A", 1, T0 + 31, 30)
        self.assertEqual((taken.entry_id, taken.lease_owner, taken.lease_generation), (entry_id, "node-b", 2))
        self.assertEqual(taken.last_error, EXPIRED_LEASE_PREFIX + "node-a expired")
        b.complete([entry_id], T0 + 32, generations={entry_id: 2})
        # A wakes up: every write under its old generation is fenced off.
        self.assertEqual(a.renew({entry_id: 1}, T0 + 33, 30), {entry_id})
        self.assertRaises(LeaseLost, a.retry, entry_id, T0 + 60, "A700", T0 + 33, True, 1)
        self.assertRaises(LeaseLost, a.dead_letter, entry_id, "C000", T0 + 33, 1)
        a.complete([entry_id], T0 + 33, "B000", generations={entry_id: 1})
        a.release([entry_id], generations={entry_id: 1})
        self.assertEqual(a.settle("A", [(entry_id, "B000")], T0 + 33, 1, 30, generations={entry_id: 1}).lost, (entry_id,))
        final = a.get(entry_id)
        self.assertEqual((final.state, final.delivered_at, final.last_error), (EntryState.DELIVERED, T0 + 32, ""))

    def test_the_duplicate_window_holds_across_nodes_receiving_at_once(self) -> None:
        """The same instance added by two nodes at the same moment is forwarded once: the other is DUPLICATE."""
        a, b = self.open_store("node-a"), self.open_store("node-b")
        results: dict[str, list[AddResult]] = {"node-a": [], "node-b": []}

        def receive(store: PostgresQueueStore) -> None:
            for n in range(30):
                record = make_record(f"{store.node}-{n}", sop_instance_uid=f"1.2.3.{n}", node=store.node)
                results[store.node].append(store.add_instance(record, [NewEntry("r", "A")], T0, 3600.0))

        _run_threads(lambda: receive(a), lambda: receive(b))
        for n in range(30):
            outcomes = sorted(len(results[node][n].duplicates) for node in ("node-a", "node-b"))
            self.assertEqual(outcomes, [0, 1], n)
        self.assertEqual((a.stats(T0)["A"].queued, a.stats(T0)["A"].duplicates), (30, 30))

    def test_association_slots_have_one_holder_cluster_wide(self) -> None:
        """Four nodes claiming two slots at once from four threads: each slot gets exactly one holder."""
        stores = [self.open_store(f"node-{n}") for n in range(4)]
        held: dict[int, list[str]] = {0: [], 1: []}

        def claim(store: PostgresQueueStore) -> None:
            for slot in (0, 1):
                if store.claim_slot("A", slot, 2, T0, 30):
                    held[slot].append(store.node)

        _run_threads(*(lambda s=s: claim(s) for s in stores))
        self.assertEqual([len(held[0]), len(held[1])], [1, 1])
        # The holder renews; another node gets the slot only once the claim expired.
        holder = next(s for s in stores if s.node == held[0][0])
        other = next(s for s in stores if s.node != held[0][0])
        self.assertTrue(holder.claim_slot("A", 0, 2, T0 + 20, 30))
        self.assertFalse(other.claim_slot("A", 0, 2, T0 + 49, 30))
        self.assertTrue(other.claim_slot("A", 0, 2, T0 + 51, 30))
        self.assertFalse(holder.claim_slot("A", 0, 2, T0 + 52, 30))

    def test_local_only_store_leases_only_what_its_node_received(self) -> None:
        """With node-local spools a node leases only its own instances; another's count as stranded once it is silent."""
        a = self.open_store("node-a", local_only=True)
        b = self.open_store("node-b", local_only=True)
        a.heartbeat(T0, T0)
        b.heartbeat(T0, T0)
        self.add(a, "from-a", node="node-a")
        (from_b,) = self.add(b, "from-b", node="node-b")
        self.assertEqual([e.instance.instance_id for e in a.lease("A", 10, T0, 30)], ["from-a"])
        self.assertEqual(a.stats(T0 + 60)["A"].stranded, 0)
        # node-b stays away: its entry is stranded for node-a after stranded_after seconds.
        self.assertEqual(a.stats(T0 + 200, stranded_after=120)["A"].stranded, 1)
        self.assertEqual([e.entry_id for e in b.lease("A", 10, T0, 30)], [from_b])

    def add(self, store: PostgresQueueStore, instance_id: str, **overrides: Any) -> tuple[int, ...]:
        """Add an instance routed to destination A; return its entry ids."""
        record = make_record(instance_id, **overrides)
        return store.add_instance(record, [NewEntry("r", "A")], T0, 0.0).entry_ids


class SingletonTests(PostgresTestCase):
    """The housekeeping singleton: a session advisory lock that moves when its holder's session ends."""

    def holder_pids(self) -> list[int]:
        """The backends that hold a gateway advisory lock in this test's database."""
        rows = pg.server().admin(
            "SELECT DISTINCT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
            " WHERE l.locktype = 'advisory' AND l.granted AND d.datname = %s AND l.classid = %s",
            (self.database.name, ADVISORY_NAMESPACE),
        )
        return [int(row[0]) for row in rows]

    def holder_pid(self) -> int:
        """The one backend that holds a gateway advisory lock in this test's database."""
        pids = self.holder_pids()
        self.assertEqual(len(pids), 1, pids)
        return pids[0]

    def test_one_holder_at_a_time_and_the_holder_keeps_it(self) -> None:
        """The first node takes the singleton and keeps it on every call; the other is refused."""
        a, b = self.open_store("node-a"), self.open_store("node-b")
        self.assertTrue(a.hold_singleton("housekeeping", T0, 30))
        self.assertFalse(b.hold_singleton("housekeeping", T0, 30))
        self.assertTrue(a.hold_singleton("housekeeping", T0 + 100, 30))  # no expiry: the session holds it
        self.assertFalse(b.hold_singleton("housekeeping", T0 + 100, 30))
        self.assertTrue(b.hold_singleton("retention", T0, 30))  # another name, another lock

    def test_the_singleton_moves_when_the_holders_session_is_terminated(self) -> None:
        """Ending the holder's session (a dead node's, as keepalives would) lets the other node take it; the old holder learns it lost it."""
        a, b = self.open_store("node-a"), self.open_store("node-b")
        self.assertTrue(a.hold_singleton("housekeeping", T0, 30))
        self.assertTrue(pg.server().terminate(self.holder_pid()))
        self.assertTrue(b.hold_singleton("housekeeping", T0 + 1, 30))
        self.assertFalse(a.hold_singleton("housekeeping", T0 + 1, 30))  # its session broke: lost
        self.assertFalse(a.hold_singleton("housekeeping", T0 + 2, 30))  # new session: B holds it now
        b.close()
        self.assertTrue(a.hold_singleton("housekeeping", T0 + 3, 30))  # re-taken on the new session

    def test_every_singleton_of_a_broken_session_reports_its_loss_once(self) -> None:
        """Two singletons on one session: after it breaks each one's next call says False once, then it is taken again."""
        a = self.open_store("node-a")
        self.assertTrue(a.hold_singleton("housekeeping", T0, 30))
        self.assertTrue(a.hold_singleton("retention", T0, 30))
        pg.server().terminate(self.holder_pids()[0])
        self.assertFalse(a.hold_singleton("housekeeping", T0 + 1, 30))  # finds the break
        self.assertFalse(a.hold_singleton("retention", T0 + 1, 30))  # lost on the same session
        self.assertTrue(a.hold_singleton("retention", T0 + 2, 30))
        self.assertTrue(a.hold_singleton("housekeeping", T0 + 2, 30))

    def test_a_stale_session_of_a_node_that_held_nothing_is_replaced(self) -> None:
        """A node whose idle singleton session died (PostgreSQL restarted) takes the singleton on its next call, no error."""
        a, b = self.open_store("node-a"), self.open_store("node-b")
        self.assertTrue(a.hold_singleton("housekeeping", T0, 30))
        self.assertFalse(b.hold_singleton("housekeeping", T0, 30))  # b now has a session too
        for pid, name in pg.server().backends(self.database.name):
            pg.server().terminate(pid)  # every session, a's and b's
        self.assertTrue(b.hold_singleton("housekeeping", T0 + 1, 30))
        self.assertFalse(a.hold_singleton("housekeeping", T0 + 1, 30))

    def test_the_singleton_moves_when_the_holder_closes(self) -> None:
        """A node that stops (store closed) frees the singleton for the next node at once."""
        a, b = self.open_store("node-a"), self.open_store("node-b")
        self.assertTrue(a.hold_singleton("housekeeping", T0, 30))
        self.assertFalse(b.hold_singleton("housekeeping", T0, 30))
        a.close()
        self.assertTrue(b.hold_singleton("housekeeping", T0 + 1, 30))


class MigrationTests(PostgresTestCase):
    """Versioned migrations, run once under the advisory lock."""

    def setUp(self) -> None:
        """An empty database (no schema) instead of the migrated copy."""
        self.database = pg.fresh_database(self, migrated=False)

    def versions(self) -> list[tuple[int, str]]:
        """The rows of ``schema_version``: (version, applied_by)."""
        return [
            (int(row[0]), str(row[1]))
            for row in pg.server().admin(
                "SELECT version, applied_by FROM schema_version ORDER BY version", database=self.database.name
            )
        ]

    def test_two_nodes_starting_together_migrate_once(self) -> None:
        """Two stores opened at once on an empty database both start, and each migration ran exactly once."""
        runs: list[str] = []
        first = pgschema.MIGRATIONS[0]

        def slow_first(conn: Any) -> None:
            # Hold the lock long enough for the other node to be waiting on it.
            runs.append("ran")
            conn.execute("SELECT pg_sleep(0.5)")
            first(conn)

        self.patch(pgschema, "MIGRATIONS", (slow_first, *pgschema.MIGRATIONS[1:]))
        stores: list[PostgresQueueStore] = []
        _run_threads(*(lambda node=node: stores.append(self.open_store(node)) for node in ("node-a", "node-b")))
        self.assertEqual(len(stores), 2)
        self.assertEqual(runs, ["ran"])
        self.assertEqual(len(self.versions()), SCHEMA_VERSION)
        self.assertIn(self.versions()[0][1], ("node-a", "node-b"))
        # Both work on the one schema.
        stores[0].add_instance(make_record("i1"), [NewEntry("r", "A")], T0, 0.0)
        self.assertEqual(stores[1].instance_ids(), {"i1"})

    def test_db_migrate_applies_each_migration_once(self) -> None:
        """``pgschema.migrate`` (``dicom-gateway db migrate``) migrates an empty database, then finds nothing to do."""
        self.assertEqual(pgschema.migrate(self.database.dsn, self.database.password, "cli"), SCHEMA_VERSION)
        self.assertEqual(migrate_database(self.database.dsn, self.database.password, "cli"), 0)
        self.assertEqual(self.versions(), [(v, "cli") for v in range(1, SCHEMA_VERSION + 1)])
        self.open_store().add_instance(make_record("i1"), [NewEntry("r", "A")], T0, 0.0)

    def test_a_newer_schema_is_refused(self) -> None:
        """A database migrated by a newer gateway is refused with SchemaError, not misread."""
        migrate_database(self.database.dsn, self.database.password)
        pg.server().admin(f"INSERT INTO schema_version (version) VALUES ({SCHEMA_VERSION + 1})", database=self.database.name)
        self.assertRaises(SchemaError, PostgresQueueStore, self.database.dsn, "node-a", password=self.database.password)
        self.assertRaises(SchemaError, migrate_database, self.database.dsn, self.database.password)


class ConnectionTests(PostgresTestCase):
    """What every connection of the store is set to: keepalives, timeouts, durable commits."""

    def test_keepalives_are_on_both_ends_of_every_connection(self) -> None:
        """The client socket has keepalives and a user timeout bounded by the statement timeout; the server's end of the session the 25 s bound."""
        store = self.open_store(statement_timeout=8.0)
        self.assertEqual(KEEPALIVE_BOUND, 25)
        with store._pool.connection() as conn:
            sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
            try:
                self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
                self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), 2)
                self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL), 2)
                self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT), 3)
                self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT), 8_000)
            finally:
                sock.close()
            shown = {
                name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
                for name in ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count",
                             "tcp_user_timeout", "statement_timeout", "synchronous_commit")
            }
        self.assertEqual(
            shown,
            {"tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5", "tcp_keepalives_count": "3",
             "tcp_user_timeout": "25000", "statement_timeout": "8s", "synchronous_commit": "on"},
        )

    def test_the_node_never_keeps_a_dead_session_longer_than_the_server(self) -> None:
        """The client's bound is the statement timeout, capped at the server's 25 s, and never under a second."""
        self.assertEqual(client_keepalives(10.0)["tcp_user_timeout"], 10_000)
        self.assertEqual(client_keepalives(120.0)["tcp_user_timeout"], KEEPALIVE_BOUND * 1000)
        self.assertEqual(client_keepalives(0.2), {
            "keepalives": 1, "keepalives_idle": 1, "keepalives_interval": 1, "keepalives_count": 3,
            "tcp_user_timeout": 1000,
        })

    def test_the_singleton_session_has_keepalives_too(self) -> None:
        """The dedicated session that holds the advisory locks ends within the keepalive bound as well."""
        store = self.open_store()
        store.hold_singleton("housekeeping", T0, 30)
        conn = store._singleton_conn
        assert conn is not None
        self.assertEqual(conn.execute("SHOW tcp_keepalives_idle").fetchone(), ("10",))
        sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
        try:
            self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT), 10_000)
        finally:
            sock.close()

    def test_synchronous_commit_off_is_overridden_and_stronger_settings_kept(self) -> None:
        """A database default of synchronous_commit=off is set back on; remote_apply (replicas) is left as is."""
        admin = pg.server().admin
        admin(f"ALTER DATABASE {self.database.name} SET synchronous_commit = off")
        with self.open_store()._pool.connection() as conn:
            self.assertEqual(conn.execute("SHOW synchronous_commit").fetchone(), ("on",))
        admin(f"ALTER DATABASE {self.database.name} SET synchronous_commit = remote_apply")
        with self.open_store("node-b")._pool.connection() as conn:
            self.assertEqual(conn.execute("SHOW synchronous_commit").fetchone(), ("remote_apply",))


class PasswordTests(PostgresTestCase):
    """The password never shows: not in str(store), not in errors, not in logs."""

    def test_str_and_repr_show_the_dsn_without_the_password(self) -> None:
        """str and repr name the node and DSN, without the password argument or one written in the DSN."""
        store = self.open_store()
        for shown in (str(store), repr(store)):
            self.assertIn("node-a", shown)
            self.assertIn(self.database.name, shown)
            self.assertNotIn(self.database.password, shown)
        in_dsn = PostgresQueueStore(self.database.dsn + f" password={self.database.password}", "node-b")
        self.addCleanup(in_dsn.close)
        self.assertNotIn(self.database.password, str(in_dsn))
        self.assertNotIn(self.database.password, safe_dsn(f"postgresql://gateway:{self.database.password}@127.0.0.1/x"))

    def test_a_malformed_dsn_is_refused_without_echoing_it(self) -> None:
        """A DSN libpq cannot parse is a ValueError whose message does not quote the DSN (it may hold the password)."""
        broken = f"host=127.0.0.1 password {self.database.password}"
        with self.assertRaises(ValueError) as caught:
            PostgresQueueStore(broken, "node-a")
        self.assertNotIn(self.database.password, str(caught.exception))
        self.assertEqual(safe_dsn(broken), "<unparsable dsn>")

    def test_a_wrong_password_is_refused_without_showing_it(self) -> None:
        """Authentication failure at start is StoreUnavailable, and the password tried is not in its message."""
        wrong = "not-the-password-" + self.database.password[:6]
        with self.assertRaises(StoreUnavailable) as caught:
            PostgresQueueStore(self.database.dsn, "node-a", password=wrong, connect_timeout=1.0)
        self.assertIn("127.0.0.1", str(caught.exception))
        self.assertNotIn(wrong, str(caught.exception))


class UnavailableTests(PostgresTestCase):
    """PostgreSQL stopped: StoreUnavailable (without the password); started again: the same store works."""

    def test_store_unavailable_while_stopped_and_working_again_after_restart(self) -> None:
        """Every call fails with StoreUnavailable while the server is down; after it restarts the pool reconnects."""
        server = pg.server()
        self.addCleanup(server.start)  # never leave the next test without a server
        store = self.open_store(connect_timeout=1.0)
        (entry_id,) = store.add_instance(make_record("i1"), [NewEntry("r", "A")], T0, 0.0).entry_ids
        records = _capture_logs(self)
        server.stop()
        for call in (
            lambda: store.add_instance(make_record("i2"), [NewEntry("r", "A")], T0, 0.0),
            lambda: store.lease("A", 1, T0, 30),
            lambda: store.stats(T0),
        ):
            with self.assertRaises(StoreUnavailable) as caught:
                call()
            self.assertNotIn(self.database.password, str(caught.exception))
            self.assertIn(self.database.name, str(caught.exception))
        server.start()
        (leased,) = store.lease("A", 1, T0, 30)
        self.assertEqual(leased.entry_id, entry_id)
        store.complete([entry_id], T0 + 1)
        self.assertEqual(store.stats(T0)["A"].delivered, 1)
        self.assertEqual(store.instance_ids(), {"i1"})  # the failed add left nothing
        self.assertTrue(records)  # the pool did log its failed reconnections
        for record in records:
            self.assertNotIn(self.database.password, record.getMessage())

    def test_a_statement_past_the_statement_timeout_is_store_unavailable(self) -> None:
        """A call that waits on a lock longer than statement_timeout fails with StoreUnavailable, and the store goes on working."""
        import psycopg

        store = self.open_store(statement_timeout=1.0)
        store.add_instance(make_record("i1"), [NewEntry("r", "A")], T0, 0.0)
        with psycopg.connect(pg.server().admin_dsn(self.database.name)) as blocker:
            blocker.execute("LOCK TABLE entries IN ACCESS EXCLUSIVE MODE")  # held until this transaction ends
            with self.assertRaises(StoreUnavailable) as caught:
                store.recover(T0)
            self.assertIn("statement timeout", str(caught.exception))
        self.assertEqual(store.recover(T0), 0)

    def test_an_interrupted_session_is_replaced_without_an_error(self) -> None:
        """A pooled session ended by the server (restart, failover) is checked and replaced before use."""
        store = self.open_store(pool_min=2)
        store.stats(T0)
        for pid, _ in pg.server().backends(self.database.name):
            pg.server().terminate(pid)
        self.assertEqual(store.stats(T0), {})  # a transaction: BEGIN found the session dead
        for pid, _ in pg.server().backends(self.database.name):
            pg.server().terminate(pid)
        self.assertEqual(store.instance_ids(), set())  # one statement, outside a transaction

    def test_the_pipelined_and_single_statement_paths_replace_an_interrupted_session(self) -> None:
        """The hot paths send no BEGIN of their own to find a dead session: each checks the socket and replaces it."""
        store = self.open_store(pool_min=2)
        records = _capture_logs(self)

        def interrupt() -> None:
            for pid, _ in pg.server().backends(self.database.name):
                pg.server().terminate(pid)

        store.stats(T0)
        interrupt()
        (entry_id,) = store.add_instance(make_record("i1"), [NewEntry("r", "A")], T0, 60.0).entry_ids  # pipelined
        interrupt()
        (leased,) = store.settle("A", [], T0, 1, 30.0).leased  # pipelined
        self.assertEqual((leased.entry_id, leased.lease_owner), (entry_id, "node-a"))
        interrupt()
        self.assertEqual(store.renew({entry_id: leased.lease_generation}, T0, 30.0), set())  # one statement
        interrupt()
        self.assertTrue(store.claim_slot("A", 0, 1, T0, 30.0))  # one statement
        interrupt()
        store.heartbeat(T0, T0)  # one statement
        interrupt()
        settled = store.settle("A", [(entry_id, "")], T0, 1, 30.0, generations={entry_id: leased.lease_generation})
        self.assertEqual((settled.leased, settled.lost), ((), ()))
        self.assertEqual(store.get(entry_id).state, EntryState.DELIVERED)
        # The pool notes each session it discards; nothing else may complain (a pipeline left in error).
        noted = [r.getMessage() for r in records if r.levelno >= logging.WARNING and r.name != "psycopg.pool"]
        self.assertEqual(noted, [])


def _capture_logs(case: SynchronousTestCase) -> list[logging.LogRecord]:
    """Collect every standard-library log record (any logger, any level) until the test ends."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(logging.DEBUG)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)

    def restore() -> None:
        root.removeHandler(handler)
        root.setLevel(previous)

    case.addCleanup(restore)
    return records


class SignatureParityTests(SynchronousTestCase):
    """PostgresQueueStore exposes every IQueueStore method with the fake's parameters (assertArgSpecMatches)."""

    def test_every_interface_method_has_the_fakes_signature(self) -> None:
        """Each IQueueStore method has the same inspect.signature as MemoryQueueStore's."""
        names = sorted(IQueueStore.names())
        self.assertIn("hold_singleton", names)
        for name in names:
            if name == "node":
                continue
            self.assertEqual(
                inspect.signature(getattr(PostgresQueueStore, name)),
                inspect.signature(getattr(MemoryQueueStore, name)),
                name,
            )

    def test_signatures_match_the_interface(self) -> None:
        """Each method's parameter names and defaults are the interface's (after self)."""
        for name in IQueueStore.names():
            if name == "node":
                continue
            spec = IQueueStore[name].getSignatureInfo()
            parameters = inspect.signature(getattr(PostgresQueueStore, name)).parameters
            self.assertEqual(list(parameters)[1:], list(spec["positional"]), name)
            self.assertEqual(
                dict(spec["optional"]),
                {p.name: p.default for p in parameters.values() if p.default is not inspect.Parameter.empty},
                name,
            )


class FixtureTests(PostgresTestCase):
    """The test PostgreSQL is what the tests claim: unprivileged, durable, password-checked."""

    def test_the_server_runs_unprivileged_with_fsync_on(self) -> None:
        """The postmaster does not run as root, and fsync and synchronous_commit are on (custody)."""
        server = pg.server()
        assert server._process is not None
        with open(f"/proc/{server._process.pid}/status") as status:
            uid = next(int(line.split()[1]) for line in status if line.startswith("Uid:"))
        self.assertNotEqual(uid, 0)
        self.assertEqual(os.stat(server.data).st_uid, uid)
        self.assertEqual(server.admin("SHOW fsync"), [("on",)])
        self.assertEqual(server.admin("SHOW synchronous_commit"), [("on",)])

    def test_the_test_role_needs_its_password_over_tcp(self) -> None:
        """The store's role logs in over TCP with scram: no password, no connection."""
        import psycopg

        self.assertRaises(psycopg.OperationalError, psycopg.connect, self.database.dsn, connect_timeout=5)
        with psycopg.connect(self.database.dsn, password=self.database.password, connect_timeout=5) as conn:
            self.assertEqual(conn.execute("SELECT current_user").fetchone(), (pg.ROLE,))


class VerifiedFakeTests(PostgresTestCase):
    """Random operation sequences give the same results and state on PostgreSQL as on the in-memory fake.

    Fewer examples than the SQLite comparison (each operation is a few
    round trips to a server); the same generators and observations.
    """

    def empty_stores(self, *nodes: tuple[str, bool]) -> list[PostgresQueueStore]:
        """Close the stores of the previous example, empty the tables, open one store per ``(node, local_only)``."""
        opened: list[PostgresQueueStore] = self.__dict__.setdefault("_opened", [])
        for old in opened:
            old.close()
        opened.clear()
        pg.server().admin(
            "TRUNCATE entries, instances, plans, destinations, slots, nodes RESTART IDENTITY", database=self.database.name
        )
        for node, local_only in nodes:
            opened.append(self.open_store(node, local_only=local_only))
        return list(opened)

    @settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(test_store._OPERATIONS, min_size=10, max_size=30))
    def test_random_operations_agree(self, operations: list[tuple[Any, ...]]) -> None:
        """After each operation the fake and PostgreSQL returned the same thing and look the same."""
        (real,) = self.empty_stores(("node", False))
        memory = MemoryQueueStore()
        counters = ([0], [0])
        for op in operations:
            self.assertEqual(test_store._apply(memory, op, counters[0]), test_store._apply(real, op, counters[1]), op)
            self.assertEqual(test_store._observe(memory), test_store._observe(real), op)

    @settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.lists(
            # The singleton is a timed lease in the fake and a session lock here: compared in SingletonTests.
            st.tuples(st.integers(0, 1), test_store._NODE_OPERATIONS.filter(lambda op: op[0] != "singleton")),
            min_size=10,
            max_size=30,
        )
    )
    def test_random_operations_of_two_nodes_agree(self, operations: list[tuple[int, tuple[Any, ...]]]) -> None:
        """Two nodes (one node-local) on one queue: after each operation, through either node, the fake and PostgreSQL agree."""
        reals = tuple(self.empty_stores(("n1", False), ("n2", True)))
        memory = MemoryQueueStore("n1")
        fakes = (memory, memory.peer("n2", local_only=True))
        counters = ([0], [0])
        for who, op in operations:
            self.assertEqual(
                test_store._apply_node(fakes[who], op, counters[0]),
                test_store._apply_node(reals[who], op, counters[1]),
                (who, op),
            )
            self.assertEqual(test_store._observe_nodes(fakes), test_store._observe_nodes(reals), (who, op))
