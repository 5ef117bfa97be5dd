"""The requestor's DIMSE-N methods and role selection, against a scripted acceptor in bytes.

:meth:`ClientAssociation.n_action` and :meth:`ClientAssociation.n_event_report`
(PS3.7 10.1.4, 10.1.1) are driven through a ``StringTransport`` and a
``task.Clock``: the test reads the PDUs the requestor writes and answers
with PDUs it builds itself, so every byte on the wire is checked. Role
selection for the Storage Commitment report (SCU-role 0, SCP-role 1,
PS3.4 J.3.3.1.3; PS3.7 D.3.3.4 Table D.3-12) is checked from the
A-ASSOCIATE-RQ bytes to the contexts the association may use.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gateway.associate import (
    AssociationAborted,
    ClientAssociation,
    NoPresentationContext,
    RequestorProtocol,
    connect_tcp,
)
from gateway.commitment.model import (
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH,
    ActionRequest,
    CommitmentReport,
    FailedReference,
    Reference,
)
from gateway.config.schema import DicomDestination
from gateway.dimse import commands as dimse
from gateway.dimse.commitment import decode_action_request, decode_event_report, encode_action_request, encode_event_report
from gateway.dimse.pdv import CommandComplete, DatasetFragment, Reassembler
from gateway.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from gateway.send.dicom import connect_dicom
from gateway.sopclasses import EXPLICIT_VR_LE, IMPLICIT_VR_LE
from gateway.ul import pdu
from gateway.ul.framing import PDUBuffer
from gateway.ul.items import SCPSCURoleSelection, UserInformation
from gateway.ul.negotiate import build_request

CT = "1.2.840.10008.5.1.4.1.1.2"
#: What the gateway proposes when it reports: requestor SCU-role 0, SCP-role 1 (PS3.4 J.3.3.1.3).
REPORT_ROLE = SCPSCURoleSelection(STORAGE_COMMITMENT_PUSH, scu_role=False, scp_role=True)
REPORT = CommitmentReport(
    "1.2.3.99",
    committed=tuple(Reference(CT, f"1.2.3.4.{i}") for i in range(40)),
    failed=(FailedReference(Reference(CT, "1.2.3.5"), 0x0112),),
)


def written_pdus(transport: StringTransport) -> list[pdu.PDU]:
    """Decode and clear everything the requestor wrote."""
    data = transport.value()
    transport.clear()
    out = PDUBuffer(0).feed(data)
    for item in out:
        assert not isinstance(item, Exception), item
    return out  # type: ignore[return-value]


def received_messages(pdus: list[pdu.PDU]) -> list[tuple[dimse.Command, bytes, int]]:
    """Reassemble P-DATA-TF PDUs into (command, data set, number of data PDVs)."""
    reassembler = Reassembler()
    messages: list[tuple[dimse.Command, bytes, int]] = []
    for item in pdus:
        assert isinstance(item, pdu.PDataTF), item
        for pdv in item.pdvs:
            for event in reassembler.feed(pdv):
                if isinstance(event, CommandComplete):
                    messages.append((event.command, b"", 0))
                elif isinstance(event, DatasetFragment):
                    command, data, count = messages[-1]
                    messages[-1] = (command, data + bytes(event.data), count + 1)
    return messages


def answer(context_id: int, command: dimse.Command) -> bytes:
    """A P-DATA-TF PDU carrying one whole command set (PS3.8 E.2: command, last)."""
    return pdu.encode(pdu.PDataTF((pdu.PDV(context_id, 0x03, dimse.encode_command(command)),)))


class ScriptedAcceptorMixin:
    """A requestor on a StringTransport whose acceptor is the test itself."""

    def setUp(self) -> None:
        """A requestor proposing Storage Commitment (and CT) with the report role item."""
        self.clock = Clock()
        self.request = build_request(
            "GATEWAY",
            "MODALITY",
            [(STORAGE_COMMITMENT_PUSH, [IMPLICIT_VR_LE, EXPLICIT_VR_LE]), (CT, [IMPLICIT_VR_LE])],
            max_pdu_length=16384,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            role_selections=(REPORT_ROLE,),
        )
        self.protocol = RequestorProtocol(self.request, self.clock, 30.0, 16384)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def accept(
        self,
        syntax: str = IMPLICIT_VR_LE,
        roles: tuple[SCPSCURoleSelection, ...] = (REPORT_ROLE,),
        max_length: int = 16384,
    ) -> ClientAssociation:
        """Answer the A-ASSOCIATE-RQ with an AC accepting both contexts and the given role replies."""
        (rq,) = written_pdus(self.transport)
        assert isinstance(rq, pdu.AAssociateRQ)
        ac = pdu.AAssociateAC(
            called_ae_title=rq.called_ae_title,
            calling_ae_title=rq.calling_ae_title,
            presentation_contexts=(
                pdu.PresentationContextAC(1, pdu.ContextResult.ACCEPTANCE, syntax),
                pdu.PresentationContextAC(3, pdu.ContextResult.ACCEPTANCE, IMPLICIT_VR_LE),
            ),
            user_information=UserInformation(max_length=max_length, role_selections=roles),
            application_context=pdu.DICOM_APPLICATION_CONTEXT,
            protocol_version=1,
        )
        self.protocol.dataReceived(pdu.encode(ac))
        return self.successResultOf(self.protocol.established)  # type: ignore[attr-defined, no-any-return]


class DimseNTests(ScriptedAcceptorMixin, SynchronousTestCase):
    """n_action and n_event_report over an association with a scripted acceptor."""

    def test_request_carries_the_report_role_item(self) -> None:
        """The A-ASSOCIATE-RQ on the wire proposes SCU-role 0 / SCP-role 1 for Storage Commitment."""
        (rq,) = written_pdus(self.transport)
        assert isinstance(rq, pdu.AAssociateRQ) and rq.user_information is not None
        self.assertEqual(rq.user_information.role_selections, (REPORT_ROLE,))

    def test_n_event_report_sends_command_and_fragmented_dataset(self) -> None:
        """N-EVENT-REPORT-RQ and its data set, fragmented to the peer's 1 KiB, reach the peer; the RSP comes back."""
        assoc = self.accept(max_length=1024)
        context = assoc.context_for_class(STORAGE_COMMITMENT_PUSH)
        assert context is not None
        self.assertEqual((context.context_id, context.scu_role, context.scp_role), (1, False, True))
        dataset = encode_event_report(REPORT, context.transfer_syntax)
        self.assertGreater(len(dataset), 2048)
        d = Deferred.fromCoroutine(
            assoc.n_event_report(STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE, REPORT.event_type, dataset)
        )
        ((command, data, fragments),) = received_messages(written_pdus(self.transport))
        assert isinstance(command, dimse.NEventReportRQ)
        self.assertEqual(
            (command.affected_sop_class_uid, command.affected_sop_instance_uid, command.event_type_id, command.has_dataset),
            (STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE, 2, True),
        )
        self.assertGreater(fragments, 2)
        self.assertEqual(decode_event_report(data, IMPLICIT_VR_LE), REPORT)
        self.assertNoResult(d)
        self.protocol.dataReceived(answer(1, dimse.event_report_response(command, 0x0000)))
        rsp = self.successResultOf(d)
        self.assertEqual((rsp.status, rsp.event_type_id, rsp.message_id_being_responded_to), (0, 2, command.message_id))

    def test_n_action_in_explicit_vr_context(self) -> None:
        """N-ACTION-RQ goes on the class's context, whose Explicit VR syntax the caller encodes in."""
        assoc = self.accept(syntax=EXPLICIT_VR_LE, roles=())
        context = assoc.context_for_class(STORAGE_COMMITMENT_PUSH)
        assert context is not None
        self.assertEqual(context.transfer_syntax, EXPLICIT_VR_LE)
        request = ActionRequest("1.2.3.98", (Reference(CT, "1.2.3.4.1"),))
        d = Deferred.fromCoroutine(
            assoc.n_action(STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE, 1,
                           encode_action_request(request, context.transfer_syntax))
        )
        ((command, data, _),) = received_messages(written_pdus(self.transport))
        assert isinstance(command, dimse.NActionRQ)
        self.assertEqual((command.requested_sop_class_uid, command.requested_sop_instance_uid, command.action_type_id),
                         (STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE, 1))
        self.assertEqual(decode_action_request(data, EXPLICIT_VR_LE), request)
        self.protocol.dataReceived(answer(1, dimse.action_response(command, 0x0000)))
        self.assertEqual(self.successResultOf(d).status, 0)

    def test_failure_status_is_returned_not_raised(self) -> None:
        """A failure status (0x0124) is the caller's to judge: it comes back in the response."""
        assoc = self.accept()
        d = Deferred.fromCoroutine(assoc.n_action(STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE, 1, b""))
        ((command, data, fragments),) = received_messages(written_pdus(self.transport))
        assert isinstance(command, dimse.NActionRQ)
        self.assertEqual((command.has_dataset, fragments), (False, 0))
        self.protocol.dataReceived(answer(1, dimse.action_response(command, 0x0124, "not allowed")))
        rsp = self.successResultOf(d)
        self.assertEqual((rsp.status, rsp.error_comment), (0x0124, "not allowed"))

    def test_acceptor_refusing_the_scp_role_leaves_no_context(self) -> None:
        """An acceptor answering SCP-role 0 leaves the context unusable: no report is sent (Table D.3-12)."""
        refused = SCPSCURoleSelection(STORAGE_COMMITMENT_PUSH, scu_role=False, scp_role=False)
        assoc = self.accept(roles=(refused,))
        self.assertIsNone(assoc.context_for_class(STORAGE_COMMITMENT_PUSH))
        d = Deferred.fromCoroutine(assoc.n_event_report(STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE, 1, b"x"))
        self.failureResultOf(d, NoPresentationContext)
        self.assertEqual(self.transport.value(), b"")

    def test_acceptor_echoing_both_roles_keeps_only_the_proposed_scp_role(self) -> None:
        """A (1,1) reply to our (0,1) proposal grants SCP only: a role we did not propose never holds."""
        assoc = self.accept(roles=(SCPSCURoleSelection(STORAGE_COMMITMENT_PUSH, True, True),))
        context = assoc.context_for_class(STORAGE_COMMITMENT_PUSH)
        assert context is not None
        self.assertEqual((context.scu_role, context.scp_role), (False, True))

    def test_acceptor_without_role_reply_keeps_default_roles(self) -> None:
        """No reply item means the defaults (requestor SCU): the context stays, with scp_role False for the caller to see."""
        assoc = self.accept(roles=())
        context = assoc.context_for_class(STORAGE_COMMITMENT_PUSH)
        assert context is not None
        self.assertEqual((context.scu_role, context.scp_role), (True, False))

    def test_unaccepted_class_raises_before_sending(self) -> None:
        """A SOP class without an accepted context raises NoPresentationContext and writes nothing."""
        assoc = self.accept()
        d = Deferred.fromCoroutine(assoc.n_action("1.2.3.4", "1.2.3.4.1", 1, b""))
        self.failureResultOf(d, NoPresentationContext)
        self.assertEqual(self.transport.value(), b"")

    def test_dimse_timeout_aborts(self) -> None:
        """No N-ACTION-RSP within the DIMSE timeout fails the call and sends A-ABORT."""
        assoc = self.accept()
        d = Deferred.fromCoroutine(assoc.n_action(STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE, 1, b""))
        written_pdus(self.transport)
        self.clock.advance(29)
        self.assertNoResult(d)
        self.clock.advance(2)
        self.failureResultOf(d, AssociationAborted)
        self.assertIsInstance(written_pdus(self.transport)[0], pdu.AAbort)

    def test_wrong_response_type_aborts(self) -> None:
        """An N-ACTION-RSP answering an N-EVENT-REPORT-RQ aborts the association."""
        assoc = self.accept()
        d = Deferred.fromCoroutine(assoc.n_event_report(STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE, 1, b""))
        ((command, _, _),) = received_messages(written_pdus(self.transport))
        self.protocol.dataReceived(answer(1, dimse.NActionRSP(command.message_id, 0)))  # type: ignore[union-attr]
        self.failureResultOf(d, AssociationAborted)
        self.assertIsInstance(written_pdus(self.transport)[0], pdu.AAbort)


