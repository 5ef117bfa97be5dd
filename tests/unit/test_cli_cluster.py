"""The command line with several nodes (issue 14): ``queue list``/``queue nodes``, ``db migrate``, ``check``.

The commands run in-process (:func:`gateway.cli.main`) with their output
captured. Where a shared queue is needed without a database, the store the
command opens (:func:`gateway.stores.open_store`) is replaced by a
:class:`~gateway.queue.memory.MemoryQueueStore` that other "nodes" wrote to;
``db migrate`` against a real PostgreSQL is in :mod:`tests.unit.queue.test_db_migrate`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from gateway import cli, stores
from gateway.config.load import load_config
from gateway.queue.interfaces import NewEntry
from gateway.queue.memory import MemoryQueueStore
from tests.unit.queue.test_store import make_record

#: The password the tests write to the password file.
SECRET = "pg-Secret-9f8e7d-never-printed"

CONFIG = """\
ae_title: GW
node: gw-a
listen:
  - host: 127.0.0.1
    port: 0
spool: spool
queue:
  backend: postgresql
  dsn: host=db.invalid port=5432 dbname=gateway user=gw sslmode=require
  password_file: {password_file}
cluster: {{lease: 20s, heartbeat: 5s}}
destinations:
  pacs: {{ae_title: PACS, host: 127.0.0.1, port: 1}}
routes:
  - {{name: everything, forward: [pacs]}}
"""


class ClusterCliTestCase(SynchronousTestCase):
    """A PostgreSQL configuration with a private password file, and an in-process command line."""

    def setUp(self) -> None:
        self.tmp = os.path.abspath(self.mktemp())
        os.makedirs(self.tmp)
        self.password_file = os.path.join(self.tmp, "pg-password")
        with open(self.password_file, "w") as f:
            f.write(SECRET + "\n")
        os.chmod(self.password_file, 0o600)
        self.config_path = os.path.join(self.tmp, "gateway.yaml")
        with open(self.config_path, "w") as f:
            f.write(CONFIG.format(password_file=self.password_file))
        self.now = time.time()
        # The command speaks for the configuration's node, with a node-local spool (as open_store makes it).
        self.store = MemoryQueueStore("gw-a", local_only=True)
        self.opened: list[object] = []

        def open_store(config: object) -> MemoryQueueStore:
            self.opened.append(config)
            return self.store

        self.patch(stores, "open_store", open_store)

    def run_cli(self, *args: str) -> tuple[int, str, str]:
        """Run ``dicom-gateway ARGS`` in this process; return (exit status, stdout, stderr)."""
        out, err = io.StringIO(), io.StringIO()
        code = 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main(list(args))
            except SystemExit as e:
                code = int(e.code or 0)
        return code, out.getvalue(), err.getvalue()


class QueueListTests(ClusterCliTestCase):
    """``queue list`` on a shared queue: stranded entries and the nodes table."""

    def setUp(self) -> None:
        super().setUp()
        # gw-a received two instances and beats; gw-b received one and went away 10 minutes ago.
        gw_a, gw_b = self.store.peer("gw-a"), self.store.peer("gw-b")
        gw_a.heartbeat(self.now - 2, self.now - 3600, json.dumps({"address": ["10.0.0.1:104"], "version": "1", "draining": False}))
        gw_b.heartbeat(self.now - 600, self.now - 7200, "")
        for name, node in (("a1", "gw-a"), ("a2", "gw-a"), ("b1", "gw-b")):
            gw = self.store.peer(node)
            gw.add_instance(make_record(name, node=node, received_at=self.now - 900), [NewEntry("everything", "pacs")], self.now - 900, 0)
        gw_a.lease("pacs", 1, self.now, 60)

    def test_text_shows_stranded_and_nodes(self) -> None:
        """The STRANDED column counts gw-b's entry; the nodes table shows gw-a alive with its lease and gw-b silent."""
        code, out, err = self.run_cli("queue", "list", "-c", self.config_path)
        self.assertEqual(code, 0, err)
        destinations, nodes = out.split("\n\n")
        header, pacs = destinations.splitlines()
        self.assertIn("STRANDED", header)
        columns = header.split()
        self.assertEqual(pacs.split()[columns.index("STRANDED")], "1")
        rows = {line.split()[0]: line.split() for line in nodes.splitlines()[1:]}
        self.assertEqual(set(rows), {"gw-a", "gw-b"})
        self.assertEqual(rows["gw-a"][2:4], ["alive", "1"])
        self.assertEqual(rows["gw-b"][1:3], ["10.0m", "silent"])
        self.assertIn("10.0.0.1:104", nodes)

    def test_json_rows_carry_stranded(self) -> None:
        """``--json`` keeps its list of destination rows, each with ``stranded``."""
        code, out, _ = self.run_cli("queue", "list", "--json", "-c", self.config_path)
        self.assertEqual(code, 0)
        [row] = json.loads(out)
        self.assertEqual((row["destination"], row["queued"], row["in_flight"], row["stranded"]), ("pacs", 2, 1, 1))

    def test_nodes_json(self) -> None:
        """``queue nodes --json`` gives each node's heartbeat age, state, leases and what it said of itself."""
        code, out, _ = self.run_cli("queue", "nodes", "--json", "-c", self.config_path)
        self.assertEqual(code, 0)
        nodes = {row["node"]: row for row in json.loads(out)}
        self.assertEqual((nodes["gw-a"]["state"], nodes["gw-a"]["leases"]), ("alive", 1))
        self.assertEqual(nodes["gw-a"]["detail"]["address"], ["10.0.0.1:104"])
        self.assertEqual(nodes["gw-b"]["state"], "silent")
        self.assertGreaterEqual(nodes["gw-b"]["heartbeat_age_seconds"], 600)

    def test_the_cli_opens_the_configured_store(self) -> None:
        """The command opens the store of the configuration (PostgreSQL here), with the password read from its file."""
        self.run_cli("queue", "list", "-c", self.config_path)
        [config] = self.opened
        self.assertEqual((config.queue.backend, config.queue.password), ("postgresql", SECRET))  # type: ignore[attr-defined]


