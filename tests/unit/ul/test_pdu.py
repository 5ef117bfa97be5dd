"""The PDU codec (PS3.8 9.3): fixtures, round trips, malformed input, and pynetdicom interop."""

from __future__ import annotations

import warnings

from twisted.trial.unittest import SynchronousTestCase

from gateway.ul.errors import AbortReason, PDUDecodeError
from gateway.ul.items import UserInformation
from gateway.ul.pdu import (
    PDU,
    PDV,
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    PresentationContextAC,
    PresentationContextRQ,
    decode,
    decode_pdata,
    encode,
    pdata_pdu,
)
from tests.support.fixtures_pdu import (
    ALL_FIXTURES,
    APPLICATION_CONTEXT_ITEM,
    CT_IMAGE_STORAGE,
    ECHOSCU_A_ASSOCIATE_RQ,
    ECHOSCU_A_ASSOCIATE_RQ_PDU,
    ECHOSCU_RESERVED_FF_OFFSET,
    EXPLICIT_VR_LE,
    FULL_USER_INFORMATION,
    IMPLICIT_VR_LE,
    STORESCP_P_DATA_TF,
    VERIFICATION,
    associate_rq_body,
    presentation_context_rq_item,
    user_information_item,
)

INVALID = AbortReason.INVALID_PDU_PARAMETER_VALUE


def _rq(**overrides: object) -> AAssociateRQ:
    """An A-ASSOCIATE-RQ with one verification context, fields overridable."""
    fields: dict[str, object] = dict(
        called_ae_title="GATEWAY",
        calling_ae_title="CT01",
        presentation_contexts=(PresentationContextRQ(1, VERIFICATION, (IMPLICIT_VR_LE,)),),
        user_information=UserInformation(max_length=16384),
    )
    fields.update(overrides)
    return AAssociateRQ(**fields)  # type: ignore[arg-type]


def _round_trip(pdu: PDU) -> PDU:
    """Encode, check the header's length field, and decode the body."""
    raw = encode(pdu)
    assert int.from_bytes(raw[2:6], "big") == len(raw) - 6
    return decode(raw[0], raw[6:])


def _item(item_type: int, content: bytes) -> bytes:
    """Frame a variable item (type, reserved, 2-byte length, content)."""
    return bytes((item_type, 0)) + len(content).to_bytes(2, "big") + content


class FixtureTests(SynchronousTestCase):
    """The annotated byte fixtures decode to their documented values and encode back."""

    def test_every_fixture_decodes_to_its_documented_value(self) -> None:
        """Each fixture's body decodes to the dataclass written beside it."""
        for name, raw, expected in ALL_FIXTURES:
            self.assertEqual(decode(raw[0], raw[6:]), expected, name)

    def test_every_fixture_but_the_echoscu_rq_encodes_byte_for_byte(self) -> None:
        """Our encoder reproduces DCMTK's and the hand-made bytes exactly."""
        for name, raw, expected in ALL_FIXTURES:
            if raw is ECHOSCU_A_ASSOCIATE_RQ:
                continue
            self.assertEqual(encode(expected), raw, name)

    def test_echoscu_rq_differs_only_in_the_reserved_byte_dcmtk_sets(self) -> None:
        """DCMTK sends 0xFF in a reserved byte, which we ignore on receipt and write as 0x00."""
        self.assertEqual(ECHOSCU_A_ASSOCIATE_RQ[ECHOSCU_RESERVED_FF_OFFSET], 0xFF)
        expected = bytearray(ECHOSCU_A_ASSOCIATE_RQ)
        expected[ECHOSCU_RESERVED_FF_OFFSET] = 0
        self.assertEqual(encode(ECHOSCU_A_ASSOCIATE_RQ_PDU), bytes(expected))

    def test_storescp_response_carries_one_command_pdv(self) -> None:
        """The captured C-ECHO-RSP is one PDV, command and last fragment, on context 1."""
        pdu = decode(STORESCP_P_DATA_TF[0], STORESCP_P_DATA_TF[6:])
        assert isinstance(pdu, PDataTF)
        (pdv,) = pdu.pdvs
        self.assertEqual((pdv.context_id, pdv.is_command, pdv.is_last, len(pdv.data)), (1, True, True, 78))


