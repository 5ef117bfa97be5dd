"""Tests for :mod:`gateway.commitment.verdict`: what may be said of each requested instance (table-driven)."""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from twisted.trial.unittest import SynchronousTestCase

from gateway.commitment.model import CommitmentReport, FailedReference
from gateway.commitment.verdict import State, judge
from gateway.queue.commitments import CopyCommitment, CopyState, NewTransaction, ReceivedInstance, Reference
from gateway.queue.interfaces import Entry, EntryState, InstanceRecord

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
UID = "1.2.3.4.1"
REF = Reference(CT, UID)
NOW = 1_000_000.0
DEADLINE = NOW + 3600.0
COMMITTING = frozenset({"archive"})

_next_id = iter(range(1, 1_000_000))


def request(policy: str, *references: Reference, unrouted: str = "fail", deadline: float = DEADLINE) -> NewTransaction:
    """A journaled N-ACTION for ``references`` (``REF`` by default)."""
    return NewTransaction(
        transaction_uid="1.2.3.99",
        calling_ae_title="MODALITY",
        called_ae_title="GATEWAY",
        modality="ct1",
        listener="main",
        policy=policy,
        references=references or (REF,),
        deadline=deadline,
        report_deadline=deadline + 86400.0,
        lookback_from=NOW - 86400.0,
        unrouted=unrouted,
    )


def entry(destination: str, state: EntryState, route: str = "r", dead_reason: str = "") -> Entry:
    """An entry of the instance (its record is filled in by :func:`record`)."""
    record = InstanceRecord("i", "/spool/i", CT, UID, "1.2.840.10008.1.2.1", 1, "0" * 64, NOW, "c")
    return Entry(next(_next_id), record, route, destination, "/spool/i", state, 0, NOW, NOW, dead_reason=dead_reason)


def copy(of: Entry, state: CopyState, reason: int = 0) -> CopyCommitment:
    """The archive's commitment state of a delivered entry's copy."""
    return CopyCommitment(of.entry_id, of.destination, CT, "2.25.9", state, NOW, failure_reason=reason)


def record(*entries: Entry, sop_class: str = CT, copies: Sequence[CopyCommitment] = ()) -> ReceivedInstance:
    """A journaled instance with ``entries``."""
    return ReceivedInstance(sop_class, UID, NOW, "journaled", "i", tuple(entries), tuple(copies))


def note(outcome: str = "unrouted", sop_class: str = CT) -> ReceivedInstance:
    """An unforwarded note (``dropped`` or ``unrouted``)."""
    return ReceivedInstance(sop_class, UID, NOW, outcome)


DELIVERED = EntryState.DELIVERED
QUEUED = EntryState.QUEUED
LEASED = EntryState.LEASED
DEAD = EntryState.DEAD
DUPLICATE = EntryState.DUPLICATE


def case(
    policy: str, records: Sequence[ReceivedInstance], unrouted: str = "fail", now: float = NOW
) -> tuple[State, int]:
    """The verdict of ``REF`` given ``records``."""
    verdict = judge(request(policy, unrouted=unrouted), {UID: list(records)} if records else {}, COMMITTING, now)
    (one,) = verdict.instances
    return one.state, one.reason


