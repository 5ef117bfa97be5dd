"""The journal's schema: its migrations and the shape of its rows (issue 12).

``PRAGMA user_version`` holds the schema version; ``MIGRATIONS[i]`` takes a
database from version ``i`` to ``i + 1`` (version 0 is an empty file). How
and when the store applies them, and what each table and index is for, is
the theory of operation of :mod:`gateway.queue.sqlite`, which re-exports
:data:`MIGRATIONS`, :data:`SCHEMA_VERSION` and :class:`SchemaError` (the
store reads them from there, so a test can patch one more migration in).

The row shape (the columns of ``instances`` and ``entries`` in the order the
store writes and selects them, and the mapping of a row to
:class:`~gateway.queue.interfaces.Entry`) is shared by the store's queries.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Callable, Sequence

from gateway.queue.interfaces import Attempt, Entry
from gateway.queue.rows import ENTRY_COLUMNS, ENTRY_SELECT, INSTANCE_COLUMNS, entry_from_row, record_from_row

__all__ = ["SchemaError", "MIGRATIONS", "SCHEMA_VERSION"]


class SchemaError(Exception):
    """The database file's schema version is one this code cannot use."""

def _migrate_0_to_1(conn: sqlite3.Connection) -> None:
    """Create the first schema: instances, entries, destinations and their indexes.

    :param conn: a connection inside a write transaction.
    """
    statements = [
        """
        CREATE TABLE instances (
            instance_id TEXT PRIMARY KEY,
            path TEXT NOT NULL,
            sop_class_uid TEXT NOT NULL,
            sop_instance_uid TEXT NOT NULL,
            transfer_syntax_uid TEXT NOT NULL,
            size INTEGER NOT NULL,
            sha256 TEXT NOT NULL,
            received_at REAL NOT NULL,
            correlation_id TEXT NOT NULL,
            study_instance_uid TEXT NOT NULL DEFAULT '',
            series_instance_uid TEXT NOT NULL DEFAULT '',
            patient_id TEXT NOT NULL DEFAULT '',
            accession_number TEXT NOT NULL DEFAULT '',
            modality TEXT NOT NULL DEFAULT '',
            calling_ae_title TEXT NOT NULL DEFAULT '',
            called_ae_title TEXT NOT NULL DEFAULT '',
            source_address TEXT NOT NULL DEFAULT ''
        )
        """,
        """
        CREATE TABLE entries (
            entry_id INTEGER PRIMARY KEY AUTOINCREMENT,
            instance_id TEXT NOT NULL REFERENCES instances(instance_id),
            route TEXT NOT NULL,
            destination TEXT NOT NULL,
            path TEXT,
            state TEXT NOT NULL
                CHECK (state IN ('queued', 'leased', 'delivered', 'dead', 'duplicate')),
            attempts INTEGER NOT NULL DEFAULT 0,
            enqueued_at REAL NOT NULL,
            next_attempt_at REAL NOT NULL,
            leased_until REAL,
            last_error TEXT NOT NULL DEFAULT '',
            delivered_at REAL,
            dead_reason TEXT NOT NULL DEFAULT '',
            history TEXT NOT NULL DEFAULT '[]',
            study_hash INTEGER NOT NULL
        )
        """,
        """
        CREATE TABLE destinations (
            name TEXT PRIMARY KEY,
            paused INTEGER NOT NULL DEFAULT 0,
            last_error TEXT NOT NULL DEFAULT '',
            last_error_at REAL,
            last_success_at REAL
        )
        """,
        # lease: equality on (destination, state), walk in entry_id order,
        # filter due time and shard without touching the table.
        "CREATE INDEX entries_lease ON entries (destination, state, entry_id, next_attempt_at, study_hash)",
        "CREATE INDEX entries_due ON entries (destination, state, next_attempt_at)",
        "CREATE INDEX entries_instance ON entries (instance_id, state)",
        "CREATE INDEX instances_sop ON instances (sop_instance_uid)",
        "CREATE INDEX instances_study ON instances (study_instance_uid)",
        "CREATE INDEX instances_patient ON instances (patient_id)",
        "CREATE INDEX instances_accession ON instances (accession_number)",
        "CREATE INDEX instances_received ON instances (received_at)",
    ]
    for statement in statements:
        conn.execute(statement)


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    """Version 2: each destination's circuit state, so ``queue list`` shows it from another process."""
    conn.execute("ALTER TABLE destinations ADD COLUMN circuit_open INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE destinations ADD COLUMN circuit_reason TEXT NOT NULL DEFAULT ''")
    conn.execute("ALTER TABLE destinations ADD COLUMN circuit_since REAL")


