"""The console's reads in SQL, shared by the SQLite and the PostgreSQL store (issue 18).

Both stores mix in :class:`SqlConsoleQueries`; it uses the dialect hooks of
:class:`~gateway.queue.commitment_sql.SqlCommitmentJournal` (``_cj_mark``,
``_cj_in``, ``_cj_chunk``, ``_cj_entry``) and adds three: :attr:`_cq_contains`
(SQLite ``instr``, PostgreSQL ``strpos``), :attr:`_cq_bucket` (an integer
bucket number from a non-negative float) and :attr:`_cq_prepare` (PostgreSQL:
never a prepared statement's generic plan for the console's queries). The behaviour is the in-memory
store's (:mod:`gateway.queue.memory_console`); the ``ConsoleQueryTests``
mixin runs against all three.

Every page is a keyset page, so it costs the same with a million journal
entries as with ten:

* ``dead_page`` walks dead letters newest first by ``entry_id`` below the
  cursor: the partial index ``entries_dead`` (``(entry_id) WHERE state =
  'dead'``, schema 9 / 5) without a destination filter, ``entries_lease``
  (``destination, state, entry_id, ...``) with one. The other filters
  (route, reason, age) are checked on the rows the index walk meets.
* ``dead_count`` counts at most ``cap`` rows (a bulk action changes at most
  :data:`~gateway.console.data.BULK_LIMIT`), so "how many?" never scans the
  whole dead-letter set of a flood.
* ``delivery_histogram`` reads the last hour's deliveries through the
  partial index ``entries_delivered_at`` and groups them in SQL.
* ``find_page`` is ``find`` with a limit on the instances.

The reason filter: a dead letter's kind is
:meth:`~gateway.queue.outcome.DeadLetterKind.of_reason` of its stored text
(the journal keeps no kind column). :func:`reason_clause` writes that
function in SQL: "gave up after" anywhere wins, else the first known
prefix. Prefixes are compared with ``substr(...) = ?`` and the phrase with
``instr``/``strpos``, not ``LIKE``: SQLite's ``LIKE`` ignores ASCII case and
treats ``%`` and ``_`` in the text as wildcards, which would make SQL and
``of_reason`` disagree on text such as ``"Morph: ..."``.
"""

from __future__ import annotations

from typing import Any, Callable, ContextManager, Sequence

from gateway.queue.interfaces import DestinationStats, Entry, InstanceRecord
from gateway.queue.outcome import _LEGACY_PREFIXES, DeadLetterKind
from gateway.queue.rows import ENTRY_SELECT, INSTANCE_COLUMNS, record_from_row

__all__ = ["SqlConsoleQueries", "FIND_COLUMNS", "reason_clause", "GAVE_UP_PHRASE"]

#: ``find_page``'s ``by`` -> the ``instances`` column it matches (``dicom-gateway find``'s keys).
FIND_COLUMNS: dict[str, str] = {
    "study": "study_instance_uid",
    "accession": "accession_number",
    "patient": "patient_id",
    "sop": "sop_instance_uid",
}

#: The words that make any dead letter :attr:`DeadLetterKind.GAVE_UP` (:meth:`DeadLetterKind.of_reason`).
GAVE_UP_PHRASE = "gave up after"

_INSTANCE_SELECT_I = "SELECT " + ", ".join("i." + c for c in INSTANCE_COLUMNS) + " FROM instances i"


def reason_clause(kind: DeadLetterKind | str, column: str, contains: str) -> tuple[str, list[Any]]:
    """SQL true exactly when :meth:`DeadLetterKind.of_reason` of ``column`` is ``kind``.

    :param kind: the kind (or its value).
    :param column: the reason column (``e.dead_reason``).
    :param contains: the dialect's substring-position function (``instr``, ``strpos``).
    :returns: the clause (written with ``?``) and its parameters.
    :raises ValueError: ``kind`` is not a kind.
    """
    kind = DeadLetterKind(kind)
    gave_up = f"{contains}({column}, ?) > 0"
    if kind is DeadLetterKind.GAVE_UP:
        return gave_up, [GAVE_UP_PHRASE]
    params: list[Any] = [GAVE_UP_PHRASE]
    if kind is DeadLetterKind.OTHER:
        prefixes = [prefix for prefix, _ in _LEGACY_PREFIXES]
        tests = [f"substr({column}, 1, {len(p)}) <> ?" for p in prefixes]
        return f"NOT ({gave_up}) AND " + " AND ".join(tests), params + prefixes
    prefixes = [prefix for prefix, k in _LEGACY_PREFIXES if k is kind]
    if not prefixes:
        # A kind only ever given as data (never written as legacy text): no stored
        # reason is of it, since of_reason cannot return it.
        return "1 = 0", []
    tests = [f"substr({column}, 1, {len(p)}) = ?" for p in prefixes]
    return f"NOT ({gave_up}) AND (" + " OR ".join(tests) + ")", params + prefixes


