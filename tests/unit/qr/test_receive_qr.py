"""Tests for :mod:`gateway.receive`'s Query/Retrieve dispatch (issue 16), driven with PDVs.

A :class:`~gateway.receive.StorageService` is fed the PDVs a Q/R requester
would send; a fake peer keeps the raw command sets it answers with (read
element by element, so the tests do not depend on typed response classes),
and a fake Q/R SCP records each request and keeps its responder for the test
to answer through.
"""

from __future__ import annotations

import shutil
import struct
import tempfile
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from gateway.blocking import SynchronousRunner
from gateway.dimse import commands as dimse
from gateway.dimse.pdv import fragment
from gateway.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from gateway.qr.context import SubOperations
from gateway.receive import AssociationInfo, QRResponder, StorageService, encode_failed_uids
from gateway.spool import Spool
from gateway.ul.negotiate import AcceptedContext
from gateway.ul.pdu import PDV

STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"

CONTEXTS = {
    1: AcceptedContext(1, STUDY_FIND, EXPLICIT_LE, True, False),
    3: AcceptedContext(3, CT_IMAGE, EXPLICIT_LE, True, False),
    5: AcceptedContext(5, STUDY_MOVE, IMPLICIT_LE, True, False),
}
INFO = AssociationInfo("A1", "10.0.0.7:40000", "WS01", "DICOMGW", "dicom", CONTEXTS)

#: A query identifier's bytes (the service never decodes it).
IDENTIFIER = b"\x08\x00\x52\x00CS\x06\x00STUDY " + b"\x20\x00\x0d\x00UI\x00\x00"


def _us(value: int) -> bytes:
    return value.to_bytes(2, "little")


def _ui(value: str) -> bytes:
    raw = value.encode()
    return raw + b"\x00" if len(raw) % 2 else raw


def request(command_field: int, message_id: int, sop_class: str, has_dataset: bool = True, destination: str = "") -> dimse.UnknownCommand:
    """A C-FIND/C-MOVE/C-GET-RQ as raw elements (PS3.7 9.3.2.1)."""
    elements = {dimse.Tag.AFFECTED_SOP_CLASS_UID: _ui(sop_class), dimse.Tag.PRIORITY: _us(0)}
    if destination:
        elements[dimse.Tag.MOVE_DESTINATION] = destination.encode().ljust(16)
    return dimse.UnknownCommand(command_field, message_id, elements, has_dataset)


def c_find(message_id: int = 3, has_dataset: bool = True, sop_class: str = STUDY_FIND) -> dimse.UnknownCommand:
    """A Study Root C-FIND-RQ."""
    return request(dimse.CommandField.C_FIND_RQ, message_id, sop_class, has_dataset)


def c_cancel(message_id: int) -> dimse.UnknownCommand:
    """A C-CANCEL-RQ for ``message_id`` (PS3.7 9.3.2.3)."""
    return dimse.UnknownCommand(dimse.CommandField.C_CANCEL_RQ, message_id, {}, False)


def pdvs(context_id: int, command: Any, dataset: bytes | None = None, size: int = 8) -> tuple[PDV, ...]:
    """The PDVs of one message: its command set, then its data set in ``size``-byte fragments."""
    out = list(fragment(context_id, dimse.encode_command(command), 1024, command=True))
    if dataset is not None:
        out += fragment(context_id, dataset, size, command=False)
    return tuple(out)


class _Peer:
    """Keeps each message sent: (context, raw command elements, data set or None)."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, dict[int, bytes], bytes | None]] = []
        self.aborted: list[str] = []
        self.released = 0

    def send_command(self, context_id: int, command: bytes) -> None:
        self.sent.append((context_id, dimse._split_elements(command), None))

    def send_dataset(self, context_id: int, data: bytes) -> None:
        context_id, elements, _ = self.sent[-1]
        self.sent[-1] = (context_id, elements, data)

    def release_response(self) -> None:
        self.released += 1

    def abort_association(self, detail: str) -> None:
        self.aborted.append(detail)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def responses(self) -> list[tuple[int, int, int]]:
        """(command field, message id responded to, status) of each message sent."""
        return [
            (
                struct.unpack("<H", e[dimse.Tag.COMMAND_FIELD])[0],
                struct.unpack("<H", e[dimse.Tag.MESSAGE_ID_BEING_RESPONDED_TO])[0],
                struct.unpack("<H", e[dimse.Tag.STATUS])[0],
            )
            for _, e, _ in self.sent
        ]


class _QR:
    """A fake Q/R SCP: keeps each request and its responder."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, bytes, QRResponder]] = []

    def handle(self, verb: str, info: AssociationInfo, rq: Any, identifier: bytes, responder: QRResponder) -> None:
        self.calls.append((verb, rq, identifier, responder))


