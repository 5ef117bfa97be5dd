"""The in-memory :class:`~gateway.queue.studies.IStudyJournal`: the verified fake's half for issue 18.

:class:`~gateway.queue.memory.MemoryQueueStore` inherits
:class:`MemoryStudyJournal`; the ``StudyJournalTests`` mixin
(:mod:`tests.unit.queue.test_studies`) runs against it, the SQLite store and
the PostgreSQL store (:mod:`gateway.queue.study_sql`).

The conventions the three stores share (the mixin pins each one):

* A note is applied after its instance's entries are inserted. It changes
  nothing when the instance has entries of the note's route and all of them
  are DUPLICATE (a re-send is not news); otherwise (some entry queued, or the
  route has no entry for it) the row is created or updated.
* A new row: ``open``, ``opened_at = last_instance_at = now``, one instance.
  An update: ``last_instance_at = now``, ``instances + 1``; the series entry
  of the note's series UID (none for an empty UID) counts one more instance
  and keeps the first series number and modality it was given (a later
  note fills them only when still unknown); ``expected_instances`` takes the
  note's value when it carries one. A note on a ``complete`` row reopens it:
  ``open``, ``opened_at = now``, ``forced`` cleared; ``completions`` and
  ``completed_at`` (the last completion's) are kept.
* ``study_progress`` counts the instances of the study (by Study Instance
  UID) that have at least one entry of the route, notification records
  (sop_class_uid :data:`~gateway.notify.document.NOTIFICATION_SOP_CLASS`)
  excluded, and their route entries per destination (destinations sorted by
  name); ``sample`` is the earliest received (then lowest instance id) of
  them whose ``path`` is not empty. A study with no such instance has
  ``instances == 0`` and no destinations.
* ``complete_study`` checks the row first (``KeyError`` never: a missing row
  is ``False``), then the outstanding entries (the same ones progress counts),
  then every notification record (an instance id already recorded, or
  repeated, raises :class:`ValueError` and nothing is written), then writes.
  Notification entries are QUEUED (never a duplicate).
* ``open_studies`` lists quietest first: ``last_instance_at``, then route,
  then study UID. ``studies`` lists newest first: ``last_instance_at``
  descending, then route descending, then study UID descending; ``after``
  is the last row's ``(last_instance_at, route, study_instance_uid)``.
* ``purge_studies`` deletes complete rows with ``completed_at`` strictly
  before the bound, oldest completion first (rows completed at the same
  instant in any order), at most ``limit``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from gateway.notify.document import NOTIFICATION_SOP_CLASS
from gateway.queue.interfaces import EntryState, InstanceRecord, NewEntry
from gateway.queue.studies import DestinationProgress, SeriesSeen, StudyNote, StudyProgress, StudyRow

if TYPE_CHECKING:
    from gateway.queue.memory import _Tables

__all__ = [
    "MemoryStudyJournal",
    "note_applies",
    "check_notes",
    "merge_series",
    "series_from_json",
    "series_to_json",
    "OUTSTANDING",
    "progress_of",
    "StudyTables",
]

#: The entry states that keep a study from completing (still to be sent).
OUTSTANDING = frozenset({EntryState.QUEUED, EntryState.LEASED})


def note_applies(route: str, entries: Sequence[NewEntry], states: Sequence[EntryState]) -> bool:
    """Whether a note for ``route`` changes its row: not when the route's new entries are all DUPLICATE.

    :param route: the note's route.
    :param entries: the instance's new entries.
    :param states: the state each entry was stored in (same order).
    """
    mine = [state for new, state in zip(entries, states) if new.route == route]
    return not mine or any(state is not EntryState.DUPLICATE for state in mine)


def check_notes(batch: Sequence[Any], notes: Sequence[Sequence[StudyNote]] | None) -> list[Sequence[StudyNote]]:
    """``add_instances``' notes as one sequence per batch item (none given: no notes).

    :raises ValueError: ``notes`` does not have one sequence per batch item.
    """
    if notes is None:
        return [()] * len(batch)
    if len(notes) != len(batch):
        raise ValueError(f"{len(notes)} note sequences for a batch of {len(batch)} instances")
    return list(notes)


def merge_series(series: Mapping[str, Sequence[Any]], note: StudyNote) -> dict[str, list[Any]]:
    """``series_seen`` (``{series_uid: [series_number, modality, count]}``) with one more instance of the note's series.

    The first series number and modality given are kept; a note without a
    series UID changes nothing.
    """
    merged = {uid: list(value) for uid, value in series.items()}
    if not note.series_instance_uid:
        return merged
    number, modality, count = merged.get(note.series_instance_uid, [None, "", 0])
    merged[note.series_instance_uid] = [
        number if number is not None else note.series_number,
        modality or note.modality,
        int(count) + 1,
    ]
    return merged


def series_from_json(text: str | Mapping[str, Any]) -> dict[str, SeriesSeen]:
    """The ``series_seen`` column (JSON text, or already decoded) as :class:`SeriesSeen` by series UID."""
    value = json.loads(text) if isinstance(text, str) else text
    return {
        uid: SeriesSeen(uid, None if number is None else int(number), modality or "", int(count))
        for uid, (number, modality, count) in value.items()
    }


def series_to_json(series: Mapping[str, Sequence[Any]]) -> str:
    """``series_seen`` as the column's compact JSON text."""
    return json.dumps(series, separators=(",", ":"), sort_keys=True)