class RuleTableTests(SynchronousTestCase):
    """Each rule of the module docstring, one row per case, before and at the deadline."""

    def check(self, rows: list[tuple[str, str, list[ReceivedInstance], str, tuple[State, int], tuple[State, int]]]) -> None:
        """Each row: (label, policy, records, unrouted, before the deadline, at the deadline)."""
        for label, policy, records, unrouted, before, at in rows:
            self.assertEqual(case(policy, records, unrouted), before, f"{label} ({policy}) before the deadline")
            self.assertEqual(case(policy, records, unrouted, DEADLINE), at, f"{label} ({policy}) at the deadline")

    def test_nothing_received(self) -> None:
        """Rule 1: ``received`` fails 0x0112 at once; the others wait, then 0x0112."""
        self.check(
            [
                ("absent", "received", [], "fail", (State.FAILED, 0x0112), (State.FAILED, 0x0112)),
                ("absent", "delivered", [], "fail", (State.UNDECIDED, 0), (State.FAILED, 0x0112)),
                ("absent", "committed", [], "fail", (State.UNDECIDED, 0), (State.FAILED, 0x0112)),
                ("absent, unrouted success", "delivered", [], "success", (State.UNDECIDED, 0), (State.FAILED, 0x0112)),
            ]
        )

    def test_class_instance_conflict(self) -> None:
        """Rule 2: a record of another SOP class fails 0x0119 under every policy, even with a matching one."""
        mr = record(entry("archive", DELIVERED), sop_class=MR)
        ct = record(entry("archive", DELIVERED))
        rows = []
        for policy in ("received", "delivered", "committed"):
            rows.append(("other class", policy, [mr], "fail", (State.FAILED, 0x0119), (State.FAILED, 0x0119)))
            rows.append(("both classes", policy, [ct, mr], "fail", (State.FAILED, 0x0119), (State.FAILED, 0x0119)))
            rows.append(("note of other class", policy, [note(sop_class=MR)], "success", (State.FAILED, 0x0119), (State.FAILED, 0x0119)))
        self.check(rows)

    def test_sent_nowhere(self) -> None:
        """Rule 3: dropped, unrouted or journaled without entries: 0x0110, or committed with ``unrouted: success``."""
        rows = []
        for policy in ("received", "delivered", "committed"):
            for what in (note("dropped"), note("unrouted"), record()):
                rows.append(("nowhere", policy, [what], "fail", (State.FAILED, 0x0110), (State.FAILED, 0x0110)))
                rows.append(("nowhere", policy, [what], "success", (State.COMMITTED, 0), (State.COMMITTED, 0)))
        self.check(rows)

    def test_received_policy(self) -> None:
        """Rule 4: any journaled record with entries is committed, whatever their state (custody is the promise)."""
        rows = []
        for state in (QUEUED, LEASED, DELIVERED, DEAD, DUPLICATE):
            rows.append((state.value, "received", [record(entry("a", state))], "fail", (State.COMMITTED, 0), (State.COMMITTED, 0)))
        rows.append(("note and record", "received", [note(), record(entry("a", QUEUED))], "fail", (State.COMMITTED, 0), (State.COMMITTED, 0)))
        self.check(rows)

    def test_delivered_policy(self) -> None:
        """Rule 5: every (route, destination) delivered; a dead group fails at once; otherwise undecided, 0x0110 at the deadline."""
        self.check(
            [
                ("one delivered", "delivered", [record(entry("a", DELIVERED))], "fail", (State.COMMITTED, 0), (State.COMMITTED, 0)),
                ("queued", "delivered", [record(entry("a", QUEUED))], "fail", (State.UNDECIDED, 0), (State.FAILED, 0x0110)),
                ("leased", "delivered", [record(entry("a", LEASED))], "fail", (State.UNDECIDED, 0), (State.FAILED, 0x0110)),
                ("dead", "delivered", [record(entry("a", DEAD))], "fail", (State.FAILED, 0x0110), (State.FAILED, 0x0110)),
                (
                    "one of two destinations",
                    "delivered",
                    [record(entry("a", DELIVERED), entry("b", QUEUED))],
                    "fail",
                    (State.UNDECIDED, 0),
                    (State.FAILED, 0x0110),
                ),
                (
                    "dead beside undecided",
                    "delivered",
                    [record(entry("a", QUEUED), entry("b", DEAD))],
                    "fail",
                    (State.FAILED, 0x0110),
                    (State.FAILED, 0x0110),
                ),
                (
                    "same destination, two routes",
                    "delivered",
                    [record(entry("a", DELIVERED, route="r1"), entry("a", QUEUED, route="r2"))],
                    "fail",
                    (State.UNDECIDED, 0),
                    (State.FAILED, 0x0110),
                ),
                (
                    "both delivered",
                    "delivered",
                    [record(entry("a", DELIVERED), entry("b", DELIVERED))],
                    "fail",
                    (State.COMMITTED, 0),
                    (State.COMMITTED, 0),
                ),
                (
                    "received twice: dead then delivered",
                    "delivered",
                    [record(entry("a", DEAD)), record(entry("a", DELIVERED))],
                    "fail",
                    (State.COMMITTED, 0),
                    (State.COMMITTED, 0),
                ),
                (
                    "received twice: both dead",
                    "delivered",
                    [record(entry("a", DEAD)), record(entry("a", DEAD))],
                    "fail",
                    (State.FAILED, 0x0110),
                    (State.FAILED, 0x0110),
                ),
                (
                    "received twice: dead and queued",
                    "delivered",
                    [record(entry("a", DEAD)), record(entry("a", QUEUED))],
                    "fail",
                    (State.UNDECIDED, 0),
                    (State.FAILED, 0x0110),
                ),
                (
                    "duplicate of a delivered original",
                    "delivered",
                    [record(entry("a", DELIVERED)), record(entry("a", DUPLICATE))],
                    "fail",
                    (State.COMMITTED, 0),
                    (State.COMMITTED, 0),
                ),
                (
                    "duplicate of a queued original",
                    "delivered",
                    [record(entry("a", QUEUED)), record(entry("a", DUPLICATE))],
                    "fail",
                    (State.UNDECIDED, 0),
                    (State.FAILED, 0x0110),
                ),
                ("only duplicates", "delivered", [record(entry("a", DUPLICATE))], "fail", (State.UNDECIDED, 0), (State.FAILED, 0x0110)),
                (
                    "routed beside a note",
                    "delivered",
                    [note("dropped"), record(entry("a", DELIVERED))],
                    "fail",
                    (State.COMMITTED, 0),
                    (State.COMMITTED, 0),
                ),
            ]
        )

    def test_committed_policy(self) -> None:
        """Rule 6: a committing destination needs its archive's COMMITTED copy; others need delivery only."""
        delivered = entry("archive", DELIVERED)
        other = entry("folder", DELIVERED)
        queued = entry("archive", QUEUED)
        rows = [
            ("no copy noted", "committed", [record(delivered)], "fail", (State.UNDECIDED, 0), (State.FAILED, 0x0110)),
        ]
        for state, before, at in (
            (CopyState.PENDING, (State.UNDECIDED, 0), (State.FAILED, 0x0110)),
            (CopyState.REQUESTED, (State.UNDECIDED, 0), (State.FAILED, 0x0110)),
            (CopyState.COMMITTED, (State.COMMITTED, 0), (State.COMMITTED, 0)),
            (CopyState.FAILED, (State.FAILED, 0x0110), (State.FAILED, 0x0110)),
        ):
            rows.append((f"copy {state.value}", "committed", [record(delivered, copies=[copy(delivered, state, 0x0112)])], "fail", before, at))
            # The same archive answer under ``delivered``: delivery alone counts.
            rows.append((f"copy {state.value}", "delivered", [record(delivered, copies=[copy(delivered, state)])], "fail", (State.COMMITTED, 0), (State.COMMITTED, 0)))
        rows += [
            ("non-committing destination", "committed", [record(other)], "fail", (State.COMMITTED, 0), (State.COMMITTED, 0)),
            (
                "committed beside a folder",
                "committed",
                [record(delivered, other, copies=[copy(delivered, CopyState.COMMITTED)])],
                "fail",
                (State.COMMITTED, 0),
                (State.COMMITTED, 0),
            ),
            ("not delivered yet", "committed", [record(queued)], "fail", (State.UNDECIDED, 0), (State.FAILED, 0x0110)),
            ("dead", "committed", [record(entry("archive", DEAD))], "fail", (State.FAILED, 0x0110), (State.FAILED, 0x0110)),
        ]
        # A copy of another entry (an earlier delivery) does not count for this one.
        stray = entry("archive", DELIVERED)
        rows.append(
            ("copy of another entry", "committed", [record(delivered, copies=[copy(stray, CopyState.COMMITTED)])], "fail", (State.UNDECIDED, 0), (State.FAILED, 0x0110))
        )
        # Received twice, delivered twice: one failed copy and one committed: committed.
        again = entry("archive", DELIVERED)
        rows.append(
            (
                "failed then committed redelivery",
                "committed",
                [record(delivered, copies=[copy(delivered, CopyState.FAILED)]), record(again, copies=[copy(again, CopyState.COMMITTED)])],
                "fail",
                (State.COMMITTED, 0),
                (State.COMMITTED, 0),
            )
        )
        self.check(rows)


