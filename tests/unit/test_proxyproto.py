"""The sans-IO PROXY protocol parser (issue 14): versions 1 and 2, bounds, and the trusted networks.

Fixtures are annotated bytes written from haproxy's ``doc/proxy-protocol.txt``
(sections 2.1 and 2.2), not produced by the parser under test.
"""

from __future__ import annotations

import struct

from twisted.trial.unittest import SynchronousTestCase

from gateway.proxyproto import (
    V1_MAX_LENGTH,
    V2_MAX_LENGTH,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    ProxyHeaderParser,
    TrustedNetworks,
)

#: An A-ASSOCIATE-RQ's first bytes (PDU type 0x01, reserved, length): what follows a header.
PDU_START = b"\x01\x00\x00\x00\x00\xcd"


def v2(command: int, family: int, body: bytes) -> bytes:
    """A version 2 header: signature, version 2 and ``command``, ``family``, length, ``body``."""
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


#: TCP over IPv4 from 192.0.2.10:40123 to 198.51.100.1:104.
V2_TCP4 = v2(0x1, 0x11, bytes([192, 0, 2, 10, 198, 51, 100, 1]) + struct.pack("!HH", 40123, 104))
#: TCP over IPv6 from 2001:db8::7:50000 to 2001:db8::1:2762.
V2_TCP6 = v2(
    0x1,
    0x21,
    bytes.fromhex("20010db8000000000000000000000007") + bytes.fromhex("20010db8000000000000000000000001")
    + struct.pack("!HH", 50000, 2762),
)


