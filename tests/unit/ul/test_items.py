"""User-information sub-item codec (PS3.8 Annex D, PS3.7 D.3.3): round trips and malformed input."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.ul.errors import AbortReason, PDUDecodeError
from gateway.ul.items import (
    SCPSCURoleSelection,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UnknownItem,
    UserIdentityAC,
    UserIdentityRQ,
    UserInformation,
    decode_user_information,
    encode_user_information,
    iter_items,
)
from tests.support.fixtures_pdu import (
    CT_IMAGE_STORAGE,
    FULL_USER_INFORMATION,
    FULL_USER_INFORMATION_CONTENT,
    user_information_item,
)


def _sub(item_type: int, content: bytes) -> bytes:
    """Frame one sub-item (type, reserved, 2-byte length, content)."""
    return bytes((item_type, 0)) + len(content).to_bytes(2, "big") + content


class UserInformationRoundTripTests(SynchronousTestCase):
    """Every sub-item survives encode then decode, and matches the annotated bytes."""

    def test_full_fixture_decodes_to_expected_values(self) -> None:
        """The hand-annotated user information with every sub-item decodes field by field."""
        self.assertEqual(decode_user_information(FULL_USER_INFORMATION_CONTENT), FULL_USER_INFORMATION)

    def test_full_fixture_encodes_to_the_annotated_bytes(self) -> None:
        """Encoding writes sub-items in the standard's order, byte for byte as annotated."""
        self.assertEqual(
            encode_user_information(FULL_USER_INFORMATION), user_information_item(FULL_USER_INFORMATION_CONTENT)
        )

    def test_empty_user_information_round_trips(self) -> None:
        """An item with no sub-items encodes as a bare 4-byte header and decodes to defaults."""
        encoded = encode_user_information(UserInformation())
        self.assertEqual(encoded, b"\x50\x00\x00\x00")
        self.assertEqual(decode_user_information(encoded[4:]), UserInformation())

    def test_each_sub_item_round_trips_alone(self) -> None:
        """Each sub-item kind round-trips when it is the only one present."""
        cases = [
            UserInformation(max_length=0),
            UserInformation(max_length=0xFFFFFFFF),
            UserInformation(implementation_class_uid="1.2.3"),
            UserInformation(implementation_version_name="X" * 16),
            UserInformation(async_ops=(0, 65535)),
            UserInformation(role_selections=(SCPSCURoleSelection(CT_IMAGE_STORAGE, True, False),)),
            UserInformation(extended_negotiations=(SOPClassExtendedNegotiation(CT_IMAGE_STORAGE, b""),)),
            UserInformation(
                common_extended_negotiations=(SOPClassCommonExtendedNegotiation(CT_IMAGE_STORAGE, "1.2.840.10008.4.2"),)
            ),
            UserInformation(user_identity_rq=UserIdentityRQ(1, False, b"alice")),
            UserInformation(user_identity_rq=UserIdentityRQ(5, True, b"eyJ.jwt", b"")),
            UserInformation(user_identity_ac=UserIdentityAC(b"")),
            UserInformation(unknown_items=(UnknownItem(0xFF, b""),)),
        ]
        for info in cases:
            self.assertEqual(decode_user_information(encode_user_information(info)[4:]), info, info)

    def test_several_role_selections_keep_their_order(self) -> None:
        """Repeated sub-items (one per SOP class) are kept in the order received."""
        info = UserInformation(
            role_selections=(
                SCPSCURoleSelection("1.2.3", True, True),
                SCPSCURoleSelection("1.2.4", False, True),
            )
        )
        self.assertEqual(decode_user_information(encode_user_information(info)[4:]), info)

    def test_sub_items_in_any_order_are_accepted(self) -> None:
        """A peer may send sub-items in another order; the decoded value is the same."""
        content = _sub(0x55, b"V1") + _sub(0x52, b"1.2.3") + _sub(0x51, b"\x00\x00\x10\x00")
        self.assertEqual(
            decode_user_information(content),
            UserInformation(max_length=4096, implementation_class_uid="1.2.3", implementation_version_name="V1"),
        )

    def test_role_flag_bytes_other_than_one_read_as_true(self) -> None:
        """Role bytes are read leniently: any non-zero value means the role is proposed (PS3.7 D.3.3.4)."""
        content = _sub(0x54, b"\x00\x03" + b"1.2" + b"\x02\xff")
        info = decode_user_information(content)
        self.assertEqual(info.role_selections, (SCPSCURoleSelection("1.2", True, True),))

    def test_uid_padding_is_stripped(self) -> None:
        """A NUL-padded implementation class UID decodes without its padding."""
        info = decode_user_information(_sub(0x52, b"1.2.3\x00"))
        self.assertEqual(info.implementation_class_uid, "1.2.3")

    def test_user_identity_without_secondary_length_is_tolerated(self) -> None:
        """A 0x58 sub-item that ends right after its primary field reads as an empty secondary field."""
        info = decode_user_information(_sub(0x58, b"\x01\x00\x00\x03bob"))
        self.assertEqual(info.user_identity_rq, UserIdentityRQ(1, False, b"bob", b""))


