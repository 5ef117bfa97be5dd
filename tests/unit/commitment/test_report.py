"""Unit tests for :mod:`gateway.commitment.report` with a scripted association (no network)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.associate import AssociationAborted
from gateway.commitment.model import STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH, CommitmentReport
from gateway.commitment.report import (
    REPORT_PROPOSALS,
    REPORT_ROLES,
    ReportNotDelivered,
    ReportRefused,
    ReportSender,
    modality_destination,
)
from gateway.config.schema import DestinationTLSConfig, ModalityConfig
from gateway.dimse.commitment import decode_event_report
from gateway.queue.commitments import Reference, Transaction, TransactionState
from gateway.sopclasses import IMPLICIT_VR_LE
from gateway.ul.negotiate import AcceptedContext
from tests.unit.commitment.test_worker import config
from tests.unit.queue.test_commitments import new_transaction, refs
from tests.unit.queue.test_store import T0

REPORT = CommitmentReport("2.25.100", committed=(Reference("1.2.840.10008.5.1.4.1.1.2", "1.2.3.1"),))


@dataclass
class Response:
    """An N-EVENT-REPORT-RSP as the association returns it."""

    status: int
    error_comment: str | None = None


@dataclass
class FakeAssociation:
    """A ClientAssociation stand-in: one accepted push context in Implicit VR LE, a scripted answer."""

    answer: Any = field(default_factory=lambda: Response(0))
    context: AcceptedContext | None = field(
        default_factory=lambda: AcceptedContext(1, STORAGE_COMMITMENT_PUSH, IMPLICIT_VR_LE, False, True)
    )
    sent: list[tuple[str, str, int, bytes]] = field(default_factory=list)
    released: int = 0
    aborted: int = 0
    open: bool = True
    release_answer: "Deferred[None] | None" = None

    @property
    def is_open(self) -> bool:
        """Whether the association is up."""
        return self.open

    def context_for_class(self, sop_class_uid: str) -> AcceptedContext | None:
        """The push context, if accepted."""
        return self.context if self.context is not None and sop_class_uid == self.context.abstract_syntax else None

    async def n_event_report(self, sop_class_uid: str, sop_instance_uid: str, event_type_id: int, dataset: bytes) -> Any:
        """Record the request and answer as scripted."""
        self.sent.append((sop_class_uid, sop_instance_uid, event_type_id, dataset))
        if isinstance(self.answer, Exception):
            self.open = False
            raise self.answer
        return self.answer

    def release(self) -> "Deferred[None]":
        """Count the release."""
        self.released += 1
        return self.release_answer if self.release_answer is not None else succeed(None)

    def abort(self) -> None:
        """Count the abort."""
        self.aborted += 1
        self.open = False


def transaction() -> Transaction:
    """A transaction of requester ``ct1`` that called us as ``GATEWAY``."""
    return Transaction(new_transaction("2.25.100", refs(1)), T0, "node", TransactionState.OPEN)


class ReportSenderUnitTests(SynchronousTestCase):
    """What the sender asks for, sends, and makes of the answer."""

    def setUp(self) -> None:
        """A sender on a scripted association."""
        self.clock = Clock()
        self.association = FakeAssociation()
        self.calls: list[tuple[Any, Any, Any]] = []
        cfg = config()

        def connect(destination: Any, proposals: Any, roles: Any) -> "Deferred[Any]":
            self.calls.append((destination, proposals, roles))
            return succeed(self.association)

        self.sender = ReportSender(lambda: cfg, self.clock, connect=connect)

    def test_association_asked_for(self) -> None:
        """Called AE the modality's, calling AE the one the requester called; the push class only, with SCU 0 / SCP 1."""
        self.successResultOf(self.sender.send(transaction(), REPORT))
        ((destination, proposals, roles),) = self.calls
        self.assertEqual((destination.ae_title, destination.calling_ae_title, destination.port), ("MODALITY", "GATEWAY", 4006))
        self.assertEqual(proposals, REPORT_PROPOSALS)
        self.assertEqual([(p[0], list(p[1])) for p in proposals], [(STORAGE_COMMITMENT_PUSH, ["1.2.840.10008.1.2.1", IMPLICIT_VR_LE])])
        self.assertEqual([(r.sop_class_uid, r.scu_role, r.scp_role) for r in roles], [(STORAGE_COMMITMENT_PUSH, False, True)])
        self.assertEqual(roles, REPORT_ROLES)

    def test_request_and_release(self) -> None:
        """The N-EVENT-REPORT-RQ names the push class and its well-known instance, carries the report in the context's syntax; then a release."""
        self.successResultOf(self.sender.send(transaction(), REPORT))
        ((sop_class, instance, event_type, dataset),) = self.association.sent
        self.assertEqual((sop_class, instance, event_type), (STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE, 1))
        self.assertEqual(decode_event_report(dataset, IMPLICIT_VR_LE), REPORT)
        self.assertEqual((self.association.released, self.association.aborted), (1, 0))

    def test_failure_status_escaped(self) -> None:
        """A failure status is ReportRefused; the requester's comment is escaped for logs and the journal."""
        self.association.answer = Response(0x0110, "bad\x1b[2J")
        failure = self.failureResultOf(self.sender.send(transaction(), REPORT), ReportRefused)
        self.assertEqual(failure.value.status, 0x0110)
        self.assertNotIn("\x1b", str(failure.value))
        self.assertIn("0x0110", str(failure.value))
        self.assertEqual(self.association.released, 1, "released after an answer, even a failure")

    def test_abort_before_the_answer(self) -> None:
        """The association ends before the response: ReportNotDelivered."""
        self.association.answer = AssociationAborted("peer aborted")
        failure = self.failureResultOf(self.sender.send(transaction(), REPORT), ReportNotDelivered)
        self.assertIn("peer aborted", str(failure.value))

    def test_no_context_aborts(self) -> None:
        """No usable push context (refused, or our SCP role declined): nothing sent, the association aborted."""
        self.association.context = None
        self.failureResultOf(self.sender.send(transaction(), REPORT), ReportNotDelivered)
        self.assertEqual((self.association.sent, self.association.aborted), ([], 1))

    def test_unanswered_release_aborted_after_acse_timeout(self) -> None:
        """A requester that never answers the A-RELEASE-RQ is aborted after the modality's ACSE timeout; the report counts as delivered."""
        self.association.release_answer = Deferred()
        d = self.sender.send(transaction(), REPORT)
        self.assertNoResult(d)
        self.clock.advance(30)
        self.assertEqual(self.association.aborted, 1)
        self.association.release_answer.callback(None)
        self.successResultOf(d)

    def test_connection_failure(self) -> None:
        """A connection that cannot be made is ReportNotDelivered naming the modality and its address."""
        sender = ReportSender(lambda: config(), self.clock, connect=lambda *a: fail(ConnectionRefusedError("refused")))
        failure = self.failureResultOf(sender.send(transaction(), REPORT), ReportNotDelivered)
        self.assertIn("ct1 (127.0.0.1:4006)", str(failure.value))

    def test_modality_destination(self) -> None:
        """The adapter keeps the modality's address, AE title, timeouts, PDU length and TLS."""
        tls = DestinationTLSConfig(ca="/ca.pem")
        modality = ModalityConfig("ct1", "CT", "ct.example", 11112, tls=tls, connect_timeout=1, acse_timeout=2, dimse_timeout=3, max_pdu_length=4096)
        destination = modality_destination(modality, "GW")
        self.assertEqual(
            (destination.ae_title, destination.host, destination.port, destination.calling_ae_title, destination.tls),
            ("CT", "ct.example", 11112, "GW", tls),
        )
        self.assertEqual(
            (destination.connect_timeout, destination.acse_timeout, destination.dimse_timeout, destination.max_pdu_length), (1, 2, 3, 4096)
        )
