"""The PostgreSQL journal's schema: versioned migrations, ``migrate``, and the shape of its rows (issue 14).

The tables mirror the SQLite journal (:mod:`gateway.queue.schema`) with the
columns issue 14 adds for several nodes, in PostgreSQL's types:

* ``instances``: one row per received instance (``node``: who received it);
* ``entries``: one row per (instance, route, destination); ``entry_id`` is a
  ``BIGSERIAL``, so "oldest first" is "lowest id first" as with SQLite (ids
  come from one sequence, whichever node inserts); ``lease_owner``,
  ``lease_generation`` and ``leased_until`` are the lease and its fence;
  ``history`` is a ``jsonb`` array appended to in SQL (``||``), so a retry
  writes without reading the history first;
* ``plans``: each distinct morph plan once, keyed by its hash;
* ``destinations``: pause, last error and success, the circuit (shared by
  every node: one node's probe result is every node's);
* ``slots``: cluster-wide association slots (``claim_slot``);
* ``nodes``: each node's heartbeat;
* version 2 (issue 15): the Storage Commitment tables
  (``commitment_transactions``, ``commitment_attempts``, ``unforwarded``,
  ``copy_commitments``, ``commitment_requests``; see
  :mod:`gateway.queue.commitment_sql`);
* version 3 (issue 16): the Query/Retrieve tables (``retrieves``,
  ``retrieve_items``, ``retrieve_counters``, ``remapped_uids``; see
  :mod:`gateway.queue.retrieve_sql`);
* version 4 (issue 16): their clean-up (``remapped_uids.last_used_at``, the
  indexes of the housekeeping's batched deletes).

Versions
--------
``schema_version`` holds one row per migration applied (its number, when,
and the node that applied it); the schema's version is the highest.
``MIGRATIONS[i]`` takes a database from version ``i`` to ``i + 1`` (version
0 is an empty database). :func:`migrate` applies the missing ones under a
session advisory lock (``pg_advisory_lock``), each in its own transaction
with its ``schema_version`` row, so two nodes starting together on an
empty database do not both migrate: the second waits for the lock, reads
the version again and finds nothing left to do. A database whose version
is newer than this code is refused (:class:`SchemaError`), never misread.
``dicom-gateway db migrate`` calls :func:`migrate` (DSN and password); the
store calls :func:`apply_migrations` on its own connection at start, only
when the version it reads (without the lock) is older.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any, Callable, Sequence

from gateway.queue import rows
from gateway.queue.interfaces import Attempt, Entry
from gateway.queue.rows import ENTRY_COLUMNS, ENTRY_SELECT, INSTANCE_COLUMNS, record_from_row
from gateway.queue.schema import CONSOLE_INDEXES, RETRIEVE_CLEANUP, STUDIES_TABLE, SchemaError

if TYPE_CHECKING:
    import psycopg

__all__ = [
    # The row shape (gateway.queue.rows, with this store's history decoding).
    "ENTRY_COLUMNS",
    "ENTRY_SELECT",
    "INSTANCE_COLUMNS",
    "INSTANCE_SELECT",
    "attempt_json",
    "entry_from_row",
    "record_from_row",
    "ADVISORY_NAMESPACE",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SchemaError",
    "advisory_key",
    "apply_migrations",
    "migrate",
    "schema_version",
]

#: The first key of every advisory lock the gateway takes (the two-key form
#: ``pg_advisory_lock(int4, int4)``): "DG" in ASCII, so the gateway's locks
#: are told apart from an application sharing the database.
ADVISORY_NAMESPACE = 0x4447

#: Second keys (:func:`advisory_key` hashes a name into the rest of the range).
MIGRATION_LOCK = 1


def advisory_key(kind: str, name: str) -> int:
    """The second key of an advisory lock for ``name`` of a ``kind`` (``dup``, ``singleton``), as a signed int4.

    crc32 spreads names over 2**32 keys; two names sharing a key only make
    two lock holders wait for each other (a duplicate window check), never
    break a guarantee; the singleton names are few and fixed.

    :param kind: what the lock protects (keeps kinds apart).
    :param name: the SOP Instance UID or the singleton's name.
    :returns: a value in ``[-2**31, 2**31)``, never :data:`MIGRATION_LOCK`.
    """
    key = zlib.crc32(f"{kind}:{name}".encode())
    key = key - 2**32 if key >= 2**31 else key
    return key if key != MIGRATION_LOCK else MIGRATION_LOCK + 1


def _migrate_0_to_1(conn: psycopg.Connection[Any]) -> None:
    """Create the first schema: every table and index of the journal as of issue 14.

    :param conn: a connection inside a transaction.
    """
    statements = [
        """
        CREATE TABLE instances (
            instance_id TEXT PRIMARY KEY,
            path TEXT NOT NULL,
            sop_class_uid TEXT NOT NULL,
            sop_instance_uid TEXT NOT NULL,
            transfer_syntax_uid TEXT NOT NULL,
            size BIGINT NOT NULL,
            sha256 TEXT NOT NULL,
            received_at DOUBLE PRECISION NOT NULL,
            correlation_id TEXT NOT NULL,
            study_instance_uid TEXT NOT NULL DEFAULT '',
            series_instance_uid TEXT NOT NULL DEFAULT '',
            patient_id TEXT NOT NULL DEFAULT '',
            accession_number TEXT NOT NULL DEFAULT '',
            modality TEXT NOT NULL DEFAULT '',
            calling_ae_title TEXT NOT NULL DEFAULT '',
            called_ae_title TEXT NOT NULL DEFAULT '',
            source_address TEXT NOT NULL DEFAULT '',
            dataset_offset BIGINT NOT NULL DEFAULT 0,
            node TEXT NOT NULL DEFAULT ''
        )
        """,
        "CREATE TABLE plans (plan_hash TEXT PRIMARY KEY, definition TEXT NOT NULL)",
        """
        CREATE TABLE entries (
            entry_id BIGSERIAL PRIMARY KEY,
            instance_id TEXT NOT NULL REFERENCES instances(instance_id),
            route TEXT NOT NULL,
            destination TEXT NOT NULL,
            path TEXT,
            state TEXT NOT NULL
                CHECK (state IN ('queued', 'leased', 'delivered', 'dead', 'duplicate')),
            attempts INTEGER NOT NULL DEFAULT 0,
            enqueued_at DOUBLE PRECISION NOT NULL,
            next_attempt_at DOUBLE PRECISION NOT NULL,
            leased_until DOUBLE PRECISION,
            lease_owner TEXT NOT NULL DEFAULT '',
            lease_generation BIGINT NOT NULL DEFAULT 0,
            last_error TEXT NOT NULL DEFAULT '',
            delivered_at DOUBLE PRECISION,
            dead_reason TEXT NOT NULL DEFAULT '',
            history JSONB NOT NULL DEFAULT '[]'::jsonb,
            study_hash BIGINT NOT NULL,
            plan_hash TEXT REFERENCES plans(plan_hash)
        )
        """,
        """
        CREATE TABLE destinations (
            name TEXT PRIMARY KEY,
            paused BOOLEAN NOT NULL DEFAULT false,
            last_error TEXT NOT NULL DEFAULT '',
            last_error_at DOUBLE PRECISION,
            last_success_at DOUBLE PRECISION,
            circuit_open BOOLEAN NOT NULL DEFAULT false,
            circuit_reason TEXT NOT NULL DEFAULT '',
            circuit_since DOUBLE PRECISION
        )
        """,
        """
        CREATE TABLE slots (
            destination TEXT NOT NULL,
            slot INTEGER NOT NULL,
            node TEXT NOT NULL,
            until DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (destination, slot)
        )
        """,
        """
        CREATE TABLE nodes (
            node TEXT PRIMARY KEY,
            started_at DOUBLE PRECISION NOT NULL,
            last_seen DOUBLE PRECISION NOT NULL,
            detail TEXT NOT NULL DEFAULT ''
        )
        """,
        # lease: a destination's QUEUED entries in id order (partial: the
        # delivered millions are not in it); due time and shard filtered on the row.
        "CREATE INDEX entries_queued ON entries (destination, entry_id) WHERE state = 'queued'",
        # next_due.
        "CREATE INDEX entries_due ON entries (destination, next_attempt_at) WHERE state = 'queued'",
        # lease's reclaim of expired leases, recover, renew, nodes' lease counts.
        "CREATE INDEX entries_leased ON entries (destination, leased_until) WHERE state = 'leased'",
        # entries(destination, state) and stats.
        "CREATE INDEX entries_state ON entries (destination, state, entry_id)",
        "CREATE INDEX entries_instance ON entries (instance_id, state)",
        "CREATE INDEX instances_sop ON instances (sop_instance_uid)",
        "CREATE INDEX instances_study ON instances (study_instance_uid)",
        "CREATE INDEX instances_patient ON instances (patient_id)",
        "CREATE INDEX instances_accession ON instances (accession_number)",
        "CREATE INDEX instances_received ON instances (received_at)",
    ]
    for statement in statements:
        conn.execute(statement)


def _migrate_1_to_2(conn: psycopg.Connection[Any]) -> None:
    """Version 2: Storage Commitment (issue 15; PS3.4 Annex J), the SQLite journal's version 6.

    The same tables and indexes as :func:`gateway.queue.schema._migrate_5_to_6`
    (described in :mod:`gateway.queue.commitment_sql`), in PostgreSQL's types.
    Nothing existing changes; a version-1 database keeps all its data.

    :param conn: a connection inside a transaction.
    """
    for statement in COMMITMENT_TABLES:
        conn.execute(statement)


#: The Storage Commitment tables and indexes (PostgreSQL types).
COMMITMENT_TABLES: tuple[str, ...] = (
    """
    CREATE TABLE commitment_transactions (
        seq BIGSERIAL PRIMARY KEY,
        transaction_uid TEXT NOT NULL UNIQUE,
        calling_ae_title TEXT NOT NULL,
        called_ae_title TEXT NOT NULL,
        modality TEXT NOT NULL,
        listener TEXT NOT NULL,
        policy TEXT NOT NULL,
        refs TEXT NOT NULL,
        deadline DOUBLE PRECISION NOT NULL,
        report_deadline DOUBLE PRECISION NOT NULL,
        lookback_from DOUBLE PRECISION NOT NULL,
        unrouted TEXT NOT NULL,
        report_association TEXT NOT NULL,
        source_address TEXT NOT NULL DEFAULT '',
        requested_at DOUBLE PRECISION NOT NULL,
        node TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('open', 'reported', 'dead')),
        report TEXT NOT NULL DEFAULT '',
        decided_at DOUBLE PRECISION,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        last_error TEXT NOT NULL DEFAULT '',
        reported_at DOUBLE PRECISION,
        dead_reason TEXT NOT NULL DEFAULT '',
        lease_owner TEXT NOT NULL DEFAULT '',
        lease_generation BIGINT NOT NULL DEFAULT 0,
        leased_until DOUBLE PRECISION
    )
    """,
    # lease_transactions: the OPEN ones by due time (partial: reported ones pile up).
    "CREATE INDEX commitment_transactions_due ON commitment_transactions (next_attempt_at, seq) WHERE state = 'open'",
    "CREATE INDEX commitment_transactions_requested ON commitment_transactions (requested_at, seq)",
    """
    CREATE TABLE commitment_attempts (
        attempt_id BIGSERIAL PRIMARY KEY,
        transaction_uid TEXT NOT NULL REFERENCES commitment_transactions(transaction_uid),
        at DOUBLE PRECISION NOT NULL,
        error TEXT NOT NULL,
        counted INTEGER NOT NULL
    )
    """,
    "CREATE INDEX commitment_attempts_transaction ON commitment_attempts (transaction_uid, attempt_id)",
    """
    CREATE TABLE unforwarded (
        note_id BIGSERIAL PRIMARY KEY,
        sop_class_uid TEXT NOT NULL,
        sop_instance_uid TEXT NOT NULL,
        outcome TEXT NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        calling_ae_title TEXT NOT NULL DEFAULT '',
        reason TEXT NOT NULL DEFAULT '',
        noted_at DOUBLE PRECISION NOT NULL
    )
    """,
    "CREATE INDEX unforwarded_sop ON unforwarded (sop_instance_uid, received_at)",
    """
    CREATE TABLE copy_commitments (
        entry_id BIGINT PRIMARY KEY,
        destination TEXT NOT NULL,
        sop_class_uid TEXT NOT NULL,
        sop_instance_uid TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'requested', 'committed', 'failed')),
        noted_at DOUBLE PRECISION NOT NULL,
        transaction_uid TEXT NOT NULL DEFAULT '',
        requested_at DOUBLE PRECISION,
        answered_at DOUBLE PRECISION,
        requests INTEGER NOT NULL DEFAULT 0,
        failure_reason INTEGER NOT NULL DEFAULT 0
    )
    """,
    "CREATE INDEX copy_commitments_pending ON copy_commitments (destination, state, noted_at, entry_id)",
    "CREATE INDEX copy_commitments_sop ON copy_commitments (destination, sop_instance_uid)",
    """
    CREATE TABLE commitment_requests (
        transaction_uid TEXT PRIMARY KEY,
        destination TEXT NOT NULL,
        requested_at DOUBLE PRECISION NOT NULL
    )
    """,
)


def _migrate_2_to_3(conn: psycopg.Connection[Any]) -> None:
    """Version 3: Query/Retrieve (issue 16), the SQLite journal's version 7.

    The same tables and indexes as :func:`gateway.queue.schema._migrate_6_to_7`
    (described in :mod:`gateway.queue.retrieve_sql`), in PostgreSQL's types.
    Nothing existing changes; a version-2 database keeps all its data.

    :param conn: a connection inside a transaction.
    """
    for statement in RETRIEVE_TABLES:
        conn.execute(statement)


#: The Query/Retrieve tables and indexes (PostgreSQL types).
RETRIEVE_TABLES: tuple[str, ...] = (
    """
    CREATE TABLE retrieves (
        retrieve_id BIGSERIAL PRIMARY KEY,
        kind TEXT NOT NULL,
        requester_ae_title TEXT NOT NULL,
        listener TEXT NOT NULL,
        requester_message_id INTEGER NOT NULL,
        destination TEXT NOT NULL,
        mode TEXT NOT NULL,
        level TEXT NOT NULL,
        sources TEXT NOT NULL,
        refs TEXT NOT NULL,
        deadline DOUBLE PRECISION NOT NULL,
        message_id INTEGER NOT NULL CHECK (message_id BETWEEN 1 AND 65535),
        node TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('open', 'done', 'cancelled', 'failed')),
        created_at DOUBLE PRECISION NOT NULL,
        finished_at DOUBLE PRECISION,
        error TEXT NOT NULL DEFAULT ''
    )
    """,
    # PS3.7 9.1.1.1: the Move Originator Message ID names one open retrieve of the whole cluster.
    "CREATE UNIQUE INDEX retrieves_open_message_id ON retrieves (message_id) WHERE state = 'open'",
    "CREATE INDEX retrieves_created ON retrieves (created_at, retrieve_id)",
    """
    CREATE TABLE retrieve_items (
        retrieve_id BIGINT NOT NULL REFERENCES retrieves(retrieve_id),
        seq INTEGER NOT NULL,
        sop_class_uid TEXT NOT NULL,
        sop_instance_uid TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('expected', 'received', 'completed', 'warning', 'failed')),
        entry_id BIGINT,
        reason TEXT NOT NULL DEFAULT '',
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (retrieve_id, sop_instance_uid)
    )
    """,
    "CREATE INDEX retrieve_items_seq ON retrieve_items (retrieve_id, seq)",
    "CREATE TABLE retrieve_counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "INSERT INTO retrieve_counters (name, value) VALUES ('message_id', 0)",
    """
    CREATE TABLE remapped_uids (
        remapped TEXT PRIMARY KEY,
        original TEXT NOT NULL,
        remembered_at DOUBLE PRECISION NOT NULL
    )
    """,
)


def _migrate_3_to_4(conn: psycopg.Connection[Any]) -> None:
    """Version 4: the clean-up of the Query/Retrieve tables (issue 16; SQLite's version 8).

    ``remapped_uids.last_used_at`` (existing pairs start at the time they were
    remembered) and the indexes of the housekeeping's batched deletes
    (:data:`gateway.queue.schema.RETRIEVE_CLEANUP`). Nothing existing changes.
    """
    conn.execute("ALTER TABLE remapped_uids ADD COLUMN last_used_at DOUBLE PRECISION NOT NULL DEFAULT 0")
    conn.execute("UPDATE remapped_uids SET last_used_at = remembered_at")
    for statement in RETRIEVE_CLEANUP:
        conn.execute(statement)


def _migrate_4_to_5(conn: psycopg.Connection[Any]) -> None:
    """Version 5: study completeness and the operator console (issue 18; SQLite's version 9).

    The ``studies`` table (:data:`gateway.queue.schema.STUDIES_TABLE`, with
    PostgreSQL's types) and :data:`gateway.queue.schema.CONSOLE_INDEXES`.
    Nothing existing changes.
    """
    for statement in STUDIES_TABLE:
        conn.execute(statement.replace(" REAL", " DOUBLE PRECISION"))
    for statement in CONSOLE_INDEXES:
        conn.execute(statement)


#: ``MIGRATIONS[i]`` takes a database from schema version ``i`` to ``i + 1``.
MIGRATIONS: tuple[Callable[[psycopg.Connection[Any]], None], ...] = (
    _migrate_0_to_1,
    _migrate_1_to_2,
    _migrate_2_to_3,
    _migrate_3_to_4,
    _migrate_4_to_5,
)

#: The schema version this code writes.
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """The database's schema version: the highest row of ``schema_version``, 0 without that table.

    :param conn: any connection to the database.
    """
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return 0
    row = conn.execute("SELECT COALESCE(max(version), 0) FROM schema_version").fetchone()
    return int(row[0]) if row is not None else 0


def migrate(dsn: str, password: str | None = None, node: str = "", connect_timeout: float = 5.0) -> int:
    """``dicom-gateway db migrate``: connect and bring the database to the code's schema version.

    The connection is made as the store makes its own (keepalives, timeouts,
    the password as a separate parameter, never shown);
    :func:`apply_migrations` does the work under the advisory lock.

    :param dsn: libpq connection string or URI.
    :param password: the password (from ``queue.password_file``), or ``None``.
    :param node: recorded as who applied each migration.
    :param connect_timeout: seconds to wait for the connection.
    :returns: the number of migrations applied (0: already current, or another node did them).
    :raises SchemaError: the database is newer than this code.
    :raises gateway.queue.interfaces.StoreUnavailable: the database cannot be reached.
    :raises ValueError: the DSN cannot be parsed.
    """
    from gateway.queue.postgres import migrate_database

    return migrate_database(dsn, password, node, connect_timeout)


def apply_migrations(
    conn: psycopg.Connection[Any],
    node: str = "",
    migrations: Sequence[Callable[[psycopg.Connection[Any]], None]] | None = None,
) -> int:
    """Bring the database to the code's schema version under the migration advisory lock.

    :param conn: an autocommit connection (the store's, or ``db migrate``'s own).
    :param node: recorded with each migration applied (who did it).
    :param migrations: the list to apply (tests add one); :data:`MIGRATIONS` by default.
    :returns: the number of migrations this call applied (0 when another node did them).
    :raises SchemaError: the database's schema is newer than the code.
    """
    steps = MIGRATIONS if migrations is None else tuple(migrations)
    conn.execute("SELECT pg_advisory_lock(%s, %s)", (ADVISORY_NAMESPACE, MIGRATION_LOCK))
    try:
        with conn.transaction():
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " version INTEGER PRIMARY KEY,"
                " applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),"
                " applied_by TEXT NOT NULL DEFAULT '')"
            )
        # Read again under the lock: another node may have migrated meanwhile.
        version = schema_version(conn)
        if version > len(steps):
            raise SchemaError(f"schema version {version} is newer than {len(steps)}: upgrade the gateway")
        for number, step in enumerate(steps[version:], start=version + 1):
            with conn.transaction():
                step(conn)
                conn.execute("INSERT INTO schema_version (version, applied_by) VALUES (%s, %s)", (number, node))
        return len(steps) - version
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s, %s)", (ADVISORY_NAMESPACE, MIGRATION_LOCK))


# -- the row shape (shared with SQLite: gateway.queue.rows) -------------------

INSTANCE_SELECT = "SELECT " + ", ".join("i." + c for c in INSTANCE_COLUMNS) + " FROM instances i"


def attempt_json(attempt: Attempt) -> list[dict[str, Any]]:
    """One attempt as the one-element ``jsonb`` array appended to ``history``."""
    return [{"at": attempt.at, "error": attempt.error, "counted": attempt.counted}]


def _history_from_jsonb(items: list[dict[str, Any]]) -> tuple[Attempt, ...]:
    """The ``history`` column (``jsonb``, decoded by psycopg) as attempts.

    jsonb numbers come back as int when integral: times are floats.
    """
    return tuple(Attempt(at=float(item["at"]), error=item["error"], counted=item["counted"]) for item in items)


def entry_from_row(row: Sequence[Any]) -> Entry:
    """Build an :class:`Entry` from a row of :data:`ENTRY_SELECT` (history as ``jsonb``)."""
    return rows.entry_from_row(row, _history_from_jsonb)
