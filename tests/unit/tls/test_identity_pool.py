"""User identity decisions of issue 11: type 1 against passcodes, the bounded scrypt pool, the dummy hash, plugins.

The passcode pool runs on a :class:`~tests.support.heldrunner.HeldRunner`,
so each test decides when a check finishes and sees how many are in flight.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from gateway.identity_check import (
    BUSY_REJECTION,
    IDENTITY_REJECTION,
    IdentityOutcome,
    IdentityPolicy,
    PasscodePool,
    PoolFull,
    UserIdentityChecker,
    Verdict,
    dummy_hash,
    hash_passcode,
    parse_hash,
    verify_passcode,
)
from gateway.ul.items import UserIdentityAC, UserIdentityRQ
from gateway.ul.pdu import AAssociateRJ
from tests.support.heldrunner import HeldRunner
from tests.unit.tls.test_access_identity import rq

#: Cheap scrypt parameters for the tests (the production default is 2**14).
N = 2**4


def decided(deferred: "Deferred[IdentityOutcome]") -> IdentityOutcome:
    """The outcome of a Deferred that must have fired."""
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "the decision is still pending"
    outcome: IdentityOutcome = results[0]
    return outcome


class RecordingPasscodes:
    """A passcode checker that records every hash it is asked to check against, and checks at once."""

    def __init__(self) -> None:
        self.checked: list[str] = []

    def submit(self, stored: str, passcode: bytes) -> "Deferred[bool]":
        """Record, then run scrypt."""
        self.checked.append(stored)
        return succeed(verify_passcode(stored, passcode))


class TypeOneTests(SynchronousTestCase):
    """Type 1 (user name only) is for users written ``name-only`` (PS3.7 D.3.3.7)."""

    users = {"alice": hash_passcode("pw", n=N), "bob": ""}

    def checker(self) -> UserIdentityChecker:
        """A checker requiring an identity."""
        return UserIdentityChecker(IdentityPolicy.REQUIRED, self.users)

    def test_user_with_a_passcode_is_refused_with_name_only(self) -> None:
        """alice has a passcode: her name alone (type 1) is RJ(1,1,1), however it is asked."""
        for positive in (True, False):
            outcome = self.checker().check(rq(identity=UserIdentityRQ(1, positive, b"alice")))
            self.assertEqual(outcome.rejection, AAssociateRJ(1, 1, 1))
            self.assertIsNone(outcome.ac_item)
            self.assertIn("has a passcode", outcome.verdict.reason if outcome.verdict else "")

    def test_name_only_user_is_accepted_with_type_one(self) -> None:
        """bob is written name-only: type 1 gets in, with an empty 0x59 when asked."""
        outcome = self.checker().check(rq(identity=UserIdentityRQ(1, True, b"bob")))
        self.assertIsNone(outcome.rejection)
        self.assertEqual(outcome.ac_item, UserIdentityAC(b""))

    def test_name_only_user_never_gets_in_with_a_passcode(self) -> None:
        """bob with any passcode (type 2) is refused, after a scrypt against the dummy hash."""
        passcodes = RecordingPasscodes()
        checker = UserIdentityChecker(IdentityPolicy.REQUIRED, self.users, passcodes=passcodes)
        outcome = checker.check(rq(identity=UserIdentityRQ(2, True, b"bob", b"")))
        self.assertEqual(outcome.rejection, IDENTITY_REJECTION)
        self.assertEqual(passcodes.checked, [checker.dummy])


class SameCostTests(SynchronousTestCase):
    """An unknown user costs one scrypt with the users' own parameters, like a wrong passcode."""

    users = {"alice": hash_passcode("pw", n=N), "carol": hash_passcode("pw2", n=N)}

    def test_unknown_user_goes_through_scrypt(self) -> None:
        """mallory is not in the file: one check against the dummy hash, then RJ(1,1,1)."""
        passcodes = RecordingPasscodes()
        checker = UserIdentityChecker(IdentityPolicy.OPTIONAL, self.users, passcodes=passcodes)
        outcome = checker.check(rq(identity=UserIdentityRQ(2, False, b"mallory", b"pw")))
        self.assertEqual(outcome.rejection, IDENTITY_REJECTION)
        self.assertEqual(passcodes.checked, [checker.dummy])

    def test_wrong_passcode_checks_the_real_hash_once(self) -> None:
        """alice with a wrong passcode: exactly one check, against her hash."""
        passcodes = RecordingPasscodes()
        checker = UserIdentityChecker(IdentityPolicy.OPTIONAL, self.users, passcodes=passcodes)
        checker.check(rq(identity=UserIdentityRQ(2, False, b"alice", b"nope")))
        self.assertEqual(passcodes.checked, [self.users["alice"]])

    def test_dummy_has_the_users_parameters(self) -> None:
        """The dummy hash uses the N, r, p most users have, so it costs what theirs cost."""
        parsed = parse_hash(dummy_hash(self.users))
        self.assertEqual((parsed.n, parsed.r, parsed.p), (N, 8, 1))
        self.assertEqual(len(parsed.digest), 32)

    def test_dummy_matches_no_passcode(self) -> None:
        """Not even the empty passcode verifies against the dummy."""
        self.assertFalse(verify_passcode(dummy_hash(self.users), b""))


