"""IStudyJournal in SQL, shared by the SQLite and the PostgreSQL store (issue 18).

Both stores mix in :class:`SqlStudyJournal`; it uses the dialect hooks of
:class:`~gateway.queue.commitment_sql.SqlCommitmentJournal` (``_q``, the
parameter mark) and adds two: :attr:`_sj_lock` (PostgreSQL: ``FOR UPDATE``)
and :attr:`_sj_collate` (PostgreSQL: ``COLLATE "C"``, so that keyset order
is the code-point order of the other stores whatever the database's locale).
The behaviour (and the conventions the interface leaves open) is the
in-memory fake's, listed in :mod:`gateway.queue.memory_studies`; the
``StudyJournalTests`` mixin runs against all three.

Table ``studies`` (SQLite schema 9, PostgreSQL schema 5,
:data:`gateway.queue.schema.STUDIES_TABLE`): one row per (route, study),
``series_seen`` the JSON text ``{series_uid: [series_number, modality,
count]}``. Indexes: the primary key (``study``, the notes' upsert);
``studies_due (state, last_instance_at)`` for ``open_studies`` and
``studies``; ``studies_completed (state, completed_at)`` for
``purge_studies`` (a range read in completion order).

Notes (the intake's half, inside ``add_instance``'s transaction):

* SQLite: every write holds the database's write lock (``BEGIN
  IMMEDIATE``), so :meth:`SqlStudyJournal._sj_apply_note` reads the row,
  merges ``series_seen`` in Python and writes it with ``INSERT ... ON
  CONFLICT DO UPDATE``.
* PostgreSQL: several nodes' intakes may note one study at once, and
  ``add_instances`` runs pipelined (nothing is read before the COMMIT):
  :data:`PG_NOTE` decides in SQL whether the note applies (the route's
  entries of the instance not all DUPLICATE) and merges ``series_seen`` with
  ``jsonb`` functions in the ``ON CONFLICT DO UPDATE`` (the conflicting row
  is locked, so two nodes' updates apply one after the other).

``study_progress`` reads the study's instances through ``instances_study``
and their entries through ``entries_instance``: a few thousand index probes
for a study of 5,000 instances, one read transaction.

``complete_study`` is one write transaction: the row (PostgreSQL: locked
``FOR UPDATE``, so another node's tracker waits and then finds it moved),
the compare-and-set on ``state``, ``last_instance_at`` and ``completions``
(another node's intake adding an instance moved ``last_instance_at``, in
its own transaction that took the row's lock too), the outstanding entries
re-counted inside the transaction, then the notification records and their
entries, then the row.
"""

from __future__ import annotations

import json
from typing import Any, Callable, ContextManager, Sequence

from gateway.notify.document import NOTIFICATION_SOP_CLASS
from gateway.queue.interfaces import EntryState, InstanceRecord, NewEntry
from gateway.queue.memory_studies import merge_series, progress_of, series_from_json, series_to_json
from gateway.queue.rows import INSTANCE_COLUMNS, record_from_row
from gateway.queue.studies import StudyNote, StudyProgress, StudyRow

__all__ = ["SqlStudyJournal", "STUDY_COLUMNS", "PG_NOTE", "pg_note_params"]

#: The columns of ``studies`` a StudyRow is built from, in this order.
STUDY_COLUMNS: tuple[str, ...] = (
    "route",
    "study_instance_uid",
    "state",
    "opened_at",
    "last_instance_at",
    "instances",
    "expected_instances",
    "series_seen",
    "completions",
    "completed_at",
    "forced",
)

_STUDY_SELECT = "SELECT " + ", ".join(STUDY_COLUMNS) + " FROM studies"

#: The update every note makes to an existing row (``excluded`` is the row the INSERT proposed).
_ON_CONFLICT = (
    " ON CONFLICT (route, study_instance_uid) DO UPDATE SET"
    " state = 'open',"
    " opened_at = CASE WHEN studies.state = 'complete' THEN excluded.opened_at ELSE studies.opened_at END,"
    " forced = CASE WHEN studies.state = 'complete' THEN 0 ELSE studies.forced END,"
    " last_instance_at = excluded.last_instance_at,"
    " instances = studies.instances + 1,"
    " expected_instances = COALESCE(excluded.expected_instances, studies.expected_instances),"
)

