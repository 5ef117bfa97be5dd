"""The console's store reads (issue 18) on PostgreSQL: the shared ``ConsoleQueryTests`` mixin against a real server."""

from __future__ import annotations

from gateway.queue.postgres import PostgresQueueStore
from tests.adapters.test_postgres_store import PostgresTestCase
from tests.unit.queue.test_console_queries import ConsoleQueryTests


class PostgresConsoleQueryTests(ConsoleQueryTests, PostgresTestCase):
    """The mixin on this test's fresh PostgreSQL database (strpos, FLOOR before the integer cast, ANY lists)."""

    def make_store(self) -> PostgresQueueStore:
        """A store for node ``"node"`` on this test's database."""
        return PostgresQueueStore(self.database.dsn, "node", password=self.database.password)
