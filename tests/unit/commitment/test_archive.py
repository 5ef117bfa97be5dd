"""The gateway as Storage Commitment SCU towards archives (:mod:`gateway.commitment.archive`, issue 15).

:class:`ArchiveCommitter` and :class:`ArchiveReports` run against the
in-memory store (the verified fake of :mod:`gateway.queue.memory`), a
synchronous runner and a ``task.Clock``; the archive is a scripted ``ask``
whose answers the test fires, and whose reports the test records through
:class:`ArchiveReports` as the listener would.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway import events
from gateway.blocking import SynchronousRunner
from gateway.commitment.archive import (
    REQUEST_LIMIT,
    STATUS_INVALID_ARGUMENT_VALUE,
    STATUS_PROCESSING_FAILURE,
    ArchiveCommitter,
    ArchiveReports,
    new_transaction_uid,
)
from gateway.commitment.model import (
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH,
    CommitmentReport,
    FailedReference,
    FailureReason,
    Reference,
)
from gateway.dimse.commands import NEventReportRQ
from gateway.dimse.commitment import encode_event_report
from gateway.sopclasses import EXPLICIT_VR_LE, IMPLICIT_VR_LE
from gateway.ul.negotiate import AcceptedContext
from gateway.config.schema import DicomDestination
from gateway.queue.commitments import CopyState
from gateway.queue.interfaces import InstanceRecord, NewEntry, StoreUnavailable
from gateway.queue.memory import MemoryQueueStore

CT = "1.2.840.10008.5.1.4.1.1.2"
#: Seconds before an unanswered request is asked again.
TIMEOUT = 60.0


class Recorder:
    """Records every event."""

    def __init__(self) -> None:
        self.events: list[events.Event] = []

    def observe(self, event: events.Event) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


class Archive:
    """A scripted archive: each N-ACTION is recorded and answered by the test (or at once with ``answer``)."""

    def __init__(self) -> None:
        #: (transaction UID, references, the Deferred the test fires) per N-ACTION.
        self.requests: list[tuple[str, list[Reference], Deferred[tuple[int, str]]]] = []
        #: Answer at once with this (status, comment), or an exception to fail with; None: leave pending.
        self.answer: tuple[int, str] | Exception | None = (0, "")
        #: Called inside each N-ACTION, before its response (an archive reporting early).
        self.during: Any = None

    def ask(self, destination: DicomDestination, transaction_uid: str, references: Sequence[Reference]) -> Deferred[tuple[int, str]]:
        d: Deferred[tuple[int, str]] = Deferred()
        self.requests.append((transaction_uid, list(references), d))
        if self.during is not None:
            self.during(transaction_uid, list(references))
        if isinstance(self.answer, Exception):
            return fail(self.answer)
        if self.answer is not None:
            return succeed(self.answer)
        return d

    def uids(self, index: int = -1) -> list[str]:
        return [r.sop_instance_uid for r in self.requests[index][1]]


class ArchiveTestsMixin:
    """A memory store with delivered copies noted for the destination ``pacs``."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.store = MemoryQueueStore()
        self.observer = Recorder()
        self.archive = Archive()
        self.count = 0
        #: The destinations in force (a reload replaces the tuple).
        self.destinations: tuple[DicomDestination, ...] = (self.pacs(),)

    def pacs(self, **overrides: Any) -> DicomDestination:
        base = DicomDestination(
            name="pacs",
            ae_title="PACS",
            host="127.0.0.1",
            port=11112,
            calling_ae_title="DICOMGW",
            storage_commitment=True,
            commitment_timeout=TIMEOUT,
        )
        return dataclasses.replace(base, **overrides)

    def deliver(self, uid: str | None = None, destination: str = "pacs", routes: Sequence[str] = ("r1",)) -> list[int]:
        """Journal an instance with an entry per route, and note each entry's copy as the forwarder does."""
        self.count += 1
        uid = uid or f"1.2.3.{self.count}"
        record = InstanceRecord(
            instance_id=f"i{self.count}",
            path=f"/nowhere/i{self.count}.dcm",
            sop_class_uid=CT,
            sop_instance_uid=uid,
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            size=10,
            sha256=f"{self.count:064x}",
            received_at=self.clock.seconds(),
            correlation_id=f"c{self.count}",
            study_instance_uid="1.2.3",
        )
        ids = list(
            self.store.add_instance(record, [NewEntry(r, destination) for r in routes], self.clock.seconds(), 0.0).entry_ids
        )
        self.store.note_copies([(i, destination, CT, uid) for i in ids], self.clock.seconds())
        return ids

    def copies(self, *uids: str) -> dict[str, list[tuple[CopyState, str, int]]]:
        """UID -> (state, transaction UID, failure reason) of each copy, through ``received``."""
        found = self.store.received(list(uids), 0.0)
        return {
            uid: [(c.state, c.transaction_uid, c.failure_reason) for r in found.get(uid, []) for c in r.copies]
            for uid in uids
        }

    def committer(self, store: MemoryQueueStore | None = None, start: bool = True, **kwargs: Any) -> ArchiveCommitter:
        store = store or self.store
        committer = ArchiveCommitter(
            "pacs",
            lambda: next((d for d in self.destinations if d.name == "pacs"), None),
            store,
            store,
            SynchronousRunner(),
            self.clock,
            self.clock.seconds,
            self.archive.ask,
            self.observer,
            **kwargs,
        )
        if start:
            committer.startService()
            self.addCleanup(self.stop, committer)  # type: ignore[attr-defined]
        return committer

    def stop(self, committer: ArchiveCommitter) -> None:
        if committer.running:
            committer.stopService()

    def reports(self, store: Any = None, on_answered: Any = lambda: None) -> ArchiveReports:
        return ArchiveReports(
            SynchronousRunner(), store or self.store, lambda: self.destinations, self.observer, self.clock.seconds, on_answered
        )