class RoundTripTests(SynchronousTestCase):
    """decode(encode(x)) == x for every PDU kind and interesting field values."""

    def test_associate_rq_with_everything_round_trips(self) -> None:
        """An RQ with several contexts and every user-information sub-item survives a round trip."""
        pdu = _rq(
            presentation_contexts=(
                PresentationContextRQ(1, VERIFICATION, (IMPLICIT_VR_LE,)),
                PresentationContextRQ(3, CT_IMAGE_STORAGE, (EXPLICIT_VR_LE, IMPLICIT_VR_LE)),
                PresentationContextRQ(255, CT_IMAGE_STORAGE, (IMPLICIT_VR_LE,)),
            ),
            user_information=FULL_USER_INFORMATION,
            protocol_version=0xFFFF,
        )
        self.assertEqual(_round_trip(pdu), pdu)

    def test_associate_rq_without_user_information_round_trips(self) -> None:
        """The user information item is optional in the codec; its absence decodes as None (HARDENING P11)."""
        pdu = _rq(user_information=None)
        self.assertEqual(_round_trip(pdu), pdu)

    def test_associate_rq_without_presentation_contexts_decodes(self) -> None:
        """An RQ with no context is well formed; the acceptor policy rejects it (HARDENING P11)."""
        pdu = _rq(presentation_contexts=())
        self.assertEqual(_round_trip(pdu), pdu)

    def test_associate_rq_with_128_contexts_round_trips(self) -> None:
        """All 128 odd IDs 1..255 may be used at once (PS3.8 9.3.2.2)."""
        contexts = tuple(PresentationContextRQ(i, VERIFICATION, (IMPLICIT_VR_LE,)) for i in range(1, 256, 2))
        pdu = _rq(presentation_contexts=contexts)
        self.assertEqual(_round_trip(pdu), pdu)

    def test_associate_ac_with_accepted_and_rejected_contexts_round_trips(self) -> None:
        """Rejected contexts with and without a transfer syntax survive a round trip."""
        pdu = AAssociateAC(
            called_ae_title="GATEWAY",
            calling_ae_title="CT01",
            presentation_contexts=(
                PresentationContextAC(1, 0, IMPLICIT_VR_LE),
                PresentationContextAC(3, 3, None),
                PresentationContextAC(5, 4, EXPLICIT_VR_LE),
                PresentationContextAC(7, 1, None),
            ),
            user_information=UserInformation(max_length=0),
        )
        self.assertEqual(_round_trip(pdu), pdu)

    def test_rejected_context_without_transfer_syntax_encodes_an_empty_sub_item(self) -> None:
        """transfer_syntax=None encodes a 0x40 sub-item of length 0, as DCMTK does."""
        raw = encode(
            AAssociateAC("A", "B", (PresentationContextAC(3, 3, None),), None)
        )
        self.assertTrue(raw.endswith(b"\x21\x00\x00\x08\x03\x00\x03\x00\x40\x00\x00\x00"))

    def test_rejected_context_missing_its_transfer_syntax_decodes_as_none(self) -> None:
        """A rejected context with no 0x40 sub-item at all decodes with transfer_syntax None."""
        body = bytearray(associate_rq_body(APPLICATION_CONTEXT_ITEM + _item(0x21, b"\x05\x00\x04\x00")))
        pdu = decode(0x02, bytes(body))
        assert isinstance(pdu, AAssociateAC)
        self.assertEqual(pdu.presentation_contexts, (PresentationContextAC(5, 4, None),))

    def test_short_pdus_round_trip(self) -> None:
        """RJ, release RQ/RP and abort round-trip with their field values."""
        short: list[PDU] = [
            AAssociateRJ(2, 3, 2),
            AAssociateRJ(0, 0, 0),
            AReleaseRQ(),
            AReleaseRP(),
            AAbort(0, 0),
            AAbort(2, 6),
        ]
        for pdu in short:
            self.assertEqual(_round_trip(pdu), pdu)

    def test_pdata_with_several_pdvs_round_trips(self) -> None:
        """Several PDVs, including an empty fragment, keep their order, IDs and control bytes."""
        pdu = PDataTF(
            pdvs=(
                PDV(1, 0x03, b"command"),
                PDV(1, 0x00, b""),
                PDV(3, 0xFE, b"data" * 100),
            )
        )
        self.assertEqual(_round_trip(pdu), pdu)

    def test_protocol_version_is_kept_raw(self) -> None:
        """Protocol version 0x0002 decodes as 2: testing bit 0 is the acceptor's job (HARDENING P08)."""
        self.assertEqual(_round_trip(_rq(protocol_version=2)).protocol_version, 2)  # type: ignore[union-attr]


