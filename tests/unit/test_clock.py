"""gateway.clock: the reactor schedules on the monotonic clock (HARDENING F19)."""

from __future__ import annotations

import time

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.clock import use_monotonic_clock


class MonotonicClockTests(SynchronousTestCase):
    """use_monotonic_clock swaps the reactor's seconds() for time.monotonic()."""

    def test_seconds_becomes_monotonic(self) -> None:
        """After the call, reactor.seconds is time.monotonic, so deadlines ignore wall-clock steps."""
        reactor = Clock()
        self.assertIs(use_monotonic_clock(reactor), reactor)
        self.assertIs(reactor.seconds, time.monotonic)

    def test_refuses_when_calls_are_already_scheduled(self) -> None:
        """A delayed call scheduled on the old clock would never fire: refuse with RuntimeError."""
        reactor = Clock()
        reactor.callLater(1.0, lambda: None)
        self.assertRaises(RuntimeError, use_monotonic_clock, reactor)
