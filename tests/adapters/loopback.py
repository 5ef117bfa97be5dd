"""Connect two protocols through a pair of StringTransports and pump bytes between them.

A small stand-in for ``twisted.test.iosim.connectedServerAndClient``, which is
not public API: :meth:`Loopback.pump` moves whatever each side wrote to the
other until both are quiet, and honours ``loseConnection`` by delivering
``connectionLost`` to both protocols. Registered pull producers are resumed
on every pump, so a streaming sender makes progress as it would on a socket.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure


class Loopback:
    """Two protocols joined back to back.

    :param server: the accepting protocol.
    :param client: the connecting protocol.
    """

    def __init__(self, server: IProtocol, client: IProtocol) -> None:
        self.server = server
        self.client = client
        self.server_transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 11112), peerAddress=IPv4Address("TCP", "127.0.0.1", 40001)
        )
        self.client_transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 40001), peerAddress=IPv4Address("TCP", "127.0.0.1", 11112)
        )
        self.closed = False
        self.server.makeConnection(self.server_transport)
        self.client.makeConnection(self.client_transport)

    def pump(self, rounds: int = 10000) -> None:
        """Exchange bytes until neither side has anything more to send (or ``rounds`` pass)."""
        for _ in range(rounds):
            if self.closed:
                return
            moved = False
            for transport in (self.client_transport, self.server_transport):
                producer = transport.producer
                if producer is not None and not transport.streaming:
                    producer.resumeProducing()
            to_server = self.client_transport.value()
            self.client_transport.clear()
            if to_server:
                moved = True
                self.server.dataReceived(to_server)
            to_client = self.server_transport.value()
            self.server_transport.clear()
            if to_client:
                moved = True
                self.client.dataReceived(to_client)
            if self.server_transport.disconnecting or self.client_transport.disconnecting:
                self._close()
                return
            if not moved and not (self.client_transport.producer or self.server_transport.producer):
                return

    def _close(self) -> None:
        # Deliver what is still in flight, then the close, as TCP would.
        rest_to_client = self.server_transport.value()
        rest_to_server = self.client_transport.value()
        self.server_transport.clear()
        self.client_transport.clear()
        if rest_to_client:
            self.client.dataReceived(rest_to_client)
        if rest_to_server:
            self.server.dataReceived(rest_to_server)
        self.closed = True
        self.server.connectionLost(Failure(ConnectionDone()))
        self.client.connectionLost(Failure(ConnectionDone()))
