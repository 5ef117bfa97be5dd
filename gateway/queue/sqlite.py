"""The durable queue store on SQLite (WAL, ``synchronous=FULL``).

Theory of operation
===================

The store is the gateway's journal of custody (HARDENING decision 10): an
instance acknowledged to a modality has, before the C-STORE-RSP leaves, one
row in ``instances`` and one row per (route, destination) in ``entries``,
written in **one** transaction. From then on each entry row moves through the
states of :class:`~gateway.queue.interfaces.EntryState`; every transition is
one transaction too, so after ``kill -9`` (or a power cut, thanks to
``synchronous=FULL``) the file holds either all of a transition or none of it
(HARDENING F14). The ``state`` column is one value with a ``CHECK``
constraint: an entry cannot be in two states, or in none.

Durability and concurrency
--------------------------
* ``journal_mode=WAL``: readers never block the writer and the writer never
  blocks readers, so ``dicom-gateway queue list`` (another process) reads a
  consistent snapshot while the gateway commits.
* ``synchronous=FULL``: every commit is fsynced to the WAL before
  :mod:`sqlite3` returns, which is what makes the acknowledgement safe.
* ``busy_timeout``: a second writer (the CLI's ``pause``/``retry``/``purge``)
  waits for the gateway's short transactions instead of failing at once.
* Writes use ``BEGIN IMMEDIATE``: the write lock is taken at the start of the
  transaction, so a read-then-write (``lease``: pick ids, then mark them) can
  never interleave with another writer. This is what guarantees that ``lease``
  never hands the same entry to two callers, even across processes.
* The forwarder's bookkeeping is batched so it rarely holds that lock:
  :meth:`SqliteQueueStore.settle` writes a slot's deliveries and its next
  lease in one transaction, and an idle turn (nothing to write, nothing
  due) reads without ``BEGIN IMMEDIATE`` (issue 13; :mod:`gateway.forward`
  says which of its writes needs what durability).
* One connection per store object, used from one thread at a time (the
  gateway runs every call through a single-thread
  :class:`~gateway.blocking.IBlockingRunner`); ``check_same_thread=False``
  lets the owning thread differ from the one that opened the file.

Schema and migrations
---------------------
``PRAGMA user_version`` holds the schema version. :data:`MIGRATIONS` (written
in :mod:`gateway.queue.schema` with the row shape) is a list of functions;
``MIGRATIONS[i]`` takes a database from version ``i`` to ``i + 1`` (version 0
is an empty file). On open, the store applies the
missing ones inside one ``BEGIN IMMEDIATE`` transaction; a file whose version
is newer than this code knows is refused (:class:`SchemaError`) rather than
misread. A file that is already current is opened without taking the write
lock, so the CLI can open it while the gateway holds a write transaction.

Morph plans
-----------
Each entry names the morph plan it was journaled with (``entries.plan_hash``,
schema version 3, issue 11); ``plans`` holds each distinct definition once,
keyed by its SHA-256, so a backlog of a million entries of one route stores
one plan. Rows of ``plans`` are never deleted: there is one per distinct
morph ever configured, and an entry retried by an operator must still find
its plan. Entries from an older journal have no plan until
:meth:`SqliteQueueStore.adopt_plans` (see :func:`gateway.queue.schema._migrate_2_to_3`).

Several nodes (issue 14, schema version 5)
------------------------------------------
The interface is written for several gateways on one queue (PostgreSQL);
this store implements all of it so the same test mixin holds, and so that
two store objects on one file (two processes on one machine, or a test's
two "nodes") behave as a cluster would. ``BEGIN IMMEDIATE`` serializes every
write, which is what ``FOR UPDATE SKIP LOCKED`` gives PostgreSQL: two
nodes never hold one entry. The SQLite file itself must never be on a
network filesystem (the configuration refuses ``spool.shared`` with it).

* A lease writes ``lease_owner`` (this store's ``node``), ``leased_until``
  and ``lease_generation + 1``. The writes that end or extend a lease
  accept a generation (the *fence*) and then change a row only ``WHERE
  state = 'leased' AND lease_generation = ?``: a node that wakes up past
  its lease finds the row no longer matching and its outcome is dropped
  (``Settled.lost``, :class:`~gateway.queue.interfaces.LeaseLost`).
* ``lease`` first takes back the destination's expired leases (``leased_until
  < now``, any owner) in the same write transaction, noting the first
  ``UNRECORDED_DELIVERIES + 1`` of each (owner, until) group as in flight,
  as ``recover`` does. An idle ``settle`` looks for such leases in its read
  (one probe of ``entries_leased``) before deciding it needs no write.
* ``recover`` returns this node's leases and owner-less ones (written before
  version 5); another node's wait for expiry.
* ``slots`` and ``singletons`` rows are timed claims: taken when absent,
  expired (``until < now``) or already the caller's, refused otherwise. A
  claim another node holds is refused from a read, without the write lock.
* ``nodes`` holds each node's last heartbeat; ``stats`` of a ``local_only``
  store counts QUEUED entries whose instance's node has been silent for
  ``stranded_after`` seconds (or never sent a heartbeat) as stranded.

Storage Commitment (issue 15, schema version 6)
-----------------------------------------------
The store is also the :class:`~gateway.queue.commitments.ICommitmentJournal`:
the reports the gateway owes as Storage Commitment SCP (PS3.4 Annex J), what
it noted of instances it sent nowhere, and the archives' commitments of
delivered copies. The SQL is shared with the PostgreSQL store
(:mod:`gateway.queue.commitment_sql`, whose docstring lists the tables and
their indexes); transactions are leased and fenced like entries, under the
same ``BEGIN IMMEDIATE``. ``forget_instance`` and ``purge`` delete the copy
commitments of the entries they delete.

Query/Retrieve (issue 16, schema version 7)
-------------------------------------------
The store is also the :class:`~gateway.queue.retrieves.IRetrieveJournal`:
C-MOVE and C-GET retrieves in progress (their outgoing message IDs, unique
among open retrieves, and their instances linked to the entries that send
them on) and remapped -> original UIDs. The SQL is shared with the
PostgreSQL store (:mod:`gateway.queue.retrieve_sql`, whose docstring lists
the tables); a message ID is allocated under ``BEGIN IMMEDIATE``.

Indexes (each serves a hot query with 100k+ entries)
----------------------------------------------------
* ``entries_lease (destination, state, entry_id, next_attempt_at, study_hash)``:
  ``lease`` walks a destination's QUEUED entries in id order (oldest first)
  and filters due time and shard from the index alone, stopping after
  ``limit`` hits; ``entries`` and ``stats`` use its prefix.
  With ``local_only`` the walk stays the outer loop (``CROSS JOIN``) and
  each hit looks its instance's ``node`` up by primary key.
* ``entries_leased (destination, leased_until, lease_owner) WHERE state =
  'leased'`` (partial: it holds only the entries in flight, a few per
  slot): ``lease`` finds a destination's expired leases with one range
  search, never reading another destination's or a live lease; ``nodes``
  counts live leases per owner from it.
* ``entries_due (destination, state, next_attempt_at)``: ``next_due``.
* ``entries_instance (instance_id, state)``: an instance's entries for
  ``find``, ``finished_instances``, ``forget_instance`` and duplicate lookup.
* ``instances`` by SOP Instance UID, Study Instance UID, Patient ID,
  Accession Number (``find``, duplicate lookup) and ``received_at``
  (``finished_instances``).

Conventions shared with :class:`~gateway.queue.memory.MemoryQueueStore`
(the test mixin pins them for both):

* ``attempts`` counts recorded failed attempts with ``counted=True``
  (:meth:`retry`); ``complete`` does not change it.
* ``dead_letter`` appends ``Attempt(now, reason, counted=False)`` to the
  history, so the reason survives an operator's ``requeue_dead``.
* ``requeue_dead`` always gives the entry a new id (the tail of the queue is
  the highest id) with ``enqueued_at = next_attempt_at = now``.
* A DUPLICATE entry never makes a later re-send a duplicate: the window runs
  from the entry that was actually forwarded.
* ``settle`` is ``complete`` (one warning per id) then ``lease``; with
  nothing leased it returns ``next_due``.
* ``complete`` and ``release`` skip ids that are not LEASED; ``retry``
  raises :class:`KeyError` for an entry that is not LEASED and
  ``dead_letter`` for one that is not QUEUED or LEASED.
* Fencing: with ``generations`` (or ``generation``) an entry counts as held
  only while LEASED under that generation (an expired lease nobody took
  back still counts: nobody else recorded anything); ids absent from
  ``generations`` are written unfenced. A lost fenced delivery is skipped
  and listed in ``Settled.lost``; a lost fenced ``retry`` or
  ``dead_letter`` raises :class:`~gateway.queue.interfaces.LeaseLost`
  (a QUEUED entry is not held under any generation); ``renew`` returns the
  lost ids.
* Expired means ``until < now`` for leases, slots and singletons alike: at
  ``until`` exactly the holder still holds. ``nodes`` counts only live
  leases and slots.
* ``local_only`` leases only entries whose instance's ``node`` is this
  store's (an instance journaled before version 5 has node ``""``: no
  node-local store sends it).
* ``add_instance`` of an instance id already on record raises
  :class:`ValueError`; ``forget_instance`` of an unknown id does nothing.
* ``lease`` refuses a shard ``(k, n)`` without ``0 <= k < n``
  (:class:`ValueError`); a ``limit`` of 0 or less returns nothing everywhere.
* ``find`` returns instances oldest received first; with no criterion, all.
"""