class PoolTests(SynchronousTestCase):
    """The scrypt pool: a cap on checks at once, a short queue, and refusal beyond it."""

    users = {"alice": hash_passcode("pw", n=N)}

    def setUp(self) -> None:
        self.runner = HeldRunner()
        self.pool = PasscodePool(self.runner, workers=2, queue=3)
        self.checker = UserIdentityChecker(IdentityPolicy.REQUIRED, self.users, passcodes=self.pool)

    def request(self, passcode: bytes = b"nope", user: bytes = b"alice") -> "Deferred[IdentityOutcome]":
        """Ask for a decision on a type 2 identity."""
        return self.checker.decide(rq(identity=UserIdentityRQ(2, True, user, passcode)))

    def test_at_most_workers_checks_run_at_once(self) -> None:
        """Five requests: two checks handed to the runner, three waiting."""
        for _ in range(5):
            self.request()
        self.assertEqual((len(self.runner.pending), self.pool.waiting), (2, 3))

    def test_request_beyond_the_queue_is_refused_transient_at_once(self) -> None:
        """The sixth request is decided at once: RJ(2,3,2), audited as a refused identity, no check run."""
        for _ in range(5):
            self.request()
        outcome = decided(self.request())
        self.assertEqual(outcome.rejection, BUSY_REJECTION)
        self.assertEqual(outcome.rejection, AAssociateRJ(2, 3, 2))
        self.assertEqual(outcome.identity_type, 2)
        self.assertFalse(outcome.verdict.accepted if outcome.verdict else True)
        self.assertEqual((len(self.runner.started), self.pool.refused), (2, 1))

    def test_finishing_a_check_starts_the_next_in_order(self) -> None:
        """When a check finishes, the oldest waiting one starts; the cap still holds."""
        first = self.request(b"pw")
        for _ in range(4):
            self.request()
        self.runner.finish(0)
        self.assertIsNone(decided(first).rejection)
        self.assertEqual((len(self.runner.pending), self.pool.waiting, len(self.runner.started)), (2, 2, 3))

    def test_unknown_user_takes_a_slot_like_a_known_one(self) -> None:
        """An unknown user's check runs scrypt in the pool (against the dummy), like alice's."""
        self.request(user=b"mallory")
        (job,) = self.runner.pending
        self.assertEqual(job.args[0], self.checker.dummy)
        self.assertEqual(job.args[1], b"nope")

    def test_unknown_users_cannot_jump_the_queue(self) -> None:
        """With the pool full, an unknown user is refused RJ(2,3,2) too (no cheaper path)."""
        for _ in range(5):
            self.request()
        self.assertEqual(decided(self.request(user=b"mallory")).rejection, BUSY_REJECTION)

    def test_queue_drains_and_slots_are_given_back(self) -> None:
        """After every check finishes nothing runs or waits, and new requests are accepted again."""
        for _ in range(5):
            self.request()
        while self.runner.pending:
            self.runner.finish(0)
        self.assertEqual((self.pool.running, self.pool.waiting), (0, 0))
        self.request()
        self.assertEqual(len(self.runner.pending), 1)

    def test_failed_check_is_a_refusal_and_frees_its_slot(self) -> None:
        """A check that raises counts as a mismatch (never an acceptance) and gives its slot back."""
        pool = PasscodePool(self.runner, workers=1, queue=0, check=lambda stored, passcode: 1 / 0)  # type: ignore[arg-type,return-value]
        result: list[bool] = []
        pool.submit("x", b"y").addCallback(result.append)
        self.runner.pending[0].result.errback(ZeroDivisionError())
        self.runner.pending.clear()
        self.assertEqual((result, pool.running), ([False], 0))

    def test_pool_full_is_an_exception_for_direct_callers(self) -> None:
        """``submit`` beyond the bound raises :class:`PoolFull` rather than growing a list."""
        pool = PasscodePool(self.runner, workers=1, queue=1)
        pool.submit("a", b"")
        pool.submit("b", b"")
        self.assertRaises(PoolFull, pool.submit, "c", b"")

    def test_default_workers_leave_one_core(self) -> None:
        """``for_reactor``: max(1, cores - 1) workers."""
        from twisted.internet.testing import MemoryReactorClock

        self.assertEqual(PasscodePool.for_reactor(MemoryReactorClock(), cores=4).workers, 3)
        self.assertEqual(PasscodePool.for_reactor(MemoryReactorClock(), cores=1).workers, 1)
        self.assertEqual(PasscodePool.for_reactor(MemoryReactorClock(), cores=2).workers, 1)