def _migrate_2_to_3(conn: sqlite3.Connection) -> None:
    """Version 3: each entry names the morph plan it was journaled with (issue 11).

    ``plans`` keeps each distinct plan definition once, keyed by its SHA-256
    (every entry of a route shares one row, so the journal stays small);
    ``entries.plan_hash`` points at it.

    Entries written before this version have no plan: they were queued by
    a gateway that looked the route up by name at send time. Nothing here
    can know what their route's morph was, and the rule is that an entry is
    never sent with less morphing than it was queued with, so they are
    left without a plan (NULL) and resolved by the gateway at its next
    start, which has the configuration: :meth:`SqliteQueueStore.adopt_plans`
    gives each the plan its route has in that configuration (the closest
    record of what it was queued under: what an upgrade without a
    configuration change would have sent); an entry whose route is no
    longer configured keeps NULL and is dead-lettered with reason
    ``morph`` when a worker takes it, never sent unmorphed.
    """
    conn.execute("CREATE TABLE plans (plan_hash TEXT PRIMARY KEY, definition TEXT NOT NULL)")
    conn.execute("ALTER TABLE entries ADD COLUMN plan_hash TEXT REFERENCES plans(plan_hash)")


def _migrate_3_to_4(conn: sqlite3.Connection) -> None:
    """Version 4: where each instance's data set starts in its file (issue 13).

    The intake knows it (it wrote the file meta), so a send can skip the
    file meta without reading and parsing it again. 0 means unknown (rows
    written before this version): the sender reads the file meta as before.
    """
    conn.execute("ALTER TABLE instances ADD COLUMN dataset_offset INTEGER NOT NULL DEFAULT 0")


def _migrate_4_to_5(conn: sqlite3.Connection) -> None:
    """Version 5: several nodes on one queue (issue 14).

    * ``entries.lease_owner`` (the node holding, or last holding, the lease;
      NULL for entries never leased since, read as ``""``) and
      ``entries.lease_generation`` (grows at every lease: the fence of the
      writes that end a lease). A lease taken before this version has no
      owner: ``recover`` of any node returns it.
    * ``instances.node``: the node that received the instance (``""`` before).
    * ``slots``: cluster-wide association slots, one row per claimed
      (destination, slot) with its holder and expiry.
    * ``nodes``: each node's last heartbeat.
    * ``singletons``: once-only housekeeping, one timed holder per name.
    * ``entries_leased``, a partial index of the LEASED rows only, by
      (destination, leased_until): ``lease`` finds a destination's expired
      leases, and ``nodes`` counts live leases, without walking the rest
      of the table (it holds only what is in flight, a few rows per slot).
    """
    statements = [
        "ALTER TABLE entries ADD COLUMN lease_owner TEXT",
        "ALTER TABLE entries ADD COLUMN lease_generation INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE instances ADD COLUMN node TEXT NOT NULL DEFAULT ''",
        """
        CREATE TABLE slots (
            destination TEXT NOT NULL,
            slot INTEGER NOT NULL,
            owner TEXT NOT NULL,
            until REAL NOT NULL,
            PRIMARY KEY (destination, slot)
        )
        """,
        """
        CREATE TABLE nodes (
            node TEXT PRIMARY KEY,
            started_at REAL NOT NULL,
            last_seen REAL NOT NULL,
            detail TEXT NOT NULL DEFAULT ''
        )
        """,
        "CREATE TABLE singletons (name TEXT PRIMARY KEY, owner TEXT NOT NULL, until REAL NOT NULL)",
        "CREATE INDEX entries_leased ON entries (destination, leased_until, lease_owner) WHERE state = 'leased'",
    ]
    for statement in statements:
        conn.execute(statement)