def request_pdus(context_id: int, command: dimse.Command, dataset: bytes, fragment: int = 512) -> bytes:
    """P-DATA-TF PDUs carrying a request and its data set cut into ``fragment``-byte PDVs."""
    out = [pdu.encode(pdu.PDataTF((pdu.PDV(context_id, 0x03, dimse.encode_command(command)),)))]
    for start in range(0, len(dataset), fragment):
        last = start + fragment >= len(dataset)
        out.append(pdu.encode(pdu.PDataTF((pdu.PDV(context_id, 0x02 if last else 0x00, dataset[start:start + fragment]),))))
    return b"".join(out)


class InboundEventReportTests(ScriptedAcceptorMixin, SynchronousTestCase):
    """An archive's N-EVENT-REPORT-RQ on the association that carried our N-ACTION (PS3.4 J.3.3)."""

    def report_rq(self, message_id: int = 77) -> tuple[dimse.NEventReportRQ, bytes]:
        """The archive's request and its Implicit VR data set."""
        rq = dimse.NEventReportRQ(message_id, STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE, 2)
        return rq, encode_event_report(REPORT, IMPLICIT_VR_LE)

    def test_handler_gets_request_context_and_whole_dataset(self) -> None:
        """The handler sees the reassembled data set; its status goes back in the N-EVENT-REPORT-RSP."""
        assoc = self.accept(roles=())
        seen: list[tuple[dimse.NEventReportRQ, int, bytes]] = []
        assoc.on_event_report(lambda rq, context, data: seen.append((rq, context.context_id, data)) or 0)
        rq, data = self.report_rq()
        self.protocol.dataReceived(request_pdus(1, rq, data))
        self.assertEqual(seen, [(rq, 1, data)])
        self.assertEqual(decode_event_report(seen[0][2], IMPLICIT_VR_LE), REPORT)
        ((rsp, _, _),) = received_messages(written_pdus(self.transport))
        self.assertEqual(rsp, dimse.NEventReportRSP(77, 0, STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE, 2))

    def test_deferred_status_answers_when_it_fires(self) -> None:
        """A handler returning a Deferred (a journal write) is answered once it fires, with its status."""
        assoc = self.accept(roles=())
        pending: Deferred[int] = Deferred()
        assoc.on_event_report(lambda rq, context, data: pending)
        rq, data = self.report_rq()
        self.protocol.dataReceived(request_pdus(1, rq, data))
        self.assertEqual(self.transport.value(), b"")
        pending.callback(0x0112)
        ((rsp, _, _),) = received_messages(written_pdus(self.transport))
        assert isinstance(rsp, dimse.NEventReportRSP)
        self.assertEqual(rsp.status, 0x0112)

    def test_without_handler_answers_processing_failure(self) -> None:
        """No handler installed: 0x0110 (PS3.7 10.1.1.1.8), and the association stays up."""
        assoc = self.accept(roles=())
        rq, data = self.report_rq()
        self.protocol.dataReceived(request_pdus(1, rq, data))
        ((rsp, _, _),) = received_messages(written_pdus(self.transport))
        assert isinstance(rsp, dimse.NEventReportRSP)
        self.assertEqual(rsp.status, 0x0110)
        self.assertTrue(assoc.is_open)

    def test_failing_handler_answers_processing_failure(self) -> None:
        """A handler that raises is answered 0x0110, and the failure is logged."""
        assoc = self.accept(roles=())

        def broken(rq: dimse.NEventReportRQ, context: object, data: bytes) -> int:
            raise RuntimeError("journal down")

        assoc.on_event_report(broken)  # type: ignore[arg-type]
        rq, data = self.report_rq()
        self.protocol.dataReceived(request_pdus(1, rq, data))
        ((rsp, _, _),) = received_messages(written_pdus(self.transport))
        assert isinstance(rsp, dimse.NEventReportRSP)
        self.assertEqual(rsp.status, 0x0110)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_report_while_our_n_action_waits(self) -> None:
        """A report arriving before the N-ACTION-RSP is handled, and the N-ACTION still gets its response."""
        assoc = self.accept(roles=())
        handled: list[int] = []
        assoc.on_event_report(lambda rq, context, data: handled.append(rq.message_id) or 0)
        d = Deferred.fromCoroutine(assoc.n_action(STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE, 1, b""))
        ((action, _, _),) = received_messages(written_pdus(self.transport))
        rq, data = self.report_rq(message_id=1)  # the same number as ours: its own ID space
        self.protocol.dataReceived(request_pdus(1, rq, data))
        self.assertEqual(handled, [1])
        self.assertNoResult(d)
        self.protocol.dataReceived(answer(1, dimse.action_response(action, 0)))  # type: ignore[arg-type]
        self.assertEqual(self.successResultOf(d).status, 0)

    def test_oversized_dataset_aborts(self) -> None:
        """A data set past MAX_EVENT_REPORT_DATASET aborts the association (HARDENING R4)."""
        from gateway import associate

        self.patch(associate, "MAX_EVENT_REPORT_DATASET", 1000)
        assoc = self.accept(roles=())
        called: list[bytes] = []
        assoc.on_event_report(lambda rq, context, data: called.append(data) or 0)
        rq, data = self.report_rq()
        self.protocol.dataReceived(request_pdus(1, rq, data))
        self.assertEqual(called, [])
        self.assertIsInstance(written_pdus(self.transport)[0], pdu.AAbort)

    def test_report_on_unaccepted_context_aborts(self) -> None:
        """An N-EVENT-REPORT-RQ on a context we never had accepted aborts."""
        self.accept(roles=())
        rq, data = self.report_rq()
        self.protocol.dataReceived(request_pdus(5, rq, data))
        self.assertIsInstance(written_pdus(self.transport)[0], pdu.AAbort)