from __future__ import annotations

import os
import sqlite3
import zlib
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

from zope.interface import implementer

from gateway.private import FILE_MODE, open_private, tighten
from gateway.queue.commitment_sql import SqlCommitmentJournal
from gateway.queue.commitments import ICommitmentJournal
from gateway.queue.retrieve_sql import SqlRetrieveJournal
from gateway.queue.console_sql import SqlConsoleQueries  # issue 18: the console's keyset reads
from gateway.queue.retrieves import IRetrieveJournal
from gateway.queue.memory_studies import check_notes, note_applies
from gateway.queue.study_sql import SqlStudyJournal
from gateway.queue.studies import IStudyJournal, StudyNote
from gateway.queue.interfaces import (
    AddResult,
    Attempt,
    DestinationStats,
    Entry,
    EntryState,
    EXPIRED_LEASE_PREFIX,
    InstanceRecord,
    IQueueStore,
    LeaseLost,
    NewEntry,
    NodeStatus,
    PlanRecord,
    RECOVERED_IN_FLIGHT,
    Settled,
    UNRECORDED_DELIVERIES,
)
from gateway.queue.schema import (
    _ENTRY_SELECT,
    _INSTANCE_COLUMNS,
    _INSTANCE_SELECT,
    MIGRATIONS,
    SCHEMA_VERSION,
    SchemaError,
    _entry_from_row,
    _history_append,
    _record_from_row,
)

__all__ = ["SqliteQueueStore", "SchemaError", "MIGRATIONS", "SCHEMA_VERSION", "study_hash", "check_shard", "check_slot"]

#: How long a connection waits for another writer's lock, in milliseconds.
BUSY_TIMEOUT_MS = 5000

#: WAL pages between automatic checkpoints (SQLite's default is 1,000).
WAL_AUTOCHECKPOINT_PAGES = 4000


def study_hash(study_instance_uid: str) -> int:
    """The shard key of a study: crc32 of its UID (stable across processes and runs).

    :param study_instance_uid: the Study Instance UID (may be empty).
    :returns: an unsigned 32-bit integer.
    """
    return zlib.crc32(study_instance_uid.encode())


def check_shard(shard: tuple[int, int] | None) -> None:
    """Refuse a shard that names no slot: ``(k, n)`` needs ``0 <= k < n``.

    :param shard: the shard argument of ``lease``.
    :raises ValueError: the shard is malformed.
    """
    if shard is not None and not 0 <= shard[0] < shard[1]:
        raise ValueError(f"shard {shard!r}: need (k, n) with 0 <= k < n")


def check_slot(slot: int, slots: int) -> None:
    """Refuse an association slot that does not exist: ``0 <= slot < slots``.

    :param slot: the slot ``claim_slot`` is asked for.
    :param slots: the destination's ``max_associations``.
    :raises ValueError: no such slot.
    """
    if not 0 <= slot < slots:
        raise ValueError(f"slot {slot!r} of {slots!r}: need 0 <= slot < slots")


