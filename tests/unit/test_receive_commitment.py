"""Tests for :mod:`gateway.receive`'s Storage Commitment dispatch (issue 15), driven with PDVs.

A :class:`~gateway.receive.StorageService` is fed the PDVs a requester or an
archive would send; a fake peer collects the command sets it answers with,
and a fake commitment SCP records what it was handed and answers when the
test says so. C-STOREs go to a fake ``admit`` that the test releases, to show
that responses keep request order.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from gateway import events
from gateway.blocking import SynchronousRunner
from gateway.commitment.model import STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH
from gateway.dimse import commands as dimse
from gateway.dimse.pdv import fragment
from gateway.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from gateway.receive import AssociationInfo, StorageService
from gateway.spool import Spool
from gateway.ul.negotiate import AcceptedContext
from gateway.ul.pdu import PDV

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"

CONTEXTS = {
    1: AcceptedContext(1, STORAGE_COMMITMENT_PUSH, EXPLICIT_LE, True, False),
    3: AcceptedContext(3, CT_IMAGE, EXPLICIT_LE, True, False),
    5: AcceptedContext(5, STORAGE_COMMITMENT_PUSH, IMPLICIT_LE, False, True),
}
INFO = AssociationInfo("A1", "10.0.0.7:40000", "CT01", "DICOMGW", "dicom", CONTEXTS)


class _Peer:
    """The association's adapter: keeps each command set sent, and what else was asked."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, Any]] = []
        self.datasets: list[tuple[int, bytes]] = []
        self.released = 0
        self.aborted: list[str] = []

    def send_command(self, context_id: int, command: bytes) -> None:
        self.sent.append((context_id, dimse.decode_command(command)))

    def send_dataset(self, context_id: int, data: bytes) -> None:
        self.datasets.append((context_id, data))

    def release_response(self) -> None:
        self.released += 1

    def abort_association(self, detail: str) -> None:
        self.aborted.append(detail)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _Observer:
    """Keeps every event."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def observe(self, event: Any) -> None:
        self.seen.append(event)


class _SCP:
    """A fake commitment SCP: records calls; answers with a Deferred the test fires (or at once)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, bytes, str]] = []
        self.answers: list[Deferred[tuple[int, str]]] = []
        self.immediate: tuple[int, str] | None = (0, "")
        self.open: list[Any] = []

    def association_opened(self, info: AssociationInfo, channel: Any) -> None:
        self.open.append(channel)

    def association_closed(self, channel: Any) -> None:
        self.open.remove(channel)

    def _answer(self) -> Deferred[tuple[int, str]]:
        if self.immediate is not None:
            return succeed(self.immediate)
        d: Deferred[tuple[int, str]] = Deferred()
        self.answers.append(d)
        return d

    def action(self, info: AssociationInfo, rq: dimse.NActionRQ, dataset: bytes, transfer_syntax: str) -> Deferred[tuple[int, str]]:
        self.calls.append(("action", rq, dataset, transfer_syntax))
        return self._answer()

    def event_report(
        self, info: AssociationInfo, rq: dimse.NEventReportRQ, dataset: bytes, transfer_syntax: str
    ) -> Deferred[tuple[int, str]]:
        self.calls.append(("event_report", rq, dataset, transfer_syntax))
        return self._answer()


def n_action(message_id: int = 7, has_dataset: bool = True) -> dimse.NActionRQ:
    """A Storage Commitment N-ACTION-RQ (action type 1 on the well-known instance)."""
    return dimse.NActionRQ(message_id, STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE, 1, has_dataset)


def n_event_report(message_id: int = 9, event_type: int = 2) -> dimse.NEventReportRQ:
    """An archive's N-EVENT-REPORT-RQ."""
    return dimse.NEventReportRQ(message_id, STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE, event_type, True)


def pdvs(context_id: int, command: Any, dataset: bytes | None = None, size: int = 64) -> tuple[PDV, ...]:
    """The PDVs of one message: its command set, then its data set in ``size``-byte fragments."""
    out = list(fragment(context_id, dimse.encode_command(command), 1024, command=True))
    if dataset is not None:
        out += fragment(context_id, dataset, size, command=False)
    return tuple(out)


