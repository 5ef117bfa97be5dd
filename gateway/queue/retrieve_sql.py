"""IRetrieveJournal in SQL, shared by the SQLite and the PostgreSQL store (issue 16).

Both stores mix in :class:`SqlRetrieveJournal`; it uses the dialect hooks of
:class:`~gateway.queue.commitment_sql.SqlCommitmentJournal` (``_cj_mark``,
``_cj_chunk``, ``_cj_in``) and adds one: :attr:`_rj_lock` (PostgreSQL:
``FOR UPDATE``). The behaviour (and the conventions the interface leaves
open) is the in-memory fake's, listed in :mod:`gateway.queue.memory_retrieves`;
the ``RetrieveJournalTests`` mixin runs against all three.

Tables (SQLite schema version 7 and 8, :mod:`gateway.queue.schema`; PostgreSQL
schema version 3, :mod:`gateway.queue.pgschema`; the same columns):

* ``retrieves``: one row per C-MOVE/C-GET accepted; the request's fields
  (``sources`` and the expected instances ``refs`` as JSON arrays, so a
  :class:`~gateway.queue.retrieves.Retrieve` is built from its row alone),
  the outgoing ``message_id`` (``CHECK`` 1..65535), the node, the state
  (``CHECK``) and the end. A partial unique index on ``message_id WHERE
  state = 'open'`` is the cluster-wide guarantee that two open retrieves
  never share an id (PS3.7 9.1.1.1: the Move Originator Message ID is all
  the source's sub-operation carries back); ``(created_at, retrieve_id)``
  serves ``retrieves``.
* ``retrieve_items``: one row per expected instance, keyed by
  ``(retrieve_id, sop_instance_uid)`` (``match_sub_operation``, ``link_item``,
  ``item_outcome``), ``seq`` its request order (``progress`` lists failed
  UIDs in it); ``entry_id`` the queue entry that sends it on, without a
  foreign key (``requeue_dead`` and ``forget_instance`` delete entries:
  ``progress`` counts a missing one failed).
* ``retrieve_counters``: one row, ``message_id``, the last id allocated:
  the round-robin position and, locked ``FOR UPDATE`` on PostgreSQL, what
  serialises allocations of several nodes (SQLite: ``BEGIN IMMEDIATE``, one
  writer at a time). Under READ COMMITTED the SELECT of held ids after the
  lock sees every allocation committed before it.
* ``remapped_uids``: remapped UID -> original (``uid_remap`` is a one-way
  HMAC), written with ``ON CONFLICT`` keeping the first original;
  ``last_used_at`` (SQLite schema 8, PostgreSQL schema 4) is the last write or
  lookup, updated only when a day older (:data:`~gateway.queue.retrieves.REMAP_TOUCH_INTERVAL`),
  indexed for ``purge_remapped_uids``.

Clean-up (schema 8 / 4): the partial index ``retrieves_finished`` on
``(finished_at, retrieve_id) WHERE state <> 'open'`` serves
``purge_retrieves``, which deletes a bounded batch per transaction (items by
the primary key's ``retrieve_id`` prefix, then the retrieve row).

Every method is one transaction (``_write``/``_read`` of the store); long
lists go in chunks of ``_cj_chunk`` values (SQLite's variable limit).
"""

from __future__ import annotations

import json
import threading
from typing import Any, Callable, Collection, ContextManager, Iterator, Mapping, Sequence

from gateway.queue.commitments import Reference
from gateway.queue.memory_retrieves import (
    ENDS,
    MAX_MESSAGE_ID,
    next_message_id,
    unique_expected,
)
from gateway.queue.retrieves import (
    REMAP_TOUCH_INTERVAL,
    ItemState,
    NewRetrieve,
    Retrieve,
    RetrieveItem,
    RetrieveProgress,
    RetrievePurge,
    RetrieveState,
)

__all__ = ["SqlRetrieveJournal", "RETRIEVE_COLUMNS"]