class AETitleTests(SynchronousTestCase):
    """AE titles: 16 bytes space padded out, Latin-1 and stripped in (PS3.8 9.3.2)."""

    def test_titles_are_space_padded_to_16_bytes(self) -> None:
        """The fixed part holds each title padded with spaces."""
        raw = encode(_rq(called_ae_title="ARCHIVE", calling_ae_title="X" * 16))
        self.assertEqual(raw[10:26], b"ARCHIVE         ")
        self.assertEqual(raw[26:42], b"X" * 16)

    def test_leading_and_trailing_spaces_are_stripped_on_decode(self) -> None:
        """Spaces are not significant in AE titles and do not reach the policy."""
        pdu = decode(0x01, associate_rq_body(APPLICATION_CONTEXT_ITEM, called=b"  PACS", calling=b" CT "))
        assert isinstance(pdu, AAssociateRQ)
        self.assertEqual((pdu.called_ae_title, pdu.calling_ae_title), ("PACS", "CT"))

    def test_odd_titles_decode_for_the_policy_to_reject(self) -> None:
        """All-space, NUL, path and non-ASCII titles decode without error (HARDENING P10)."""
        pdu = decode(0x01, associate_rq_body(APPLICATION_CONTEXT_ITEM, called=b" " * 16, calling=b"../\x00\xe9%n"))
        assert isinstance(pdu, AAssociateRQ)
        self.assertEqual(pdu.called_ae_title, "")
        self.assertEqual(pdu.calling_ae_title, "../\x00\xe9%n")

    def test_bad_titles_are_refused_on_encode(self) -> None:
        """Titles that are empty, all spaces, over 16 bytes or not Latin-1 raise ValueError."""
        for title in ["", "    ", "X" * 17, "\u20ac"]:
            self.assertRaises(ValueError, encode, _rq(called_ae_title=title))
            self.assertRaises(ValueError, encode, _rq(calling_ae_title=title))


class EncodeErrorTests(SynchronousTestCase):
    """encode refuses what the decoder would refuse or what does not fit (ValueError)."""

    def test_bad_context_ids_are_refused(self) -> None:
        """Context IDs must be odd, 1..255 and distinct (PS3.8 9.3.2.2)."""
        for ids in [(0,), (2,), (257,), (1, 1)]:
            contexts = tuple(PresentationContextRQ(i, VERIFICATION, (IMPLICIT_VR_LE,)) for i in ids)
            self.assertRaises(ValueError, encode, _rq(presentation_contexts=contexts))

    def test_context_without_transfer_syntax_is_refused(self) -> None:
        """An RQ context must propose at least one transfer syntax (PS3.8 9.3.2.2)."""
        self.assertRaises(
            ValueError, encode, _rq(presentation_contexts=(PresentationContextRQ(1, VERIFICATION, ()),))
        )

    def test_accepted_context_without_transfer_syntax_is_refused(self) -> None:
        """Acceptance must name the transfer syntax (PS3.8 9.3.3.2)."""
        self.assertRaises(ValueError, encode, AAssociateAC("A", "B", (PresentationContextAC(1, 0, None),), None))

    def test_pdata_without_pdv_is_refused(self) -> None:
        """A P-DATA-TF carries one or more PDVs (PS3.8 9.3.5)."""
        self.assertRaises(ValueError, encode, PDataTF(pdvs=()))

    def test_fields_over_one_byte_are_refused(self) -> None:
        """RJ, abort and PDV byte fields reject values over 255."""
        for pdu in [AAssociateRJ(256, 1, 1), AAbort(0, 300), PDataTF((PDV(1, 256, b""),))]:
            self.assertRaises(ValueError, encode, pdu)

    def test_protocol_version_over_16_bits_is_refused(self) -> None:
        """The protocol version field has 2 bytes."""
        self.assertRaises(ValueError, encode, _rq(protocol_version=0x10000))

    def test_non_pdu_is_a_type_error(self) -> None:
        """Passing something that is not a PDU is a caller bug."""
        self.assertRaises(TypeError, encode, object())


