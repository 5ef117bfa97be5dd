"""Tests for :mod:`gateway.dimse.commands` (PS3.7 9.3, E.1; HARDENING D19-D21).

pydicom and pynetdicom serve as an independent encoder/decoder of the same
command sets, so the codec is checked against software we did not write.
"""

from __future__ import annotations

import struct
from io import BytesIO

from pydicom.dataset import Dataset
from pynetdicom import dsutils
from twisted.trial.unittest import SynchronousTestCase

from gateway.dimse.commands import (
    DATA_SET_ABSENT,
    CCancelRQ,
    CEchoRQ,
    CEchoRSP,
    CFindRQ,
    CFindRSP,
    CGetRQ,
    CGetRSP,
    CMoveRQ,
    CMoveRSP,
    CommandField,
    CStoreRQ,
    CStoreRSP,
    NActionRQ,
    NActionRSP,
    NEventReportRQ,
    NEventReportRSP,
    Tag,
    UnknownCommand,
    action_response,
    decode_command,
    echo_response,
    event_report_response,
    encode_command,
    find_response,
    get_response,
    is_request,
    move_response,
    qr_unrecognized_response,
    store_response,
    unrecognized_operation_response,
)
from gateway.dimse.errors import DIMSEProtocolError
from gateway.dimse.status import Status

CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
INSTANCE = "1.2.3.4.5.6.7"  # odd length: exercises NUL padding


def element(tag: int, value: bytes) -> bytes:
    """Encode one Implicit VR LE element by hand, for malformed inputs."""
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def us(value: int) -> bytes:
    """A US value."""
    return struct.pack("<H", value)


def store_rq_elements(**drop: bool) -> list[bytes]:
    """The elements of a C-STORE-RQ, minus those named in ``drop``, in order."""
    parts = {
        "class": element(Tag.AFFECTED_SOP_CLASS_UID, b"1.2.840.10008.5.1.4.1.1.2\x00"),
        "field": element(Tag.COMMAND_FIELD, us(0x0001)),
        "id": element(Tag.MESSAGE_ID, us(7)),
        "priority": element(Tag.PRIORITY, us(0)),
        "dstype": element(Tag.COMMAND_DATA_SET_TYPE, us(0x0001)),
        "instance": element(Tag.AFFECTED_SOP_INSTANCE_UID, b"1.2.3.4.5.6.7\x00"),
    }
    return [v for k, v in parts.items() if not drop.get(k)]


def pydicom_encode(ds: Dataset) -> bytes:
    """Encode a command Dataset with pynetdicom (Implicit VR LE), group length added."""
    body = dsutils.encode(ds, True, True)
    assert body is not None
    return element(Tag.COMMAND_GROUP_LENGTH, struct.pack("<I", len(body))) + body


def pydicom_decode(data: bytes) -> Dataset:
    """Decode a command set with pynetdicom."""
    return dsutils.decode(BytesIO(data), True, True)


class RoundTripTests(SynchronousTestCase):
    """encode_command and decode_command are inverses."""

    def test_echo_rq_round_trip(self) -> None:
        """A C-ECHO-RQ survives encode and decode unchanged."""
        cmd = CEchoRQ(1, VERIFICATION)
        self.assertEqual(decode_command(encode_command(cmd)), cmd)

    def test_echo_rsp_round_trip(self) -> None:
        """A C-ECHO-RSP survives encode and decode unchanged."""
        cmd = CEchoRSP(1, VERIFICATION, 0x0000)
        self.assertEqual(decode_command(encode_command(cmd)), cmd)

    def test_store_rq_round_trip(self) -> None:
        """A C-STORE-RQ with move originator fields survives encode and decode."""
        cmd = CStoreRQ(65535, CT, INSTANCE, priority=2, move_originator_ae_title="MOVER",
                       move_originator_message_id=9)
        self.assertEqual(decode_command(encode_command(cmd)), cmd)

    def test_store_rsp_round_trip(self) -> None:
        """A C-STORE-RSP with error comment and offending elements survives encode and decode."""
        cmd = CStoreRSP(3, CT, INSTANCE, 0xA900, error_comment="SOP class mismatch",
                        offending_element=(0x00080016, 0x00080018))
        self.assertEqual(decode_command(encode_command(cmd)), cmd)

    def test_encoding_has_even_length_and_correct_group_length(self) -> None:
        """The set is even-length and (0000,0000) counts every byte after it (PS3.7 9.1.5)."""
        data = encode_command(CStoreRQ(1, CT, INSTANCE))
        self.assertEqual(len(data) % 2, 0)
        self.assertEqual(data[:8], struct.pack("<HHI", 0, 0, 4))
        self.assertEqual(struct.unpack_from("<I", data, 8)[0], len(data) - 12)

    def test_uid_padded_with_nul_and_ae_with_space(self) -> None:
        """UIDs pad with NUL and AE titles with a space to even length (PS3.5 6.2)."""
        data = encode_command(CStoreRQ(1, CT, INSTANCE, move_originator_ae_title="ABC"))
        self.assertIn(b"1.2.3.4.5.6.7\x00", data)
        self.assertIn(b"ABC ", data)

    def test_error_comment_is_sanitised_and_capped(self) -> None:
        """An error comment loses backslashes and control characters and is cut to 64 chars."""
        rsp = CStoreRSP(1, CT, INSTANCE, 0xC000, error_comment="a\\b\nc" + "x" * 100)
        decoded = decode_command(encode_command(rsp))
        assert isinstance(decoded, CStoreRSP)
        assert decoded.error_comment is not None
        self.assertEqual(decoded.error_comment[:5], "a/b c")
        self.assertLessEqual(len(decoded.error_comment), 64)

    def test_message_id_out_of_range_is_value_error(self) -> None:
        """Encoding a message ID above 65535 is a caller error."""
        self.assertRaises(ValueError, encode_command, CEchoRQ(70000, VERIFICATION))

    def test_overlong_uid_is_value_error(self) -> None:
        """Encoding a UID over 64 bytes is a caller error."""
        self.assertRaises(ValueError, encode_command, CStoreRQ(1, CT, "1." * 40))


