"""Tests for :mod:`gateway.queue.policy`: backoff and outcome classification."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import error as neterror
from twisted.trial.unittest import SynchronousTestCase

from gateway.associate import AssociationAborted, AssociationRejected, NoPresentationContext
from gateway.config.schema import RetryConfig
from gateway.queue.interfaces import Entry, EntryState, InstanceRecord
from gateway.queue.policy import (
    DeadLetter,
    Delivered,
    DestinationDown,
    Retry,
    backoff,
    dead_letter_reason,
    DEAD_LETTER_REASONS,
    give_up,
)
from gateway.send.classify import classify_error, classify_status
from gateway.ul import pdu

RETRY = RetryConfig(initial_delay=1.0, max_delay=300.0, multiplier=2.0, jitter=0.2, max_attempts=5, max_age=1000.0)


def entry(attempts: int = 0, enqueued_at: float = 0.0) -> Entry:
    """A leased entry with ``attempts`` prior attempts."""
    record = InstanceRecord("i1", "/spool/i1", "1.2", "1.2.3", "1.2.840.10008.1.2.1", 10, "00", 0.0, "c1")
    return Entry(1, record, "r", "d", "/spool/i1", EntryState.LEASED, attempts, enqueued_at, enqueued_at)


class BackoffTests(SynchronousTestCase):
    """Exponential backoff with jitter."""

    def test_first_attempt_waits_the_initial_delay_without_jitter(self) -> None:
        """Attempt 0 with rand() = 0.5 (no spread) gives exactly the initial delay."""
        self.assertEqual(backoff(0, initial=1.5, maximum=60, multiplier=2, jitter=0.2, rand=lambda: 0.5), 1.5)

    def test_delay_grows_by_the_multiplier(self) -> None:
        """Attempts 0..4 give 1, 2, 4, 8, 16 seconds with a neutral rand()."""
        delays = [backoff(a, initial=1, maximum=60, multiplier=2, jitter=0.2, rand=lambda: 0.5) for a in range(5)]
        self.assertEqual(delays, [1, 2, 4, 8, 16])

    def test_delay_is_capped_at_the_maximum(self) -> None:
        """A large attempt number is capped at the maximum, even with upward jitter."""
        self.assertEqual(backoff(40, initial=1, maximum=300, multiplier=2, jitter=0.2, rand=lambda: 0.99), 300)

    def test_huge_attempt_numbers_do_not_overflow(self) -> None:
        """Attempt 10,000 (2 ** 10000 overflows a float) still returns the cap."""
        self.assertEqual(backoff(10_000, initial=1, maximum=300, multiplier=2, jitter=0.0, rand=lambda: 0.5), 300)

    def test_jitter_spreads_by_the_fraction(self) -> None:
        """rand() = 0 gives 80 % and rand() close to 1 gives about 120 % of the delay for jitter 0.2."""
        low = backoff(3, initial=1, maximum=300, multiplier=2, jitter=0.2, rand=lambda: 0.0)
        high = backoff(3, initial=1, maximum=300, multiplier=2, jitter=0.2, rand=lambda: 0.999999)
        self.assertAlmostEqual(low, 6.4)
        self.assertAlmostEqual(high, 9.6, places=4)

    @given(
        attempt=st.integers(min_value=0, max_value=5000),
        r=st.floats(min_value=0.0, max_value=0.9999999),
        jitter=st.floats(min_value=0.0, max_value=1.0),
    )
    def test_delay_always_between_zero_and_maximum(self, attempt: int, r: float, jitter: float) -> None:
        """For any attempt, jitter and rand(), the delay lies within [0, maximum]."""
        delay = backoff(attempt, initial=0.5, maximum=120, multiplier=3, jitter=jitter, rand=lambda: r)
        self.assertTrue(0 <= delay <= 120, delay)


class ClassifyStatusTests(SynchronousTestCase):
    """The C-STORE status table of the store-and-forward issue."""

    def test_success_is_delivered_without_warning(self) -> None:
        """0x0000 is Delivered with an empty warning."""
        self.assertEqual(classify_status(0x0000, 1, RETRY), Delivered(0))

    def test_warnings_are_delivered_with_a_warning(self) -> None:
        """0x0001, 0x0107, 0x0116, 0xB000, 0xB006, 0xB007 and 0xB123 are delivered with a warning text."""
        for status in (0x0001, 0x0107, 0x0116, 0xB000, 0xB006, 0xB007, 0xB123):
            outcome = classify_status(status, 1, RETRY)
            self.assertIsInstance(outcome, Delivered, hex(status))
            assert isinstance(outcome, Delivered)
            self.assertIn(f"0x{status:04X}", outcome.warning)

    def test_out_of_resources_and_cancel_are_retried(self) -> None:
        """0xA700, 0xA7FF and 0xFE00 are retried, even after many attempts."""
        for status in (0xA700, 0xA7FF, 0xFE00):
            outcome = classify_status(status, 40, RETRY)
            self.assertIsInstance(outcome, Retry, hex(status))
            assert isinstance(outcome, Retry)
            self.assertFalse(outcome.ambiguous)

    def test_permanent_failures_are_dead_lettered_at_once(self) -> None:
        """0xA900, 0xA9FF, 0xC000, 0xCFFF, 0x0122, 0x0124, 0x0211 and 0x0110 are dead letters on the first attempt."""
        for status in (0xA900, 0xA9FF, 0xC000, 0xCFFF, 0x0122, 0x0124, 0x0211, 0x0110):
            outcome = classify_status(status, 1, RETRY)
            self.assertIsInstance(outcome, DeadLetter, hex(status))
            assert isinstance(outcome, DeadLetter)
            self.assertIn(f"0x{status:04X}", outcome.reason)

    def test_unknown_status_retried_then_dead_lettered_with_the_code(self) -> None:
        """0xD123 is retried for attempts 1-2 and dead-lettered naming the code at attempt 3."""
        self.assertIsInstance(classify_status(0xD123, 1, RETRY), Retry)
        self.assertIsInstance(classify_status(0xD123, 2, RETRY), Retry)
        outcome = classify_status(0xD123, 3, RETRY)
        self.assertIsInstance(outcome, DeadLetter)
        assert isinstance(outcome, DeadLetter)
        self.assertIn("0xD123", outcome.reason)

    def test_unknown_status_bound_follows_the_config(self) -> None:
        """With unknown_status_attempts=1 an unknown code is dead-lettered at once."""
        config = dataclasses.replace(RETRY, unknown_status_attempts=1)
        self.assertIsInstance(classify_status(0xFF00, 1, config), DeadLetter)


class ClassifyErrorTests(SynchronousTestCase):
    """Exceptions from connecting and sending."""

    def test_connection_refused_is_destination_down(self) -> None:
        """A refused connection is a transient destination-wide fault."""
        outcome = classify_error(neterror.ConnectionRefusedError(), data_sent=False, connecting=True)
        self.assertIsInstance(outcome, DestinationDown)
        assert isinstance(outcome, DestinationDown)
        self.assertFalse(outcome.permanent)

    def test_connect_timeout_and_dns_are_destination_down(self) -> None:
        """A TCP timeout and a DNS failure are destination-wide faults."""
        for exc in (neterror.TCPTimedOutError(), neterror.DNSLookupError("nowhere"), TimeoutError()):
            self.assertIsInstance(classify_error(exc, data_sent=False), DestinationDown, repr(exc))

    def test_tls_failure_is_destination_down(self) -> None:
        """A pyOpenSSL error (certificate verification) is a destination-wide fault (F20)."""
        from OpenSSL.SSL import Error as SSLError

        self.assertIsInstance(classify_error(SSLError("certificate verify failed"), data_sent=False), DestinationDown)

    def test_tls_failure_label_is_decided_at_classification(self) -> None:
        """A connect failure described as a TLS failure carries its label as data; a refused connection carries none."""
        expired = classify_error(
            AssociationAborted("TLS failure: certificate verify failed: certificate has expired"),
            data_sent=False, connecting=True,
        )
        refused = classify_error(neterror.ConnectionRefusedError(), data_sent=False, connecting=True)
        assert isinstance(expired, DestinationDown) and isinstance(refused, DestinationDown)
        self.assertEqual((expired.tls_failure, refused.tls_failure), ("expired", None))

    def test_rejection_permanence_follows_the_result(self) -> None:
        """RJ result 1 is permanent and RJ result 2 transient (PS3.8 9.3.4)."""
        permanent = classify_error(AssociationRejected(pdu.AAssociateRJ(1, 1, 7)), data_sent=False)
        transient = classify_error(AssociationRejected(pdu.AAssociateRJ(2, 3, 1)), data_sent=False)
        self.assertEqual((type(permanent), type(transient)), (DestinationDown, DestinationDown))
        assert isinstance(permanent, DestinationDown) and isinstance(transient, DestinationDown)
        self.assertEqual((permanent.permanent, transient.permanent), (True, False))

    def test_abort_during_send_is_a_retry_ambiguous_once_data_went_out(self) -> None:
        """An abort before the data went out is a plain retry; after it, an ambiguous one."""
        self.assertEqual(classify_error(AssociationAborted("x"), data_sent=False), Retry("AssociationAborted: x"))
        self.assertEqual(
            classify_error(AssociationAborted("x"), data_sent=True), Retry("AssociationAborted: x", ambiguous=True)
        )

    def test_abort_while_connecting_is_destination_down(self) -> None:
        """No A-ASSOCIATE-AC within the ACSE timeout is a destination-wide fault."""
        self.assertIsInstance(classify_error(AssociationAborted("acse"), data_sent=False, connecting=True), DestinationDown)

    def test_no_presentation_context_is_a_dead_letter(self) -> None:
        """A SOP class the destination did not accept is a dead letter for that instance."""
        self.assertIsInstance(classify_error(NoPresentationContext("no"), data_sent=False), DeadLetter)

    def test_unexpected_errors_are_retried_with_their_text(self) -> None:
        """An unexpected exception is a retry whose reason names it."""
        outcome = classify_error(ValueError("boom"), data_sent=False)
        self.assertEqual(outcome, Retry("ValueError: boom"))


class GiveUpTests(SynchronousTestCase):
    """max_attempts and max_age."""

    def test_keeps_retrying_below_the_limits(self) -> None:
        """Three prior attempts of five, young entry: keep retrying."""
        self.assertIsNone(give_up(entry(attempts=3, enqueued_at=0.0), 10.0, RETRY))

    def test_gives_up_when_this_attempt_reaches_max_attempts(self) -> None:
        """Four prior attempts plus this one reach max_attempts=5."""
        reason = give_up(entry(attempts=4), 10.0, RETRY)
        self.assertIsNotNone(reason)
        self.assertIn("5 attempts", str(reason))

    def test_gives_up_when_max_age_is_reached(self) -> None:
        """An entry enqueued 1000 s ago reaches max_age=1000."""
        reason = give_up(entry(attempts=0, enqueued_at=0.0), 1000.0, RETRY)
        self.assertIsNotNone(reason)
        self.assertIn("max_age", str(reason))


class DeadLetterReasonTests(SynchronousTestCase):
    """The bounded reason classes of dead letters (HARDENING F16)."""

    def test_every_status_dead_letter_is_refused(self) -> None:
        """Each permanent status classify_status produces is counted as ``refused``."""
        for status in (0xA900, 0xC000, 0x0122, 0x0211, 0xD123):
            outcome = classify_status(status, 99, RETRY)
            self.assertIsInstance(outcome, DeadLetter, hex(status))
            assert isinstance(outcome, DeadLetter)
            self.assertEqual(dead_letter_reason(outcome.reason), "refused", outcome.reason)

    def test_no_presentation_context(self) -> None:
        """A SOP class the destination refused is ``no_context``."""
        outcome = classify_error(NoPresentationContext("no accepted presentation context"), data_sent=False)
        assert isinstance(outcome, DeadLetter)
        self.assertEqual(dead_letter_reason(outcome.reason), "no_context")

    def test_given_up_wins_over_the_last_failure(self) -> None:
        """A retry that ran out of attempts is ``gave_up``, whatever its last failure text."""
        reason = give_up(entry(attempts=4), 10.0, RETRY)
        self.assertEqual(dead_letter_reason(f"out of resources (status 0xA700); {reason}"), "gave_up")

    def test_the_workers_own_reasons(self) -> None:
        """The texts the worker writes map to their classes; unknown text is ``other``."""
        cases = {
            "morph: template {Nope} failed": "morph",
            "unreadable Part 10 file: truncated": "unreadable",
            "unsafe path: ../x": "unsafe_path",
            "cannot convert to 1.2.840.10008.1.2: no codec": "conversion",
            "something new": "other",
        }
        for text, kind in cases.items():
            self.assertEqual(dead_letter_reason(text), kind, text)
            self.assertIn(kind, DEAD_LETTER_REASONS)