class UnknownSubItemTests(SynchronousTestCase):
    """Unknown sub-items are kept for the log and otherwise ignored (PS3.8 D.2, HARDENING P14)."""

    def test_unknown_types_are_kept_as_unknown_items(self) -> None:
        """Types 0x5F and 0xFF, unknown to us, come back as UnknownItem with their bytes."""
        content = _sub(0x51, b"\x00\x00\x40\x00") + _sub(0x5F, b"abc") + _sub(0xFF, b"")
        info = decode_user_information(content)
        self.assertEqual(info.max_length, 16384)
        self.assertEqual(info.unknown_items, (UnknownItem(0x5F, b"abc"), UnknownItem(0xFF, b"")))

    def test_encoding_an_unknown_item_with_a_known_type_is_refused(self) -> None:
        """An UnknownItem typed 0x51 would decode as a maximum length, so encode refuses it."""
        with self.assertRaises(ValueError):
            encode_user_information(UserInformation(unknown_items=(UnknownItem(0x51, b"\x00\x00\x00\x01"),)))


class UserInformationDecodeErrorTests(SynchronousTestCase):
    """Malformed sub-items raise PDUDecodeError(INVALID_PDU_PARAMETER_VALUE) and nothing else."""

    def assertInvalid(self, content: bytes) -> PDUDecodeError:
        """Assert that decoding ``content`` fails with reason 6, and return the error."""
        error = self.assertRaises(PDUDecodeError, decode_user_information, content)
        self.assertEqual(error.reason, AbortReason.INVALID_PDU_PARAMETER_VALUE)
        return error

    def test_sub_item_overrunning_the_item_is_invalid(self) -> None:
        """A sub-item declaring more bytes than its parent holds is refused (HARDENING P07)."""
        self.assertInvalid(b"\x52\x00\x00\x10" + b"1.2.3")

    def test_trailing_bytes_too_short_for_a_header_are_invalid(self) -> None:
        """Fewer than 4 bytes after the last sub-item are junk, not an item."""
        self.assertInvalid(_sub(0x51, b"\x00\x00\x40\x00") + b"\x52\x00")

    def test_maximum_length_of_wrong_size_is_invalid(self) -> None:
        """The maximum length sub-item holds exactly 4 bytes (PS3.8 D.1)."""
        self.assertInvalid(_sub(0x51, b"\x00\x40\x00"))
        self.assertInvalid(_sub(0x51, b"\x00\x00\x00\x40\x00"))

    def test_async_window_of_wrong_size_is_invalid(self) -> None:
        """The asynchronous operations window holds exactly 4 bytes (PS3.7 D.3.3.3)."""
        self.assertInvalid(_sub(0x53, b"\x00\x01"))

    def test_duplicate_singleton_sub_items_are_invalid(self) -> None:
        """Two maximum length sub-items are contradictory and refused."""
        self.assertInvalid(_sub(0x51, b"\x00\x00\x40\x00") + _sub(0x51, b"\x00\x00\x80\x00"))

    def test_role_selection_uid_overrun_is_invalid(self) -> None:
        """A role selection UID length running past the sub-item is refused."""
        self.assertInvalid(_sub(0x54, b"\x00\x20" + b"1.2" + b"\x01\x01"))

    def test_role_selection_missing_role_bytes_is_invalid(self) -> None:
        """A role selection without its two role bytes is refused (PS3.7 D.3.3.4)."""
        self.assertInvalid(_sub(0x54, b"\x00\x03" + b"1.2" + b"\x01"))

    def test_role_selection_with_empty_uid_is_invalid(self) -> None:
        """A role selection naming no SOP class is a zero-length field where content is required."""
        self.assertInvalid(_sub(0x54, b"\x00\x00\x01\x01"))

    def test_role_selection_truncated_before_uid_length_is_invalid(self) -> None:
        """A role selection of one byte cannot hold its UID length."""
        self.assertInvalid(_sub(0x54, b"\x00"))

    def test_extended_negotiation_uid_overrun_is_invalid(self) -> None:
        """An extended negotiation UID length running past the sub-item is refused."""
        self.assertInvalid(_sub(0x56, b"\x00\x09" + b"1.2"))

    def test_common_extended_negotiation_related_length_mismatch_is_invalid(self) -> None:
        """The related-class length must account for exactly the rest of the 0x57 sub-item."""
        body = b"\x00\x03" + b"1.2" + b"\x00\x03" + b"1.3" + b"\x00\x09" + b"\x00\x03" + b"1.4"
        self.assertInvalid(_sub(0x57, body))

    def test_common_extended_negotiation_missing_related_length_is_invalid(self) -> None:
        """The related-class length field is mandatory even when no class is listed."""
        self.assertInvalid(_sub(0x57, b"\x00\x03" + b"1.2" + b"\x00\x03" + b"1.3"))

    def test_common_extended_negotiation_related_uid_overrun_is_invalid(self) -> None:
        """A related-class UID whose own length overruns the list is refused."""
        body = b"\x00\x03" + b"1.2" + b"\x00\x03" + b"1.3" + b"\x00\x05" + b"\x00\x09" + b"1.4"
        self.assertInvalid(_sub(0x57, body))

    def test_user_identity_rq_primary_overrun_is_invalid(self) -> None:
        """A user identity primary field longer than the sub-item is refused."""
        self.assertInvalid(_sub(0x58, b"\x02\x00\x00\x20" + b"user"))

    def test_user_identity_rq_shorter_than_fixed_part_is_invalid(self) -> None:
        """A user identity RQ sub-item needs at least its 4 fixed bytes."""
        self.assertInvalid(_sub(0x58, b"\x02\x00\x00"))

    def test_user_identity_rq_secondary_mismatch_is_invalid(self) -> None:
        """A secondary field length that does not fill the sub-item exactly is refused."""
        self.assertInvalid(_sub(0x58, b"\x02\x00\x00\x01u\x00\x05pw"))
        self.assertInvalid(_sub(0x58, b"\x02\x00\x00\x01u\x00"))

    def test_user_identity_ac_length_mismatch_is_invalid(self) -> None:
        """A server response length that does not fill the 0x59 sub-item is refused."""
        self.assertInvalid(_sub(0x59, b"\x00\x05abc"))
        self.assertInvalid(_sub(0x59, b"\x00"))


