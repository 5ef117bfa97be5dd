"""The retrieve journal (issue 16) on a real PostgreSQL.

``PostgresRetrieveTests`` runs the ``RetrieveJournalTests`` mixin (the one
the SQLite store and the in-memory fake pass) on
:class:`~gateway.queue.postgres.PostgresQueueStore`; the other classes pin
what only PostgreSQL does: two nodes opening retrieves from two threads at
once never hold one message ID (the counter row locked ``FOR UPDATE``),
schema version 3 migrated from a version-2 database keeping its data, and
StoreUnavailable when the database is away.
"""

from __future__ import annotations

import inspect
import threading

from gateway.queue import pgschema
from gateway.queue.commitments import TransactionState
from gateway.queue.interfaces import EntryState, StoreUnavailable
from gateway.queue.memory import MemoryQueueStore
from gateway.queue.postgres import PostgresQueueStore
from gateway.queue.retrieves import IRetrieveJournal, RetrieveIdsExhausted, RetrieveState
from tests.adapters.test_postgres_store import PostgresTestCase
from tests.support import postgres as pg
from tests.unit.queue.test_commitments import new_transaction
from tests.unit.queue.test_retrieves import RetrieveJournalTests, journal_methods, new_retrieve, refs
from tests.unit.queue.test_store import T0, make_record


class PostgresRetrieveTests(RetrieveJournalTests, PostgresTestCase):
    """The shared retrieve journal mixin on PostgreSQL."""

    def make_store(self) -> PostgresQueueStore:
        """A store for node ``"node"`` on this test's fresh database."""
        return PostgresQueueStore(self.database.dsn, "node", password=self.database.password)

    def make_peer(self, store: PostgresQueueStore, node: str) -> PostgresQueueStore:
        """A second store (its own pool: another node) on the same database."""
        assert self.database.name in str(store)
        return PostgresQueueStore(self.database.dsn, node, password=self.database.password)


