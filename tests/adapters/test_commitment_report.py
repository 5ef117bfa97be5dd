"""``ReportSender`` against a real pynetdicom AE acting as the requester's report receiver (issue 15).

pynetdicom (test-only) listens on loopback in its own threads, accepting the
Storage Commitment Push Model SOP Class with the association requestor as SCP
(PS3.4 J.3.3.1.3: the gateway opens the association and sends the
N-EVENT-REPORT), in one transfer syntax only (Implicit-only and
Explicit-only requesters exist), and records what each N-EVENT-REPORT-RQ
carried. The gateway side runs on the global reactor (real sockets), so the
tests are trial ``TestCase``s.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from gateway.blocking import SynchronousRunner
from gateway.commitment.model import STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH, CommitmentReport, FailedReference
from gateway.commitment.report import ModalityUnknown, ReportNotDelivered, ReportRefused, ReportSender
from gateway.commitment.worker import CommitmentWorker
from gateway.config.schema import GatewayConfig, ModalityConfig
from gateway.queue.commitments import Reference, Transaction, TransactionState
from gateway.queue.interfaces import NewEntry
from gateway.queue.memory import MemoryQueueStore
from tests.support.ports import free_port
from tests.unit.commitment.test_worker import config
from tests.unit.queue.test_commitments import new_transaction, refs
from tests.unit.queue.test_store import T0, make_record

CT = "1.2.840.10008.5.1.4.1.1.2"


@dataclass(frozen=True)
class Received:
    """One N-EVENT-REPORT-RQ as the requester saw it."""

    called_ae_title: str
    calling_ae_title: str
    sop_class_uid: str
    sop_instance_uid: str
    event_type: int
    transfer_syntax: str
    acceptor_is_scu: bool
    proposed: tuple[str, ...]
    transaction_uid: str
    committed: tuple[tuple[str, str], ...]
    failed: tuple[tuple[str, str, int], ...]


class ReportReceiver:
    """A pynetdicom AE accepting Storage Commitment reports in one transfer syntax.

    :param transfer_syntax: the only syntax accepted.
    :param status: the N-EVENT-REPORT-RSP status it answers.
    :param accept_role: whether it accepts the requestor's SCP role.
    """

    def __init__(self, transfer_syntax: str, status: int = 0x0000, accept_role: bool = True, ae_title: str = "MODALITY") -> None:
        self.transfer_syntax = transfer_syntax
        self.status = status
        self.accept_role = accept_role
        self.ae_title = ae_title
        self.port = free_port("127.0.0.1")
        self.received: list[Received] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._server: Any = None

    def _on_report(self, event: Any) -> tuple[int, None]:
        """Record the request (pynetdicom thread)."""
        try:
            self._record(event)
        except Exception as e:  # a test's failure to read the request, reported, not answered 0x0110 silently
            with self._lock:
                self.errors.append(f"{type(e).__name__}: {e}")
            raise
        return self.status, None

    def _record(self, event: Any) -> None:
        """Keep what the request carried."""
        ds = event.event_information
        context = event.context
        request = event.request
        assoc = event.assoc
        item = Received(
            called_ae_title=str(assoc.acceptor.ae_title).strip(),
            calling_ae_title=str(assoc.requestor.ae_title).strip(),
            sop_class_uid=str(request.AffectedSOPClassUID),
            sop_instance_uid=str(request.AffectedSOPInstanceUID),
            event_type=int(request.EventTypeID),
            transfer_syntax=str(context.transfer_syntax),
            acceptor_is_scu=any(c.as_scu for c in assoc.accepted_contexts if c.context_id == context.context_id),
            proposed=tuple(str(c.abstract_syntax) for c in assoc.requestor.requested_contexts),
            transaction_uid=str(ds.TransactionUID),
            committed=tuple((str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID)) for i in ds.get("ReferencedSOPSequence", [])),
            failed=tuple(
                (str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID), int(i.FailureReason))
                for i in ds.get("FailedSOPSequence", [])
            ),
        )
        with self._lock:
            self.received.append(item)

    def start(self) -> "ReportReceiver":
        """Listen (background threads)."""
        from pynetdicom import AE, evt

        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        # As acceptor: scp_role=True accepts the requestor's proposed SCP role (PS3.7 D.3.3.4).
        ae.add_supported_context(STORAGE_COMMITMENT_PUSH, [self.transfer_syntax], scu_role=False, scp_role=self.accept_role)
        self._server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_report)]
        )
        return self

    def stop(self) -> None:
        """Stop listening."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()


REPORT_1 = CommitmentReport("2.25.100", committed=(Reference(CT, "1.2.3.1"), Reference(CT, "1.2.3.2")))
REPORT_2 = CommitmentReport(
    "2.25.100",
    committed=(Reference(CT, "1.2.3.1"),),
    failed=(FailedReference(Reference(CT, "1.2.3.2"), 0x0110), FailedReference(Reference(CT, "1.2.3.3"), 0x0112)),
)


