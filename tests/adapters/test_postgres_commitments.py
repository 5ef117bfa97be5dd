"""The commitment journal (issue 15) on a real PostgreSQL.

``PostgresCommitmentTests`` runs the ``CommitmentJournalTests`` mixin (the
one the SQLite store and the in-memory fake pass) on
:class:`~gateway.queue.postgres.PostgresQueueStore`; the other classes pin
what only PostgreSQL does: two nodes leasing transactions from two threads
at once (``FOR UPDATE SKIP LOCKED``), schema version 2 migrated from a
version-1 database keeping its data, and StoreUnavailable when the
database is away.
"""

from __future__ import annotations

import inspect
import threading

from gateway.queue import pgschema
from gateway.queue.commitments import ICommitmentJournal, TransactionState
from gateway.queue.interfaces import EntryState, StoreUnavailable
from gateway.queue.memory import MemoryQueueStore
from gateway.queue.postgres import PostgresQueueStore
from tests.adapters.test_postgres_store import PostgresTestCase
from tests.support import postgres as pg
from tests.unit.queue.test_commitments import CommitmentJournalTests, journal_methods, new_transaction
from tests.unit.queue.test_store import T0, make_record


class PostgresCommitmentTests(CommitmentJournalTests, PostgresTestCase):
    """The shared commitment journal mixin on PostgreSQL."""

    def make_store(self) -> PostgresQueueStore:
        """A store for node ``"node"`` on this test's fresh database."""
        return PostgresQueueStore(self.database.dsn, "node", password=self.database.password)

    def make_peer(self, store: PostgresQueueStore, node: str) -> PostgresQueueStore:
        """A second store (its own pool: another node) on the same database."""
        assert self.database.name in str(store)
        return PostgresQueueStore(self.database.dsn, node, password=self.database.password)


