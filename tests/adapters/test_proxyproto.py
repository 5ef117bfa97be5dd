"""The PROXY protocol wrapper in front of the real acceptor, bytes through StringTransport (issue 14).

The wrapper (:class:`gateway.proxyproto.ProxyProtocolFactory`) wraps an
:class:`~gateway.listen.AcceptorFactory` as the gateway wraps it; time is a
:class:`~twisted.internet.task.Clock`. What the acceptor and its observer
see (accepted and rejected associations, their ``peer``) shows which address
access control, routing, logs and audit get.
"""

from __future__ import annotations

import shutil
import struct

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gateway import events
from gateway.access import AccessPolicy, NetworkRule
from gateway.proxyproto import V2_SIGNATURE, ProxyProtocolFactory, TrustedNetworks
from gateway.ul import pdu
from tests.adapters.test_listen import AcceptorTestsMixin, Modality


def v2_tcp4(source: str, port: int, destination: str = "198.51.100.1", dport: int = 104) -> bytes:
    """A PROXY v2 header, PROXY command, TCP over IPv4 (proxy-protocol.txt 2.2)."""
    body = bytes(int(x) for x in source.split(".")) + bytes(int(x) for x in destination.split("."))
    body += struct.pack("!HH", port, dport)
    return V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(body)) + body


#: A v2 LOCAL header (a proxy's own connection, e.g. a health check with check-send-proxy).
V2_LOCAL = V2_SIGNATURE + b"\x20\x00\x00\x00"


class Recorder:
    """An observer that keeps the events."""

    def __init__(self) -> None:
        self.events: list[object] = []

    def observe(self, event: object) -> None:
        """Keep ``event``."""
        self.events.append(event)

    def of(self, kind: type) -> list[object]:
        """The events of one type."""
        return [e for e in self.events if isinstance(e, kind)]


class ProxyTestsMixin(AcceptorTestsMixin):
    """An acceptor behind the PROXY wrapper, trusting 127.0.0.1/32, with recorded events and refusals."""

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.recorder = Recorder()
        self.factory.observer = self.recorder
        self.refusals: list[tuple[str, str, str]] = []
        self.proxy = ProxyProtocolFactory(
            self.factory,
            TrustedNetworks(["127.0.0.1/32"]),
            self.clock,
            listener="test",
            timeout=5.0,
            on_refused=lambda *refusal: self.refusals.append(refusal),
        )

    def open(self, host: str = "127.0.0.1", port: int = 40000) -> tuple[object, StringTransport]:
        """Connect a transport from ``host:port`` through the wrapper."""
        proto = self.proxy.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, port),
                                    hostAddress=IPv4Address("TCP", "127.0.0.1", 11112))
        proto.makeConnection(transport)
        return proto, transport