def transaction(**overrides: Any) -> Transaction:
    """A leased transaction of requester ``ct1`` that called us as ``GATEWAY``."""
    return Transaction(new_transaction("2.25.100", refs(1), **overrides), T0, "node", TransactionState.OPEN)


class ReportSenderTests(TestCase):
    """One report per test, on a new association to a real requester."""

    def receiver(self, transfer_syntax: str = ExplicitVRLittleEndian, **kwargs: Any) -> ReportReceiver:
        """A started receiver, stopped at clean-up."""
        receiver = ReportReceiver(transfer_syntax, **kwargs).start()
        self.addCleanup(receiver.stop)
        return receiver

    def sender(self, port: int, **modality: Any) -> ReportSender:
        """A sender whose ``ct1`` modality is at ``port``."""
        self.config: GatewayConfig = replace(
            config(), modalities=(replace(ModalityConfig("ct1", "MODALITY", "127.0.0.1", port, acse_timeout=10, dimse_timeout=10), **modality),)
        )
        return ReportSender(lambda: self.config, reactor, reactor=reactor)

    async def check_delivered(self, transfer_syntax: str, report: CommitmentReport) -> Received:
        """Send ``report`` to a receiver accepting only ``transfer_syntax``; return what it received."""
        receiver = self.receiver(transfer_syntax)
        await self.sender(receiver.port).send(transaction(), report)
        self.assertEqual(receiver.errors, [])
        (received,) = receiver.received
        self.assertEqual(received.transfer_syntax, transfer_syntax)
        self.assertEqual((received.called_ae_title, received.calling_ae_title), ("MODALITY", "GATEWAY"))
        self.assertEqual((received.sop_class_uid, received.sop_instance_uid), (STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE))
        self.assertTrue(received.acceptor_is_scu, "the gateway is SCP on the context (role selection SCU 0, SCP 1)")
        self.assertEqual(received.proposed, (STORAGE_COMMITMENT_PUSH,), "only the push class is proposed")
        self.assertEqual(received.transaction_uid, report.transaction_uid)
        self.assertEqual(received.event_type, report.event_type)
        self.assertEqual(received.committed, tuple((r.sop_class_uid, r.sop_instance_uid) for r in report.committed))
        self.assertEqual(
            received.failed, tuple((f.reference.sop_class_uid, f.reference.sop_instance_uid, f.reason) for f in report.failed)
        )
        return received

    def test_event_type_1_explicit_only(self) -> None:
        """All committed, to an Explicit VR LE-only requester: event type 1, the Referenced SOP Sequence, no failures."""
        return Deferred.fromCoroutine(self.check_delivered(ExplicitVRLittleEndian, REPORT_1))

    def test_event_type_2_implicit_only(self) -> None:
        """Failures, to an Implicit VR LE-only requester: event type 2, both sequences with the Failure Reasons."""
        return Deferred.fromCoroutine(self.check_delivered(ImplicitVRLittleEndian, REPORT_2))

    def test_event_type_1_implicit_only(self) -> None:
        """All committed in Implicit VR LE too."""
        return Deferred.fromCoroutine(self.check_delivered(ImplicitVRLittleEndian, REPORT_1))

    def test_event_type_2_explicit_only(self) -> None:
        """Failures in Explicit VR LE too."""
        return Deferred.fromCoroutine(self.check_delivered(ExplicitVRLittleEndian, REPORT_2))

    async def _refused_association(self) -> None:
        receiver = self.receiver()
        sender = self.sender(receiver.port, ae_title="SOMEONE")  # the requester checks its called AE title
        with self.assertRaises(ReportNotDelivered) as caught:
            await sender.send(transaction(), REPORT_1)
        self.assertIn("rejected", str(caught.exception))
        self.assertEqual(receiver.received, [])

    def test_requester_refusing_the_association(self) -> None:
        """An A-ASSOCIATE-RJ from the requester is a ReportNotDelivered naming the rejection."""
        return Deferred.fromCoroutine(self._refused_association())

    async def _role_declined(self) -> None:
        receiver = self.receiver(accept_role=False)
        with self.assertRaises(ReportNotDelivered):
            await self.sender(receiver.port).send(transaction(), REPORT_1)
        self.assertEqual(receiver.received, [])

    def test_requester_declining_our_scp_role(self) -> None:
        """A requester that does not accept the gateway as SCP leaves no usable context: not delivered, nothing sent."""
        return Deferred.fromCoroutine(self._role_declined())

    async def _failure_status(self) -> None:
        receiver = self.receiver(status=0x0110)
        with self.assertRaises(ReportRefused) as caught:
            await self.sender(receiver.port).send(transaction(), REPORT_2)
        self.assertEqual(caught.exception.status, 0x0110)
        self.assertEqual(len(receiver.received), 1)

    def test_failure_status_is_refused(self) -> None:
        """A failure status in the N-EVENT-REPORT-RSP is a ReportRefused carrying it."""
        return Deferred.fromCoroutine(self._failure_status())

    async def _warning_status(self) -> None:
        receiver = self.receiver(status=0x0001)
        await self.sender(receiver.port).send(transaction(), REPORT_1)
        self.assertEqual(len(receiver.received), 1)

    def test_warning_status_is_delivered(self) -> None:
        """A warning status (PS3.7 C.4) counts as delivered."""
        return Deferred.fromCoroutine(self._warning_status())

    async def _nobody_listening(self) -> None:
        with self.assertRaises(ReportNotDelivered) as caught:
            await self.sender(free_port("127.0.0.1")).send(transaction(), REPORT_1)
        self.assertIn("cannot open an association", str(caught.exception))

    def test_requester_down(self) -> None:
        """Nobody listening: ReportNotDelivered (the worker retries it)."""
        return Deferred.fromCoroutine(self._nobody_listening())

    async def _unknown_modality(self) -> None:
        sender = self.sender(1)
        with self.assertRaises(ModalityUnknown):
            await sender.send(transaction(modality="gone"), REPORT_1)

    def test_modality_not_in_the_table(self) -> None:
        """A requester no longer in ``modalities`` is a clear ModalityUnknown error."""
        return Deferred.fromCoroutine(self._unknown_modality())

    async def _open_route(self) -> None:
        receiver = self.receiver()
        sender = self.sender(receiver.port)
        routed: list[str] = []

        def open_route(t: Transaction, report: CommitmentReport) -> Deferred[None] | None:
            routed.append(t.transaction_uid)
            return succeed(None) if len(routed) == 1 else None

        sender.open_route = open_route
        await sender.send(transaction(report_association="open"), REPORT_1)
        self.assertEqual((routed, receiver.received), (["2.25.100"], []))
        await sender.send(transaction(report_association="open"), REPORT_1)  # no open association: a new one
        self.assertEqual(len(receiver.received), 1)
        await sender.send(transaction(), REPORT_1)  # "new": the hook is not asked
        self.assertEqual((len(routed), len(receiver.received)), (2, 2))

    def test_open_association_hook(self) -> None:
        """``report_association: open`` asks the hook first; ``None`` falls back to a new association; ``new`` never asks."""
        return Deferred.fromCoroutine(self._open_route())