def _migrate_5_to_6(conn: sqlite3.Connection) -> None:
    """Version 6: Storage Commitment (issue 15; PS3.4 Annex J).

    The tables of :class:`~gateway.queue.commitments.ICommitmentJournal`
    (what each holds, and which query each index serves, is in
    :mod:`gateway.queue.commitment_sql`): ``commitment_transactions`` (the
    reports owed), ``commitment_attempts`` (their delivery history),
    ``unforwarded`` (instances acknowledged and sent nowhere),
    ``copy_commitments`` (archives' commitments of delivered copies) and
    ``commitment_requests`` (the N-ACTIONs sent to archives). Nothing
    existing changes: a version-5 journal keeps all its data, and
    ``received`` finds its instances through the existing ``instances_sop`` index.
    """
    for statement in COMMITMENT_TABLES:
        conn.execute(statement)


#: The Storage Commitment tables and indexes (SQLite types; :mod:`gateway.queue.pgschema` has the PostgreSQL ones).
COMMITMENT_TABLES: tuple[str, ...] = (
    """
    CREATE TABLE commitment_transactions (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        transaction_uid TEXT NOT NULL UNIQUE,
        calling_ae_title TEXT NOT NULL,
        called_ae_title TEXT NOT NULL,
        modality TEXT NOT NULL,
        listener TEXT NOT NULL,
        policy TEXT NOT NULL,
        refs TEXT NOT NULL,
        deadline REAL NOT NULL,
        report_deadline REAL NOT NULL,
        lookback_from REAL NOT NULL,
        unrouted TEXT NOT NULL,
        report_association TEXT NOT NULL,
        source_address TEXT NOT NULL DEFAULT '',
        requested_at REAL NOT NULL,
        node TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('open', 'reported', 'dead')),
        report TEXT NOT NULL DEFAULT '',
        decided_at REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_error TEXT NOT NULL DEFAULT '',
        reported_at REAL,
        dead_reason TEXT NOT NULL DEFAULT '',
        lease_owner TEXT NOT NULL DEFAULT '',
        lease_generation INTEGER NOT NULL DEFAULT 0,
        leased_until REAL
    )
    """,
    # lease_transactions (OPEN, due) and transaction_stats; transactions() by request time.
    "CREATE INDEX commitment_transactions_due ON commitment_transactions (state, next_attempt_at, seq)",
    "CREATE INDEX commitment_transactions_requested ON commitment_transactions (requested_at, seq)",
    """
    CREATE TABLE commitment_attempts (
        attempt_id INTEGER PRIMARY KEY AUTOINCREMENT,
        transaction_uid TEXT NOT NULL REFERENCES commitment_transactions(transaction_uid),
        at REAL NOT NULL,
        error TEXT NOT NULL,
        counted INTEGER NOT NULL
    )
    """,
    "CREATE INDEX commitment_attempts_transaction ON commitment_attempts (transaction_uid, attempt_id)",
    """
    CREATE TABLE unforwarded (
        note_id INTEGER PRIMARY KEY AUTOINCREMENT,
        sop_class_uid TEXT NOT NULL,
        sop_instance_uid TEXT NOT NULL,
        outcome TEXT NOT NULL,
        received_at REAL NOT NULL,
        calling_ae_title TEXT NOT NULL DEFAULT '',
        reason TEXT NOT NULL DEFAULT '',
        noted_at REAL NOT NULL
    )
    """,
    "CREATE INDEX unforwarded_sop ON unforwarded (sop_instance_uid, received_at)",
    """
    CREATE TABLE copy_commitments (
        entry_id INTEGER PRIMARY KEY,
        destination TEXT NOT NULL,
        sop_class_uid TEXT NOT NULL,
        sop_instance_uid TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'requested', 'committed', 'failed')),
        noted_at REAL NOT NULL,
        transaction_uid TEXT NOT NULL DEFAULT '',
        requested_at REAL,
        answered_at REAL,
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
        requested_at REAL NOT NULL
    )
    """,
)


