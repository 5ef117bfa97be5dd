"""Tests for the cluster keys of :mod:`gateway.config.load` (issue 14).

``node``, ``queue`` (backend, path, dsn, password_file, pool, timeouts),
``cluster`` (lease, heartbeat) and ``spool.shared``. As in ``test_load``,
each error test checks the file, the 1-based line and the key path an
operator will see; the password tests check that the secret never leaves
the file it was read from.
"""

from __future__ import annotations

import os
import socket

from gateway.config.load import load_config_text
from gateway.config.schema import ClusterConfig, QueueConfig, default_node_name
from gateway.config.sections import dsn_has_password
from tests.unit.config.test_load import BASE_DIR, MINIMAL, LoadTestCase

#: The password written to the test password files.
SECRET = "s3cret-Passw0rd-never-shown"


class ClusterTestCase(LoadTestCase):
    """Helpers: a private password file."""

    def password_file(self, mode: int = 0o600, text: str = SECRET + "\n") -> str:
        """Write a password file with ``mode``.

        :param mode: Its permission bits.
        :param text: Its content.
        :returns: Its absolute path.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(path, mode)
        return path

    def postgresql(self, extra: str = "", password_file: str = "") -> str:
        """A configuration with a PostgreSQL queue; ``extra`` lines (2-space indented) start on line 10 (9 without a password file).

        :param extra: Further lines inside ``queue``.
        :param password_file: The password file, when given (line 9).
        :returns: The YAML text.
        """
        text = MINIMAL + "queue:\n  backend: postgresql\n  dsn: host=db1 dbname=gateway user=gw\n"
        if password_file:
            text += f"  password_file: {password_file}\n"
        return text + extra


class NodeTests(ClusterTestCase):
    """``node``: the name in leases, logs, ``queue list`` and ``/readyz``."""

    def test_default_is_the_host_name(self) -> None:
        """Without ``node`` the (safe) host name is used."""
        config = self.load(MINIMAL)
        self.assertEqual(config.node, default_node_name())
        self.assertRegex(config.node, r"^[A-Za-z0-9._-]{1,64}$")

    def test_default_node_name_makes_the_host_name_safe(self) -> None:
        """A host name with characters outside the safe set gets them replaced and is cut at 64."""
        self.patch(socket, "gethostname", lambda: "ward 7/ct" + "x" * 80)
        name = default_node_name()
        self.assertEqual(name[:10], "ward-7-ctx")
        self.assertEqual(len(name), 64)

    def test_given_name(self) -> None:
        """A safe name is kept as written."""
        self.assertEqual(self.load(MINIMAL + "node: gw-2.site_a\n").node, "gw-2.site_a")

    def test_unsafe_name_refused(self) -> None:
        """A name with a slash (it goes into file names) is refused at its line."""
        self.assertOneError(MINIMAL + "node: a/b\n", 6, "node", "1 to 64 of A-Z a-z 0-9 . _ -")

    def test_too_long_name_refused(self) -> None:
        """A name of 65 characters is refused."""
        self.assertOneError(MINIMAL + "node: " + "n" * 65 + "\n", 6, "node", "1 to 64")

    def test_number_refused(self) -> None:
        """A bare number is not a string."""
        self.assertOneError(MINIMAL + "node: 12\n", 6, "node", "expected a string")


class QueueTests(ClusterTestCase):
    """``queue``: SQLite by default, PostgreSQL with a DSN and a password file."""

    def test_default_is_sqlite_in_the_spool(self) -> None:
        """Without ``queue`` the store is SQLite at ``<spool>/queue.sqlite``, with the default pool and timeouts."""
        config = self.load(MINIMAL)
        expected = os.path.join(BASE_DIR, "spool", "queue.sqlite")
        self.assertEqual(config.queue, QueueConfig(path=expected))
        self.assertEqual(config.queue_path, expected)

    def test_sqlite_path(self) -> None:
        """``backend: sqlite`` with a path; ``queue_path`` follows it."""
        config = self.load(MINIMAL + "queue: {backend: sqlite, path: q.db}\n")
        self.assertEqual(config.queue.backend, "sqlite")
        self.assertEqual(config.queue_path, os.path.join(BASE_DIR, "q.db"))
        self.assertEqual(config.queue.path, config.queue_path)

    def test_every_postgresql_key_is_read(self) -> None:
        """The DSN, the password (from its file), the pool and the timeouts."""
        secret = self.password_file()
        config = self.load(
            self.postgresql(
                "  pool: {min: 2, max: 8}\n  timeouts: {connect: 3s, statement: 500ms}\n",
                password_file=secret,
            )
        )
        queue = config.queue
        self.assertEqual(
            (queue.backend, queue.dsn, queue.password_file, queue.password),
            ("postgresql", "host=db1 dbname=gateway user=gw", secret, SECRET),
        )
        self.assertEqual((queue.pool_min, queue.pool_max), (2, 8))
        self.assertEqual((queue.connect_timeout, queue.statement_timeout), (3.0, 0.5))

    def test_postgresql_defaults(self) -> None:
        """Without pool and timeouts: 1 to 4 connections, 5 s to connect, 10 s per statement; no password file is fine."""
        queue = self.load(self.postgresql()).queue
        self.assertEqual(
            (queue.pool_min, queue.pool_max, queue.connect_timeout, queue.statement_timeout, queue.password),
            (1, 4, 5.0, 10.0, ""),
        )

    def test_unknown_backend(self) -> None:
        """Only sqlite and postgresql exist."""
        self.assertOneError(MINIMAL + "queue: {backend: mysql}\n", 6, "queue.backend", "must be one of sqlite, postgresql")

    def test_postgresql_needs_a_dsn(self) -> None:
        """``backend: postgresql`` without ``dsn`` is refused at the section's line."""
        self.assertOneError(MINIMAL + "queue:\n  backend: postgresql\n", 7, "queue.dsn", "required with backend postgresql")

    def test_postgresql_refuses_a_path(self) -> None:
        """``path`` is the SQLite file: meaningless with PostgreSQL."""
        self.assertOneError(self.postgresql("  path: q.db\n"), 9, "queue.path", "only the sqlite backend")

    def test_sqlite_refuses_postgresql_keys(self) -> None:
        """A DSN with the default backend is a forgotten ``backend: postgresql``."""
        self.assertOneError(MINIMAL + "queue:\n  dsn: host=db1\n", 7, "queue.dsn", "only the postgresql backend")

    def test_pool_min_above_max(self) -> None:
        """``pool.min`` above ``pool.max`` is refused at ``pool.min``."""
        self.assertOneError(self.postgresql("  pool:\n    min: 5\n    max: 2\n"), 10, "queue.pool.min", "at most pool.max (2)")

    def test_pool_max_range(self) -> None:
        """A pool of 0 connections is refused."""
        self.assertOneError(self.postgresql("  pool: {max: 0}\n"), 9, "queue.pool.max", "between 1 and 100")

    def test_unknown_pool_key(self) -> None:
        """A misspelt pool key gets a suggestion."""
        error = self.assertOneError(self.postgresql("  pool: {maxx: 3}\n"), 9, "queue.pool.maxx", "unknown key")
        self.assertIn("'max'", error.message)

    def test_bad_timeout(self) -> None:
        """A timeout must be a positive duration."""
        self.assertOneError(self.postgresql("  timeouts: {connect: 0}\n"), 9, "queue.timeouts.connect", "more than 0")

    def test_statement_timeout_junk(self) -> None:
        """A statement timeout that is not a duration is refused."""
        self.assertOneError(self.postgresql("  timeouts: {statement: soon}\n"), 9, "queue.timeouts.statement", "invalid duration")


