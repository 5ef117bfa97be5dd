"""The operator's view of retrieves (issue 16): ``dicom-gateway retrieve list|show`` and ``/api/v1/retrieves``.

Both read the journal's :class:`~gateway.queue.retrieves.IRetrieveJournal`
the same way (as :mod:`gateway.admin` does for Storage Commitment): a row per
retrieve with its sub-operation counts now, and the detail with each item's
state, queue entry and failure reason.

What is shown: the journal keeps no query keys (no patient name or ID), only
AE titles, the Query/Retrieve level, the source and destination names and
the SOP Class / Instance UIDs of the instances; they are shown as the audit
trail records them (PS3.15 A.5.3.7: the participant objects are the UIDs;
``commitment show`` shows its instances the same way). Nothing else of the
datasets is read.

Finished retrieves are deleted after ``retention.retrieves``
(:meth:`gateway.recovery.Recovery.clean_retrieves`), so "no such retrieve"
says so (:func:`not_on_record`).

Pages: the list is newest first and takes a keyset cursor (:func:`encode_cursor`):
``created_at`` and id of the last row of the previous page, never an offset.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from gateway.queue.retrieves import IRetrieveJournal, Retrieve, RetrieveProgress, RetrieveState

__all__ = [
    "MAX_PAGE",
    "retrieve_journal",
    "retrieve_row",
    "retrieve_rows",
    "retrieve_page",
    "retrieve_detail",
    "format_retrieve_rows",
    "format_retrieve",
    "encode_cursor",
    "decode_cursor",
    "not_on_record",
    "parse_state",
]

#: The most rows one page of ``/api/v1/retrieves`` holds.
MAX_PAGE = 1000


def retrieve_journal(store: Any) -> IRetrieveJournal | None:
    """The store's retrieve journal, or ``None`` when it keeps none."""
    return IRetrieveJournal(store) if IRetrieveJournal.providedBy(store) else None


def parse_state(text: str | None) -> RetrieveState | None:
    """``open``, ``done``, ``cancelled``, ``failed`` as a state; ``None`` for none. :raises ValueError: another word."""
    if not text:
        return None
    try:
        return RetrieveState(text)
    except ValueError:
        raise ValueError(
            f"state must be one of {', '.join(s.value for s in RetrieveState)}, not {text!r}"
        ) from None


def not_on_record(retrieve_id: Any, retention: float) -> str:
    """What "no such retrieve" says: it may have been deleted after the retention."""
    kept = "forever" if retention <= 0 else f"{_duration(retention)} after they end"
    return (
        f"no retrieve {retrieve_id} on record (finished retrieves are kept {kept}: retention.retrieves;"
        " an id never given is not on record either)"
    )