class DecodeErrorTests(SynchronousTestCase):
    """Malformed bodies raise PDUDecodeError with the reason HARDENING section A pins."""

    def assertDecodeError(self, pdu_type: int, body: bytes, reason: AbortReason = INVALID) -> PDUDecodeError:
        """Assert that decoding fails with ``reason`` and return the error."""
        error = self.assertRaises(PDUDecodeError, decode, pdu_type, body)
        self.assertEqual(error.reason, reason)
        return error

    def test_unknown_pdu_types_are_unrecognized(self) -> None:
        """Types outside 1..7 give reason 1, unrecognized PDU (HARDENING P27)."""
        for pdu_type in [0x00, 0x08, 0x16, 0x47, 0xFF]:
            self.assertDecodeError(pdu_type, b"\x00\x00\x00\x00", AbortReason.UNRECOGNIZED_PDU)

    def test_associate_bodies_shorter_than_68_bytes_are_invalid(self) -> None:
        """RQ or AC bodies of 0, 1 or 67 bytes cannot hold the fixed part (HARDENING P06)."""
        for pdu_type in (0x01, 0x02):
            for length in (0, 1, 67):
                self.assertDecodeError(pdu_type, bytes(length))

    def test_trailing_junk_after_the_last_item_is_invalid(self) -> None:
        """1 to 3 bytes after the last item are not an item (HARDENING P06)."""
        for junk in (b"\x00", b"\x50\x00", b"\x10\x00\x00"):
            self.assertDecodeError(0x01, associate_rq_body(APPLICATION_CONTEXT_ITEM + junk))

    def test_item_overrunning_the_pdu_is_invalid(self) -> None:
        """An item length past the end of the body is refused (HARDENING P07)."""
        self.assertDecodeError(0x01, associate_rq_body(APPLICATION_CONTEXT_ITEM + b"\x50\x00\x00\x10\x51\x00"))

    def test_missing_application_context_is_invalid(self) -> None:
        """An RQ (or AC) without its application context item is refused."""
        self.assertDecodeError(0x01, associate_rq_body(presentation_context_rq_item(1, b"1.2", b"1.2")))
        self.assertDecodeError(0x02, associate_rq_body(b""))

    def test_empty_or_repeated_application_context_is_invalid(self) -> None:
        """A zero-length application context or two of them is refused."""
        self.assertDecodeError(0x01, associate_rq_body(b"\x10\x00\x00\x00"))
        self.assertDecodeError(0x01, associate_rq_body(APPLICATION_CONTEXT_ITEM * 2))

    def test_presentation_context_shorter_than_4_bytes_is_invalid(self) -> None:
        """A presentation context item needs its ID and 3 reserved bytes (HARDENING P07)."""
        for length in range(4):
            self.assertDecodeError(0x01, associate_rq_body(APPLICATION_CONTEXT_ITEM + _item(0x20, b"\x01" * length)))
            self.assertDecodeError(0x02, associate_rq_body(APPLICATION_CONTEXT_ITEM + _item(0x21, b"\x01" * length)))

    def test_empty_missing_or_repeated_abstract_syntax_is_invalid(self) -> None:
        """The abstract syntax sub-item is required, single and non-empty (dicom-rs #760)."""
        self.assertDecodeError(0x01, associate_rq_body(APPLICATION_CONTEXT_ITEM + presentation_context_rq_item(1, b"", b"1.2")))
        no_abstract = _item(0x20, b"\x01\x00\x00\x00" + _item(0x40, b"1.2"))
        self.assertDecodeError(0x01, associate_rq_body(APPLICATION_CONTEXT_ITEM + no_abstract))
        two = _item(0x20, b"\x01\x00\x00\x00" + _item(0x30, b"1.2") + _item(0x30, b"1.3") + _item(0x40, b"1.2"))
        self.assertDecodeError(0x01, associate_rq_body(APPLICATION_CONTEXT_ITEM + two))

    def test_empty_or_missing_transfer_syntax_in_rq_is_invalid(self) -> None:
        """An RQ context needs one or more non-empty transfer syntaxes (PS3.8 9.3.2.2)."""
        self.assertDecodeError(0x01, associate_rq_body(APPLICATION_CONTEXT_ITEM + presentation_context_rq_item(1, b"1.2", b"")))
        self.assertDecodeError(0x01, associate_rq_body(APPLICATION_CONTEXT_ITEM + presentation_context_rq_item(1, b"1.2")))

    def test_sub_item_overrunning_its_context_is_invalid(self) -> None:
        """A transfer syntax sub-item longer than its presentation context is refused (HARDENING P07)."""
        item = _item(0x20, b"\x01\x00\x00\x00" + _item(0x30, b"1.2") + b"\x40\x00\x00\x09" + b"1.2")
        self.assertDecodeError(0x01, associate_rq_body(APPLICATION_CONTEXT_ITEM + item))

    def test_zero_and_even_context_ids_are_invalid(self) -> None:
        """Context ID 0 or an even ID is refused with reason 6 (HARDENING P12, pinned)."""
        for context_id in (0, 2, 254):
            self.assertDecodeError(
                0x01, associate_rq_body(APPLICATION_CONTEXT_ITEM + presentation_context_rq_item(context_id, b"1.2", b"1.2"))
            )
            self.assertDecodeError(
                0x02, associate_rq_body(APPLICATION_CONTEXT_ITEM + _item(0x21, bytes((context_id, 0, 0, 0)) + _item(0x40, b"1.2")))
            )

    def test_duplicate_context_ids_are_invalid(self) -> None:
        """Two contexts with the same ID are refused (HARDENING P12)."""
        context = presentation_context_rq_item(7, b"1.2", b"1.2")
        self.assertDecodeError(0x01, associate_rq_body(APPLICATION_CONTEXT_ITEM + context + context))

    def test_more_than_128_contexts_is_invalid(self) -> None:
        """A 129th context cannot have a distinct odd ID and is refused (HARDENING P12)."""
        contexts = b"".join(presentation_context_rq_item(i, b"1.2", b"1.2") for i in range(1, 256, 2))
        decode(0x01, associate_rq_body(APPLICATION_CONTEXT_ITEM + contexts))
        extra = presentation_context_rq_item(1, b"1.2", b"1.2")
        error = self.assertDecodeError(0x01, associate_rq_body(APPLICATION_CONTEXT_ITEM + contexts + extra))
        self.assertIn("appears twice", error.message)

    def test_accepted_context_without_transfer_syntax_is_invalid(self) -> None:
        """An accepted AC context with an empty or missing transfer syntax is refused (PS3.8 9.3.3.2)."""
        self.assertDecodeError(0x02, associate_rq_body(APPLICATION_CONTEXT_ITEM + _item(0x21, b"\x01\x00\x00\x00")))
        self.assertDecodeError(
            0x02, associate_rq_body(APPLICATION_CONTEXT_ITEM + _item(0x21, b"\x01\x00\x00\x00" + _item(0x40, b"")))
        )

    def test_two_transfer_syntaxes_in_an_ac_context_is_invalid(self) -> None:
        """An AC context carries a single transfer syntax sub-item."""
        item = _item(0x21, b"\x01\x00\x00\x00" + _item(0x40, b"1.2") + _item(0x40, b"1.3"))
        self.assertDecodeError(0x02, associate_rq_body(APPLICATION_CONTEXT_ITEM + item))

    def test_two_user_information_items_is_invalid(self) -> None:
        """A PDU carries a single user information item."""
        self.assertDecodeError(0x01, associate_rq_body(APPLICATION_CONTEXT_ITEM + b"\x50\x00\x00\x00" * 2))

    def test_malformed_user_information_propagates_as_invalid(self) -> None:
        """A broken sub-item inside user information aborts the whole PDU with reason 6."""
        broken = user_information_item(b"\x51\x00\x00\x02\x00\x00")
        self.assertDecodeError(0x01, associate_rq_body(APPLICATION_CONTEXT_ITEM + broken))

    def test_short_pdus_with_bodies_other_than_4_bytes_are_invalid(self) -> None:
        """RJ, release RQ/RP and abort bodies are exactly 4 bytes (HARDENING P28)."""
        for pdu_type in (0x03, 0x05, 0x06, 0x07):
            for length in (0, 3, 5, 100):
                self.assertDecodeError(pdu_type, bytes(length))

    def test_pdata_without_pdv_is_invalid(self) -> None:
        """An empty P-DATA-TF body has zero PDV items (HARDENING P21)."""
        self.assertDecodeError(0x04, b"")

    def test_pdv_lengths_below_two_are_invalid(self) -> None:
        """A PDV item length of 0 or 1 cannot hold the context ID and control byte (HARDENING P22)."""
        self.assertDecodeError(0x04, b"\x00\x00\x00\x00\x01\x00")
        self.assertDecodeError(0x04, b"\x00\x00\x00\x01\x01\x00")

    def test_pdv_overrunning_the_pdu_is_invalid(self) -> None:
        """A PDV item longer than what remains, including 0xFFFFFFFF, is refused (HARDENING P22, DCMTK PR #87)."""
        self.assertDecodeError(0x04, b"\x00\x00\x00\x06\x01\x00abc")
        self.assertDecodeError(0x04, b"\xff\xff\xff\xff\x01\x00abc")

    def test_trailing_bytes_after_the_last_pdv_are_invalid(self) -> None:
        """1 to 5 bytes after the last PDV cannot be a PDV item."""
        good = b"\x00\x00\x00\x03\x01\x03x"
        for junk_length in range(1, 6):
            self.assertDecodeError(0x04, good + bytes(junk_length))