class PasswordTests(ClusterTestCase):
    """The password: only in a private file, never in the DSN, repr, errors or output."""

    def test_password_file_readable_by_others_refused(self) -> None:
        """Mode 0644 lets other users read the password: refused, with the file's mode."""
        secret = self.password_file(mode=0o644)
        error = self.assertOneError(self.postgresql(password_file=secret), 9, "queue.password_file", "mode 0644")
        self.assertIn("chmod 600", error.message)
        self.assertNotIn(SECRET, str(error))

    def test_stricter_mode_accepted(self) -> None:
        """Mode 0400 is stricter than 0600: accepted."""
        secret = self.password_file(mode=0o400)
        self.assertEqual(self.load(self.postgresql(password_file=secret)).queue.password, SECRET)

    def test_missing_password_file(self) -> None:
        """A password file that does not exist is refused at load."""
        missing = os.path.abspath(self.mktemp())
        self.assertOneError(self.postgresql(password_file=missing), 9, "queue.password_file", "cannot read the password file")

    def test_empty_password_file(self) -> None:
        """An empty file holds no password."""
        secret = self.password_file(text="")
        self.assertOneError(self.postgresql(password_file=secret), 9, "queue.password_file", "is empty")

    def test_password_in_key_value_dsn_refused(self) -> None:
        """``password=`` in a keyword DSN is refused, and the message does not repeat it."""
        text = MINIMAL + f"queue:\n  backend: postgresql\n  dsn: host=db1 user=gw password={SECRET}\n"
        error = self.assertOneError(text, 8, "queue.dsn", "must not carry a password")
        self.assertIn("password_file", error.message)
        self.assertNotIn(SECRET, str(error))

    def test_password_in_uri_refused(self) -> None:
        """``user:secret@`` in a URI DSN is refused."""
        text = MINIMAL + f"queue:\n  backend: postgresql\n  dsn: 'postgresql://gw:{SECRET}@db1/gateway'\n"
        error = self.assertOneError(text, 8, "queue.dsn", "must not carry a password")
        self.assertNotIn(SECRET, str(error))

    def test_dsn_has_password_forms(self) -> None:
        """Both libpq forms are recognised, and DSNs without a password pass."""
        self.assertTrue(dsn_has_password("postgresql://gw:x@db1,db2/g"))
        self.assertTrue(dsn_has_password("postgres://db1/g?sslmode=require&password=x"))
        self.assertTrue(dsn_has_password("host=db1 PASSWORD = x"))
        self.assertFalse(dsn_has_password("postgresql://gw@db1:5432/g?sslmode=verify-full"))
        self.assertFalse(dsn_has_password("host=db1 passfile=/etc/gw/pgpass user=gw"))

    def test_password_not_in_repr(self) -> None:
        """Neither the queue section's repr nor the whole configuration's shows the password."""
        config = self.load(self.postgresql(password_file=self.password_file()))
        self.assertEqual(config.queue.password, SECRET)
        self.assertNotIn(SECRET, repr(config.queue))
        self.assertNotIn(SECRET, repr(config))


