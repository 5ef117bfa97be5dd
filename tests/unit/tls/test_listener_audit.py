"""The acceptor audits provider rejections and the TLS wrapper enforces its handshake deadline (issue 5; HARDENING T13)."""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.access import AccessPolicy
from gateway.audit import AuditTrail, MemorySink
from gateway.listen import AcceptorFactory, AcceptorLimits
from gateway.security import AuditObserver
from gateway.tls import ServerTLS, ServerTLSSettings, TLSListenerFactory
from gateway.ul.negotiate import AcceptorSettings
from gateway.ul.pdu import AAssociateRQ, PresentationContextRQ
from tests.support.certs import material


def factory(sink: MemorySink, max_associations: int = 1) -> AcceptorFactory:
    """An acceptor factory with an audit trail and an association limit."""
    return AcceptorFactory(
        name="l1",
        acceptor_settings=AcceptorSettings("GW", 16384, "1.2.3", "GW", frozenset({"1.2.840.10008.1.1"}), ("1.2.840.10008.1.2",)),
        access=AccessPolicy("GW"),
        spool=None,  # type: ignore[arg-type]
        clock=Clock(),
        limits=AcceptorLimits(max_associations=max_associations),
        observer=AuditObserver(AuditTrail([sink], ae_title="GW", hostname="h")),
    )


class ProviderRejectionAuditTests(SynchronousTestCase):
    """Rejections by the service provider are audited as Security Alerts too."""

    def test_association_limit_rejection_is_audited(self) -> None:
        """At the association limit, the RJ(2,3,2) is audited with its triple."""
        sink = MemorySink()
        acceptor = factory(sink, max_associations=1)
        acceptor.active = 1
        rq = AAssociateRQ("GW", "CT1", (PresentationContextRQ(1, "1.2.840.10008.1.1", ("1.2.840.10008.1.2",)),), None)
        rejection = acceptor._provider_check(rq)
        self.assertIsNotNone(rejection)
        (record,) = sink.records
        self.assertEqual((record.event_id, record.extra["rejection"]), ("110113", "2,3,2"))

    def test_acceptable_request_is_not_audited_here(self) -> None:
        """A request the provider accepts leaves no record at this stage (the acceptor audits it later)."""
        sink = MemorySink()
        rq = AAssociateRQ("GW", "CT1", (PresentationContextRQ(1, "1.2.840.10008.1.1", ("1.2.840.10008.1.2",)),), None)
        self.assertIsNone(factory(sink)._provider_check(rq))
        self.assertEqual(sink.records, [])


class _Quiet(Protocol):
    pass


class HandshakeDeadlineTests(SynchronousTestCase):
    """A TLS connection whose handshake does not finish is aborted at the deadline and reported."""

    def test_silent_connection_is_aborted_at_the_deadline(self) -> None:
        """Nothing received for the deadline: abortConnection, and a "timeout" failure reported once."""
        m = material()
        clock = Clock()
        failures: list[tuple[str, str, str]] = []
        tls = TLSListenerFactory(
            ServerTLS(ServerTLSSettings(m.server, m.server_key)),
            Factory.forProtocol(_Quiet),
            clock,
            2.0,
            lambda peer, reason, detail: failures.append((peer, reason, detail)),
        )
        protocol = tls.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        clock.advance(1.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual([reason for _, reason, _ in failures], ["timeout"])
        self.assertEqual(tls.failures, {"timeout": 1})

    def test_garbage_instead_of_client_hello_is_not_tls(self) -> None:
        """Plain DICOM bytes on a TLS listener fail the handshake with reason not_tls (HARDENING T01)."""
        m = material()
        failures: list[str] = []
        tls = TLSListenerFactory(
            ServerTLS(ServerTLSSettings(m.server, m.server_key)),
            Factory.forProtocol(_Quiet),
            Clock(),
            2.0,
            lambda peer, reason, detail: failures.append(reason),
        )
        protocol = tls.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"\x01\x00\x00\x00\x00\xcd\x00\x01\x00\x00" + b"GW" + b" " * 200)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(failures, ["not_tls"])