class ArchiveCommitterTests(ArchiveTestsMixin, SynchronousTestCase):
    """The N-ACTIONs the gateway sends to an archive that commits."""

    def test_pending_copies_are_asked_about_in_one_request_under_a_new_transaction_uid(self) -> None:
        """Three delivered copies: one N-ACTION naming the three, under a fresh 2.25 UID the journal records them REQUESTED with."""
        for _ in range(3):
            self.deliver()
        self.committer()
        self.assertEqual(len(self.archive.requests), 1)
        transaction_uid, references, _ = self.archive.requests[0]
        self.assertTrue(transaction_uid.startswith("2.25."), transaction_uid)
        self.assertLessEqual(len(transaction_uid), 64)
        self.assertEqual(references, [Reference(CT, u) for u in ("1.2.3.1", "1.2.3.2", "1.2.3.3")])
        self.assertEqual(
            self.copies("1.2.3.1", "1.2.3.2", "1.2.3.3"),
            {u: [(CopyState.REQUESTED, transaction_uid, 0)] for u in ("1.2.3.1", "1.2.3.2", "1.2.3.3")},
        )
        (requested,) = self.observer.of(events.ArchiveCommitmentRequested)
        self.assertEqual(requested, events.ArchiveCommitmentRequested("pacs", transaction_uid, 3, 0))

    def test_each_transaction_uid_is_new(self) -> None:
        """Transaction UIDs never repeat (PS3.3 C.14.1.1: one per request)."""
        self.assertEqual(len({new_transaction_uid() for _ in range(1000)}), 1000)

    def test_a_report_before_the_n_action_response_finds_its_transaction(self) -> None:
        """The archive reports while its N-ACTION-RSP is still on the way: the UID is already journaled, the copy COMMITTED."""
        self.deliver()
        answers: list[tuple[int, str]] = []
        reports = self.reports()

        def report_now(transaction_uid: str, references: list[Reference]) -> None:
            reports.record("PACS", CommitmentReport(transaction_uid, committed=tuple(references))).addCallback(answers.append)

        self.archive.during = report_now
        self.committer()
        self.assertEqual(answers, [(0, "")])
        self.assertEqual(self.copies("1.2.3.1")["1.2.3.1"][0][0], CopyState.COMMITTED)

    def test_a_failed_n_action_leaves_the_copies_requested_and_they_are_asked_again_after_the_timeout(self) -> None:
        """The archive down: nothing lost, nothing asked before commitment_timeout, then asked again under a new UID."""
        self.deliver()
        self.archive.answer = ConnectionRefusedError("127.0.0.1:11112")
        committer = self.committer()
        first = self.archive.requests[0][0]
        self.assertEqual(self.copies("1.2.3.1")["1.2.3.1"], [(CopyState.REQUESTED, first, 0)])
        self.assertIn("Connection was refused", committer.last_error)
        self.assertEqual(self.observer.of(events.ArchiveCommitmentRequested), [], "an unanswered request counted as answered")
        self.clock.advance(TIMEOUT - 5)
        self.assertEqual(len(self.archive.requests), 1, "asked again before the timeout")
        self.archive.answer = (0, "")
        self.clock.advance(10)
        self.assertEqual(len(self.archive.requests), 2)
        second = self.archive.requests[1][0]
        self.assertNotEqual(first, second)
        self.assertEqual(self.copies("1.2.3.1")["1.2.3.1"], [(CopyState.REQUESTED, second, 0)])
        self.assertEqual(committer.last_error, "")

    def test_a_refused_n_action_is_asked_again_after_the_timeout(self) -> None:
        """A failure status (0x0110) leaves the copies REQUESTED, counted with its status, and asked again later."""
        self.deliver()
        self.archive.answer = (0x0110, "busy")
        committer = self.committer()
        self.assertEqual(committer.last_error, "N-ACTION status 0x0110: busy")
        self.assertEqual([e.status for e in self.observer.of(events.ArchiveCommitmentRequested)], [0x0110])
        self.clock.advance(TIMEOUT + 5)
        self.assertEqual(len(self.archive.requests), 2)

    def test_a_report_to_the_earlier_request_still_counts(self) -> None:
        """Asked twice (the first report late): the late report of the first UID commits the copy."""
        self.deliver()
        self.archive.answer = None  # no N-ACTION-RSP yet: the request hangs...
        self.committer()
        first = self.archive.requests[0][0]
        self.archive.requests[0][2].errback(ConnectionRefusedError("timeout"))  # ...then fails
        self.archive.answer = (0, "")
        self.clock.advance(TIMEOUT + 5)
        self.assertEqual(len(self.archive.requests), 2)
        answer = self.successResultOf(self.reports().record("PACS", CommitmentReport(first, committed=(Reference(CT, "1.2.3.1"),))))
        self.assertEqual(answer, (0, ""))
        self.assertEqual(self.copies("1.2.3.1")["1.2.3.1"][0][0], CopyState.COMMITTED)

    def test_a_backlog_is_asked_about_limit_copies_at_a_time(self) -> None:
        """Five copies with a limit of two: three requests (2, 2, 1) in one look, oldest first."""
        for _ in range(5):
            self.deliver()
        self.committer(limit=2)
        self.assertEqual([self.archive.uids(i) for i in range(3)], [["1.2.3.1", "1.2.3.2"], ["1.2.3.3", "1.2.3.4"], ["1.2.3.5"]])
        self.assertEqual(REQUEST_LIMIT, 500)

    def test_two_copies_of_one_instance_are_named_once(self) -> None:
        """Two routes to the archive with one copy each: the N-ACTION names the instance once; the report commits both copies."""
        self.deliver(routes=("r1", "r2"))
        self.committer()
        self.assertEqual(self.archive.uids(), ["1.2.3.1"])
        transaction_uid = self.archive.requests[0][0]
        self.successResultOf(self.reports().record("PACS", CommitmentReport(transaction_uid, committed=(Reference(CT, "1.2.3.1"),))))
        self.assertEqual([s for s, _, _ in self.copies("1.2.3.1")["1.2.3.1"]], [CopyState.COMMITTED, CopyState.COMMITTED])

    def test_a_poke_asks_at_once_and_the_interval_asks_anyway(self) -> None:
        """Copies noted after start are asked about a poke_delay after pokes (one look for two), or at the next interval without one."""
        committer = self.committer()
        self.assertEqual(self.archive.requests, [])
        self.deliver()
        committer.poke()
        committer.poke()
        self.assertEqual(self.archive.requests, [])
        self.clock.advance(committer.poke_delay)
        self.assertEqual(self.archive.uids(), ["1.2.3.1"])
        self.deliver()
        self.assertEqual(len(self.archive.requests), 1)
        self.clock.advance(committer.interval)
        self.assertEqual(self.archive.uids(), ["1.2.3.2"])

    def test_a_poke_during_a_request_looks_again_when_it_ends(self) -> None:
        """Copies delivered while an N-ACTION is in flight are asked about right after it, not at the next interval."""
        self.deliver()
        self.archive.answer = None
        committer = self.committer()
        self.deliver()
        committer.poke()
        self.assertEqual(len(self.archive.requests), 1, "two requests at once")
        self.archive.answer = (0, "")
        self.archive.requests[0][2].callback((0, ""))
        self.assertEqual(self.archive.uids(), ["1.2.3.2"])

    def test_only_the_node_holding_the_singleton_asks(self) -> None:
        """Two nodes on one journal: one asks; when it stops renewing, the other takes over after the hold runs out."""
        self.deliver()
        first = self.committer(singleton_seconds=15.0)
        other_store = self.store.peer("other")
        self.committer(store=other_store, singleton_seconds=15.0)
        self.assertEqual(len(self.archive.requests), 1)
        self.assertTrue(first.holder)
        first.stopService()
        self.deliver()
        self.clock.advance(5.0)
        self.assertEqual(len(self.archive.requests), 1, "asked by a node that does not hold the singleton")
        self.clock.advance(15.0)
        self.assertEqual(self.archive.uids(), ["1.2.3.2"])

    def test_a_destination_that_no_longer_commits_is_not_asked(self) -> None:
        """After a reload without storage_commitment (or without the destination), nothing is asked."""
        self.deliver()
        self.destinations = (self.pacs(storage_commitment=False),)
        self.committer()
        self.destinations = ()
        self.clock.advance(60)
        self.assertEqual(self.archive.requests, [])

    def test_a_journal_away_skips_the_look_and_the_next_one_asks(self) -> None:
        """StoreUnavailable during a look is logged; the next interval asks."""
        self.deliver()

        class Away(MemoryQueueStore):
            down = True

            def pending_copies(self, *args: Any) -> Any:
                if self.down:
                    raise StoreUnavailable("PostgreSQL away")
                return super().pending_copies(*args)

        away = Away()
        away._t = self.store._t
        committer = self.committer(store=away)
        self.assertEqual(self.archive.requests, [])
        Away.down = False
        self.clock.advance(committer.interval)
        self.assertEqual(self.archive.uids(), ["1.2.3.1"])

    def test_stop_waits_for_the_request_in_flight(self) -> None:
        """stopService fires once the N-ACTION in flight has ended."""
        self.deliver()
        self.archive.answer = None
        committer = self.committer()
        stopped = committer.stopService()
        self.assertNoResult(stopped)
        self.archive.requests[0][2].callback((0, ""))
        self.successResultOf(stopped)


