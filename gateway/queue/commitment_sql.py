"""ICommitmentJournal in SQL, shared by the SQLite and the PostgreSQL store (issue 15).

Both stores mix in :class:`SqlCommitmentJournal`; the few things that differ
between the two dialects are hooks each store sets (:attr:`_cj_mark`,
:attr:`_cj_skip_locked`, :attr:`_cj_chunk`, :meth:`_cj_in`,
:meth:`_cj_entry`). The behaviour (and the conventions the interface leaves
open) is the in-memory fake's, listed in :mod:`gateway.queue.memory_commitments`;
the ``CommitmentJournalTests`` mixin runs against all three.

Tables (SQLite schema version 6, :mod:`gateway.queue.schema`; PostgreSQL
schema version 2, :mod:`gateway.queue.pgschema`; the same columns):

* ``commitment_transactions``: one row per Transaction UID (PS3.3 C.14.1.1:
  it names one request), the request's fields, its references as a JSON
  array of ``[class, instance]`` pairs in request order, the decided report
  (JSON text, ``''`` until decided), the lease (owner, generation, until)
  and its state (``CHECK``). ``seq`` (autoincrement) is the request order.
  Indexed by ``(state, next_attempt_at)`` for ``lease_transactions`` and
  ``transaction_stats``, and by ``requested_at`` for ``transactions``.
* ``commitment_attempts``: the report delivery history, one row per attempt
  (a child table: a retry appends a row instead of rewriting a list).
* ``unforwarded``: instances acknowledged and sent nowhere, by SOP Instance
  UID and ``received_at`` (``received``).
* ``copy_commitments``: an archive's commitment per delivered copy, keyed by
  entry id; by ``(destination, state, noted_at)`` for ``pending_copies`` and
  by ``(destination, sop_instance_uid)`` for ``copies_answered``. No foreign
  key to ``entries`` (``requeue_dead`` replaces an entry's row); the stores'
  ``forget_instance`` and ``purge`` delete the copies of the entries they delete.
* ``commitment_requests``: each N-ACTION the gateway sent as SCU,
  Transaction UID -> destination, so a late report still finds its copies.

Every method is one transaction (``_write``/``_read`` of the store). Fenced
writes change a row only ``WHERE state = 'open' AND leased_until IS NOT NULL
AND lease_generation = ?`` and raise :class:`~gateway.queue.interfaces.LeaseLost`
when no row matched. ``lease_transactions`` selects the due rows (PostgreSQL:
``FOR UPDATE SKIP LOCKED``, so two nodes never pick one row; SQLite: under
``BEGIN IMMEDIATE``, one writer at a time) and then updates them.
``received`` is one query per chunk of UIDs (SQLite's variable limit) joining
instances, their entries and their copies, and one over the notes.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Collection, ContextManager, Iterable, Iterator, Mapping, Sequence

from gateway.queue.commitments import (
    CopyCommitment,
    CopyState,
    NewTransaction,
    Reference,
    ReceivedInstance,
    Transaction,
    TransactionConflict,
    TransactionState,
    TransactionStats,
    Unforwarded,
)
from gateway.queue.interfaces import Attempt, Entry, InstanceRecord, LeaseLost
from gateway.queue.memory_commitments import reference_set
from gateway.queue.rows import ENTRY_COLUMNS, INSTANCE_COLUMNS, record_from_row

__all__ = ["SqlCommitmentJournal", "TRANSACTION_COLUMNS", "COPY_COLUMNS"]

#: The columns of ``commitment_transactions`` a Transaction is built from, in this order.
TRANSACTION_COLUMNS: tuple[str, ...] = (
    "transaction_uid",
    "calling_ae_title",
    "called_ae_title",
    "modality",
    "listener",
    "policy",
    "refs",
    "deadline",
    "report_deadline",
    "lookback_from",
    "unrouted",
    "report_association",
    "source_address",
    "requested_at",
    "node",
    "state",
    "report",
    "decided_at",
    "attempts",
    "next_attempt_at",
    "last_error",
    "reported_at",
    "dead_reason",
    "lease_owner",
    "lease_generation",
    "leased_until",
)

#: The columns of ``copy_commitments``, in :class:`CopyCommitment` field order.
COPY_COLUMNS: tuple[str, ...] = (
    "entry_id",
    "destination",
    "sop_class_uid",
    "sop_instance_uid",
    "state",
    "noted_at",
    "transaction_uid",
    "requested_at",
    "answered_at",
    "requests",
    "failure_reason",
)

_TRANSACTION_SELECT = "SELECT " + ", ".join(TRANSACTION_COLUMNS) + " FROM commitment_transactions"
_COPY_SELECT = "SELECT " + ", ".join(COPY_COLUMNS) + " FROM copy_commitments"
_NOTE_COLUMNS = ("note_id", "sop_class_uid", "sop_instance_uid", "outcome", "received_at")

#: received(): each instance with its entries (none: NULLs) and their copies, one row per entry.
_RECEIVED_SELECT = (
    "SELECT "
    + ", ".join("e." + c for c in ENTRY_COLUMNS)
    + ", "
    + ", ".join("i." + c for c in INSTANCE_COLUMNS)
    + ", "
    + ", ".join("c." + c for c in COPY_COLUMNS)
    + " FROM instances i LEFT JOIN entries e ON e.instance_id = i.instance_id"
    + " LEFT JOIN copy_commitments c ON c.entry_id = e.entry_id"
)

#: The fence of every write that needs the caller's lease.
_HELD = " WHERE transaction_uid = ? AND state = 'open' AND leased_until IS NOT NULL AND lease_generation = ?"


def _references_json(references: Iterable[Reference]) -> str:
    """The ``refs`` column: ``[[class, instance], ...]`` in request order."""
    return json.dumps([[r.sop_class_uid, r.sop_instance_uid] for r in references], separators=(",", ":"))


def _copy_from_row(row: Sequence[Any]) -> CopyCommitment:
    """A :class:`CopyCommitment` from a row in :data:`COPY_COLUMNS` order."""
    values = dict(zip(COPY_COLUMNS, row))
    values["state"] = CopyState(values["state"])
    return CopyCommitment(**values)


def _chunks(values: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """``values`` in slices of at most ``size``."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


