"""The requestor's Query/Retrieve methods (find, move, get), against a scripted acceptor in bytes.

:meth:`ClientAssociation.find`, :meth:`~ClientAssociation.move` and
:meth:`~ClientAssociation.get` (PS3.7 9.1.2-9.1.4) are driven through a
``StringTransport`` and a ``task.Clock``: the test reads the PDUs the
requestor writes and answers with PDUs it builds itself. Checked: responses
stream one by one as they arrive, C-CANCEL-RQ on the wire (PS3.7 9.3.2.3),
the DIMSE timeout counted per response, backpressure for a slow consumer,
and C-GET's C-STORE sub-operations answered on the same association.
"""

from __future__ import annotations

import os
from typing import Any

from pydicom.dataset import Dataset
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gateway.associate import (
    QR_HIGH_WATER,
    AssociationAborted,
    ClientAssociation,
    FileStoreSink,
    NoPresentationContext,
    QRResponse,
    RequestorProtocol,
)
from gateway.dimse import commands as dimse
from gateway.dimse.identifier import decode_identifier, encode_identifier
from gateway.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from gateway.meta import read_part10_header
from gateway.sopclasses import IMPLICIT_VR_LE
from gateway.ul import pdu
from gateway.ul.items import SCPSCURoleSelection, SOPClassExtendedNegotiation, UserInformation
from gateway.ul.negotiate import AcceptedContext, build_request
from tests.adapters.test_associate_n import answer, received_messages, written_pdus

STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
CT = "1.2.840.10008.5.1.4.1.1.2"
#: Context IDs in proposal order: FIND 1, MOVE 3, GET 5, CT 7.
FIND_ID, MOVE_ID, GET_ID, CT_ID = 1, 3, 5, 7
#: The C-GET requester's role for storage: SCU-role 0, SCP-role 1 (PS3.4 C.4.3.3, PS3.7 D.3.3.4).
CT_SCP_ROLE = SCPSCURoleSelection(CT, scu_role=False, scp_role=True)