#: SQLite's note: ``series_seen`` already merged under the write lock.
_NOTE = (
    "INSERT INTO studies (route, study_instance_uid, state, opened_at, last_instance_at, instances,"
    " expected_instances, series_seen) VALUES (?, ?, 'open', ?, ?, 1, ?, ?)"
    + _ON_CONFLICT
    + " series_seen = excluded.series_seen"
)

#: One series' entry of ``series_seen`` on PostgreSQL (the existing row's ``studies.series_seen``).
_PG_SERIES = "(studies.series_seen::jsonb -> %(series)s)"

#: PostgreSQL's note (named parameters, :func:`pg_note_params`): applies only when the route's
#: entries of the instance are not all DUPLICATE, merges ``series_seen`` in SQL (see the module docstring).
PG_NOTE = (
    "INSERT INTO studies (route, study_instance_uid, state, opened_at, last_instance_at, instances,"
    " expected_instances, series_seen)"
    " SELECT %(route)s, %(study)s, 'open', %(now)s, %(now)s, 1, %(expected)s, %(initial)s"
    " WHERE NOT EXISTS (SELECT 1 FROM entries WHERE instance_id = %(instance)s AND route = %(route)s)"
    " OR EXISTS (SELECT 1 FROM entries WHERE instance_id = %(instance)s AND route = %(route)s"
    " AND state <> 'duplicate')"
    + _ON_CONFLICT
    + " series_seen = CASE WHEN %(series)s = '' THEN studies.series_seen ELSE"
    " jsonb_set(studies.series_seen::jsonb, ARRAY[%(series)s]::text[], jsonb_build_array("
    f" CASE WHEN jsonb_typeof({_PG_SERIES} -> 0) = 'number' THEN {_PG_SERIES} -> 0"
    " ELSE to_jsonb(%(number)s::int) END,"
    f" CASE WHEN COALESCE({_PG_SERIES} ->> 1, '') <> '' THEN {_PG_SERIES} -> 1"
    " ELSE to_jsonb(%(modality)s::text) END,"
    f" COALESCE(({_PG_SERIES} ->> 2)::int, 0) + 1))::text END"
)


def pg_note_params(note: StudyNote, instance_id: str, now: float) -> dict[str, Any]:
    """The parameters of :data:`PG_NOTE` for one note of one instance."""
    return {
        "route": note.route,
        "study": note.study_instance_uid,
        "now": now,
        "expected": note.expected_instances,
        "initial": series_to_json(merge_series({}, note)),
        "instance": instance_id,
        "series": note.series_instance_uid,
        "number": note.series_number,
        "modality": note.modality,
    }


def _row(values: Sequence[Any]) -> StudyRow:
    """A :class:`StudyRow` from a row in :data:`STUDY_COLUMNS` order."""
    v = dict(zip(STUDY_COLUMNS, values))
    return StudyRow(
        route=v["route"],
        study_instance_uid=v["study_instance_uid"],
        state=v["state"],
        opened_at=float(v["opened_at"]),
        last_instance_at=float(v["last_instance_at"]),
        instances=int(v["instances"]),
        expected_instances=None if v["expected_instances"] is None else int(v["expected_instances"]),
        series=series_from_json(v["series_seen"]),
        completions=int(v["completions"]),
        completed_at=None if v["completed_at"] is None else float(v["completed_at"]),
        forced=bool(v["forced"]),
    )


#: The study's instances with an entry of the route, notification records excluded
#: (parameters: study UID, the notification class, route).
_ROUTE_INSTANCES = (
    " FROM instances i WHERE i.study_instance_uid = ? AND i.sop_class_uid <> ?"
    " AND EXISTS (SELECT 1 FROM entries e WHERE e.instance_id = i.instance_id AND e.route = ?)"
)

#: Whether any entry of the route for the study's instances is still to be sent (same parameters).
_OUTSTANDING = (
    "SELECT 1 FROM instances i JOIN entries e ON e.instance_id = i.instance_id"
    " WHERE i.study_instance_uid = ? AND i.sop_class_uid <> ? AND e.route = ?"
    " AND e.state IN ('queued', 'leased') LIMIT 1"
)


