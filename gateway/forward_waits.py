"""A forwarding worker's waits: a slot (or a backoff) sleeping until its timer, a stop, or arrivals.

A slot of :class:`gateway.forward.DestinationWorker` sleeps when it has
nothing to do: idle until the next due time or poll, polling for a claim
another node holds, backing off after a destination-wide fault, lingering
for a batch's worth of arrivals (issue 13). The receive side pokes the
worker after each enqueue: a pokeable sleeper wakes at once, a lingering
one once enough arrivals have come. A stop or a drain wakes every sleeper.
Delays are scheduled on the injected clock (``task.Clock`` in tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["Waits"]


@dataclass
class _Sleeper:
    """A slot (or a backoff) waiting: woken by its timer, by a stop and, if ``pokeable``, by arrivals.

    :ivar until_arrivals: a pokeable sleeper wakes only once the worker's
        arrival count reaches this (``None``: at the first poke).
    """

    done: "Deferred[None]"
    call: IDelayedCall | None
    pokeable: bool
    until_arrivals: int | None = None


class Waits:
    """The sleeping slots of one worker, and the arrivals that wake them.

    :param clock: schedules the sleeps.
    :param stopping: whether the worker is stopping (a sleep then ends at once).
    """

    def __init__(self, clock: IReactorTime, stopping: Callable[[], bool]) -> None:
        self.clock = clock
        self.stopping = stopping
        self._sleepers: list[_Sleeper] = []
        #: Pokes so far: the receive side's enqueues (a slot's linger counts them).
        self.arrivals = 0

    def poke(self) -> None:
        """Entries were enqueued: count an arrival and wake the pokeable sleepers it is due for."""
        self.arrivals += 1
        self.wake(all_sleepers=False)

    def sleep(self, delay: float, pokeable: bool, until_arrivals: int | None = None) -> "Deferred[None]":
        """A Deferred that fires after ``delay``, on stop, and (if ``pokeable``) on :meth:`poke`.

        With ``until_arrivals``, a poke wakes it only once the arrival count
        has reached that number.
        """
        d: Deferred[None] = Deferred()
        if self.stopping():
            d.callback(None)
            return d

        def fire() -> None:
            self._sleepers[:] = [s for s in self._sleepers if s.done is not d]
            if not d.called:
                d.callback(None)

        call = self.clock.callLater(max(0.0, delay), fire)
        self._sleepers.append(_Sleeper(d, call, pokeable, until_arrivals))
        return d

    def wake(self, all_sleepers: bool) -> None:
        """Fire the sleepers (only the pokeable ones whose arrival count is reached unless ``all_sleepers``)."""

        def due(s: _Sleeper) -> bool:
            return all_sleepers or (s.pokeable and (s.until_arrivals is None or self.arrivals >= s.until_arrivals))

        # Take them out first: a woken slot may go back to sleep at once.
        woken = [s for s in self._sleepers if due(s)]
        self._sleepers = [s for s in self._sleepers if not due(s)]
        for s in woken:
            if s.call is not None and s.call.active():
                s.call.cancel()
            if not s.done.called:
                s.done.callback(None)