class LeniencyTests(SynchronousTestCase):
    """What PS3.8 says to ignore is ignored, not refused."""

    def test_unknown_pdu_level_items_are_ignored(self) -> None:
        """Unknown items, and AC-only items in an RQ, are skipped without a trace (PS3.8 9.3.1)."""
        body = associate_rq_body(
            APPLICATION_CONTEXT_ITEM
            + _item(0x60, b"whatever")
            + _item(0x21, b"\x01\x00\x00\x00")
            + presentation_context_rq_item(1, b"1.2", b"1.3")
        )
        pdu = decode(0x01, body)
        assert isinstance(pdu, AAssociateRQ)
        self.assertEqual(pdu.presentation_contexts, (PresentationContextRQ(1, "1.2", ("1.3",)),))
        self.assertIsNone(pdu.user_information)

    def test_unknown_sub_items_in_a_context_are_ignored(self) -> None:
        """An unknown sub-item inside a presentation context does not disturb it."""
        item = _item(0x20, b"\x01\x00\x00\x00" + _item(0x30, b"1.2") + _item(0x99, b"?") + _item(0x40, b"1.3"))
        pdu = decode(0x01, associate_rq_body(APPLICATION_CONTEXT_ITEM + item))
        assert isinstance(pdu, AAssociateRQ)
        self.assertEqual(pdu.presentation_contexts, (PresentationContextRQ(1, "1.2", ("1.3",)),))

    def test_padded_uids_are_stripped(self) -> None:
        """NUL- or space-padded UIDs decode without padding, though PS3.8 says not to pad."""
        item = presentation_context_rq_item(1, b"1.2.3\x00", b"1.2 ")
        pdu = decode(0x01, associate_rq_body(APPLICATION_CONTEXT_ITEM + item))
        assert isinstance(pdu, AAssociateRQ)
        self.assertEqual(pdu.presentation_contexts, (PresentationContextRQ(1, "1.2.3", ("1.2",)),))

    def test_reserved_bytes_of_short_pdus_are_not_tested(self) -> None:
        """Non-zero reserved bytes in release and abort PDUs are ignored (PS3.8 9.3.6-9.3.8)."""
        self.assertEqual(decode(0x05, b"\xff\xff\xff\xff"), AReleaseRQ())
        self.assertEqual(decode(0x07, b"\xff\xff\x00\x02"), AAbort(0, 2))

    def test_pdv_control_bits_2_to_7_are_kept(self) -> None:
        """Control bits beyond 0 and 1 do not disturb the flags (Annex E.2, HARDENING P25)."""
        pdu = decode_pdata(b"\x00\x00\x00\x03\x01\xfdx")
        self.assertEqual(pdu.pdvs[0].control, 0xFD)
        self.assertTrue(pdu.pdvs[0].is_command)
        self.assertFalse(pdu.pdvs[0].is_last)


