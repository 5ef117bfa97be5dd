"""``dicom-gateway studies``: the studies journal's rows, for operators (issue 18).

Reads the journal directly (as ``queue list`` and ``retrieve list`` do) and
prints one line per (route, study): state, instances, completions, forced,
when it opened, when the last instance came and when it completed. Only UIDs
and counts: no patient data (the rows hold none).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from gateway.queue.studies import StudyRow

__all__ = ["study_rows", "format_study_rows"]


def study_rows(journal: Any, state: str | None, limit: int) -> list[dict[str, Any]]:
    """The rows, newest first, as JSON-able dictionaries.

    :param journal: an :class:`~gateway.queue.studies.IStudyJournal`.
    :param state: ``open``, ``complete`` or ``None`` for both.
    :param limit: at most this many.
    """
    rows: Sequence[StudyRow] = journal.studies(state=state, limit=limit)
    return [
        {
            "route": row.route,
            "study_instance_uid": row.study_instance_uid,
            "state": row.state,
            "instances": row.instances,
            "expected_instances": row.expected_instances,
            "series": len(row.series),
            "completions": row.completions,
            "forced": row.forced,
            "opened_at": row.opened_at,
            "last_instance_at": row.last_instance_at,
            "completed_at": row.completed_at,
        }
        for row in rows
    ]


def _age(then: float | None, now: float) -> str:
    """``12s``, ``5m``, ``3h``, ``2d`` ago, or ``-``."""
    if then is None:
        return "-"
    seconds = max(0.0, now - then)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def format_study_rows(rows: list[dict[str, Any]], now: float | None = None) -> str:
    """The rows as an aligned table (ages relative to ``now``)."""
    now = time.time() if now is None else now
    if not rows:
        return "no studies"
    header = ("ROUTE", "STATE", "INSTANCES", "DONE", "FORCED", "OPENED", "LAST", "COMPLETED", "STUDY")
    lines = [header]
    for r in rows:
        lines.append((
            r["route"], r["state"], str(r["instances"]), str(r["completions"]), "yes" if r["forced"] else "no",
            _age(r["opened_at"], now), _age(r["last_instance_at"], now), _age(r["completed_at"], now),
            r["study_instance_uid"],
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) + "  " + line[-1] for line in lines)