class SqlStudyJournal:
    """:class:`~gateway.queue.studies.IStudyJournal` in SQL (see the module docstring).

    The store provides ``_write()``/``_read()`` (one transaction each) and
    ``_q`` (from :class:`~gateway.queue.commitment_sql.SqlCommitmentJournal`).
    """

    _write: Callable[[], ContextManager[Any]]
    _read: Callable[[], ContextManager[Any]]
    _q: Callable[..., Any]

    #: Appended to ``complete_study``'s read of the row (PostgreSQL: ``FOR UPDATE``).
    _sj_lock = ""
    #: Appended to text columns in keyset orders (PostgreSQL: ``COLLATE "C"``).
    _sj_collate = ""

    # -- the intake's half --------------------------------------------------------------

    def _sj_apply_note(self, conn: Any, note: StudyNote, now: float) -> None:
        """Create or update one note's row, under the caller's write lock (SQLite; the caller decided it applies)."""
        found = self._q(
            conn, "SELECT series_seen FROM studies WHERE route = ? AND study_instance_uid = ?",
            (note.route, note.study_instance_uid),
        ).fetchone()
        series = merge_series({} if found is None else json.loads(found[0]), note)
        self._q(
            conn, _NOTE,
            (note.route, note.study_instance_uid, now, now, note.expected_instances, series_to_json(series)),
        )

    # -- IStudyJournal ---------------------------------------------------------------------

    def open_studies(self, quiet_before: float, opened_before: float, limit: int = 500) -> list[StudyRow]:
        """Open rows quiet since ``quiet_before`` or opened by ``opened_before``, quietest first.

        See :meth:`gateway.queue.studies.IStudyJournal.open_studies`.
        """
        if limit <= 0:
            return []
        c = self._sj_collate
        with self._read() as conn:
            rows = self._q(
                conn,
                _STUDY_SELECT + " WHERE state = 'open' AND (last_instance_at <= ? OR opened_at <= ?)"
                f" ORDER BY last_instance_at, route{c}, study_instance_uid{c} LIMIT ?",
                (quiet_before, opened_before, limit),
            ).fetchall()
        return [_row(row) for row in rows]

    def study(self, route: str, study_instance_uid: str) -> StudyRow:
        """One row.

        See :meth:`gateway.queue.studies.IStudyJournal.study`.

        :raises KeyError: no such row.
        """
        with self._read() as conn:
            row = self._q(
                conn, _STUDY_SELECT + " WHERE route = ? AND study_instance_uid = ?", (route, study_instance_uid)
            ).fetchone()
        if row is None:
            raise KeyError((route, study_instance_uid))
        return _row(row)

    def studies(
        self, state: str | None = None, limit: int = 100, after: tuple[float, str, str] | None = None
    ) -> list[StudyRow]:
        """Rows newest first, after a keyset cursor.

        See :meth:`gateway.queue.studies.IStudyJournal.studies`.
        """
        if limit <= 0:
            return []
        c = self._sj_collate
        clauses: list[str] = []
        params: list[Any] = []
        if state is not None:
            clauses.append("state = ?")
            params.append(state)
        if after is not None:
            clauses.append(
                f"(last_instance_at < ? OR (last_instance_at = ? AND (route{c} < ?"
                f" OR (route = ? AND study_instance_uid{c} < ?))))"
            )
            params += [after[0], after[0], after[1], after[1], after[2]]
        sql = (
            _STUDY_SELECT + (" WHERE " + " AND ".join(clauses) if clauses else "")
            + f" ORDER BY last_instance_at DESC, route{c} DESC, study_instance_uid{c} DESC LIMIT ?"
        )
        params.append(limit)
        with self._read() as conn:
            rows = self._q(conn, sql, params).fetchall()
        return [_row(row) for row in rows]

    def study_progress(self, route: str, study_instance_uid: str) -> StudyProgress:
        """The route's entries for the study's instances, per destination.

        See :meth:`gateway.queue.studies.IStudyJournal.study_progress`.
        """
        key = (study_instance_uid, NOTIFICATION_SOP_CLASS, route)
        with self._read() as conn:
            counts: dict[str, dict[str, int]] = {}
            for destination, state, count in self._q(
                conn,
                "SELECT e.destination, e.state, count(*) FROM instances i JOIN entries e ON e.instance_id = i.instance_id"
                " WHERE i.study_instance_uid = ? AND i.sop_class_uid <> ? AND e.route = ?"
                " GROUP BY e.destination, e.state",
                key,
            ).fetchall():
                counts.setdefault(destination, {})[state] = int(count)
            instances, first, last = self._q(
                conn, "SELECT count(*), min(i.received_at), max(i.received_at)" + _ROUTE_INSTANCES, key
            ).fetchone()
            sample = self._q(
                conn,
                "SELECT " + ", ".join("i." + column for column in INSTANCE_COLUMNS) + _ROUTE_INSTANCES
                + " AND i.path <> '' ORDER BY i.received_at, i.instance_id LIMIT 1",
                key,
            ).fetchone()
        return StudyProgress(
            route=route,
            study_instance_uid=study_instance_uid,
            instances=int(instances),
            destinations=tuple(progress_of(name, counts[name]) for name in sorted(counts)),
            first_received_at=None if first is None else float(first),
            last_received_at=None if last is None else float(last),
            sample=None if sample is None else record_from_row(sample),
        )

    def complete_study(
        self,
        route: str,
        study_instance_uid: str,
        last_instance_at: float,
        completions: int,
        now: float,
        forced: bool,
        notifications: Sequence[tuple[InstanceRecord, Sequence[NewEntry]]],
    ) -> bool:
        """Record the study complete and queue its notifications, in one transaction.

        See :meth:`gateway.queue.studies.IStudyJournal.complete_study`.

        :raises ValueError: a notification record's instance id is already recorded (nothing is written).
        """
        from gateway.queue.sqlite import study_hash

        ids = [record.instance_id for record, _ in notifications]
        if len(set(ids)) != len(ids):
            raise ValueError("a notification record is repeated")
        with self._write() as conn:
            row = self._q(
                conn,
                "SELECT state, last_instance_at, completions FROM studies WHERE route = ? AND study_instance_uid = ?"
                + self._sj_lock,
                (route, study_instance_uid),
            ).fetchone()
            if row is None or row[0] != "open" or float(row[1]) != last_instance_at or int(row[2]) != completions:
                return False
            if not forced and self._q(
                conn, _OUTSTANDING, (study_instance_uid, NOTIFICATION_SOP_CLASS, route)
            ).fetchone() is not None:
                return False
            for record, entries in notifications:
                if self._q(
                    conn, "SELECT 1 FROM instances WHERE instance_id = ?", (record.instance_id,)
                ).fetchone() is not None:
                    # Raised inside the transaction: nothing of it is kept.
                    raise ValueError(f"notification record {record.instance_id!r} is already recorded")
                self._q(
                    conn,
                    "INSERT INTO instances (" + ", ".join(INSTANCE_COLUMNS) + ") VALUES ("
                    + ", ".join("?" * len(INSTANCE_COLUMNS)) + ")",
                    tuple(getattr(record, column) for column in INSTANCE_COLUMNS),
                )
                hash_ = study_hash(record.study_instance_uid)
                for new in entries:
                    if new.plan is not None:
                        self._q(
                            conn,
                            "INSERT INTO plans (plan_hash, definition) VALUES (?, ?) ON CONFLICT (plan_hash) DO NOTHING",
                            (new.plan.plan_hash, new.plan.definition),
                        )
                    self._q(
                        conn,
                        "INSERT INTO entries (instance_id, route, destination, path, state, enqueued_at,"
                        " next_attempt_at, history, study_hash, plan_hash) VALUES (?, ?, ?, ?, ?, ?, ?, '[]', ?, ?)",
                        (
                            record.instance_id, new.route, new.destination, new.path, EntryState.QUEUED.value,
                            now, now, hash_, None if new.plan is None else new.plan.plan_hash,
                        ),
                    )
            changed = self._q(
                conn,
                "UPDATE studies SET state = 'complete', completions = completions + 1, completed_at = ?, forced = ?"
                " WHERE route = ? AND study_instance_uid = ? AND state = 'open' AND last_instance_at = ?"
                " AND completions = ?",
                (now, 1 if forced else 0, route, study_instance_uid, last_instance_at, completions),
            ).rowcount
            if changed != 1:  # cannot happen under the lock; never leave notifications without their completion
                raise RuntimeError(f"study {study_instance_uid!r} of route {route!r} changed under its lock")
        return True

    def purge_studies(self, completed_before: float, limit: int = 500) -> int:
        """Delete complete rows completed before ``completed_before``, oldest first; returns how many.

        See :meth:`gateway.queue.studies.IStudyJournal.purge_studies`.
        """
        if limit <= 0:
            return 0
        with self._write() as conn:
            keys = self._q(
                conn,
                "SELECT route, study_instance_uid FROM studies WHERE state = 'complete' AND completed_at < ?"
                " ORDER BY completed_at LIMIT ?",
                (completed_before, limit),
            ).fetchall()
            for route, uid in keys:
                self._q(
                    conn, "DELETE FROM studies WHERE route = ? AND study_instance_uid = ? AND state = 'complete'",
                    (route, uid),
                )
        return len(keys)