class PDataFastPathTests(SynchronousTestCase):
    """decode_pdata and pdata_pdu: the bulk-data paths."""

    def test_pdata_pdu_matches_the_general_encoder(self) -> None:
        """The single-PDV builder gives the same bytes as encode()."""
        data = bytes(range(256)) * 10
        self.assertEqual(pdata_pdu(3, 0x02, data), encode(PDataTF((PDV(3, 0x02, data),))))

    def test_pdata_pdu_layout(self) -> None:
        """Header, PDV length, context ID and control byte precede the data (PS3.8 9.3.5.1)."""
        self.assertEqual(
            pdata_pdu(1, 0x03, b"ab"),
            b"\x04\x00\x00\x00\x00\x08" + b"\x00\x00\x00\x04" + b"\x01\x03" + b"ab",
        )

    def test_pdata_pdu_accepts_views(self) -> None:
        """A memoryview of a larger buffer can be sent without first copying it."""
        buffer = bytearray(b"xxhelloxx")
        self.assertEqual(pdata_pdu(1, 0, memoryview(buffer)[2:7])[12:], b"hello")

    def test_pdata_pdu_rejects_bad_bytes(self) -> None:
        """Context ID and control must each fit a byte."""
        self.assertRaises(ValueError, pdata_pdu, 256, 0, b"")
        self.assertRaises(ValueError, pdata_pdu, 1, -1, b"")

    def test_large_pdata_decodes_to_bytes_fragments(self) -> None:
        """A 256 KiB PDU of four PDVs decodes into four independent bytes objects."""
        chunk = bytes(range(256)) * 256
        raw = encode(PDataTF(tuple(PDV(1, 0, chunk) for _ in range(4))))
        pdu = decode_pdata(memoryview(raw)[6:])
        self.assertEqual(len(pdu.pdvs), 4)
        for pdv in pdu.pdvs:
            self.assertIs(type(pdv.data), bytes)
            self.assertEqual(pdv.data, chunk)

    def test_decode_dispatches_pdata_to_the_fast_path(self) -> None:
        """decode(4, body) and decode_pdata(body) agree."""
        body = STORESCP_P_DATA_TF[6:]
        self.assertEqual(decode(0x04, body), decode_pdata(body))


