"""Operator views and actions on the queue, shared by the CLI (and the HTTP API later).

Everything here works on an :class:`~gateway.queue.interfaces.IQueueStore`
opened on the same journal the gateway uses, so ``dicom-gateway queue ...``
answers while the gateway runs (SQLite WAL lets a second process read and
write) and while it is stopped. Changes made here (pause, retry, purge) are
picked up by the running gateway's workers at their next poll.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any, Iterable, Sequence

from gateway.queue.interfaces import DestinationStats, Entry, EntryState, InstanceRecord, IQueueStore


def _age(now: float, then: float | None) -> str:
    if then is None:
        return "-"
    seconds = max(0.0, now - then)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _when(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def queue_rows(store: IQueueStore, destinations: Iterable[str], now: float) -> list[dict[str, Any]]:
    """One row per configured destination (and any other the journal knows).

    :returns: dicts with destination, queued, in_flight, dead, delivered,
        oldest_age_seconds, last_error, last_success_at, paused.
    """
    stats = dict(store.stats(now))
    names = list(destinations) + sorted(set(stats) - set(destinations))
    rows = []
    for name in names:
        s = stats.get(name, DestinationStats(destination=name))
        rows.append(
            {
                "destination": name,
                "queued": s.queued,
                "in_flight": s.in_flight,
                "dead": s.dead,
                "delivered": s.delivered,
                "duplicates": s.duplicates,
                "oldest_age_seconds": None if s.oldest_queued_at is None else max(0.0, now - s.oldest_queued_at),
                "last_error": s.last_error,
                "last_error_at": s.last_error_at,
                "last_success_at": s.last_success_at,
                "paused": s.paused,
                "circuit": "open" if s.circuit_open else "closed",
                "circuit_reason": s.circuit_reason,
                "circuit_since": s.circuit_since,
            }
        )
    return rows


def format_queue_rows(rows: Sequence[dict[str, Any]], now: float) -> str:
    """A fixed-width table of :func:`queue_rows` for a terminal."""
    header = (
        f"{'DESTINATION':<20} {'QUEUED':>7} {'IN-FLIGHT':>9} {'DEAD':>6} {'DELIVERED':>9} {'OLDEST':>7}"
        "  STATE   CIRCUIT  LAST ERROR"
    )
    lines = [header]
    for r in rows:
        oldest = "-" if r["oldest_age_seconds"] is None else _age(now, now - r["oldest_age_seconds"])
        state = "paused" if r["paused"] else "active"
        error = r["circuit_reason"] if r["circuit"] == "open" else r["last_error"]
        lines.append(
            f"{r['destination']:<20} {r['queued']:>7} {r['in_flight']:>9} {r['dead']:>6} {r['delivered']:>9} "
            f"{oldest:>7}  {state:<7} {r['circuit']:<8} {error[:60]}"
        )
    return "\n".join(lines)


def entry_dict(entry: Entry) -> dict[str, Any]:
    """An entry as plain JSON-able data (dead-letter records, ``queue show``)."""
    data = asdict(entry)
    data["state"] = entry.state.value
    data["history"] = [asdict(a) for a in entry.history]
    return data


def format_entry(entry: Entry) -> str:
    """A readable multi-line description of one entry, with its attempt history."""
    i = entry.instance
    lines = [
        f"entry {entry.entry_id}: {entry.state.value} for {entry.destination} (route {entry.route})",
        f"  instance     {i.sop_instance_uid} ({i.sop_class_uid}), {i.size} bytes, {i.transfer_syntax_uid}",
        f"  study        {i.study_instance_uid}  patient {i.patient_id}  accession {i.accession_number}",
        f"  received     {_when(i.received_at)} from {i.calling_ae_title} ({i.source_address}); correlation {i.correlation_id}",
        f"  file         {entry.path}",
        f"  enqueued     {_when(entry.enqueued_at)}; attempts {entry.attempts}; next {_when(entry.next_attempt_at)}",
    ]
    if entry.delivered_at is not None:
        lines.append(f"  delivered    {_when(entry.delivered_at)}")
    if entry.dead_reason:
        lines.append(f"  dead letter  {entry.dead_reason}")
    if entry.last_error:
        lines.append(f"  last error   {entry.last_error}")
    for attempt in entry.history:
        counted = "" if attempt.counted else " (not counted)"
        lines.append(f"    {_when(attempt.at)}  {attempt.error}{counted}")
    return "\n".join(lines)


def format_find(results: Sequence[tuple[InstanceRecord, list[Entry]]]) -> str:
    """Where did it go: every instance and its state at each destination."""
    if not results:
        return "no instance on record matches"
    lines = []
    for record, entries in results:
        lines.append(
            f"{record.sop_instance_uid}  study {record.study_instance_uid}  received {_when(record.received_at)} "
            f"from {record.calling_ae_title}"
        )
        if not entries:
            lines.append("    (no destination: kept in the spool)")
        for entry in entries:
            if entry.state is EntryState.DELIVERED:
                detail = f"delivered {_when(entry.delivered_at)}"
            elif entry.state is EntryState.DEAD:
                detail = f"dead-lettered: {entry.dead_reason}"
            elif entry.state is EntryState.DUPLICATE:
                detail = "identical re-send, not forwarded again"
            else:
                detail = f"{entry.state.value}, {entry.attempts} attempts, next {_when(entry.next_attempt_at)}"
                if entry.last_error:
                    detail += f", last error: {entry.last_error}"
            lines.append(f"    -> {entry.destination:<16} [{entry.entry_id}] {detail}")
    return "\n".join(lines)


def to_json(data: Any) -> str:
    """JSON for ``--json`` output."""
    return json.dumps(data, indent=2, sort_keys=True, default=str)
