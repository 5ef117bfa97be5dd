"""``dicom-gateway db migrate`` and the queue commands against a real PostgreSQL (issue 14).

The configuration names the test database (:mod:`tests.support.postgres`)
with its DSN and a private password file, as an operator's would; the
commands run in-process (:func:`gateway.cli.main`) with their output captured,
so the tests can also check that the password is never printed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os

from twisted.trial.unittest import SynchronousTestCase

from gateway import cli
from gateway.config.load import load_config
from gateway.queue import pgschema
from gateway.queue.interfaces import NewEntry
from gateway.stores import open_store
from tests.support import postgres as pg
from tests.unit.queue.test_store import make_record

_SKIP = pg.skip_reason()


class DbMigrateTests(SynchronousTestCase):
    """``db migrate`` creates the schema once, under the lock; the other commands then use the same database."""

    if _SKIP:
        skip = _SKIP

    def setUp(self) -> None:
        """An empty database, and a configuration naming it."""
        self.database = pg.fresh_database(self, migrated=False)
        self.tmp = os.path.abspath(self.mktemp())
        os.makedirs(self.tmp)
        self.password_file = os.path.join(self.tmp, "pg-password")
        with open(self.password_file, "w") as f:
            f.write(self.database.password + "\n")
        os.chmod(self.password_file, 0o600)
        self.config_path = self.write_config(self.password_file)

    def write_config(self, password_file: str) -> str:
        """A configuration with the PostgreSQL queue and ``password_file``; returns its path."""
        path = os.path.join(self.tmp, f"gateway-{len(os.listdir(self.tmp))}.yaml")
        with open(path, "w") as f:
            f.write(
                "ae_title: GW\nnode: gw-a\nlisten: [{host: 127.0.0.1, port: 0}]\nspool: spool\n"
                f"queue:\n  backend: postgresql\n  dsn: '{self.database.dsn}'\n  password_file: {password_file}\n"
                "  timeouts: {connect: 2s}\n"
                "destinations:\n  pacs: {ae_title: PACS, host: 127.0.0.1, port: 1}\n"
                "routes:\n  - {name: all, forward: [pacs]}\n"
            )
        return path

    def run_cli(self, *args: str) -> tuple[int, str]:
        """Run the command line in this process: (exit status, stdout + stderr)."""
        out = io.StringIO()
        code = 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                cli.main(list(args))
            except SystemExit as e:
                code = int(e.code or 0)
        return code, out.getvalue()

    def test_migrate_creates_the_schema_then_finds_it_current(self) -> None:
        """The first run applies every migration and prints the version; the second applies none."""
        code, out = self.run_cli("db", "migrate", "-c", self.config_path)
        self.assertEqual(code, 0, out)
        self.assertIn(f"queue schema version {pgschema.SCHEMA_VERSION} (postgresql ", out)
        self.assertIn(f"; {pgschema.SCHEMA_VERSION} migration(s) applied)", out)
        version = pg.server().admin("SELECT max(version) FROM schema_version", database=self.database.name)
        self.assertEqual(version, [(pgschema.SCHEMA_VERSION,)])
        code, out = self.run_cli("db", "migrate", "-c", self.config_path)
        self.assertEqual(code, 0, out)
        self.assertIn("; 0 migration(s) applied)", out)
        self.assertNotIn(self.database.password, out)

    def test_queue_list_reads_the_postgresql_queue(self) -> None:
        """After a node journaled an instance there, ``queue list --json`` (same store type as the gateway) counts it."""
        self.assertEqual(self.run_cli("db", "migrate", "-c", self.config_path)[0], 0)
        store = open_store(load_config(self.config_path))
        self.addCleanup(store.close)
        store.add_instance(make_record("i1", node="gw-a"), [NewEntry("all", "pacs")], 1.0, 0.0)
        store.heartbeat(2.0, 1.0, "")
        code, out = self.run_cli("queue", "list", "--json", "-c", self.config_path)
        self.assertEqual(code, 0, out)
        [row] = json.loads(out)
        self.assertEqual((row["destination"], row["queued"]), ("pacs", 1))
        code, out = self.run_cli("queue", "nodes", "--json", "-c", self.config_path)
        self.assertEqual([n["node"] for n in json.loads(out)], ["gw-a"])

    def test_wrong_password_fails_without_showing_either_password(self) -> None:
        """A refused login exits 1 naming the database; neither the right nor the wrong password is printed."""
        wrong = os.path.join(self.tmp, "wrong-password")
        with open(wrong, "w") as f:
            f.write("Wrong-Passw0rd-xyz\n")
        os.chmod(wrong, 0o600)
        code, out = self.run_cli("db", "migrate", "-c", self.write_config(wrong))
        self.assertEqual(code, 1, out)
        self.assertIn("cannot migrate the queue (postgresql ", out)
        self.assertNotIn("Wrong-Passw0rd-xyz", out)
        self.assertNotIn(self.database.password, out)
