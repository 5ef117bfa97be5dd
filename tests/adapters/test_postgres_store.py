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

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from gateway.queue.postgres import PostgresQueueStore
from tests.support import postgres as pg
from tests.unit.queue.test_store import QueueStoreTests

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
        """A fresh store on a fresh database (the mixin closes it)."""
        database = pg.fresh_database(self)
        return PostgresQueueStore(database.dsn, "node-a", password=database.password)
