"""The acceptor waits in Sta3 for an asynchronous user identity decision (issue 11; PS3.7 D.3.3.7, PS3.8 Table 9-10).

Associations with type 2 identities are fed as bytes to
:class:`~gateway.listen.AcceptorProtocol` over StringTransports; scrypt runs
in a :class:`~gateway.identity_check.PasscodePool` on a
:class:`~tests.support.heldrunner.HeldRunner`, so the test decides when
each check finishes, and the clock is a ``MemoryReactorClock``.
"""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gateway.audit import AuditTrail, MemorySink
from gateway.identity_check import IdentityPolicy, PasscodePool, UserIdentityChecker, hash_passcode
from gateway.listen import BUSY_HOLD, BUSY_HOLD_MAX, AcceptorProtocol
from gateway.security import AuditObserver
from gateway.ul import pdu
from gateway.ul.items import UserIdentityAC, UserIdentityRQ, UserInformation
from gateway.ul.machine import State
from tests.adapters.test_listen import VERIFICATION, IMPLICIT_LE, AcceptorTestsMixin, Modality
from tests.support.heldrunner import HeldRunner

#: ACSE timeout of the factory under test, seconds.
ACSE_TIMEOUT = 30.0


class IdentityModality(Modality):
    """A modality that sends a user identity sub-item."""

    def associate_with(self, identity: UserIdentityRQ) -> bytes:
        """An A-ASSOCIATE-RQ for Verification with ``identity``."""
        return pdu.encode(
            pdu.AAssociateRQ(
                called_ae_title=self.called,
                calling_ae_title=self.calling,
                presentation_contexts=(pdu.PresentationContextRQ(1, VERIFICATION, (IMPLICIT_LE,)),),
                user_information=UserInformation(
                    max_length=self.max_pdu, implementation_class_uid="1.2.3", user_identity_rq=identity
                ),
            )
        )