def _fence(entry_id: int, generations: Mapping[int, int] | None) -> tuple[str, tuple[int, ...]]:
    """The SQL condition (and its parameter) that fences a write to ``entry_id``.

    :param entry_id: the entry written.
    :param generations: entry id -> the generation the caller leased; an id
        absent from it (or ``None``) is written unfenced.
    :returns: ``(" AND lease_generation = ?", (generation,))`` or ``("", ())``.
    """
    if generations is None or entry_id not in generations:
        return "", ()
    return " AND lease_generation = ?", (generations[entry_id],)


def _make_private(path: str) -> None:
    """Create the journal file 0600 before SQLite opens it, and tighten an older one (HARDENING H08).

    SQLite creates the ``-wal`` and ``-shm`` files with the permissions of
    the database file (its unix VFS copies them from the main file), so a
    database created 0600 here keeps all three private whatever the umask.
    A journal and companions left group- or world-readable by an earlier
    version are tightened at open.

    :param path: the database file.
    """
    os.close(open_private(path, os.O_RDWR))
    for suffix in ("-wal", "-shm"):
        tighten(path + suffix, FILE_MODE)


@implementer(IQueueStore, ICommitmentJournal, IRetrieveJournal, IStudyJournal)
class SqliteQueueStore(SqlCommitmentJournal, SqlRetrieveJournal, SqlStudyJournal, SqlConsoleQueries):
    """The durable :class:`~gateway.queue.interfaces.IQueueStore` on one SQLite file.

    It is also the :class:`~gateway.queue.commitments.ICommitmentJournal`
    (Storage Commitment, issue 15): :class:`~gateway.queue.commitment_sql.SqlCommitmentJournal`,
    with SQLite's ``?`` marks and IN lists chunked under its variable limit,
    and the :class:`~gateway.queue.retrieves.IRetrieveJournal` (issue 16):
    :class:`~gateway.queue.retrieve_sql.SqlRetrieveJournal`.

    :param path: the database file (created with the current schema if absent).
    :param node: the node this store object speaks for (lease owner, heartbeats).
    :param local_only: node-local spools: lease only instances this node received.
    :raises SchemaError: the file's schema is newer than this code.
    """

    def __init__(self, path: str, node: str = "node", local_only: bool = False) -> None:
        self.path = path
        self.node = node
        self.local_only = local_only
        if path != ":memory:" and not path.startswith("file:"):
            _make_private(path)
        # isolation_level=None: no implicit transactions; we issue BEGIN ourselves.
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")
            # A checkpoint syncs the WAL and the database file: two device flushes.
            # At SQLite's default (1,000 pages, about 75 journaled instances) that
            # added 0.03 flushes per received instance; at 4,000 pages (16 MiB of
            # WAL) it is under 0.01 (issue 13).
            self._conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except BaseException:
            self._conn.close()
            raise

    # -- plumbing -----------------------------------------------------------

    def _version(self) -> int:
        """The file's ``PRAGMA user_version``."""
        version: int = self._conn.execute("PRAGMA user_version").fetchone()[0]
        return version

    def _migrate(self) -> None:
        """Bring the schema to :data:`SCHEMA_VERSION`, taking the write lock only if needed."""
        if self._version() == SCHEMA_VERSION:
            return
        with self._write():
            # Re-read under the lock: another process may have migrated meanwhile.
            version = self._version()
            if version > SCHEMA_VERSION:
                raise SchemaError(f"{self.path}: schema version {version} is newer than {SCHEMA_VERSION}")
            for migration in MIGRATIONS[version:]:
                migration(self._conn)
            # PRAGMA takes no parameters; the value is our own integer.
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: ``BEGIN IMMEDIATE``, then COMMIT, or ROLLBACK on any error."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: a consistent snapshot across several SELECTs."""
        self._conn.execute("BEGIN")
        try:
            yield self._conn
        finally:
            self._conn.execute("COMMIT")

    def _state_of(self, entry_id: int) -> str | None:
        """The state column of one entry, or None if there is no such entry."""
        row = self._conn.execute("SELECT state FROM entries WHERE entry_id = ?", (entry_id,)).fetchone()
        return None if row is None else str(row[0])

    def _touch_destination(self, name: str, **columns: Any) -> None:
        """Create the destination's row if absent and set ``columns`` on it."""
        self._conn.execute("INSERT OR IGNORE INTO destinations (name) VALUES (?)", (name,))
        if columns:
            assignments = ", ".join(f"{column} = ?" for column in columns)
            self._conn.execute(f"UPDATE destinations SET {assignments} WHERE name = ?", (*columns.values(), name))

    def _get(self, entry_id: int) -> Entry:
        """One entry (inside the caller's transaction, if any)."""
        row = self._conn.execute(_ENTRY_SELECT + " WHERE e.entry_id = ?", (entry_id,)).fetchone()
        if row is None:
            raise KeyError(entry_id)
        return _entry_from_row(row)

    def _insert_entry(
        self,
        instance_id: str,
        route: str,
        destination: str,
        path: str | None,
        state: EntryState,
        now: float,
        hash_: int,
        history: str = "[]",
        plan_hash: str | None = None,
    ) -> int:
        """Insert one entry row and return its id (the highest so far: the tail)."""
        cursor = self._conn.execute(
            "INSERT INTO entries (instance_id, route, destination, path, state, enqueued_at,"
            " next_attempt_at, history, study_hash, plan_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (instance_id, route, destination, path, state.value, now, now, history, hash_, plan_hash),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def _keep_plan(self, plan: PlanRecord | None) -> str | None:
        """Record a plan's definition once (inside the caller's transaction); return its hash."""
        if plan is None:
            return None
        self._conn.execute(
            "INSERT OR IGNORE INTO plans (plan_hash, definition) VALUES (?, ?)", (plan.plan_hash, plan.definition)
        )
        return plan.plan_hash

    def _cj_entry(self, row: Sequence[Any]) -> Entry:
        """An Entry for the commitment journal's ``received`` (history as JSON text)."""
        return _entry_from_row(row)

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
        with self._write() as conn:
            return self._add_one(conn, record, entries, now, duplicate_window, notes)

    def add_instances(
        self,
        batch: Sequence[tuple[InstanceRecord, Sequence[NewEntry]]],
        now: float,
        duplicate_window: float,
        notes: Sequence[Sequence[StudyNote]] | None = None,
    ) -> list[AddResult]:
        """Several instances in one transaction: one fsync for all (group commit).

        See :meth:`gateway.queue.interfaces.IQueueStore.add_instances`.

        :raises ValueError: an instance id is already recorded (nothing is kept), or
            ``notes`` is not one sequence per batch item.
        """
        per_item = check_notes(batch, notes)
        with self._write() as conn:
            return [
                self._add_one(conn, record, entries, now, duplicate_window, item_notes)
                for (record, entries), item_notes in zip(batch, per_item)
            ]

    def _add_one(
        self,
        conn: sqlite3.Connection,
        record: InstanceRecord,
        entries: Sequence[NewEntry],
        now: float,
        duplicate_window: float,
        notes: Sequence[StudyNote] = (),
    ) -> AddResult:
        """Insert one instance, its entries and its study notes inside the caller's transaction."""
        hash_ = study_hash(record.study_instance_uid)
        ids: list[int] = []
        duplicates: list[str] = []
        # Destinations that already have this exact instance (same UID and
        # bytes) from an entry forwarded within the window (HARDENING
        # decision 5). Looked up before inserting: only earlier entries count.
        already: set[str] = set()
        if duplicate_window > 0:
            rows = conn.execute(
                "SELECT DISTINCT e.destination FROM instances i"
                " JOIN entries e ON e.instance_id = i.instance_id"
                " WHERE i.sop_instance_uid = ? AND i.sha256 = ?"
                " AND e.state NOT IN ('dead', 'duplicate') AND e.enqueued_at >= ?",
                (record.sop_instance_uid, record.sha256, now - duplicate_window),
            )
            already = {row[0] for row in rows}
        try:
            conn.execute(
                "INSERT INTO instances (" + ", ".join(_INSTANCE_COLUMNS) + ") VALUES ("
                + ", ".join("?" * len(_INSTANCE_COLUMNS)) + ")",
                tuple(getattr(record, column) for column in _INSTANCE_COLUMNS),
            )
        except sqlite3.IntegrityError as e:
            raise ValueError(f"instance {record.instance_id!r} is already recorded") from e
        states: list[EntryState] = []
        for new in entries:
            state = EntryState.DUPLICATE if new.destination in already else EntryState.QUEUED
            if state is EntryState.DUPLICATE:
                duplicates.append(new.destination)
            states.append(state)
            ids.append(
                self._insert_entry(
                    record.instance_id, new.route, new.destination, new.path, state, now, hash_,
                    plan_hash=self._keep_plan(new.plan),
                )
            )
        # Study completeness (issue 18): the rows of the notifying routes, same transaction.
        for note in notes:
            if note_applies(note.route, entries, states):
                self._sj_apply_note(conn, note, now)
        return AddResult(entry_ids=tuple(ids), duplicates=tuple(duplicates))

    # -- IQueueStore: the worker's cycle -------------------------------------

    def lease(
        self, destination: str, limit: int, now: float, lease_seconds: float, shard: tuple[int, int] | None = None
    ) -> list[Entry]:
        """Take up to ``limit`` due QUEUED entries of ``destination``, oldest first.

        See :meth:`gateway.queue.interfaces.IQueueStore.lease`.
        """
        check_shard(shard)
        if limit <= 0:
            return []
        with self._write() as conn:
            return self._lease_in(conn, destination, limit, now, lease_seconds, shard)

    def _any_expired(self, conn: sqlite3.Connection, destination: str, now: float) -> bool:
        """Whether the destination has an expired lease to take back (one probe of ``entries_leased``)."""
        row = conn.execute(
            "SELECT 1 FROM entries INDEXED BY entries_leased"
            " WHERE destination = ? AND state = 'leased' AND leased_until < ? LIMIT 1",
            (destination, now),
        ).fetchone()
        return row is not None

    def _reclaim_expired(self, conn: sqlite3.Connection, destination: str, now: float) -> int:
        """Return the destination's expired leases (any node) to QUEUED, noting the first of each as in flight.

        Inside the caller's write transaction. The rows come from the partial
        index of LEASED rows (``entries_leased``), by destination and expiry:
        no other destination's leases, and no live lease, are read.
        """
        rows = conn.execute(
            "SELECT entry_id, COALESCE(lease_owner, ''), leased_until, history FROM entries INDEXED BY entries_leased"
            " WHERE destination = ? AND state = 'leased' AND leased_until < ? ORDER BY entry_id",
            (destination, now),
        ).fetchall()
        groups: dict[tuple[str, float], list[tuple[int, str]]] = {}
        for entry_id, owner, until, history in rows:
            group = groups.setdefault((owner, until), [])
            if len(group) <= UNRECORDED_DELIVERIES:
                group.append((entry_id, history))
        for (owner, _), group in groups.items():
            note = EXPIRED_LEASE_PREFIX + owner + " expired"
            for entry_id, history in group:
                conn.execute(
                    "UPDATE entries SET last_error = ?, history = ? WHERE entry_id = ?",
                    (note, _history_append(history, Attempt(now, note, False)), entry_id),
                )
        conn.executemany(
            "UPDATE entries SET state = 'queued', leased_until = NULL WHERE entry_id = ?",
            [(row[0],) for row in rows],
        )
        return len(rows)

    def _due_ids(
        self, conn: sqlite3.Connection, destination: str, limit: int, now: float, shard: tuple[int, int] | None
    ) -> list[int]:
        """The ids ``lease`` would take, unless the destination is paused (no writes)."""
        paused = conn.execute("SELECT paused FROM destinations WHERE name = ?", (destination,)).fetchone()
        if paused is not None and paused[0]:
            return []
        # Node-local spools: only this node's instances. CROSS JOIN keeps the
        # walk of entries_lease the outer loop (one instances lookup per hit).
        sql = (
            "SELECT e.entry_id FROM entries e INDEXED BY entries_lease"
            + (" CROSS JOIN instances i ON i.instance_id = e.instance_id" if self.local_only else "")
            + " WHERE e.destination = ? AND e.state = 'queued' AND e.next_attempt_at <= ?"
        )
        params: list[Any] = [destination, now]
        if shard is not None:
            sql += " AND e.study_hash % ? = ?"
            params += [shard[1], shard[0]]
        if self.local_only:
            sql += " AND i.node = ?"
            params.append(self.node)
        sql += " ORDER BY e.entry_id LIMIT ?"
        params.append(limit)
        return [row[0] for row in conn.execute(sql, params)]

    def _lease_in(
        self,
        conn: sqlite3.Connection,
        destination: str,
        limit: int,
        now: float,
        lease_seconds: float,
        shard: tuple[int, int] | None,
    ) -> list[Entry]:
        """The body of :meth:`lease`, inside the caller's write transaction."""
        self._reclaim_expired(conn, destination, now)
        ids = self._due_ids(conn, destination, limit, now, shard)
        if not ids:
            return []
        marks = ", ".join("?" * len(ids))
        conn.execute(
            "UPDATE entries SET state = 'leased', leased_until = ?, lease_owner = ?,"
            f" lease_generation = lease_generation + 1 WHERE entry_id IN ({marks})",
            (now + lease_seconds, self.node, *ids),
        )
        rows = conn.execute(_ENTRY_SELECT + f" WHERE e.entry_id IN ({marks}) ORDER BY e.entry_id", ids).fetchall()
        return [_entry_from_row(row) for row in rows]

    def complete(
        self, entry_ids: Sequence[int], now: float, warning: str = "", generations: Mapping[int, int] | None = None
    ) -> None:
        """Mark leased entries DELIVERED; ids that are not LEASED (or whose fenced lease was lost) are skipped.

        See :meth:`gateway.queue.interfaces.IQueueStore.complete`.
        """
        with self._write() as conn:
            self._complete_in(conn, [(entry_id, warning) for entry_id in entry_ids], now, generations)

    def _complete_in(
        self,
        conn: sqlite3.Connection,
        delivered: Sequence[tuple[int, str]],
        now: float,
        generations: Mapping[int, int] | None,
    ) -> tuple[int, ...]:
        """The body of :meth:`complete` with a warning per entry, inside the caller's write transaction.

        :returns: the fenced ids whose lease was lost (not recorded).
        """
        destinations: set[str] = set()
        lost: list[int] = []
        for entry_id, warning in delivered:
            fence, params = _fence(entry_id, generations)
            row = conn.execute(
                "UPDATE entries SET state = 'delivered', delivered_at = ?, last_error = ?, leased_until = NULL"
                " WHERE entry_id = ? AND state = 'leased'" + fence + " RETURNING destination",
                (now, warning, entry_id, *params),
            ).fetchone()
            if row is not None:
                destinations.add(row[0])
            elif params:
                lost.append(entry_id)
        for name in sorted(destinations):
            self._touch_destination(name, last_success_at=now)
        return tuple(lost)

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
        """Record deliveries and lease the next entries in one ``BEGIN IMMEDIATE`` transaction.

        See :meth:`gateway.queue.interfaces.IQueueStore.settle`. With nothing
        to record, a read outside any write transaction looks for due entries
        first: an idle turn takes no write lock. The lease itself is decided
        again under the lock, so a concurrent writer (the CLI) is never
        overtaken.
        """
        check_shard(shard)
        if not delivered:
            if limit <= 0:
                return Settled()
            with self._read() as conn:
                if not self._any_expired(conn, destination, now) and not self._due_ids(conn, destination, 1, now, shard):
                    return Settled((), self._next_due_in(conn, destination))
        with self._write() as conn:
            lost = self._complete_in(conn, delivered, now, generations)
            leased = self._lease_in(conn, destination, limit, now, lease_seconds, shard) if limit > 0 else []
            if leased or limit <= 0:
                return Settled(tuple(leased), lost=lost)
            return Settled((), self._next_due_in(conn, destination), lost)

    def retry(
        self, entry_id: int, next_attempt_at: float, error: str, now: float, counted: bool = True, generation: int | None = None
    ) -> None:
        """Return a LEASED entry to QUEUED for ``next_attempt_at``, recording the attempt.

        See :meth:`gateway.queue.interfaces.IQueueStore.retry`.

        :raises LeaseLost: ``generation`` is given and the entry is not LEASED under it.
        :raises KeyError: no such entry, or it is not LEASED.
        """
        with self._write() as conn:
            fence, params = _fence(entry_id, None if generation is None else {entry_id: generation})
            row = conn.execute(
                "SELECT destination, history FROM entries WHERE entry_id = ? AND state = 'leased'" + fence,
                (entry_id, *params),
            ).fetchone()
            if row is None:
                raise LeaseLost(entry_id) if generation is not None else KeyError(entry_id)
            destination, history = row
            conn.execute(
                "UPDATE entries SET state = 'queued', leased_until = NULL, next_attempt_at = ?, last_error = ?,"
                " attempts = attempts + ?, history = ? WHERE entry_id = ?",
                (next_attempt_at, error, 1 if counted else 0, _history_append(history, Attempt(now, error, counted)), entry_id),
            )
            self._touch_destination(destination, last_error=error, last_error_at=now)

    def release(self, entry_ids: Sequence[int], generations: Mapping[int, int] | None = None) -> None:
        """Return LEASED entries to QUEUED unchanged; other ids, and lost fenced leases, are skipped.

        See :meth:`gateway.queue.interfaces.IQueueStore.release`.
        """
        with self._write() as conn:
            for entry_id in entry_ids:
                fence, params = _fence(entry_id, generations)
                conn.execute(
                    "UPDATE entries SET state = 'queued', leased_until = NULL WHERE entry_id = ? AND state = 'leased'"
                    + fence,
                    (entry_id, *params),
                )

    def dead_letter(self, entry_id: int, reason: str, now: float, generation: int | None = None) -> None:
        """Move a QUEUED or LEASED entry to DEAD with ``reason``.

        See :meth:`gateway.queue.interfaces.IQueueStore.dead_letter`.

        :raises LeaseLost: ``generation`` is given and the entry is not LEASED under it.
        :raises KeyError: no such entry, or it is not QUEUED or LEASED.
        """
        with self._write() as conn:
            if generation is None:
                row = conn.execute(
                    "SELECT destination, history FROM entries WHERE entry_id = ? AND state IN ('queued', 'leased')",
                    (entry_id,),
                ).fetchone()
            else:
                row = conn.execute(
                    "SELECT destination, history FROM entries WHERE entry_id = ? AND state = 'leased'"
                    " AND lease_generation = ?",
                    (entry_id, generation),
                ).fetchone()
            if row is None:
                raise LeaseLost(entry_id) if generation is not None else KeyError(entry_id)
            destination, history = row
            conn.execute(
                "UPDATE entries SET state = 'dead', leased_until = NULL, dead_reason = ?, last_error = ?,"
                " history = ? WHERE entry_id = ?",
                (reason, reason, _history_append(history, Attempt(now, reason, False)), entry_id),
            )
            self._touch_destination(destination, last_error=reason, last_error_at=now)

    def expire(self, destination: str, enqueued_before: float, reason: str, now: float, limit: int = 1000) -> list[Entry]:
        """Dead-letter QUEUED entries of ``destination`` enqueued before ``enqueued_before``.

        See :meth:`gateway.queue.interfaces.IQueueStore.expire`.
        """
        with self._write() as conn:
            rows = conn.execute(
                "SELECT entry_id, history FROM entries WHERE destination = ? AND state = 'queued' AND enqueued_at < ?"
                " ORDER BY entry_id LIMIT ?",
                (destination, enqueued_before, limit),
            ).fetchall()
            for entry_id, history in rows:
                conn.execute(
                    "UPDATE entries SET state = 'dead', leased_until = NULL, dead_reason = ?, last_error = ?,"
                    " history = ? WHERE entry_id = ?",
                    (reason, reason, _history_append(history, Attempt(now, reason, False)), entry_id),
                )
            if rows:
                self._touch_destination(destination, last_error=reason, last_error_at=now)
            return [self._get(entry_id) for entry_id, _ in rows]

    def renew(self, generations: Mapping[int, int], now: float, lease_seconds: float) -> set[int]:
        """Extend the leases still held under their generation to ``now + lease_seconds``; return the lost ids.

        See :meth:`gateway.queue.interfaces.IQueueStore.renew`.
        """
        lost: set[int] = set()
        if not generations:
            return lost
        with self._write() as conn:
            for entry_id, generation in generations.items():
                cursor = conn.execute(
                    "UPDATE entries SET leased_until = ? WHERE entry_id = ? AND state = 'leased' AND lease_generation = ?",
                    (now + lease_seconds, entry_id, generation),
                )
                if cursor.rowcount != 1:
                    lost.add(entry_id)
        return lost

    # -- IQueueStore: several nodes ----------------------------------------------

    def _claim(
        self,
        table: str,
        key_columns: tuple[str, ...],
        key: tuple[Any, ...],
        now: float,
        seconds: float,
        blocked: Callable[[sqlite3.Connection], bool] = lambda conn: False,
    ) -> bool:
        """Take or keep a timed claim (a slot, a singleton): free, expired (``until < now``) or already ours.

        A claim another node holds live (or one ``blocked`` refuses) is
        answered from a read, without the write lock; otherwise the claim is
        decided again under it.
        """
        where = " AND ".join(f"{column} = ?" for column in key_columns)
        select = f"SELECT owner, until FROM {table} WHERE {where}"

        def taken(conn: sqlite3.Connection) -> bool:
            row = conn.execute(select, key).fetchone()
            return (row is not None and row[0] != self.node and row[1] >= now) or blocked(conn)

        with self._read() as conn:
            if taken(conn):
                return False
        with self._write() as conn:
            if taken(conn):
                return False
            columns = ", ".join(key_columns)
            conn.execute(
                f"INSERT INTO {table} ({columns}, owner, until) VALUES ({', '.join('?' * len(key))}, ?, ?)"
                f" ON CONFLICT ({columns}) DO UPDATE SET owner = excluded.owner, until = excluded.until",
                (*key, self.node, now + seconds),
            )
        return True

    def claim_slot(self, destination: str, slot: int, slots: int, now: float, seconds: float) -> bool:
        """Hold association slot ``slot`` of ``destination`` unless another node holds it live.

        See :meth:`gateway.queue.interfaces.IQueueStore.claim_slot`.

        :raises ValueError: not ``0 <= slot < slots``.
        """
        check_slot(slot, slots)

        def shard_leased_elsewhere(conn: sqlite3.Connection) -> bool:
            # Another node's live lease in the slot's shard: its previous holder's batch.
            row = conn.execute(
                "SELECT 1 FROM entries INDEXED BY entries_leased WHERE destination = ? AND state = 'leased'"
                " AND leased_until >= ? AND lease_owner != ? AND study_hash % ? = ? LIMIT 1",
                (destination, now, self.node, slots, slot),
            ).fetchone()
            return row is not None

        return self._claim("slots", ("destination", "slot"), (destination, slot), now, seconds, shard_leased_elsewhere)

    def release_slot(self, destination: str, slot: int) -> None:
        """Give up this node's claim on a slot; another node's claim is left alone.

        See :meth:`gateway.queue.interfaces.IQueueStore.release_slot`.
        """
        with self._write() as conn:
            conn.execute("DELETE FROM slots WHERE destination = ? AND slot = ? AND owner = ?", (destination, slot, self.node))

    def circuit(self, destination: str) -> tuple[bool, str, float | None]:
        """The destination's circuit as last recorded by any node.

        See :meth:`gateway.queue.interfaces.IQueueStore.circuit`.
        """
        row = self._conn.execute(
            "SELECT circuit_open, circuit_reason, circuit_since FROM destinations WHERE name = ?", (destination,)
        ).fetchone()
        if row is None:
            return False, "", None
        return bool(row[0]), str(row[1]), row[2]

    def heartbeat(self, now: float, started_at: float, detail: str = "") -> None:
        """Record that this node is alive (its row in ``nodes``).

        See :meth:`gateway.queue.interfaces.IQueueStore.heartbeat`.
        """
        with self._write() as conn:
            conn.execute(
                "INSERT INTO nodes (node, started_at, last_seen, detail) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (node) DO UPDATE SET started_at = excluded.started_at,"
                " last_seen = excluded.last_seen, detail = excluded.detail",
                (self.node, started_at, now, detail),
            )

    def nodes(self, now: float) -> list[NodeStatus]:
        """Every node that sent a heartbeat, by name, with the live leases and slots it holds.

        See :meth:`gateway.queue.interfaces.IQueueStore.nodes`.
        """
        with self._read() as conn:
            leases = dict(conn.execute(
                "SELECT lease_owner, count(*) FROM entries INDEXED BY entries_leased"
                " WHERE state = 'leased' AND leased_until >= ? GROUP BY lease_owner",
                (now,),
            ).fetchall())
            slots = dict(conn.execute("SELECT owner, count(*) FROM slots WHERE until >= ? GROUP BY owner", (now,)).fetchall())
            rows = conn.execute("SELECT node, started_at, last_seen, detail FROM nodes ORDER BY node").fetchall()
        return [
            NodeStatus(node, started_at, last_seen, leases.get(node, 0), slots.get(node, 0), detail)
            for node, started_at, last_seen, detail in rows
        ]

    def hold_singleton(self, name: str, now: float, seconds: float) -> bool:
        """Take or keep the named once-only job: a lease of ``seconds`` in ``singletons``, renewed by each call.

        See :meth:`gateway.queue.interfaces.IQueueStore.hold_singleton`.
        """
        return self._claim("singletons", ("name",), (name,), now, seconds)

    # -- IQueueStore: operator actions --------------------------------------

    def requeue_dead(self, entry_id: int, now: float, destination: str | None = None) -> int:
        """Operator retry of a DEAD entry: a new id at the tail of the queue.

        See :meth:`gateway.queue.interfaces.IQueueStore.requeue_dead`.
        """
        with self._write() as conn:
            row = conn.execute(
                "SELECT instance_id, route, destination, path, history, study_hash, plan_hash FROM entries"
                " WHERE entry_id = ? AND state = 'dead'",
                (entry_id,),
            ).fetchone()
            if row is None:
                raise KeyError(entry_id)
            instance_id, route, old_destination, path, history, hash_, plan_hash = row
            conn.execute("DELETE FROM entries WHERE entry_id = ?", (entry_id,))
            target = old_destination if destination is None else destination
            # The entry keeps its own plan: re-targeting sends the same copy.
            return self._insert_entry(instance_id, route, target, path, EntryState.QUEUED, now, hash_, history, plan_hash)

    def requeue_instance(
        self, instance_id: str, destination: str, route: str, now: float, plan: PlanRecord | None = None
    ) -> int:
        """Operator replay: a new QUEUED entry for an instance (never a duplicate).

        See :meth:`gateway.queue.interfaces.IQueueStore.requeue_instance`.

        :raises KeyError: no such instance.
        """
        with self._write() as conn:
            row = conn.execute("SELECT study_instance_uid FROM instances WHERE instance_id = ?", (instance_id,)).fetchone()
            if row is None:
                raise KeyError(instance_id)
            return self._insert_entry(
                instance_id, route, destination, None, EntryState.QUEUED, now, study_hash(row[0]),
                plan_hash=self._keep_plan(plan),
            )

    def plan(self, plan_hash: str) -> str:
        """The definition of a journaled plan.

        See :meth:`gateway.queue.interfaces.IQueueStore.plan`.
        """
        row = self._conn.execute("SELECT definition FROM plans WHERE plan_hash = ?", (plan_hash,)).fetchone()
        if row is None:
            raise KeyError(plan_hash)
        return str(row[0])

    def adopt_plans(self, plans: Mapping[str, PlanRecord]) -> int:
        """Give entries without a plan (schema < 3) their route's plan, when the route is given.

        See :meth:`gateway.queue.interfaces.IQueueStore.adopt_plans` and
        :func:`gateway.queue.schema._migrate_2_to_3` for why.
        """
        with self._write() as conn:
            routes = [row[0] for row in conn.execute(
                "SELECT DISTINCT route FROM entries WHERE plan_hash IS NULL AND state IN ('queued', 'leased', 'dead')"
            )]
            adopted = 0
            for route in routes:
                plan = plans.get(route)
                if plan is None:
                    continue
                adopted += conn.execute(
                    "UPDATE entries SET plan_hash = ? WHERE plan_hash IS NULL AND route = ?"
                    " AND state IN ('queued', 'leased', 'dead')",
                    (self._keep_plan(plan), route),
                ).rowcount
            return adopted

    def purge(self, entry_id: int) -> None:
        """Delete a DEAD entry for good.

        See :meth:`gateway.queue.interfaces.IQueueStore.purge`.
        """
        with self._write() as conn:
            cursor = conn.execute("DELETE FROM entries WHERE entry_id = ? AND state = 'dead'", (entry_id,))
            if cursor.rowcount != 1:
                raise KeyError(entry_id)
            self._drop_copy(conn, entry_id)

    def set_paused(self, destination: str, paused: bool) -> None:
        """Hold (or release) a destination.

        See :meth:`gateway.queue.interfaces.IQueueStore.set_paused`.
        """
        with self._write():
            self._touch_destination(destination, paused=1 if paused else 0)

    def set_circuit(self, destination: str, circuit_open: bool, reason: str, now: float) -> None:
        """Record a destination's circuit state.

        See :meth:`gateway.queue.interfaces.IQueueStore.set_circuit`.
        """
        with self._write():
            self._touch_destination(
                destination,
                circuit_open=1 if circuit_open else 0,
                circuit_reason=reason if circuit_open else "",
                circuit_since=now,
            )

    # -- IQueueStore: reading -----------------------------------------------

    def get(self, entry_id: int) -> Entry:
        """One entry with its history.

        See :meth:`gateway.queue.interfaces.IQueueStore.get`.
        """
        return self._get(entry_id)

    def entries(self, destination: str | None = None, state: EntryState | None = None, limit: int = 1000) -> list[Entry]:
        """Entries filtered by destination and state, oldest (lowest id) first.

        See :meth:`gateway.queue.interfaces.IQueueStore.entries`.
        """
        if limit <= 0:
            return []
        clauses: list[str] = []
        params: list[Any] = []
        if destination is not None:
            clauses.append("e.destination = ?")
            params.append(destination)
        if state is not None:
            clauses.append("e.state = ?")
            params.append(state.value)
        sql = _ENTRY_SELECT + (" WHERE " + " AND ".join(clauses) if clauses else "") + " ORDER BY e.entry_id LIMIT ?"
        params.append(limit)
        return [_entry_from_row(row) for row in self._conn.execute(sql, params)]

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
        where = " WHERE " + " AND ".join(f"{column} = ?" for column in given) if given else ""
        with self._read() as conn:
            records = [
                _record_from_row(row)
                for row in conn.execute(_INSTANCE_SELECT + where + " ORDER BY received_at, instance_id", tuple(given.values()))
            ]
            result = []
            for record in records:
                rows = conn.execute(_ENTRY_SELECT + " WHERE e.instance_id = ? ORDER BY e.entry_id", (record.instance_id,))
                result.append((record, [_entry_from_row(row) for row in rows]))
        return result

    def stats(self, now: float, stranded_after: float = 120.0) -> Mapping[str, DestinationStats]:
        """Figures per destination that has entries or a destinations row.

        See :meth:`gateway.queue.interfaces.IQueueStore.stats`.
        """
        with self._read() as conn:
            stranded: dict[str, int] = {}
            if self.local_only:
                # QUEUED entries of instances whose node (not this one) is away:
                # no heartbeat for stranded_after seconds, or none ever.
                stranded = dict(conn.execute(
                    "SELECT e.destination, count(*) FROM entries e JOIN instances i ON i.instance_id = e.instance_id"
                    " LEFT JOIN nodes n ON n.node = i.node WHERE e.state = 'queued' AND i.node != ?"
                    " AND (n.last_seen IS NULL OR n.last_seen < ?) GROUP BY e.destination",
                    (self.node, now - stranded_after),
                ).fetchall())
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
                name, (0, "", None, None, 0, "", None)
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

        See :meth:`gateway.queue.interfaces.IQueueStore.next_due`.
        """
        return self._next_due_in(self._conn, destination)

    def _next_due_in(self, conn: sqlite3.Connection, destination: str) -> float | None:
        """The body of :meth:`next_due` (inside the caller's transaction, if any)."""
        row = conn.execute(
            "SELECT min(next_attempt_at) FROM entries WHERE destination = ? AND state = 'queued'", (destination,)
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def shift_schedule(self, destination: str, after: float, delta: float, latest: float | None = None) -> int:
        """Move due times after a wall-clock step, then cap them at ``latest``.

        See :meth:`gateway.queue.interfaces.IQueueStore.shift_schedule`.
        """
        with self._write() as conn:
            changed = 0
            if delta:
                changed += conn.execute(
                    "UPDATE entries SET next_attempt_at = next_attempt_at + ?"
                    " WHERE destination = ? AND state = 'queued' AND next_attempt_at > ?",
                    (delta, destination, after),
                ).rowcount
            if latest is not None:
                changed += conn.execute(
                    "UPDATE entries SET next_attempt_at = ?"
                    " WHERE destination = ? AND state = 'queued' AND next_attempt_at > ?",
                    (latest, destination, latest),
                ).rowcount
            return changed

    # -- IQueueStore: lifecycle ----------------------------------------------

    def recover(self, now: float) -> int:
        """This node's LEASED entries (and owner-less ones) back to QUEUED; attempts are kept, each lease's first entries noted ambiguous.

        See :meth:`gateway.queue.interfaces.IQueueStore.recover`.
        """
        mine = "state = 'leased' AND (lease_owner = ? OR lease_owner IS NULL OR lease_owner = '')"
        with self._write() as conn:
            # The lowest ids of each lease (destination, owner, leased_until) may
            # have been on the wire or delivered but not yet written: note them as
            # ambiguous attempts (HARDENING F13; UNRECORDED_DELIVERIES + 1 of them).
            first: dict[tuple[str, str, float], list[tuple[int, str]]] = {}
            for entry_id, destination, owner, until, history in conn.execute(
                "SELECT entry_id, destination, COALESCE(lease_owner, ''), leased_until, history FROM entries"
                f" WHERE {mine} ORDER BY entry_id",
                (self.node,),
            ):
                group = first.setdefault((destination, owner, until), [])
                if len(group) <= UNRECORDED_DELIVERIES:
                    group.append((entry_id, history))
            for entry_id, history in (item for group in first.values() for item in group):
                conn.execute(
                    "UPDATE entries SET last_error = ?, history = ? WHERE entry_id = ?",
                    (RECOVERED_IN_FLIGHT, _history_append(history, Attempt(now, RECOVERED_IN_FLIGHT, False)), entry_id),
                )
            cursor = conn.execute(f"UPDATE entries SET state = 'queued', leased_until = NULL WHERE {mine}", (self.node,))
            return cursor.rowcount

    def finished_instances(
        self, older_than: float, limit: int = 1000, has_file: bool | None = None
    ) -> list[InstanceRecord]:
        """Instances received before ``older_than`` with nothing queued, leased or dead.

        See :meth:`gateway.queue.interfaces.IQueueStore.finished_instances`.
        """
        if limit <= 0:
            return []
        file_filter = {None: "", True: " AND i.path != ''", False: " AND i.path = ''"}[has_file]
        rows = self._conn.execute(
            _INSTANCE_SELECT + " AS i WHERE COALESCE((SELECT max(d.delivered_at) FROM entries d"
            " WHERE d.instance_id = i.instance_id), i.received_at) < ?" + file_filter + " AND NOT EXISTS ("
            "SELECT 1 FROM entries e WHERE e.instance_id = i.instance_id AND e.state IN ('queued', 'leased', 'dead'))"
            " ORDER BY i.received_at, i.instance_id LIMIT ?",
            (older_than, limit),
        )
        return [_record_from_row(row) for row in rows]

    def file_removed(self, instance_id: str) -> None:
        """Clear an instance's ``path`` once its file is deleted (unknown ids are ignored).

        See :meth:`gateway.queue.interfaces.IQueueStore.file_removed`.
        """
        with self._write() as conn:
            conn.execute("UPDATE instances SET path = '' WHERE instance_id = ?", (instance_id,))

    def forget_instance(self, instance_id: str) -> None:
        """Delete an instance record and its entries (nothing happens if it is unknown).

        See :meth:`gateway.queue.interfaces.IQueueStore.forget_instance`.
        """
        with self._write() as conn:
            self._drop_copies_of_instance(conn, instance_id)
            conn.execute("DELETE FROM entries WHERE instance_id = ?", (instance_id,))
            conn.execute("DELETE FROM instances WHERE instance_id = ?", (instance_id,))

    def instance_ids(self) -> set[str]:
        """Every instance id on record.

        See :meth:`gateway.queue.interfaces.IQueueStore.instance_ids`.
        """
        return {row[0] for row in self._conn.execute("SELECT instance_id FROM instances")}

    def close(self) -> None:
        """Close the connection (the WAL is checkpointed by SQLite when the last one closes)."""
        self._conn.close()
