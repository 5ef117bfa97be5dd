"""Senders: how a batch of entries reaches one kind of destination.

The worker (:class:`gateway.forward.DestinationWorker`) owns the queue side:
slots, leases, batching, outcome recording, the circuit. What it does to
deliver is a :class:`Sender`'s, one per destination, made for the
destination's configuration type by :func:`gateway.send.registry.sender_for`:

- :class:`gateway.send.dicom.DicomSender`: C-STORE over associations it
  opens, reuses and releases (one per slot);
- :class:`gateway.send.folder.FolderSender`: a Part 10 file under a folder;
- :class:`gateway.send.dicomweb.DicomWebSender`: STOW-RS requests (PS3.18 10.5, issue 17).

A new kind (a STOW-RS sender, say) is one class with the methods of
:class:`Sender`, registered with :func:`gateway.send.registry.register_sender`
for its configuration type.

The one sending method, :meth:`Sender.send`, takes a slot's batch and yields
``(entry, outcome)`` as each entry's fate is known, so the worker can record
each outcome (and may stop) before the next entry goes out; it writes
deliveries in batches (see :mod:`gateway.forward`: a crash leaves at most
:data:`~gateway.queue.interfaces.UNRECORDED_DELIVERIES` deliveries and the
entry in flight unrecorded, each re-sent as a redelivery). Outcomes are the
data of :mod:`gateway.queue.outcome`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, AsyncGenerator, Callable, Protocol, Sequence

from twisted.internet.interfaces import IReactorTime

from gateway.blocking import IBlockingRunner
from gateway.queue.interfaces import Entry
from gateway.queue.outcome import DestinationDown, Outcome

__all__ = ["SendContext", "Sender"]


@dataclass(frozen=True)
class SendContext:
    """What the worker lends its sender.

    :ivar file_runner: runs file work (header reads, transcoding, folder writes).
    :ivar clock: schedules timeouts.
    :ivar reactor: for network connections (``None`` in tests that inject ``connect``).
    :ivar connect: opens a DICOM association, ``connect(destination, proposals)``
        (``None``: :func:`gateway.send.dicom.connect_dicom` with ``reactor``).
    :ivar scratch_dir: where converted copies are written (the system's temporary folder if ``None``).
    :ivar reachable: called when the destination answered before any entry
        was delivered (an association opened): the circuit counts it as a success.
    :ivar observe: tells the gateway's observer of a sender's own events
        (:class:`gateway.events.DicomWebAnswered`).
    """

    file_runner: IBlockingRunner
    clock: IReactorTime
    reactor: Any = None
    connect: Callable[..., Any] | None = None
    scratch_dir: str | None = None
    reachable: Callable[[], None] = lambda: None
    observe: Callable[[Any], None] = lambda event: None


class Sender(Protocol):
    """Delivers entries to one destination; the worker calls it slot by slot.

    :ivar slots: how many slots the worker runs (associations at once).
    :ivar batch_size: entries leased at once (and sent on one association).
    :ivar lease_seconds: how long a lease lasts.
    """

    slots: int
    batch_size: int
    lease_seconds: float

    def send(self, slot: int, batch: Sequence[Entry]) -> AsyncGenerator[tuple[Entry, Outcome], None]:
        """Deliver ``batch`` in order, yielding each entry with its outcome as soon as it is known.

        The worker may stop iterating (and closes the iterator) after any
        outcome: a :class:`~gateway.queue.outcome.DestinationDown`, a stop,
        the circuit opening. Entries never yielded were not tried.
        """

    async def probe(self) -> DestinationDown | None:
        """One circuit probe (no entry involved): ``None`` when the destination answers."""

    async def idle(self, slot: int, now: float) -> float | None:
        """The slot has nothing to send: release what has been idle too long.

        :returns: seconds until the slot should look again for its own sake, or ``None``.
        """

    async def close(self, slot: int) -> None:
        """The slot stops: release what it holds."""

    def abort(self) -> None:
        """The grace period is over: abort whatever is in flight (it fails as ambiguous)."""

    def connections(self) -> int:
        """How many connections (associations) are open now."""