class ServiceTestsMixin:
    """A StorageService over a temporary spool, a fake peer and a fake commitment SCP."""

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)  # type: ignore[attr-defined]
        self.peer = _Peer()
        self.scp: _SCP | None = _SCP()
        self.admissions: list[Deferred[Any]] = []
        self.observer = _Observer()
        self.service = self.make_service()

    def make_service(self, **kwargs: Any) -> StorageService:
        spool = Spool(
            self.tmp,
            SynchronousRunner(),
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            max_instance_size=1 << 20,
        )

        def admit(writer: Any, info: AssociationInfo) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            self.admissions.append(d)
            return d

        return StorageService(self.peer, INFO, spool, self.observer, admit=admit, commitment=self.scp, **kwargs)

    def statuses(self) -> list[tuple[str, int, int]]:
        """Each response sent: its type, the message it answers and its status."""
        return [
            (type(c).__name__, c.message_id_being_responded_to, c.status)
            for _, c in self.peer.sent
            if hasattr(c, "message_id_being_responded_to")
        ]


class ActionDispatchTests(ServiceTestsMixin, SynchronousTestCase):
    """N-ACTION-RQ on the Storage Commitment context: buffered, handed over, answered."""

    def test_data_set_fragments_are_joined_and_handed_over(self) -> None:
        """The data set's fragments reach the SCP as one byte string, with the context's transfer syntax."""
        data = bytes(range(256)) * 3
        self.service.pdata(pdvs(1, n_action(), data, size=100))
        [(kind, rq, dataset, syntax)] = self.scp.calls  # type: ignore[union-attr]
        self.assertEqual((kind, rq.message_id, dataset, syntax), ("action", 7, data, EXPLICIT_LE))
        self.assertEqual(self.statuses(), [("NActionRSP", 7, 0)])

    def test_response_echoes_the_request_and_carries_the_comment(self) -> None:
        """The N-ACTION-RSP echoes class, instance and Action Type ID, with the SCP's status and Error Comment."""
        self.scp.immediate = (0x0124, "Calling AE title has no entry in modalities")  # type: ignore[union-attr]
        self.service.pdata(pdvs(1, n_action(), b"\x00\x00"))
        [(context_id, rsp)] = self.peer.sent
        self.assertEqual(context_id, 1)
        self.assertIsInstance(rsp, dimse.NActionRSP)
        self.assertEqual(
            (rsp.status, rsp.affected_sop_class_uid, rsp.affected_sop_instance_uid, rsp.action_type_id, rsp.error_comment),
            (0x0124, STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE, 1, "Calling AE title has no entry in modalities"),
        )

    def test_no_data_set_is_handed_over_empty(self) -> None:
        """An N-ACTION that announces no data set is handed over at once with ``b""`` (the SCP names what is missing)."""
        self.service.pdata(pdvs(1, n_action(has_dataset=False)))
        self.assertEqual([(c[0], c[2]) for c in self.scp.calls], [("action", b"")])  # type: ignore[union-attr]
        self.assertEqual(self.statuses(), [("NActionRSP", 7, 0)])

    def test_data_set_over_the_cap_is_resource_limitation(self) -> None:
        """A data set over the cap is swallowed, never handed over, and answered 0x0213 (PS3.7 10.1.4.1.10)."""
        self.service = self.make_service(max_commitment_dataset=1000)
        self.service.pdata(pdvs(1, n_action(), b"\x00" * 1002, size=100))
        self.assertEqual(self.scp.calls, [])  # type: ignore[union-attr]
        self.assertEqual(self.statuses(), [("NActionRSP", 7, 0x0213)])
        self.assertEqual(self.peer.aborted, [])

    def test_data_set_at_the_cap_is_handed_over(self) -> None:
        """A data set of exactly the cap is still taken."""
        self.service = self.make_service(max_commitment_dataset=1000)
        self.service.pdata(pdvs(1, n_action(), b"\x00" * 1000, size=100))
        self.assertEqual(len(self.scp.calls[0][2]), 1000)  # type: ignore[union-attr]

    def test_without_commitment_the_request_is_refused(self) -> None:
        """A service without a commitment SCP answers N-ACTION 0x0124 (refused: not authorized), and says so."""
        self.scp = None
        self.service = self.make_service()
        self.service.pdata(pdvs(1, n_action(), b"\x00\x00"))
        self.assertEqual(self.statuses(), [("NActionRSP", 7, 0x0124)])
        [event] = [e for e in self.observer.seen if isinstance(e, events.CommitmentRequested)]
        self.assertEqual((event.outcome, event.status, event.calling_ae_title), ("refused", 0x0124, "CT01"))

    def test_oversized_request_is_observed(self) -> None:
        """The 0x0213 answered by the service itself is an ``invalid`` CommitmentRequested event."""
        self.service = self.make_service(max_commitment_dataset=10)
        self.service.pdata(pdvs(1, n_action(), b"\x00" * 20))
        [event] = [e for e in self.observer.seen if isinstance(e, events.CommitmentRequested)]
        self.assertEqual((event.outcome, event.status), ("invalid", 0x0213))

    def test_on_another_context_it_is_an_unrecognized_operation(self) -> None:
        """N-ACTION on a storage context is answered 0x0211 as before; its data set is swallowed."""
        self.service.pdata(pdvs(3, dimse.NActionRQ(7, CT_IMAGE, "1.2.3", 1, True), b"\x00" * 10))
        self.assertEqual(self.scp.calls, [])  # type: ignore[union-attr]
        self.assertEqual(self.statuses(), [("NActionRSP", 7, 0x0211)])
        # The next message is still understood.
        self.service.pdata(pdvs(1, n_action(8), b"\x00\x00"))
        self.assertEqual(self.statuses()[-1], ("NActionRSP", 8, 0))

    def test_failing_scp_is_processing_failure(self) -> None:
        """An SCP whose Deferred fails still gets the request answered, 0x0110."""
        self.scp.immediate = None  # type: ignore[union-attr]
        self.service.pdata(pdvs(1, n_action(), b"\x00\x00"))
        self.scp.answers[0].errback(RuntimeError("boom"))  # type: ignore[union-attr]
        self.assertEqual(self.statuses(), [("NActionRSP", 7, 0x0110)])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class OrderTests(ServiceTestsMixin, SynchronousTestCase):
    """Responses leave in request order, whatever finishes first; release waits for them."""

    def store(self, message_id: int) -> tuple[PDV, ...]:
        return pdvs(3, dimse.CStoreRQ(message_id, CT_IMAGE, f"1.2.3.{message_id}"), b"\x08\x00\x16\x00\x00\x00\x00\x00")

    def test_action_answer_waits_for_an_earlier_store(self) -> None:
        """An N-ACTION answered before the C-STORE sent ahead of it is sent after that C-STORE's response."""
        self.service.pdata(self.store(1))
        self.service.pdata(pdvs(1, n_action(2), b"\x00\x00"))
        self.assertEqual(self.peer.sent, [])
        from gateway.intake import Admission

        self.admissions[0].callback(Admission(0))
        self.assertEqual(self.statuses(), [("CStoreRSP", 1, 0), ("NActionRSP", 2, 0)])

    def test_store_answer_waits_for_an_earlier_action(self) -> None:
        """A C-STORE committed while an earlier N-ACTION waits for its journal is answered after it."""
        self.scp.immediate = None  # type: ignore[union-attr]
        self.service.pdata(pdvs(1, n_action(1), b"\x00\x00"))
        self.service.pdata(self.store(2))
        from gateway.intake import Admission

        self.admissions[0].callback(Admission(0))
        self.assertEqual(self.peer.sent, [])
        self.scp.answers[0].callback((0, ""))  # type: ignore[union-attr]
        self.assertEqual(self.statuses(), [("NActionRSP", 1, 0), ("CStoreRSP", 2, 0)])

    def test_release_waits_for_the_action_answer(self) -> None:
        """A-RELEASE-RQ while an N-ACTION is in the journal: the release response follows its answer."""
        self.scp.immediate = None  # type: ignore[union-attr]
        self.service.pdata(pdvs(1, n_action(1), b"\x00\x00"))
        self.assertTrue(self.service.busy)
        self.service.release_requested()
        self.assertEqual(self.peer.released, 0)
        self.scp.answers[0].callback((0, ""))  # type: ignore[union-attr]
        self.assertEqual((self.statuses(), self.peer.released), ([("NActionRSP", 1, 0)], 1))
        self.assertFalse(self.service.busy)

    def test_answer_after_the_association_ended_is_dropped(self) -> None:
        """An answer that comes after the association ended sends nothing (the journal still has the request)."""
        self.scp.immediate = None  # type: ignore[union-attr]
        self.service.pdata(pdvs(1, n_action(1), b"\x00\x00"))
        self.service.connection_lost()
        self.scp.answers[0].callback((0, ""))  # type: ignore[union-attr]
        self.assertEqual(self.peer.sent, [])