class InteropTests(SynchronousTestCase):
    """Our codec agrees with pydicom/pynetdicom on the same command sets."""

    def test_decode_pynetdicom_store_rq(self) -> None:
        """A C-STORE-RQ encoded by pydicom decodes to the expected dataclass."""
        ds = Dataset()
        ds.AffectedSOPClassUID = CT
        ds.CommandField = 0x0001
        ds.MessageID = 12
        ds.Priority = 1
        ds.CommandDataSetType = 0x0001
        ds.AffectedSOPInstanceUID = INSTANCE
        ds.MoveOriginatorApplicationEntityTitle = "ORIGIN"
        ds.MoveOriginatorMessageID = 4
        cmd = decode_command(pydicom_encode(ds))
        self.assertEqual(cmd, CStoreRQ(12, CT, INSTANCE, 1, "ORIGIN", 4, True))

    def test_pynetdicom_decodes_our_store_rsp(self) -> None:
        """pydicom reads our C-STORE-RSP with the values we put in."""
        data = encode_command(CStoreRSP(5, CT, INSTANCE, 0xB000, error_comment="coerced",
                                        offending_element=(0x00100010,)))
        ds = pydicom_decode(data)
        self.assertEqual(ds.CommandGroupLength, len(data) - 12)
        self.assertEqual(ds.CommandField, 0x8001)
        self.assertEqual(ds.MessageIDBeingRespondedTo, 5)
        self.assertEqual(ds.CommandDataSetType, DATA_SET_ABSENT)
        self.assertEqual(ds.Status, 0xB000)
        self.assertEqual(ds.AffectedSOPInstanceUID, INSTANCE)
        self.assertEqual(ds.ErrorComment, "coerced")
        self.assertEqual(ds.OffendingElement, 0x00100010)

    def test_our_store_rq_matches_pydicom_bytes(self) -> None:
        """Our C-STORE-RQ bytes equal pydicom's encoding of the same elements."""
        ds = Dataset()
        ds.AffectedSOPClassUID = CT
        ds.CommandField = 0x0001
        ds.MessageID = 1
        ds.Priority = 0
        ds.CommandDataSetType = 0x0001
        ds.AffectedSOPInstanceUID = INSTANCE
        self.assertEqual(encode_command(CStoreRQ(1, CT, INSTANCE)), pydicom_encode(ds))


class DecodeTolerance(SynchronousTestCase):
    """Deliberate tolerance that keeps old modalities working."""

    def test_missing_group_length_is_accepted(self) -> None:
        """A command set without (0000,0000) still decodes."""
        cmd = decode_command(b"".join(store_rq_elements()))
        self.assertIsInstance(cmd, CStoreRQ)

    def test_wrong_group_length_is_ignored(self) -> None:
        """A wrong (0000,0000) value is ignored: the PDV framing delimits the set."""
        data = element(0, struct.pack("<I", 3)) + b"".join(store_rq_elements())
        self.assertIsInstance(decode_command(data), CStoreRQ)

    def test_missing_sop_class_decodes_as_empty(self) -> None:
        """A C-STORE-RQ without Affected SOP Class UID decodes with "" so the SCP can answer 0x0122."""
        cmd = decode_command(b"".join(store_rq_elements(**{"class": True})))
        assert isinstance(cmd, CStoreRQ)
        self.assertEqual(cmd.affected_sop_class_uid, "")

    def test_store_rq_without_dataset_decodes(self) -> None:
        """A C-STORE-RQ announcing no data set decodes with has_dataset False (HARDENING D19)."""
        parts = store_rq_elements(dstype=True)
        parts.insert(4, element(Tag.COMMAND_DATA_SET_TYPE, us(0x0101)))
        cmd = decode_command(b"".join(parts))
        self.assertFalse(cmd.has_dataset)

    def test_any_value_but_0101_means_dataset(self) -> None:
        """CommandDataSetType 0x0000 or 0xFEFE both announce a data set (PS3.7 E.1)."""
        for value in (0x0000, 0xFEFE):
            parts = store_rq_elements(dstype=True)
            parts.insert(4, element(Tag.COMMAND_DATA_SET_TYPE, us(value)))
            self.assertTrue(decode_command(b"".join(parts)).has_dataset)

    def test_unknown_group_0000_tag_is_ignored(self) -> None:
        """A retired (0000,0001) CommandLengthToEnd does not stop decoding."""
        data = element(0x00000001, struct.pack("<I", 0)) + b"".join(store_rq_elements())
        self.assertIsInstance(decode_command(data), CStoreRQ)