class TrustedHeaderTests(ProxyTestsMixin, SynchronousTestCase):
    """A header from the trusted proxy: the association sees the header's source."""

    def test_header_and_associate_in_one_read_are_accepted_with_the_modality_address(self) -> None:
        """HAProxy sends the v2 header and the A-ASSOCIATE-RQ in one segment: AC, and the peer is the modality's."""
        proto, transport = self.open()
        proto.dataReceived(v2_tcp4("192.0.2.10", 40123) + Modality().associate_rq())
        (ac,) = Modality().read(transport)
        self.assertIsInstance(ac, pdu.AAssociateAC)
        (accepted,) = self.recorder.of(events.AssociationAccepted)
        self.assertEqual(accepted.peer, "192.0.2.10:40123")  # type: ignore[attr-defined]
        self.assertEqual(self.refusals, [])

    def test_network_rules_judge_the_header_address(self) -> None:
        """A listener's networks rule admits a modality inside it and rejects one outside, though both come via 127.0.0.1."""
        self.factory.access = AccessPolicy("DICOMGW", ("CT*", "MR*"), [NetworkRule(("192.0.2.0/24",))])
        inside, inside_transport = self.open()
        inside.dataReceived(v2_tcp4("192.0.2.10", 1000) + Modality().associate_rq())
        self.assertIsInstance(Modality().read(inside_transport)[0], pdu.AAssociateAC)
        outside, outside_transport = self.open(port=40001)
        outside.dataReceived(v2_tcp4("203.0.113.5", 1000) + Modality().associate_rq())
        self.assertEqual(Modality().read(outside_transport), [pdu.AAssociateRJ(1, 1, 1)])
        (rejected,) = self.recorder.of(events.AssociationRejected)
        self.assertEqual(rejected.peer, "203.0.113.5:1000")  # type: ignore[attr-defined]

    def test_header_and_rq_split_across_reads(self) -> None:
        """The header arrives in 3-byte pieces and the RQ after it in pieces: still one AC."""
        proto, transport = self.open()
        data = v2_tcp4("192.0.2.10", 40123) + Modality().associate_rq()
        for i in range(0, len(data), 3):
            proto.dataReceived(data[i : i + 3])
        self.assertIsInstance(Modality().read(transport)[0], pdu.AAssociateAC)

    def test_version_one_tcp6_header_gives_an_ipv6_peer(self) -> None:
        """A v1 TCP6 line: the acceptor's transport answers an IPv6 address."""
        proto, transport = self.open()
        proto.dataReceived(b"PROXY TCP6 2001:db8::7 2001:db8::1 50000 104\r\n")
        (acceptor,) = self.factory.connections
        self.assertEqual(acceptor.transport.getPeer(), IPv6Address("TCP", "2001:db8::7", 50000))
        # The gateway's own listening address is kept (routes and metrics name our listener).
        self.assertEqual(acceptor.transport.getHost().port, 11112)

    def test_local_command_keeps_the_proxy_address(self) -> None:
        """A LOCAL header: the connection is the proxy's own, and keeps its real address."""
        proto, transport = self.open()
        proto.dataReceived(V2_LOCAL + Modality().associate_rq())
        self.assertIsInstance(Modality().read(transport)[0], pdu.AAssociateAC)
        (accepted,) = self.recorder.of(events.AssociationAccepted)
        self.assertEqual(accepted.peer, "127.0.0.1:40000")  # type: ignore[attr-defined]

    def test_the_acceptor_and_its_artim_start_after_the_header(self) -> None:
        """Before the header no acceptor exists (no ARTIM); after it, the acceptor is connected."""
        proto, _ = self.open()
        self.assertEqual(len(self.factory.connections), 0)
        proto.dataReceived(v2_tcp4("192.0.2.10", 1))
        self.assertEqual(len(self.factory.connections), 1)
        # The header deadline is gone; ARTIM and the idle timer are the acceptor's now.
        self.clock.advance(6)
        self.assertEqual(self.refusals, [])

    def test_connection_lost_after_the_header_reaches_the_acceptor(self) -> None:
        """A close after the header is the acceptor's connectionLost (it forgets the connection)."""
        proto, _ = self.open()
        proto.dataReceived(v2_tcp4("192.0.2.10", 1))
        proto.connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(len(self.factory.connections), 0)
        self.assertEqual(self.proxy.protocols, {})


