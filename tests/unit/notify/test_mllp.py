"""Tests for :mod:`gateway.notify.mllp` (the sans-IO framing) and the sender's protocol over a StringTransport.

Frames are fed whole, split at every byte, several in one read, and broken
(bytes outside a frame, <VT> inside one, <FS> without <CR>, above the cap).
"""

from __future__ import annotations

from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.notify.mllp import Frame, FramingError, LocalFramingError, MllpDecoder, encode
from gateway.send.hl7 import ConnectionClosed, MllpClientProtocol, PeerFramingError

MESSAGE = b"MSH|^~\\&|GW||||20260101||ORU^R01^ORU_R01|1|P|2.5.1\rPID|||1\r"
ACK = b"MSH|^~\\&|R||||20260101||ACK|2|P|2.5.1\rMSA|AA|1\r"


class EncodeTests(SynchronousTestCase):
    """The encoder's frame (HL7 v2.5.1 C.4.3)."""

    def test_frame_is_vt_content_fs_cr(self) -> None:
        """A message is framed as <VT> message <FS><CR>."""
        self.assertEqual(encode(b"MSH|x\r"), b"\x0bMSH|x\r\x1c\x0d")

    def test_content_with_block_characters_is_refused(self) -> None:
        """Content holding <VT> or <FS> cannot be framed: a local error, nothing produced."""
        self.assertRaises(LocalFramingError, encode, b"MSH|\x0b")
        self.assertRaises(LocalFramingError, encode, b"MSH|\x1c")


class DecoderTests(SynchronousTestCase):
    """The incremental decoder."""

    def test_whole_frame(self) -> None:
        """One whole frame gives its content."""
        self.assertEqual(MllpDecoder().feed(encode(MESSAGE)), [Frame(MESSAGE)])

    def test_split_at_every_byte(self) -> None:
        """Fed one byte at a time, the frame comes out once, at its last byte."""
        decoder = MllpDecoder()
        data = encode(MESSAGE)
        events = []
        for index in range(len(data)):
            got = decoder.feed(data[index : index + 1])
            if index < len(data) - 1:
                self.assertEqual(got, [])
            events += got
        self.assertEqual(events, [Frame(MESSAGE)])
        self.assertFalse(decoder.mid_frame)

    def test_split_between_fs_and_cr(self) -> None:
        """A read ending right after <FS> completes nothing; the <CR> completes the frame."""
        decoder = MllpDecoder()
        data = encode(MESSAGE)
        self.assertEqual(decoder.feed(data[:-1]), [])
        self.assertTrue(decoder.mid_frame)
        self.assertEqual(decoder.feed(data[-1:]), [Frame(MESSAGE)])

    def test_two_frames_and_a_half_in_one_read(self) -> None:
        """Two frames and the start of a third in one read: two frames now, the third when it ends."""
        decoder = MllpDecoder()
        third = encode(b"MSH|3\r")
        events = decoder.feed(encode(MESSAGE) + encode(ACK) + third[:4])
        self.assertEqual(events, [Frame(MESSAGE), Frame(ACK)])
        self.assertEqual(decoder.feed(third[4:]), [Frame(b"MSH|3\r")])

    def test_empty_frame(self) -> None:
        """<VT><FS><CR> is a frame with no content (the layer above refuses it)."""
        self.assertEqual(MllpDecoder().feed(b"\x0b\x1c\x0d"), [Frame(b"")])

    def test_garbage_before_a_frame(self) -> None:
        """A byte outside a frame is a framing error naming it; the decoder is then dead."""
        decoder = MllpDecoder()
        (error,) = decoder.feed(b"GET / HTTP/1.1\r\n")
        self.assertIsInstance(error, FramingError)
        self.assertIn("0x47", error.reason)
        self.assertTrue(decoder.broken)
        self.assertEqual(decoder.feed(encode(MESSAGE)), [], "nothing is framed after the fault")

    def test_garbage_after_a_frame_keeps_the_frame(self) -> None:
        """A frame followed by CR LF: the frame, then the error (bytes between frames are refused)."""
        events = MllpDecoder().feed(encode(MESSAGE) + b"\r\n")
        self.assertEqual(events[0], Frame(MESSAGE))
        self.assertIsInstance(events[1], FramingError)
        self.assertEqual(len(events), 2)

    def test_vt_inside_a_frame(self) -> None:
        """A second <VT> before the end block is an error."""
        (error,) = MllpDecoder().feed(b"\x0bMSH|\x0bMSH|\x1c\x0d")
        self.assertIsInstance(error, FramingError)
        self.assertIn("<VT>", error.reason)

    def test_fs_without_cr(self) -> None:
        """<FS> followed by anything but <CR> is an error."""
        (error,) = MllpDecoder().feed(b"\x0bMSH|\x1cX")
        self.assertIsInstance(error, FramingError)
        self.assertIn("<CR>", error.reason)

    def test_frame_at_the_cap_passes_and_above_it_is_refused(self) -> None:
        """A frame of exactly max_size content bytes passes; one byte more is refused as soon as it arrives."""
        self.assertEqual(MllpDecoder(max_size=10).feed(encode(b"x" * 10)), [Frame(b"x" * 10)])
        decoder = MllpDecoder(max_size=10)
        self.assertEqual(decoder.feed(b"\x0b" + b"x" * 10), [])
        (error,) = decoder.feed(b"x")
        self.assertIsInstance(error, FramingError)
        self.assertIn("larger than 10", error.reason)

    def test_oversize_in_small_reads_keeps_no_more_than_the_cap(self) -> None:
        """An endless frame fed in pieces is refused once past the cap, and the buffer is released."""
        decoder = MllpDecoder(max_size=100)
        decoder.feed(b"\x0b")
        events = []
        for _ in range(20):
            events += decoder.feed(b"y" * 7)
        self.assertEqual(len(events), 1)
        self.assertIsInstance(events[0], FramingError)
        self.assertEqual(len(decoder._buffer), 0)