def _migrate_6_to_7(conn: sqlite3.Connection) -> None:
    """Version 7: Query/Retrieve (issue 16).

    The tables of :class:`~gateway.queue.retrieves.IRetrieveJournal` (what
    each holds, and which query each index serves, is in
    :mod:`gateway.queue.retrieve_sql`): ``retrieves`` (C-MOVE and C-GET in
    progress), ``retrieve_items`` (their instances), ``retrieve_counters``
    (the last outgoing message ID) and ``remapped_uids``. Nothing existing
    changes: a version-6 journal keeps all its data.
    """
    for statement in RETRIEVE_TABLES:
        conn.execute(statement)


#: The Query/Retrieve tables and indexes (SQLite types; :mod:`gateway.queue.pgschema` has the PostgreSQL ones).
RETRIEVE_TABLES: tuple[str, ...] = (
    """
    CREATE TABLE retrieves (
        retrieve_id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        requester_ae_title TEXT NOT NULL,
        listener TEXT NOT NULL,
        requester_message_id INTEGER NOT NULL,
        destination TEXT NOT NULL,
        mode TEXT NOT NULL,
        level TEXT NOT NULL,
        sources TEXT NOT NULL,
        refs TEXT NOT NULL,
        deadline REAL NOT NULL,
        message_id INTEGER NOT NULL CHECK (message_id BETWEEN 1 AND 65535),
        node TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('open', 'done', 'cancelled', 'failed')),
        created_at REAL NOT NULL,
        finished_at REAL,
        error TEXT NOT NULL DEFAULT ''
    )
    """,
    # PS3.7 9.1.1.1: the Move Originator Message ID names one open retrieve of the whole cluster.
    "CREATE UNIQUE INDEX retrieves_open_message_id ON retrieves (message_id) WHERE state = 'open'",
    "CREATE INDEX retrieves_created ON retrieves (created_at, retrieve_id)",
    """
    CREATE TABLE retrieve_items (
        retrieve_id INTEGER NOT NULL REFERENCES retrieves(retrieve_id),
        seq INTEGER NOT NULL,
        sop_class_uid TEXT NOT NULL,
        sop_instance_uid TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('expected', 'received', 'completed', 'warning', 'failed')),
        entry_id INTEGER,
        reason TEXT NOT NULL DEFAULT '',
        updated_at REAL NOT NULL,
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
        remembered_at REAL NOT NULL
    )
    """,
)


def _migrate_7_to_8(conn: sqlite3.Connection) -> None:
    """Version 8: the clean-up of the Query/Retrieve tables (issue 16).

    ``remapped_uids.last_used_at`` (a pair's last write or lookup; an existing
    pair starts at the time it was remembered) and the indexes the
    housekeeping's batched deletes read (:data:`RETRIEVE_CLEANUP`; see
    :mod:`gateway.queue.retrieve_sql`). Nothing existing changes: a
    version-7 journal keeps all its data.
    """
    conn.execute("ALTER TABLE remapped_uids ADD COLUMN last_used_at REAL NOT NULL DEFAULT 0")
    conn.execute("UPDATE remapped_uids SET last_used_at = remembered_at")
    for statement in RETRIEVE_CLEANUP:
        conn.execute(statement)


#: The indexes of the retrieve clean-up (the same text on PostgreSQL, :mod:`gateway.queue.pgschema`).
RETRIEVE_CLEANUP: tuple[str, ...] = (
    # purge_retrieves: the ended retrieves, oldest end first.
    "CREATE INDEX retrieves_finished ON retrieves (finished_at, retrieve_id) WHERE state <> 'open'",
    # purge_remapped_uids: the pairs unused the longest.
    "CREATE INDEX remapped_uids_last_used ON remapped_uids (last_used_at)",
)