class EventReportDispatchTests(ServiceTestsMixin, SynchronousTestCase):
    """An archive's N-EVENT-REPORT-RQ: handed to the SCP, always answered."""

    def test_report_is_handed_over_and_answered(self) -> None:
        """The report's data set goes to ``event_report`` and the N-EVENT-REPORT-RSP echoes the Event Type ID."""
        self.service.pdata(pdvs(5, n_event_report(), b"\x08\x00\x95\x11"))
        [(kind, rq, dataset, syntax)] = self.scp.calls  # type: ignore[union-attr]
        self.assertEqual((kind, rq.event_type_id, dataset, syntax), ("event_report", 2, b"\x08\x00\x95\x11", IMPLICIT_LE))
        [(context_id, rsp)] = self.peer.sent
        self.assertIsInstance(rsp, dimse.NEventReportRSP)
        self.assertEqual((context_id, rsp.message_id_being_responded_to, rsp.status, rsp.event_type_id), (5, 9, 0, 2))

    def test_without_commitment_a_report_is_processing_failure(self) -> None:
        """A service without a commitment SCP answers a report 0x0110."""
        self.scp = None
        self.service = self.make_service()
        self.service.pdata(pdvs(5, n_event_report(), b"\x00\x00"))
        self.assertEqual(self.statuses(), [("NEventReportRSP", 9, 0x0110)])

    def test_report_over_the_cap_is_resource_limitation(self) -> None:
        """A report over the cap is answered 0x0213 (PS3.7 10.1.1.1.8) without being handed over."""
        self.service = self.make_service(max_commitment_dataset=10)
        self.service.pdata(pdvs(5, n_event_report(), b"\x00" * 20))
        self.assertEqual(self.statuses(), [("NEventReportRSP", 9, 0x0213)])
        self.assertEqual(self.scp.calls, [])  # type: ignore[union-attr]