class ConcurrentTransactionLeaseTests(PostgresTestCase):
    """Two nodes leasing transactions at once, each from its own thread."""

    def test_concurrent_leases_never_hand_out_the_same_transaction(self) -> None:
        """Two nodes leasing and reporting from two threads until none is left report each transaction exactly once."""
        a, b = self.open_store("node-a"), self.open_store("node-b")
        for n in range(60):
            a.add_transaction(new_transaction(f"2.25.{n}"), T0)
        taken: dict[str, list[str]] = {"node-a": [], "node-b": []}
        errors: list[BaseException] = []
        barrier = threading.Barrier(2)

        def worker(store: PostgresQueueStore) -> None:
            try:
                barrier.wait(10)
                while True:
                    leased = store.lease_transactions(T0, 3, 3600)
                    if not leased:
                        return
                    for txn in leased:
                        store.transaction_reported(txn.transaction_uid, T0, txn.lease_generation)
                        taken[store.node].append(txn.transaction_uid)
            except BaseException as e:  # reported on the test's thread
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(store,)) for store in (a, b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        self.assertEqual(errors, [])
        everything = taken["node-a"] + taken["node-b"]
        self.assertEqual(sorted(everything), sorted(f"2.25.{n}" for n in range(60)))
        self.assertEqual(a.transaction_stats(T0).reported, 60)


class ConcurrentAddTests(PostgresTestCase):
    """The same N-ACTION journaled by two nodes at once (a requester retrying through a load balancer)."""

    def test_one_transaction_uid_added_twice_at_once_is_created_once(self) -> None:
        """Two nodes adding the same Transaction UID from two threads: one creates it, the other gets it back not created."""
        stores = (self.open_store("node-a"), self.open_store("node-b"))
        results: list[bool] = []
        errors: list[BaseException] = []
        barrier = threading.Barrier(2)

        def add(store: PostgresQueueStore, n: int) -> None:
            try:
                barrier.wait(10)
                for k in range(20):
                    results.append(store.add_transaction(new_transaction(f"2.25.{k}"), T0 + n)[1])
            except BaseException as e:  # reported on the test's thread
                errors.append(e)

        threads = [threading.Thread(target=add, args=(store, n)) for n, store in enumerate(stores)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        self.assertEqual(errors, [])
        self.assertEqual(sorted(results), [False] * 20 + [True] * 20)
        self.assertEqual(len(stores[0].transactions()), 20)


class CommitmentMigrationTests(PostgresTestCase):
    """Schema version 2 on a database that was at version 1 (issue 14's schema)."""

    def setUp(self) -> None:
        """An empty database (no schema)."""
        self.database = pg.fresh_database(self, migrated=False)

    def test_version_1_database_migrates_keeping_its_data(self) -> None:
        """A database at version 1 with an instance and its entry reaches version 2 on open: the data kept, the new tables usable."""
        import psycopg

        record = make_record("i1", sop_instance_uid="2.25.42")
        with psycopg.connect(self.database.dsn, password=self.database.password, autocommit=True) as conn:
            self.assertEqual(pgschema.apply_migrations(conn, "old", pgschema.MIGRATIONS[:1]), 1)
            conn.execute(
                "INSERT INTO instances (instance_id, path, sop_class_uid, sop_instance_uid, transfer_syntax_uid, size,"
                " sha256, received_at, correlation_id, node) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 'old')",
                (record.instance_id, record.path, record.sop_class_uid, record.sop_instance_uid,
                 record.transfer_syntax_uid, record.size, record.sha256, record.received_at, record.correlation_id),
            )
            conn.execute(
                "INSERT INTO entries (instance_id, route, destination, state, enqueued_at, next_attempt_at, study_hash)"
                " VALUES ('i1', 'r', 'A', 'queued', %s, %s, 0)",
                (T0, T0),
            )
            self.assertEqual(pgschema.schema_version(conn), 1)
        store = self.open_store("new")
        with psycopg.connect(self.database.dsn, password=self.database.password, autocommit=True) as conn:
            self.assertEqual(pgschema.schema_version(conn), pgschema.SCHEMA_VERSION)
        self.assertGreaterEqual(pgschema.SCHEMA_VERSION, 3)  # later versions (4: retrieve clean-up) keep this data too
        (entry,) = store.entries()
        self.assertEqual((entry.state, entry.instance.instance_id), (EntryState.QUEUED, "i1"))
        (found,) = store.received(["2.25.42"], T0)["2.25.42"]
        self.assertEqual([e.entry_id for e in found.entries], [entry.entry_id])
        txn, created = store.add_transaction(new_transaction("2.25.7"), T0)
        self.assertEqual((created, txn.state), (True, TransactionState.OPEN))

    def test_db_migrate_creates_the_commitment_tables(self) -> None:
        """``pgschema.migrate`` (``dicom-gateway db migrate``) on an empty database makes every commitment table."""
        self.assertEqual(pgschema.migrate(self.database.dsn, self.database.password, "cli"), pgschema.SCHEMA_VERSION)
        tables = {
            row[0]
            for row in pg.server().admin(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'", database=self.database.name
            )
        }
        self.assertLessEqual(
            {"commitment_transactions", "commitment_attempts", "unforwarded", "copy_commitments", "commitment_requests"},
            tables,
        )


class CommitmentUnavailableTests(PostgresTestCase):
    """The commitment journal's calls raise StoreUnavailable when PostgreSQL is away, like the queue's."""

    def test_store_unavailable_while_stopped_and_working_again_after_restart(self) -> None:
        """Reads and writes of the journal fail with StoreUnavailable (no password shown) while the server is down, and work after it restarts."""
        server = pg.server()
        self.addCleanup(server.start)  # never leave the next test without a server
        store = self.open_store(connect_timeout=1.0)
        store.add_transaction(new_transaction("2.25.1"), T0)
        server.stop()
        for call in (
            lambda: store.add_transaction(new_transaction("2.25.2"), T0),
            lambda: store.lease_transactions(T0, 10, 30),
            lambda: store.received(["2.25.1"], T0),
            lambda: store.transaction_stats(T0),
            lambda: store.note_copies([(1, "A", "1.2", "2.25.3")], T0),
        ):
            with self.assertRaises(StoreUnavailable) as caught:
                call()
            self.assertNotIn(self.database.password, str(caught.exception))
        server.start()
        (txn,) = store.lease_transactions(T0, 10, 30)
        self.assertEqual(txn.transaction_uid, "2.25.1")
        self.assertEqual(store.transaction_stats(T0).open, 1)  # the failed add left nothing


class CommitmentSignatureParityTests(PostgresTestCase):
    """PostgresQueueStore exposes every ICommitmentJournal method with the fake's parameters."""

    def test_every_journal_method_has_the_fakes_signature(self) -> None:
        """Each ICommitmentJournal method has the same inspect.signature as MemoryQueueStore's."""
        names = journal_methods()
        self.assertIn("lease_transactions", names)
        for name in names:
            self.assertEqual(
                inspect.signature(getattr(PostgresQueueStore, name)), inspect.signature(getattr(MemoryQueueStore, name)), name
            )
        self.assertTrue(ICommitmentJournal.implementedBy(PostgresQueueStore))