class QRDispatchTests(SynchronousTestCase):
    """C-FIND/C-MOVE/C-GET requests buffered, handed over, answered in order; C-CANCEL."""

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.peer = _Peer()
        self.qr: _QR | None = _QR()
        self.admissions: list[Deferred[Any]] = []
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

        return StorageService(self.peer, INFO, spool, admit=admit, qr=self.qr, **kwargs)

    def test_identifier_fragments_are_joined_and_handed_over(self) -> None:
        """The identifier's fragments reach the SCP as one byte string with the request's fields."""
        self.service.pdata(pdvs(1, c_find(), IDENTIFIER))
        assert self.qr is not None
        [(verb, rq, identifier, responder)] = self.qr.calls
        self.assertEqual((verb, rq.message_id, rq.affected_sop_class_uid, identifier), ("find", 3, STUDY_FIND, IDENTIFIER))
        self.assertEqual(responder.transfer_syntax, EXPLICIT_LE)
        self.assertEqual(self.peer.sent, [])

    def test_pending_responses_leave_as_they_come_then_the_final(self) -> None:
        """Each pending C-FIND-RSP is sent at once with its identifier; the final 0x0000 has none (PS3.7 9.3.2.2)."""
        self.service.pdata(pdvs(1, c_find(), IDENTIFIER))
        assert self.qr is not None
        responder = self.qr.calls[0][3]
        responder.pending(0xFF00, b"match-1")
        self.assertEqual(self.peer.responses(), [(0x8020, 3, 0xFF00)])
        responder.pending(0xFF00, b"match-2")
        responder.final(0x0000)
        self.assertEqual(self.peer.responses(), [(0x8020, 3, 0xFF00), (0x8020, 3, 0xFF00), (0x8020, 3, 0x0000)])
        self.assertEqual([d for _, _, d in self.peer.sent], [b"match-1", b"match-2", None])
        self.assertEqual(self.peer.sent[0][1][dimse.Tag.AFFECTED_SOP_CLASS_UID], _ui(STUDY_FIND))
        responder.pending(0xFF00, b"late")
        self.assertEqual(len(self.peer.sent), 3)

    def test_responses_wait_for_an_earlier_store_response(self) -> None:
        """A C-FIND behind a C-STORE still being committed answers only after the C-STORE-RSP (request order)."""
        store = dimse.CStoreRQ(1, CT_IMAGE, "1.2.3.4")
        self.service.pdata(pdvs(3, store, b"\x08\x00\x18\x00UI\x08\x001.2.3.4\x00"))
        self.service.pdata(pdvs(1, c_find(), IDENTIFIER))
        assert self.qr is not None
        self.qr.calls[0][3].pending(0xFF00, b"m")
        self.assertEqual(self.peer.sent, [])
        admission = type("Admission", (), {"status": 0, "comment": "", "spooled": None})()
        self.admissions[0].callback(admission)
        self.assertEqual([f for f, _, _ in self.peer.responses()], [0x8001, 0x8020])

    def test_cancel_fires_the_named_request_only_and_is_never_answered(self) -> None:
        """C-CANCEL-RQ naming the open request fires its ``cancelled``; one naming another ID is ignored (PS3.7 9.3.2.3)."""
        self.service.pdata(pdvs(1, c_find(), IDENTIFIER))
        assert self.qr is not None
        responder = self.qr.calls[0][3]
        self.service.pdata(pdvs(1, c_cancel(99)))
        self.assertFalse(responder.cancelled.called)
        self.service.pdata(pdvs(1, c_cancel(3)))
        self.assertTrue(responder.cancelled.called)
        self.assertEqual(self.peer.sent, [])
        responder.final(0xFE00)
        self.assertEqual(self.peer.responses(), [(0x8020, 3, 0xFE00)])
        self.assertEqual(self.peer.aborted, [])

    def test_association_end_cancels_open_requests(self) -> None:
        """When the association ends, every open request's ``cancelled`` fires (its handler stops the sources)."""
        self.service.pdata(pdvs(1, c_find(), IDENTIFIER))
        assert self.qr is not None
        responder = self.qr.calls[0][3]
        self.service.connection_lost()
        self.assertTrue(responder.cancelled.called)
        responder.final(0xFE00)
        self.assertEqual(self.peer.sent, [])

    def test_request_without_identifier_is_unable_to_process(self) -> None:
        """A C-FIND-RQ announcing no identifier is answered 0xC000 with an Error Comment, never handed over."""
        self.service.pdata(pdvs(1, c_find(has_dataset=False)))
        self.assertEqual(self.peer.responses(), [(0x8020, 3, 0xC000)])
        self.assertIn(dimse.Tag.ERROR_COMMENT, self.peer.sent[0][1])
        assert self.qr is not None
        self.assertEqual(self.qr.calls, [])

    def test_sop_class_other_than_the_context_is_refused(self) -> None:
        """A C-FIND-RQ naming another class than its context's is 0x0122; its identifier is swallowed."""
        self.service.pdata(pdvs(1, c_find(sop_class="1.2.840.10008.5.1.4.1.2.1.1"), IDENTIFIER))
        self.service.pdata(pdvs(1, c_find(message_id=4), IDENTIFIER))
        self.assertEqual(self.peer.responses(), [(0x8020, 3, 0x0122)])
        assert self.qr is not None
        self.assertEqual(len(self.qr.calls), 1)

    def test_without_a_qr_scp_requests_are_unrecognized(self) -> None:
        """With no Q/R SCP a C-FIND is answered 0x0211 as before issue 16 (HARDENING D21), its identifier swallowed."""
        self.qr = None
        self.service = self.make_service()
        self.service.pdata(pdvs(1, c_find(), IDENTIFIER))
        self.service.pdata(pdvs(1, c_find(message_id=4), IDENTIFIER))
        self.assertEqual(self.peer.responses(), [(0x8020, 3, 0x0211), (0x8020, 4, 0x0211)])
        self.assertEqual(self.peer.aborted, [])

    def test_identifier_over_the_cap_is_out_of_resources(self) -> None:
        """An identifier over ``max_identifier`` is swallowed and answered 0xA700 (PS3.4 C.4.1.1.4)."""
        self.service = self.make_service(max_identifier=16)
        self.service.pdata(pdvs(1, c_find(), b"\x00" * 40))
        self.assertEqual(self.peer.responses(), [(0x8020, 3, 0xA700)])
        assert self.qr is not None
        self.assertEqual(self.qr.calls, [])

    def test_duplicate_message_id_of_an_open_request_is_refused(self) -> None:
        """A second request reusing an open request's Message ID is answered 0x0210 after the first finishes."""
        self.service.pdata(pdvs(1, c_find(), IDENTIFIER))
        self.service.pdata(pdvs(1, c_find(), IDENTIFIER))
        assert self.qr is not None
        self.qr.calls[0][3].final(0)
        self.assertEqual(self.peer.responses(), [(0x8020, 3, 0x0000), (0x8020, 3, 0x0210)])

    def test_move_final_carries_counts_and_the_failed_uid_list(self) -> None:
        """A C-MOVE final response has the sub-operation counts and (0008,0058) in its data set (PS3.4 C.4.2.1.3)."""
        self.service.pdata(pdvs(5, request(dimse.CommandField.C_MOVE_RQ, 8, STUDY_MOVE, destination="STORE1"), IDENTIFIER))
        assert self.qr is not None
        [(verb, rq, _, responder)] = self.qr.calls
        self.assertEqual((verb, rq.move_destination), ("move", "STORE1"))
        responder.pending(0xFF00, counts=SubOperations(remaining=2, completed=1))
        responder.final(0xB000, SubOperations(completed=1, failed=2), "", ["1.2.3", "1.2.4"])
        [(_, pending, no_data), (_, final, data)] = self.peer.sent
        self.assertIsNone(no_data)
        self.assertEqual(struct.unpack("<H", pending[0x00001020])[0], 2)
        self.assertNotIn(0x00001020, final)
        self.assertEqual([struct.unpack("<H", final[t])[0] for t in (0x1021, 0x1022, 0x1023)], [1, 2, 0])
        self.assertEqual(data, encode_failed_uids(["1.2.3", "1.2.4"], IMPLICIT_LE))
        self.assertEqual(data, b"\x08\x00\x58\x00\x0c\x00\x00\x001.2.3\\1.2.4\x00")

    def test_failure_carries_the_offending_element_and_pending_ff01_is_kept(self) -> None:
        """A 0xFF01 pending leaves as 0xFF01; a 0xC000 final carries (0000,0901) as AT values beside (0000,0902) (PS3.7 9.1.2.1.6)."""
        self.service.pdata(pdvs(1, c_find(), IDENTIFIER))
        assert self.qr is not None
        responder = self.qr.calls[0][3]
        responder.pending(0xFF01, b"match")
        responder.final(0xC000, error_comment="no single (0020,000D)", offending=(0x0020000D, 0x0020000E))
        self.assertEqual(self.peer.responses(), [(0x8020, 3, 0xFF01), (0x8020, 3, 0xC000)])
        final = self.peer.sent[1][1]
        self.assertEqual(final[dimse.Tag.OFFENDING_ELEMENT], b"\x20\x00\x0d\x00\x20\x00\x0e\x00")
        self.assertNotIn(dimse.Tag.OFFENDING_ELEMENT, self.peer.sent[0][1])
        self.assertEqual(dimse.decode_command(dimse.encode_command(dimse.find_response(
            dimse.CFindRQ(3, STUDY_FIND), 0xC000, offending_element=(0x0020000D,)))).offending_element, (0x0020000D,))

    def test_store_response_is_routed_to_the_waiting_sub_operation(self) -> None:
        """A C-STORE-RSP answering our C-GET sub-operation fires its Deferred and is not a protocol violation."""
        waiting = self.service.expect_store_response(40)
        self.service.pdata(pdvs(3, dimse.CStoreRSP(40, CT_IMAGE, "1.2.3", 0xB000)))
        self.assertEqual(self.successResultOf(waiting), 0xB000)
        self.assertEqual(self.peer.aborted, [])