class RoleSelectionArgumentTests(SynchronousTestCase):
    """connect_tcp and connect_dicom put role_selections in the A-ASSOCIATE-RQ."""

    def first_request(self, reactor: MemoryReactorClock) -> pdu.AAssociateRQ:
        """Connect the protocol the reactor was asked for and decode its A-ASSOCIATE-RQ."""
        factory = reactor.tcpClients[0][2]
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        (rq,) = written_pdus(transport)
        assert isinstance(rq, pdu.AAssociateRQ)
        return rq

    def test_connect_tcp_proposes_role_selections(self) -> None:
        """connect_tcp(role_selections=...) sends the items; without it none are sent."""
        for roles in ((REPORT_ROLE,), ()):
            reactor = MemoryReactorClock()
            connect_tcp(reactor, "127.0.0.1", 104, calling_ae_title="GATEWAY", called_ae_title="MODALITY",
                        proposals=[(STORAGE_COMMITMENT_PUSH, [IMPLICIT_VR_LE])], role_selections=roles)
            rq = self.first_request(reactor)
            assert rq.user_information is not None
            self.assertEqual(rq.user_information.role_selections, roles)

    def test_connect_dicom_proposes_role_selections(self) -> None:
        """connect_dicom(role_selections=...) sends the items to a configured destination."""
        reactor = MemoryReactorClock()
        destination = DicomDestination(name="pacs", ae_title="PACS", host="127.0.0.1", port=104, calling_ae_title="GATEWAY")
        connect_dicom(reactor, destination, [(STORAGE_COMMITMENT_PUSH, [IMPLICIT_VR_LE])], role_selections=(REPORT_ROLE,))
        rq = self.first_request(reactor)
        assert rq.user_information is not None
        self.assertEqual(rq.user_information.role_selections, (REPORT_ROLE,))