class AsyncVerifier:
    """A verifier plugin answering through a Deferred the test fires."""

    def __init__(self) -> None:
        self.pending: list[Deferred[Verdict]] = []

    def verify(self, identity: UserIdentityRQ) -> "Deferred[Verdict]":
        """Answer later."""
        d: Deferred[Verdict] = Deferred()
        self.pending.append(d)
        return d


class AssertionTypeTests(SynchronousTestCase):
    """Types 3, 4 and 5 need a verifier plugin that accepts them."""

    def test_kerberos_saml_jwt_refused_without_a_verifier(self) -> None:
        """With a users file but no plugin, each assertion type is RJ(1,1,1)."""
        checker = UserIdentityChecker(IdentityPolicy.OPTIONAL, {"alice": hash_passcode("pw", n=N)})
        for kind in (3, 4, 5):
            outcome = checker.check(rq(identity=UserIdentityRQ(kind, True, b"assertion")))
            self.assertEqual((outcome.rejection, outcome.identity_type), (IDENTITY_REJECTION, kind))

    def test_verifier_for_one_type_does_not_cover_another(self) -> None:
        """A JWT verifier does not make SAML acceptable."""
        accept_all = type("AcceptAll", (), {"verify": lambda self, identity: Verdict(True, "x")})()
        checker = UserIdentityChecker(IdentityPolicy.OPTIONAL, {}, {5: accept_all})
        self.assertIsNone(checker.check(rq(identity=UserIdentityRQ(5, False, b"t"))).rejection)
        self.assertEqual(checker.check(rq(identity=UserIdentityRQ(4, False, b"t"))).rejection, IDENTITY_REJECTION)

    def test_asynchronous_verifier_decides_later(self) -> None:
        """A plugin returning a Deferred: the decision waits for it, and carries its server response."""
        verifier = AsyncVerifier()
        checker = UserIdentityChecker(IdentityPolicy.REQUIRED, {}, {5: verifier})
        decision = checker.decide(rq(identity=UserIdentityRQ(5, True, b"token")))
        self.assertNoResult(decision)
        verifier.pending[0].callback(Verdict(True, "jwt-user", server_response=b"srv"))
        self.assertEqual(self.successResultOf(decision).ac_item, UserIdentityAC(b"srv"))

    def test_failing_or_odd_verifier_is_a_refusal(self) -> None:
        """A plugin that raises, fails its Deferred, or returns something else refuses the identity."""

        def raises(identity: UserIdentityRQ) -> Verdict:
            raise RuntimeError("no key")

        plugins = [
            type("Raises", (), {"verify": lambda self, identity: raises(identity)})(),
            type("Fails", (), {"verify": lambda self, identity: fail(RuntimeError("down"))})(),
            type("Odd", (), {"verify": lambda self, identity: True})(),
        ]
        for plugin in plugins:
            outcome = UserIdentityChecker(IdentityPolicy.OPTIONAL, {}, {5: plugin}).check(
                rq(identity=UserIdentityRQ(5, True, b"t"))
            )
            self.assertEqual(outcome.rejection, IDENTITY_REJECTION, plugin)