class VerdictTests(SynchronousTestCase):
    """The transaction as a whole: decided or not, and the report."""

    def test_decided_only_when_nothing_undecided(self) -> None:
        """One undecided reference keeps the transaction undecided before the deadline."""
        other = Reference(CT, "1.2.3.4.2")
        received = {UID: [record(entry("a", DELIVERED))]}
        verdict = judge(request("delivered", REF, other), received, (), NOW)
        self.assertFalse(verdict.decided)
        self.assertEqual(verdict.undecided(), 1)
        self.assertEqual([v.state for v in verdict.instances], [State.COMMITTED, State.UNDECIDED])

    def test_deadline_decides(self) -> None:
        """At the deadline the same facts give a decided verdict with the undecided reference failed 0x0112."""
        other = Reference(CT, "1.2.3.4.2")
        received = {UID: [record(entry("a", DELIVERED))]}
        verdict = judge(request("delivered", REF, other), received, (), DEADLINE)
        self.assertTrue(verdict.decided)
        self.assertEqual(
            verdict.report("1.2.3.99"),
            CommitmentReport("1.2.3.99", committed=(REF,), failed=(FailedReference(other, 0x0112),)),
        )

    def test_report_puts_each_reference_in_exactly_one_sequence(self) -> None:
        """A mix of outcomes: every reference once, in request order, committed or failed with its reason."""
        refs = [Reference(CT, f"1.2.3.{i}") for i in range(6)]
        received = {
            "1.2.3.0": [replace(record(entry("a", DELIVERED)), sop_instance_uid="1.2.3.0")],
            "1.2.3.1": [replace(record(entry("a", DEAD)), sop_instance_uid="1.2.3.1")],
            "1.2.3.2": [replace(note("dropped"), sop_instance_uid="1.2.3.2")],
            "1.2.3.3": [replace(record(entry("a", DELIVERED), sop_class=MR), sop_instance_uid="1.2.3.3")],
            "1.2.3.5": [replace(record(entry("a", DELIVERED)), sop_instance_uid="1.2.3.5")],
        }
        # A repeated reference (the journal removes repeats; the verdict does not rely on it).
        verdict = judge(request("delivered", *refs, refs[0]), received, (), NOW)
        self.assertTrue(verdict.decided is False)
        verdict = judge(request("delivered", *refs, refs[0]), received, (), DEADLINE)
        report = verdict.report("1.2.3.99")
        self.assertEqual(report.committed, (refs[0], refs[5]))
        self.assertEqual(
            report.failed,
            (
                FailedReference(refs[1], 0x0110),
                FailedReference(refs[2], 0x0110),
                FailedReference(refs[3], 0x0119),
                FailedReference(refs[4], 0x0112),
            ),
        )
        listed = list(report.committed) + [f.reference for f in report.failed]
        self.assertEqual(sorted(listed, key=lambda r: r.sop_instance_uid), refs)
        self.assertEqual(report.event_type, 2)

    def test_all_committed_is_event_type_1(self) -> None:
        """Every reference committed: an empty Failed SOP Sequence, event type 1."""
        verdict = judge(request("received"), {UID: [record(entry("a", QUEUED))]}, (), NOW)
        report = verdict.report("1.2.3.99", retrieve_ae_title="GATEWAY")
        self.assertEqual((report.committed, report.failed, report.event_type), ((REF,), (), 1))
        self.assertEqual(report.retrieve_ae_title, "GATEWAY")

    def test_report_of_undecided_verdict_refused(self) -> None:
        """An undecided verdict has no report (it would say more than is true)."""
        verdict = judge(request("delivered"), {}, (), NOW)
        self.assertRaises(ValueError, verdict.report, "1.2.3.99")

    def test_unknown_policy_refused(self) -> None:
        """A policy the verdict does not know is an error, not a guess."""
        self.assertRaises(ValueError, judge, request("whenever"), {UID: [record(entry("a", QUEUED))]}, (), NOW)

    def test_failure_detail_names_the_destination(self) -> None:
        """The detail says where an instance was dead-lettered (``commitment show``, logs)."""
        verdict = judge(request("delivered"), {UID: [record(entry("pacs", DEAD, dead_reason="rejected"))]}, (), NOW)
        self.assertIn("pacs", verdict.instances[0].detail)
        self.assertIn("rejected", verdict.instances[0].detail)