class VersionOneTests(SynchronousTestCase):
    """The text header (proxy-protocol.txt 2.1)."""

    def test_tcp4_line_gives_the_source_and_the_bytes_after_it(self) -> None:
        """A TCP4 line yields the original source and destination; the PDU bytes after CRLF are returned."""
        header, rest = ProxyHeaderParser().feed(b"PROXY TCP4 192.0.2.10 198.51.100.1 40123 104\r\n" + PDU_START)
        self.assertEqual(header, ProxyHeader(1, False, ("192.0.2.10", 40123), ("198.51.100.1", 104)))
        self.assertEqual(rest, PDU_START)

    def test_tcp6_line(self) -> None:
        """A TCP6 line yields IPv6 addresses in their compressed form."""
        header, rest = ProxyHeaderParser().feed(b"PROXY TCP6 2001:db8::7 2001:db8::1 50000 2762\r\n")
        self.assertEqual(header.source, ("2001:db8::7", 50000))
        self.assertEqual(rest, b"")

    def test_unknown_keeps_the_real_address(self) -> None:
        """PROXY UNKNOWN (a proxy's own connection) is local: no source address."""
        header, _ = ProxyHeaderParser().feed(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n")
        self.assertTrue(header.local)
        self.assertIsNone(header.source)

    def test_line_split_across_reads_one_byte_at_a_time(self) -> None:
        """Fed one byte at a time, the parser answers None until the CRLF, then the header."""
        parser = ProxyHeaderParser()
        line = b"PROXY TCP4 192.0.2.10 198.51.100.1 40123 104\r\n"
        results = [parser.feed(line[i : i + 1]) for i in range(len(line))]
        self.assertEqual(results[:-1], [None] * (len(line) - 1))
        self.assertEqual(results[-1][0].source, ("192.0.2.10", 40123))

    def test_no_crlf_within_107_bytes_is_refused_without_buffering_more(self) -> None:
        """A line with no CRLF in its first 107 bytes is refused as soon as 107 bytes are in."""
        parser = ProxyHeaderParser()
        self.assertIsNone(parser.feed(b"PROXY TCP4 " + b"1" * (V1_MAX_LENGTH - 12)))
        error = self.assertRaises(ProxyHeaderError, parser.feed, b"1")
        self.assertEqual(error.label, "malformed")

    def test_bad_lines_are_malformed(self) -> None:
        """Wrong protocol word, address family mismatch, bad or out-of-range ports, bare LF, extra fields."""
        for line in (
            b"PROXY UDP4 192.0.2.10 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 2001:db8::7 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.10 198.51.100.1 65536 2\r\n",
            b"PROXY TCP4 192.0.2.10 198.51.100.1 -1 2\r\n",
            b"PROXY TCP4 192.0.2.10 198.51.100.1 1 2 3\r\n",
            b"PROXY TCP4 192.0.2.10 198.51.100.1 1 2\n",
            b"PROXY TCP4 192.0.2.010 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.10 198.51.100.1 1 \xff\r\n",
        ):
            error = self.assertRaises(ProxyHeaderError, ProxyHeaderParser().feed, line)
            self.assertEqual(error.label, "malformed", line)


class VersionTwoTests(SynchronousTestCase):
    """The binary header (proxy-protocol.txt 2.2)."""

    def test_tcp4(self) -> None:
        """PROXY command, TCP over IPv4: the source and destination, and the bytes after the header."""
        header, rest = ProxyHeaderParser().feed(V2_TCP4 + PDU_START)
        self.assertEqual(header, ProxyHeader(2, False, ("192.0.2.10", 40123), ("198.51.100.1", 104)))
        self.assertEqual(rest, PDU_START)

    def test_tcp6(self) -> None:
        """PROXY command, TCP over IPv6."""
        header, _ = ProxyHeaderParser().feed(V2_TCP6)
        self.assertEqual((header.source, header.destination), (("2001:db8::7", 50000), ("2001:db8::1", 2762)))

    def test_tlvs_after_the_addresses_are_skipped(self) -> None:
        """TLVs counted in the length (here PP2_TYPE_AUTHORITY, 0x02) are skipped, not passed on."""
        tlv = b"\x02\x00\x0bexample.org"
        body = bytes([192, 0, 2, 10, 198, 51, 100, 1]) + struct.pack("!HH", 1, 2) + tlv
        header, rest = ProxyHeaderParser().feed(v2(0x1, 0x11, body) + PDU_START)
        self.assertEqual(header.source, ("192.0.2.10", 1))
        self.assertEqual(rest, PDU_START)

    def test_local_command_keeps_the_real_address(self) -> None:
        """LOCAL (a health check of the proxy itself) is local, whatever the family and body."""
        header, rest = ProxyHeaderParser().feed(v2(0x0, 0x00, b"") + PDU_START)
        self.assertEqual(header, ProxyHeader(2, True))
        self.assertEqual(rest, PDU_START)

    def test_unspec_family_is_local(self) -> None:
        """PROXY with the UNSPEC family: the receiver uses the real addresses (spec 2.2)."""
        header, _ = ProxyHeaderParser().feed(v2(0x1, 0x00, b""))
        self.assertTrue(header.local)

    def test_split_across_reads_one_byte_at_a_time(self) -> None:
        """Fed one byte at a time, the binary header comes out once its last address byte is in."""
        parser = ProxyHeaderParser()
        data = V2_TCP6 + b"X"
        results = [parser.feed(data[i : i + 1]) for i in range(len(V2_TCP6))]
        self.assertEqual(results[:-1], [None] * (len(V2_TCP6) - 1))
        self.assertEqual(results[-1][0].source, ("2001:db8::7", 50000))

    def test_length_above_the_cap_is_refused_once_the_fixed_part_is_in(self) -> None:
        """A length field above the cap is refused at byte 16, before any of the body is buffered (R4)."""
        header = V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", V2_MAX_LENGTH + 1)
        parser = ProxyHeaderParser()
        self.assertIsNone(parser.feed(header[:15]))
        error = self.assertRaises(ProxyHeaderError, parser.feed, header[15:])
        self.assertEqual(error.label, "malformed")

    def test_bad_headers_are_malformed(self) -> None:
        """Version 1 in a v2 signature, an unknown command, UDP and UNIX families, addresses too short."""
        tcp4 = bytes(8) + bytes(4)
        for data in (
            V2_SIGNATURE + b"\x11\x11\x00\x0c" + tcp4,
            v2(0x2, 0x11, tcp4),
            v2(0x1, 0x12, tcp4),
            v2(0x1, 0x31, bytes(216)),
            v2(0x1, 0x11, bytes(11)),
            v2(0x1, 0x21, bytes(35)),
        ):
            error = self.assertRaises(ProxyHeaderError, ProxyHeaderParser().feed, data)
            self.assertEqual(error.label, "malformed", data)


class MissingHeaderTests(SynchronousTestCase):
    """Bytes that are not a PROXY header at all."""

    def test_a_dicom_pdu_is_a_missing_header_at_its_first_byte(self) -> None:
        """An A-ASSOCIATE-RQ sent straight to the listener is refused as 'missing' at its first byte."""
        error = self.assertRaises(ProxyHeaderError, ProxyHeaderParser().feed, PDU_START[:1])
        self.assertEqual(error.label, "missing")

    def test_tls_client_hello_and_http_are_missing_headers(self) -> None:
        """A TLS record (0x16) or an HTTP request is refused as soon as it stops matching a signature."""
        for data in (b"\x16\x03\x01\x02\x00", b"GET / HTTP/1.1\r\n", b"PROXZ", b"\r\n\r\n\x00\r\nQUIZ"):
            error = self.assertRaises(ProxyHeaderError, ProxyHeaderParser().feed, data)
            self.assertEqual(error.label, "missing", data)

    def test_nothing_yet_needs_more(self) -> None:
        """An empty read asks for more."""
        self.assertIsNone(ProxyHeaderParser().feed(b""))

    def test_feeding_after_the_header_is_a_programming_error(self) -> None:
        """Once a header is returned, the parser takes no more bytes (the adapter passes them on)."""
        parser = ProxyHeaderParser()
        parser.feed(V2_TCP4)
        self.assertRaises(RuntimeError, parser.feed, b"x")


class TrustedNetworksTests(SynchronousTestCase):
    """Which peers may send a header."""

    def test_membership(self) -> None:
        """Addresses inside the networks are trusted; IPv4-mapped IPv6 counts as IPv4; others and junk are not."""
        trusted = TrustedNetworks(["127.0.0.1/32", "10.0.0.0/24", "fd00::/64"])
        self.assertIn("127.0.0.1", trusted)
        self.assertIn("10.0.0.200", trusted)
        self.assertIn("::ffff:10.0.0.9", trusted)
        self.assertIn("fd00::5", trusted)
        self.assertNotIn("127.0.0.2", trusted)
        self.assertNotIn("10.0.1.1", trusted)
        self.assertNotIn("fd01::5", trusted)
        self.assertNotIn("not-an-address", trusted)
        self.assertNotIn(None, trusted)
