"""What the gateway may say of each requested instance (PS3.4 J.3.3; issue 15): pure, no I/O.

Given a transaction's request (its policy, references, deadline and
``unrouted`` choice), what the journal knows of the requested UIDs
(:meth:`gateway.queue.commitments.ICommitmentJournal.received`), the names of
the destinations that commit themselves (``storage_commitment: true``) and
the time, :func:`judge` says of each reference COMMITTED, FAILED (with its
Failure Reason, PS3.3 C.14.1.1) or UNDECIDED, and whether the transaction is
decided: no reference undecided, or the deadline reached (then every
undecided one fails). :meth:`Verdict.report` is the N-EVENT-REPORT's data
set (:class:`~gateway.commitment.model.CommitmentReport`): each reference in
exactly one of its two sequences, in request order.

The rules, in the order they are applied to one reference (each is
commented where it is implemented):

1. nothing received under the UID: ``received`` fails it at once (0x0112:
   the gateway's custody is all that policy promises, and it has none);
   the other policies wait for the deadline (it may still be arriving),
   then 0x0112;
2. a record of another SOP class: 0x0119 (class/instance conflict);
3. nothing routed (an :class:`~gateway.queue.commitments.Unforwarded` note,
   or a journaled instance with no entries): committed when ``unrouted`` is
   ``success``, else 0x0110 (the modality keeps its copy: the safe side);
4. ``received``: a journaled record is committed (the C-STORE success's promise);
5. ``delivered``: every (route, destination) its entries name has a
   delivered copy; a dead one fails at once (0x0110);
6. ``committed``: as ``delivered``, and a destination that commits has
   confirmed the delivered copy itself (its archive's report).

Never more than is true: whatever is not known to hold stays UNDECIDED and
fails at the deadline.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Collection, Mapping, Sequence

from gateway.commitment.model import CommitmentReport, FailedReference, FailureReason
from gateway.queue.commitments import CopyState, NewTransaction, ReceivedInstance, Reference
from gateway.queue.interfaces import Entry, EntryState

__all__ = ["POLICIES", "State", "InstanceVerdict", "Verdict", "judge"]

#: The policies :func:`judge` knows (``commitment.policy``, fixed at request time).
POLICIES: tuple[str, ...] = ("received", "delivered", "committed")


class State(Enum):
    """What may be said of one requested instance now."""

    COMMITTED = "committed"
    FAILED = "failed"
    UNDECIDED = "undecided"


@dataclass(frozen=True)
class InstanceVerdict:
    """One reference's verdict.

    :ivar reason: the Failure Reason (0008,1197) when FAILED, else 0.
    :ivar detail: why, in words (for ``commitment show`` and the logs).
    """

    reference: Reference
    state: State
    reason: int = 0
    detail: str = ""


@dataclass(frozen=True)
class Verdict:
    """The verdicts of a transaction's references, in request order.

    :ivar decided: no reference is UNDECIDED (after the deadline none is:
        :func:`judge` has failed them).
    """

    instances: tuple[InstanceVerdict, ...]
    decided: bool

    def report(self, transaction_uid: str, retrieve_ae_title: str = "") -> CommitmentReport:
        """The N-EVENT-REPORT data set (PS3.4 Table J.3-2) of a decided verdict.

        Each reference is in exactly one sequence (PS3.4 J.3.3: the
        Referenced SOP Sequence lists the committed, the Failed SOP Sequence
        the others), in request order, once.

        :raises ValueError: the verdict is not decided.
        """
        if not self.decided:
            raise ValueError("a report is made only of a decided verdict")
        committed: list[Reference] = []
        failed: list[FailedReference] = []
        seen: set[Reference] = set()
        for verdict in self.instances:
            if verdict.reference in seen:
                continue
            seen.add(verdict.reference)
            if verdict.state is State.COMMITTED:
                committed.append(verdict.reference)
            else:
                failed.append(FailedReference(verdict.reference, verdict.reason))
        return CommitmentReport(transaction_uid, tuple(committed), tuple(failed), retrieve_ae_title)

    def undecided(self) -> int:
        """How many references are still UNDECIDED."""
        return sum(1 for v in self.instances if v.state is State.UNDECIDED)


def _committed(reference: Reference, detail: str) -> InstanceVerdict:
    return InstanceVerdict(reference, State.COMMITTED, 0, detail)


def _failed(reference: Reference, reason: FailureReason, detail: str) -> InstanceVerdict:
    return InstanceVerdict(reference, State.FAILED, int(reason), detail)


def _undecided(reference: Reference, detail: str) -> InstanceVerdict:
    return InstanceVerdict(reference, State.UNDECIDED, 0, detail)


def _groups(records: Sequence[ReceivedInstance]) -> dict[tuple[str, str], list[Entry]]:
    """The entries of every record of a UID by (route, destination), DUPLICATE entries left out.

    A DUPLICATE entry was never sent: its original is another record of the
    same UID (the duplicate window), whose own entry of that group says what
    became of the instance. An instance received twice, both times forwarded,
    has two entries in the group: one delivered copy is enough.
    """
    groups: dict[tuple[str, str], list[Entry]] = {}
    for record in records:
        for entry in record.entries:
            if entry.state is EntryState.DUPLICATE:
                continue
            groups.setdefault((entry.route, entry.destination), []).append(entry)
    return groups


def _routed(
    reference: Reference,
    records: Sequence[ReceivedInstance],
    policy: str,
    committing: Collection[str],
) -> InstanceVerdict:
    """Rules 5 and 6: the copies the routes made (``delivered``, ``committed``)."""
    groups = _groups(records)
    if not groups:
        # Only DUPLICATE entries: their originals are outside what we were
        # given (before the lookback). Nothing is known to hold: undecided.
        return _undecided(reference, "only duplicates of an instance not in the lookback")
    copies = {copy.entry_id: copy for record in records for copy in record.copies}
    waiting: list[str] = []
    for (route, destination), entries in sorted(groups.items()):
        where = f"{destination} (route {route})"
        delivered = [e for e in entries if e.state is EntryState.DELIVERED]
        if not delivered:
            if all(e.state is EntryState.DEAD for e in entries):
                # Dead-lettered at a destination its route names: it will not
                # get there unless an operator acts. Fail now (PS3.3 C.14.1.1:
                # 0x0110 processing failure), the modality keeps its copy.
                dead = entries[-1].dead_reason or entries[-1].last_error
                detail = f"dead-lettered at {where}" + (f": {dead}" if dead else "")
                return _failed(reference, FailureReason.PROCESSING_FAILURE, detail)
            waiting.append(f"not yet delivered to {where}")
            continue
        if policy != "committed" or destination not in committing:
            continue
        # ``committed``: the archive must have confirmed a delivered copy itself
        # through Storage Commitment (its N-EVENT-REPORT, PS3.4 J.3.3), matched
        # by entry id: the copy's UIDs may differ from the modality's (remapped).
        states = [copies[e.entry_id].state if e.entry_id in copies else None for e in delivered]
        if CopyState.COMMITTED in states:
            continue
        if all(state is CopyState.FAILED for state in states):
            # The archive said it does not hold it (its Failed SOP Sequence).
            reasons = ", ".join(f"0x{copies[e.entry_id].failure_reason:04X}" for e in delivered)
            return _failed(reference, FailureReason.PROCESSING_FAILURE, f"{where} did not commit it ({reasons})")
        # PENDING, REQUESTED or not noted yet: the archive has not answered.
        waiting.append(f"not yet committed by {where}")
    if waiting:
        return _undecided(reference, "; ".join(waiting))
    return _committed(reference, f"{policy} to {', '.join(sorted({d for _, d in groups}))}")


def _judge_one(
    reference: Reference,
    records: Sequence[ReceivedInstance],
    request: NewTransaction,
    committing: Collection[str],
) -> InstanceVerdict:
    """One reference before the deadline is applied."""
    policy = request.policy
    if not records:
        if policy == "received":
            # Rule 1, ``received``: custody is all that is promised, and there
            # is none: 0x0112 no such object instance (PS3.3 C.14.1.1).
            return _failed(reference, FailureReason.NO_SUCH_OBJECT_INSTANCE, "never received")
        # Rule 1, other policies: the modality may ask before its last C-STORE
        # is through (or while an association of another node commits it).
        return _undecided(reference, "not received (yet)")
    others = sorted({r.sop_class_uid for r in records if r.sop_class_uid != reference.sop_class_uid})
    if others:
        # Rule 2: a UID names one object (PS3.5 9); received as another class,
        # the request and our record disagree on what it is: 0x0119 class /
        # instance conflict (PS3.3 C.14.1.1), whichever copy the modality means.
        return _failed(reference, FailureReason.CLASS_INSTANCE_CONFLICT, f"received as {', '.join(others)}")
    routed = [r for r in records if r.outcome == "journaled" and r.entries]
    if not routed:
        # Rule 3: dropped by a rule or kept as unrouted (or journaled with no
        # entry): acknowledged and sent nowhere. ``unrouted: success`` says
        # that is all the operator wants; the default fails it (0x0110), so
        # the modality keeps its copy (the safe side).
        outcomes = ", ".join(sorted({r.outcome if r.outcome != "journaled" else "no destination" for r in records}))
        if request.unrouted == "success":
            return _committed(reference, f"{outcomes} (unrouted: success)")
        return _failed(reference, FailureReason.PROCESSING_FAILURE, f"{outcomes}: sent nowhere")
    if policy == "received":
        # Rule 4: spooled with fsync and journaled before the C-STORE-RSP:
        # the same promise as the C-STORE success (HARDENING decision 10).
        return _committed(reference, "received")
    if policy in ("delivered", "committed"):
        return _routed(reference, routed, policy, committing)
    raise ValueError(f"unknown commitment policy {policy!r}")


def judge(
    request: NewTransaction,
    received: Mapping[str, Sequence[ReceivedInstance]],
    committing: Collection[str],
    now: float,
) -> Verdict:
    """Each reference's verdict, and whether the transaction is decided.

    :param request: the journaled N-ACTION (policy, references, deadline, unrouted).
    :param received: what the journal knows of the UIDs since the request's
        lookback (:meth:`~gateway.queue.commitments.ICommitmentJournal.received`;
        a UID with nothing on record is absent).
    :param committing: the names of destinations with ``storage_commitment: true``.
    :param now: the time (wall-clock seconds), compared with ``request.deadline``.
    :returns: the verdict; once ``now >= request.deadline`` it is decided,
        every undecided reference failed: 0x0112 when nothing was received
        under its UID, else 0x0110 (PS3.3 C.14.1.1).
    :raises ValueError: an unknown policy.
    """
    late = now >= request.deadline
    verdicts: list[InstanceVerdict] = []
    seen: set[Reference] = set()
    for reference in request.references:
        if reference in seen:
            continue  # each reference once (PS3.4 J.3.3: one sequence each)
        seen.add(reference)
        records = received.get(reference.sop_instance_uid, ())
        verdict = _judge_one(reference, records, request, committing)
        if verdict.state is State.UNDECIDED and late:
            # The deadline: the report goes with what is known (issue 15).
            if records:
                verdict = _failed(reference, FailureReason.PROCESSING_FAILURE, f"deadline passed: {verdict.detail}")
            else:
                verdict = _failed(reference, FailureReason.NO_SUCH_OBJECT_INSTANCE, "deadline passed: never received")
        verdicts.append(verdict)
    decided = all(v.state is not State.UNDECIDED for v in verdicts)
    return Verdict(tuple(verdicts), decided)
