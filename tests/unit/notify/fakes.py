"""A small fake of :class:`~gateway.queue.studies.IStudyJournal` for the tracker's unit tests (issue 18).

Until the studies journal of the stores is merged, the tracker is tested
against this: rows and progress are set by the test, and
:meth:`FakeStudyJournal.complete_study` applies the interface's
compare-and-set rule (same ``last_instance_at`` and ``completions``, and
nothing outstanding unless forced) and records what it was given.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

from gateway.queue.interfaces import InstanceRecord, NewEntry
from gateway.queue.studies import StudyProgress, StudyRow


class FakeStudyJournal:
    """Open rows and progress in dictionaries; completions recorded in :attr:`completed`."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], StudyRow] = {}
        self.progress: dict[tuple[str, str], StudyProgress] = {}
        #: (route, study, forced, notifications) of each completion that committed.
        self.completed: list[tuple[str, str, bool, list[tuple[InstanceRecord, Sequence[NewEntry]]]]] = []
        #: Called inside complete_study before the compare-and-set (a test may change the row there).
        self.before_complete: Any = None

    def open_studies(self, quiet_before: float, opened_before: float, limit: int = 500) -> list[StudyRow]:
        """Open rows quiet since ``quiet_before`` or opened before ``opened_before``, quietest first."""
        rows = [
            r for r in self.rows.values()
            if r.state == "open" and (r.last_instance_at <= quiet_before or r.opened_at <= opened_before)
        ]
        return sorted(rows, key=lambda r: r.last_instance_at)[:limit]

    def study(self, route: str, study_instance_uid: str) -> StudyRow:
        """One row."""
        return self.rows[(route, study_instance_uid)]

    def studies(self, state: str | None = None, limit: int = 100, after: Any = None) -> list[StudyRow]:
        """Rows newest first (by last_instance_at, route, study UID)."""
        rows = [r for r in self.rows.values() if state is None or r.state == state]
        rows.sort(key=lambda r: (r.last_instance_at, r.route, r.study_instance_uid), reverse=True)
        return rows[:limit]

    def study_progress(self, route: str, study_instance_uid: str) -> StudyProgress:
        """The progress the test set (none: no destination)."""
        return self.progress.get((route, study_instance_uid), StudyProgress(route, study_instance_uid, 0, ()))

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
        """The interface's compare-and-set."""
        if self.before_complete is not None:
            self.before_complete()
        row = self.rows.get((route, study_instance_uid))
        if row is None or row.state != "open" or row.last_instance_at != last_instance_at or row.completions != completions:
            return False
        if not forced and self.study_progress(route, study_instance_uid).outstanding:
            return False
        self.rows[(route, study_instance_uid)] = replace(
            row, state="complete", completions=completions + 1, completed_at=now, forced=forced
        )
        self.completed.append((route, study_instance_uid, forced, list(notifications)))
        return True