class DecodeErrors(SynchronousTestCase):
    """Malformed command sets raise DIMSEProtocolError (HARDENING D20)."""

    def assert_protocol_error(self, data: bytes, fragment: str) -> None:
        """Decoding ``data`` raises DIMSEProtocolError whose message contains ``fragment``."""
        exc = self.assertRaises(DIMSEProtocolError, decode_command, data)
        self.assertIn(fragment, str(exc))

    def test_truncated_header(self) -> None:
        """Fewer than 8 bytes left for an element header is an error."""
        self.assert_protocol_error(b"".join(store_rq_elements()) + b"\x00\x00\x00", "truncated")

    def test_truncated_value(self) -> None:
        """A value longer than the remaining bytes is an error."""
        data = b"".join(store_rq_elements()) + struct.pack("<HHI", 0, 0x1001, 100) + b"1.2"
        self.assert_protocol_error(data, "exceeds")

    def test_huge_length_is_not_allocated(self) -> None:
        """A length of 0xFFFFFFFE is refused before any slice is made."""
        data = struct.pack("<HHI", 0, 2, 0xFFFFFFFE) + b"x"
        self.assert_protocol_error(data, "exceeds")

    def test_undefined_length(self) -> None:
        """Undefined length is never valid in a command set."""
        self.assert_protocol_error(struct.pack("<HHI", 0, 2, 0xFFFFFFFF), "undefined length")

    def test_tag_outside_group_0000(self) -> None:
        """A data set element inside a command set is an error."""
        data = b"".join(store_rq_elements()) + element(0x00080016, b"1.2\x00")
        self.assert_protocol_error(data, "outside group 0000")

    def test_duplicate_tag(self) -> None:
        """The same element twice is an error (two readers could disagree)."""
        parts = store_rq_elements()
        parts.insert(2, parts[1])
        self.assert_protocol_error(b"".join(parts), "duplicate")

    def test_non_ascending_tags(self) -> None:
        """Elements out of ascending order are an error."""
        parts = store_rq_elements()
        parts[1], parts[2] = parts[2], parts[1]
        self.assert_protocol_error(b"".join(parts), "ascending")

    def test_missing_command_field(self) -> None:
        """Without (0000,0100) the message cannot be dispatched."""
        self.assert_protocol_error(b"".join(store_rq_elements(field=True)), "CommandField")

    def test_missing_data_set_type(self) -> None:
        """Without (0000,0800) the message cannot be framed."""
        self.assert_protocol_error(b"".join(store_rq_elements(dstype=True)), "CommandDataSetType")

    def test_missing_message_id_on_request(self) -> None:
        """A request without MessageID cannot be answered."""
        self.assert_protocol_error(b"".join(store_rq_elements(id=True)), "MessageID")

    def test_missing_message_id_being_responded_to_on_response(self) -> None:
        """A response without MessageIDBeingRespondedTo cannot be correlated."""
        data = (
            element(Tag.COMMAND_FIELD, us(0x8001))
            + element(Tag.COMMAND_DATA_SET_TYPE, us(0x0101))
            + element(Tag.STATUS, us(0))
        )
        self.assert_protocol_error(data, "MessageIDBeingRespondedTo")

    def test_missing_status_on_response(self) -> None:
        """A C-STORE-RSP without Status cannot be interpreted."""
        data = (
            element(Tag.COMMAND_FIELD, us(0x8001))
            + element(Tag.MESSAGE_ID_BEING_RESPONDED_TO, us(1))
            + element(Tag.COMMAND_DATA_SET_TYPE, us(0x0101))
        )
        self.assert_protocol_error(data, "Status")

    def test_missing_affected_sop_instance_uid_on_store_rq(self) -> None:
        """A C-STORE-RQ without the instance UID is an error (HARDENING D20)."""
        self.assert_protocol_error(b"".join(store_rq_elements(instance=True)), "AffectedSOPInstanceUID")

    def test_empty_affected_sop_instance_uid_on_store_rq(self) -> None:
        """An instance UID of only padding counts as missing."""
        parts = store_rq_elements(instance=True)
        parts.append(element(Tag.AFFECTED_SOP_INSTANCE_UID, b"\x00\x00"))
        self.assert_protocol_error(b"".join(parts), "AffectedSOPInstanceUID")

    def test_us_with_wrong_length(self) -> None:
        """A US element that is not 2 bytes long is an error."""
        parts = store_rq_elements(id=True)
        parts.insert(2, element(Tag.MESSAGE_ID, b"\x01\x00\x00\x00"))
        self.assert_protocol_error(b"".join(parts), "MESSAGE_ID")

    def test_empty_input(self) -> None:
        """An empty command set has no Command Field."""
        self.assert_protocol_error(b"", "CommandField")