class WorkerWithSenderTests(TestCase):
    """The worker and the real sender together: the journal's report reaches a pynetdicom requester."""

    async def _down_then_up(self) -> None:
        clock = Clock()
        store = MemoryQueueStore()

        def wall() -> float:
            return T0 + clock.seconds()

        port = free_port("127.0.0.1")
        cfg = replace(config(), modalities=(ModalityConfig("ct1", "MODALITY", "127.0.0.1", port, acse_timeout=10, dimse_timeout=10),))
        worker = CommitmentWorker(
            store, SynchronousRunner(), clock, wall, lambda: cfg, ReportSender(lambda: cfg, reactor, reactor=reactor), lease_seconds=60
        )
        uid = "1.2.826.0.1.3680043.8.498.77.1"
        record = make_record("i1", sop_class_uid=CT, sop_instance_uid=uid, received_at=wall())
        store.add_instance(record, [NewEntry("r", "pacs")], wall(), 0.0)
        for entry in store.lease("pacs", 10, wall(), 60):
            store.complete([entry.entry_id], wall())
        store.add_transaction(new_transaction("2.25.7", (Reference(CT, uid),), deadline=wall() + 3600, report_deadline=wall() + 7200, lookback_from=wall() - 60), wall())
        self.assertEqual(await worker.turn(), 1)
        down = store.get_transaction("2.25.7")
        self.assertEqual((down.state, down.attempts), (TransactionState.OPEN, 1))
        self.assertIn("cannot open an association", down.last_error)
        receiver = ReportReceiver(ImplicitVRLittleEndian)
        receiver.port = port
        receiver.start()
        self.addCleanup(receiver.stop)
        clock.advance(10)  # retry_initial of config()
        self.assertEqual(await worker.turn(), 1)
        self.assertEqual(store.get_transaction("2.25.7").state, TransactionState.REPORTED)
        (received,) = receiver.received
        self.assertEqual((received.transaction_uid, received.event_type, received.committed), ("2.25.7", 1, ((CT, uid),)))

    def test_requester_down_then_reported(self) -> None:
        """The requester is down when the report is due: the attempt is counted, and the retry 10 s later delivers it once."""
        return Deferred.fromCoroutine(self._down_then_up())