class ConcurrentMessageIdTests(PostgresTestCase):
    """Two nodes allocating outgoing message IDs at once, each from its own thread."""

    def test_concurrent_opens_never_share_an_open_message_id(self) -> None:
        """Two nodes opening and finishing retrieves from two threads never hold one ID at once, and every open succeeds."""
        a, b = self.open_store("node-a"), self.open_store("node-b")
        opened: list[tuple[int, int]] = []
        errors: list[BaseException] = []
        barrier = threading.Barrier(2)

        def worker(store: PostgresQueueStore) -> None:
            try:
                barrier.wait(10)
                for n in range(40):
                    r = store.open_retrieve(new_retrieve(expected=refs(n)), T0 + n)
                    opened.append((r.retrieve_id, r.message_id))
                    if n % 2:  # half stay open: the other node must skip their IDs
                        store.finish_retrieve(r.retrieve_id, RetrieveState.DONE, "", T0 + n)
            except BaseException as e:  # reported on the test's thread
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(store,)) for store in (a, b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        self.assertEqual(errors, [])
        self.assertEqual(len(opened), 80)
        still_open = a.retrieves(RetrieveState.OPEN)
        self.assertEqual(len(still_open), 40)
        self.assertEqual(len({r.message_id for r in still_open}), 40)
        self.assertEqual({r.node for r in still_open}, {"node-a", "node-b"})

    def test_concurrent_opens_up_to_exhaustion_hand_out_each_id_once(self) -> None:
        """Two nodes racing for 30 IDs (none finished) get 30 distinct IDs between them, then RetrieveIdsExhausted."""
        a, b = self.open_store("node-a"), self.open_store("node-b")
        a.max_message_id = b.max_message_id = 30
        got: list[int] = []
        exhausted: list[str] = []
        errors: list[BaseException] = []
        barrier = threading.Barrier(2)

        def worker(store: PostgresQueueStore) -> None:
            try:
                barrier.wait(10)
                while True:
                    try:
                        got.append(store.open_retrieve(new_retrieve(), T0).message_id)
                    except RetrieveIdsExhausted:
                        exhausted.append(store.node)
                        return
            except BaseException as e:  # reported on the test's thread
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(store,)) for store in (a, b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        self.assertEqual(errors, [])
        self.assertEqual(sorted(got), list(range(1, 31)))
        self.assertEqual(sorted(exhausted), ["node-a", "node-b"])


class RetrieveMigrationTests(PostgresTestCase):
    """Schema version 3 on a database that was at version 2 (issue 15's schema)."""

    def setUp(self) -> None:
        """An empty database (no schema)."""
        self.database = pg.fresh_database(self, migrated=False)

    def test_version_2_database_migrates_keeping_its_data(self) -> None:
        """A database at version 2 with an entry and a commitment transaction reaches version 3 on open: the data kept, the retrieve tables usable."""
        import psycopg

        record = make_record("i1", sop_instance_uid="2.25.42")
        with psycopg.connect(self.database.dsn, password=self.database.password, autocommit=True) as conn:
            self.assertEqual(pgschema.apply_migrations(conn, "old", pgschema.MIGRATIONS[:2]), 2)
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
            txn = new_transaction("2.25.7")
            conn.execute(
                "INSERT INTO commitment_transactions (transaction_uid, calling_ae_title, called_ae_title, modality,"
                " listener, policy, refs, deadline, report_deadline, lookback_from, unrouted, report_association,"
                " requested_at, node, state, next_attempt_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'fail',"
                " 'new', %s, 'old', 'open', %s)",
                (txn.transaction_uid, txn.calling_ae_title, txn.called_ae_title, txn.modality, txn.listener, txn.policy,
                 '[["1.2","2.25.42"]]', txn.deadline, txn.report_deadline, txn.lookback_from, T0, T0),
            )
            self.assertEqual(pgschema.schema_version(conn), 2)
        store = self.open_store("new")
        with psycopg.connect(self.database.dsn, password=self.database.password, autocommit=True) as conn:
            self.assertEqual(pgschema.schema_version(conn), pgschema.SCHEMA_VERSION)
        self.assertGreaterEqual(pgschema.SCHEMA_VERSION, 3)
        (entry,) = store.entries()
        self.assertEqual((entry.state, entry.instance.instance_id), (EntryState.QUEUED, "i1"))
        kept = store.get_transaction("2.25.7")
        self.assertEqual((kept.node, kept.state, kept.request.references[0].sop_instance_uid), ("old", TransactionState.OPEN, "2.25.42"))
        r = store.open_retrieve(new_retrieve(expected=refs(1)), T0)
        self.assertEqual((r.message_id, store.get_retrieve(r.retrieve_id).state), (1, RetrieveState.OPEN))
        store.link_item(r.retrieve_id, r.request.expected[0].sop_instance_uid, entry.entry_id, T0)
        self.assertEqual(store.progress(r.retrieve_id).remaining, 1)

    def test_db_migrate_creates_the_retrieve_tables(self) -> None:
        """``pgschema.migrate`` (``dicom-gateway db migrate``) on an empty database makes every retrieve table and the counter row."""
        self.assertEqual(pgschema.migrate(self.database.dsn, self.database.password, "cli"), pgschema.SCHEMA_VERSION)
        tables = {
            row[0]
            for row in pg.server().admin(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'", database=self.database.name
            )
        }
        self.assertLessEqual({"retrieves", "retrieve_items", "retrieve_counters", "remapped_uids"}, tables)
        counters = pg.server().admin("SELECT name, value FROM retrieve_counters", database=self.database.name)
        self.assertEqual([tuple(row) for row in counters], [("message_id", 0)])


class RetrieveUnavailableTests(PostgresTestCase):
    """The retrieve journal's calls raise StoreUnavailable when PostgreSQL is away, like the queue's."""

    def test_store_unavailable_while_stopped_and_working_again_after_restart(self) -> None:
        """Reads and writes of the journal fail with StoreUnavailable (no password shown) while the server is down, and work after it restarts."""
        server = pg.server()
        self.addCleanup(server.start)  # never leave the next test without a server
        store = self.open_store(connect_timeout=1.0)
        first = store.open_retrieve(new_retrieve(), T0)
        server.stop()
        for call in (
            lambda: store.open_retrieve(new_retrieve(), T0),
            lambda: store.match_sub_operation(first.message_id, "2.25.1"),
            lambda: store.progress(first.retrieve_id),
            lambda: store.remember_uids([("2.25.1", "1.2.3")], T0),
            lambda: store.original_uids(["2.25.1"]),
        ):
            with self.assertRaises(StoreUnavailable) as caught:
                call()
            self.assertNotIn(self.database.password, str(caught.exception))
        server.start()
        second = store.open_retrieve(new_retrieve(), T0)
        self.assertEqual(second.message_id, 2)  # the failed open allocated nothing
        self.assertEqual(len(store.retrieves(RetrieveState.OPEN)), 2)


class RetrieveSignatureParityTests(PostgresTestCase):
    """PostgresQueueStore exposes every IRetrieveJournal method with the fake's parameters."""

    def test_every_journal_method_has_the_fakes_signature(self) -> None:
        """Each IRetrieveJournal method has the same inspect.signature as MemoryQueueStore's."""
        names = journal_methods()
        self.assertIn("open_retrieve", names)
        for name in names:
            self.assertEqual(
                inspect.signature(getattr(PostgresQueueStore, name)), inspect.signature(getattr(MemoryQueueStore, name)), name
            )
        self.assertTrue(IRetrieveJournal.implementedBy(PostgresQueueStore))