class OpenAssociationReportTests(ServiceTestsMixin, SynchronousTestCase):
    """``report_association: open``: the service sends a report as the SCP and takes its response."""

    def rsp(self, message_id: int, status: int = 0, has_dataset: bool = False) -> tuple[PDV, ...]:
        return pdvs(
            1,
            dimse.NEventReportRSP(message_id, status, STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE, 1, has_dataset),
            b"\x00\x00" if has_dataset else None,
        )

    def test_association_with_the_push_context_is_registered_until_it_ends(self) -> None:
        """The service registers with the SCP when it has the Push Model context, and unregisters at its end."""
        self.assertEqual(self.scp.open, [self.service])  # type: ignore[union-attr]
        self.service.connection_lost()
        self.assertEqual(self.scp.open, [])  # type: ignore[union-attr]

    def test_association_without_the_push_context_is_not_registered(self) -> None:
        """A storage-only association is not a place for reports."""
        other = StorageService(
            self.peer, AssociationInfo("A2", "x:1", "CT01", "DICOMGW", "dicom", {3: CONTEXTS[3]}),
            self.service._spool, commitment=self.scp,  # type: ignore[attr-defined]
        )
        self.assertNotIn(other, self.scp.open)  # type: ignore[union-attr]
        self.assertIsNone(other.report_context())

    def test_report_is_sent_and_its_response_taken(self) -> None:
        """N-EVENT-REPORT-RQ (event type, well-known instance) and its data set go out; the RSP fires the Deferred."""
        d = self.service.send_event_report(1, b"\x08\x00\x95\x11")
        [(context_id, rq)] = self.peer.sent
        self.assertIsInstance(rq, dimse.NEventReportRQ)
        self.assertEqual(
            (context_id, rq.affected_sop_class_uid, rq.affected_sop_instance_uid, rq.event_type_id, rq.has_dataset),
            (1, STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE, 1, True),
        )
        self.assertEqual(self.peer.datasets, [(1, b"\x08\x00\x95\x11")])
        self.assertTrue(self.service.reporting)
        self.assertNoResult(d)
        self.service.pdata(self.rsp(rq.message_id, 0x0000))
        self.assertEqual(self.successResultOf(d), (0, ""))
        self.assertFalse(self.service.reporting)
        self.assertEqual(self.peer.aborted, [])

    def test_one_report_at_a_time(self) -> None:
        """A second report while one awaits its response is refused (asynchronous window 1, PS3.7 D.3.3.3)."""
        self.service.send_event_report(1, b"")
        self.assertRaises(ValueError, self.service.send_event_report, 2, b"")

    def test_response_with_an_event_reply_is_swallowed(self) -> None:
        """An RSP that announces a data set is taken; its data set is discarded, the association goes on."""
        d = self.service.send_event_report(2, b"")
        rq = self.peer.sent[0][1]
        self.service.pdata(self.rsp(rq.message_id, 0x0000, has_dataset=True))
        self.assertEqual(self.successResultOf(d), (0, ""))
        self.service.pdata(pdvs(1, n_action(30), b"\x00\x00"))
        self.assertEqual(self.statuses()[-1], ("NActionRSP", 30, 0))

    def test_association_end_fails_the_report(self) -> None:
        """The association ends before the RSP: the Deferred fails (the sender falls back to a new association)."""
        from gateway.receive import ReportNotAnswered

        d = self.service.send_event_report(1, b"")
        self.service.connection_lost()
        self.failureResultOf(d, ReportNotAnswered)

    def test_late_response_after_a_timeout_is_ignored(self) -> None:
        """A report given up (cancelled) whose RSP comes late does not abort the association."""
        d = self.service.send_event_report(1, b"")
        rq = self.peer.sent[0][1]
        d.cancel()
        self.failureResultOf(d)
        self.assertFalse(self.service.reporting)
        self.service.pdata(self.rsp(rq.message_id))
        self.assertEqual(self.peer.aborted, [])

    def test_unsolicited_response_is_a_protocol_violation(self) -> None:
        """An N-EVENT-REPORT-RSP to nothing we sent aborts, as any unexpected response does (HARDENING R2)."""
        self.service.pdata(self.rsp(77))
        self.assertEqual(len(self.peer.aborted), 1)


class BufferTests(ServiceTestsMixin, SynchronousTestCase):
    """The buffer of an oversized data set is released at once, not held while the rest is swallowed."""

    def test_oversized_buffer_is_emptied_as_soon_as_the_cap_is_passed(self) -> None:
        """Once past the cap the buffered bytes go; fragments after that are only counted."""
        self.service = self.make_service(max_commitment_dataset=100)
        self.service.pdata(pdvs(1, n_action(), b"\x00" * 300, size=60)[:-2])
        incoming = self.service._incoming  # type: ignore[attr-defined]
        self.assertEqual((incoming.size, len(incoming.n_buffer)), (180, 0))