#: The columns of ``retrieves`` a Retrieve is built from, in this order.
RETRIEVE_COLUMNS: tuple[str, ...] = (
    "retrieve_id",
    "kind",
    "requester_ae_title",
    "listener",
    "requester_message_id",
    "destination",
    "mode",
    "level",
    "sources",
    "refs",
    "deadline",
    "message_id",
    "node",
    "state",
    "created_at",
    "finished_at",
    "error",
)

_RETRIEVE_SELECT = "SELECT " + ", ".join("r." + c for c in RETRIEVE_COLUMNS) + " FROM retrieves r"

#: The same without ``refs`` (``''`` in its place): for ``match_sub_operation``, which takes the expected
#: instances from the store object's cache (they never change once journaled).
_RETRIEVE_SELECT_LITE = (
    "SELECT " + ", ".join("''" if c == "refs" else "r." + c for c in RETRIEVE_COLUMNS) + " FROM retrieves r"
)

#: How many retrieves' expected instances a store object keeps parsed.
_EXPECTED_CACHE = 64


#: A retrieve's items with their linked entries (one parameter: the retrieve id).
_ITEMS_JOINED = "FROM retrieve_items i LEFT JOIN entries e ON e.entry_id = i.entry_id WHERE i.retrieve_id = ?"

#: Which count of RetrieveProgress an item adds to: :func:`gateway.queue.memory_retrieves.count_item` in SQL.
_COUNT = (
    "(CASE WHEN i.state = 'expected' THEN 'remaining'"
    " WHEN i.state <> 'received' THEN i.state"
    " WHEN i.entry_id IS NULL THEN 'remaining'"
    " WHEN e.entry_id IS NULL OR e.state = 'dead' THEN 'failed'"
    " WHEN e.state = 'delivered' AND e.last_error <> '' THEN 'warning'"
    " WHEN e.state IN ('delivered', 'duplicate') THEN 'completed'"
    " ELSE 'remaining' END)"
)


def _parse_refs(text: str) -> tuple[Reference, ...]:
    """The ``refs`` column: ``[[class, instance], ...]``."""
    return tuple(Reference(c, i) for c, i in json.loads(text))


def _retrieve_from_row(row: Sequence[Any], expected: tuple[Reference, ...] | None = None) -> Retrieve:
    """A :class:`Retrieve` from a row in :data:`RETRIEVE_COLUMNS` order (``expected`` given: ``refs`` not read)."""
    v = dict(zip(RETRIEVE_COLUMNS, row))
    request = NewRetrieve(
        kind=v["kind"],
        requester_ae_title=v["requester_ae_title"],
        listener=v["listener"],
        requester_message_id=v["requester_message_id"],
        destination=v["destination"],
        mode=v["mode"],
        level=v["level"],
        sources=tuple(json.loads(v["sources"])),
        expected=_parse_refs(v["refs"]) if expected is None else expected,
        deadline=v["deadline"],
    )
    return Retrieve(
        retrieve_id=v["retrieve_id"],
        request=request,
        message_id=v["message_id"],
        node=v["node"],
        state=RetrieveState(v["state"]),
        created_at=v["created_at"],
        finished_at=v["finished_at"],
        error=v["error"],
    )