class ClusterSectionTests(ClusterTestCase):
    """``cluster: {lease, heartbeat}``."""

    def test_defaults(self) -> None:
        """20 s leases and 5 s heartbeats: a dead node's backlog flows again within 25 s."""
        self.assertEqual(self.load(MINIMAL).cluster, ClusterConfig(lease=20.0, heartbeat=5.0))

    def test_short_periods_for_tests(self) -> None:
        """Durations below a second are accepted (tests shorten them)."""
        config = self.load(MINIMAL + "cluster: {lease: 1s, heartbeat: 200ms}\n")
        self.assertEqual((config.cluster.lease, config.cluster.heartbeat), (1.0, 0.2))

    def test_lease_must_outlast_two_heartbeats(self) -> None:
        """A lease of exactly two heartbeats is refused at ``cluster.lease``."""
        self.assertOneError(MINIMAL + "cluster:\n  lease: 10s\n  heartbeat: 5s\n", 7, "cluster.lease", "more than twice the heartbeat")

    def test_heartbeat_alone_against_the_default_lease(self) -> None:
        """A heartbeat of 15 s against the default 20 s lease is refused at ``cluster.heartbeat``."""
        self.assertOneError(MINIMAL + "cluster:\n  heartbeat: 15s\n", 7, "cluster.heartbeat", "more than twice")

    def test_bad_duration(self) -> None:
        """A heartbeat that is not a duration is refused."""
        self.assertOneError(MINIMAL + "cluster: {heartbeat: often}\n", 6, "cluster.heartbeat", "invalid duration")

    def test_unknown_key(self) -> None:
        """A misspelt key gets a suggestion."""
        error = self.assertOneError(MINIMAL + "cluster: {leese: 20s}\n", 6, "cluster.leese", "unknown key")
        self.assertIn("'lease'", error.message)