@dataclass
class _Study:
    """One mutable studies row."""

    route: str
    study_instance_uid: str
    opened_at: float
    last_instance_at: float
    state: str = "open"
    instances: int = 0
    expected_instances: int | None = None
    series: dict[str, list[Any]] = field(default_factory=dict)
    completions: int = 0
    completed_at: float | None = None
    forced: bool = False

    def frozen(self) -> StudyRow:
        """The frozen view of this row."""
        return StudyRow(
            route=self.route,
            study_instance_uid=self.study_instance_uid,
            state=self.state,
            opened_at=self.opened_at,
            last_instance_at=self.last_instance_at,
            instances=self.instances,
            expected_instances=self.expected_instances,
            series=series_from_json(self.series),
            completions=self.completions,
            completed_at=self.completed_at,
            forced=self.forced,
        )


@dataclass
class StudyTables:
    """The studies rows every node's store object shares, by (route, study UID)."""

    rows: dict[tuple[str, str], _Study] = field(default_factory=dict)


class MemoryStudyJournal:
    """Study completeness in dicts (see the module docstring for the conventions).

    The store provides ``_t`` (its :class:`~gateway.queue.memory._Tables`,
    with ``studies``), ``_insert`` and ``_keep_plan``.
    """

    _t: _Tables

    # -- the intake's half (called by MemoryQueueStore.add_instance) -----------------

    def _apply_notes(
        self, notes: Sequence[StudyNote], entries: Sequence[NewEntry], states: Sequence[EntryState], now: float
    ) -> None:
        """Create or update the rows of ``notes`` for one instance just added (see the conventions)."""
        for note in notes:
            if not note_applies(note.route, entries, states):
                continue
            key = (note.route, note.study_instance_uid)
            row = self._t.studies.rows.get(key)
            if row is None:
                row = self._t.studies.rows[key] = _Study(note.route, note.study_instance_uid, now, now)
            elif row.state == "complete":
                row.state, row.opened_at, row.forced = "open", now, False
            row.last_instance_at = now
            row.instances += 1
            if note.expected_instances is not None:
                row.expected_instances = note.expected_instances
            row.series = merge_series(row.series, note)

    # -- IStudyJournal ----------------------------------------------------------------

    def open_studies(self, quiet_before: float, opened_before: float, limit: int = 500) -> list[StudyRow]:
        """Open rows quiet since ``quiet_before`` or opened by ``opened_before``, quietest first.

        See :meth:`gateway.queue.studies.IStudyJournal.open_studies`.
        """
        if limit <= 0:
            return []
        due = [
            row for row in self._t.studies.rows.values()
            if row.state == "open" and (row.last_instance_at <= quiet_before or row.opened_at <= opened_before)
        ]
        due.sort(key=lambda row: (row.last_instance_at, row.route, row.study_instance_uid))
        return [row.frozen() for row in due[:limit]]

    def study(self, route: str, study_instance_uid: str) -> StudyRow:
        """One row.

        See :meth:`gateway.queue.studies.IStudyJournal.study`.

        :raises KeyError: no such row.
        """
        return self._t.studies.rows[(route, study_instance_uid)].frozen()

    def studies(
        self, state: str | None = None, limit: int = 100, after: tuple[float, str, str] | None = None
    ) -> list[StudyRow]:
        """Rows newest first, after a keyset cursor.

        See :meth:`gateway.queue.studies.IStudyJournal.studies`.
        """
        if limit <= 0:
            return []
        rows = [
            row for row in self._t.studies.rows.values()
            if (state is None or row.state == state)
            and (after is None or (row.last_instance_at, row.route, row.study_instance_uid) < tuple(after))
        ]
        rows.sort(key=lambda row: (row.last_instance_at, row.route, row.study_instance_uid), reverse=True)
        return [row.frozen() for row in rows[:limit]]

    def _route_entries(self, route: str, study_instance_uid: str) -> tuple[list[InstanceRecord], list[Any]]:
        """The study's instances (notification records excluded) with entries of ``route``, and those entries."""
        rows = [
            row for row in self._t.rows.values()
            if row.route == route
            and self._t.instances[row.instance_id].study_instance_uid == study_instance_uid
            and self._t.instances[row.instance_id].sop_class_uid != NOTIFICATION_SOP_CLASS
        ]
        ids = {row.instance_id for row in rows}
        records = sorted(
            (self._t.instances[i] for i in ids), key=lambda record: (record.received_at, record.instance_id)
        )
        return records, rows

    def study_progress(self, route: str, study_instance_uid: str) -> StudyProgress:
        """The route's entries for the study's instances, per destination.

        See :meth:`gateway.queue.studies.IStudyJournal.study_progress`.
        """
        records, rows = self._route_entries(route, study_instance_uid)
        counts: dict[str, dict[str, int]] = {}
        for row in rows:
            by_state = counts.setdefault(row.destination, {})
            by_state[row.state.value] = by_state.get(row.state.value, 0) + 1
        return StudyProgress(
            route=route,
            study_instance_uid=study_instance_uid,
            instances=len(records),
            destinations=tuple(progress_of(name, counts[name]) for name in sorted(counts)),
            first_received_at=records[0].received_at if records else None,
            last_received_at=max(record.received_at for record in records) if records else None,
            sample=next((record for record in records if record.path != ""), None),
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
        """Record the study complete and queue its notifications, all or nothing.

        See :meth:`gateway.queue.studies.IStudyJournal.complete_study`.

        :raises ValueError: a notification record's instance id is already recorded (nothing is written).
        """
        row = self._t.studies.rows.get((route, study_instance_uid))
        if (
            row is None
            or row.state != "open"
            or row.last_instance_at != last_instance_at
            or row.completions != completions
        ):
            return False
        if not forced and any(entry.state in OUTSTANDING for entry in self._route_entries(route, study_instance_uid)[1]):
            return False
        ids = [record.instance_id for record, _ in notifications]
        if len(set(ids)) != len(ids) or any(i in self._t.instances for i in ids):
            raise ValueError("a notification record of the study is already recorded")
        from gateway.queue.sqlite import study_hash

        for record, entries in notifications:
            self._t.instances[record.instance_id] = record
            for new in entries:
                self._insert(  # type: ignore[attr-defined]
                    record.instance_id, new.route, new.destination, new.path, EntryState.QUEUED, now,
                    study_hash(record.study_instance_uid), plan_hash=self._keep_plan(new.plan),  # type: ignore[attr-defined]
                )
        row.state, row.completions, row.completed_at, row.forced = "complete", completions + 1, now, bool(forced)
        return True

    def purge_studies(self, completed_before: float, limit: int = 500) -> int:
        """Delete complete rows completed before ``completed_before``, oldest first; returns how many.

        See :meth:`gateway.queue.studies.IStudyJournal.purge_studies`.
        """
        if limit <= 0:
            return 0
        old = sorted(
            (
                row for row in self._t.studies.rows.values()
                if row.state == "complete" and row.completed_at is not None and row.completed_at < completed_before
            ),
            key=lambda row: (row.completed_at, row.route, row.study_instance_uid),
        )[:limit]
        for row in old:
            del self._t.studies.rows[(row.route, row.study_instance_uid)]
        return len(old)


def progress_of(destination: str, by_state: Mapping[str, int]) -> DestinationProgress:
    """One destination's progress from its entry counts by state value."""
    return DestinationProgress(
        destination=destination,
        outstanding=by_state.get("queued", 0) + by_state.get("leased", 0),
        delivered=by_state.get("delivered", 0),
        dead=by_state.get("dead", 0),
        duplicates=by_state.get("duplicate", 0),
    )