def _migrate_8_to_9(conn: sqlite3.Connection) -> None:
    """Version 9: study completeness and the operator console (issue 18).

    ``studies`` holds one row per (route, study) of the routes that notify
    (:mod:`gateway.queue.studies`): written in the intake's transaction,
    completed (with its notification entries queued) in one transaction of
    the tracker. The console's indexes (:data:`CONSOLE_INDEXES`) serve its
    keyset pages over dead letters and the delivery chart. Nothing existing
    changes: a version-8 journal keeps all its data.
    """
    for statement in STUDIES_TABLE + CONSOLE_INDEXES:
        conn.execute(statement)


#: The study completeness table (the same text on PostgreSQL but for the types, :mod:`gateway.queue.pgschema`).
STUDIES_TABLE: tuple[str, ...] = (
    """
    CREATE TABLE studies (
        route TEXT NOT NULL,
        study_instance_uid TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('open', 'complete')),
        opened_at REAL NOT NULL,
        last_instance_at REAL NOT NULL,
        instances INTEGER NOT NULL DEFAULT 0,
        expected_instances INTEGER,
        series_seen TEXT NOT NULL DEFAULT '{}',
        completions INTEGER NOT NULL DEFAULT 0,
        completed_at REAL,
        forced INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (route, study_instance_uid)
    )
    """,
    # due_studies: the open studies, quietest first.
    "CREATE INDEX studies_due ON studies (state, last_instance_at)",
    # purge_studies: the complete rows, oldest completion first (retention.studies).
    "CREATE INDEX studies_completed ON studies (state, completed_at)",
)

#: The console's indexes (issue 18; the same text on PostgreSQL).
CONSOLE_INDEXES: tuple[str, ...] = (
    # Dead letters across all destinations, newest first, by keyset on entry_id.
    "CREATE INDEX entries_dead ON entries (entry_id) WHERE state = 'dead'",
    # The overview's delivery chart: deliveries of the last hour.
    "CREATE INDEX entries_delivered_at ON entries (delivered_at) WHERE state = 'delivered'",
)


#: ``MIGRATIONS[i]`` takes a database from schema version ``i`` to ``i + 1``.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _migrate_0_to_1,
    _migrate_1_to_2,
    _migrate_2_to_3,
    _migrate_3_to_4,
    _migrate_4_to_5,
    _migrate_5_to_6,
    _migrate_6_to_7,
    _migrate_7_to_8,
    _migrate_8_to_9,
)

#: The schema version this code writes (``PRAGMA user_version``).
SCHEMA_VERSION = len(MIGRATIONS)

# The row shape is shared with the PostgreSQL store (gateway.queue.rows).
_INSTANCE_COLUMNS = INSTANCE_COLUMNS
_ENTRY_COLUMNS = ENTRY_COLUMNS
_ENTRY_SELECT = ENTRY_SELECT
_INSTANCE_SELECT = "SELECT " + ", ".join(_INSTANCE_COLUMNS) + " FROM instances"
_record_from_row = record_from_row


def _history_from_json(text: str) -> tuple[Attempt, ...]:
    """Parse the ``history`` column (a JSON list of objects) into attempts."""
    return tuple(Attempt(at=item["at"], error=item["error"], counted=item["counted"]) for item in json.loads(text))


def _history_append(text: str, attempt: Attempt) -> str:
    """Return the ``history`` column with ``attempt`` appended."""
    items = json.loads(text)
    items.append({"at": attempt.at, "error": attempt.error, "counted": attempt.counted})
    return json.dumps(items, separators=(",", ":"))


def _entry_from_row(row: Sequence[Any]) -> Entry:
    """Build an :class:`Entry` from a row of ``_ENTRY_SELECT`` (history as JSON text)."""
    return entry_from_row(row, _history_from_json)
