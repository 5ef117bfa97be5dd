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

Storage Commitment (issue 15): :func:`commitment_rows`,
:func:`commitment_detail` and :func:`retry_commitment` work on the
journal's :class:`~gateway.queue.commitments.ICommitmentJournal` the same
way, for ``dicom-gateway commitment list|show|retry`` and
``/api/v1/commitments``; ``show`` judges the requested instances as the
report worker would now (:func:`gateway.commitment.verdict.judge`), beside
the report already decided, which never changes.
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
from gateway.queue.commitments import ICommitmentJournal, Transaction, TransactionState
from gateway.queue.interfaces import DestinationStats, Entry, EntryState, InstanceRecord, IQueueStore

# PS3.16 CID 400: a dead letter re-queued (action U) or purged (action D) by an operator.
INSTANCES_ACCESSED = Code("110103", "DICOM Instances Accessed")

#: The operator actions the audit trail knows.
OPERATOR_ACTIONS = (
    "retry", "retarget", "replay", "purge", "pause", "resume", "reload", "drain", "undrain", "commitment_retry"
)

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


# -- Storage Commitment (issue 15) ------------------------------------------------------------


def commitment_journal(store: Any) -> ICommitmentJournal | None:
    """The store's Storage Commitment journal, or ``None`` when it keeps none.

    :param store: the queue store.
    :returns: the same object, as the journal.
    """
    return ICommitmentJournal(store) if ICommitmentJournal.providedBy(store) else None


def commitment_summary(journal: ICommitmentJournal, now: float) -> dict[str, Any]:
    """Reports owed, overdue, dead and delivered (:meth:`ICommitmentJournal.transaction_stats`) as a dict.

    :param journal: the journal.
    :param now: wall-clock time (``overdue`` is ``deadline < now``).
    :returns: ``owed``, ``decided``, ``overdue``, ``dead``, ``reported``, ``oldest_owed_age_seconds``.
    """
    stats = journal.transaction_stats(now)
    return {
        "owed": stats.open,
        "decided": stats.decided,
        "overdue": stats.overdue,
        "dead": stats.dead,
        "reported": stats.reported,
        "oldest_owed_age_seconds": None if stats.oldest_open_at is None else max(0.0, now - stats.oldest_open_at),
    }


def format_commitment_summary(summary: dict[str, Any]) -> str:
    """The line ``queue list`` prints when reports are owed or dead; empty when there are none."""
    if not summary["owed"] and not summary["dead"]:
        return ""
    return (
        f"Storage Commitment reports: {summary['owed']} owed ({summary['overdue']} overdue), "
        f"{summary['dead']} dead; see dicom-gateway commitment list"
    )


def _report_counts(transaction: Transaction) -> tuple[int | None, int | None, int | None]:
    """``(event_type, committed, failed)`` of the decided report, ``None`` each while undecided."""
    if not transaction.report:
        return None, None, None
    from gateway.commitment.model import CommitmentReport

    try:
        report = CommitmentReport.from_json(transaction.report)
    except ValueError:
        return None, None, None
    return report.event_type, len(report.committed), len(report.failed)


def commitment_row(transaction: Transaction, now: float) -> dict[str, Any]:
    """One transaction as plain JSON-able data (``commitment list``, ``GET /api/v1/commitments``).

    :param transaction: the journaled transaction.
    :param now: wall-clock time, for ``overdue``.
    :returns: the row.
    """
    request = transaction.request
    event_type, committed, failed = _report_counts(transaction)
    return {
        "transaction_uid": request.transaction_uid,
        "state": transaction.state.value,
        "modality": request.modality,
        "calling_ae_title": request.calling_ae_title,
        "listener": request.listener,
        "policy": request.policy,
        "instances": len(request.references),
        "requested_at": transaction.requested_at,
        "deadline": request.deadline,
        "report_deadline": request.report_deadline,
        "overdue": transaction.state is TransactionState.OPEN and request.deadline < now,
        "decided": bool(transaction.report),
        "event_type": event_type,
        "committed": committed,
        "failed": failed,
        "attempts": transaction.attempts,
        "next_attempt_at": transaction.next_attempt_at,
        "last_error": transaction.last_error,
        "reported_at": transaction.reported_at,
        "dead_reason": transaction.dead_reason,
        "node": transaction.node,
    }


def commitment_rows(
    journal: ICommitmentJournal, now: float, state: TransactionState | None = None, limit: int = 1000
) -> list[dict[str, Any]]:
    """Transactions newest first, optionally of one state, as :func:`commitment_row`.

    :param journal: the journal.
    :param now: wall-clock time.
    :param state: only this state.
    :param limit: at most this many.
    :returns: the rows.
    """
    return [commitment_row(t, now) for t in journal.transactions(state, limit)]


