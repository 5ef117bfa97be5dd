"""Draining a node before a restart or a removal from the cluster (issue 14, ``dicom-gateway drain``).

A node behind HAProxy cannot simply stop: HAProxy sends it new associations
until its health check has failed ``fall`` times ``inter`` seconds apart,
and a refused association is a modality that has to retry. So a drain
happens in three steps, on a timeline this module keeps:

1. at :meth:`Drain.drain`, ``/readyz`` answers 503 with the reason
   ``draining`` at once, so the load balancer marks the node down within
   ``fall x inter`` (6 s with the shipped ``etc/haproxy/haproxy.cfg``); the
   forwarding workers are told (``set_draining(True)``: they stop taking new
   work and release their leases as their sends finish, so the other nodes
   pick the backlog up);
2. for ``drain.grace`` seconds (10 s by default, at least ``fall x inter``)
   new associations are still accepted: they are the ones HAProxy routed
   here before it saw the node down;
3. after the grace, new associations are rejected with A-ASSOCIATE-RJ
   (2,3,2) (rejected-transient, service-provider presentation,
   local-limit-exceeded; PS3.8 Table 9-21), which a modality retries later
   (and HAProxy no longer sends here anyway), while open associations finish.

:meth:`Drain.undrain` reverses all of it at any point: ready again, new
associations accepted, workers back to normal.

The workers are reached through :class:`IDrainableWorker`, one method that
a worker may or may not have: a worker without ``set_draining`` (a gateway
built before the forwarding side knew about draining) is skipped, so this
module does not depend on it. The listeners ask :meth:`Drain.refusing` in
their service-provider check (:class:`gateway.listen.AcceptorFactory`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from gateway import events

__all__ = ["DRAINING_REASON", "IDrainableWorker", "DrainStatus", "Drain"]

#: The ``/readyz`` reason while draining.
DRAINING_REASON = "draining"


@runtime_checkable
class IDrainableWorker(Protocol):
    """A forwarding worker that can drain (:class:`gateway.forward.DestinationWorker` on the forwarding side)."""

    def set_draining(self, draining: bool) -> object:
        """Stop (``True``) or resume (``False``) taking new work; work in flight finishes.

        :returns: anything; a Deferred is awaited: it fires once the worker
            has finished its sends and released its leases.
        """


@dataclass(frozen=True)
class DrainStatus:
    """Where a drain stands, for the API's answer and the CLI.

    :ivar draining: ``/readyz`` fails (since ``since``).
    :ivar refusing: the grace is over: new associations are rejected.
    :ivar since: when the drain started (the clock's seconds), or ``None``.
    :ivar refuse_at: when new associations start being rejected, or ``None``.
    :ivar grace: the grace period in force, seconds.
    :ivar forwarding_drained: every worker that can drain has finished its
        sends and released its leases (``False`` when not draining).
    """

    draining: bool
    refusing: bool
    since: float | None
    refuse_at: float | None
    grace: float
    forwarding_drained: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The status as JSON-able data.

        :returns: ``{"draining", "refusing", "grace_seconds", "forwarding_drained"}``.
        """
        return {
            "draining": self.draining,
            "refusing": self.refusing,
            "grace_seconds": self.grace,
            "forwarding_drained": self.forwarding_drained,
        }


class Drain:
    """The node's drain state and its timeline.

    :param clock: for the grace timer.
    :param grace: the grace period in seconds, read at each :meth:`drain`
        (a reload may change ``drain.grace``).
    :param workers: returns the forwarding workers now running.
    :param observer: told of each change (:class:`gateway.events.DrainChanged`).
    """

    log = Logger(namespace="gateway.drain")

    def __init__(
        self,
        clock: IReactorTime,
        grace: Callable[[], float],
        workers: Callable[[], Iterable[Any]] = tuple,
        observer: events.IGatewayObserver = events.NULL_OBSERVER,
    ) -> None:
        self._clock = clock
        self._grace = grace
        self._workers = workers
        self._observer = observer
        self._since: float | None = None
        self._grace_in_force = 0.0
        self._refusing = False
        self._timer: IDelayedCall | None = None
        self._forwarding_drained = False
        # Bumped at each drain and undrain: a late "workers drained" of an earlier drain is ignored.
        self._generation = 0

    @property
    def draining(self) -> bool:
        """Whether the node is draining (``/readyz`` fails)."""
        return self._since is not None

    def refusing(self) -> bool:
        """Whether new associations are rejected (draining, and the grace is over).

        :returns: ``True`` after the grace.
        """
        return self._refusing

    def status(self) -> DrainStatus:
        """Where the drain stands.

        :returns: the status.
        """
        refuse_at = None if self._since is None else self._since + self._grace_in_force
        return DrainStatus(self.draining, self._refusing, self._since, refuse_at, self._grace_in_force,
                           self._forwarding_drained)

    def drain(self) -> DrainStatus:
        """Start draining; a second call while draining changes nothing.

        :returns: the status.
        """
        if self._since is not None:
            return self.status()
        self._since = self._clock.seconds()
        self._grace_in_force = max(0.0, float(self._grace()))
        self.log.info(
            "draining: /readyz fails now; new associations accepted for {grace:g}s more, then rejected (2,3,2)",
            grace=self._grace_in_force,
        )
        self._tell_workers(True)
        self._observer.observe(events.DrainChanged(True))
        if self._grace_in_force > 0:
            self._timer = self._clock.callLater(self._grace_in_force, self._grace_over)
        else:
            self._grace_over()
        return self.status()

    def undrain(self) -> DrainStatus:
        """Stop draining: ready again, new associations accepted, workers resume; nothing if not draining.

        :returns: the status.
        """
        if self._since is None:
            return self.status()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._since = None
        self._refusing = False
        self._forwarding_drained = False
        self._generation += 1
        self.log.info("drain ended: ready, accepting new associations")
        self._tell_workers(False)
        self._observer.observe(events.DrainChanged(False))
        return self.status()

    def stop(self) -> None:
        """Cancel the grace timer (the gateway is stopping)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _grace_over(self) -> None:
        self._timer = None
        if self._since is None:
            return
        self._refusing = True
        self.log.info("drain grace over: new associations are now rejected (2,3,2); open ones finish")

    def _tell_workers(self, draining: bool) -> None:
        """Call ``set_draining`` on each worker that has it; when draining, note when they have all drained."""
        self._generation += 1
        generation = self._generation
        waiting: list[Deferred[Any]] = []
        for worker in list(self._workers()):
            if isinstance(worker, IDrainableWorker):
                result = worker.set_draining(draining)
                if isinstance(result, Deferred):
                    waiting.append(result)
        if not draining:
            return

        def drained(_: object) -> None:
            if generation != self._generation or self._since is None:
                return
            self._forwarding_drained = True
            self.log.info("drain: forwarding finished its sends and released its leases")

        DeferredList(waiting, consumeErrors=True).addCallback(drained)