class ProtocolTests(SynchronousTestCase):
    """The sender's protocol (:class:`gateway.send.hl7.MllpClientProtocol`) driven through a StringTransport."""

    def connected(self) -> tuple[MllpClientProtocol, StringTransport]:
        protocol = MllpClientProtocol()
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def test_ready_on_connect_and_exchange_writes_one_frame(self) -> None:
        """A plain connection is ready at once; exchange writes the framed message and fires with the answer's content."""
        protocol, transport = self.connected()
        self.assertTrue(protocol.ready.called)
        answer = protocol.exchange(MESSAGE)
        self.assertEqual(transport.value(), encode(MESSAGE))
        got: list[bytes] = []
        answer.addCallback(got.append)
        protocol.dataReceived(encode(ACK)[:5])
        self.assertEqual(got, [])
        protocol.dataReceived(encode(ACK)[5:])
        self.assertEqual(got, [ACK])

    def test_tls_is_ready_after_the_handshake(self) -> None:
        """Over TLS the connection is ready only once the handshake completed."""
        protocol = MllpClientProtocol(tls=True)
        protocol.makeConnection(StringTransport())
        self.assertFalse(protocol.ready.called)
        protocol.handshakeCompleted()
        self.assertTrue(protocol.ready.called)

    def test_one_message_in_flight(self) -> None:
        """A second exchange before the first one's answer is a local error."""
        protocol, _ = self.connected()
        protocol.exchange(MESSAGE)
        self.assertRaises(RuntimeError, protocol.exchange, MESSAGE)

    def test_garbage_fails_the_wait_and_drops_the_connection(self) -> None:
        """Bytes outside a frame fail the awaited answer with PeerFramingError and abort the connection."""
        protocol, transport = self.connected()
        failure = self.failureResultOf(self._exchange_then(protocol, b"junk"))
        failure.trap(PeerFramingError)
        self.assertTrue(transport.disconnecting or transport.disconnected)

    def test_unasked_frame_drops_the_connection(self) -> None:
        """A frame when no answer is awaited (original mode: none unasked) aborts the connection."""
        protocol, transport = self.connected()
        protocol.dataReceived(encode(ACK))
        self.assertTrue(transport.disconnecting or transport.disconnected)

    def test_close_mid_frame_fails_the_wait(self) -> None:
        """The connection ends in the middle of the answer's frame: ConnectionClosed saying so."""
        protocol, _ = self.connected()
        answer = protocol.exchange(MESSAGE)
        protocol.dataReceived(encode(ACK)[:10])
        protocol.connectionLost(Failure(ConnectionClosed("gone")))
        failure = self.failureResultOf(answer)
        failure.trap(ConnectionClosed)
        self.assertIn("middle of a frame", str(failure.value))
        self.assertRaises(ConnectionClosed, protocol.exchange, MESSAGE)

    def test_oversize_answer_is_refused(self) -> None:
        """An answer frame above the protocol's cap fails the wait."""
        protocol = MllpClientProtocol(max_size=16)
        protocol.makeConnection(StringTransport())
        failure = self.failureResultOf(self._exchange_then(protocol, b"\x0b" + b"z" * 17))
        failure.trap(PeerFramingError)

    @staticmethod
    def _exchange_then(protocol: MllpClientProtocol, data: bytes):  # type: ignore[no-untyped-def]
        answer = protocol.exchange(MESSAGE)
        protocol.dataReceived(data)
        return answer


class SansIOTests(SynchronousTestCase):
    """The framing module is sans-IO like gateway/ul and gateway/dimse (DESIGN.md principle 1)."""

    def test_mllp_module_imports_no_io(self) -> None:
        """gateway/notify/mllp.py imports nothing of twisted, socket, time or logging and opens no file."""
        from tests.unit.test_rules import ROOT, sans_io_violations

        path = ROOT / "gateway" / "notify" / "mllp.py"
        self.assertEqual(sans_io_violations(path.read_text(), str(path)), [])
