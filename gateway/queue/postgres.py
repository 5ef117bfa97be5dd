"""The durable queue store on PostgreSQL: one queue shared by several nodes (issue 14).

Theory of operation
===================

The store keeps the same journal of custody as :mod:`gateway.queue.sqlite`
(HARDENING decision 10: an acknowledged instance has its ``instances`` row
and one ``entries`` row per destination, committed in one transaction before
the C-STORE-RSP), with the same conventions (listed in that module's
docstring; the ``QueueStoreTests`` mixin pins them for all three stores),
but in a database every node of a cluster shares. What changes is how the
guarantees are made when several processes write at once.

Connections and threads
-----------------------
Synchronous psycopg 3 with a :class:`psycopg_pool.ConnectionPool`
(``pool_min`` to ``pool_max`` connections), called from the store's threads
(an :class:`~gateway.blocking.IBlockingRunner`), never from the reactor's:
psycopg's asynchronous connection would need the asyncio reactor.
Connections are in autocommit mode and every method is one explicit
transaction (``BEGIN`` ... ``COMMIT``), as with SQLite. A pooled connection
found dead at ``BEGIN`` (PostgreSQL restarted meanwhile) is replaced and
the transaction started on another, so after a restart the next call works
instead of failing on a dead socket.

Every connection is configured when it is made:

* TCP keepalives on both ends. The server's end of the session gets
  ``tcp_keepalives_idle=10``, ``tcp_keepalives_interval=5``,
  ``tcp_keepalives_count=3`` and ``tcp_user_timeout=25000`` (ms), session
  settings: a node cut off by a partition (or dead with its machine) has
  its session, and the advisory locks it holds (the housekeeping
  singleton), ended by the server within :data:`KEEPALIVE_BOUND` = 10 + 3 x 5
  = **25 s** of silence, not after the kernel's two-hour default. The
  node's end gets libpq's ``keepalives``, ``keepalives_idle``/``_interval``
  (a quarter of the bound), ``keepalives_count=3`` and ``tcp_user_timeout``
  bounded by ``min(statement_timeout, 25 s)`` (:func:`client_keepalives`):
  a call stuck in a partition fails (StoreUnavailable) within the statement
  timeout, which the server cannot enforce when it is unreachable, and a
  node learns it lost its session before the server frees its locks for
  another node. (Over a unix socket there is no TCP and none of this applies.)
* ``statement_timeout`` (the ``statement_timeout`` argument) bounds every
  statement, lock waits included; ``connect_timeout`` bounds a connection
  attempt and the wait for a free pooled connection.
* ``synchronous_commit``: a commit returns only once its WAL is flushed on
  the server (and, with a replica setting such as ``remote_apply``, applied
  on the standby too). A database, role or server default of ``off`` (a
  commit that can be lost after the acknowledgement) is overridden with
  ``on`` for the store's sessions; stronger settings are kept.

Custody across nodes
--------------------
* **Leases** (``lease``, ``settle``): one statement, ``UPDATE entries ...
  WHERE entry_id IN (SELECT ... ORDER BY entry_id LIMIT n FOR UPDATE SKIP
  LOCKED) RETURNING``, over a destination's due QUEUED entries in id order
  (not paused: checked inside the same statement): LEASED, owner = this
  node, ``lease_generation + 1``, ``leased_until``; the returned rows are
  joined with their instances in the same statement. A
  row another transaction has locked is skipped, and a row another node
  leased and committed meanwhile is re-checked by PostgreSQL against the
  WHERE clause on its newest version (READ COMMITTED), so two nodes never
  hold the same entry. Before leasing, expired leases of the destination
  (any node: a node that died) are taken back to QUEUED with the recover
  rule (the lowest ``UNRECORDED_DELIVERIES + 1`` of each lease noted
  ``ambiguous: lease of node NAME expired``); rows locked by another
  transaction are skipped there too (their owner is writing their outcome).
* **Fencing**: every write that ends or extends a lease may carry the
  generation the caller leased; it changes the row only ``WHERE state =
  'leased' AND lease_generation = %s``. A node paused past its lease (GC
  stop, partition) that wakes up finds its generation gone: its outcome is
  dropped (:class:`~gateway.queue.interfaces.LeaseLost`, ``Settled.lost``,
  ``renew``'s result) and the outcome of the node that took over stands.
* **Association slots** (``claim_slot``): one row per (destination, slot),
  claimed with ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` the claim is
  expired or already ours: at most one holder per slot, cluster-wide.
* **Housekeeping singleton** (``hold_singleton``): a session advisory lock
  (``pg_try_advisory_lock``) on one dedicated connection the store keeps
  outside the pool. The lock lasts as long as that session: when the node
  dies or is partitioned, the server ends the session (keepalives, above)
  and another node's next call takes the lock. If the dedicated connection
  breaks, this node has lost the singleton: the call returns False, and the
  next call opens a new connection and tries again.
* **Duplicate window** across nodes: before looking for an earlier copy of
  an instance, ``add_instances`` takes ``pg_advisory_xact_lock`` on a hash
  of its SOP Instance UID (all of a batch's keys, in order, so two batches
  cannot deadlock). Two nodes receiving the same instance at once are
  serialized there: the second sees the first's entries and records a
  DUPLICATE. The lock and the lookups are separate statements on purpose:
  in READ COMMITTED each statement reads a snapshot taken when it starts,
  so a lookup in the statement that waited for the lock would not see the
  transaction it waited for. Each entry's INSERT decides its own state
  (``CASE WHEN EXISTS`` the earlier copy), seeing the batch's earlier
  entries (group commit: a batch is one transaction).
* Every node's deliveries to one destination update its ``destinations``
  row (``last_success_at``), so the settle transactions of a destination
  are serialized on that row lock until they commit: a commit is one WAL
  flush on the server, shared by the transactions committing together.

Round trips
-----------
On loopback a statement costs little, but the C-STORE-RSP waits for the
journal's commit, so its latency is the intake's; a round trip to another
machine costs more than the work. The hot paths run in libpq's pipeline
mode (:meth:`PostgresQueueStore._pipelined`): ``BEGIN`` is queued with
the first statements, statements whose results are not needed yet are
queued behind it, and ``COMMIT`` travels with the final sync (its answer,
the WAL flushed, is awaited before the method returns). ``add_instances``
is one round trip (BEGIN, the duplicate lock, the inserts with their
duplicate lookups, COMMIT: the entry ids are read after the commit); a
busy ``settle`` is two (BEGIN, the deliveries and the destination's last
success, the reclaim of expired leases, the lease; then COMMIT); ``lease``
and ``complete`` two; ``renew``, ``claim_slot``, ``release_slot`` and
``heartbeat`` are one statement each in autocommit, one round trip.
Statements are prepared by psycopg after their fifth run
(``prepare_threshold``, left at its default).

The database unreachable
------------------------
A driver error that means "the database is away" (a connection that cannot
be made or was lost, a statement or pool timeout, a server shutting down)
is raised as :class:`~gateway.queue.interfaces.StoreUnavailable`, whose
message names the DSN without its password; the caller answers 0xA700 and
keeps outcomes in memory. The store object stays usable: its pool
reconnects when PostgreSQL is back (a reconnection attempt gives up after
``2 x connect_timeout`` instead of psycopg_pool's five minutes of growing
back-off, so the next call starts a fresh one at once). A COMMIT whose
answer was lost is the one ambiguity: the methods are written so that a
retry is harmless. ``KeyError``/``ValueError`` of the interface's contract
are raised as such.

The password
------------
Passed as an argument (the configuration reads ``password_file``), given to
libpq as a separate parameter, and never shown: ``str(store)``,
``repr(store)`` and every message of this module show the DSN with any
``password`` removed, and the password's text is scrubbed from the driver's
messages before they are re-raised.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterator, Mapping, Sequence

from zope.interface import implementer

from gateway.queue.commitment_sql import SqlCommitmentJournal
from gateway.queue.commitments import ICommitmentJournal
from gateway.queue.retrieve_sql import SqlRetrieveJournal
from gateway.queue.console_sql import SqlConsoleQueries  # issue 18: the console's keyset reads
from gateway.queue.retrieves import IRetrieveJournal
from gateway.queue.memory_studies import check_notes
from gateway.queue.study_sql import PG_NOTE, SqlStudyJournal, pg_note_params
from gateway.queue.studies import IStudyJournal, StudyNote
from gateway.queue.interfaces import (
    EXPIRED_LEASE_PREFIX,
    RECOVERED_IN_FLIGHT,
    UNRECORDED_DELIVERIES,
    AddResult,
    Attempt,
    DestinationStats,
    Entry,
    EntryState,
    InstanceRecord,
    IQueueStore,
    LeaseLost,
    NewEntry,
    NodeStatus,
    PlanRecord,
    Settled,
    StoreUnavailable,
)
from gateway.queue.pgschema import (
    ADVISORY_NAMESPACE,
    ENTRY_SELECT,
    INSTANCE_COLUMNS,
    INSTANCE_SELECT,
    SCHEMA_VERSION,
    SchemaError,
    advisory_key,
    apply_migrations,
    attempt_json,
    entry_from_row,
    record_from_row,
    schema_version,
)
from gateway.queue.sqlite import check_shard, check_slot, study_hash

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

__all__ = [
    "KEEPALIVE_BOUND",
    "SERVER_KEEPALIVES",
    "PostgresQueueStore",
    "SchemaError",
    "check_dsn",
    "client_keepalives",
    "migrate_database",
    "safe_dsn",
]

_log = logging.getLogger(__name__)

#: The server's end of every session of the store (PostgreSQL's ``tcp_*``
#: session settings): what ends a partitioned or dead node's session, and
#: with it the advisory locks it holds (the housekeeping singleton).
SERVER_KEEPALIVES: Mapping[str, int] = {
    "tcp_keepalives_idle": 10,  # seconds of silence before the first probe
    "tcp_keepalives_interval": 5,  # seconds between probes
    "tcp_keepalives_count": 3,  # unanswered probes before the session is dead
    "tcp_user_timeout": 25_000,  # ms a sent byte may stay unacknowledged (also caps the probes: tcp(7))
}

#: Seconds of silence after which the server ends a partitioned node's
#: session: idle + count x interval = 10 + 3 x 5 (``tcp_user_timeout`` is the same 25 s).
KEEPALIVE_BOUND = (
    SERVER_KEEPALIVES["tcp_keepalives_idle"]
    + SERVER_KEEPALIVES["tcp_keepalives_count"] * SERVER_KEEPALIVES["tcp_keepalives_interval"]
)


def client_keepalives(statement_timeout: float) -> dict[str, int]:
    """libpq's keepalive parameters for the node's end: a call in a partition fails within the statement timeout.

    ``statement_timeout`` is enforced by the server, so it cannot end a call
    whose server is unreachable; the node's own socket must. With
    ``tcp_user_timeout`` (unacknowledged data) and keepalive probes every
    quarter of it (a request sent, its answer lost), a call fails after
    ``min(statement_timeout, KEEPALIVE_BOUND)`` seconds of silence at most
    (tcp(7): the user timeout also decides when unanswered probes end the
    connection). Never longer than the server's bound: a node learns it
    lost its session (and its singleton) before another node can take it.

    :param statement_timeout: the store's statement timeout, in seconds.
    :returns: ``keepalives``, ``keepalives_idle``, ``keepalives_interval``,
        ``keepalives_count`` and ``tcp_user_timeout`` (ms).
    """
    bound = max(1.0, min(statement_timeout, float(KEEPALIVE_BOUND)))
    probe = max(1, int(bound / 4))
    return {
        "keepalives": 1,
        "keepalives_idle": probe,
        "keepalives_interval": probe,
        "keepalives_count": 3,
        "tcp_user_timeout": int(bound * 1000),
    }


#: Lock kinds hashed by :func:`gateway.queue.pgschema.advisory_key`.
_DUPLICATE_LOCK = "dup"
_SINGLETON_LOCK = "singleton"


def safe_dsn(dsn: str) -> str:
    """The DSN as it may be shown: parsed by libpq, ``password`` removed.

    :param dsn: a libpq connection string or ``postgresql://`` URI.
    :returns: a ``key=value`` connection string without the password; a
        placeholder when the DSN cannot be parsed (its text is not echoed:
        it may hold a password).
    """
    from psycopg import conninfo

    try:
        params = conninfo.conninfo_to_dict(dsn)
    except Exception:
        return "<unparsable dsn>"
    params.pop("password", None)
    return conninfo.make_conninfo("", **{k: v for k, v in params.items() if v is not None})


def check_dsn(dsn: str) -> None:
    """Refuse a DSN libpq cannot parse, without echoing it (libpq's message quotes the text, which may hold a password).

    :param dsn: a libpq connection string or URI.
    :raises ValueError: it cannot be parsed.
    """
    from psycopg import conninfo

    try:
        conninfo.conninfo_to_dict(dsn)
    except Exception:
        raise ValueError("the PostgreSQL dsn cannot be parsed (not shown: it may hold a password)") from None


def migrate_database(dsn: str, password: str | None = None, node: str = "", connect_timeout: float = 5.0) -> int:
    """``dicom-gateway db migrate`` (:func:`gateway.queue.pgschema.migrate`): bring a database to the current schema under the advisory lock.

    :param dsn: libpq connection string.
    :param password: the password (from ``password_file``), or ``None``.
    :param node: recorded as who applied each migration.
    :param connect_timeout: seconds to wait for the connection.
    :returns: the number of migrations applied (0: already current, or another node did it).
    :raises SchemaError: the database is newer than this code.
    :raises StoreUnavailable: the database cannot be reached.
    """
    import psycopg

    check_dsn(dsn)
    secrets = _secrets(dsn, password)
    try:
        with psycopg.connect(
            dsn, autocommit=True, **_connect_kwargs(dsn, password, node, connect_timeout)
        ) as conn:
            return apply_migrations(conn, node)
    except (psycopg.OperationalError, psycopg.InterfaceError) as e:
        raise StoreUnavailable(_scrub(f"PostgreSQL at {safe_dsn(dsn)}: {e}", secrets)) from None


def _secrets(dsn: str, password: str | None) -> list[str]:
    """The texts that must never be shown: the password argument and any password in the DSN."""
    from psycopg import conninfo

    found = [password] if password else []
    try:
        in_dsn = conninfo.conninfo_to_dict(dsn).get("password")
    except Exception:
        in_dsn = None
    if in_dsn:
        found.append(str(in_dsn))
    return found


def _scrub(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every secret replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _connect_kwargs(
    dsn: str, password: str | None, node: str, connect_timeout: float, statement_timeout: float = 10.0
) -> dict[str, Any]:
    """libpq parameters added to the DSN: password, timeouts, keepalives, application name.

    Keepalive and application-name parameters the DSN sets itself are left
    to it (an operator's choice); the password and connect timeout are the
    arguments'.
    """
    from psycopg import conninfo

    given = conninfo.conninfo_to_dict(dsn)
    kwargs: dict[str, Any] = {k: v for k, v in client_keepalives(statement_timeout).items() if k not in given}
    kwargs["connect_timeout"] = max(1, round(connect_timeout))
    if "application_name" not in given:
        kwargs["application_name"] = f"dicom-gateway {node}"[:63]
    if password is not None:
        kwargs["password"] = password
    return kwargs


@implementer(IQueueStore, ICommitmentJournal, IRetrieveJournal, IStudyJournal)
class PostgresQueueStore(SqlCommitmentJournal, SqlRetrieveJournal, SqlStudyJournal, SqlConsoleQueries):
    """The durable :class:`~gateway.queue.interfaces.IQueueStore` on a PostgreSQL database shared by several nodes.

    It is also the :class:`~gateway.queue.commitments.ICommitmentJournal`
    (issue 15): :class:`~gateway.queue.commitment_sql.SqlCommitmentJournal`
    with psycopg's ``%s`` marks, ``= ANY(array)`` for IN lists and
    ``FOR UPDATE SKIP LOCKED`` in ``lease_transactions``; and the
    :class:`~gateway.queue.retrieves.IRetrieveJournal` (issue 16):
    :class:`~gateway.queue.retrieve_sql.SqlRetrieveJournal`, its message-ID
    counter row locked ``FOR UPDATE`` while a node allocates.

    :param dsn: libpq connection string or URI (``sslmode`` and the other
        libpq parameters pass through).
    :param node: the name of the node this store object speaks for.
    :param password: the role's password (``None``: libpq's own sources,
        e.g. ``~/.pgpass`` or a client certificate).
    :param local_only: node-local spools (``spool.shared: false``): lease only
        entries of instances this node received.
    :param pool_min: connections kept open.
    :param pool_max: connections at most (the store's threads share them).
    :param connect_timeout: seconds for a connection attempt and for the wait for a pooled connection.
    :param statement_timeout: seconds any statement may run (lock waits included).
    :raises SchemaError: the database's schema is newer than this code.
    :raises StoreUnavailable: the database cannot be reached at start.
    """

    def __init__(
        self,
        dsn: str,
        node: str,
        *,
        password: str | None = None,
        local_only: bool = False,
        pool_min: int = 1,
        pool_max: int = 4,
        connect_timeout: float = 5.0,
        statement_timeout: float = 10.0,
    ) -> None:
        from psycopg_pool import ConnectionPool

        check_dsn(dsn)
        self.node = node
        self.local_only = local_only
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        self._dsn = dsn
        self._shown_dsn = safe_dsn(dsn)
        self._secrets = _secrets(dsn, password)
        self._kwargs = _connect_kwargs(dsn, password, node, connect_timeout, statement_timeout)
        self._kwargs["autocommit"] = True
        # The housekeeping singletons: one session kept out of the pool.
        self._singleton_lock = threading.Lock()
        self._singleton_conn: psycopg.Connection[Any] | None = None
        self._singletons: set[str] = set()
        self._lost: set[str] = set()
        self._pool: ConnectionPool[Any] = ConnectionPool(
            dsn,
            kwargs=self._kwargs,
            min_size=pool_min,
            max_size=max(pool_min, pool_max),
            timeout=connect_timeout,
            configure=self._configure,
            # psycopg_pool retries a lost connection with exponential backoff
            # (1, 2, 4 ... s) for ``reconnect_timeout`` (default 5 min), and
            # grows the pool one attempt at a time: after a 30 s outage the
            # next attempt could be half a minute away. Giving up early lets
            # the next call of the store start a fresh attempt at once, so
            # the node recovers within a call or two of PostgreSQL's return.
            reconnect_timeout=max(2.0, 2 * connect_timeout),
            name=f"queue-{node}",
            open=False,
        )
        try:
            with self._unavailable_as_store_error():
                self._pool.open(wait=True, timeout=connect_timeout)
                with self._pool.connection() as conn:
                    if schema_version(conn) != SCHEMA_VERSION:
                        apply_migrations(conn, node)
        except BaseException:
            self._pool.close()
            raise

    def __repr__(self) -> str:
        return f"PostgresQueueStore(node={self.node!r}, dsn={self._shown_dsn!r})"

    __str__ = __repr__

    # -- plumbing -----------------------------------------------------------

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        """Set up a new connection: server-side keepalives, statement timeout, durable commits."""
        for name, value in SERVER_KEEPALIVES.items():
            conn.execute(f"SET {name} = {int(value)}")
        conn.execute(f"SET statement_timeout = {int(self.statement_timeout * 1000)}")
        row = conn.execute("SHOW synchronous_commit").fetchone()
        if row is not None and row[0] == "off":
            # A commit must be durable before the C-STORE-RSP (HARDENING decision 10).
            _log.warning("synchronous_commit is off for %s: the gateway's sessions set it on", self._shown_dsn)
            conn.execute("SET synchronous_commit = on")

    @contextmanager
    def _unavailable_as_store_error(self) -> Iterator[None]:
        """Raise the driver's "database away" errors as StoreUnavailable, password scrubbed."""
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            yield
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as e:
            raise StoreUnavailable(_scrub(f"PostgreSQL at {self._shown_dsn}: {e}", self._secrets)) from None

    @staticmethod
    def _looks_alive(conn: psycopg.Connection[Any]) -> bool:
        """Whether an idle pooled session still looks usable, without a round trip.

        A session the server ended (restart, failover, ``pg_terminate_backend``)
        leaves its goodbye on the socket: a FATAL message and the end of the
        stream. An idle session has nothing to read otherwise; if something is
        there, libpq consumes it (a TLS record, a notice) and the session is
        kept only when the connection is still good and nothing else is waiting.
        """
        import select

        import psycopg
        from psycopg.pq import ConnStatus

        try:
            poller = select.poll()
            poller.register(conn.pgconn.socket, select.POLLIN)
            if not poller.poll(0):
                return True
            conn.pgconn.consume_input()
            return conn.pgconn.status == ConnStatus.OK and not conn.pgconn.is_busy() and not poller.poll(0)
        except (OSError, ValueError, psycopg.Error):
            return False

    @contextmanager
    def _pipelined(self, begin: str = "BEGIN") -> Iterator[psycopg.Connection[Any]]:
        """One transaction in libpq's pipeline mode: ``begin`` rides with the first statements, COMMIT with the last.

        The hot paths (``add_instances``, ``settle``) use it: ``BEGIN`` is
        queued instead of waited for, statements whose results are not read
        yet are queued behind it, and ``COMMIT`` travels with the pipeline's
        final sync; each read of a result is one round trip for everything
        queued before it. The durability is the same: the COMMIT's answer
        (the WAL flushed, ``synchronous_commit``) is waited for before the
        method returns, and an error anywhere rolls the whole transaction
        back. A pooled session the server ended while idle is found by
        :meth:`_looks_alive` (no round trip) and replaced, instead of by a
        failing ``BEGIN`` as in :meth:`_transaction`. Bodies must read
        results (``fetchall``), not ``rowcount`` of a statement not yet synced.
        """
        with self._unavailable_as_store_error():
            attempts = self._pool.max_size + 1
            for attempt in range(attempts):
                with self._pool.connection() as conn:
                    if not self._looks_alive(conn) and attempt + 1 < attempts:
                        conn.close()  # the pool discards a closed connection when it comes back
                        continue
                    try:
                        with conn.pipeline():
                            conn.execute(begin)
                            yield conn
                            conn.execute("COMMIT")
                    except BaseException:
                        if not conn.broken:
                            conn.execute("ROLLBACK")
                        raise
                    return

    def _statement(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[tuple[Any, ...]]:
        """One writing statement as its own transaction (autocommit): one round trip instead of three.

        Only for statements that are a whole transaction by themselves and
        harmless to repeat (a lease renewal, a slot claim, a heartbeat): a
        session found dead is replaced as in :meth:`_pipelined`. The commit is
        the statement's own, durable (``synchronous_commit``) before its
        answer arrives.
        """
        with self._unavailable_as_store_error():
            attempts = self._pool.max_size + 1
            for attempt in range(attempts):
                with self._pool.connection() as conn:
                    if not self._looks_alive(conn) and attempt + 1 < attempts:
                        conn.close()
                        continue
                    cursor = conn.execute(sql, params)
                    return cursor.fetchall() if cursor.description is not None else []
            raise AssertionError("unreachable")  # the last attempt returned or raised

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[psycopg.Connection[Any]]:
        """One transaction on a pooled connection: ``begin``, then COMMIT, or ROLLBACK on any error.

        A pooled connection may have died while idle (PostgreSQL restarted,
        a failover, the session ended by an operator): if ``begin`` itself
        fails because the connection is lost, nothing was done, so another
        connection is tried (up to the pool's size plus one). This replaces
        a check query on every checkout (a round trip per call).
        """
        with self._unavailable_as_store_error():
            attempts = self._pool.max_size + 1
            for attempt in range(attempts):
                with self._pool.connection() as conn:
                    try:
                        conn.execute(begin)
                    except Exception:
                        if conn.broken and attempt + 1 < attempts:
                            continue  # the pool discards it when it comes back
                        raise
                    try:
                        yield conn
                    except BaseException:
                        if not conn.broken:
                            conn.execute("ROLLBACK")
                        raise
                    conn.execute("COMMIT")
                    return

    def _fetch(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[tuple[Any, ...]]:
        """Run one read-only statement outside any transaction (its own snapshot) and return its rows.

        One round trip instead of three (BEGIN, the statement, COMMIT). A
        read is harmless to repeat, so a pooled connection found dead is
        replaced and the statement run again on another, as for ``BEGIN``
        in :meth:`_transaction`.
        """
        with self._unavailable_as_store_error():
            attempts = self._pool.max_size + 1
            for attempt in range(attempts):
                with self._pool.connection() as conn:
                    try:
                        rows: list[tuple[Any, ...]] = conn.execute(sql, params).fetchall()
                        return rows
                    except Exception:
                        if conn.broken and attempt + 1 < attempts:
                            continue
                        raise
            raise AssertionError("unreachable")  # the last attempt returned or raised

    def _write(self) -> ContextManager[psycopg.Connection[Any]]:
        """One read-write transaction (READ COMMITTED: row locks decide, see the theory of operation)."""
        return self._transaction("BEGIN")

    def _read(self) -> ContextManager[psycopg.Connection[Any]]:
        """One read-only transaction with one snapshot across several SELECTs (REPEATABLE READ)."""
        return self._transaction("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")

    # The commitment journal's dialect (gateway.queue.commitment_sql).
    _cj_mark = "%s"
    _cj_skip_locked = " FOR UPDATE SKIP LOCKED"
    _cj_chunk = 10_000
    # The retrieve journal's (gateway.queue.retrieve_sql): one allocation of a message ID at a time.
    _rj_lock = " FOR UPDATE"
    # The study journal's (gateway.queue.study_sql): complete_study locks its row; keyset orders by code point.
    _sj_lock = " FOR UPDATE"
    _sj_collate = ' COLLATE "C"'
    # The console's (gateway.queue.console_sql, issue 18): strpos; a CAST to integer rounds, so floor first.
    _cq_contains = "strpos"
    _cq_bucket = "CAST(FLOOR({}) AS INTEGER)"
    _cq_prepare = False

    def _cj_in(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """``column = ANY(?)`` with ``values`` as one array parameter."""
        return f"{column} = ANY(?)", [list(values)]

    def _cj_entry(self, row: Sequence[Any]) -> Entry:
        """An Entry for the commitment journal's ``received`` (history as ``jsonb``)."""
        return entry_from_row(row)

    @staticmethod
    def _touch_destination(conn: psycopg.Connection[Any], name: str, **columns: Any) -> None:
        """Create the destination's row if absent and set ``columns`` on it (column names are ours)."""
        if not columns:
            conn.execute("INSERT INTO destinations (name) VALUES (%s) ON CONFLICT (name) DO NOTHING", (name,))
            return
        names = ", ".join(columns)
        marks = ", ".join(["%s"] * len(columns))
        updates = ", ".join(f"{column} = EXCLUDED.{column}" for column in columns)
        conn.execute(
            f"INSERT INTO destinations (name, {names}) VALUES (%s, {marks})"
            f" ON CONFLICT (name) DO UPDATE SET {updates}",
            (name, *columns.values()),
        )

    @staticmethod
    def _entries_in(conn: psycopg.Connection[Any], ids: Sequence[int]) -> list[Entry]:
        """Several entries by id, lowest id first (inside the caller's transaction)."""
        if not ids:
            return []
        rows = conn.execute(
            ENTRY_SELECT + " WHERE e.entry_id = ANY(%s) ORDER BY e.entry_id", (list(ids),)
        ).fetchall()
        return [entry_from_row(row) for row in rows]

    @staticmethod
    def _insert_entry(
        conn: psycopg.Connection[Any],
        instance_id: str,
        route: str,
        destination: str,
        path: str | None,
        state: EntryState,
        now: float,
        hash_: int,
        history: Any = None,
        plan_hash: str | None = None,
    ) -> int:
        """Insert one entry row and return its id (the highest so far: the tail)."""
        from psycopg.types.json import Jsonb

        row = conn.execute(
            "INSERT INTO entries (instance_id, route, destination, path, state, enqueued_at,"
            " next_attempt_at, history, study_hash, plan_hash) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " RETURNING entry_id",
            (instance_id, route, destination, path, state.value, now, now, Jsonb(history or []), hash_, plan_hash),
        ).fetchone()
        assert row is not None
        return int(row[0])

    @staticmethod
    def _keep_plan(conn: psycopg.Connection[Any], plan: PlanRecord | None) -> str | None:
        """Record a plan's definition once (inside the caller's transaction); return its hash."""
        if plan is None:
            return None
        conn.execute(
            "INSERT INTO plans (plan_hash, definition) VALUES (%s, %s) ON CONFLICT (plan_hash) DO NOTHING",
            (plan.plan_hash, plan.definition),
        )
        return plan.plan_hash

    def _note(self, conn: psycopg.Connection[Any], ids: Sequence[int], error: str, now: float) -> None:
        """Append an uncounted attempt ``error`` to entries' history and ``last_error`` (an ambiguity note)."""
        from psycopg.types.json import Jsonb

        if ids:
            conn.execute(
                "UPDATE entries SET last_error = %s, history = history || %s WHERE entry_id = ANY(%s)",
                (error, Jsonb(attempt_json(Attempt(now, error, False))), list(ids)),
            )

    # -- IQueueStore: intake ----------------------------------------------------

    def add_instance(
        self,
        record: InstanceRecord,
        entries: Sequence[NewEntry],
        now: float,
        duplicate_window: float,
        notes: Sequence[StudyNote] = (),
    ) -> AddResult:
        """Record a received instance, its entries and its study notes in one transaction.

        See :meth:`gateway.queue.interfaces.IQueueStore.add_instance`.

        :raises ValueError: an instance with this id is already recorded.
        """
        return self.add_instances([(record, entries)], now, duplicate_window, [notes])[0]

    def add_instances(
        self,
        batch: Sequence[tuple[InstanceRecord, Sequence[NewEntry]]],
        now: float,
        duplicate_window: float,
        notes: Sequence[Sequence[StudyNote]] | None = None,
    ) -> list[AddResult]:
        """Several instances in one transaction: one commit (one WAL flush) for all (group commit).

        See :meth:`gateway.queue.interfaces.IQueueStore.add_instances`.

        :raises ValueError: an instance id is already recorded (nothing is kept), or
            ``notes`` is not one sequence per batch item.
        """
        import psycopg

        if not batch:
            return []
        per_item = check_notes(batch, notes)
        since = now - duplicate_window
        try:
            with self._pipelined() as conn:
                if duplicate_window > 0:
                    # The window across nodes: serialize the lookups of one SOP
                    # Instance UID (all keys first, in order: no deadlock). Its
                    # own statement: each entry's lookup below starts after the
                    # locks are held, so its snapshot (READ COMMITTED: one per
                    # statement) sees what the transaction it waited for committed.
                    keys = sorted({advisory_key(_DUPLICATE_LOCK, record.sop_instance_uid) for record, _ in batch})
                    conn.execute(
                        "SELECT pg_advisory_xact_lock(%s, k) FROM unnest(%s::int4[]) AS k", (ADVISORY_NAMESPACE, keys)
                    )
                plans = {
                    new.plan.plan_hash: new.plan for _, entries in batch for new in entries if new.plan is not None
                }
                if plans:
                    conn.cursor().executemany(
                        "INSERT INTO plans (plan_hash, definition) VALUES (%s, %s) ON CONFLICT (plan_hash) DO NOTHING",
                        [(plan.plan_hash, plan.definition) for plan in plans.values()],
                    )
                # Queued in the transaction's pipeline: no round trip of its own.
                conn.cursor().executemany(
                    "INSERT INTO instances (" + ", ".join(INSTANCE_COLUMNS) + ") VALUES ("
                    + ", ".join(["%s"] * len(INSTANCE_COLUMNS)) + ")",
                    [tuple(getattr(record, column) for column in INSTANCE_COLUMNS) for record, _ in batch],
                )
                # One statement (and cursor) per entry, in order, each deciding
                # its state: DUPLICATE when the destination already has this
                # exact instance (same UID and bytes, another instance row)
                # from an entry neither dead nor duplicate enqueued within the
                # window (HARDENING decision 5), the batch's earlier entries
                # included (a statement sees its transaction's earlier ones).
                # All are read only after the COMMIT, which travels with them:
                # BEGIN to COMMIT is one round trip.
                inserted = [
                    conn.execute(
                        "INSERT INTO entries (instance_id, route, destination, path, state, enqueued_at,"
                        " next_attempt_at, history, study_hash, plan_hash)"
                        " SELECT %(instance)s, %(route)s, %(destination)s, %(path)s,"
                        " CASE WHEN %(window)s AND EXISTS (SELECT 1 FROM instances i"
                        " JOIN entries e ON e.instance_id = i.instance_id"
                        " WHERE i.sop_instance_uid = %(uid)s AND i.sha256 = %(sha256)s AND i.instance_id <> %(instance)s"
                        " AND e.destination = %(destination)s AND e.state NOT IN ('dead', 'duplicate')"
                        " AND e.enqueued_at >= %(since)s) THEN 'duplicate' ELSE 'queued' END,"
                        " %(now)s, %(now)s, '[]'::jsonb, %(study_hash)s, %(plan)s RETURNING entry_id, state",
                        {
                            "instance": record.instance_id, "route": new.route, "destination": new.destination,
                            "path": new.path, "window": duplicate_window > 0, "uid": record.sop_instance_uid,
                            "sha256": record.sha256, "since": since, "now": now,
                            "study_hash": study_hash(record.study_instance_uid),
                            "plan": None if new.plan is None else new.plan.plan_hash,
                        },
                    )
                    for record, entries in batch
                    for new in entries
                ]
                # Study completeness (issue 18): each note after its instance's entries,
                # queued in the same pipeline (gateway.queue.study_sql.PG_NOTE decides and merges in SQL).
                for (record, _), item_notes in zip(batch, per_item):
                    for note in item_notes:
                        conn.execute(PG_NOTE, pg_note_params(note, record.instance_id, now))
        except psycopg.errors.UniqueViolation as e:
            raise ValueError(_scrub(f"an instance of the batch is already recorded: {e.diag.message_detail}", self._secrets)) from None
        ids: list[int] = []
        states: list[str] = []
        for cursor in inserted:  # committed: each cursor holds its row, in the order given
            row = cursor.fetchone()
            assert row is not None
            ids.append(int(row[0]))
            states.append(str(row[1]))
        duplicates: list[tuple[str, ...]] = []
        position = 0
        for _, entries in batch:
            duplicates.append(tuple(
                new.destination for new, state in zip(entries, states[position:position + len(entries)])
                if state == EntryState.DUPLICATE.value
            ))
            position += len(entries)
        results: list[AddResult] = []
        position = 0
        for (_, entries), found_duplicates in zip(batch, duplicates):
            results.append(AddResult(entry_ids=tuple(ids[position:position + len(entries)]), duplicates=found_duplicates))
            position += len(entries)
        return results

    # -- IQueueStore: the worker's cycle -------------------------------------

    def lease(
        self, destination: str, limit: int, now: float, lease_seconds: float, shard: tuple[int, int] | None = None
    ) -> list[Entry]:
        """Take back expired leases, then take up to ``limit`` due QUEUED entries, oldest first.

        See :meth:`gateway.queue.interfaces.IQueueStore.lease`.
        """
        check_shard(shard)
        if limit <= 0:
            return []
        with self._pipelined() as conn:
            return self._lease_in(conn, destination, limit, now, lease_seconds, shard)

    def _reclaim_expired(self, conn: psycopg.Connection[Any], destination: str, now: float) -> None:
        """Expired leases of ``destination`` (any node) back to QUEUED, the recover rule's entries noted.

        One statement: lock the expired rows (skipping those another
        transaction holds: their owner is writing their outcome), rank them
        within their lease (same owner and ``leased_until``), note the
        lowest ``UNRECORDED_DELIVERIES + 1`` of each, requeue them all.
        """
        conn.execute(
            "WITH locked AS (SELECT entry_id, lease_owner, leased_until FROM entries"
            " WHERE destination = %(destination)s AND state = 'leased' AND leased_until < %(now)s"
            " ORDER BY entry_id FOR UPDATE SKIP LOCKED),"
            " ranked AS (SELECT entry_id, %(prefix)s || lease_owner || ' expired' AS note,"
            " row_number() OVER (PARTITION BY lease_owner, leased_until ORDER BY entry_id) AS rank FROM locked)"
            " UPDATE entries e SET state = 'queued', leased_until = NULL,"
            " last_error = CASE WHEN r.rank <= %(noted)s THEN r.note ELSE e.last_error END,"
            " history = CASE WHEN r.rank <= %(noted)s THEN e.history || jsonb_build_array(jsonb_build_object("
            "'at', %(now)s::float8, 'error', r.note, 'counted', false)) ELSE e.history END"
            " FROM ranked r WHERE e.entry_id = r.entry_id",
            {"destination": destination, "now": now, "prefix": EXPIRED_LEASE_PREFIX, "noted": UNRECORDED_DELIVERIES + 1},
        )

    def _due_filter(self, shard: tuple[int, int] | None) -> tuple[str, list[Any]]:
        """The WHERE clauses (after destination, state and due time) of leasing: shard and node."""
        sql = ""
        params: list[Any] = []
        if shard is not None:
            sql += " AND e.study_hash %% %s = %s"
            params += [shard[1], shard[0]]
        if self.local_only:
            sql += " AND EXISTS (SELECT 1 FROM instances i WHERE i.instance_id = e.instance_id AND i.node = %s)"
            params.append(self.node)
        return sql, params

    def _lease_in(
        self,
        conn: psycopg.Connection[Any],
        destination: str,
        limit: int,
        now: float,
        lease_seconds: float,
        shard: tuple[int, int] | None,
    ) -> list[Entry]:
        """The body of :meth:`lease`, inside the caller's transaction."""
        self._reclaim_expired(conn, destination, now)
        extra, params = self._due_filter(shard)
        # Lease and read the leased entries with their instances in one statement.
        rows = conn.execute(
            "WITH leased AS (UPDATE entries SET state = 'leased', leased_until = %s, lease_owner = %s,"
            " lease_generation = lease_generation + 1 WHERE entry_id IN ("
            " SELECT e.entry_id FROM entries e WHERE e.destination = %s AND e.state = 'queued'"
            " AND e.next_attempt_at <= %s" + extra
            + " AND NOT EXISTS (SELECT 1 FROM destinations p WHERE p.name = %s AND p.paused)"
            " ORDER BY e.entry_id LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING *) "
            + ENTRY_SELECT.replace(" FROM entries e ", " FROM leased e ") + " ORDER BY e.entry_id",
            (now + lease_seconds, self.node, destination, now, *params, destination, limit),
        ).fetchall()
        return [entry_from_row(row) for row in rows]

    def _complete_in(
        self,
        conn: psycopg.Connection[Any],
        delivered: Sequence[tuple[int, str]],
        now: float,
        generations: Mapping[int, int] | None,
    ) -> tuple[int, ...]:
        """Mark leased entries DELIVERED (fenced); return the ids given with a generation that no longer held."""
        return self._complete_send(conn, delivered, now, generations)()

    @staticmethod
    def _complete_send(
        conn: psycopg.Connection[Any],
        delivered: Sequence[tuple[int, str]],
        now: float,
        generations: Mapping[int, int] | None,
    ) -> Callable[[], tuple[int, ...]]:
        """Send the statement of :meth:`_complete_in`; the returned callable reads its result.

        In pipeline mode (:meth:`_pipelined`) the statement is only queued,
        so ``settle`` sends it with the lease statements in one round trip.
        """
        if not delivered:
            return tuple
        fence = generations or {}
        ids = [entry_id for entry_id, _ in delivered]
        # The deliveries and the destination's last success in one statement.
        cursor = conn.execute(
            "WITH done AS (UPDATE entries e SET state = 'delivered', delivered_at = %(now)s,"
            " last_error = d.warning, leased_until = NULL"
            " FROM unnest(%(ids)s::bigint[], %(warnings)s::text[], %(generations)s::bigint[]) AS d(id, warning, generation)"
            " WHERE e.entry_id = d.id AND e.state = 'leased'"
            " AND (d.generation IS NULL OR e.lease_generation = d.generation)"
            " RETURNING e.entry_id, e.destination),"
            " touched AS (INSERT INTO destinations (name, last_success_at)"
            " SELECT DISTINCT destination, %(now)s::float8 FROM done"
            " ON CONFLICT (name) DO UPDATE SET last_success_at = EXCLUDED.last_success_at)"
            " SELECT entry_id FROM done",
            {
                "now": now, "ids": ids, "warnings": [warning for _, warning in delivered],
                "generations": [fence.get(entry_id) for entry_id in ids],
            },
        )

        def lost() -> tuple[int, ...]:
            done = {row[0] for row in cursor.fetchall()}
            return tuple(entry_id for entry_id in ids if entry_id in fence and entry_id not in done)

        return lost

    def complete(
        self, entry_ids: Sequence[int], now: float, warning: str = "", generations: Mapping[int, int] | None = None
    ) -> None:
        """Mark leased entries DELIVERED; ids not LEASED (or not under their generation) are skipped.

        See :meth:`gateway.queue.interfaces.IQueueStore.complete`.
        """
        with self._pipelined() as conn:
            self._complete_in(conn, [(entry_id, warning) for entry_id in entry_ids], now, generations)

    def settle(
        self,
        destination: str,
        delivered: Sequence[tuple[int, str]],
        now: float,
        limit: int,
        lease_seconds: float,
        shard: tuple[int, int] | None = None,
        generations: Mapping[int, int] | None = None,
    ) -> Settled:
        """Record deliveries and lease the next entries in one transaction.

        See :meth:`gateway.queue.interfaces.IQueueStore.settle`. A turn with
        nothing to record and nothing due writes no row, so PostgreSQL gives
        its transaction no id and its commit flushes nothing.
        """
        check_shard(shard)
        with self._pipelined() as conn:
            # BEGIN, the deliveries, the reclaim and the lease in one round trip.
            lost_of = self._complete_send(conn, delivered, now, generations)
            leased = self._lease_in(conn, destination, limit, now, lease_seconds, shard) if limit > 0 else []
            lost = lost_of()
            if leased or limit <= 0:
                return Settled(tuple(leased), lost=lost)
            return Settled((), self._next_due_in(conn, destination), lost=lost)

    def retry(
        self,
        entry_id: int,
        next_attempt_at: float,
        error: str,
        now: float,
        counted: bool = True,
        generation: int | None = None,
    ) -> None:
        """Return a LEASED entry to QUEUED for ``next_attempt_at``, recording the attempt.

        See :meth:`gateway.queue.interfaces.IQueueStore.retry`.

        :raises LeaseLost: ``generation`` is given and the entry is not LEASED under it.
        :raises KeyError: no such entry, or it is not LEASED.
        """
        from psycopg.types.json import Jsonb

        with self._write() as conn:
            row = conn.execute(
                "UPDATE entries SET state = 'queued', leased_until = NULL, next_attempt_at = %s, last_error = %s,"
                " attempts = attempts + %s, history = history || %s"
                " WHERE entry_id = %s AND state = 'leased' AND (%s::bigint IS NULL OR lease_generation = %s::bigint)"
                " RETURNING destination",
                (
                    next_attempt_at, error, 1 if counted else 0, Jsonb(attempt_json(Attempt(now, error, counted))),
                    entry_id, generation, generation,
                ),
            ).fetchone()
            if row is None:
                raise LeaseLost(entry_id) if generation is not None else KeyError(entry_id)
            self._touch_destination(conn, row[0], last_error=error, last_error_at=now)

    def release(self, entry_ids: Sequence[int], generations: Mapping[int, int] | None = None) -> None:
        """Return LEASED entries to QUEUED unchanged; other ids and lost leases are skipped.

        See :meth:`gateway.queue.interfaces.IQueueStore.release`.
        """
        if not entry_ids:
            return
        fence = generations or {}
        ids = list(entry_ids)
        with self._write() as conn:
            conn.execute(
                "UPDATE entries e SET state = 'queued', leased_until = NULL"
                " FROM unnest(%s::bigint[], %s::bigint[]) AS d(id, generation)"
                " WHERE e.entry_id = d.id AND e.state = 'leased'"
                " AND (d.generation IS NULL OR e.lease_generation = d.generation)",
                (ids, [fence.get(entry_id) for entry_id in ids]),
            )

    def dead_letter(self, entry_id: int, reason: str, now: float, generation: int | None = None) -> None:
        """Move a QUEUED or LEASED entry to DEAD with ``reason``.

        See :meth:`gateway.queue.interfaces.IQueueStore.dead_letter`.

        :raises LeaseLost: ``generation`` is given and the entry is not LEASED under it.
        :raises KeyError: no such entry, or it is not QUEUED or LEASED.
        """
        from psycopg.types.json import Jsonb

        with self._write() as conn:
            row = conn.execute(
                "UPDATE entries SET state = 'dead', leased_until = NULL, dead_reason = %s, last_error = %s,"
                " history = history || %s WHERE entry_id = %s"
                " AND (CASE WHEN %s::bigint IS NULL THEN state IN ('queued', 'leased')"
                " ELSE state = 'leased' AND lease_generation = %s::bigint END)"
                " RETURNING destination",
                (reason, reason, Jsonb(attempt_json(Attempt(now, reason, False))), entry_id, generation, generation),
            ).fetchone()
            if row is None:
                raise LeaseLost(entry_id) if generation is not None else KeyError(entry_id)
            self._touch_destination(conn, row[0], last_error=reason, last_error_at=now)

    def renew(self, generations: Mapping[int, int], now: float, lease_seconds: float) -> set[int]:
        """Extend the leases still held under their generation; return the ids whose lease was lost.

        See :meth:`gateway.queue.interfaces.IQueueStore.renew`.
        """
        if not generations:
            return set()
        ids = list(generations)
        rows = self._statement(
            "UPDATE entries e SET leased_until = %s FROM unnest(%s::bigint[], %s::bigint[]) AS d(id, generation)"
            " WHERE e.entry_id = d.id AND e.state = 'leased' AND e.lease_generation = d.generation"
            " RETURNING e.entry_id",
            (now + lease_seconds, ids, [generations[entry_id] for entry_id in ids]),
        )
        return set(ids) - {row[0] for row in rows}

    def expire(self, destination: str, enqueued_before: float, reason: str, now: float, limit: int = 1000) -> list[Entry]:
        """Dead-letter QUEUED entries of ``destination`` enqueued before ``enqueued_before``.

        See :meth:`gateway.queue.interfaces.IQueueStore.expire`.
        """
        from psycopg.types.json import Jsonb

        if limit <= 0:
            return []
        with self._write() as conn:
            rows = conn.execute(
                "UPDATE entries SET state = 'dead', leased_until = NULL, dead_reason = %s, last_error = %s,"
                " history = history || %s WHERE entry_id IN ("
                " SELECT entry_id FROM entries WHERE destination = %s AND state = 'queued' AND enqueued_at < %s"
                " ORDER BY entry_id LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING entry_id",
                (reason, reason, Jsonb(attempt_json(Attempt(now, reason, False))), destination, enqueued_before, limit),
            ).fetchall()
            if rows:
                self._touch_destination(conn, destination, last_error=reason, last_error_at=now)
            return self._entries_in(conn, sorted(row[0] for row in rows))

    # -- IQueueStore: the cluster ---------------------------------------------

    def claim_slot(self, destination: str, slot: int, slots: int, now: float, seconds: float) -> bool:
        """Claim or renew association slot ``slot`` of ``destination`` for this node.

        See :meth:`gateway.queue.interfaces.IQueueStore.claim_slot`.

        :raises ValueError: not ``0 <= slot < slots``.
        """
        check_slot(slot, slots)
        # One statement (autocommit): another node's live lease in the slot's
        # shard (its previous holder's batch) keeps the slot taken, so a study
        # keeps its order; else claim it when free, expired or already ours.
        rows = self._statement(
            "INSERT INTO slots (destination, slot, node, until) SELECT %s, %s, %s, %s"
            " WHERE NOT EXISTS (SELECT 1 FROM entries WHERE destination = %s AND state = 'leased'"
            " AND leased_until >= %s AND lease_owner <> %s AND study_hash %% %s = %s)"
            " ON CONFLICT (destination, slot) DO UPDATE SET node = EXCLUDED.node, until = EXCLUDED.until"
            " WHERE slots.node = EXCLUDED.node OR slots.until < %s RETURNING node",
            (destination, slot, self.node, now + seconds, destination, now, self.node, slots, slot, now),
        )
        return bool(rows)

    def release_slot(self, destination: str, slot: int) -> None:
        """Give up this node's claim on a slot; another node's claim is left alone.

        See :meth:`gateway.queue.interfaces.IQueueStore.release_slot`.
        """
        self._statement(
            "DELETE FROM slots WHERE destination = %s AND slot = %s AND node = %s", (destination, slot, self.node)
        )

    def circuit(self, destination: str) -> tuple[bool, str, float | None]:
        """The destination's circuit as last recorded by any node.

        See :meth:`gateway.queue.interfaces.IQueueStore.circuit`.
        """
        rows = self._fetch(
            "SELECT circuit_open, circuit_reason, circuit_since FROM destinations WHERE name = %s", (destination,)
        )
        if not rows:
            return (False, "", None)
        return (bool(rows[0][0]), str(rows[0][1]), rows[0][2])

    def heartbeat(self, now: float, started_at: float, detail: str = "") -> None:
        """Record that this node is alive.

        See :meth:`gateway.queue.interfaces.IQueueStore.heartbeat`.
        """
        self._statement(
            "INSERT INTO nodes (node, started_at, last_seen, detail) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (node) DO UPDATE SET started_at = EXCLUDED.started_at,"
            " last_seen = EXCLUDED.last_seen, detail = EXCLUDED.detail",
            (self.node, started_at, now, detail),
        )

    def nodes(self, now: float) -> list[NodeStatus]:
        """Every node that sent a heartbeat, by name, with the live leases and slots it holds.

        See :meth:`gateway.queue.interfaces.IQueueStore.nodes`.
        """
        rows = self._fetch(
            "SELECT n.node, n.started_at, n.last_seen, n.detail,"
            " (SELECT count(*) FROM entries e WHERE e.state = 'leased' AND e.lease_owner = n.node"
            " AND e.leased_until >= %s),"
            " (SELECT count(*) FROM slots s WHERE s.node = n.node AND s.until >= %s)"
            " FROM nodes n ORDER BY n.node",
            (now, now),
        )
        return [
            NodeStatus(node=row[0], started_at=row[1], last_seen=row[2], detail=row[3], leases=row[4], slots=row[5])
            for row in rows
        ]

    def _singleton_connection(self) -> psycopg.Connection[Any]:
        """The dedicated session that holds the singletons' advisory locks (made if absent)."""
        import psycopg

        if self._singleton_conn is None or self._singleton_conn.closed:
            conn = psycopg.connect(self._dsn, **self._kwargs)
            try:
                self._configure(conn)
            except BaseException:
                conn.close()
                raise
            self._singleton_conn = conn
        return self._singleton_conn

    def hold_singleton(self, name: str, now: float, seconds: float) -> bool:
        """Take or keep the named once-only job: a session advisory lock on the store's dedicated connection.

        See :meth:`gateway.queue.interfaces.IQueueStore.hold_singleton`.
        ``seconds`` is unused: the lock lasts as long as the session, and a
        dead or partitioned node's session ends within :data:`KEEPALIVE_BOUND`
        seconds. If the session broke, the lock is lost: this call returns
        False and the next one opens a new session and tries again.
        """
        import psycopg

        key = advisory_key(_SINGLETON_LOCK, name)
        with self._singleton_lock:
            if name in self._singletons:
                # Held: check that the session (and so the lock) is still there.
                try:
                    conn = self._singleton_connection()
                    row = conn.execute(
                        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
                        " AND pid = pg_backend_pid() AND classid = %s::oid AND objid = %s::oid AND objsubid = 2)",
                        (ADVISORY_NAMESPACE & 0xFFFFFFFF, key & 0xFFFFFFFF),
                    ).fetchone()
                    if row is not None and row[0]:
                        return True
                except (psycopg.OperationalError, psycopg.InterfaceError) as e:
                    _log.warning("%s: the session holding the singletons broke: %s", self, _scrub(str(e), self._secrets))
                self._drop_singleton_connection(broken=True)
                self._lost.discard(name)
                return False
            if name in self._lost:
                # Held on a session that broke while another name was asked for:
                # say so once, as if this call had found the break.
                self._lost.discard(name)
                return False
            with self._unavailable_as_store_error():
                for attempt in range(2):
                    try:
                        conn = self._singleton_connection()
                        row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (ADVISORY_NAMESPACE, key)).fetchone()
                        break
                    except (psycopg.OperationalError, psycopg.InterfaceError):
                        # A session that died idle (PostgreSQL restarted): one new try.
                        stale = self._singleton_conn is not None and self._singleton_conn.broken
                        self._drop_singleton_connection(broken=True)
                        if attempt or not stale:
                            raise
            if row is not None and row[0]:
                self._singletons.add(name)
                return True
            return False

    def _drop_singleton_connection(self, broken: bool = False) -> None:
        """Forget the dedicated session and every singleton it held (closing it releases the locks).

        :param broken: the session broke: the singletons it held are noted
            lost, so each one's next call returns False once.
        """
        import psycopg

        conn, self._singleton_conn = self._singleton_conn, None
        held, self._singletons = self._singletons, set()
        if broken:
            self._lost |= held
        if conn is None:
            return
        try:
            if held and not conn.closed:
                # The server drops a closed session's locks only once its backend
                # has exited, a moment after the close: release them now, so the
                # next node's call finds them free.
                conn.execute("SELECT pg_advisory_unlock_all()")
        except (psycopg.OperationalError, psycopg.InterfaceError):
            pass  # the session is gone already, and its locks with it
        finally:
            conn.close()

    # -- IQueueStore: operator actions --------------------------------------

    def requeue_dead(self, entry_id: int, now: float, destination: str | None = None) -> int:
        """Operator retry of a DEAD entry: a new id at the tail of the queue.

        See :meth:`gateway.queue.interfaces.IQueueStore.requeue_dead`.
        """
        with self._write() as conn:
            row = conn.execute(
                "DELETE FROM entries WHERE entry_id = %s AND state = 'dead'"
                " RETURNING instance_id, route, destination, path, history, study_hash, plan_hash",
                (entry_id,),
            ).fetchone()
            if row is None:
                raise KeyError(entry_id)
            instance_id, route, old_destination, path, history, hash_, plan_hash = row
            target = old_destination if destination is None else destination
            # The entry keeps its own plan: re-targeting sends the same copy.
            return self._insert_entry(
                conn, instance_id, route, target, path, EntryState.QUEUED, now, hash_, history, plan_hash
            )

    def requeue_instance(
        self, instance_id: str, destination: str, route: str, now: float, plan: PlanRecord | None = None
    ) -> int:
        """Operator replay: a new QUEUED entry for an instance (never a duplicate).

        See :meth:`gateway.queue.interfaces.IQueueStore.requeue_instance`.

        :raises KeyError: no such instance.
        """
        with self._write() as conn:
            row = conn.execute(
                "SELECT study_instance_uid FROM instances WHERE instance_id = %s", (instance_id,)
            ).fetchone()
            if row is None:
                raise KeyError(instance_id)
            return self._insert_entry(
                conn, instance_id, route, destination, None, EntryState.QUEUED, now, study_hash(row[0]),
                plan_hash=self._keep_plan(conn, plan),
            )

    def plan(self, plan_hash: str) -> str:
        """The definition of a journaled plan.

        See :meth:`gateway.queue.interfaces.IQueueStore.plan`.
        """
        rows = self._fetch("SELECT definition FROM plans WHERE plan_hash = %s", (plan_hash,))
        if not rows:
            raise KeyError(plan_hash)
        return str(rows[0][0])

    def adopt_plans(self, plans: Mapping[str, PlanRecord]) -> int:
        """Give entries without a plan their route's plan, when the route is given.

        See :meth:`gateway.queue.interfaces.IQueueStore.adopt_plans`.
        """
        with self._write() as conn:
            routes = [
                row[0]
                for row in conn.execute(
                    "SELECT DISTINCT route FROM entries WHERE plan_hash IS NULL AND state IN ('queued', 'leased', 'dead')"
                )
            ]
            adopted = 0
            for route in routes:
                plan = plans.get(route)
                if plan is None:
                    continue
                cursor = conn.execute(
                    "UPDATE entries SET plan_hash = %s WHERE plan_hash IS NULL AND route = %s"
                    " AND state IN ('queued', 'leased', 'dead')",
                    (self._keep_plan(conn, plan), route),
                )
                adopted += cursor.rowcount
            return adopted

    def purge(self, entry_id: int) -> None:
        """Delete a DEAD entry for good.

        See :meth:`gateway.queue.interfaces.IQueueStore.purge`.
        """
        with self._write() as conn:
            cursor = conn.execute("DELETE FROM entries WHERE entry_id = %s AND state = 'dead'", (entry_id,))
            if cursor.rowcount != 1:
                raise KeyError(entry_id)
            self._drop_copy(conn, entry_id)

    def set_paused(self, destination: str, paused: bool) -> None:
        """Hold (or release) a destination, for every node.

        See :meth:`gateway.queue.interfaces.IQueueStore.set_paused`.
        """
        with self._write() as conn:
            self._touch_destination(conn, destination, paused=paused)

    def set_circuit(self, destination: str, circuit_open: bool, reason: str, now: float) -> None:
        """Record a destination's circuit state, for every node.

        See :meth:`gateway.queue.interfaces.IQueueStore.set_circuit`.
        """
        with self._write() as conn:
            self._touch_destination(
                conn, destination, circuit_open=circuit_open, circuit_reason=reason if circuit_open else "",
                circuit_since=now,
            )

    # -- IQueueStore: reading -----------------------------------------------

    def get(self, entry_id: int) -> Entry:
        """One entry with its history.

        See :meth:`gateway.queue.interfaces.IQueueStore.get`.
        """
        rows = self._fetch(ENTRY_SELECT + " WHERE e.entry_id = %s", (entry_id,))
        if not rows:
            raise KeyError(entry_id)
        return entry_from_row(rows[0])

    def entries(self, destination: str | None = None, state: EntryState | None = None, limit: int = 1000) -> list[Entry]:
        """Entries filtered by destination and state, oldest (lowest id) first.

        See :meth:`gateway.queue.interfaces.IQueueStore.entries`.
        """
        if limit <= 0:
            return []
        clauses: list[str] = []
        params: list[Any] = []
        if destination is not None:
            clauses.append("e.destination = %s")
            params.append(destination)
        if state is not None:
            clauses.append("e.state = %s")
            params.append(state.value)
        sql = ENTRY_SELECT + (" WHERE " + " AND ".join(clauses) if clauses else "") + " ORDER BY e.entry_id LIMIT %s"
        params.append(limit)
        return [entry_from_row(row) for row in self._fetch(sql, params)]

    def find(
        self,
        study_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
        patient_id: str | None = None,
        accession_number: str | None = None,
    ) -> list[tuple[InstanceRecord, list[Entry]]]:
        """Instances matching every given criterion (oldest received first), each with its entries.

        See :meth:`gateway.queue.interfaces.IQueueStore.find`.
        """
        criteria = {
            "study_instance_uid": study_instance_uid,
            "sop_instance_uid": sop_instance_uid,
            "patient_id": patient_id,
            "accession_number": accession_number,
        }
        given = {column: value for column, value in criteria.items() if value is not None}
        where = " WHERE " + " AND ".join(f"i.{column} = %s" for column in given) if given else ""
        with self._read() as conn:
            records = [
                record_from_row(row)
                for row in conn.execute(
                    INSTANCE_SELECT + where + " ORDER BY i.received_at, i.instance_id",
                    tuple(given.values()),
                )
            ]
            by_instance: dict[str, list[Entry]] = {record.instance_id: [] for record in records}
            if records:
                for row in conn.execute(
                    ENTRY_SELECT + " WHERE e.instance_id = ANY(%s) ORDER BY e.entry_id",
                    (list(by_instance),),
                ):
                    entry = entry_from_row(row)
                    by_instance[entry.instance.instance_id].append(entry)
        return [(record, by_instance[record.instance_id]) for record in records]

    def stats(self, now: float, stranded_after: float = 120.0) -> Mapping[str, DestinationStats]:
        """Figures per destination that has entries or a destinations row.

        See :meth:`gateway.queue.interfaces.IQueueStore.stats`.
        """
        with self._read() as conn:
            counts: dict[str, dict[str, int]] = {}
            for name, state, count in conn.execute(
                "SELECT destination, state, count(*) FROM entries GROUP BY destination, state"
            ):
                counts.setdefault(name, {})[state] = count
            oldest = dict(
                conn.execute(
                    "SELECT destination, min(enqueued_at) FROM entries"
                    " WHERE state IN ('queued', 'leased') GROUP BY destination"
                ).fetchall()
            )
            stranded: dict[str, int] = {}
            if self.local_only:
                stranded = dict(
                    conn.execute(
                        "SELECT e.destination, count(*) FROM entries e JOIN instances i ON i.instance_id = e.instance_id"
                        " WHERE e.state = 'queued' AND i.node <> %s AND NOT EXISTS ("
                        " SELECT 1 FROM nodes n WHERE n.node = i.node AND n.last_seen >= %s)"
                        " GROUP BY e.destination",
                        (self.node, now - stranded_after),
                    ).fetchall()
                )
            rows = {
                row[0]: row[1:]
                for row in conn.execute(
                    "SELECT name, paused, last_error, last_error_at, last_success_at,"
                    " circuit_open, circuit_reason, circuit_since FROM destinations"
                )
            }
        result: dict[str, DestinationStats] = {}
        for name in sorted(set(counts) | set(rows)):
            by_state = counts.get(name, {})
            paused, last_error, last_error_at, last_success_at, circuit_open, circuit_reason, circuit_since = rows.get(
                name, (False, "", None, None, False, "", None)
            )
            result[name] = DestinationStats(
                destination=name,
                queued=by_state.get("queued", 0),
                in_flight=by_state.get("leased", 0),
                dead=by_state.get("dead", 0),
                delivered=by_state.get("delivered", 0),
                duplicates=by_state.get("duplicate", 0),
                oldest_queued_at=oldest.get(name),
                last_error=last_error,
                last_error_at=last_error_at,
                last_success_at=last_success_at,
                paused=bool(paused),
                circuit_open=bool(circuit_open),
                circuit_reason=circuit_reason,
                circuit_since=circuit_since,
                stranded=stranded.get(name, 0),
            )
        return result

    def next_due(self, destination: str) -> float | None:
        """The earliest ``next_attempt_at`` of a QUEUED entry of ``destination``, or None.

        Any node's entry, also with ``local_only`` (as the interface and the
        fake have it), though such a store cannot lease another node's.

        See :meth:`gateway.queue.interfaces.IQueueStore.next_due`.
        """
        rows = self._fetch(
            "SELECT min(next_attempt_at) FROM entries WHERE destination = %s AND state = 'queued'", (destination,)
        )
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    def _next_due_in(self, conn: psycopg.Connection[Any], destination: str) -> float | None:
        """The body of :meth:`next_due` (inside the caller's transaction)."""
        row = conn.execute(
            "SELECT min(next_attempt_at) FROM entries WHERE destination = %s AND state = 'queued'", (destination,)
        ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def shift_schedule(self, destination: str, after: float, delta: float, latest: float | None = None) -> int:
        """Move due times after a wall-clock step, then cap them at ``latest``.

        See :meth:`gateway.queue.interfaces.IQueueStore.shift_schedule`.
        """
        with self._write() as conn:
            changed = 0
            if delta:
                changed += conn.execute(
                    "UPDATE entries SET next_attempt_at = next_attempt_at + %s"
                    " WHERE destination = %s AND state = 'queued' AND next_attempt_at > %s",
                    (delta, destination, after),
                ).rowcount
            if latest is not None:
                changed += conn.execute(
                    "UPDATE entries SET next_attempt_at = %s"
                    " WHERE destination = %s AND state = 'queued' AND next_attempt_at > %s",
                    (latest, destination, latest),
                ).rowcount
            return changed

    # -- IQueueStore: lifecycle ----------------------------------------------

    def recover(self, now: float) -> int:
        """This node's LEASED entries (and unowned ones) back to QUEUED; each lease's first entries noted ambiguous.

        See :meth:`gateway.queue.interfaces.IQueueStore.recover`. Other
        nodes' leases are left alone: they are live until they expire.
        """
        with self._write() as conn:
            rows = conn.execute(
                "SELECT entry_id, destination, lease_owner, leased_until FROM entries"
                " WHERE state = 'leased' AND lease_owner IN (%s, '') ORDER BY entry_id FOR UPDATE",
                (self.node,),
            ).fetchall()
            # The lowest ids of each lease (destination, owner, leased_until) may
            # have been on the wire or delivered but not yet written (HARDENING F13).
            groups: dict[tuple[str, str, float], list[int]] = {}
            for entry_id, destination, owner, until in rows:
                group = groups.setdefault((destination, owner, until), [])
                if len(group) <= UNRECORDED_DELIVERIES:
                    group.append(entry_id)
            self._note(conn, [entry_id for ids in groups.values() for entry_id in ids], RECOVERED_IN_FLIGHT, now)
            ids = [row[0] for row in rows]
            if ids:
                conn.execute("UPDATE entries SET state = 'queued', leased_until = NULL WHERE entry_id = ANY(%s)", (ids,))
            return len(ids)

    def finished_instances(
        self, older_than: float, limit: int = 1000, has_file: bool | None = None
    ) -> list[InstanceRecord]:
        """Instances received before ``older_than`` with nothing queued, leased or dead.

        See :meth:`gateway.queue.interfaces.IQueueStore.finished_instances`.
        """
        if limit <= 0:
            return []
        file_filter = {None: "", True: " AND i.path <> ''", False: " AND i.path = ''"}[has_file]
        rows = self._fetch(
            INSTANCE_SELECT + " WHERE COALESCE((SELECT max(d.delivered_at) FROM entries d"
            " WHERE d.instance_id = i.instance_id), i.received_at) < %s" + file_filter + " AND NOT EXISTS ("
            "SELECT 1 FROM entries e WHERE e.instance_id = i.instance_id AND e.state IN ('queued', 'leased', 'dead'))"
            " ORDER BY i.received_at, i.instance_id LIMIT %s",
            (older_than, limit),
        )
        return [record_from_row(row) for row in rows]

    def file_removed(self, instance_id: str) -> None:
        """Clear an instance's ``path`` once its file is deleted (unknown ids are ignored).

        See :meth:`gateway.queue.interfaces.IQueueStore.file_removed`.
        """
        with self._write() as conn:
            conn.execute("UPDATE instances SET path = '' WHERE instance_id = %s", (instance_id,))

    def forget_instance(self, instance_id: str) -> None:
        """Delete an instance record and its entries (nothing happens if it is unknown).

        See :meth:`gateway.queue.interfaces.IQueueStore.forget_instance`.
        """
        with self._write() as conn:
            self._drop_copies_of_instance(conn, instance_id)
            conn.execute("DELETE FROM entries WHERE instance_id = %s", (instance_id,))
            conn.execute("DELETE FROM instances WHERE instance_id = %s", (instance_id,))

    def instance_ids(self) -> set[str]:
        """Every instance id on record.

        See :meth:`gateway.queue.interfaces.IQueueStore.instance_ids`.
        """
        return {row[0] for row in self._fetch("SELECT instance_id FROM instances")}

    def close(self) -> None:
        """Close the pool and the singletons' session (its advisory locks go with it)."""
        with self._singleton_lock:
            self._drop_singleton_connection()
        self._pool.close()