class RefusalTests(ProxyTestsMixin, SynchronousTestCase):
    """Whatever is not a well-formed header from a trusted address is closed, with nothing sent, and reported."""

    def test_untrusted_source_is_closed_before_any_byte_is_read(self) -> None:
        """A peer outside trusted is closed at connect; even a valid header and RQ afterwards get no answer."""
        proto, transport = self.open(host="10.9.9.9")
        self.assertTrue(transport.disconnecting)
        proto.dataReceived(v2_tcp4("192.0.2.10", 1) + Modality().associate_rq())
        self.assertEqual(transport.value(), b"")
        self.assertEqual(len(self.factory.connections), 0)
        self.assertEqual([r[:2] for r in self.refusals], [("10.9.9.9:40000", "untrusted")])

    def test_missing_header_is_refused(self) -> None:
        """An A-ASSOCIATE-RQ straight to the listener (no header) is closed unanswered: 'missing'."""
        proto, transport = self.open()
        proto.dataReceived(Modality().associate_rq())
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        self.assertEqual([r[1] for r in self.refusals], ["missing"])

    def test_garbage_is_refused(self) -> None:
        """A bad v1 line is closed: 'malformed'."""
        proto, transport = self.open()
        proto.dataReceived(b"PROXY TCP4 not an address\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual([r[1] for r in self.refusals], ["malformed"])

    def test_slow_header_is_closed_at_the_deadline(self) -> None:
        """Half a header, then nothing: open until the 5 s deadline, closed at it: 'timeout'."""
        proto, transport = self.open()
        proto.dataReceived(b"PROXY TCP4 192.0")
        self.clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual([r[1] for r in self.refusals], ["timeout"])

    def test_close_before_a_header_is_not_a_refusal(self) -> None:
        """A peer that connects and closes (a TCP check) is forgotten quietly, and its deadline cancelled."""
        proto, _ = self.open()
        proto.connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(self.refusals, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.proxy.protocols, {})

    def test_refusals_are_counted_by_reason(self) -> None:
        """The factory keeps a count per reason label."""
        self.open(host="10.0.0.1")
        proto, _ = self.open()
        proto.dataReceived(b"\x16\x03\x01")
        self.assertEqual(self.proxy.refusals, {"untrusted": 1, "missing": 1})


class DrainingAcceptorTests(AcceptorTestsMixin, SynchronousTestCase):
    """The acceptor's service-provider check while draining (issue 14)."""

    def test_refusing_rejects_new_associations_with_2_3_2_counted_as_draining(self) -> None:
        """When the drain's grace is over, an RQ gets RJ(2,3,2), counted under reason 'draining'; before, an AC."""
        from prometheus_client import CollectorRegistry

        from gateway.observe import GatewayMetrics

        registry = CollectorRegistry()
        refusing = [False]
        self.factory.refusing = lambda: refusing[0]
        self.factory.observer = GatewayMetrics(registry, [])
        self.establish(Modality())
        refusing[0] = True
        proto, transport = self.connect()
        proto.dataReceived(Modality().associate_rq())
        self.assertEqual(Modality().read(transport), [pdu.AAssociateRJ(2, 3, 2)])
        self.assertEqual(
            registry.get_sample_value("dicom_gateway_associations_rejected_total", {"listener": "test", "reason": "draining"}),
            1.0,
        )


class ListenerWiringTests(SynchronousTestCase):
    """:class:`gateway.service.ListenerService` puts the PROXY wrapper outside TLS."""

    def test_proxy_wrapper_is_outside_tls(self) -> None:
        """A TLS listener with proxy_protocol listens with PROXY -> TLS -> acceptor, in that order."""
        from gateway.config.schema import ListenerConfig, ListenerTLSConfig, ProxyProtocolConfig
        from gateway.security import server_tls
        from gateway.service import ListenerService
        from gateway.tls import TLSListenerFactory
        from tests.support.certs import material

        tls = material()
        listener = ListenerConfig(
            "127.0.0.1", 0, name="tls",
            tls=ListenerTLSConfig(certificate=tls.server, private_key=tls.server_key, ca=tls.ca),
            proxy_protocol=ProxyProtocolConfig(trusted=("127.0.0.1/32",)),
        )
        reactor = MemoryReactorClock()
        holder = _Holder()
        self.addCleanup(shutil.rmtree, holder.tmp, True)
        acceptor = AcceptorTestsMixin.make_factory(holder)  # type: ignore[arg-type]
        service = ListenerService(reactor, listener, acceptor, server_tls(listener))
        service.startService()
        (_port, factory, _backlog, _interface) = reactor.tcpServers[0]
        self.assertIsInstance(factory, ProxyProtocolFactory)
        self.assertIsInstance(factory.wrappedFactory, TLSListenerFactory)
        self.assertIs(factory.wrappedFactory.wrappedFactory, acceptor)


class _Holder:
    """Just enough of a test case for :meth:`AcceptorTestsMixin.make_factory`."""

    def __init__(self) -> None:
        import tempfile

        from twisted.internet.task import Clock

        self.tmp = tempfile.mkdtemp()
        self.clock = Clock()