class UnknownCommandTests(SynchronousTestCase):
    """Commands this module does not type are kept raw and answered 0x0211 (HARDENING D21)."""

    def get_rq(self) -> bytes:
        """An N-GET-RQ command set (not implemented by the gateway)."""
        return (
            element(Tag.REQUESTED_SOP_CLASS_UID, b"1.2.840.10008.5.1.1.16\x00")
            + element(Tag.COMMAND_FIELD, us(0x0110))
            + element(Tag.MESSAGE_ID, us(3))
            + element(Tag.COMMAND_DATA_SET_TYPE, us(0x0000))
            + element(Tag.REQUESTED_SOP_INSTANCE_UID, b"1.2.3\x00")
        )

    def test_n_get_rq_decodes_as_unknown(self) -> None:
        """An N-GET-RQ is kept raw, with its message ID and data set flag."""
        cmd = decode_command(self.get_rq())
        assert isinstance(cmd, UnknownCommand)
        self.assertEqual((cmd.command_field, cmd.message_id, cmd.has_dataset), (0x0110, 3, True))
        self.assertEqual(set(cmd.elements), {Tag.REQUESTED_SOP_CLASS_UID, Tag.REQUESTED_SOP_INSTANCE_UID})

    def test_unrecognized_operation_response(self) -> None:
        """The answer to an unknown request is 0x0211 with the response Command Field."""
        data = (
            element(Tag.AFFECTED_SOP_CLASS_UID, b"1.2.840.10008.5.1.4.1.2.1.1\x00")
            + element(Tag.COMMAND_FIELD, us(0x0ABC))
            + element(Tag.MESSAGE_ID, us(3))
            + element(Tag.COMMAND_DATA_SET_TYPE, us(0x0101))
        )
        cmd = decode_command(data)
        assert isinstance(cmd, UnknownCommand)
        rsp = unrecognized_operation_response(cmd)
        assert rsp is not None
        ds = pydicom_decode(encode_command(rsp))
        self.assertEqual(ds.CommandField, 0x8ABC)
        self.assertEqual(ds.MessageIDBeingRespondedTo, 3)
        self.assertEqual(ds.Status, Status.UNRECOGNIZED_OPERATION)
        self.assertEqual(ds.CommandDataSetType, 0x0101)
        self.assertEqual(ds.AffectedSOPClassUID, "1.2.840.10008.5.1.4.1.2.1.1")

    def test_unknown_response_gets_no_answer(self) -> None:
        """An unknown response (bit 15 set) is never answered."""
        cmd = UnknownCommand(0x8110, 8, {Tag.STATUS: us(0)})
        self.assertIsNone(unrecognized_operation_response(cmd))

    def test_unknown_command_round_trip(self) -> None:
        """An UnknownCommand re-encodes to an equal decoded value."""
        cmd = decode_command(self.get_rq())
        self.assertEqual(decode_command(encode_command(cmd)), cmd)

    def test_is_request(self) -> None:
        """Requests have bit 15 clear, except C-CANCEL-RQ."""
        self.assertTrue(is_request(CommandField.C_STORE_RQ))
        self.assertFalse(is_request(CommandField.C_STORE_RSP))
        self.assertFalse(is_request(CommandField.C_CANCEL_RQ))


class ResponseHelperTests(SynchronousTestCase):
    """echo_response and store_response echo the request's identifiers."""

    def test_echo_response(self) -> None:
        """The C-ECHO-RSP answers the request's message ID with success."""
        self.assertEqual(echo_response(CEchoRQ(4, VERIFICATION)), CEchoRSP(4, VERIFICATION, 0))

    def test_store_response(self) -> None:
        """The C-STORE-RSP echoes message ID, SOP class and instance (PS3.7 9.3.1.2)."""
        rsp = store_response(CStoreRQ(9, CT, INSTANCE), Status.OUT_OF_RESOURCES, error_comment="disk full")
        self.assertEqual(rsp, CStoreRSP(9, CT, INSTANCE, 0xA700, "disk full"))


STGCMT = "1.2.840.10008.1.20.1"
STGCMT_INSTANCE = "1.2.840.10008.1.20.1.1"