class PynetdicomInteropTests(SynchronousTestCase):
    """Cross-checks against pynetdicom's independent encoder and decoder (test-only peer)."""

    def setUp(self) -> None:
        """Silence pydicom's UID-validation warnings while pynetdicom parses."""
        catcher = warnings.catch_warnings()
        catcher.__enter__()
        self.addCleanup(catcher.__exit__, None, None, None)
        warnings.simplefilter("ignore")

    def test_pynetdicom_rq_decodes_and_re_encodes_identically(self) -> None:
        """An RQ built by pynetdicom with many sub-items decodes to the right values and re-encodes byte for byte."""
        from pynetdicom.pdu import A_ASSOCIATE_RQ
        from pynetdicom.pdu_primitives import (
            A_ASSOCIATE,
            AsynchronousOperationsWindowNegotiation,
            ImplementationClassUIDNotification,
            ImplementationVersionNameNotification,
            MaximumLengthNotification,
            SCP_SCU_RoleSelectionNegotiation,
            SOPClassCommonExtendedNegotiation,
            UserIdentityNegotiation,
        )
        from pynetdicom.presentation import build_context

        primitive = A_ASSOCIATE()
        primitive.application_context_name = "1.2.840.10008.3.1.1.1"
        primitive.calling_ae_title = "PYNETDICOM"
        primitive.called_ae_title = "GATEWAY"
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = 32768
        class_uid = ImplementationClassUIDNotification()
        class_uid.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.3.0.4"
        version = ImplementationVersionNameNotification()
        version.implementation_version_name = "PYNETDICOM_304"
        window = AsynchronousOperationsWindowNegotiation()
        window.maximum_number_operations_invoked = 3
        window.maximum_number_operations_performed = 2
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid = CT_IMAGE_STORAGE
        role.scu_role = False
        role.scp_role = True
        common = SOPClassCommonExtendedNegotiation()
        common.sop_class_uid = CT_IMAGE_STORAGE
        common.service_class_uid = "1.2.840.10008.4.2"
        common.related_general_sop_class_identification = ["1.2.3.4"]
        identity = UserIdentityNegotiation()
        identity.user_identity_type = 2
        identity.positive_response_requested = True
        identity.primary_field = b"user"
        identity.secondary_field = b"pass"
        primitive.user_information = [max_length, class_uid, version, window, role, common, identity]
        verification = build_context(VERIFICATION, [IMPLICIT_VR_LE, EXPLICIT_VR_LE])
        verification.context_id = 1
        ct = build_context(CT_IMAGE_STORAGE, [EXPLICIT_VR_LE])
        ct.context_id = 3
        primitive.presentation_context_definition_list = [verification, ct]
        theirs = A_ASSOCIATE_RQ()
        theirs.from_primitive(primitive)
        raw = theirs.encode()

        ours = decode(raw[0], raw[6:])
        assert isinstance(ours, AAssociateRQ)
        self.assertEqual((ours.called_ae_title, ours.calling_ae_title), ("GATEWAY", "PYNETDICOM"))
        self.assertEqual(
            ours.presentation_contexts,
            (
                PresentationContextRQ(1, VERIFICATION, (IMPLICIT_VR_LE, EXPLICIT_VR_LE)),
                PresentationContextRQ(3, CT_IMAGE_STORAGE, (EXPLICIT_VR_LE,)),
            ),
        )
        info = ours.user_information
        assert info is not None
        self.assertEqual(info.max_length, 32768)
        self.assertEqual(info.async_ops, (3, 2))
        self.assertEqual(info.common_extended_negotiations[0].related_general_sop_classes, ("1.2.3.4",))
        self.assertEqual(info.user_identity_rq.primary_field if info.user_identity_rq else None, b"user")
        self.assertEqual(encode(ours), raw)

    def test_our_ac_and_pdata_decode_in_pynetdicom(self) -> None:
        """pynetdicom reads our AC (with a rejected context) and our single-PDV P-DATA-TF."""
        from pynetdicom.pdu import A_ASSOCIATE_AC, P_DATA_TF

        ac = AAssociateAC(
            called_ae_title="GATEWAY",
            calling_ae_title="CT01",
            presentation_contexts=(PresentationContextAC(1, 0, EXPLICIT_VR_LE), PresentationContextAC(3, 3, None)),
            user_information=UserInformation(max_length=65536, implementation_class_uid="1.2.3.4"),
        )
        theirs = A_ASSOCIATE_AC()
        theirs.decode(encode(ac))
        self.assertEqual(theirs.calling_ae_title, "CT01")
        results = [(item.context_id, item.result) for item in theirs.variable_items if item.item_type == 0x21]
        self.assertEqual(results, [(1, 0), (3, 3)])
        self.assertEqual(theirs.user_information.maximum_length, 65536)

        pdata = P_DATA_TF()
        pdata.decode(pdata_pdu(5, 0x02, b"fragment"))
        (item,) = pdata.presentation_data_value_items
        self.assertEqual((item.presentation_context_id, item.presentation_data_value), (5, b"\x02fragment"))