class ArchiveReportsTests(ArchiveTestsMixin, SynchronousTestCase):
    """An archive's N-EVENT-REPORT on a request of ours, and the status it is answered with (PS3.7 10.1.1.1.8)."""

    def asked(self, *uids: str) -> str:
        """Copies of ``uids`` delivered and asked about; the request's Transaction UID."""
        for uid in uids:
            self.deliver(uid)
        self.committer(start=False).look()
        return self.archive.requests[-1][0]

    def test_committed_and_failed_instances_are_recorded_and_answered_success(self) -> None:
        """Event type 2: the committed copy COMMITTED, the failed one FAILED with its reason; 0x0000; the worker poked; an event."""
        transaction_uid = self.asked("1.2.3.1", "1.2.3.2")
        pokes: list[None] = []
        report = CommitmentReport(
            transaction_uid,
            committed=(Reference(CT, "1.2.3.1"),),
            failed=(FailedReference(Reference(CT, "1.2.3.2"), FailureReason.NO_SUCH_OBJECT_INSTANCE),),
        )
        answer = self.successResultOf(self.reports(on_answered=lambda: pokes.append(None)).record("PACS", report))
        self.assertEqual(answer, (0x0000, ""))
        self.assertEqual(
            self.copies("1.2.3.1", "1.2.3.2"),
            {"1.2.3.1": [(CopyState.COMMITTED, transaction_uid, 0)], "1.2.3.2": [(CopyState.FAILED, transaction_uid, 0x0112)]},
        )
        self.assertEqual(pokes, [None])
        self.assertEqual(
            self.observer.of(events.ArchiveCommitmentReported),
            [events.ArchiveCommitmentReported("pacs", "PACS", transaction_uid, 1, 1, 0)],
        )

    def test_an_unknown_transaction_uid_is_answered_invalid_argument_value(self) -> None:
        """A report on a Transaction UID we never sent: 0x0115 with a comment naming it; nothing changes, nobody is poked."""
        self.asked("1.2.3.1")
        pokes: list[None] = []
        stranger = new_transaction_uid()
        status, comment = self.successResultOf(
            self.reports(on_answered=lambda: pokes.append(None)).record(
                "PACS", CommitmentReport(stranger, committed=(Reference(CT, "1.2.3.1"),))
            )
        )
        self.assertEqual(status, STATUS_INVALID_ARGUMENT_VALUE)
        self.assertIn(stranger, comment)
        self.assertEqual(self.copies("1.2.3.1")["1.2.3.1"][0][0], CopyState.REQUESTED)
        self.assertEqual(pokes, [])
        (event,) = self.observer.of(events.ArchiveCommitmentReported)
        self.assertEqual((event.destination, event.status), ("", 0x0115))

    def test_a_journal_away_is_answered_processing_failure(self) -> None:
        """StoreUnavailable: 0x0110, the copies stay REQUESTED (asked again after the timeout)."""
        transaction_uid = self.asked("1.2.3.1")

        class Away(MemoryQueueStore):
            def copies_answered(self, *args: Any) -> int:
                raise StoreUnavailable("PostgreSQL away")

        away = Away()
        away._t = self.store._t
        status, _ = self.successResultOf(
            self.reports(store=away).record("PACS", CommitmentReport(transaction_uid, committed=(Reference(CT, "1.2.3.1"),)))
        )
        self.assertEqual(status, STATUS_PROCESSING_FAILURE)
        self.assertEqual(self.copies("1.2.3.1")["1.2.3.1"][0][0], CopyState.REQUESTED)

    def test_a_report_from_an_unexpected_ae_title_counts_by_its_transaction_uid(self) -> None:
        """The archive reports under another AE title: recorded (the UID is the match), the event names no destination."""
        transaction_uid = self.asked("1.2.3.1")
        answer = self.successResultOf(
            self.reports().record("PACS_SCU", CommitmentReport(transaction_uid, committed=(Reference(CT, "1.2.3.1"),)))
        )
        self.assertEqual(answer, (0, ""))
        self.assertEqual(self.copies("1.2.3.1")["1.2.3.1"][0][0], CopyState.COMMITTED)
        self.assertEqual(self.observer.of(events.ArchiveCommitmentReported)[0].destination, "")