class SharedSpoolTests(ClusterTestCase):
    """``spool.shared``: one spool folder for every node, PostgreSQL only."""

    def test_default_is_not_shared(self) -> None:
        """The spool is the node's own unless said otherwise."""
        self.assertFalse(self.load(MINIMAL).spool.shared)

    def test_shared_with_sqlite_refused(self) -> None:
        """SQLite on a network filesystem is not safe: refused at ``spool.shared``."""
        text = MINIMAL.replace("spool: spool\n", "spool:\n  path: spool\n  shared: true\n")
        self.assertOneError(text, 7, "spool.shared", "SQLite on a network filesystem is not safe")

    def test_shared_with_postgresql(self) -> None:
        """With PostgreSQL a shared spool is accepted."""
        text = self.postgresql().replace("spool: spool\n", "spool: {path: spool, shared: true}\n")
        config = load_config_text(text, "gw.yaml", BASE_DIR)
        self.assertTrue(config.spool.shared)
        self.assertEqual(config.queue.backend, "postgresql")

    def test_not_a_boolean(self) -> None:
        """``shared: maybe`` is refused."""
        text = MINIMAL.replace("spool: spool\n", "spool: {path: spool, shared: maybe}\n")
        self.assertOneError(text, 5, "spool.shared", "expected a boolean")


class ShippedExampleTests(ClusterTestCase):
    """The commented cluster examples of ``etc/gateway.yaml`` load once uncommented."""

    def test_uncommented_examples_load(self) -> None:
        """node, spool.shared, the PostgreSQL queue and cluster, uncommented (password file replaced), give what they say."""
        from tests.unit.config.test_load import REPO_ROOT

        path = os.path.join(REPO_ROOT, "etc", "gateway.yaml")
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        secret = self.password_file()
        out: list[str] = []
        skipping_sqlite_queue = in_example = False
        for line in lines:
            if line == "queue:":
                skipping_sqlite_queue = True  # the SQLite example gives way to the PostgreSQL one
                continue
            if skipping_sqlite_queue:
                if line.startswith("  "):
                    continue
                skipping_sqlite_queue = False
            if line.startswith(("# node:", "# queue:", "# cluster:")):
                in_example = not line.startswith("# node:")  # a block follows queue: and cluster:
                line = line[2:]
            elif in_example and line.startswith("#   "):
                line = line[2:]
            else:
                in_example = False
            if line.startswith("  # shared: false"):
                line = "  shared: true"
            out.append(line.replace("/etc/dicom-gateway/pg-password", secret))
        config = load_config_text("\n".join(out) + "\n", "gateway.yaml", os.path.dirname(path))
        self.assertEqual(config.node, "gw-1")
        self.assertTrue(config.spool.shared)
        self.assertEqual(
            (config.queue.backend, config.queue.dsn, config.queue.password, config.queue.pool_max, config.queue.connect_timeout),
            ("postgresql", "host=db1 dbname=gateway user=gateway sslmode=verify-full", SECRET, 4, 5.0),
        )
        self.assertEqual(config.cluster, ClusterConfig(lease=20.0, heartbeat=5.0))