def format_commitment_rows(rows: Sequence[dict[str, Any]], now: float) -> str:
    """A fixed-width table of :func:`commitment_rows` for a terminal (the Transaction UID last, whole)."""
    if not rows:
        return "no Storage Commitment transaction on record"
    lines = [f"{'STATE':<9} {'MODALITY':<16} {'POLICY':<9} {'INST':>5} {'AGE':>6} {'REPORT':<14} {'TRIES':>5}  TRANSACTION UID"]
    for r in rows:
        if r["event_type"] is None:
            report = "undecided"
        else:
            report = f"{r['committed']} ok/{r['failed']} fail"
        state = "overdue" if r["overdue"] else r["state"]
        lines.append(
            f"{state:<9} {r['modality'][:16]:<16} {r['policy']:<9} {r['instances']:>5} {_age(now, r['requested_at']):>6} "
            f"{report:<14} {r['attempts']:>5}  {r['transaction_uid']}"
        )
        if r["state"] != "reported" and (r["dead_reason"] or r["last_error"]):
            lines.append(f"{'':<9} {(r['dead_reason'] or r['last_error'])[:100]}")
    return "\n".join(lines)


def commitment_detail(
    journal: ICommitmentJournal, transaction_uid: str, committing: Iterable[str], now: float
) -> dict[str, Any]:
    """One transaction in full: the request, each instance as the verdict sees it now, the report, the attempts.

    Per instance: what was received under its UID since the request's
    lookback (journaled records or notes of instances sent nowhere), the
    state of each copy at each destination (queue entries) and, for
    ``storage_commitment`` destinations, the archive's answer; the verdict of
    :func:`gateway.commitment.verdict.judge` now (committed, failed with its
    Failure Reason, or undecided); and, once the report is decided, where
    the report put it (which never changes).

    :param journal: the journal.
    :param transaction_uid: the Transaction UID.
    :param committing: the names of destinations with ``storage_commitment: true``.
    :param now: wall-clock time.
    :returns: the detail.
    :raises KeyError: no such transaction.
    """
    from gateway.commitment.model import CommitmentReport
    from gateway.commitment.verdict import judge

    transaction = journal.get_transaction(transaction_uid)
    request = transaction.request
    received = journal.received([r.sop_instance_uid for r in request.references], request.lookback_from)
    try:
        verdicts: dict[tuple[str, str], Any] = {
            (v.reference.sop_class_uid, v.reference.sop_instance_uid): v
            for v in judge(request, received, frozenset(committing), now).instances
        }
    except ValueError:
        verdicts = {}  # a policy this version does not know
    reported: dict[tuple[str, str], str] = {}
    report: dict[str, Any] | None = None
    if transaction.report:
        decided: CommitmentReport | None
        try:
            decided = CommitmentReport.from_json(transaction.report)
        except ValueError:
            decided = None
        if decided is not None:
            report = {"event_type": decided.event_type, "committed": len(decided.committed), "failed": len(decided.failed)}
            for ref in decided.committed:
                reported[(ref.sop_class_uid, ref.sop_instance_uid)] = "committed"
            for failed in decided.failed:
                reference = failed.reference
                reported[(reference.sop_class_uid, reference.sop_instance_uid)] = f"failed 0x{failed.reason:04X}"
    instances = []
    for reference in request.references:
        key = (reference.sop_class_uid, reference.sop_instance_uid)
        verdict = verdicts.get(key)
        records = received.get(reference.sop_instance_uid, [])
        instances.append(
            {
                "sop_class_uid": reference.sop_class_uid,
                "sop_instance_uid": reference.sop_instance_uid,
                "verdict": verdict.state.value if verdict is not None else "unknown",
                "reason": f"0x{verdict.reason:04X}" if verdict is not None and verdict.reason else "",
                "detail": verdict.detail if verdict is not None else "",
                "in_report": reported.get(key, ""),
                "received": [
                    {
                        "received_at": record.received_at,
                        "outcome": record.outcome,
                        "instance_id": record.instance_id,
                        "sop_class_uid": record.sop_class_uid,
                    }
                    for record in records
                ],
                "destinations": [
                    {
                        "entry_id": entry.entry_id,
                        "route": entry.route,
                        "destination": entry.destination,
                        "state": entry.state.value,
                        "delivered_at": entry.delivered_at,
                        "dead_reason": entry.dead_reason,
                        "last_error": entry.last_error,
                    }
                    for record in records
                    for entry in record.entries
                ],
                "archive": [
                    {
                        "entry_id": copy.entry_id,
                        "destination": copy.destination,
                        "state": copy.state.value,
                        "sop_instance_uid": copy.sop_instance_uid,
                        "transaction_uid": copy.transaction_uid,
                        "failure_reason": f"0x{copy.failure_reason:04X}" if copy.failure_reason else "",
                    }
                    for record in records
                    for copy in record.copies
                ],
            }
        )
    return {
        **commitment_row(transaction, now),
        "called_ae_title": request.called_ae_title,
        "source_address": request.source_address,
        "unrouted": request.unrouted,
        "report_association": request.report_association,
        "lookback_from": request.lookback_from,
        "decided_at": transaction.decided_at,
        "report": report,
        "instances_detail": instances,
        "history": [asdict(a) for a in transaction.history],
    }