def _duration(seconds: float) -> str:
    """``7d``, ``12h``, ``90s``: the largest whole unit."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def encode_cursor(retrieve: Retrieve) -> str:
    """The keyset cursor after ``retrieve``: ``<created_at>_<retrieve_id>`` (``repr`` round-trips the float)."""
    return f"{retrieve.created_at!r}_{retrieve.retrieve_id}"


def decode_cursor(text: str) -> tuple[float, int]:
    """The ``(created_at, retrieve_id)`` of a cursor. :raises ValueError: not one :func:`encode_cursor` made."""
    when, sep, rid = text.partition("_")
    if not sep or len(text) > 64:
        raise ValueError(f"not a cursor: {text[:64]!r}")
    try:
        created_at, retrieve_id = float(when), int(rid)
    except ValueError:
        raise ValueError(f"not a cursor: {text[:64]!r}") from None
    if created_at != created_at or retrieve_id < 0:  # NaN
        raise ValueError(f"not a cursor: {text[:64]!r}")
    return created_at, retrieve_id


def retrieve_row(retrieve: Retrieve, progress: RetrieveProgress, now: float) -> dict[str, Any]:
    """One retrieve as plain JSON-able data (``retrieve list``, ``GET /api/v1/retrieves``).

    :param retrieve: the journaled retrieve.
    :param progress: its counts now.
    :param now: wall-clock time, for ``overdue`` (OPEN past its deadline).
    """
    request = retrieve.request
    return {
        "retrieve_id": retrieve.retrieve_id,
        "kind": request.kind,
        "state": retrieve.state.value,
        "requester_ae_title": request.requester_ae_title,
        "listener": request.listener,
        "requester_message_id": request.requester_message_id,
        "destination": request.destination,
        "mode": request.mode,
        "level": request.level,
        "sources": list(request.sources),
        "message_id": retrieve.message_id,
        "node": retrieve.node,
        "created_at": retrieve.created_at,
        "deadline": request.deadline,
        "overdue": retrieve.state is RetrieveState.OPEN and request.deadline < now,
        "finished_at": retrieve.finished_at,
        "error": retrieve.error,
        "instances": len(request.expected),
        "remaining": progress.remaining,
        "completed": progress.completed,
        "warning": progress.warning,
        "failed": progress.failed,
    }


def _progress(journal: IRetrieveJournal, retrieve: Retrieve) -> RetrieveProgress:
    """Its counts, or empty ones when it went between the list and the count (deleted by the clean-up)."""
    try:
        return journal.progress(retrieve.retrieve_id)
    except KeyError:
        return RetrieveProgress()


def retrieve_rows(
    journal: IRetrieveJournal, now: float, state: RetrieveState | None = None, limit: int = 1000,
    before: tuple[float, int] | None = None,
) -> list[dict[str, Any]]:
    """Retrieves newest first, optionally of one state, after a cursor, as :func:`retrieve_row`."""
    return [retrieve_row(r, _progress(journal, r), now) for r in journal.retrieves(state, limit, before)]


def retrieve_page(
    journal: IRetrieveJournal, now: float, state: RetrieveState | None, limit: int, before: tuple[float, int] | None
) -> dict[str, Any]:
    """One page of ``GET /api/v1/retrieves``: the rows, the cursor of the next page (``None``: last page), the open counts."""
    listed = journal.retrieves(state, limit + 1, before)
    page, more = listed[:limit], len(listed) > limit
    return {
        "retrieves": [retrieve_row(r, _progress(journal, r), now) for r in page],
        "next": encode_cursor(page[-1]) if more and page else None,
        "open": {kind: dict(journal.open_retrieve_counts()).get(kind, 0) for kind in ("move", "get")},
    }


def retrieve_detail(journal: IRetrieveJournal, retrieve_id: int, now: float) -> dict[str, Any]:
    """One retrieve in full: the row, the Failed SOP Instance UID List now, each item. :raises KeyError: not on record."""
    retrieve = journal.get_retrieve(retrieve_id)
    progress = journal.progress(retrieve_id)
    items = journal.retrieve_items(retrieve_id)
    return {
        **retrieve_row(retrieve, progress, now),
        "failed_uids": list(progress.failed_uids),
        "items": [
            {
                "sop_class_uid": item.sop_class_uid,
                "sop_instance_uid": item.sop_instance_uid,
                "state": item.state.value,
                "counted": item.counted,
                "entry_id": item.entry_id,
                "reason": item.reason,
                "updated_at": item.updated_at,
            }
            for item in items
        ],
    }


def _when(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _age(now: float, then: float) -> str:
    seconds = max(0.0, now - then)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def format_retrieve_rows(rows: Sequence[dict[str, Any]], now: float) -> str:
    """A fixed-width table of :func:`retrieve_rows` for a terminal."""
    if not rows:
        return "no retrieve on record"
    lines = [
        f"{'ID':>6} {'KIND':<4} {'STATE':<9} {'REQUESTER':<16} {'DESTINATION':<16} {'MODE':<12} {'AGE':>6}"
        f" {'DONE':>5} {'WARN':>5} {'FAIL':>5} {'LEFT':>5}  SOURCES"
    ]
    for r in rows:
        state = "overdue" if r["overdue"] else r["state"]
        destination = r["destination"] or ("(requester)" if r["kind"] == "get" else "-")
        lines.append(
            f"{r['retrieve_id']:>6} {r['kind']:<4} {state:<9} {r['requester_ae_title'][:16]:<16} {destination[:16]:<16}"
            f" {r['mode'][:12]:<12} {_age(now, r['created_at']):>6} {r['completed']:>5} {r['warning']:>5}"
            f" {r['failed']:>5} {r['remaining']:>5}  {','.join(r['sources'])}"
        )
        if r["error"]:
            lines.append(f"{'':>6} {r['error'][:100]}")
    return "\n".join(lines)


def format_retrieve(detail: dict[str, Any]) -> str:
    """A readable multi-line description of :func:`retrieve_detail`."""
    d = detail
    state = d["state"] + (" (past its deadline)" if d["overdue"] else "")
    destination = d["destination"] or ("the requester's association" if d["kind"] == "get" else "-")
    lines = [
        f"retrieve {d['retrieve_id']}: C-{d['kind'].upper()} {state}",
        f"  requester    {d['requester_ae_title']} on listener {d['listener']}, message id {d['requester_message_id']}",
        f"  destination  {destination} ({d['mode']}); level {d['level']}",
        f"  sources      {', '.join(d['sources']) or '-'} (outgoing message id {d['message_id']}, node {d['node']})",
        f"  requested    {_when(d['created_at'])}; deadline {_when(d['deadline'])}",
        f"  ended        {_when(d['finished_at'])}" + (f": {d['error']}" if d["error"] else ""),
        f"  instances    {d['instances']}: {d['completed']} completed, {d['warning']} warning, "
        f"{d['failed']} failed, {d['remaining']} remaining",
    ]
    for item in d["items"]:
        entry = f" entry {item['entry_id']}" if item["entry_id"] is not None else ""
        reason = f": {item['reason']}" if item["reason"] else ""
        lines.append(
            f"    {item['sop_instance_uid']} ({item['sop_class_uid'] or '?'}): {item['state']}, counts {item['counted']}"
            f"{entry}{reason}"
        )
    return "\n".join(lines)