class FailedUidListTests(SynchronousTestCase):
    """:func:`gateway.receive.encode_failed_uids`."""

    def test_explicit_vr_keeps_what_fits_in_a_16_bit_length(self) -> None:
        """In Explicit VR LE the list is cut to whole UIDs within 65534 bytes (PS3.5 7.1.2)."""
        uids = [f"1.2.826.0.1.3680043.10.543.{n:030d}" for n in range(2000)]
        data = encode_failed_uids(uids, EXPLICIT_LE)
        self.assertEqual(data[4:6], b"UI")
        length = struct.unpack("<H", data[6:8])[0]
        self.assertLessEqual(length, 0xFFFE)
        self.assertEqual(len(data), 8 + length)
        self.assertTrue(data[8:].rstrip(b"\x00").decode().split("\\") == uids[: len(data[8:].rstrip(b"\x00").decode().split("\\"))])


class _FilePeer(_Peer):
    """A peer that also records files streamed (C-GET sub-operations)."""

    def __init__(self) -> None:
        super().__init__()
        self.files: list[tuple[int, str, int]] = []
        self.file_sent: Deferred[None] = Deferred()

    def send_file(self, context_id: int, path: str, offset: int) -> Deferred[None]:
        self.files.append((context_id, path, offset))
        return self.file_sent


