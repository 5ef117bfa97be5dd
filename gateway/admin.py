"""Operator views and actions on the queue, shared by the CLI and the HTTP API.

Everything here works on an :class:`~gateway.queue.interfaces.IQueueStore`
opened on the same journal the gateway uses, so ``dicom-gateway queue ...``
answers while the gateway runs (SQLite WAL lets a second process read and
write) and while it is stopped. Changes made here (pause, retry, purge) are
picked up by the running gateway's workers at their next poll.

Every operator action (retry, re-target, purge, pause, resume, reload),
whether it comes through the API or the command line, is written to the
audit trail with who asked (the API token's name, or the local OS user),
from where, and the entry ids (:func:`audit_operator_action`, issue 11).
The command line opens the journal itself, so it appends its records to the
configured audit file itself (:func:`cli_audit_trail`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

from gateway.audit import (
    APPLICATION,
    APPLICATION_ACTIVITY,
    SOFTWARE_CONFIGURATION,
    AuditRecord,
    AuditTrail,
    Code,
    Outcome,
    Participant,
)
from gateway.queue.interfaces import DestinationStats, Entry, EntryState, InstanceRecord, IQueueStore

# PS3.16 CID 400: a dead letter re-queued (action U) or purged (action D) by an operator.
INSTANCES_ACCESSED = Code("110103", "DICOM Instances Accessed")

#: The operator actions the audit trail knows.
OPERATOR_ACTIONS = ("retry", "retarget", "replay", "purge", "pause", "resume", "reload", "drain", "undrain")

#: At most this many entry ids are listed in one record (``retry --all`` on a big backlog).
MAX_AUDITED_IDS = 500


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


def queue_rows(
    store: IQueueStore, destinations: Iterable[str], now: float, stranded_after: float | None = None
) -> list[dict[str, Any]]:
    """One row per configured destination (and any other the journal knows).

    :param stranded_after: seconds without a heartbeat after which a node's
        queued entries count as stranded (node-local spools, issue 14); the
        store's default when ``None``.
    :returns: dicts with destination, queued, in_flight, dead, delivered,
        oldest_age_seconds, last_error, last_success_at, paused, stranded.
    """
    stats = dict(store.stats(now) if stranded_after is None else store.stats(now, stranded_after))
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
                "stranded": s.stranded,
            }
        )
    return rows


def node_rows(store: IQueueStore, now: float, heartbeat: float) -> list[dict[str, Any]]:
    """One row per node that ever sent a heartbeat (issue 14): who is alive, what each holds.

    :param store: the queue store.
    :param now: wall-clock time.
    :param heartbeat: ``cluster.heartbeat``: a node silent for more than two
        heartbeats is shown ``silent`` (the alert's rule, ``etc/prometheus/alerts.yml``).
    :returns: dicts with node, heartbeat_age_seconds, state (alive, silent, or
        stopped: its last heartbeat was a clean stop's), leases, slots, started_at, detail.
    """
    from gateway.heartbeat import said_stopped

    rows = []
    for status in store.nodes(now):
        age = max(0.0, now - status.last_seen)
        try:
            detail = json.loads(status.detail) if status.detail else {}
        except ValueError:
            detail = {"text": status.detail}
        rows.append(
            {
                "node": status.node,
                "heartbeat_age_seconds": age,
                "state": "stopped" if said_stopped(status.detail) else "alive" if age <= 2 * heartbeat else "silent",
                "leases": status.leases,
                "slots": status.slots,
                "started_at": status.started_at,
                "detail": detail,
            }
        )
    return rows


def format_node_rows(rows: Sequence[dict[str, Any]], now: float) -> str:
    """A fixed-width table of :func:`node_rows` for a terminal (empty when no node ever beat)."""
    if not rows:
        return ""
    lines = [f"{'NODE':<24} {'HEARTBEAT':>9}  {'STATE':<7} {'LEASES':>6} {'SLOTS':>5}  {'STARTED':<19}  ADDRESS"]
    for r in rows:
        detail = r["detail"] if isinstance(r["detail"], dict) else {}
        address = detail.get("address", "")
        address = ", ".join(address) if isinstance(address, list) else str(address)
        state = "drain" if detail.get("draining") and r["state"] == "alive" else r["state"]
        lines.append(
            f"{r['node']:<24} {_age(now, now - r['heartbeat_age_seconds']):>9}  {state:<7} {r['leases']:>6} {r['slots']:>5}  "
            f"{_when(r['started_at']):<19}  {address[:40]}"
        )
    return "\n".join(lines)


def format_queue_rows(rows: Sequence[dict[str, Any]], now: float) -> str:
    """A fixed-width table of :func:`queue_rows` for a terminal."""
    header = (
        f"{'DESTINATION':<20} {'QUEUED':>7} {'IN-FLIGHT':>9} {'DEAD':>6} {'DELIVERED':>9} {'OLDEST':>7}"
        "  STATE   CIRCUIT  LAST ERROR"
    )
    stranded = any(r.get("stranded") for r in rows)
    if stranded:
        # Only when some node's backlog waits for it (node-local spools, issue 14).
        header = header.replace("  STATE", f" {'STRANDED':>8}  STATE")
    lines = [header]
    for r in rows:
        oldest = "-" if r["oldest_age_seconds"] is None else _age(now, now - r["oldest_age_seconds"])
        state = "paused" if r["paused"] else "active"
        error = r["circuit_reason"] if r["circuit"] == "open" else r["last_error"]
        extra = f" {r.get('stranded', 0):>8}" if stranded else ""
        lines.append(
            f"{r['destination']:<20} {r['queued']:>7} {r['in_flight']:>9} {r['dead']:>6} {r['delivered']:>9} "
            f"{oldest:>7}{extra}  {state:<7} {r['circuit']:<8} {error[:60]}"
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


@dataclass(frozen=True)
class Operator:
    """Who asked for an operator action, for the audit trail.

    :param who: the API token's name, or the local OS user of the command line.
    :param address: the source address (``host:port`` for the API, ``local`` for the CLI).
    :param via: ``api`` or ``cli``.
    """

    who: str
    address: str
    via: str


def local_operator() -> Operator:
    """The local OS user running a ``dicom-gateway queue ...`` command.

    :returns: the operator, named by the password database (the uid when it has no entry).
    """
    import pwd

    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid {uid}"
    return Operator(who=name, address="local", via="cli")


def audit_operator_action(
    trail: AuditTrail,
    action: str,
    operator: Operator,
    *,
    entry_ids: Sequence[int] = (),
    destination: str = "",
    to: str = "",
    outcome: Outcome = Outcome.SUCCESS,
    description: str = "",
) -> AuditRecord:
    """Write one operator action to the audit trail.

    Re-queueing a dead letter (or replaying a kept study) is DICOM Instances Accessed with action U, a
    purge the same with action D (PS3.15 A.5.3.3; CID 400 110103); pause,
    resume, reload, drain and undrain change how the application works: Application
    Activity, event type Software Configuration (A.5.3.1; CID 401 110131).
    The operator is the requesting ActiveParticipant (A.5.2.2: UserID,
    NetworkAccessPointID, UserIsRequestor).

    :param trail: the audit trail (the gateway's, or :func:`cli_audit_trail`).
    :param action: one of :data:`OPERATOR_ACTIONS`.
    :param operator: who asked, from where.
    :param entry_ids: the queue entries acted on.
    :param destination: the destination paused or resumed, when there is one.
    :param to: the new destination of a re-target.
    :param outcome: a refused or failed action is a minor failure.
    :param description: what happened, or why it failed.
    :returns: the record.
    """
    if action in ("retry", "retarget", "replay", "purge"):
        event, code, event_type = INSTANCES_ACCESSED, ("D" if action == "purge" else "U"), None
    else:
        event, code, event_type = APPLICATION_ACTIVITY, "E", SOFTWARE_CONFIGURATION
    ids = list(entry_ids)
    extra = {"action": action, "via": operator.via}
    if ids:
        shown = ",".join(str(i) for i in ids[:MAX_AUDITED_IDS])
        extra["entry_ids"] = shown + (f",... ({len(ids)} in all)" if len(ids) > MAX_AUDITED_IDS else "")
    if destination:
        extra["destination"] = destination
    if to:
        extra["to"] = to
    return trail.emit(
        event,
        code,
        outcome,
        event_type=event_type,
        description=description or f"{action} by {operator.who} ({operator.via}, {operator.address})",
        disposition=action,
        participants=(
            Participant(user_id=operator.who, network_access_point=operator.address, requestor=True),
            Participant(user_id=trail.ae_title, role=APPLICATION.meaning, network_access_point=trail.hostname),
        ),
        extra=extra,
    )


def cli_audit_trail(config: Any) -> AuditTrail:
    """The audit trail a ``dicom-gateway queue ...`` command writes its actions to.

    The configured audit file is appended to with the gateway's own writer,
    opened ``O_APPEND`` and never rotated from here (the running gateway
    rotates it): each record is one ``write`` of one line, so lines from the
    gateway and from the command never interleave. Without an audit file,
    records are only counted, as in the gateway.

    :param config: the configuration.
    :returns: the trail.
    """
    from gateway.audit import JsonLinesFile

    sinks: list[Any] = []
    if config.audit.file:
        sinks.append(JsonLinesFile(config.audit.file, max_bytes=0, keep=config.audit.rotate.keep))
    return AuditTrail(sinks, ae_title=config.ae_title)


def close_audit_trail(trail: AuditTrail) -> None:
    """Close the files of a :func:`cli_audit_trail` (the command is about to exit).

    :param trail: the trail.
    """
    for sink in trail.sinks:
        close = getattr(sink, "close", None)
        if close is not None:
            close()
