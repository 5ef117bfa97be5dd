"""A real PostgreSQL (Debian ``postgresql``) for the tests of the PostgreSQL queue store (issue 14).

No mock: the store's guarantees (``FOR UPDATE SKIP LOCKED``, advisory locks,
``synchronous_commit``, keepalives, a server that goes away and comes back)
are the server's, so the tests run against one.

:func:`server` starts one cluster per test process (trial's ``--jobs``
workers each get their own) the first time a test asks for it, and stops it
by pid when the process exits (:mod:`atexit`). :meth:`PostgresServer.new_database`
gives each test a fresh, empty database, so tests are independent and a
test's advisory locks (which PostgreSQL scopes to a database) never meet
another's.

How the cluster is made (found by trying, as root in CI):

- ``initdb`` and ``postgres`` are looked up under ``/usr/lib/postgresql/*/bin``
  (the Debian layout; the highest version wins), then on ``PATH``.
- PostgreSQL refuses to run as root, so when the test process is root the
  server runs as the ``postgres`` system user the Debian package creates
  (or, if it is missing, a system user ``gateway-pg`` made with
  ``useradd``). Its folder is a fresh temporary folder chowned to that user;
  every parent folder must be traversable by it (a root-owned 0700 test
  folder is not), so the folder is made under the system's temporary
  folder (``/tmp``), not trial's ``_trial_temp``.
- The data folder and the unix socket live in that folder. The test process
  (root, or the user who owns the folder) administers the cluster over the
  unix socket with ``trust`` as the superuser ``gateway_admin``; the stores
  under test connect over TCP to ``127.0.0.1:PORT`` as the role
  :data:`ROLE` with a password (``scram-sha-256``), which is what a
  deployment does and what the password-hiding tests need.
- ``fsync=on`` and ``synchronous_commit=on`` (the server defaults, set
  explicitly): the custody tests are about what a commit means.
  ``initdb --no-sync`` only skips flushing the freshly made template files
  (a throwaway cluster), which takes start-up from about 2 s to under 1 s.
- :meth:`PostgresServer.stop` and :meth:`PostgresServer.start` take the
  server away and bring it back on the same port with the same data (the
  cluster tests: "PostgreSQL stopped for 30 s").
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.ports import free_port

__all__ = [
    "ADMIN",
    "PostgresError",
    "PostgresServer",
    "ROLE",
    "TestDatabase",
    "find_binaries",
    "fresh_database",
    "server",
    "skip_reason",
]

#: The superuser the test process administers the cluster with (unix socket, trust).
ADMIN = "gateway_admin"

#: The role the stores under test log in as (TCP, scram-sha-256 password).
ROLE = "gateway"

#: How long :meth:`PostgresServer.start` waits for the server to accept connections.
START_TIMEOUT = 30.0

#: How long :meth:`PostgresServer.stop` waits for the server to exit before SIGKILL.
STOP_TIMEOUT = 30.0

#: The system user that runs the server when the test process is root, if it exists.
DEBIAN_USER = "postgres"

#: The system user created to run the server when the test process is root and
#: :data:`DEBIAN_USER` does not exist.
FALLBACK_USER = "gateway-pg"


class PostgresError(AssertionError):
    """PostgreSQL is missing, or did not start or stop as expected."""


def find_binaries() -> tuple[str, str] | None:
    """Find ``initdb`` and ``postgres``: Debian's ``/usr/lib/postgresql/*/bin``, highest version first, then ``PATH``.

    :returns: the paths of ``initdb`` and ``postgres``, or ``None`` if either is missing.
    """

    def version(folder: str) -> tuple[int, ...]:
        name = Path(folder).parent.name
        return tuple(int(part) for part in name.split(".") if part.isdigit())

    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        initdb, postgres = os.path.join(folder, "initdb"), os.path.join(folder, "postgres")
        if os.access(initdb, os.X_OK) and os.access(postgres, os.X_OK):
            return initdb, postgres
    initdb_on_path, postgres_on_path = shutil.which("initdb"), shutil.which("postgres")
    if initdb_on_path and postgres_on_path:
        return initdb_on_path, postgres_on_path
    return None


def skip_reason() -> str | None:
    """Explain why PostgreSQL tests cannot run here (for a class's ``skip``; CI fails on skips).

    :returns: a reason, or ``None`` when PostgreSQL and psycopg are installed.
    """
    if find_binaries() is None:
        return (
            "PostgreSQL is not installed: no initdb/postgres under /usr/lib/postgresql/*/bin or on PATH"
            " (run `make test`, or `apt-get install postgresql`)"
        )
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        return "psycopg 3 is not installed (run `make test`, or pip install 'psycopg[binary]' psycopg-pool)"
    return None


def _server_user() -> pwd.struct_passwd | None:
    """The unprivileged user that runs the server when we are root (made if needed); ``None`` otherwise."""
    if os.geteuid() != 0:
        return None
    for name in (DEBIAN_USER, FALLBACK_USER):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", FALLBACK_USER],
        check=True, capture_output=True,
    )
    return pwd.getpwnam(FALLBACK_USER)


def _traversable(path: str, user: pwd.struct_passwd) -> bool:
    """Whether ``user`` can reach a child of ``path``: execute permission on it and every parent."""
    current = Path(path).resolve()
    for folder in (current, *current.parents):
        st = os.stat(folder)
        if st.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid == user.pw_gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


@dataclass(frozen=True)
class TestDatabase:
    """One fresh database of the test cluster, and how the store under test reaches it.

    :ivar name: the database's name.
    :ivar dsn: a libpq connection string (TCP to 127.0.0.1, role :data:`ROLE`) without the password.
    :ivar password: the role's password (passed to the store separately, as the config does).
    """

    __test__ = False  # not a trial test case, whatever its name

    name: str
    dsn: str
    password: str

    def write_password_file(self, path: str) -> str:
        """Write the password to ``path`` (0600, no newline) for a gateway's ``queue.password_file``.

        :returns: ``path``.
        """
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as stream:
            stream.write(self.password)
        return path


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder, run as an unprivileged user.

    :param root: the folder to make the cluster in (chowned to the server's user).
    """

    def __init__(self, root: str) -> None:
        binaries = find_binaries()
        if binaries is None:
            raise PostgresError(skip_reason() or "PostgreSQL is not installed")
        self.initdb, self.postgres = binaries
        self.root = root
        self.data = os.path.join(root, "data")
        self.socket_dir = os.path.join(root, "socket")
        self.log_path = os.path.join(root, "postgres.log")
        self.port = free_port()
        self.password = secrets.token_urlsafe(18)
        self._user = _server_user()
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self._counter = 0
        self._lock = threading.Lock()
        self._template: str | None = None
        self._drops: list[str] = []
        self._drops_ready = threading.Condition(self._lock)
        self._dropper: threading.Thread | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None

    # -- lifecycle ------------------------------------------------------------

    def _as_user(self) -> dict[str, Any]:
        """Keyword arguments that make a subprocess run as the server's user (when we are root)."""
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}

    def create(self) -> None:
        """Make the folder, run ``initdb`` and configure the server (once)."""
        os.makedirs(self.socket_dir, mode=0o700)
        if self._user is not None:
            for path in (self.root, self.socket_dir):
                os.chown(path, self._user.pw_uid, self._user.pw_gid)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        if self._user is not None:
            env["HOME"] = self.root
        result = subprocess.run(
            [
                self.initdb, "--pgdata", self.data, "--username", ADMIN, "--auth-local", "trust",
                "--auth-host", "scram-sha-256", "--encoding", "UTF8", "--locale", "C", "--no-sync",
                "--no-instructions",
            ],
            env=env, cwd=self.root, capture_output=True, **self._as_user(),
        )
        if result.returncode != 0:
            raise PostgresError(f"initdb failed ({result.returncode}): {result.stderr.decode(errors='replace')}")
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "fsync": "on",
            "synchronous_commit": "on",
            "password_encryption": "'scram-sha-256'",
            "max_connections": "100",
            "shared_buffers": "32MB",
            "logging_collector": "off",
            "log_min_messages": "warning",
            # Advisory locks of every store of a test run fit easily.
            "max_locks_per_transaction": "128",
        }
        with open(os.path.join(self.data, "postgresql.conf"), "a") as conf:
            conf.write("\n# tests/support/postgres.py\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def start(self) -> None:
        """Start (or restart) the server on its port and data; return once it accepts connections.

        :raises PostgresError: it exited or did not answer within :data:`START_TIMEOUT` seconds.
        """
        if self._process is not None and self._process.poll() is None:
            return
        self._log = open(self.log_path, "ab")
        self._process = subprocess.Popen(
            [self.postgres, "-D", self.data],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.root,
            start_new_session=True, **self._as_user(),
        )
        self._start_watchdog()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._process.poll() is not None:
                raise PostgresError(f"postgres exited with {self._process.returncode}: {self.log_tail()}")
            try:
                self.admin("SELECT 1")
                return
            except Exception as e:  # not accepting yet: socket absent, or "the database system is starting up"
                if time.monotonic() > deadline:
                    raise PostgresError(f"postgres did not start in {START_TIMEOUT}s ({e}): {self.log_tail()}") from e
                time.sleep(0.02)

    def _start_watchdog(self) -> None:
        """Stop the server and remove its folder if this process dies without running :mod:`atexit` (``kill -9``, a CI timeout).

        A small shell polls this process's pid; when it is gone, it sends
        SIGINT to the pid in the data folder's ``postmaster.pid`` (the server
        running now, whichever restart it is) and deletes the folder. One
        watchdog serves every restart.
        """
        if self._watchdog is not None and self._watchdog.poll() is None:
            return
        script = (
            'while kill -0 "$1" 2>/dev/null; do sleep 1; done; '
            'pid=$(head -n 1 "$2/postmaster.pid" 2>/dev/null) && kill -INT "$pid" 2>/dev/null; '
            'for i in 1 2 3 4 5 6 7 8 9 10; do [ -f "$2/postmaster.pid" ] || break; sleep 1; done; '
            'rm -rf "$3"'
        )
        self._watchdog = subprocess.Popen(
            ["sh", "-c", script, "postgres-watchdog", str(os.getpid()), self.data, self.root],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server by pid and wait for it to exit (its port and data stay for :meth:`start`).

        :param mode: ``"fast"`` (SIGINT: sessions are terminated, then a clean
            shutdown) or ``"immediate"`` (SIGQUIT: like a crash; recovery at
            the next start).
        """
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal({"fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode])
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def destroy(self) -> None:
        """Stop the server, its watchdog, and delete its folder (at process exit)."""
        self.stop()
        if self._watchdog is not None and self._watchdog.poll() is None:
            self._watchdog.kill()
            self._watchdog.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, size: int = 2000) -> str:
        """The end of the server's log (for error messages)."""
        try:
            with open(self.log_path, "rb") as stream:
                stream.seek(max(0, os.path.getsize(self.log_path) - size))
                return stream.read().decode(errors="replace")
        except OSError:
            return ""

    # -- administration -------------------------------------------------------

    def admin_dsn(self, database: str = "postgres") -> str:
        """A libpq connection string for the superuser over the unix socket."""
        return f"host={self.socket_dir} port={self.port} user={ADMIN} dbname={database}"

    def admin(self, sql: str, params: tuple[Any, ...] = (), database: str = "postgres") -> list[tuple[Any, ...]]:
        """Run one statement as the superuser (autocommit) and return its rows.

        :param sql: the statement.
        :param params: its parameters.
        :param database: the database to run it in.
        :returns: the rows, or ``[]`` for a statement without any.
        """
        import psycopg

        with psycopg.connect(self.admin_dsn(database), autocommit=True, connect_timeout=5) as conn:
            cursor = conn.execute(sql, params)  # type: ignore[arg-type]
            return list(cursor.fetchall()) if cursor.description is not None else []

    def ensure_role(self) -> None:
        """Create the test role :data:`ROLE` with its password (idempotent)."""
        exists = self.admin("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,))
        if not exists:
            # A role name and password are not bind parameters in CREATE ROLE.
            self.admin(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{self.password}'")

    def dsn(self, database: str) -> str:
        """A libpq connection string for the test role over TCP, without the password."""
        return f"host=127.0.0.1 port={self.port} dbname={database} user={ROLE}"

    def new_database(self, migrated: bool = False) -> TestDatabase:
        """A fresh database owned by :data:`ROLE`.

        :param migrated: start from a copy of a database the gateway's
            migrations already ran on (made once per process), so a store
            opens without migrating: about 0.2 s less per test. ``False``
            gives an empty database (the migration tests).
        :returns: its name, DSN and password.
        """
        with self._lock:
            self._counter += 1
            name = f"test_{os.getpid()}_{self._counter}"
            template = self._migrated_template() if migrated else "template0"
        # STRATEGY file_copy would checkpoint the whole cluster twice (fsync=on):
        # WAL_LOG copies the (tiny) template through the WAL instead.
        self.admin(f"CREATE DATABASE {name} OWNER {ROLE} TEMPLATE {template} STRATEGY WAL_LOG")
        return TestDatabase(name, self.dsn(name), self.password)

    def _migrated_template(self) -> str:
        """The template database with the gateway's current schema (made on first use; under ``_lock``)."""
        if self._template is None:
            import psycopg

            from gateway.queue.pgschema import apply_migrations

            name = f"template_{os.getpid()}"
            self.admin(f"CREATE DATABASE {name} OWNER {ROLE} TEMPLATE template0 STRATEGY WAL_LOG")
            with psycopg.connect(self.dsn(name), password=self.password, autocommit=True) as conn:
                apply_migrations(conn, "template")
            self._template = name
        return self._template

    def drop_database(self, name: str, wait: bool = True) -> None:
        """Drop a test database, terminating any session still in it.

        :param wait: ``False`` drops it on a background thread (a drop
            checkpoints: about 0.15 s the next test need not wait for).
        """
        statement = f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        if wait:
            self.admin(statement)
            return
        with self._lock:
            if self._dropper is None:
                self._dropper = threading.Thread(target=self._drop_queued, name="postgres-drop", daemon=True)
                self._dropper.start()
            self._drops.append(statement)
            self._drops_ready.notify()

    def _drop_queued(self) -> None:
        """The background dropper: run queued DROP DATABASE statements one by one."""
        while True:
            with self._lock:
                while not self._drops:
                    self._drops_ready.wait()
                statement = self._drops.pop(0)
            try:
                self.admin(statement)
            except Exception:  # the server was stopped meanwhile: the folder goes at exit anyway
                pass

    def backends(self, database: str, user: str = ROLE) -> list[tuple[int, str]]:
        """The sessions of ``user`` in ``database``: ``(pid, application_name)``."""
        return [
            (row[0], row[1])
            for row in self.admin(
                "SELECT pid, application_name FROM pg_stat_activity WHERE datname = %s AND usename = %s",
                (database, user),
            )
        ]

    def terminate(self, pid: int) -> bool:
        """End one session (``pg_terminate_backend``), as a partition or a killed node would.

        Waits (up to 5 s) until the backend has exited, so its locks are released on return.
        """
        rows = self.admin("SELECT pg_terminate_backend(%s, 5000)", (pid,))
        return bool(rows and rows[0][0])


_server: PostgresServer | None = None
_server_lock = threading.Lock()


def _system_temp_root(user: pwd.struct_passwd | None) -> str:
    """A folder for the cluster whose parents the server's user can traverse."""
    candidate = tempfile.gettempdir()
    if user is None or _traversable(candidate, user):
        return candidate
    return "/tmp"


def server() -> PostgresServer:
    """The test process's PostgreSQL: created and started on first use, stopped by pid at exit.

    :returns: the running server (restarted if a test stopped it and did not start it again).
    :raises PostgresError: PostgreSQL is not installed or did not start.
    """
    global _server
    with _server_lock:
        if _server is None:
            root = tempfile.mkdtemp(prefix="gateway-pg-", dir=_system_temp_root(_server_user()))
            instance = PostgresServer(root)
            atexit.register(instance.destroy)
            try:
                instance.create()
                instance.start()
                instance.ensure_role()
            except BaseException:
                instance.destroy()
                raise
            _server = instance
        elif not _server.running:
            _server.start()
        return _server


def fresh_database(case: Any, migrated: bool = True) -> TestDatabase:
    """A fresh database for one test, dropped after the test's cleanup.

    :param case: the running :class:`twisted.trial.unittest.SynchronousTestCase`.
    :param migrated: with the gateway's schema already made (see :meth:`PostgresServer.new_database`).
    :returns: the database (its DSN and password).
    """
    running = server()
    database = running.new_database(migrated)

    def drop() -> None:
        # A test that stopped the server and failed before starting it again
        # leaves it stopped: server() brings it back for the next test.
        server().drop_database(database.name, wait=False)

    case.addCleanup(drop)
    return database