class ReportOnOurAssociationTests(ArchiveTestsMixin, SynchronousTestCase):
    """A report the archive sends on the association of our N-ACTION (PS3.4 J.3.3), checked as on a new one."""

    def handle(self, rq: Any, dataset: bytes, transfer_syntax: str = IMPLICIT_VR_LE) -> int:
        """The status the handler answers ``rq`` with."""
        handler = self.reports().on_our_association("PACS")
        context = AcceptedContext(1, STORAGE_COMMITMENT_PUSH, transfer_syntax, True, False)
        return int(self.successResultOf(handler(rq, context, dataset)))

    def rq(self, **overrides: Any) -> NEventReportRQ:
        base = NEventReportRQ(7, STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE, 1, True)
        return dataclasses.replace(base, **overrides)

    def test_a_report_on_our_association_is_recorded(self) -> None:
        """Event type 1 in Explicit VR LE: 0x0000 and the copy COMMITTED."""
        self.deliver()
        self.committer(start=False).look()
        transaction_uid = self.archive.requests[0][0]
        report = CommitmentReport(transaction_uid, committed=(Reference(CT, "1.2.3.1"),))
        self.assertEqual(self.handle(self.rq(), encode_event_report(report, EXPLICIT_VR_LE), EXPLICIT_VR_LE), 0)
        self.assertEqual(self.copies("1.2.3.1")["1.2.3.1"][0][0], CopyState.COMMITTED)

    def test_wrong_class_instance_event_type_and_data_set_get_their_statuses(self) -> None:
        """0x0118 no such SOP class, 0x0112 no such SOP instance, 0x0113 no such event type, 0x0110 undecodable (PS3.7 10.1.1.1.8)."""
        good = encode_event_report(CommitmentReport(new_transaction_uid(), committed=(Reference(CT, "1.2.3.9"),)), IMPLICIT_VR_LE)
        self.assertEqual(self.handle(self.rq(affected_sop_class_uid=CT), good), 0x0118)
        self.assertEqual(self.handle(self.rq(affected_sop_instance_uid="1.2.3"), good), 0x0112)
        self.assertEqual(self.handle(self.rq(event_type_id=3), good), 0x0113)
        self.assertEqual(self.handle(self.rq(), b"\x08\x00\x95\x11\xff\xff"), 0x0110)
        self.assertEqual(self.handle(self.rq(), good), STATUS_INVALID_ARGUMENT_VALUE, "an unknown UID")