class SqlConsoleQueries:
    """The console's keyset reads over the journal's tables; mixed into both SQL stores.

    The store provides ``_read()``, ``_cj_mark``, ``_cj_in()``, ``_cj_chunk`` and
    ``_cj_entry()`` (:class:`~gateway.queue.commitment_sql.SqlCommitmentJournal`).
    """

    _read: Callable[[], ContextManager[Any]]
    _cj_mark: str
    _cj_in: Callable[[str, Sequence[Any]], tuple[str, list[Any]]]
    _cj_chunk: int
    _cj_entry: Callable[[Sequence[Any]], Entry]

    #: The dialect's substring-position function (SQLite ``instr``; PostgreSQL ``strpos``).
    _cq_contains = "instr"
    #: The integer part of a non-negative float expression (SQLite's CAST truncates; PostgreSQL's rounds).
    _cq_bucket = "CAST(({}) AS INTEGER)"
    #: ``prepare`` for the driver's execute: ``None`` (SQLite: the driver's own cache), PostgreSQL ``False``.
    #: The console's filters make selective and unselective queries of one text (a destination with 5
    #: dead letters or 50,000; a LIMIT of 51 or 10,001); a prepared statement's generic plan, made after
    #: its fifth run, fits one and not the other (a seq scan: 0.4 s became 1.4 s).
    _cq_prepare: bool | None = None

    def _cq(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        """Execute ``sql`` (written with ``?``) in the dialect, planned for its parameters; return the cursor."""
        if self._cj_mark != "?":
            sql = sql.replace("?", self._cj_mark)
        if self._cq_prepare is None:
            return conn.execute(sql, tuple(params))
        return conn.execute(sql, tuple(params), prepare=self._cq_prepare)

    def _dead_where(self, where: Any, before: int | None = None) -> tuple[str, list[Any]]:
        """The WHERE clause (written with ``?``) of the dead letters matching ``where`` below ``before``."""
        clauses = ["e.state = 'dead'"]
        params: list[Any] = []
        if where is not None:
            if where.destination is not None:
                clauses.append("e.destination = ?")
                params.append(where.destination)
            if where.route is not None:
                clauses.append("e.route = ?")
                params.append(where.route)
            if where.enqueued_before is not None:
                clauses.append("e.enqueued_at < ?")
                params.append(float(where.enqueued_before))
            if where.reason is not None:
                clause, extra = reason_clause(where.reason, "e.dead_reason", self._cq_contains)
                clauses.append(f"({clause})")
                params.extend(extra)
        if before is not None:
            clauses.append("e.entry_id < ?")
            params.append(int(before))
        return " WHERE " + " AND ".join(clauses), params

    def console_stats(self, names: Sequence[str]) -> dict[str, DestinationStats]:
        """The overview's figures of each destination in ``names`` (and any with a destinations row).

        What :meth:`~gateway.queue.interfaces.IQueueStore.stats` answers but
        ``delivered``, ``duplicates`` and ``stranded`` (left 0): those need a
        scan of every entry, a million on a busy journal; these are index range
        counts on ``entries_lease`` (``destination, state, entry_id``) per
        destination and state. ``oldest_queued_at`` is the ``enqueued_at`` of
        the first entry in line (lowest id) of the queued and the leased ones:
        ids and ``enqueued_at`` grow together (a requeue is a new id), so it is
        ``stats``' ``min(enqueued_at)`` without reading every queued row.
        """
        result: dict[str, DestinationStats] = {}
        with self._read() as conn:
            rows = {
                row[0]: row[1:]
                for row in self._cq(
                    conn,
                    "SELECT name, paused, last_error, last_error_at, last_success_at,"
                    " circuit_open, circuit_reason, circuit_since FROM destinations",
                ).fetchall()
            }
            for name in list(dict.fromkeys(list(names) + sorted(rows))):
                counts = {}
                oldest: list[float] = []
                for state in ("queued", "leased", "dead"):
                    # The state is written into the text, not a parameter: PostgreSQL prepares a
                    # statement after its fifth run (psycopg's prepare_threshold) and plans it once for
                    # any parameters; with the state a parameter that generic plan scanned the whole
                    # table (4 s per overview at a million entries). With it literal, each state's plan
                    # uses its index (entries_queued, entries_leased, entries_state).
                    counts[state] = int(self._cq(
                        conn, f"SELECT COUNT(*) FROM entries WHERE destination = ? AND state = '{state}'", [name]
                    ).fetchone()[0])
                    if state != "dead" and counts[state]:
                        first = self._cq(
                            conn,
                            f"SELECT enqueued_at FROM entries WHERE destination = ? AND state = '{state}' ORDER BY entry_id LIMIT 1",
                            [name],
                        ).fetchone()
                        if first is not None:
                            oldest.append(float(first[0]))
                paused, last_error, last_error_at, last_success_at, circuit_open, circuit_reason, circuit_since = rows.get(
                    name, (0, "", None, None, 0, "", None)
                )
                result[name] = DestinationStats(
                    destination=name,
                    queued=counts["queued"],
                    in_flight=counts["leased"],
                    dead=counts["dead"],
                    oldest_queued_at=min(oldest) if oldest else None,
                    last_error=last_error,
                    last_error_at=last_error_at,
                    last_success_at=last_success_at,
                    paused=bool(paused),
                    circuit_open=bool(circuit_open),
                    circuit_reason=circuit_reason,
                    circuit_since=circuit_since,
                )
        return result

    def dead_page(self, where: Any, before: int | None, limit: int) -> list[Entry]:
        """Dead letters matching ``where`` (a :class:`~gateway.console.data.DeadFilter` or ``None``)
        with ids below ``before``, newest first, at most ``limit``.

        :raises ValueError: the filter's reason is not a :class:`DeadLetterKind` value.
        """
        if limit <= 0:
            return []
        clause, params = self._dead_where(where, before)
        with self._read() as conn:
            rows = self._cq(conn, ENTRY_SELECT + clause + " ORDER BY e.entry_id DESC LIMIT ?", params + [int(limit)]).fetchall()
        return [self._cj_entry(row) for row in rows]

    def dead_count(self, where: Any, cap: int) -> int:
        """How many dead letters match ``where``, counting at most ``cap``."""
        if cap <= 0:
            return 0
        clause, params = self._dead_where(where)
        with self._read() as conn:
            row = self._cq(
                conn, "SELECT COUNT(*) FROM (SELECT 1 FROM entries e" + clause + " LIMIT ?) AS matched", params + [int(cap)]
            ).fetchone()
        return int(row[0])

    def dead_ids(self, where: Any, limit: int) -> list[int]:
        """The ids of the dead letters matching ``where``, newest first, at most ``limit``."""
        if limit <= 0:
            return []
        clause, params = self._dead_where(where)
        with self._read() as conn:
            rows = self._cq(
                conn, "SELECT e.entry_id FROM entries e" + clause + " ORDER BY e.entry_id DESC LIMIT ?", params + [int(limit)]
            ).fetchall()
        return [int(row[0]) for row in rows]

    def delivery_histogram(self, since: float, bucket_seconds: float, now: float) -> dict[str, list[int]]:
        """Deliveries per destination in buckets of ``bucket_seconds`` from ``since`` up to ``now``, oldest first.

        Only destinations with a delivery in the window appear; each has
        ``ceil((now - since) / bucket_seconds)`` buckets.
        """
        if bucket_seconds <= 0 or now <= since:
            return {}
        count = histogram_buckets(since, bucket_seconds, now)
        bucket = self._cq_bucket.format("(e.delivered_at - ?) / ?")
        sql = (
            f"SELECT e.destination, {bucket} AS b, COUNT(*) FROM entries e"
            " WHERE e.state = 'delivered' AND e.delivered_at >= ? AND e.delivered_at < ?"
            " GROUP BY e.destination, b"
        )
        result: dict[str, list[int]] = {}
        with self._read() as conn:
            rows = self._cq(conn, sql, [float(since), float(bucket_seconds), float(since), float(now)]).fetchall()
        for destination, b, n in rows:
            index = int(b)
            if 0 <= index < count:
                result.setdefault(destination, [0] * count)[index] += int(n)
        return result

    def instance_record(self, instance_id: str) -> InstanceRecord:
        """The instance on record under ``instance_id`` (the rule tester's "pick one from the spool").

        :raises KeyError: there is none.
        """
        with self._read() as conn:
            row = self._cq(conn, _INSTANCE_SELECT_I + " WHERE i.instance_id = ?", [instance_id]).fetchone()
        if row is None:
            raise KeyError(instance_id)
        return record_from_row(row)

    def find_page(self, by: str, value: str, limit: int) -> list[tuple[InstanceRecord, list[Entry]]]:
        """Instances whose ``by`` (``study``, ``accession``, ``patient``, ``sop``) is ``value``, oldest received
        first, at most ``limit``, each with its entries (oldest first).

        :raises ValueError: ``by`` is not one of those.
        """
        column = FIND_COLUMNS.get(by)
        if column is None:
            raise ValueError(f"find by study, accession, patient or sop, not {by!r}")
        if limit <= 0:
            return []
        with self._read() as conn:
            records = [
                record_from_row(row)
                for row in self._cq(
                    conn,
                    _INSTANCE_SELECT_I + f" WHERE i.{column} = ? ORDER BY i.received_at, i.instance_id LIMIT ?",
                    [value, int(limit)],
                ).fetchall()
            ]
            by_instance: dict[str, list[Entry]] = {record.instance_id: [] for record in records}
            ids = list(by_instance)
            for start in range(0, len(ids), self._cj_chunk):
                clause, params = self._cj_in("e.instance_id", ids[start : start + self._cj_chunk])
                for row in self._cq(conn, ENTRY_SELECT + f" WHERE {clause} ORDER BY e.entry_id", params).fetchall():
                    entry = self._cj_entry(row)
                    by_instance[entry.instance.instance_id].append(entry)
        return [(record, by_instance[record.instance_id]) for record in records]


def histogram_buckets(since: float, bucket_seconds: float, now: float) -> int:
    """How many buckets of ``bucket_seconds`` cover ``since`` up to ``now`` (the last one may be partial)."""
    whole, part = divmod(now - since, bucket_seconds)
    return int(whole) + (1 if part > 0 else 0)
