"""Zero-copy sends (issue 13): a data set goes from the spool file to a real TCP socket with ``os.sendfile``.

These tests use the real reactor and a loopback TCP connection (the path
exists only for a socket): the requestor's file sender streams a data set
to a server that reads the PDUs back. Its read side is paused first, so the
kernel's buffers fill, ``sendfile`` comes up short, and the rest must go
through Twisted's buffer in order, with the producer resumed once it
drained. StringTransport tests (everywhere else) keep the buffered path.
"""

from __future__ import annotations

import os
import socket
import struct
import tempfile
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.trial.unittest import TestCase

import gateway.associate
from gateway.associate import _FileSender, zero_copy_socket

#: The reactor (imported in tests only; gateway modules never import it at module level).
reactor: Any = _reactor

#: Bytes before the data set in the test file (a stand-in for the file meta).
OFFSET = 300
#: PDV payload per PDU (a 16 KiB peer maximum, as DCMTK's default).
FRAGMENT = 16384 - 6


class Collector(Protocol):
    """The destination: keeps every byte; its reading can be paused."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.connected_d: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.connected_d.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.data += data


class FakeMachine:
    """The association state the file sender checks (established all along)."""

    is_established = True


class Requestor(Protocol):
    """The sending side: what :class:`_FileSender` needs of a ``RequestorProtocol``."""

    def __init__(self) -> None:
        self.association = FakeMachine()
        self.connected_d: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.connected_d.callback(None)

    def send_encoded(self, data: bytes) -> bool:
        self.transport.write(data)
        return True


def pdvs(stream: bytes) -> tuple[bytes, list[int]]:
    """Parse P-DATA-TF PDUs of one PDV each (PS3.8 9.3.5): the payloads joined, and each control byte."""
    payload = bytearray()
    controls: list[int] = []
    at = 0
    while at < len(stream):
        pdu_type, _, length = struct.unpack_from(">BBI", stream, at)
        assert pdu_type == 4, pdu_type
        item_length, _context, control = struct.unpack_from(">IBB", stream, at + 6)
        assert item_length == length - 4, (item_length, length)
        payload += stream[at + 12 : at + 6 + length]
        controls.append(control)
        at += 6 + length
    return bytes(payload), controls


class ZeroCopyTests(TestCase):
    """The file sender over a real loopback TCP connection."""

    timeout = 30

    async def connect(self) -> tuple[Requestor, Collector]:
        """A connected (requestor, collector) pair with small socket buffers, so they fill."""
        collector = Collector()
        server_factory = Factory.forProtocol(lambda: collector)
        port = reactor.listenTCP(0, server_factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        requestor = Requestor()
        client_factory = ClientFactory.forProtocol(lambda: requestor)
        connector = reactor.connectTCP("127.0.0.1", port.getHost().port, client_factory)
        self.addCleanup(connector.disconnect)
        await requestor.connected_d
        await collector.connected_d
        requestor.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
        collector.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
        return requestor, collector

    def data_file(self, size: int) -> tuple[str, bytes]:
        """A file of ``OFFSET`` junk bytes then a data set of ``size`` random bytes."""
        fd, path = tempfile.mkstemp()
        self.addCleanup(os.unlink, path)
        data = os.urandom(size)
        with os.fdopen(fd, "wb") as f:
            f.write(b"m" * OFFSET + data)
        return path, data

    def count_sendfile(self) -> list[int]:
        """Count the bytes each ``os.sendfile`` call sent (the function is wrapped, not replaced)."""
        calls: list[int] = []
        real = os.sendfile

        def counting(*args: Any) -> int:
            sent = real(*args)
            calls.append(sent)
            return sent

        self.patch(gateway.associate.os, "sendfile", counting)
        return calls

    async def send(self, requestor: Requestor, path: str, size: int, sock: socket.socket | None) -> None:
        """Stream the data set of ``path`` through a registered pull producer until it is done."""
        fp = open(path, "rb")
        fp.seek(OFFSET)
        sender = _FileSender(requestor, fp, 1, size, FRAGMENT, sock)  # type: ignore[arg-type]
        requestor.transport.registerProducer(sender, False)
        await sender.done

    async def received(self, collector: Collector, length: int) -> bytes:
        """Wait until the collector holds ``length`` bytes (the reactor runs meanwhile)."""
        while len(collector.data) < length:
            d: Deferred[None] = Deferred()
            reactor.callLater(0.01, d.callback, None)
            await d
        return bytes(collector.data)

    async def test_a_plain_tcp_transport_sends_with_sendfile_and_the_bytes_arrive_in_order(self) -> None:
        """Every payload byte leaves through sendfile (none through Python) and the PDUs arrive whole and in order."""
        requestor, collector = await self.connect()
        sock = zero_copy_socket(requestor.transport)
        self.assertIsNotNone(sock)
        size = 512 * 1024
        path, data = self.data_file(size)
        calls = self.count_sendfile()
        await self.send(requestor, path, size, sock)
        pdu_count = -(-size // FRAGMENT)
        stream = await self.received(collector, size + 12 * pdu_count)
        payload, controls = pdvs(stream)
        self.assertEqual(payload, data)
        self.assertEqual(controls, [0] * (pdu_count - 1) + [2])
        self.assertGreaterEqual(sum(calls), size * 3 // 4, "most of the data set should have gone through sendfile")

    async def test_a_full_socket_hands_the_rest_to_the_transport_and_resumes(self) -> None:
        """The destination stops reading: sendfile comes up short, the rest waits in Twisted's buffer, and all arrives in order."""
        requestor, collector = await self.connect()
        sock = zero_copy_socket(requestor.transport)
        size = 8 * 1024 * 1024 + 12345
        path, data = self.data_file(size)
        calls = self.count_sendfile()
        collector.transport.pauseProducing()
        reactor.callLater(0.3, collector.transport.resumeProducing)
        await self.send(requestor, path, size, sock)
        pdu_count = -(-size // FRAGMENT)
        stream = await self.received(collector, size + 12 * pdu_count)
        payload, controls = pdvs(stream)
        self.assertEqual(len(payload), size)
        self.assertEqual(payload, data)
        self.assertEqual(controls[-1], 2)
        self.assertTrue(any(0 < sent < FRAGMENT for sent in calls) or sum(calls) < size,
                        "the socket never filled: the fallback was not exercised")
        self.assertGreater(sum(calls), 0)
        print(f"\nsendfile calls {len(calls)}, bytes {sum(calls)} of {size}, short {sum(1 for c in calls if c < FRAGMENT)}")

    async def test_buffered_path_when_no_socket_is_given(self) -> None:
        """Without a socket (TLS, a transcoded copy) nothing goes through sendfile, and the bytes are the same."""
        requestor, collector = await self.connect()
        size = 100_000
        path, data = self.data_file(size)
        calls = self.count_sendfile()
        await self.send(requestor, path, size, None)
        stream = await self.received(collector, size + 12 * -(-size // FRAGMENT))
        self.assertEqual(pdvs(stream)[0], data)
        self.assertEqual(calls, [])

    def test_tls_and_test_transports_get_no_socket(self) -> None:
        """zero_copy_socket refuses a transport that is not the reactor's plain TCP (a StringTransport, a TLS wrapper)."""
        from twisted.internet.testing import StringTransport

        self.assertIsNone(zero_copy_socket(StringTransport()))
