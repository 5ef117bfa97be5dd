"""The drain timeline (issue 14): not ready at once, accepting during the grace, refusing after it.

Time is a :class:`twisted.internet.task.Clock`; the workers are small
fakes, with and without ``set_draining`` (the forwarding side may not
have it yet).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway import events
from gateway.drain import Drain, IDrainableWorker


class Worker:
    """A forwarding worker that records what it was told."""

    def __init__(self) -> None:
        self.told: list[bool] = []

    def set_draining(self, draining: bool) -> None:
        """Record the call."""
        self.told.append(draining)


class SlowWorker:
    """A worker whose drain takes time: ``set_draining(True)`` answers a Deferred fired by the test."""

    def __init__(self) -> None:
        self.pending: list[Deferred[None]] = []

    def set_draining(self, draining: bool) -> Deferred[None]:
        """Answer a Deferred (fired at once for an undrain)."""
        d: Deferred[None] = Deferred()
        if draining:
            self.pending.append(d)
        else:
            d.callback(None)
        return d


class OldWorker:
    """A worker from before draining existed: no ``set_draining``."""


class Recorder:
    """An observer that keeps the events."""

    def __init__(self) -> None:
        self.events: list[object] = []

    def observe(self, event: object) -> None:
        """Keep ``event``."""
        self.events.append(event)


class DrainTests(SynchronousTestCase):
    """:class:`gateway.drain.Drain` on a fake clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.grace = 10.0
        self.workers: list[object] = [Worker(), OldWorker(), Worker()]
        self.observer = Recorder()
        self.drain = Drain(self.clock, lambda: self.grace, lambda: self.workers, self.observer)  # type: ignore[arg-type]

    def test_not_draining_at_start(self) -> None:
        """A new node is neither draining nor refusing."""
        self.assertFalse(self.drain.draining)
        self.assertFalse(self.drain.refusing())

    def test_draining_at_once_refusing_only_after_the_grace(self) -> None:
        """drain(): draining at once; still accepting just before the grace ends; refusing at its end."""
        status = self.drain.drain()
        self.assertTrue(status.draining)
        self.assertFalse(status.refusing)
        self.assertEqual(status.refuse_at, 10.0)
        self.clock.advance(9.9)
        self.assertFalse(self.drain.refusing())
        self.clock.advance(0.1)
        self.assertTrue(self.drain.refusing())
        self.assertTrue(self.drain.draining)

    def test_workers_that_can_drain_are_told_and_others_skipped(self) -> None:
        """set_draining(True) on drain and (False) on undrain, for workers that have it; the others are left alone."""
        self.drain.drain()
        self.drain.undrain()
        self.assertEqual([w.told for w in self.workers if isinstance(w, Worker)], [[True, False], [True, False]])
        self.assertNotIsInstance(OldWorker(), IDrainableWorker)

    def test_undrain_during_the_grace_cancels_the_refusal(self) -> None:
        """undrain() in the grace: ready again and the grace timer never makes the node refuse."""
        self.drain.drain()
        self.clock.advance(5)
        self.drain.undrain()
        self.clock.advance(60)
        self.assertFalse(self.drain.draining)
        self.assertFalse(self.drain.refusing())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_undrain_after_the_grace_accepts_again(self) -> None:
        """undrain() after the grace: no longer refusing."""
        self.drain.drain()
        self.clock.advance(11)
        self.drain.undrain()
        self.assertFalse(self.drain.refusing())

    def test_second_drain_keeps_the_first_timeline(self) -> None:
        """A second drain() does not restart the grace nor tell the workers twice."""
        self.drain.drain()
        self.clock.advance(8)
        status = self.drain.drain()
        self.assertEqual(status.refuse_at, 10.0)
        self.clock.advance(2)
        self.assertTrue(self.drain.refusing())
        self.assertEqual(self.workers[0].told, [True])  # type: ignore[attr-defined]

    def test_undrain_when_not_draining_changes_nothing(self) -> None:
        """undrain() on a node that is not draining tells nobody."""
        self.drain.undrain()
        self.assertEqual(self.workers[0].told, [])  # type: ignore[attr-defined]
        self.assertEqual(self.observer.events, [])

    def test_zero_grace_refuses_at_once(self) -> None:
        """drain.grace 0: new associations are refused from the start of the drain."""
        self.grace = 0.0
        self.drain.drain()
        self.assertTrue(self.drain.refusing())

    def test_grace_is_read_at_each_drain(self) -> None:
        """A reload that changes drain.grace applies to the next drain."""
        self.drain.drain()
        self.drain.undrain()
        self.grace = 3.0
        self.assertEqual(self.drain.drain().refuse_at, 3.0)

    def test_changes_are_observed(self) -> None:
        """Each change is one DrainChanged event (the draining gauge)."""
        self.drain.drain()
        self.drain.undrain()
        self.assertEqual(self.observer.events, [events.DrainChanged(True), events.DrainChanged(False)])

    def test_stop_cancels_the_timer(self) -> None:
        """stop() (the gateway stopping) leaves no delayed call behind."""
        self.drain.drain()
        self.drain.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_forwarding_drained_once_every_worker_has_drained(self) -> None:
        """forwarding_drained turns true only when the last worker's drain Deferred fires."""
        slow = SlowWorker()
        self.workers.append(slow)
        self.drain.drain()
        self.assertFalse(self.drain.status().forwarding_drained)
        slow.pending[0].callback(None)
        self.assertTrue(self.drain.status().forwarding_drained)
        self.assertTrue(self.drain.status().as_dict()["forwarding_drained"])

    def test_a_drain_finishing_after_undrain_is_ignored(self) -> None:
        """An undrain before the workers drained: their late answer does not mark a new drain as done."""
        slow = SlowWorker()
        self.workers.append(slow)
        self.drain.drain()
        self.drain.undrain()
        self.drain.drain()
        slow.pending[0].callback(None)
        self.assertFalse(self.drain.status().forwarding_drained)
        slow.pending[1].callback(None)
        self.assertTrue(self.drain.status().forwarding_drained)