class UserInformationEncodeErrorTests(SynchronousTestCase):
    """Values the decoder would refuse, or that do not fit their fields, raise ValueError on encode."""

    def test_out_of_range_values_are_refused(self) -> None:
        """Maximum length over 32 bits, window values over 16 bits and identity type over 8 bits do not fit."""
        for info in [
            UserInformation(max_length=1 << 32),
            UserInformation(max_length=-1),
            UserInformation(async_ops=(65536, 1)),
            UserInformation(user_identity_rq=UserIdentityRQ(256, False, b"x")),
        ]:
            self.assertRaises(ValueError, encode_user_information, info)

    def test_long_version_name_is_refused(self) -> None:
        """An implementation version name over 16 bytes breaks PS3.7 D.3.3.2."""
        self.assertRaises(ValueError, encode_user_information, UserInformation(implementation_version_name="X" * 17))

    def test_padded_or_empty_uids_are_refused(self) -> None:
        """UIDs in UL items are not padded (PS3.8 9.3.2.2.1), and required ones are not empty."""
        for info in [
            UserInformation(role_selections=(SCPSCURoleSelection("1.2\x00", True, True),)),
            UserInformation(role_selections=(SCPSCURoleSelection("", True, True),)),
            UserInformation(implementation_class_uid="1.2 "),
        ]:
            self.assertRaises(ValueError, encode_user_information, info)

    def test_item_too_long_for_its_length_field_is_refused(self) -> None:
        """Content over 65535 bytes cannot be framed with a 2-byte length."""
        info = UserInformation(extended_negotiations=(SOPClassExtendedNegotiation("1.2", b"x" * 70000),))
        self.assertRaises(ValueError, encode_user_information, info)


class IterItemsTests(SynchronousTestCase):
    """The generic item walker used for every variable item (PS3.8 9.3.1)."""

    def test_yields_type_and_content_bounds(self) -> None:
        """Each item is reported as its type and the offsets of its content."""
        buf = memoryview(_sub(0x10, b"ab") + _sub(0x20, b""))
        self.assertEqual(list(iter_items(buf, 0, len(buf), "test")), [(0x10, 4, 6), (0x20, 10, 10)])

    def test_reserved_byte_is_not_tested(self) -> None:
        """A non-zero reserved byte does not matter (PS3.8 9.3.1)."""
        buf = memoryview(b"\x10\xff\x00\x01x")
        self.assertEqual(list(iter_items(buf, 0, len(buf), "test")), [(0x10, 4, 5)])

    def test_overrun_stops_with_invalid_parameter(self) -> None:
        """An item running past ``end`` is refused even if the buffer continues."""
        buf = memoryview(b"\x10\x00\x00\x04abcdXXXX")
        with self.assertRaises(PDUDecodeError) as caught:
            list(iter_items(buf, 0, 7, "test"))
        self.assertEqual(caught.exception.reason, AbortReason.INVALID_PDU_PARAMETER_VALUE)