class SubOperationTests(SynchronousTestCase):
    """``responder.store``: C-STORE sub-operations of a C-GET on the requester's association (PS3.4 C.4.3.3)."""

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.peer = _FilePeer()
        contexts = {
            1: AcceptedContext(1, "1.2.840.10008.5.1.4.1.2.2.3", EXPLICIT_LE, True, False),
            3: AcceptedContext(3, CT_IMAGE, EXPLICIT_LE, False, True),
            5: AcceptedContext(5, "1.2.840.10008.5.1.4.1.1.4", EXPLICIT_LE, True, False),
        }
        spool = Spool(
            self.tmp, SynchronousRunner(), implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME, max_instance_size=1 << 20,
        )
        self.qr = _QR()
        info = AssociationInfo("A1", "10.0.0.7:40000", "WS01", "DICOMGW", "dicom", contexts)
        self.service = StorageService(self.peer, info, spool, qr=self.qr)
        self.service.pdata(pdvs(1, request(dimse.CommandField.C_GET_RQ, 8, "1.2.840.10008.5.1.4.1.2.2.3"), IDENTIFIER))
        self.responder = self.qr.calls[0][3]

    def test_store_sends_a_c_store_rq_and_streams_the_file(self) -> None:
        """A C-STORE-RQ goes on the SCP-role context, the file streams from its data set offset, the RSP's status fires."""
        d = self.responder.store("/spool/x.dcm", CT_IMAGE, "1.2.3.9", EXPLICIT_LE, 132)
        [(context_id, elements, _)] = self.peer.sent
        self.assertEqual(context_id, 3)
        self.assertEqual(struct.unpack("<H", elements[dimse.Tag.COMMAND_FIELD])[0], 0x0001)
        self.assertEqual(elements[dimse.Tag.AFFECTED_SOP_INSTANCE_UID], _ui("1.2.3.9"))
        self.assertNotIn(dimse.Tag.MOVE_ORIGINATOR_AE_TITLE, elements)
        self.assertEqual(self.peer.files, [(3, "/spool/x.dcm", 132)])
        message_id = struct.unpack("<H", elements[dimse.Tag.MESSAGE_ID])[0]
        self.assertNoResult(d)
        self.peer.file_sent.callback(None)
        self.service.pdata(pdvs(3, dimse.CStoreRSP(message_id, CT_IMAGE, "1.2.3.9", 0x0000)))
        self.assertEqual(self.successResultOf(d), 0)

    def test_store_without_an_scp_role_context_fails_no_presentation_context(self) -> None:
        """A class the requester accepted only as SCU (or a syntax it did not accept) fails at once: a failed sub-operation."""
        from gateway.associate import NoPresentationContext

        self.failureResultOf(self.responder.store("/x", "1.2.840.10008.5.1.4.1.1.4", "1.2.3", EXPLICIT_LE, 0), NoPresentationContext)
        self.failureResultOf(self.responder.store("/x", CT_IMAGE, "1.2.3", IMPLICIT_LE, 0), NoPresentationContext)
        self.assertEqual(self.peer.sent, [])

    def test_association_end_fails_a_waiting_sub_operation(self) -> None:
        """A sub-operation still awaiting its C-STORE-RSP fails when the association ends (never hangs)."""
        d = self.responder.store("/x", CT_IMAGE, "1.2.3", EXPLICIT_LE, 0)
        self.service.connection_lost()
        self.failureResultOf(d)


class WritableTests(SynchronousTestCase):
    """Backpressure from the requester's association to the Q/R handlers."""

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        spool = Spool(
            self.tmp, SynchronousRunner(), implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME, max_instance_size=1 << 20,
        )
        self.qr = _QR()
        self.service = StorageService(_Peer(), INFO, spool, qr=self.qr)
        self.service.pdata(pdvs(1, c_find(), IDENTIFIER))
        self.responder = self.qr.calls[0][3]

    def test_writable_waits_while_the_write_buffer_is_full(self) -> None:
        """``writable`` fires at once normally, waits while writes are paused, and fires when they resume."""
        self.successResultOf(self.responder.writable())
        self.service.writes_paused()
        waiting = self.responder.writable()
        self.assertNoResult(waiting)
        self.service.writes_resumed()
        self.successResultOf(waiting)

    def test_association_end_wakes_the_waiters(self) -> None:
        """A handler waiting for the buffer to drain is woken when the association ends (it then sees the cancel)."""
        self.service.writes_paused()
        waiting = self.responder.writable()
        self.service.connection_lost()
        self.successResultOf(waiting)
        self.assertTrue(self.responder.cancelled.called)
