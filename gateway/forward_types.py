"""The forwarder's vocabulary, shared with the rest of the gateway: its observer, status and errors.

The per-destination worker (:mod:`gateway.forward`) and its standing in the
cluster (:mod:`gateway.membership`) raise and report with these; the
metrics (:mod:`gateway.observe`), the morphing of copies
(:mod:`gateway.prepare`) and the HTTP status pages use them without
importing the worker itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from twisted.internet.defer import Deferred

from gateway import events
from gateway.blocking import IBlockingRunner
from gateway.queue.interfaces import Entry, LeaseLost
from gateway.queue.outcome import DeadLetterKind

__all__ = [
    "JournalRefused",
    "PrepareError",
    "Prepare",
    "ForwardObserver",
    "WorkerStatus",
    "run_store",
    "run_journal",
]

_T = TypeVar("_T")


class JournalRefused(Exception):
    """The journal did not take an entry's outcome (disk full, I/O error); it is written again later."""


class PrepareError(Exception):
    """A destination's copy of an instance cannot be made (a morph failure): a permanent fault of that copy."""


#: Makes the copy an entry sends: returns the entry itself (unmorphed) or one
#: whose ``path`` (and ``instance`` UIDs) are those of the copy made with the
#: morph plan journaled with the entry (:class:`gateway.prepare.CopyMaker`).
#: Raises :class:`PrepareError` when the copy cannot be made or the plan cannot
#: be rebuilt (HARDENING D15: the copy is dead-lettered, never sent half-made
#: or with less morphing than it was queued with).
Prepare = Callable[[Entry], "Deferred[Entry]"]


async def run_store(runner: IBlockingRunner, f: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Run a store method through the store runner.

    :param runner: the store runner (one thread in production).
    :param f: the store method.
    :returns: what the method returns.
    """
    result: _T = await runner.run(f, *args, **kwargs)
    return result


async def run_journal(runner: IBlockingRunner, f: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Run a store method that writes the forwarder's bookkeeping; its failure is a :class:`JournalRefused`.

    A fenced write that found the lease taken over raises
    :class:`~gateway.queue.interfaces.LeaseLost` as it is: that is no
    refusal of the journal, and the caller drops its outcome.

    :param runner: the store runner.
    :param f: the store method.
    :returns: what the method returns.
    :raises JournalRefused: the store failed.
    """
    try:
        return await run_store(runner, f, *args, **kwargs)
    except LeaseLost:
        raise
    except Exception as e:
        raise JournalRefused(f"{type(e).__name__}: {e}") from e


class ForwardObserver:
    """A worker's events as one method each: an :class:`~gateway.events.IGatewayObserver` for sinks that prefer methods.

    The worker emits :mod:`gateway.events` to :meth:`observe`, which calls the
    method of the event; every method is a no-op here, and events that are
    not a worker's are ignored. The delivery metrics subclass this.
    """

    def observe(self, event: events.Event) -> None:
        """Call the method of a forwarding event."""
        if isinstance(event, events.Delivered):
            self.delivered(event.entry, event.duration, event.warning)
        elif isinstance(event, events.Redelivered):
            self.redelivered(event.entry)
        elif isinstance(event, events.Retried):
            self.retried(event.entry, event.reason)
        elif isinstance(event, events.DeadLettered):
            self.dead_lettered_as(event.entry, event.kind, event.detail)
        elif isinstance(event, events.DestinationFault):
            self.destination_fault(event.destination, event.reason, event.permanent)
        elif isinstance(event, events.CircuitOpened):
            self.destination_down(event.destination, event.reason, event.permanent)
        elif isinstance(event, events.CircuitClosed):
            self.destination_up(event.destination)
        elif isinstance(event, events.LeaseLost):
            self.lease_lost(event.destination, event.entry_id, event.node)
        elif isinstance(event, events.CircuitAdopted):
            self.circuit_adopted(event.destination, event.circuit_open, event.reason)

    def delivered(self, entry: Entry, duration: float, warning: str) -> None:
        """An entry was delivered (``warning`` is empty on plain success)."""

    def retried(self, entry: Entry, reason: str) -> None:
        """An entry's attempt failed and it will be tried again."""

    def dead_lettered(self, entry: Entry, reason: str) -> None:
        """An entry went to the dead letters (``reason`` is the text stored with it)."""

    def dead_lettered_as(self, entry: Entry, kind: DeadLetterKind, reason: str) -> None:
        """An entry went to the dead letters, with the kind of its fault: what the worker calls.

        By default this calls :meth:`dead_lettered`, so an observer that
        needs only the text overrides that one.
        """
        self.dead_lettered(entry, reason)

    def destination_fault(self, name: str, reason: str, permanent: bool) -> None:
        """One destination-wide fault (connection refused, association rejected, ...), circuit open or not."""

    def destination_down(self, name: str, reason: str, permanent: bool) -> None:
        """The circuit of destination ``name`` opened."""

    def destination_up(self, name: str) -> None:
        """The circuit of destination ``name`` closed again."""

    def redelivered(self, entry: Entry) -> None:
        """An entry delivered after an ambiguous attempt: the destination may hold two copies."""

    def duplicate(self, entry: Entry) -> None:
        """An identical re-send was not forwarded (called by the receive side, not the worker)."""

    def lease_lost(self, destination: str, entry_id: int, node: str) -> None:
        """Another node took entry ``entry_id`` over after this node's lease expired: this node's outcome was dropped."""

    def circuit_adopted(self, name: str, circuit_open: bool, reason: str) -> None:
        """The circuit of destination ``name`` followed another node's record (opened or closed)."""


@dataclass(frozen=True)
class WorkerStatus:
    """A worker's state for ``queue list`` and the health check.

    :ivar circuit: ``"closed"`` (sending) or ``"open"`` (probing; half-open included).
    :ivar consecutive_failures: destination-wide faults since the last success.
    :ivar last_error: the latest fault, empty if none.
    :ivar active_associations: associations open now.
    :ivar journal_error: why outcomes cannot be written to the journal now
        (the worker has stopped dequeuing), empty when they can.
    :ivar slots_held: association slots this node holds in the store (issue 14).
    :ivar draining: :meth:`gateway.forward.DestinationWorker.set_draining` asked the worker to drain.
    """

    destination: str
    circuit: str
    consecutive_failures: int
    last_error: str
    active_associations: int
    journal_error: str = ""
    slots_held: int = 0
    draining: bool = False