def _chunks(values: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """``values`` in slices of at most ``size``."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


class SqlRetrieveJournal:
    """IRetrieveJournal over the SQL tables above; mixed into both SQL stores (after SqlCommitmentJournal)."""

    node: str
    _write: Callable[[], ContextManager[Any]]
    _read: Callable[[], ContextManager[Any]]
    _cj_mark: str
    _cj_chunk: int

    #: Appended to the SELECT of the message-id counter (PostgreSQL: ``FOR UPDATE``).
    _rj_lock = ""
    #: The largest outgoing message ID (a test lowers it to reach exhaustion quickly).
    max_message_id: int = MAX_MESSAGE_ID

    def _cj_in(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:  # pragma: no cover - the store's
        """``column IN (...)`` for ``values`` and its parameters (SqlCommitmentJournal's hook, first in the MRO)."""
        raise NotImplementedError

    def _rq(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        """Execute ``sql`` (written with ``?``) in the dialect; return the cursor."""
        if self._cj_mark != "?":
            sql = sql.replace("?", self._cj_mark)
        return conn.execute(sql, tuple(params))

    def _rq_many(self, conn: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Execute ``sql`` (written with ``?``) once per row of parameters."""
        if self._cj_mark != "?":
            sql = sql.replace("?", self._cj_mark)
        if rows:
            conn.cursor().executemany(sql, [tuple(row) for row in rows])

    def _retrieve_in_lite(self, conn: Any, retrieve_id: int) -> None:
        """Check that the retrieve is on record. :raises KeyError:"""
        if self._rq(conn, "SELECT 1 FROM retrieves WHERE retrieve_id = ?", (retrieve_id,)).fetchone() is None:
            raise KeyError(retrieve_id)

    def _retrieve_in(self, conn: Any, retrieve_id: int) -> Retrieve:
        """One retrieve inside the caller's transaction. :raises KeyError:"""
        row = self._rq(conn, _RETRIEVE_SELECT + " WHERE r.retrieve_id = ?", (retrieve_id,)).fetchone()
        if row is None:
            raise KeyError(retrieve_id)
        return _retrieve_from_row(row)

    # -- retrieves ---------------------------------------------------------------------

    def open_retrieve(self, new: NewRetrieve, now: float) -> Retrieve:
        """Journal a retrieve, OPEN, its items EXPECTED, with a fresh outgoing message ID (see the interface).

        :raises RetrieveIdsExhausted: every message ID is held by an OPEN retrieve.
        """
        new = unique_expected(new)
        with self._write() as conn:
            (last,) = self._rq(
                conn, "SELECT value FROM retrieve_counters WHERE name = 'message_id'" + self._rj_lock
            ).fetchone()
            held = {row[0] for row in self._rq(conn, "SELECT message_id FROM retrieves WHERE state = 'open'").fetchall()}
            message_id = next_message_id(held, int(last), self.max_message_id)
            self._rq(conn, "UPDATE retrieve_counters SET value = ? WHERE name = 'message_id'", (message_id,))
            (retrieve_id,) = self._rq(
                conn,
                "INSERT INTO retrieves (kind, requester_ae_title, listener, requester_message_id, destination, mode,"
                " level, sources, refs, deadline, message_id, node, state, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'open', ?) RETURNING retrieve_id",
                (
                    new.kind, new.requester_ae_title, new.listener, new.requester_message_id, new.destination,
                    new.mode, new.level, json.dumps(list(new.sources)),
                    json.dumps([[r.sop_class_uid, r.sop_instance_uid] for r in new.expected], separators=(",", ":")),
                    new.deadline, message_id, self.node, now,
                ),
            ).fetchone()
            self._rq_many(
                conn,
                "INSERT INTO retrieve_items (retrieve_id, seq, sop_class_uid, sop_instance_uid, state, updated_at)"
                " VALUES (?, ?, ?, ?, 'expected', ?)",
                [(retrieve_id, n, r.sop_class_uid, r.sop_instance_uid, now) for n, r in enumerate(new.expected)],
            )
            return self._retrieve_in(conn, int(retrieve_id))

    def match_sub_operation(self, message_id: int, sop_instance_uid: str) -> Retrieve | None:
        """The OPEN retrieve holding ``message_id`` that expects ``sop_instance_uid`` (see the interface).

        Called once per incoming sub-operation C-STORE: the expected
        instances (immutable once journaled) come from a small cache of
        parsed lists, so a retrieve of n instances costs O(n) in all, not
        O(n) per sub-operation.
        """
        with self._read() as conn:
            row = self._rq(
                conn,
                _RETRIEVE_SELECT_LITE + " JOIN retrieve_items i ON i.retrieve_id = r.retrieve_id"
                " WHERE r.state = 'open' AND r.message_id = ? AND i.sop_instance_uid = ?",
                (message_id, sop_instance_uid),
            ).fetchone()
            if row is None:
                return None
            retrieve_id = int(row[0])
            # The PostgreSQL store is called from several threads: the cache has its own lock.
            cache: dict[int, tuple[Reference, ...]] = self.__dict__.setdefault("_rj_expected", {})
            lock: threading.Lock = self.__dict__.setdefault("_rj_expected_lock", threading.Lock())
            with lock:
                expected = cache.get(retrieve_id)
            if expected is None:
                (text,) = self._rq(conn, "SELECT refs FROM retrieves WHERE retrieve_id = ?", (retrieve_id,)).fetchone()
                expected = _parse_refs(text)
                with lock:
                    while len(cache) >= _EXPECTED_CACHE:
                        del cache[next(iter(cache))]  # the oldest entry (dicts keep insertion order)
                    cache[retrieve_id] = expected
            return _retrieve_from_row(row, expected)

    def _set_item(self, retrieve_id: int, sop_instance_uid: str, assignments: str, params: Sequence[Any]) -> None:
        """``UPDATE retrieve_items SET assignments`` on one item. :raises KeyError: unknown retrieve or UID."""
        with self._write() as conn:
            cursor = self._rq(
                conn,
                f"UPDATE retrieve_items SET {assignments} WHERE retrieve_id = ? AND sop_instance_uid = ?",
                (*params, retrieve_id, sop_instance_uid),
            )
            if cursor.rowcount != 1:
                raise KeyError((retrieve_id, sop_instance_uid))

    def link_item(self, retrieve_id: int, sop_instance_uid: str, entry_id: int | None, now: float) -> None:
        """The item arrived in custody: RECEIVED, linked to ``entry_id`` (see the interface). :raises KeyError:"""
        self._set_item(
            retrieve_id, sop_instance_uid, "state = 'received', entry_id = ?, reason = '', updated_at = ?", (entry_id, now)
        )

    def item_outcome(
        self, retrieve_id: int, sop_instance_uid: str, state: ItemState, reason: str, now: float, expected_only: bool = False
    ) -> None:
        """Record an item's end without a queue entry (see the interface). :raises KeyError:"""
        if not expected_only:
            self._set_item(retrieve_id, sop_instance_uid, "state = ?, reason = ?, updated_at = ?", (state.value, reason, now))
            return
        with self._write() as conn:
            cursor = self._rq(
                conn,
                "UPDATE retrieve_items SET state = ?, reason = ?, updated_at = ?"
                " WHERE retrieve_id = ? AND sop_instance_uid = ? AND state = 'expected'",
                (state.value, reason, now, retrieve_id, sop_instance_uid),
            )
            if cursor.rowcount != 1 and self._rq(
                conn,
                "SELECT 1 FROM retrieve_items WHERE retrieve_id = ? AND sop_instance_uid = ?",
                (retrieve_id, sop_instance_uid),
            ).fetchone() is None:
                raise KeyError((retrieve_id, sop_instance_uid))

    def fail_expected(self, retrieve_id: int, reason: str, now: float) -> tuple[str, ...]:
        """The items still EXPECTED end FAILED, in one write transaction (see the interface). :raises KeyError:"""
        with self._write() as conn:
            self._retrieve_in_lite(conn, retrieve_id)
            uids = [
                row[0]
                for row in self._rq(
                    conn,
                    "SELECT sop_instance_uid FROM retrieve_items WHERE retrieve_id = ? AND state = 'expected' ORDER BY seq",
                    (retrieve_id,),
                ).fetchall()
            ]
            self._rq(
                conn,
                "UPDATE retrieve_items SET state = 'failed', reason = ?, updated_at = ? WHERE retrieve_id = ? AND state = 'expected'",
                (reason, now, retrieve_id),
            )
        return tuple(uids)

    def progress(self, retrieve_id: int) -> RetrieveProgress:
        """The counts now, reading the linked entries' states (see the interface). :raises KeyError:

        Counted in SQL (:data:`_COUNT`, the rule of
        :func:`~gateway.queue.memory_retrieves.count_item`; the verified fake
        test compares the two), so a pending response costs a grouped count
        and the failed UIDs, not a row per instance.
        """
        with self._read() as conn:
            self._retrieve_in_lite(conn, retrieve_id)
            totals = {"remaining": 0, "completed": 0, "warning": 0, "failed": 0}
            for count, n in self._rq(
                conn, f"SELECT {_COUNT} AS c, count(*) {_ITEMS_JOINED} GROUP BY c", (retrieve_id,)
            ).fetchall():
                totals[count] = int(n)
            failed = self._rq(
                conn, f"SELECT i.sop_instance_uid {_ITEMS_JOINED} AND {_COUNT} = 'failed' ORDER BY i.seq", (retrieve_id,)
            ).fetchall()
        return RetrieveProgress(failed_uids=tuple(row[0] for row in failed), **totals)

    def finish_retrieve(self, retrieve_id: int, state: RetrieveState, error: str, now: float) -> None:
        """End an OPEN retrieve: its message ID is free again (see the interface). :raises KeyError:"""
        if state not in ENDS:
            raise ValueError(f"{state} does not end a retrieve")
        with self._write() as conn:
            cursor = self._rq(
                conn,
                "UPDATE retrieves SET state = ?, error = ?, finished_at = ? WHERE retrieve_id = ? AND state = 'open'",
                (state.value, error, now, retrieve_id),
            )
            if cursor.rowcount != 1:
                self._retrieve_in(conn, retrieve_id)  # KeyError, or already ended: the first end wins

    def get_retrieve(self, retrieve_id: int) -> Retrieve:
        """One retrieve (see the interface). :raises KeyError:"""
        with self._read() as conn:
            return self._retrieve_in(conn, retrieve_id)

    def retrieves(
        self, state: RetrieveState | None = None, limit: int = 1000, before: tuple[float, int] | None = None
    ) -> list[Retrieve]:
        """Retrieves, newest first, after the keyset cursor ``before`` (see the interface)."""
        if limit <= 0:
            return []
        conditions: list[str] = []
        params: list[Any] = []
        if state is not None:
            conditions.append("r.state = ?")
            params.append(state.value)
        if before is not None:
            # Keyset pagination on the (created_at, retrieve_id) index: no OFFSET scan.
            conditions.append("(r.created_at < ? OR (r.created_at = ? AND r.retrieve_id < ?))")
            params.extend([float(before[0]), float(before[0]), int(before[1])])
        where = (" WHERE " + " AND ".join(conditions)) if conditions else ""
        with self._read() as conn:
            rows = self._rq(
                conn, _RETRIEVE_SELECT + where + " ORDER BY r.created_at DESC, r.retrieve_id DESC LIMIT ?", (*params, limit)
            ).fetchall()
        return [_retrieve_from_row(row) for row in rows]

    def retrieve_items(self, retrieve_id: int, limit: int = 100000) -> list[RetrieveItem]:
        """A retrieve's items in request order, each with what it counts now (see the interface). :raises KeyError:"""
        with self._read() as conn:
            self._retrieve_in_lite(conn, retrieve_id)
            rows = self._rq(
                conn,
                "SELECT i.sop_class_uid, i.sop_instance_uid, i.state, i.entry_id, i.reason, i.updated_at,"
                f" {_COUNT}, COALESCE(e.dead_reason, '') {_ITEMS_JOINED} ORDER BY i.seq LIMIT ?",
                (retrieve_id, max(limit, 0)),
            ).fetchall()
        return [
            RetrieveItem(
                sop_class_uid=cls,
                sop_instance_uid=uid,
                state=ItemState(state),
                entry_id=None if entry_id is None else int(entry_id),
                reason=reason or dead_reason,
                updated_at=float(updated_at),
                counted=counted,
            )
            for cls, uid, state, entry_id, reason, updated_at, counted, dead_reason in rows
        ]

    def open_retrieve_counts(self) -> Mapping[str, int]:
        """OPEN retrieves by kind (see the interface)."""
        with self._read() as conn:
            rows = self._rq(conn, "SELECT kind, count(*) FROM retrieves WHERE state = 'open' GROUP BY kind").fetchall()
        return {kind: int(n) for kind, n in rows}

    def purge_retrieves(self, finished_before: float, limit: int) -> RetrievePurge:
        """Delete ended retrieves and their items, at most ``limit`` rows in one transaction (see the interface)."""
        if limit <= 0:
            return RetrievePurge()
        budget, retrieves, items = limit, 0, 0
        with self._write() as conn:
            ended = self._rq(
                conn,
                "SELECT retrieve_id FROM retrieves WHERE state <> 'open' AND finished_at < ?"
                " ORDER BY finished_at, retrieve_id LIMIT ?",
                (finished_before, limit),
            ).fetchall()
            for (retrieve_id,) in ended:
                if budget <= 0:
                    break
                cursor = self._rq(
                    conn,
                    "DELETE FROM retrieve_items WHERE retrieve_id = ? AND sop_instance_uid IN"
                    " (SELECT sop_instance_uid FROM retrieve_items WHERE retrieve_id = ? ORDER BY seq LIMIT ?)",
                    (retrieve_id, retrieve_id, budget),
                )
                deleted = max(cursor.rowcount, 0)
                items += deleted
                budget -= deleted
                if budget <= 0:
                    break  # perhaps more items: the next batch goes on
                left = self._rq(conn, "SELECT 1 FROM retrieve_items WHERE retrieve_id = ? LIMIT 1", (retrieve_id,)).fetchone()
                if left is not None:  # pragma: no cover - the DELETE above had room for every item
                    break
                self._rq(conn, "DELETE FROM retrieves WHERE retrieve_id = ?", (retrieve_id,))
                retrieves += 1
                budget -= 1
        return RetrievePurge(retrieves=retrieves, items=items)

    # -- remapped UIDs ----------------------------------------------------------------------

    def remember_uids(self, pairs: Sequence[tuple[str, str]], now: float) -> None:
        """Keep ``(remapped, original)`` pairs; the first original of a remapped UID stays (see the interface)."""
        if not pairs:
            return
        with self._write() as conn:
            # The first original stays; writing the pair again is a use, recorded at most once a day.
            self._rq_many(
                conn,
                "INSERT INTO remapped_uids (remapped, original, remembered_at, last_used_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (remapped) DO UPDATE SET last_used_at = excluded.last_used_at"
                " WHERE remapped_uids.last_used_at < excluded.last_used_at - ?",
                [(remapped, original, now, now, REMAP_TOUCH_INTERVAL) for remapped, original in pairs],
            )

    def original_uids(self, remapped: Collection[str], now: float | None = None) -> Mapping[str, str]:
        """The originals of those remapped UIDs that are on record; a use with ``now`` (see the interface).

        The lookup is a read; only when ``now`` is given and an entry found
        was last used more than :data:`REMAP_TOUCH_INTERVAL` ago does a write
        follow (so a busy research gateway writes each entry once a day).
        """
        wanted = sorted(set(remapped))
        found: dict[str, str] = {}
        stale: list[str] = []
        if not wanted:
            return found
        with self._read() as conn:
            for chunk in _chunks(wanted, self._cj_chunk):
                clause, params = self._cj_in("remapped", chunk)
                for uid, original, used in self._rq(
                    conn, f"SELECT remapped, original, last_used_at FROM remapped_uids WHERE {clause}", params
                ).fetchall():
                    found[uid] = original
                    if now is not None and used < now - REMAP_TOUCH_INTERVAL:
                        stale.append(uid)
        if stale and now is not None:
            with self._write() as conn:
                for chunk in _chunks(stale, self._cj_chunk):
                    clause, params = self._cj_in("remapped", chunk)
                    self._rq(
                        conn,
                        f"UPDATE remapped_uids SET last_used_at = ? WHERE {clause} AND last_used_at < ?",
                        (now, *params, now - REMAP_TOUCH_INTERVAL),
                    )
        return found

    def purge_remapped_uids(self, unused_before: float, limit: int) -> int:
        """Delete at most ``limit`` remapped UIDs last used before ``unused_before`` (see the interface)."""
        if limit <= 0:
            return 0
        with self._write() as conn:
            cursor = self._rq(
                conn,
                "DELETE FROM remapped_uids WHERE remapped IN (SELECT remapped FROM remapped_uids"
                " WHERE last_used_at < ? ORDER BY last_used_at, remapped LIMIT ?)",
                (unused_before, limit),
            )
            return max(cursor.rowcount, 0)