class IdentityWaitTests(AcceptorTestsMixin, SynchronousTestCase):
    """Passcode checks off the reactor: the cap, the RJ(2,3,2), the wait in Sta3 and its bound."""

    def setUp(self) -> None:
        self.runner = HeldRunner()
        self.pool = PasscodePool(self.runner, workers=1, queue=2)
        self.sink = MemorySink()
        super().setUp()
        self.clock = MemoryReactorClock()
        self.factory.clock = self.clock
        self.factory.limits = type(self.factory.limits)(acse_timeout=ACSE_TIMEOUT)
        self.factory.observer = AuditObserver(AuditTrail([self.sink], ae_title="DICOMGW", hostname="h"))
        self.factory.user_identity = UserIdentityChecker(
            IdentityPolicy.REQUIRED, {"alice": hash_passcode("pw", n=2**4)}, passcodes=self.pool
        )

    def request(self, passcode: bytes = b"wrong", user: bytes = b"alice") -> tuple[AcceptorProtocol, StringTransport, Modality]:
        """Connect and send a type 2 identity asking for a positive response."""
        modality = IdentityModality(calling="CT01")
        proto, transport = self.connect()
        proto.dataReceived(modality.associate_with(UserIdentityRQ(2, True, user, passcode)))
        return proto, transport, modality

    def test_association_waits_in_sta3_without_answering(self) -> None:
        """While scrypt runs nothing is written, and the association is in Sta3."""
        proto, transport, _ = self.request()
        self.assertEqual(transport.value(), b"")
        self.assertIs(proto.association.state, State.STA3)
        self.assertEqual(len(self.runner.pending), 1)

    def test_right_passcode_is_accepted_with_0x59_once_checked(self) -> None:
        """When the check finishes the AC goes out, carrying the empty 0x59 asked for."""
        proto, transport, modality = self.request(b"pw")
        self.runner.finish()
        (ac,) = modality.read(transport)
        assert isinstance(ac, pdu.AAssociateAC)
        self.assertEqual(ac.user_information.user_identity_ac, UserIdentityAC(b""))
        self.assertIs(proto.association.state, State.STA6)

    def test_cap_and_rj_2_3_2_when_the_queue_is_full(self) -> None:
        """One check runs, two wait, the fourth association gets A-ASSOCIATE-RJ(2,3,2), held BUSY_HOLD seconds."""
        waiting = [self.request() for _ in range(3)]
        self.assertEqual((len(self.runner.pending), self.pool.waiting), (1, 2))
        _, transport, modality = self.request()
        self.clock.advance(BUSY_HOLD - 0.01)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.02)
        (rj,) = modality.read(transport)
        self.assertEqual(rj, pdu.AAssociateRJ(2, 3, 2))
        self.assertEqual(len(self.runner.started), 1)
        self.assertEqual([t.value() for _, t, _ in waiting], [b"", b"", b""])
        records = [r for r in self.sink.records if r.disposition == "user_identity"]
        self.assertEqual(len(records), 1)
        self.assertIn("too many passcode checks", records[0].description)

    def test_each_wrong_passcode_is_rejected_1_1_1_in_turn(self) -> None:
        """Three waiting associations are each answered RJ(1,1,1) as their check finishes, one at a time."""
        waiting = [self.request() for _ in range(3)]
        for index in range(3):
            self.assertEqual(len(self.runner.pending), 1)
            self.runner.finish()
            _, transport, modality = waiting[index]
            self.assertEqual(modality.read(transport), [pdu.AAssociateRJ(1, 1, 1)])
        self.assertEqual(len(self.runner.started), 3)

    def test_unknown_user_goes_through_scrypt_in_the_pool(self) -> None:
        """mallory is not in the file: her association waits for a scrypt like alice's, then RJ(1,1,1)."""
        _, transport, modality = self.request(user=b"mallory")
        self.assertEqual(transport.value(), b"")
        (job,) = self.runner.pending
        self.assertEqual(job.args[0], self.factory.user_identity.dummy)
        self.runner.finish()
        self.assertEqual(modality.read(transport), [pdu.AAssociateRJ(1, 1, 1)])

    def test_decision_not_made_within_the_acse_timeout_is_rj_2_3_1(self) -> None:
        """A check still queued after acse_timeout: RJ(2,3,1), and its late result writes nothing."""
        self.request()
        _, transport, modality = self.request()
        self.clock.advance(ACSE_TIMEOUT - 0.1)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.2)
        responses = modality.read(transport)
        self.assertIn(pdu.AAssociateRJ(2, 3, 1), responses)
        self.runner.finish()
        self.runner.finish()
        self.assertEqual(transport.value(), b"")

    def test_peer_gone_while_waiting_is_harmless(self) -> None:
        """The connection closes in Sta3; the check still finishes, frees its slot, and nothing is written."""
        proto, transport, _ = self.request()
        proto.connectionLost(None)
        self.runner.finish()
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.pool.running, 0)

    def test_pdu_while_waiting_aborts(self) -> None:
        """A PDU from the peer in Sta3 is AA-8: A-ABORT, and the later decision is ignored."""
        proto, transport, modality = self.request(b"pw")
        proto.dataReceived(pdu.encode(pdu.AReleaseRQ()))
        self.assertIsInstance(modality.read(transport)[0], pdu.AAbort)
        self.runner.finish()
        self.assertEqual(transport.value(), b"")

    def test_held_rejections_are_bounded(self) -> None:
        """Beyond BUSY_HOLD_MAX held answers, the RJ(2,3,2) goes out at once; a peer leaving frees its place."""
        for _ in range(3):
            self.request()
        held = [self.request() for _ in range(BUSY_HOLD_MAX)]
        self.assertEqual(self.factory.busy_held, BUSY_HOLD_MAX)
        _, transport, modality = self.request()
        self.assertEqual(modality.read(transport), [pdu.AAssociateRJ(2, 3, 2)])
        proto, _, _ = held[0]
        proto.connectionLost(None)
        self.assertEqual(self.factory.busy_held, BUSY_HOLD_MAX - 1)
        self.clock.advance(BUSY_HOLD)
        self.assertEqual(self.factory.busy_held, 0)
        self.assertEqual([m.read(t) for _, t, m in held[1:3]], [[pdu.AAssociateRJ(2, 3, 2)]] * 2)