class NoNodesTests(ClusterCliTestCase):
    """A queue no node has beaten on yet."""

    def test_list_prints_no_nodes_table(self) -> None:
        """Without heartbeats the output is today's table alone, without the STRANDED column."""
        code, out, _ = self.run_cli("queue", "list", "-c", self.config_path)
        self.assertEqual(code, 0)
        self.assertEqual(len(out.strip().splitlines()), 2)
        self.assertNotIn("STRANDED", out)

    def test_nodes_says_none(self) -> None:
        """``queue nodes`` says that no node has sent a heartbeat."""
        self.assertEqual(self.run_cli("queue", "nodes", "-c", self.config_path)[1].strip(), "no node has sent a heartbeat yet")


class SecretTests(ClusterCliTestCase):
    """The password is never printed or logged."""

    def test_check_names_the_store_but_not_the_password(self) -> None:
        """``check`` shows the node and the DSN (with where the password comes from), never the password."""
        code, out, err = self.run_cli("check", "-c", self.config_path)
        self.assertEqual(code, 0, err)
        self.assertIn("node gw-a", out)
        self.assertIn("queue postgresql host=db.invalid port=5432 dbname=gateway user=gw sslmode=require", out)
        self.assertIn(f"password from {self.password_file}", out)
        self.assertNotIn(SECRET, out + err)

    def test_unreachable_store_error_does_not_show_the_password(self) -> None:
        """A store that cannot be opened is reported with the DSN, not the password."""

        def refuse(config: object) -> MemoryQueueStore:
            raise OSError("connection refused")

        self.patch(stores, "open_store", refuse)
        code, out, err = self.run_cli("queue", "list", "-c", self.config_path)
        self.assertEqual(code, 1)
        self.assertIn("cannot open the queue journal (postgresql host=db.invalid", err)
        self.assertNotIn(SECRET, out + err)

    def test_gateway_start_log_does_not_show_the_password(self) -> None:
        """The service's start-up log names node and queue; no logged event holds the password."""
        from twisted.internet.testing import MemoryReactorClock

        from gateway.blocking import SynchronousRunner
        from gateway.service import GatewayService

        events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        config = load_config(self.config_path)
        service = GatewayService(
            MemoryReactorClock(), config, blocking=SynchronousRunner(), store_runner=SynchronousRunner(), store=MemoryQueueStore("gw-a")
        )


        async def no_recovery() -> None:
            """Only the start-up log line is wanted: nothing is recovered, bound or started."""

        service._start = no_recovery  # type: ignore[method-assign]
        service.startService()
        from twisted.logger import formatEvent

        text = "\n".join(formatEvent(event) + repr(event) for event in events)
        self.assertIn("postgresql host=db.invalid", text)
        self.assertIn("gw-a", text)
        self.assertNotIn(SECRET, text)


class SqliteMigrateTests(SynchronousTestCase):
    """``db migrate`` on the default SQLite journal."""

    def test_migrate_creates_the_journal_and_prints_its_version(self) -> None:
        """The journal file is created and its schema version printed."""
        from gateway.queue.sqlite import SCHEMA_VERSION

        tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        path = os.path.join(tmp, "gateway.yaml")
        with open(path, "w") as f:
            f.write("ae_title: GW\nlisten: [{host: 127.0.0.1, port: 0}]\nspool: spool\n")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            with self.assertRaises(SystemExit) as raised:
                cli.main(["db", "migrate", "-c", path])
        self.assertEqual(raised.exception.code, 0)
        self.assertTrue(os.path.exists(os.path.join(tmp, "spool", "queue.sqlite")))
        self.assertIn(f"queue schema version {SCHEMA_VERSION} (sqlite {os.path.join(tmp, 'spool', 'queue.sqlite')}; {SCHEMA_VERSION} migration(s) applied)", out.getvalue())


class RunWithoutDatabaseTests(SynchronousTestCase):
    """``run`` when PostgreSQL does not answer at start."""

    def test_run_exits_with_one_line_and_no_password(self) -> None:
        """The gateway exits 1 with a line naming the queue store (no traceback, no password); systemd restarts it."""
        import subprocess
        import sys

        from tests.support.ports import free_port
        from tests.unit.config.test_load import REPO_ROOT

        tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        secret = os.path.join(tmp, "pg-password")
        with open(secret, "w") as f:
            f.write(SECRET + "\n")
        os.chmod(secret, 0o600)
        path = os.path.join(tmp, "gateway.yaml")
        with open(path, "w") as f:
            f.write(
                "ae_title: GW\nnode: gw-a\nlisten: [{host: 127.0.0.1, port: 0}]\nspool: spool\n"
                f"http: {{enabled: false}}\n"
                f"queue: {{backend: postgresql, dsn: 'host=127.0.0.1 port={free_port()} dbname=gw user=gw', "
                f"password_file: {secret}, timeouts: {{connect: 1s}}}}\n"
            )
        done = subprocess.run(
            [sys.executable, "-m", "gateway", "run", "-c", path],
            capture_output=True, text=True, cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=REPO_ROOT), timeout=60,
        )
        self.assertEqual(done.returncode, 1, done.stdout + done.stderr)
        self.assertIn("cannot open the queue store (postgresql host=127.0.0.1", done.stderr)
        self.assertNotIn("Traceback", done.stderr)
        self.assertNotIn(SECRET, done.stdout + done.stderr)