def query(level: str = "STUDY", **keys: Any) -> Dataset:
    """A query identifier."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for name, value in keys.items():
        setattr(ds, name, value)
    return ds


def data_pdu(context_id: int, data: bytes) -> bytes:
    """A P-DATA-TF PDU carrying one whole data set (PS3.8 E.2: data, last)."""
    return pdu.encode(pdu.PDataTF((pdu.PDV(context_id, 0x02, data),)))


class ScriptedQRAcceptorMixin:
    """A requestor on a StringTransport proposing Study Root FIND/MOVE/GET and CT (SCP role)."""

    def setUp(self) -> None:
        """Propose the contexts and accept them all, with the CT role granted."""
        self.clock = Clock()
        self.request = build_request(
            "GATEWAY",
            "ARCHIVE",
            [(STUDY_FIND, [IMPLICIT_VR_LE]), (STUDY_MOVE, [IMPLICIT_VR_LE]), (STUDY_GET, [IMPLICIT_VR_LE]), (CT, [IMPLICIT_VR_LE])],
            max_pdu_length=16384,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            role_selections=(CT_SCP_ROLE,),
        )
        self.protocol = RequestorProtocol(self.request, self.clock, 30.0, 16384, dimse_timeout=10.0)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        (rq,) = written_pdus(self.transport)
        ac = pdu.AAssociateAC(
            called_ae_title=rq.called_ae_title,  # type: ignore[union-attr]
            calling_ae_title=rq.calling_ae_title,  # type: ignore[union-attr]
            presentation_contexts=tuple(
                pdu.PresentationContextAC(cid, pdu.ContextResult.ACCEPTANCE, IMPLICIT_VR_LE) for cid in (1, 3, 5, 7)
            ),
            user_information=UserInformation(max_length=16384, role_selections=(CT_SCP_ROLE,)),
            application_context=pdu.DICOM_APPLICATION_CONTEXT,
            protocol_version=1,
        )
        self.protocol.dataReceived(pdu.encode(ac))
        self.assoc: ClientAssociation = self.successResultOf(self.protocol.established)  # type: ignore[attr-defined]

    def sent(self) -> list[tuple[dimse.Command, bytes, int]]:
        """The DIMSE messages the requestor wrote since the last call."""
        return received_messages(written_pdus(self.transport))

    def collect(self, stream: Any) -> "Deferred[list[QRResponse]]":
        """Iterate ``stream`` with ``async for`` into a list."""

        async def run() -> list[QRResponse]:
            return [response async for response in stream]

        return Deferred.fromCoroutine(run())


class FindTests(ScriptedQRAcceptorMixin, SynchronousTestCase):
    """find: request bytes, streamed matches, final, cancel and timeouts."""

    def test_find_sends_request_and_identifier(self) -> None:
        """C-FIND-RQ on the FIND context, followed by the identifier in the context's syntax."""
        self.assoc.find(STUDY_FIND, query(PatientID="P1", StudyInstanceUID=""), priority=1)
        ((command, data, _),) = self.sent()
        assert isinstance(command, dimse.CFindRQ)
        self.assertEqual((command.affected_sop_class_uid, command.priority, command.has_dataset), (STUDY_FIND, 1, True))
        ds = decode_identifier(data, IMPLICIT_VR_LE)
        self.assertEqual((ds.QueryRetrieveLevel, ds.PatientID), ("STUDY", "P1"))

    def test_matches_stream_as_they_arrive(self) -> None:
        """Each pending match is available before the next one arrives; the final ends the iteration."""
        stream = self.assoc.find(STUDY_FIND, query())
        ((rq, _, _),) = self.sent()
        first = stream.next()
        self.assertNoResult(first)
        match = encode_identifier(query(StudyInstanceUID="1.2.3"), IMPLICIT_VR_LE)
        self.protocol.dataReceived(answer(FIND_ID, dimse.CFindRSP(rq.message_id, 0xFF00, STUDY_FIND, has_dataset=True)))
        self.assertNoResult(first)  # the identifier is still to come
        self.protocol.dataReceived(data_pdu(FIND_ID, match))
        response = self.successResultOf(first)
        assert response is not None
        self.assertTrue(response.pending)
        self.assertEqual(response.dataset().StudyInstanceUID, "1.2.3")
        rest = self.collect(stream)
        self.assertNoResult(rest)
        self.protocol.dataReceived(answer(FIND_ID, dimse.CFindRSP(rq.message_id, 0x0000, STUDY_FIND)))
        (final,) = self.successResultOf(rest)
        self.assertEqual((final.status, final.pending, final.identifier), (0, False, None))
        self.assertEqual(self.successResultOf(stream.final), final)

    def test_cancel_sends_c_cancel_rq_once(self) -> None:
        """cancel() writes one C-CANCEL-RQ naming the request (PS3.7 9.3.2.3); the Cancel final still arrives."""
        stream = self.assoc.find(STUDY_FIND, query())
        ((rq, _, _),) = self.sent()
        stream.cancel()
        stream.cancel()
        ((cancel, data, _),) = self.sent()
        self.assertEqual((cancel, data), (dimse.CCancelRQ(rq.message_id), b""))
        self.protocol.dataReceived(answer(FIND_ID, dimse.CFindRSP(rq.message_id, 0xFE00, STUDY_FIND)))
        self.assertEqual(self.successResultOf(stream.final).status, 0xFE00)
        stream.cancel()  # after the final: nothing
        self.assertEqual(self.sent(), [])

    def test_dimse_timeout_counts_per_response(self) -> None:
        """A 30 s query with a match every 8 s (timeout 10 s) survives; 10 s of silence aborts it."""
        stream = self.assoc.find(STUDY_FIND, query())
        ((rq, _, _),) = self.sent()
        result = self.collect(stream)
        for _ in range(4):
            self.clock.advance(8)
            self.protocol.dataReceived(answer(FIND_ID, dimse.CFindRSP(rq.message_id, 0xFF00, STUDY_FIND)))
        self.assertNoResult(result)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(10)
        self.failureResultOf(result, AssociationAborted)
        self.assertTrue(self.transport.disconnecting)

    def test_slow_consumer_pauses_the_transport(self) -> None:
        """Unread responses beyond the high-water mark pause reading; consuming resumes it, no timeout meanwhile."""
        stream = self.assoc.find(STUDY_FIND, query())
        ((rq, _, _),) = self.sent()
        for _ in range(QR_HIGH_WATER):
            self.protocol.dataReceived(answer(FIND_ID, dimse.CFindRSP(rq.message_id, 0xFF00, STUDY_FIND)))
        self.assertEqual(self.transport.producerState, "paused")
        self.clock.advance(60)  # the consumer is slow, not the source
        self.assertFalse(self.transport.disconnecting)
        for _ in range(QR_HIGH_WATER // 2):
            self.successResultOf(stream.next())
        self.assertEqual(self.transport.producerState, "producing")

    def test_cancel_or_release_resumes_a_paused_transport(self) -> None:
        """A consumer that stops reading and cancels, or releases, does not leave the association unread."""
        for finish in ("cancel", "release"):
            stream = self.assoc.find(STUDY_FIND, query())
            ((rq, _, _),) = self.sent()
            for _ in range(QR_HIGH_WATER):
                self.protocol.dataReceived(answer(FIND_ID, dimse.CFindRSP(rq.message_id, 0xFF00, STUDY_FIND)))
            self.assertEqual(self.transport.producerState, "paused")
            if finish == "cancel":
                stream.cancel()
                self.assertEqual(self.transport.producerState, "producing", finish)
                self.protocol.dataReceived(answer(FIND_ID, dimse.CFindRSP(rq.message_id, 0xFE00, STUDY_FIND)))
                self.assertEqual(self.successResultOf(stream.final).status, 0xFE00)
                self.sent()
            else:
                self.assoc.release()
                self.assertEqual(self.transport.producerState, "producing", finish)

    def test_abort_fails_the_stream(self) -> None:
        """An A-ABORT from the peer ends the iteration with AssociationAborted."""
        stream = self.assoc.find(STUDY_FIND, query())
        result = self.collect(stream)
        self.protocol.dataReceived(pdu.encode(pdu.AAbort(source=2, reason=0)))
        self.failureResultOf(result, AssociationAborted)

    def test_wrong_response_type_aborts(self) -> None:
        """A C-MOVE-RSP answering a C-FIND-RQ is a protocol violation: abort."""
        stream = self.assoc.find(STUDY_FIND, query())
        ((rq, _, _),) = self.sent()
        result = self.collect(stream)
        self.protocol.dataReceived(answer(FIND_ID, dimse.CMoveRSP(rq.message_id, 0x0000)))
        self.failureResultOf(result, AssociationAborted)

    def test_unaccepted_class_raises(self) -> None:
        """A Patient Root FIND that was not negotiated raises NoPresentationContext and sends nothing."""
        self.assertRaises(NoPresentationContext, self.assoc.find, "1.2.840.10008.5.1.4.1.2.1.1", query())
        self.assertEqual(self.transport.value(), b"")


class MoveTests(ScriptedQRAcceptorMixin, SynchronousTestCase):
    """move: destination and caller-chosen Message ID on the wire, counts in the responses."""

    def test_move_with_counts_and_failed_list(self) -> None:
        """C-MOVE-RQ names the destination and the given Message ID; counts and the failed UID list come back."""
        stream = self.assoc.move(STUDY_MOVE, "DICOMGW", query(StudyInstanceUID="1.2.3"), message_id=4242)
        ((rq, _, _),) = self.sent()
        self.assertEqual(rq, dimse.CMoveRQ(4242, STUDY_MOVE, "DICOMGW"))
        result = self.collect(stream)
        self.protocol.dataReceived(answer(MOVE_ID, dimse.CMoveRSP(4242, 0xFF00, STUDY_MOVE, 1, 1, 0, 0)))
        failed = Dataset()
        failed.FailedSOPInstanceUIDList = "1.2.3.4"
        self.protocol.dataReceived(answer(MOVE_ID, dimse.CMoveRSP(4242, 0xB000, STUDY_MOVE, None, 1, 1, 0, has_dataset=True)))
        self.protocol.dataReceived(data_pdu(MOVE_ID, encode_identifier(failed, IMPLICIT_VR_LE)))
        pending, final = self.successResultOf(result)
        self.assertEqual((pending.command.remaining, pending.command.completed), (1, 1))
        self.assertEqual((final.status, final.command.failed), (0xB000, 1))
        self.assertEqual(final.dataset().FailedSOPInstanceUIDList, "1.2.3.4")

    def test_message_id_in_use_is_refused(self) -> None:
        """A caller-chosen Message ID already outstanding is refused; the next free one skips it."""
        self.assoc.move(STUDY_MOVE, "DEST", query(StudyInstanceUID="1.2.3"), message_id=1)
        self.assertRaises(ValueError, self.assoc.move, STUDY_MOVE, "DEST", query(StudyInstanceUID="1.2.3"), message_id=1)
        stream = self.assoc.find(STUDY_FIND, query())
        self.assertNotEqual(stream.message_id, 1)


class GetTests(ScriptedQRAcceptorMixin, SynchronousTestCase):
    """get: C-STORE sub-operations on our association go to the caller's sink and are answered."""

    def test_sub_operations_stored_and_answered(self) -> None:
        """A sub-operation's data set lands in a Part 10 file; the source gets the sink's status."""
        path = self.mktemp()
        stored: list[tuple[str, int]] = []

        def on_store(rq: dimse.CStoreRQ, context: AcceptedContext) -> FileStoreSink:
            return FileStoreSink(path, rq, context, lambda p, offset: stored.append((p, offset)) or succeed(0x0000))

        stream = self.assoc.get(STUDY_GET, query("SERIES", StudyInstanceUID="1.2.3", SeriesInstanceUID="1.2.3.4"), on_store)
        ((rq, _, _),) = self.sent()
        assert isinstance(rq, dimse.CGetRQ)
        store_rq = dimse.CStoreRQ(77, CT, "1.2.3.4.5", move_originator_ae_title=None)
        self.protocol.dataReceived(answer(CT_ID, store_rq))
        self.protocol.dataReceived(data_pdu(CT_ID, b"\x08\x00\x16\x00\x1a\x00\x00\x00" + CT.encode() + b"\x00"))
        ((rsp, _, _),) = self.sent()
        self.assertEqual(rsp, dimse.store_response(store_rq, 0x0000))
        (p, offset), = stored
        header = read_part10_header(p)
        self.assertEqual((header.sop_instance_uid, header.transfer_syntax_uid, header.dataset_offset), ("1.2.3.4.5", IMPLICIT_VR_LE, offset))
        self.protocol.dataReceived(answer(GET_ID, dimse.CGetRSP(rq.message_id, 0x0000, STUDY_GET, None, 1, 0, 0)))
        self.assertEqual(self.successResultOf(stream.final).command.completed, 1)

    def test_sink_failure_answers_out_of_resources(self) -> None:
        """A sink factory that raises makes the sub-operation fail with 0xA700, the association stays up."""

        def on_store(rq: dimse.CStoreRQ, context: AcceptedContext) -> FileStoreSink:
            raise OSError("disk full")

        self.assoc.get(STUDY_GET, query("SERIES", StudyInstanceUID="1.2.3", SeriesInstanceUID="1.2.3.4"), on_store)
        self.sent()
        store_rq = dimse.CStoreRQ(78, CT, "1.2.3.4.6")
        self.protocol.dataReceived(answer(CT_ID, store_rq))
        self.protocol.dataReceived(data_pdu(CT_ID, b"\x08\x00\x16\x00\x02\x00\x00\x001\x00"))
        ((rsp, _, _),) = self.sent()
        assert isinstance(rsp, dimse.CStoreRSP)
        self.assertEqual(rsp.status, 0xA700)
        self.assertFalse(self.transport.disconnecting)
        self.flushLoggedErrors(OSError)

    def test_abort_discards_partial_file(self) -> None:
        """An abort in the middle of a sub-operation's data set removes the partial file."""
        path = self.mktemp()
        self.assoc.get(
            STUDY_GET,
            query("SERIES", StudyInstanceUID="1.2.3", SeriesInstanceUID="1.2.3.4"),
            lambda rq, context: FileStoreSink(path, rq, context, lambda p, o: 0),
        )
        self.sent()
        self.protocol.dataReceived(answer(CT_ID, dimse.CStoreRQ(79, CT, "1.2.3.4.7")))
        self.protocol.dataReceived(pdu.encode(pdu.PDataTF((pdu.PDV(CT_ID, 0x00, b"\x08\x00\x16\x00"),))))
        self.assertTrue(os.path.exists(path))
        self.protocol.dataReceived(pdu.encode(pdu.AAbort(source=2, reason=0)))
        self.assertFalse(os.path.exists(path))


class ExtendedNegotiationTests(SynchronousTestCase):
    """The requestor proposes SOP Class Extended Negotiation and reads the reply (PS3.7 D.3.3.5, PS3.4 C.5.1.1)."""

    def associate(self, reply: tuple[SOPClassExtendedNegotiation, ...]) -> ClientAssociation:
        """Propose Study Root FIND with relational-queries asked; accept with ``reply``."""
        from gateway.ul.framing import PDUBuffer

        request = build_request(
            "GATEWAY", "ARCHIVE", [(STUDY_FIND, [IMPLICIT_VR_LE])],
            max_pdu_length=16384, implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            extended_negotiations=(SOPClassExtendedNegotiation(STUDY_FIND, b"\x01"),),
        )
        protocol = RequestorProtocol(request, Clock(), 30.0, 16384)
        transport = StringTransport()
        protocol.makeConnection(transport)
        (rq,) = PDUBuffer(0).feed(transport.value())
        assert isinstance(rq, pdu.AAssociateRQ) and rq.user_information is not None
        self.assertEqual(rq.user_information.extended_negotiations, (SOPClassExtendedNegotiation(STUDY_FIND, b"\x01"),))
        ac = pdu.AAssociateAC(
            called_ae_title=rq.called_ae_title,
            calling_ae_title=rq.calling_ae_title,
            presentation_contexts=(pdu.PresentationContextAC(1, pdu.ContextResult.ACCEPTANCE, IMPLICIT_VR_LE),),
            user_information=UserInformation(max_length=16384, extended_negotiations=reply),
            application_context=pdu.DICOM_APPLICATION_CONTEXT,
            protocol_version=1,
        )
        protocol.dataReceived(pdu.encode(ac))
        return self.successResultOf(protocol.established)

    def test_relational_granted(self) -> None:
        """A reply with byte 1 = 1 means relational queries may be sent to this source."""
        assoc = self.associate((SOPClassExtendedNegotiation(STUDY_FIND, b"\x01"),))
        self.assertTrue(assoc.relational_queries(STUDY_FIND))
        self.assertEqual(assoc.extended_replies, {STUDY_FIND: b"\x01"})

    def test_no_reply_or_zero_means_not_supported(self) -> None:
        """No reply item, or byte 1 = 0, means hierarchical queries only."""
        self.assertFalse(self.associate(()).relational_queries(STUDY_FIND))
        self.assertFalse(self.associate((SOPClassExtendedNegotiation(STUDY_FIND, b"\x00"),)).relational_queries(STUDY_FIND))


class UninvitedStoreTests(ScriptedQRAcceptorMixin, SynchronousTestCase):
    """A C-STORE-RQ from the acceptor outside a C-GET is still a protocol violation."""

    def test_store_without_get_aborts(self) -> None:
        """With only a C-FIND running, a C-STORE-RQ from the acceptor aborts the association (and the find)."""
        stream = self.assoc.find(STUDY_FIND, query())
        result = self.collect(stream)
        self.protocol.dataReceived(answer(CT_ID, dimse.CStoreRQ(80, CT, "1.2.3.4.8")))
        self.failureResultOf(result, AssociationAborted)
        self.assertTrue(self.transport.disconnecting)