class SqlCommitmentJournal:
    """ICommitmentJournal over the SQL tables above; mixed into both SQL stores.

    The store provides ``node``, ``_write()`` and ``_read()`` (one transaction
    each, yielding a connection whose ``execute(sql, params)`` returns a
    cursor) and sets the dialect hooks.
    """

    node: str
    _write: Callable[[], ContextManager[Any]]
    _read: Callable[[], ContextManager[Any]]

    #: The dialect's parameter mark (``?`` for sqlite3, ``%s`` for psycopg).
    _cj_mark = "?"
    #: Appended to the lease's SELECT (PostgreSQL: ``FOR UPDATE SKIP LOCKED``).
    _cj_skip_locked = ""
    #: The most values one IN list carries (SQLite's variable limit is 32,766 since 3.32, 999 before).
    _cj_chunk = 500

    def _cj_in(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """``column IN (...)`` for ``values`` (written with ``?``), and its parameters."""
        return f"{column} IN ({', '.join('?' * len(values))})", list(values)

    def _cj_entry(self, row: Sequence[Any]) -> Entry:
        """An Entry from :data:`~gateway.queue.rows.ENTRY_COLUMNS` then instance columns (the store's history decoder)."""
        raise NotImplementedError

    def _q(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        """Execute ``sql`` (written with ``?``) in the dialect; return the cursor."""
        if self._cj_mark != "?":
            sql = sql.replace("?", self._cj_mark)
        return conn.execute(sql, tuple(params))

    # -- rows ---------------------------------------------------------------------------

    def _histories(self, conn: Any, uids: Sequence[str]) -> dict[str, tuple[Attempt, ...]]:
        """The delivery history of each transaction in ``uids``, oldest first."""
        found: dict[str, list[Attempt]] = {}
        for chunk in _chunks(list(uids), self._cj_chunk):
            clause, params = self._cj_in("transaction_uid", chunk)
            rows = self._q(
                conn,
                f"SELECT transaction_uid, at, error, counted FROM commitment_attempts WHERE {clause} ORDER BY attempt_id",
                params,
            ).fetchall()
            for uid, at, error, counted in rows:
                found.setdefault(uid, []).append(Attempt(float(at), error, bool(counted)))
        return {uid: tuple(items) for uid, items in found.items()}

    def _transactions_of(self, conn: Any, rows: Sequence[Sequence[Any]]) -> list[Transaction]:
        """Transactions from rows of :data:`_TRANSACTION_SELECT`, with their histories."""
        histories = self._histories(conn, [row[0] for row in rows])
        result: list[Transaction] = []
        for row in rows:
            v = dict(zip(TRANSACTION_COLUMNS, row))
            request = NewTransaction(
                transaction_uid=v["transaction_uid"],
                calling_ae_title=v["calling_ae_title"],
                called_ae_title=v["called_ae_title"],
                modality=v["modality"],
                listener=v["listener"],
                policy=v["policy"],
                references=tuple(Reference(c, i) for c, i in json.loads(v["refs"])),
                deadline=v["deadline"],
                report_deadline=v["report_deadline"],
                lookback_from=v["lookback_from"],
                unrouted=v["unrouted"],
                report_association=v["report_association"],
                source_address=v["source_address"],
            )
            result.append(
                Transaction(
                    request=request,
                    requested_at=v["requested_at"],
                    node=v["node"],
                    state=TransactionState(v["state"]),
                    report=v["report"],
                    decided_at=v["decided_at"],
                    attempts=v["attempts"],
                    next_attempt_at=v["next_attempt_at"],
                    last_error=v["last_error"],
                    reported_at=v["reported_at"],
                    dead_reason=v["dead_reason"],
                    history=histories.get(v["transaction_uid"], ()),
                    lease_owner=v["lease_owner"],
                    lease_generation=v["lease_generation"],
                    leased_until=v["leased_until"],
                )
            )
        return result

    def _transaction_in(self, conn: Any, transaction_uid: str) -> Transaction:
        """One transaction inside the caller's transaction. :raises KeyError:"""
        rows = self._q(conn, _TRANSACTION_SELECT + " WHERE transaction_uid = ?", (transaction_uid,)).fetchall()
        if not rows:
            raise KeyError(transaction_uid)
        return self._transactions_of(conn, rows)[0]

    def _fenced(self, conn: Any, assignments: str, params: Sequence[Any], transaction_uid: str, generation: int) -> None:
        """``UPDATE ... SET assignments`` on a transaction held under ``generation``. :raises LeaseLost:"""
        cursor = self._q(
            conn, f"UPDATE commitment_transactions SET {assignments}" + _HELD, (*params, transaction_uid, generation)
        )
        if cursor.rowcount != 1:
            raise LeaseLost(transaction_uid)

    def _attempt(self, conn: Any, transaction_uid: str, attempt: Attempt) -> None:
        """Append one attempt to a transaction's history."""
        self._q(
            conn,
            "INSERT INTO commitment_attempts (transaction_uid, at, error, counted) VALUES (?, ?, ?, ?)",
            (transaction_uid, attempt.at, attempt.error, int(attempt.counted)),
        )

    # -- transactions ---------------------------------------------------------------

    def add_transaction(self, new: NewTransaction, now: float) -> tuple[Transaction, bool]:
        """Journal an accepted N-ACTION, or return the one on record (see the interface).

        :raises TransactionConflict: the UID is on record with other references (PS3.3 C.14.1.1).
        """
        with self._write() as conn:
            cursor = self._q(
                conn,
                "INSERT INTO commitment_transactions (transaction_uid, calling_ae_title, called_ae_title, modality,"
                " listener, policy, refs, deadline, report_deadline, lookback_from, unrouted, report_association,"
                " source_address, requested_at, node, state, next_attempt_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'open', ?)"
                " ON CONFLICT (transaction_uid) DO NOTHING",
                (
                    new.transaction_uid, new.calling_ae_title, new.called_ae_title, new.modality, new.listener,
                    new.policy, _references_json(new.references), new.deadline, new.report_deadline,
                    new.lookback_from, new.unrouted, new.report_association, new.source_address, now, self.node, now,
                ),
            )
            created = cursor.rowcount == 1
            txn = self._transaction_in(conn, new.transaction_uid)
            if not created and reference_set(txn.request) != reference_set(new):
                raise TransactionConflict(new.transaction_uid)
            return txn, created

    def lease_transactions(self, now: float, limit: int, lease_seconds: float) -> list[Transaction]:
        """Lease due OPEN transactions without a live lease, earliest due first (see the interface)."""
        if limit <= 0:
            return []
        with self._write() as conn:
            uids = [
                row[0]
                for row in self._q(
                    conn,
                    "SELECT transaction_uid FROM commitment_transactions WHERE state = 'open' AND next_attempt_at <= ?"
                    " AND (leased_until IS NULL OR leased_until < ?) ORDER BY next_attempt_at, seq LIMIT ?"
                    + self._cj_skip_locked,
                    (now, now, limit),
                ).fetchall()
            ]
            if not uids:
                return []
            clause, params = self._cj_in("transaction_uid", uids)
            self._q(
                conn,
                "UPDATE commitment_transactions SET lease_owner = ?, lease_generation = lease_generation + 1,"
                f" leased_until = ? WHERE {clause}",
                (self.node, now + lease_seconds, *params),
            )
            rows = self._q(
                conn, _TRANSACTION_SELECT + f" WHERE {clause} ORDER BY next_attempt_at, seq", params
            ).fetchall()
            return self._transactions_of(conn, rows)

    def renew_transactions(self, generations: Mapping[str, int], now: float, lease_seconds: float) -> set[str]:
        """Extend the leases still held; return the UIDs lost (see the interface)."""
        if not generations:
            return set()
        lost: set[str] = set()
        with self._write() as conn:
            for uid, generation in generations.items():
                cursor = self._q(
                    conn, "UPDATE commitment_transactions SET leased_until = ?" + _HELD, (now + lease_seconds, uid, generation)
                )
                if cursor.rowcount != 1:
                    lost.add(uid)
        return lost

    def decide_transaction(self, transaction_uid: str, report: str, now: float, generation: int) -> str:
        """Record the report once; return the one on record (see the interface). :raises LeaseLost:"""
        with self._write() as conn:
            self._fenced(
                conn,
                "decided_at = CASE WHEN report = '' THEN ? ELSE decided_at END,"
                " report = CASE WHEN report = '' THEN ? ELSE report END",
                (now, report),
                transaction_uid,
                generation,
            )
            row = self._q(
                conn, "SELECT report FROM commitment_transactions WHERE transaction_uid = ?", (transaction_uid,)
            ).fetchone()
            return str(row[0])

    def defer_transaction(
        self,
        transaction_uid: str,
        next_attempt_at: float,
        now: float,
        generation: int,
        error: str = "",
        counted: bool = False,
    ) -> None:
        """End the lease, stay OPEN until ``next_attempt_at`` (see the interface). :raises LeaseLost:"""
        with self._write() as conn:
            self._fenced(
                conn,
                "next_attempt_at = ?, leased_until = NULL, last_error = ?, attempts = attempts + ?",
                (next_attempt_at, error, int(counted)),
                transaction_uid,
                generation,
            )
            if counted:
                self._attempt(conn, transaction_uid, Attempt(now, error, True))

    def transaction_reported(self, transaction_uid: str, now: float, generation: int) -> None:
        """The report was acknowledged: REPORTED (see the interface). :raises LeaseLost:"""
        with self._write() as conn:
            self._fenced(conn, "state = 'reported', reported_at = ?, leased_until = NULL", (now,), transaction_uid, generation)

    def transaction_dead(self, transaction_uid: str, reason: str, now: float, generation: int) -> None:
        """``report_deadline`` passed: DEAD (see the interface). :raises LeaseLost:"""
        with self._write() as conn:
            self._fenced(conn, "state = 'dead', dead_reason = ?, leased_until = NULL", (reason,), transaction_uid, generation)
            self._attempt(conn, transaction_uid, Attempt(now, reason, False))

    def requeue_transaction(self, transaction_uid: str, now: float, report_deadline: float) -> Transaction:
        """Operator retry of a DEAD transaction (see the interface). :raises KeyError:"""
        with self._write() as conn:
            cursor = self._q(
                conn,
                "UPDATE commitment_transactions SET state = 'open', next_attempt_at = ?, attempts = 0,"
                " dead_reason = '', leased_until = NULL, report_deadline = ?"
                " WHERE transaction_uid = ? AND state = 'dead'",
                (now, report_deadline, transaction_uid),
            )
            if cursor.rowcount != 1:
                raise KeyError(transaction_uid)
            return self._transaction_in(conn, transaction_uid)

    def get_transaction(self, transaction_uid: str) -> Transaction:
        """One transaction (see the interface). :raises KeyError:"""
        with self._read() as conn:
            return self._transaction_in(conn, transaction_uid)

    def transactions(self, state: TransactionState | None = None, limit: int = 1000) -> list[Transaction]:
        """Transactions, newest request first (see the interface)."""
        where, params = ("", []) if state is None else (" WHERE state = ?", [state.value])
        with self._read() as conn:
            rows = self._q(
                conn, _TRANSACTION_SELECT + where + " ORDER BY requested_at DESC, seq DESC LIMIT ?", (*params, max(limit, 0))
            ).fetchall()
            return self._transactions_of(conn, rows)

    def transaction_stats(self, now: float) -> TransactionStats:
        """Open, decided, overdue, dead and reported counts, and the oldest open request (see the interface)."""
        with self._read() as conn:
            row = self._q(
                conn,
                "SELECT"
                " COALESCE(SUM(CASE WHEN state = 'open' THEN 1 ELSE 0 END), 0),"
                " COALESCE(SUM(CASE WHEN state = 'open' AND report <> '' THEN 1 ELSE 0 END), 0),"
                " COALESCE(SUM(CASE WHEN state = 'open' AND deadline < ? THEN 1 ELSE 0 END), 0),"
                " COALESCE(SUM(CASE WHEN state = 'dead' THEN 1 ELSE 0 END), 0),"
                " COALESCE(SUM(CASE WHEN state = 'reported' THEN 1 ELSE 0 END), 0),"
                " MIN(CASE WHEN state = 'open' THEN requested_at END)"
                " FROM commitment_transactions",
                (now,),
            ).fetchone()
        return TransactionStats(
            open=int(row[0]), decided=int(row[1]), overdue=int(row[2]), dead=int(row[3]), reported=int(row[4]),
            oldest_open_at=None if row[5] is None else float(row[5]),
        )

    # -- what was received ------------------------------------------------------------

    def note_unforwarded(self, items: Sequence[Unforwarded], now: float) -> None:
        """Record instances acknowledged and sent nowhere (see the interface)."""
        if not items:
            return
        with self._write() as conn:
            for item in items:
                self._q(
                    conn,
                    "INSERT INTO unforwarded (sop_class_uid, sop_instance_uid, outcome, received_at, calling_ae_title,"
                    " reason, noted_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (item.sop_class_uid, item.sop_instance_uid, item.outcome, item.received_at,
                     item.calling_ae_title, item.reason, now),
                )

    def received(self, sop_instance_uids: Collection[str], since: float) -> Mapping[str, list[ReceivedInstance]]:
        """What was received under each UID at or after ``since``: one query per chunk of UIDs (see the interface)."""
        wanted = sorted(set(sop_instance_uids))
        found: dict[str, list[tuple[tuple[float, int, str, int], ReceivedInstance]]] = {}
        n_entry = len(ENTRY_COLUMNS)
        n_instance = len(INSTANCE_COLUMNS)
        with self._read() as conn:
            for chunk in _chunks(wanted, self._cj_chunk):
                clause, params = self._cj_in("i.sop_instance_uid", chunk)
                rows = self._q(
                    conn,
                    _RECEIVED_SELECT + f" WHERE {clause} AND i.received_at >= ? ORDER BY i.instance_id, e.entry_id",
                    (*params, since),
                ).fetchall()
                instances: dict[str, tuple[InstanceRecord, list[Entry], list[CopyCommitment]]] = {}
                for row in rows:
                    record = record_from_row(row[n_entry : n_entry + n_instance])
                    _, entries, copies = instances.setdefault(record.instance_id, (record, [], []))
                    if row[0] is None:  # an instance without entries
                        continue
                    entries.append(self._cj_entry(row[: n_entry + n_instance]))
                    if row[n_entry + n_instance] is not None:
                        copies.append(_copy_from_row(row[n_entry + n_instance :]))
                for record, entries, copies in instances.values():
                    item = ReceivedInstance(
                        sop_class_uid=record.sop_class_uid,
                        sop_instance_uid=record.sop_instance_uid,
                        received_at=record.received_at,
                        instance_id=record.instance_id,
                        entries=tuple(entries),
                        copies=tuple(copies),
                    )
                    key = (record.received_at, 0, record.instance_id, 0)
                    found.setdefault(record.sop_instance_uid, []).append((key, item))
                clause, params = self._cj_in("sop_instance_uid", chunk)
                notes = self._q(
                    conn,
                    "SELECT " + ", ".join(_NOTE_COLUMNS) + f" FROM unforwarded WHERE {clause} AND received_at >= ?",
                    (*params, since),
                ).fetchall()
                for note_id, sop_class_uid, sop_instance_uid, outcome, received_at in notes:
                    item = ReceivedInstance(
                        sop_class_uid=sop_class_uid,
                        sop_instance_uid=sop_instance_uid,
                        received_at=float(received_at),
                        outcome=outcome,
                    )
                    found.setdefault(sop_instance_uid, []).append(((float(received_at), 1, "", note_id), item))
        return {uid: [item for _, item in sorted(items, key=lambda pair: pair[0])] for uid, items in found.items()}

    # -- archives that commit ---------------------------------------------------------------

    def note_copies(self, copies: Sequence[tuple[int, str, str, str]], now: float) -> None:
        """Note delivered copies as PENDING; a FAILED one is asked about anew (see the interface)."""
        if not copies:
            return
        with self._write() as conn:
            for entry_id, destination, sop_class_uid, sop_instance_uid in copies:
                self._q(
                    conn,
                    "INSERT INTO copy_commitments (entry_id, destination, sop_class_uid, sop_instance_uid, state, noted_at)"
                    " VALUES (?, ?, ?, ?, 'pending', ?)"
                    " ON CONFLICT (entry_id) DO UPDATE SET destination = excluded.destination,"
                    " sop_class_uid = excluded.sop_class_uid, sop_instance_uid = excluded.sop_instance_uid,"
                    " noted_at = CASE WHEN copy_commitments.state = 'failed' THEN excluded.noted_at"
                    " ELSE copy_commitments.noted_at END,"
                    " failure_reason = CASE WHEN copy_commitments.state = 'failed' THEN 0"
                    " ELSE copy_commitments.failure_reason END,"
                    " answered_at = CASE WHEN copy_commitments.state = 'failed' THEN NULL"
                    " ELSE copy_commitments.answered_at END,"
                    " state = CASE WHEN copy_commitments.state = 'failed' THEN 'pending' ELSE copy_commitments.state END",
                    (entry_id, destination, sop_class_uid, sop_instance_uid, now),
                )

    def pending_copies(self, destination: str, now: float, timeout: float, limit: int) -> list[CopyCommitment]:
        """PENDING copies and REQUESTED ones unanswered for ``timeout``, oldest first (see the interface)."""
        if limit <= 0:
            return []
        with self._read() as conn:
            rows = self._q(
                conn,
                _COPY_SELECT + " WHERE destination = ? AND (state = 'pending' OR (state = 'requested' AND requested_at < ?))"
                " ORDER BY noted_at, entry_id LIMIT ?",
                (destination, now - timeout, limit),
            ).fetchall()
        return [_copy_from_row(row) for row in rows]

    def copies_requested(self, destination: str, entry_ids: Sequence[int], transaction_uid: str, now: float) -> None:
        """Note an N-ACTION sent to ``destination`` for these copies (see the interface)."""
        ids = list(dict.fromkeys(entry_ids))
        with self._write() as conn:
            self._q(
                conn,
                "INSERT INTO commitment_requests (transaction_uid, destination, requested_at) VALUES (?, ?, ?)"
                " ON CONFLICT (transaction_uid) DO UPDATE SET destination = excluded.destination,"
                " requested_at = excluded.requested_at",
                (transaction_uid, destination, now),
            )
            for chunk in _chunks(ids, self._cj_chunk):
                clause, params = self._cj_in("entry_id", chunk)
                self._q(
                    conn,
                    "UPDATE copy_commitments SET state = 'requested', transaction_uid = ?, requested_at = ?,"
                    f" requests = requests + 1 WHERE destination = ? AND state <> 'committed' AND {clause}",
                    (transaction_uid, now, destination, *params),
                )

    def copies_answered(
        self, transaction_uid: str, committed: Sequence[str], failed: Sequence[tuple[str, int]], now: float
    ) -> int:
        """Record an archive's report for its request's destination (see the interface). :raises KeyError:"""
        ok = sorted(set(committed))
        by_reason: dict[int, list[str]] = {}
        for uid, reason in dict((uid, reason) for uid, reason in failed if uid not in set(ok)).items():
            by_reason.setdefault(reason, []).append(uid)
        changed = 0
        with self._write() as conn:
            row = self._q(
                conn, "SELECT destination FROM commitment_requests WHERE transaction_uid = ?", (transaction_uid,)
            ).fetchone()
            if row is None:
                raise KeyError(transaction_uid)
            destination = row[0]
            for chunk in _chunks(ok, self._cj_chunk):
                clause, params = self._cj_in("sop_instance_uid", chunk)
                changed += self._q(
                    conn,
                    "UPDATE copy_commitments SET state = 'committed', failure_reason = 0, answered_at = ?"
                    f" WHERE destination = ? AND state <> 'committed' AND {clause}",
                    (now, destination, *params),
                ).rowcount
            for reason, uids in sorted(by_reason.items()):
                for chunk in _chunks(uids, self._cj_chunk):
                    clause, params = self._cj_in("sop_instance_uid", chunk)
                    changed += self._q(
                        conn,
                        "UPDATE copy_commitments SET state = 'failed', failure_reason = ?, answered_at = ?"
                        f" WHERE destination = ? AND state IN ('pending', 'requested') AND {clause}",
                        (reason, now, destination, *params),
                    ).rowcount
        return changed

    # -- the queue's deletions ------------------------------------------------------------

    def _drop_copies_of_instance(self, conn: Any, instance_id: str) -> None:
        """Delete the copy commitments of an instance's entries (inside the caller's transaction)."""
        self._q(
            conn,
            "DELETE FROM copy_commitments WHERE entry_id IN (SELECT entry_id FROM entries WHERE instance_id = ?)",
            (instance_id,),
        )

    def _drop_copy(self, conn: Any, entry_id: int) -> None:
        """Delete one entry's copy commitment (inside the caller's transaction)."""
        self._q(conn, "DELETE FROM copy_commitments WHERE entry_id = ?", (entry_id,))