class DimseNTests(SynchronousTestCase):
    """N-ACTION and N-EVENT-REPORT (PS3.7 10.3.4, 10.3.1) decode as typed commands."""

    def test_action_rq_round_trip(self) -> None:
        """An N-ACTION-RQ survives encode and decode unchanged."""
        cmd = NActionRQ(7, STGCMT, STGCMT_INSTANCE, 1)
        self.assertEqual(decode_command(encode_command(cmd)), cmd)

    def test_action_rsp_round_trip(self) -> None:
        """An N-ACTION-RSP with comment and type ID survives encode and decode."""
        cmd = NActionRSP(7, 0x0115, STGCMT, STGCMT_INSTANCE, 1, False, "bad UID")
        self.assertEqual(decode_command(encode_command(cmd)), cmd)

    def test_event_report_rq_round_trip(self) -> None:
        """An N-EVENT-REPORT-RQ survives encode and decode unchanged."""
        cmd = NEventReportRQ(9, STGCMT, STGCMT_INSTANCE, 2)
        self.assertEqual(decode_command(encode_command(cmd)), cmd)

    def test_event_report_rsp_round_trip(self) -> None:
        """A minimal N-EVENT-REPORT-RSP (status only) survives encode and decode."""
        cmd = NEventReportRSP(9, 0x0000)
        self.assertEqual(decode_command(encode_command(cmd)), cmd)

    def test_decode_pynetdicom_action_rq(self) -> None:
        """An N-ACTION-RQ encoded by pydicom decodes with the requested class, instance and type."""
        ds = Dataset()
        ds.RequestedSOPClassUID = STGCMT
        ds.CommandField = 0x0130
        ds.MessageID = 3
        ds.CommandDataSetType = 0x0001
        ds.RequestedSOPInstanceUID = STGCMT_INSTANCE
        ds.ActionTypeID = 1
        self.assertEqual(decode_command(pydicom_encode(ds)), NActionRQ(3, STGCMT, STGCMT_INSTANCE, 1, True))

    def test_our_action_rq_matches_pydicom_bytes(self) -> None:
        """Our N-ACTION-RQ bytes equal pydicom's encoding of the same elements."""
        ds = Dataset()
        ds.RequestedSOPClassUID = STGCMT
        ds.CommandField = 0x0130
        ds.MessageID = 3
        ds.CommandDataSetType = 0x0001
        ds.RequestedSOPInstanceUID = STGCMT_INSTANCE
        ds.ActionTypeID = 1
        self.assertEqual(encode_command(NActionRQ(3, STGCMT, STGCMT_INSTANCE, 1)), pydicom_encode(ds))

    def test_our_event_report_rq_matches_pydicom_bytes(self) -> None:
        """Our N-EVENT-REPORT-RQ bytes equal pydicom's encoding of the same elements."""
        ds = Dataset()
        ds.AffectedSOPClassUID = STGCMT
        ds.CommandField = 0x0100
        ds.MessageID = 4
        ds.CommandDataSetType = 0x0001
        ds.AffectedSOPInstanceUID = STGCMT_INSTANCE
        ds.EventTypeID = 2
        self.assertEqual(encode_command(NEventReportRQ(4, STGCMT, STGCMT_INSTANCE, 2)), pydicom_encode(ds))

    def test_pynetdicom_decodes_our_event_report_rsp(self) -> None:
        """pydicom reads our N-EVENT-REPORT-RSP with the values we put in."""
        rsp = event_report_response(NEventReportRQ(4, STGCMT, STGCMT_INSTANCE, 1), 0x0110, "journal down")
        ds = pydicom_decode(encode_command(rsp))
        self.assertEqual(ds.CommandField, 0x8100)
        self.assertEqual(ds.MessageIDBeingRespondedTo, 4)
        self.assertEqual(ds.Status, 0x0110)
        self.assertEqual(ds.AffectedSOPClassUID, STGCMT)
        self.assertEqual(ds.AffectedSOPInstanceUID, STGCMT_INSTANCE)
        self.assertEqual(ds.EventTypeID, 1)
        self.assertEqual(ds.ErrorComment, "journal down")
        self.assertEqual(ds.CommandDataSetType, DATA_SET_ABSENT)

    def test_action_rq_missing_identifiers_decodes_for_an_answer(self) -> None:
        """An N-ACTION-RQ without class, instance and type decodes as ""/""/0 so the SCP can answer."""
        data = (
            element(Tag.COMMAND_FIELD, us(0x0130))
            + element(Tag.MESSAGE_ID, us(5))
            + element(Tag.COMMAND_DATA_SET_TYPE, us(0x0001))
        )
        self.assertEqual(decode_command(data), NActionRQ(5, "", "", 0, True))

    def test_event_report_rq_missing_identifiers_decodes_for_an_answer(self) -> None:
        """An N-EVENT-REPORT-RQ without class, instance and type decodes as ""/""/0."""
        data = (
            element(Tag.COMMAND_FIELD, us(0x0100))
            + element(Tag.MESSAGE_ID, us(5))
            + element(Tag.COMMAND_DATA_SET_TYPE, us(0x0101))
        )
        self.assertEqual(decode_command(data), NEventReportRQ(5, "", "", 0, False))

    def test_action_rq_without_message_id_is_protocol_error(self) -> None:
        """An N-ACTION-RQ without MessageID cannot be answered at all (HARDENING D20)."""
        data = element(Tag.COMMAND_FIELD, us(0x0130)) + element(Tag.COMMAND_DATA_SET_TYPE, us(0x0001))
        self.assertIn("MessageID", str(self.assertRaises(DIMSEProtocolError, decode_command, data)))

    def test_action_rsp_without_status_is_protocol_error(self) -> None:
        """An N-ACTION-RSP without Status cannot be interpreted."""
        data = (
            element(Tag.COMMAND_FIELD, us(0x8130))
            + element(Tag.MESSAGE_ID_BEING_RESPONDED_TO, us(1))
            + element(Tag.COMMAND_DATA_SET_TYPE, us(0x0101))
        )
        self.assertIn("Status", str(self.assertRaises(DIMSEProtocolError, decode_command, data)))

    def test_event_report_rsp_without_status_is_protocol_error(self) -> None:
        """An N-EVENT-REPORT-RSP without Status cannot be interpreted."""
        data = (
            element(Tag.COMMAND_FIELD, us(0x8100))
            + element(Tag.MESSAGE_ID_BEING_RESPONDED_TO, us(1))
            + element(Tag.COMMAND_DATA_SET_TYPE, us(0x0101))
        )
        self.assertIn("Status", str(self.assertRaises(DIMSEProtocolError, decode_command, data)))

    def test_other_dimse_n_requests_stay_unknown_and_get_0211(self) -> None:
        """N-GET, N-SET, N-CREATE and N-DELETE requests are still answered 0x0211 (HARDENING D21)."""
        for field_value in (0x0110, 0x0120, 0x0140, 0x0150):
            data = (
                element(Tag.AFFECTED_SOP_CLASS_UID, b"1.2.3\x00")
                + element(Tag.COMMAND_FIELD, us(field_value))
                + element(Tag.MESSAGE_ID, us(2))
                + element(Tag.COMMAND_DATA_SET_TYPE, us(0x0101))
            )
            cmd = decode_command(data)
            assert isinstance(cmd, UnknownCommand), hex(field_value)
            rsp = unrecognized_operation_response(cmd)
            assert rsp is not None
            self.assertEqual((rsp.command_field, rsp.elements[Tag.STATUS]), (field_value | 0x8000, us(0x0211)))

    def test_action_response_echoes_request(self) -> None:
        """action_response echoes class, instance and action type, with the comment (PS3.7 10.3.4.2)."""
        rsp = action_response(NActionRQ(8, STGCMT, STGCMT_INSTANCE, 1), Status.NOT_AUTHORIZED, "not in modalities")
        self.assertEqual(rsp, NActionRSP(8, 0x0124, STGCMT, STGCMT_INSTANCE, 1, False, "not in modalities"))

    def test_action_response_to_empty_request_omits_identifiers(self) -> None:
        """Identifiers the request lacked are left out of the response, and no empty comment is sent."""
        rsp = action_response(NActionRQ(8, "", "", 0), Status.NO_SUCH_SOP_CLASS)
        self.assertEqual(rsp, NActionRSP(8, 0x0118))
        ds = pydicom_decode(encode_command(rsp))
        self.assertNotIn("AffectedSOPClassUID", ds)
        self.assertNotIn("ErrorComment", ds)
        self.assertNotIn("ActionTypeID", ds)

    def test_event_report_response_echoes_request(self) -> None:
        """event_report_response echoes class, instance and event type (PS3.7 10.3.1.2)."""
        rsp = event_report_response(NEventReportRQ(2, STGCMT, STGCMT_INSTANCE, 2), Status.SUCCESS)
        self.assertEqual(rsp, NEventReportRSP(2, 0, STGCMT, STGCMT_INSTANCE, 2))


