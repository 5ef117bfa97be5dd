"""The retrieve journal's clean-up (issue 16) on a real PostgreSQL.

``PostgresRetrieveCleanupTests`` runs the ``RetrieveCleanupTests`` mixin (the
one the SQLite store and the fake pass) on
:class:`~gateway.queue.postgres.PostgresQueueStore`;
``CleanupMigrationTests`` takes a version-3 database with a finished retrieve
and a remapped UID to version 4.
"""

from __future__ import annotations

from gateway.queue import pgschema
from gateway.queue.postgres import PostgresQueueStore
from gateway.queue.retrieves import ItemState, RetrievePurge, RetrieveState
from tests.adapters.test_postgres_store import PostgresTestCase
from tests.support import postgres as pg
from tests.unit.queue.test_retrieve_cleanup import RetrieveCleanupTests
from tests.unit.queue.test_retrieves import new_retrieve
from tests.unit.queue.test_store import T0


class PostgresRetrieveCleanupTests(RetrieveCleanupTests, PostgresTestCase):
    """The shared clean-up mixin on PostgreSQL."""

    def make_store(self) -> PostgresQueueStore:
        """A store for node ``"node"`` on this test's fresh database."""
        return PostgresQueueStore(self.database.dsn, "node", password=self.database.password)


class CleanupMigrationTests(PostgresTestCase):
    """Schema version 4 on a database that was at version 3 (the Query/Retrieve tables without clean-up)."""

    def setUp(self) -> None:
        """An empty database (no schema)."""
        self.database = pg.fresh_database(self, migrated=False)

    def test_version_3_database_migrates_keeping_retrieves_and_remapped_uids(self) -> None:
        """A version-3 database with a finished retrieve and a remapped UID reaches version 4 on open: both kept, both purgeable, new retrieves work."""
        import psycopg

        with psycopg.connect(self.database.dsn, password=self.database.password, autocommit=True) as conn:
            self.assertEqual(pgschema.apply_migrations(conn, "old", pgschema.MIGRATIONS[:3]), 3)
            conn.execute(
                "INSERT INTO retrieves (kind, requester_ae_title, listener, requester_message_id, destination, mode, level,"
                " sources, refs, deadline, message_id, node, state, created_at, finished_at) VALUES"
                " ('move', 'VIEWER', 'main', 3, 'viewer', 'relay', 'STUDY', '[\"a\"]', '[[\"1.2\",\"2.25.5\"]]', %s, 4,"
                " 'old', 'done', %s, %s)",
                (T0 + 60, T0, T0 + 5),
            )
            (rid,) = conn.execute("SELECT retrieve_id FROM retrieves").fetchone()
            conn.execute(
                "INSERT INTO retrieve_items (retrieve_id, seq, sop_class_uid, sop_instance_uid, state, updated_at)"
                " VALUES (%s, 0, '1.2', '2.25.5', 'completed', %s)",
                (rid, T0 + 4),
            )
            conn.execute(
                "INSERT INTO remapped_uids (remapped, original, remembered_at) VALUES ('2.25.77', '2.25.5', %s)", (T0,)
            )
            self.assertEqual(pgschema.schema_version(conn), 3)
        store = self.open_store("new")
        with psycopg.connect(self.database.dsn, password=self.database.password, autocommit=True) as conn:
            self.assertEqual(pgschema.schema_version(conn), pgschema.SCHEMA_VERSION)
            self.assertEqual(conn.execute("SELECT last_used_at FROM remapped_uids").fetchall(), [(T0,)])
            indexes = {row[0] for row in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}
        self.assertEqual(pgschema.SCHEMA_VERSION, 5)
        self.assertLessEqual({"retrieves_finished", "remapped_uids_last_used"}, indexes)
        kept = store.get_retrieve(rid)
        self.assertEqual((kept.state, kept.finished_at, kept.node), (RetrieveState.DONE, T0 + 5, "old"))
        self.assertEqual([i.state for i in store.retrieve_items(rid)], [ItemState.COMPLETED])
        self.assertEqual(dict(store.original_uids(["2.25.77"])), {"2.25.77": "2.25.5"})
        self.assertEqual(store.purge_remapped_uids(T0, 10), 0)
        self.assertEqual(store.purge_remapped_uids(T0 + 1, 10), 1)
        self.assertEqual(store.purge_retrieves(T0 + 6, 10), RetrievePurge(retrieves=1, items=1))
        r = store.open_retrieve(new_retrieve(), T0 + 10)
        self.assertEqual(r.state, RetrieveState.OPEN)