def format_commitment(detail: dict[str, Any]) -> str:
    """A readable multi-line description of :func:`commitment_detail`."""
    d = detail
    report = d["report"]
    if report is None:
        decided = "not decided yet"
    else:
        decided = (
            f"event type {report['event_type']}: {report['committed']} committed, {report['failed']} failed "
            f"(decided {_when(d['decided_at'])})"
        )
    state = d["state"] + (" (overdue)" if d["overdue"] else "")
    lines = [
        f"transaction {d['transaction_uid']}: {state}",
        f"  requester    {d['calling_ae_title']} (modality {d['modality']}, from {d['source_address'] or '?'}) "
        f"on listener {d['listener']}, to {d['called_ae_title']}",
        f"  requested    {_when(d['requested_at'])} on node {d['node']}; policy {d['policy']}, unrouted {d['unrouted']}, "
        f"report on a {d['report_association']} association",
        f"  deadline     {_when(d['deadline'])}; report deadline {_when(d['report_deadline'])}",
        f"  report       {decided}",
    ]
    if d["reported_at"] is not None:
        lines.append(f"  reported     {_when(d['reported_at'])} (acknowledged by the requester)")
    if d["dead_reason"]:
        lines.append(f"  dead         {d['dead_reason']}")
    elif d["state"] == "open":
        lines.append(f"  next look    {_when(d['next_attempt_at'])}; attempts {d['attempts']}")
    if d["last_error"]:
        lines.append(f"  last error   {d['last_error']}")
    lines.append(f"  instances    {d['instances']}")
    for i in d["instances_detail"]:
        verdict = i["verdict"] + (f" {i['reason']}" if i["reason"] else "")
        in_report = f"; in the report: {i['in_report']}" if i["in_report"] else ""
        lines.append(f"    {i['sop_instance_uid']} ({i['sop_class_uid']}): now {verdict}{in_report}")
        if i["detail"]:
            lines.append(f"        {i['detail']}")
        if not i["received"]:
            lines.append("        nothing received under this UID since the lookback")
        for received in i["received"]:
            if received["outcome"] != "journaled":
                lines.append(f"        received {_when(received['received_at'])}, {received['outcome']} (sent nowhere)")
        for entry in i["destinations"]:
            what = entry["state"]
            if entry["state"] == "delivered":
                what += f" {_when(entry['delivered_at'])}"
            elif entry["dead_reason"]:
                what += f": {entry['dead_reason']}"
            elif entry["last_error"]:
                what += f", last error: {entry['last_error']}"
            lines.append(f"        -> {entry['destination']:<16} [{entry['entry_id']}] route {entry['route']}: {what}")
        for copy in i["archive"]:
            reason = f" {copy['failure_reason']}" if copy["failure_reason"] else ""
            lines.append(
                f"        archive {copy['destination']} [{copy['entry_id']}]: {copy['state']}{reason}"
                + (f" (request {copy['transaction_uid']})" if copy["transaction_uid"] else "")
            )
    if d["history"]:
        lines.append("  attempts")
    for attempt in d["history"]:
        counted = "" if attempt["counted"] else " (not counted)"
        lines.append(f"    {_when(attempt['at'])}  {attempt['error']}{counted}")
    return "\n".join(lines)


def retry_commitment(journal: ICommitmentJournal, transaction_uid: str, now: float) -> Transaction:
    """Send a dead report again: OPEN, due now, with a new report deadline as far off as the first one was.

    The decided report is kept (the same report goes, PS3.4 J.3.3: one per
    transaction); the history is kept.

    :param journal: the journal.
    :param transaction_uid: the Transaction UID.
    :param now: wall-clock time.
    :returns: the transaction, OPEN again.
    :raises KeyError: no such transaction, or it is not dead.
    """
    try:
        transaction = journal.get_transaction(transaction_uid)
    except KeyError:
        raise KeyError(f"no transaction {transaction_uid}") from None
    if transaction.state is not TransactionState.DEAD:
        raise KeyError(f"transaction {transaction_uid} is {transaction.state.value}, not dead")
    span = max(0.0, transaction.request.report_deadline - transaction.requested_at)
    return journal.requeue_transaction(transaction_uid, now, now + span)


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
    transaction_uid: str = "",
    outcome: Outcome = Outcome.SUCCESS,
    description: str = "",
) -> AuditRecord:
    """Write one operator action to the audit trail.

    Re-queueing a dead letter (or replaying a kept study, or sending a dead
    Storage Commitment report again) is DICOM Instances Accessed with action U, a
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
    :param transaction_uid: the Storage Commitment transaction of ``commitment_retry``.
    :param outcome: a refused or failed action is a minor failure.
    :param description: what happened, or why it failed.
    :returns: the record.
    """
    if action in ("retry", "retarget", "replay", "purge", "commitment_retry"):
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
    if transaction_uid:
        extra["transaction_uid"] = transaction_uid
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
