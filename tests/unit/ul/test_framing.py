"""PDUBuffer: framing a byte stream into PDUs, with length caps checked at the header (HARDENING R4)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.ul.errors import AbortReason, PDUDecodeError
from gateway.ul.framing import PDUBuffer
from gateway.ul.pdu import PDV, AReleaseRP, AReleaseRQ, PDataTF, decode, encode, pdata_pdu
from tests.support.fixtures_pdu import (
    A_RELEASE_RQ,
    ALL_FIXTURES,
    ECHO_EXCHANGE,
)

INVALID = AbortReason.INVALID_PDU_PARAMETER_VALUE


def _decoded(raw: bytes) -> object:
    """Decode a whole PDU (header included) with the codec, for comparisons."""
    return decode(raw[0], raw[6:])


class WellFormedStreamTests(SynchronousTestCase):
    """Valid PDUs come out whole and in order, however the stream is cut."""

    def test_every_fixture_fed_one_byte_at_a_time(self) -> None:
        """Each PDU appears exactly once, on its last byte, and nothing stays buffered."""
        for name, raw, expected in ALL_FIXTURES:
            buffer = PDUBuffer(max_pdata_length=16384)
            for index in range(len(raw) - 1):
                self.assertEqual(buffer.feed(raw[index : index + 1]), [], name)
                self.assertEqual(buffer.buffered, index + 1, name)
            self.assertEqual(buffer.feed(raw[-1:]), [expected], name)
            self.assertEqual(buffer.buffered, 0, name)

    def test_whole_exchange_in_one_feed(self) -> None:
        """Six PDUs received in one read come out as six PDUs, in order."""
        buffer = PDUBuffer(max_pdata_length=16384)
        stream = b"".join(ECHO_EXCHANGE)
        self.assertEqual(buffer.feed(stream), [_decoded(raw) for raw in ECHO_EXCHANGE])
        self.assertEqual(buffer.buffered, 0)

    def test_whole_exchange_byte_at_a_time(self) -> None:
        """Feeding the concatenated exchange one byte at a time gives the same PDUs."""
        buffer = PDUBuffer(max_pdata_length=16384)
        stream = b"".join(ECHO_EXCHANGE)
        out: list[object] = []
        for index in range(len(stream)):
            out.extend(buffer.feed(stream[index : index + 1]))
        self.assertEqual(out, [_decoded(raw) for raw in ECHO_EXCHANGE])

    def test_whole_exchange_in_uneven_chunks(self) -> None:
        """Chunk boundaries falling inside headers and bodies, for many chunk sizes, change nothing."""
        stream = b"".join(ECHO_EXCHANGE)
        expected = [_decoded(raw) for raw in ECHO_EXCHANGE]
        for size in (2, 3, 5, 7, 13, 64, 199, 1000):
            buffer = PDUBuffer(max_pdata_length=16384)
            out: list[object] = []
            for start in range(0, len(stream), size):
                out.extend(buffer.feed(stream[start : start + size]))
            self.assertEqual(out, expected, size)

    def test_empty_feed_returns_nothing(self) -> None:
        """Feeding no bytes is harmless."""
        buffer = PDUBuffer(max_pdata_length=16384)
        self.assertEqual(buffer.feed(b""), [])
        self.assertEqual(buffer.buffered, 0)

    def test_buffered_counts_header_and_partial_body(self) -> None:
        """The header of an incomplete PDU still counts as buffered."""
        buffer = PDUBuffer(max_pdata_length=16384)
        raw = pdata_pdu(1, 0, b"x" * 100)
        buffer.feed(raw[:3])
        self.assertEqual(buffer.buffered, 3)
        buffer.feed(raw[3:50])
        self.assertEqual(buffer.buffered, 50)


class LargePDataTests(SynchronousTestCase):
    """Big P-DATA-TF PDUs arriving in transport-sized chunks."""

    def test_256_kib_pdu_in_64_kib_chunks(self) -> None:
        """A 256 KiB P-DATA-TF fed in 64 KiB reads decodes once, after the last read."""
        data = bytes(range(256)) * 1024
        raw = pdata_pdu(1, 0x02, data)
        buffer = PDUBuffer(max_pdata_length=0)
        chunks = [raw[start : start + 65536] for start in range(0, len(raw), 65536)]
        for chunk in chunks[:-1]:
            self.assertEqual(buffer.feed(chunk), [])
        self.assertEqual(buffer.feed(chunks[-1]), [PDataTF((PDV(1, 0x02, data),))])

    def test_pieces_are_not_joined_before_the_body_is_complete(self) -> None:
        """Partial reads are queued as they came, not re-joined on every feed (no quadratic copying)."""
        raw = pdata_pdu(1, 0x02, b"z" * 200000)
        buffer = PDUBuffer(max_pdata_length=0)
        for start in range(0, 150000, 10000):
            buffer.feed(raw[start : start + 10000])
        # White-box: 15 reads minus the one the header was taken from are still separate.
        self.assertEqual(len(buffer._chunks), 15)
        self.assertEqual(buffer.buffered, 150000)

    def test_many_small_pdus_in_one_large_read(self) -> None:
        """Thousands of small PDUs in a single read all come out (linear slicing by offset)."""
        raw = pdata_pdu(1, 0, b"ab")
        buffer = PDUBuffer(max_pdata_length=16384)
        out = buffer.feed(raw * 5000 + A_RELEASE_RQ)
        self.assertEqual(len(out), 5001)
        self.assertEqual(out[-1], AReleaseRQ())

    def test_pdata_exactly_at_the_limit_is_accepted(self) -> None:
        """A PDU-length equal to our maximum is within the limit (PS3.8 D.1)."""
        raw = pdata_pdu(1, 0, b"x" * (16384 - 6))
        self.assertEqual(len(PDUBuffer(max_pdata_length=16384).feed(raw)), 1)


class HeaderRejectionTests(SynchronousTestCase):
    """Unacceptable headers are refused before any body byte is kept (HARDENING R4)."""

    def assertFails(self, buffer: PDUBuffer, data: bytes, reason: AbortReason) -> PDUDecodeError:
        """Feed ``data``, assert it yields exactly one error with ``reason``, and return it."""
        out = buffer.feed(data)
        self.assertEqual(len(out), 1, out)
        error = out[0]
        assert isinstance(error, PDUDecodeError)
        self.assertEqual(error.reason, reason)
        self.assertTrue(buffer.dead)
        self.assertEqual(buffer.buffered, 0)
        return error

    def test_http_request_is_unrecognized_at_its_first_byte(self) -> None:
        """``GET`` starts with 0x47, not a PDU type: refused at once, no length read (HARDENING P03)."""
        self.assertFails(PDUBuffer(16384), b"G", AbortReason.UNRECOGNIZED_PDU)
        self.assertFails(PDUBuffer(16384), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", AbortReason.UNRECOGNIZED_PDU)

    def test_tls_client_hello_is_unrecognized(self) -> None:
        """A TLS record starts with 0x16, not a PDU type (HARDENING P04)."""
        error = self.assertFails(PDUBuffer(16384), b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc", AbortReason.UNRECOGNIZED_PDU)
        self.assertIn("0x16", error.message)

    def test_unknown_types_are_unrecognized(self) -> None:
        """Types 0x00, 0x08 and 0xFF are unrecognized PDUs (HARDENING P27)."""
        for first in (0x00, 0x08, 0xFF):
            self.assertFails(PDUBuffer(16384), bytes((first, 0, 0, 0, 0, 4, 0, 0, 0, 0)), AbortReason.UNRECOGNIZED_PDU)

    def test_huge_associate_rq_lengths_are_refused_at_the_header(self) -> None:
        """RQ lengths of 0xFFFFFFFF, 0x80000000 or 0xFFFFFFF5 exceed the cap with 1 KB following (HARDENING P05)."""
        for length in (0xFFFFFFFF, 0x80000000, 0xFFFFFFF5):
            buffer = PDUBuffer(16384)
            header = b"\x01\x00" + length.to_bytes(4, "big")
            self.assertFails(buffer, header, INVALID)
            self.assertEqual(buffer.feed(bytes(1024)), [])

    def test_associate_rq_over_a_custom_cap_is_refused(self) -> None:
        """max_other_length bounds A-ASSOCIATE PDUs."""
        self.assertFails(PDUBuffer(16384, max_other_length=1000), b"\x01\x00\x00\x00\x03\xe9", INVALID)

    def test_associate_lengths_below_the_fixed_part_are_refused_at_the_header(self) -> None:
        """RQ or AC lengths of 0, 1 or 67 cannot hold the fixed part (HARDENING P06)."""
        for pdu_type in (0x01, 0x02):
            for length in (0, 1, 67):
                self.assertFails(PDUBuffer(16384), bytes((pdu_type, 0)) + length.to_bytes(4, "big"), INVALID)

    def test_pdata_over_our_maximum_is_refused_at_the_header(self) -> None:
        """Max+1, 16 MB and 4 GB P-DATA-TF lengths are refused before the body arrives (HARDENING P20)."""
        for length in (16385, 16 * 1024 * 1024, 0xFFFFFFFF):
            error = self.assertFails(PDUBuffer(16384), b"\x04\x00" + length.to_bytes(4, "big"), INVALID)
            self.assertIn(str(length), error.message)

    def test_pdata_too_short_for_a_pdv_is_refused_at_the_header(self) -> None:
        """P-DATA-TF lengths 0 to 5 cannot hold one PDV item (HARDENING P21)."""
        for length in range(6):
            self.assertFails(PDUBuffer(16384), b"\x04\x00" + length.to_bytes(4, "big"), INVALID)

    def test_short_pdus_with_length_other_than_4_are_refused_at_the_header(self) -> None:
        """RJ, release RQ/RP and abort lengths other than 4 are refused (HARDENING P28)."""
        for pdu_type in (0x03, 0x05, 0x06, 0x07):
            for length in (0, 3, 5, 0xFFFFFFFF):
                self.assertFails(PDUBuffer(16384), bytes((pdu_type, 0)) + length.to_bytes(4, "big"), INVALID)

    def test_zero_max_pdata_length_means_no_limit(self) -> None:
        """With max_pdata_length 0, a large P-DATA-TF header is accepted and waits for its body."""
        buffer = PDUBuffer(max_pdata_length=0)
        self.assertEqual(buffer.feed(b"\x04\x00\x10\x00\x00\x00"), [])
        self.assertFalse(buffer.dead)

    def test_max_pdata_length_can_change_between_pdus(self) -> None:
        """The association may set the limit after negotiation; later headers use the new value."""
        buffer = PDUBuffer(max_pdata_length=0)
        self.assertEqual(len(buffer.feed(pdata_pdu(1, 0, b"x" * 100))), 1)
        buffer.max_pdata_length = 50
        self.assertFails(buffer, pdata_pdu(1, 0, b"x" * 100), INVALID)


class DeadBufferTests(SynchronousTestCase):
    """After the first error the stream cannot be trusted: the error is last, then input is dropped."""

    def test_error_comes_after_the_pdus_before_it(self) -> None:
        """Well-formed PDUs in the same read are delivered before the error."""
        buffer = PDUBuffer(16384)
        out = buffer.feed(A_RELEASE_RQ + encode(AReleaseRP()) + b"\x47ET /")
        self.assertEqual(out[:2], [AReleaseRQ(), AReleaseRP()])
        self.assertEqual(len(out), 3)
        assert isinstance(out[2], PDUDecodeError)
        self.assertEqual(out[2].reason, AbortReason.UNRECOGNIZED_PDU)

    def test_pdus_after_an_error_are_dropped(self) -> None:
        """Valid PDUs after the faulty one, in the same or later reads, never come out."""
        buffer = PDUBuffer(16384)
        out = buffer.feed(b"\x05\x00\x00\x00\x00\x05" + bytes(5) + A_RELEASE_RQ)
        self.assertEqual(len(out), 1)
        self.assertEqual(buffer.feed(A_RELEASE_RQ), [])
        self.assertEqual(buffer.buffered, 0)

    def test_body_decode_errors_are_reported_with_their_reason(self) -> None:
        """A header that passes but a body that fails decoding yields the codec's error."""
        buffer = PDUBuffer(16384)
        bad_pdata = b"\x04\x00\x00\x00\x00\x06" + b"\x00\x00\x00\x01\x01\x00"
        out = buffer.feed(bad_pdata)
        self.assertEqual(len(out), 1)
        assert isinstance(out[0], PDUDecodeError)
        self.assertEqual(out[0].reason, INVALID)
        self.assertIn("PDV item length 1", out[0].message)
        self.assertTrue(buffer.dead)