PATIENT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"


class QueryRetrieveCommandTests(SynchronousTestCase):
    """C-FIND, C-MOVE, C-GET and C-CANCEL (PS3.7 9.3.2-9.3.4), checked against pydicom's encoder."""

    def test_find_rq_round_trip(self) -> None:
        """A C-FIND-RQ survives encode and decode unchanged."""
        cmd = CFindRQ(3, STUDY_FIND, priority=1)
        self.assertEqual(decode_command(encode_command(cmd)), cmd)

    def test_move_rq_round_trip(self) -> None:
        """A C-MOVE-RQ with an odd-length destination survives encode and decode."""
        cmd = CMoveRQ(4, STUDY_MOVE, "STORESCP", priority=2)
        self.assertEqual(decode_command(encode_command(cmd)), cmd)
        cmd = CMoveRQ(4, STUDY_MOVE, "ODD")
        self.assertEqual(decode_command(encode_command(cmd)), cmd)

    def test_get_rq_round_trip(self) -> None:
        """A C-GET-RQ survives encode and decode unchanged."""
        cmd = CGetRQ(5, STUDY_GET)
        self.assertEqual(decode_command(encode_command(cmd)), cmd)

    def test_responses_round_trip(self) -> None:
        """C-FIND/C-MOVE/C-GET responses with counts, comment and offending element survive unchanged."""
        for cmd in (
            CFindRSP(3, 0xFF00, STUDY_FIND, has_dataset=True),
            CFindRSP(3, 0xC000, STUDY_FIND, error_comment="bad level", offending_element=(0x00080052,)),
            CMoveRSP(4, 0xFF00, STUDY_MOVE, remaining=10, completed=2, failed=1, warning=0),
            CMoveRSP(4, 0xB000, STUDY_MOVE, completed=2, failed=1, warning=0, has_dataset=True),
            CGetRSP(5, 0xFE00, STUDY_GET, remaining=3, completed=0, failed=0, warning=0),
            CGetRSP(5, 0xA801),
        ):
            self.assertEqual(decode_command(encode_command(cmd)), cmd)

    def test_cancel_round_trip_and_no_answer(self) -> None:
        """C-CANCEL-RQ is identified by MessageIDBeingRespondedTo (PS3.7 9.3.2.3)."""
        data = (
            element(Tag.COMMAND_FIELD, us(0x0FFF))
            + element(Tag.MESSAGE_ID_BEING_RESPONDED_TO, us(8))
            + element(Tag.COMMAND_DATA_SET_TYPE, us(0x0101))
        )
        self.assertEqual(decode_command(data), CCancelRQ(8))
        self.assertEqual(decode_command(encode_command(CCancelRQ(8))), CCancelRQ(8))
        self.assertEqual(encode_command(CCancelRQ(8)), element(Tag.COMMAND_GROUP_LENGTH, struct.pack("<I", len(data))) + data)

    def test_decode_pynetdicom_find_rq(self) -> None:
        """A C-FIND-RQ encoded by pydicom decodes with class, message ID, priority and an identifier."""
        ds = Dataset()
        ds.AffectedSOPClassUID = PATIENT_FIND
        ds.CommandField = 0x0020
        ds.MessageID = 3
        ds.Priority = 0
        ds.CommandDataSetType = 0x0000
        self.assertEqual(decode_command(pydicom_encode(ds)), CFindRQ(3, PATIENT_FIND, 0, True))

    def test_our_move_rq_matches_pydicom_bytes(self) -> None:
        """Our C-MOVE-RQ bytes equal pydicom's encoding of the same elements."""
        ds = Dataset()
        ds.AffectedSOPClassUID = STUDY_MOVE
        ds.CommandField = 0x0021
        ds.MessageID = 7
        ds.MoveDestination = "STORESCP"
        ds.Priority = 0
        ds.CommandDataSetType = 0x0001
        self.assertEqual(encode_command(CMoveRQ(7, STUDY_MOVE, "STORESCP")), pydicom_encode(ds))

    def test_our_find_and_get_rq_match_pydicom_bytes(self) -> None:
        """Our C-FIND-RQ and C-GET-RQ bytes equal pydicom's encoding of the same elements."""
        for field_value, cmd in ((0x0020, CFindRQ(2, STUDY_FIND)), (0x0010, CGetRQ(2, STUDY_GET))):
            ds = Dataset()
            ds.AffectedSOPClassUID = cmd.affected_sop_class_uid
            ds.CommandField = field_value
            ds.MessageID = 2
            ds.Priority = 0
            ds.CommandDataSetType = 0x0001
            self.assertEqual(encode_command(cmd), pydicom_encode(ds))

    def test_pynetdicom_decodes_our_move_rsp_counts(self) -> None:
        """pydicom reads the four sub-operation counts (0000,1020)-(0000,1023) of our C-MOVE-RSP."""
        rsp = move_response(CMoveRQ(4, STUDY_MOVE, "DEST"), 0xFF00, 197, 2, 1, 0)
        ds = pydicom_decode(encode_command(rsp))
        self.assertEqual(ds.CommandField, 0x8021)
        self.assertEqual(ds.MessageIDBeingRespondedTo, 4)
        self.assertEqual(ds.AffectedSOPClassUID, STUDY_MOVE)
        self.assertEqual(ds.Status, 0xFF00)
        self.assertEqual(
            (
                ds.NumberOfRemainingSuboperations,
                ds.NumberOfCompletedSuboperations,
                ds.NumberOfFailedSuboperations,
                ds.NumberOfWarningSuboperations,
            ),
            (197, 2, 1, 0),
        )
        self.assertEqual(ds.CommandDataSetType, DATA_SET_ABSENT)

    def test_decode_pynetdicom_get_rsp(self) -> None:
        """A C-GET-RSP encoded by pydicom decodes with counts, comment and the identifier flag."""
        ds = Dataset()
        ds.AffectedSOPClassUID = STUDY_GET
        ds.CommandField = 0x8010
        ds.MessageIDBeingRespondedTo = 5
        ds.CommandDataSetType = 0x0000
        ds.Status = 0xB000
        ds.ErrorComment = "some failed"
        ds.NumberOfCompletedSuboperations = 3
        ds.NumberOfFailedSuboperations = 1
        ds.NumberOfWarningSuboperations = 0
        self.assertEqual(
            decode_command(pydicom_encode(ds)),
            CGetRSP(5, 0xB000, STUDY_GET, None, 3, 1, 0, "some failed", None, True),
        )

    def test_find_response_builder(self) -> None:
        """find_response echoes message ID and class; a pending match carries an identifier."""
        rq = CFindRQ(9, STUDY_FIND)
        self.assertEqual(find_response(rq, 0xFF00, True), CFindRSP(9, 0xFF00, STUDY_FIND, has_dataset=True))
        rsp = find_response(rq, 0xA700, error_comment="max_results 10000 reached")
        ds = pydicom_decode(encode_command(rsp))
        self.assertEqual((ds.Status, ds.ErrorComment, ds.CommandDataSetType), (0xA700, "max_results 10000 reached", 0x0101))

    def test_get_response_saturates_large_counts(self) -> None:
        """A count above 65535 saturates instead of making the response unencodable (US, PS3.7 E.1)."""
        rsp = get_response(CGetRQ(1, STUDY_GET), 0xFF00, remaining=70000, completed=0, failed=0, warning=0)
        self.assertEqual(rsp.remaining, 0xFFFF)
        self.assertEqual(decode_command(encode_command(rsp)), rsp)

    def test_missing_class_and_destination_decode_for_an_answer(self) -> None:
        """A C-MOVE-RQ without class, priority and destination decodes as ""/0/"" so the SCP can answer 0xA801."""
        data = (
            element(Tag.COMMAND_FIELD, us(0x0021))
            + element(Tag.MESSAGE_ID, us(6))
            + element(Tag.COMMAND_DATA_SET_TYPE, us(0x0001))
        )
        self.assertEqual(decode_command(data), CMoveRQ(6, "", "", 0, True))

    def test_qr_response_without_status_is_protocol_error(self) -> None:
        """C-FIND/C-MOVE/C-GET responses without Status are refused (HARDENING D20)."""
        for field_value in (0x8020, 0x8021, 0x8010):
            data = (
                element(Tag.COMMAND_FIELD, us(field_value))
                + element(Tag.MESSAGE_ID_BEING_RESPONDED_TO, us(6))
                + element(Tag.COMMAND_DATA_SET_TYPE, us(0x0101))
            )
            self.assertRaises(DIMSEProtocolError, decode_command, data)

    def test_qr_request_without_message_id_is_protocol_error(self) -> None:
        """A C-FIND-RQ without MessageID cannot be answered and is refused (HARDENING D20)."""
        data = element(Tag.COMMAND_FIELD, us(0x0020)) + element(Tag.COMMAND_DATA_SET_TYPE, us(0x0001))
        self.assertRaises(DIMSEProtocolError, decode_command, data)

    def test_bad_count_length_is_protocol_error(self) -> None:
        """A sub-operation count that is not 2 bytes is refused."""
        data = (
            element(Tag.COMMAND_FIELD, us(0x8021))
            + element(Tag.MESSAGE_ID_BEING_RESPONDED_TO, us(6))
            + element(Tag.COMMAND_DATA_SET_TYPE, us(0x0101))
            + element(Tag.STATUS, us(0xFF00))
            + element(Tag.NUMBER_OF_REMAINING_SUB_OPERATIONS, b"\x01\x00\x00\x00")
        )
        self.assertRaises(DIMSEProtocolError, decode_command, data)

    def test_qr_unrecognized_response_keeps_the_0211_answer(self) -> None:
        """Without a Q/R handler, a C-FIND-RQ is still answered 0x0211 with the response Command Field."""
        for rq, field_value in (
            (CFindRQ(3, PATIENT_FIND), 0x8020),
            (CMoveRQ(3, STUDY_MOVE, "X"), 0x8021),
            (CGetRQ(3, STUDY_GET), 0x8010),
        ):
            ds = pydicom_decode(encode_command(qr_unrecognized_response(rq)))
            self.assertEqual((ds.CommandField, ds.MessageIDBeingRespondedTo, ds.Status), (field_value, 3, 0x0211))
            self.assertEqual(ds.AffectedSOPClassUID, rq.affected_sop_class_uid)
