"""Forward queued instances to one destination: the per-destination worker.

One :class:`DestinationWorker` (a Twisted ``Service``, named by its
destination) drains that destination's entries from the queue store. Each
destination has its own worker, so one that is down or slow never delays
another (no head-of-line blocking across destinations).

Theory of operation
-------------------
The worker runs ``n`` independent *slots* (``max_associations`` for a DICOM
AE, one for a folder). Slot ``k`` leases with ``shard=(k, n)``: the store
hands it only entries whose study hashes to ``k``, so every instance of a
study goes through the same slot, oldest first, and arrives in the order it
was received (issue 3).

Each slot loops:

1. lease up to ``batch_size`` due entries; none -> sleep until
   :meth:`DestinationWorker.poke` (the receive side calls it after each
   enqueue), until the store's ``next_due``, or for at most
   ``poll_interval`` (the CLI changes the store from another process:
   pauses, operator retries), whichever comes first;
2. for a DICOM AE, reuse the slot's association if it is open, carries
   contexts for the batch and has sent fewer than ``batch_size`` instances;
   otherwise open one proposing, per (SOP class, transfer syntax) of the
   batch, the original syntax, plus Explicit and Implicit VR Little Endian
   as fallbacks when the original is a native (uncompressed) syntax;
3. send each entry, classify the result with :mod:`gateway.queue.policy`
   and record it: ``complete``, ``retry`` after a backoff, or
   ``dead_letter``. A per-instance outcome never blocks the entries behind it.

A destination-wide fault (:class:`~gateway.queue.policy.DestinationDown`)
puts the entry being tried back without counting an attempt and releases
the rest of the batch unchanged. After ``circuit.failures`` consecutive such
faults the circuit opens: no slot leases; one probe loop (C-ECHO for a DICOM
AE; "the folder exists and is writable" for a folder) runs at backoff
intervals, at the maximum interval straight away after a permanent
rejection. Probes are not attempts. The first successful probe closes the
circuit and the slots resume. Nothing is dead-lettered for a
destination-wide fault (HARDENING decision 9).

A send whose outcome is unknown (the association ended after the data went
out, or the DIMSE timeout fired) is retried with ``ambiguous: `` at the
start of its recorded error; when an entry whose history holds such an
attempt is delivered, the observer's ``redelivered`` is called: the
destination may now hold two copies (at-least-once, HARDENING F06, F07).
Because this is read from the journal, it holds across restarts too.

Every store call goes through ``store_runner`` (one thread in production);
file work (reading headers, transcoding, folder writes) goes through
``file_runner``. Times stored in the journal come from ``wall``; delays are
scheduled on ``clock``.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from gateway.associate import (
    AssociationAborted,
    ClientAssociation,
    NoPresentationContext,
    Part10Header,
    open_association,
    read_part10_header,
)
from gateway.blocking import IBlockingRunner
from gateway.config.schema import DicomDestination, FolderDestination
from gateway.folder import FolderWriter, UnsafePath
from gateway.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from gateway.queue.interfaces import Entry, IQueueStore
from gateway.queue.policy import (
    DeadLetter,
    Delivered,
    DestinationDown,
    Outcome,
    Retry,
    backoff,
    classify_error,
    classify_status,
    give_up,
)
from gateway.sopclasses import EXPLICIT_VR_LE, IMPLICIT_VR_LE, VERIFICATION_SOP_CLASS
from gateway.transcode import NATIVE_SYNTAXES, TranscodeError, transcode
from gateway.ul.negotiate import build_request

__all__ = [
    "ForwardObserver",
    "WorkerStatus",
    "DestinationWorker",
    "Proposals",
    "connect_dicom",
    "proposals_for",
    "AMBIGUOUS_PREFIX",
]

_T = TypeVar("_T")

#: ``[(abstract_syntax, [transfer_syntax, ...]), ...]`` as ``build_request`` takes them.
Proposals = Sequence[tuple[str, Sequence[str]]]

#: The start of the recorded error of an attempt whose outcome is unknown.
AMBIGUOUS_PREFIX = "ambiguous: "

#: PS3.8 9.3.2.2: presentation context IDs are odd numbers 1-255, so at most 128 contexts;
#: one is kept for Verification.
_MAX_CONTEXTS = 127


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


class ForwardObserver:
    """Events of a worker, for metrics and alerts; every method is a no-op here.

    The metrics code subclasses this (or provides the same methods) so the
    worker never imports it.
    """

    def delivered(self, entry: Entry, duration: float, warning: str) -> None:
        """An entry was delivered (``warning`` is empty on plain success)."""

    def retried(self, entry: Entry, reason: str) -> None:
        """An entry's attempt failed and it will be tried again."""

    def dead_lettered(self, entry: Entry, reason: str) -> None:
        """An entry went to the dead letters."""

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


@dataclass(frozen=True)
class WorkerStatus:
    """A worker's state for ``queue list`` and the health check.

    :ivar circuit: ``"closed"`` (sending) or ``"open"`` (probing).
    :ivar consecutive_failures: destination-wide faults since the last success.
    :ivar last_error: the latest fault, empty if none.
    :ivar active_associations: associations open now.
    :ivar journal_error: why outcomes cannot be written to the journal now
        (the worker has stopped dequeuing), empty when they can.
    """

    destination: str
    circuit: str
    consecutive_failures: int
    last_error: str
    active_associations: int
    journal_error: str = ""


def _native_fallbacks(transfer_syntax: str) -> tuple[str, ...]:
    """The fallback syntaxes proposed for an instance in ``transfer_syntax``.

    Only a native (uncompressed) data set can be re-encoded; every Storage
    SCP accepts Implicit VR Little Endian (PS3.4 B.4.1, PS3.5 10.1).
    """
    if transfer_syntax not in NATIVE_SYNTAXES:
        return ()
    return tuple(ts for ts in (EXPLICIT_VR_LE, IMPLICIT_VR_LE) if ts != transfer_syntax)


def proposals_for(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """Presentation contexts for a batch of (SOP class, transfer syntax) pairs (PS3.8 9.3.2.2).

    Each pair gets a context with exactly its syntax, so the original bytes
    go out whenever the destination accepts them; a native syntax also gets
    a second context for the same SOP class offering Explicit VR LE, then
    Implicit VR LE, used (after :func:`gateway.transcode.transcode`) only
    when the first is refused.

    :param pairs: the batch's (SOP class UID, transfer syntax UID) pairs, in order.
    :returns: the proposals, without duplicates, in order.
    """
    seen: dict[tuple[str, tuple[str, ...]], None] = {}
    for sop, ts in pairs:
        seen[(sop, (ts,))] = None
    for sop, ts in pairs:
        fallbacks = _native_fallbacks(ts)
        if fallbacks:
            seen[(sop, fallbacks)] = None
    return [(sop, list(syntaxes)) for sop, syntaxes in seen]


def connect_dicom(reactor: Any, destination: DicomDestination, proposals: Proposals) -> "Deferred[ClientAssociation]":
    """Open an association to ``destination`` with its three timeouts kept apart.

    ``connect_timeout`` bounds the TCP connection, ``acse_timeout`` the
    A-ASSOCIATE answer (the ARTIM timer, PS3.8 9.1.5), and ``dimse_timeout``
    each response once the association is up.

    :param reactor: provides ``IReactorTCP`` and ``IReactorTime``.
    :param destination: the DICOM AE.
    :param proposals: presentation contexts; Verification is always added (C-ECHO probes).
    :returns: a Deferred firing with the :class:`ClientAssociation`.
    """
    wanted = [(sop, list(ts)) for sop, ts in proposals]
    if not any(sop == VERIFICATION_SOP_CLASS for sop, _ in wanted):
        wanted.insert(0, (VERIFICATION_SOP_CLASS, [IMPLICIT_VR_LE, EXPLICIT_VR_LE]))
    request = build_request(
        destination.calling_ae_title,
        destination.ae_title,
        wanted,
        max_pdu_length=destination.max_pdu_length,
        implementation_class_uid=IMPLEMENTATION_CLASS_UID,
        implementation_version_name=IMPLEMENTATION_VERSION_NAME,
    )
    endpoint_type = TCP6ClientEndpoint if ":" in destination.host else TCP4ClientEndpoint
    endpoint: Any = endpoint_type(reactor, destination.host, destination.port, timeout=destination.connect_timeout)
    if destination.tls is not None:
        # PS3.15 Annex B: the server is verified against the destination's CA
        # and name (RFC 6125, service-identity); never a plain-TCP fallback.
        # A verification failure ends the connection before the A-ASSOCIATE-AC,
        # a destination-wide fault (HARDENING decision 9, T12).
        from twisted.internet.endpoints import wrapClientTLS

        from gateway.security import client_tls_settings
        from gateway.tls import client_creator

        endpoint = wrapClientTLS(client_creator(client_tls_settings(destination.tls), destination.host), endpoint)
    return open_association(
        reactor,
        endpoint,
        request,
        acse_timeout=destination.acse_timeout,
        dimse_timeout=destination.dimse_timeout,
        max_pdu_length=destination.max_pdu_length,
    )


def _data_went_out(exc: BaseException) -> bool:
    """Whether the data set's last fragment had been sent when ``exc`` ended the send.

    :meth:`~gateway.associate.ClientAssociation.store` sets ``data_sent`` on
    the :class:`~gateway.associate.AssociationAborted` it raises. Without the
    attribute the text decides: "... while sending" and "not open" come
    before the last fragment, other texts (DIMSE timeout, A-ABORT) after it.
    """
    explicit = getattr(exc, "data_sent", None)
    if isinstance(explicit, bool):
        return explicit
    if not isinstance(exc, AssociationAborted):
        return False
    text = str(exc)
    return "while sending" not in text and "not open" not in text


@dataclass
class _Slot:
    """One association slot's mutable state."""

    index: int
    association: ClientAssociation | None = None
    proposed: frozenset[tuple[str, str]] = frozenset()
    #: (SOP class, transfer syntax) pairs this association refused: an entry
    #: needing one gets a fresh association (the archive may have been fixed,
    #: e.g. before an operator's retry of its dead letter).
    refused: set[tuple[str, str]] = field(default_factory=set)
    sent: int = 0
    last_used: float = 0.0
    leased: list[Entry] = field(default_factory=list)
    done: "Deferred[None] | None" = None
    connecting: "Deferred[ClientAssociation] | None" = None
    #: Outcomes the journal refused (ENOSPC, I/O error), recorded again before
    #: the slot leases more, and leases it could not give back (HARDENING F15).
    unrecorded: list[tuple[Entry, Outcome, float]] = field(default_factory=list)
    unreleased: list[int] = field(default_factory=list)
    #: The journal's last refusal on this slot's turn, empty once a turn succeeds.
    journal_error: str = ""


#: A difference between wall-clock and monotonic progress at least this large
#: (seconds) between two turns is a step of the wall clock, not drift.
WALL_CLOCK_STEP = 30.0


class DestinationWorker(Service):
    """Forwards one destination's queue (see the module docstring).

    :param config: the destination.
    :param store: the queue journal.
    :param store_runner: runs every store call (one thread in production).
    :param file_runner: runs file work: header reads, transcoding, folder writes.
    :param clock: schedules waits and timeouts.
    :param connect: opens an association, ``connect(destination, proposals)``;
        the default uses :func:`connect_dicom` with ``reactor``.
    :param rand: floats in [0, 1) for the backoff jitter.
    :param observer: receives events (see :class:`ForwardObserver`).
    :param wall: wall-clock time for the journal (``time.time``).
    :param monotonic: a clock no one can set (``time.monotonic``), to notice steps of ``wall``.
    :param reactor: the reactor for the default ``connect``.
    :param grace: seconds :meth:`stopService` lets in-flight sends finish.
    :param poll_interval: the longest idle sleep (the CLI changes the store from outside).
    :param scratch_dir: where transcoded copies are written (the system's temporary folder by default).
    """

    log = Logger(namespace="gateway.forward")

    def __init__(
        self,
        config: DicomDestination | FolderDestination,
        store: IQueueStore,
        store_runner: IBlockingRunner,
        file_runner: IBlockingRunner,
        clock: IReactorTime,
        connect: Callable[[DicomDestination, Proposals], "Deferred[ClientAssociation]"] | None = None,
        rand: Callable[[], float] = random.random,
        observer: ForwardObserver | None = None,
        wall: Callable[[], float] = time.time,
        reactor: Any = None,
        grace: float = 10.0,
        poll_interval: float = 1.0,
        scratch_dir: str | None = None,
        prepare: Prepare | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.name = config.name
        self.store = store
        self.store_runner = store_runner
        self.file_runner = file_runner
        self.clock = clock
        if connect is None:

            def connect(destination: DicomDestination, proposals: Proposals) -> "Deferred[ClientAssociation]":
                return connect_dicom(reactor, destination, proposals)

        self.connect = connect
        self.rand = rand
        self.observer = observer or ForwardObserver()
        self.wall = wall
        self.monotonic = monotonic
        self._clock_anchor: tuple[float, float] | None = None
        self.grace = grace
        self.poll_interval = poll_interval
        self.scratch_dir = scratch_dir
        self.prepare = prepare
        self.folder = FolderWriter(config.path, config.pattern) if isinstance(config, FolderDestination) else None
        count = config.max_associations if isinstance(config, DicomDestination) else 1
        self._slots = [_Slot(k) for k in range(count)]
        self._stopping = False
        self._sleepers: list[tuple[Deferred[None], IDelayedCall | None, bool]] = []
        self._circuit_open = False
        self._circuit_closed: list[Deferred[None]] = []
        self._probe: Deferred[None] | None = None
        self._consecutive = 0
        self._last_error = ""
        self._permanent = False
        self._stopped: Deferred[None] | None = None

    # -- settings ------------------------------------------------------------------------

    @property
    def batch_size(self) -> int:
        """Entries leased at once, and sent on one association before it is renewed."""
        return self.config.batch_size if isinstance(self.config, DicomDestination) else 50

    @property
    def lease_seconds(self) -> float:
        """How long a lease lasts: generous, 10 x the DIMSE timeout (or 10 min for a folder)."""
        if isinstance(self.config, DicomDestination):
            return 10 * self.config.dimse_timeout
        return 600.0

    # -- service -------------------------------------------------------------------------

    def startService(self) -> None:
        """Start every slot."""
        Service.startService(self)
        self._stopping = False
        # A new worker starts with its circuit closed: say so in the journal,
        # replacing whatever an earlier worker (before a reload or restart) left.
        self._note_circuit(False, "")
        for slot in self._slots:
            slot.done = Deferred.fromCoroutine(self._run_slot(slot))
            slot.done.addErrback(self._crashed, f"slot {slot.index}")

    def stopService(self) -> "Deferred[None]":
        """Stop leasing, let in-flight sends finish for ``grace`` seconds, then abort.

        Leased entries not yet sent are released. The Deferred fires when
        every slot has stopped and recorded its last outcome.
        """
        Service.stopService(self)
        if self._stopped is not None:
            return self._stopped
        self._stopping = True
        self._wake(all_sleepers=True)
        for d in self._circuit_closed:
            d.callback(None)
        self._circuit_closed = []
        # The probe holds no lease: it is not waited for (it ends at its own timeouts).
        waiting = [slot.done for slot in self._slots if slot.done is not None]
        timer = self.clock.callLater(self.grace, self._abort_all)

        def finished(_: object) -> None:
            if timer.active():
                timer.cancel()

        self._stopped = DeferredList(waiting, consumeErrors=True).addCallback(finished)
        return self._stopped

    def _crashed(self, failure: Any, what: str) -> None:
        self.log.failure("forward {destination} {what} crashed", failure, destination=self.name, what=what)

    def _abort_all(self) -> None:
        """Grace period over: abort every open association (in-flight sends fail as ambiguous)."""
        for slot in self._slots:
            if slot.connecting is not None and not slot.connecting.called:
                slot.connecting.cancel()
            if slot.association is not None and slot.association.is_open:
                slot.association.abort()

    def poke(self) -> None:
        """Wake idle slots: entries were enqueued (called by the receive side)."""
        self._wake(all_sleepers=False)

    def status(self) -> WorkerStatus:
        """The worker's state (circuit, failures, last error, associations)."""
        return WorkerStatus(
            destination=self.name,
            circuit="open" if self._circuit_open else "closed",
            consecutive_failures=self._consecutive,
            last_error=self._last_error,
            active_associations=sum(1 for s in self._slots if s.association is not None and s.association.is_open),
            journal_error=next((s.journal_error for s in self._slots if s.journal_error), ""),
        )

    # -- waiting -------------------------------------------------------------------------

    def _sleep(self, delay: float, pokeable: bool) -> "Deferred[None]":
        """A Deferred that fires after ``delay``, on stop, and (if ``pokeable``) on :meth:`poke`."""
        d: Deferred[None] = Deferred()
        call: IDelayedCall | None = None
        if self._stopping:
            d.callback(None)
            return d

        def fire() -> None:
            self._sleepers[:] = [s for s in self._sleepers if s[0] is not d]
            if not d.called:
                d.callback(None)

        call = self.clock.callLater(max(0.0, delay), fire)
        self._sleepers.append((d, call, pokeable))
        return d

    def _wake(self, all_sleepers: bool) -> None:
        """Fire the sleepers (only the pokeable ones unless ``all_sleepers``)."""
        # Take them out first: a woken slot may go back to sleep at once.
        woken = [s for s in self._sleepers if all_sleepers or s[2]]
        self._sleepers = [s for s in self._sleepers if not (all_sleepers or s[2])]
        for d, call, _ in woken:
            if call is not None and call.active():
                call.cancel()
            if not d.called:
                d.callback(None)

    async def _store(self, f: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run a store method through the store runner."""
        result: _T = await self.store_runner.run(f, *args, **kwargs)
        return result

    async def _journal(self, f: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run a store method that writes the worker's bookkeeping; its failure is a :class:`JournalRefused`."""
        try:
            return await self._store(f, *args, **kwargs)
        except Exception as e:
            raise JournalRefused(f"{type(e).__name__}: {e}") from e

    async def _file(self, f: Callable[..., _T], *args: Any) -> _T:
        """Run file work through the file runner."""
        result: _T = await self.file_runner.run(f, *args)
        return result

    # -- slot loop -----------------------------------------------------------------------

    async def _run_slot(self, slot: _Slot) -> None:
        while not self._stopping:
            try:
                await self._slot_step(slot)
            except Exception as e:
                # A failing store (ENOSPC, a locked database) or a bug: stop
                # dequeuing for a while, never spin (HARDENING F15).
                if isinstance(e, JournalRefused):
                    slot.journal_error = str(e)
                self.log.failure("forward {destination} slot {slot} failed", destination=self.name, slot=slot.index)
                await self._sleep(self.poll_interval, pokeable=False)
            else:
                slot.journal_error = ""
        await self._close_association(slot)

    async def _slot_step(self, slot: _Slot) -> None:
        """One turn of a slot: wait for the circuit, lease, send or idle."""
        n = len(self._slots)
        if slot.unrecorded or slot.unreleased:
            # Fail closed: nothing new is leased until the journal takes the
            # outcomes it refused (a delivered entry must become DELIVERED,
            # not be sent again after a lease that never expires).
            while slot.unrecorded:
                entry, outcome, started = slot.unrecorded.pop(0)
                await self._record(slot, entry, outcome, started)
            if slot.unreleased:
                await self._journal(self.store.release, slot.unreleased)
                slot.unreleased = []
            self.log.info("forward {destination} slot {slot}: journal writable again", destination=self.name, slot=slot.index)
            return
        if self._circuit_open:
            await self._until_circuit_closed()
            return
        await self._follow_wall_clock()
        entries = await self._journal(
            self.store.lease, self.name, self.batch_size, self._schedule_now(), self.lease_seconds, shard=(slot.index, n)
        )
        if not entries:
            await self._idle(slot)
            return
        slot.leased = list(entries)
        try:
            await self._send_batch(slot)
        finally:
            if slot.leased:
                # Whatever is still leased here was never tried (stop, circuit, error).
                rest = [e.entry_id for e in slot.leased]
                slot.leased = []
                try:
                    await self._journal(self.store.release, rest)
                except JournalRefused:
                    slot.unreleased.extend(rest)
                    raise

    def _schedule_now(self) -> float:
        """The time due times are written and compared in: the wall clock as of the
        last turn that checked it, advanced by the monotonic clock since. A due time
        written between a step and the turn that notices it is thus in the old
        timeline, like the rest of the journal, and moves with it."""
        if self._clock_anchor is None:
            return self.wall()
        wall, mono = self._clock_anchor
        return wall + (self.monotonic() - mono)

    async def _follow_wall_clock(self) -> None:
        """Keep the journal's due times in step with the wall clock (HARDENING F19).

        Due times are wall-clock times, so they survive a restart. When the wall
        clock steps (an operator, NTP after a long drift, a VM resumed), the
        queued entries due in the future move by the same step, so a retry keeps
        the delay it had left: no burst after a step forward, no stall after a
        step back. At the first turn, a step made while the gateway was stopped
        is bounded instead: nothing stays due later than ``max_delay`` from now.
        """
        wall, mono = self.wall(), self.monotonic()
        anchor, self._clock_anchor = self._clock_anchor, (wall, mono)
        if anchor is None:
            latest = wall + self.config.retry.max_delay
            await self._journal(self.store.shift_schedule, self.name, wall, 0.0, latest)
            return
        step = (wall - anchor[0]) - (mono - anchor[1])
        if abs(step) < WALL_CLOCK_STEP:
            return
        moved = await self._journal(self.store.shift_schedule, self.name, wall - step, step)
        self.log.warn(
            "forward {destination}: wall clock stepped by {step:+.0f}s, {moved} queued entries moved with it",
            destination=self.name,
            step=step,
            moved=moved,
        )

    async def _idle(self, slot: _Slot) -> None:
        """Nothing due: release an idle association when its time comes, and sleep."""
        now = self.clock.seconds()
        delay = self.poll_interval
        if slot.association is not None and isinstance(self.config, DicomDestination):
            idle_left = slot.last_used + self.config.idle_release - now
            if idle_left <= 0 or not slot.association.is_open:
                await self._close_association(slot)
            else:
                delay = min(delay, idle_left)
        due = await self._store(self.store.next_due, self.name)
        if due is not None and due > self._schedule_now():
            # An entry comes due before the next poll. (One already due that
            # lease did not return is paused or another slot's: poll.)
            delay = min(delay, due - self._schedule_now())
        if not self._stopping:
            await self._sleep(delay, pokeable=True)

    async def _until_circuit_closed(self) -> None:
        if self._stopping:
            return
        d: Deferred[None] = Deferred()
        self._circuit_closed.append(d)
        await d

    async def _send_batch(self, slot: _Slot) -> None:
        """Send the slot's leased entries one by one, recording each outcome."""
        headers: dict[int, Part10Header] = {}
        if self.prepare is not None:
            await self._prepare_all(slot)
        if self.folder is None:
            for entry in list(slot.leased):
                try:
                    headers[entry.entry_id] = await self._file(read_part10_header, entry.path)
                except FileNotFoundError as e:
                    await self._record(slot, entry, Retry(f"spool file missing: {e}"), self.clock.seconds())
                except (ValueError, OSError) as e:
                    await self._record(slot, entry, DeadLetter(f"unreadable Part 10 file: {e}"), self.clock.seconds())
        while slot.leased and not self._stopping and not self._circuit_open:
            entry = slot.leased[0]
            started = self.clock.seconds()
            if self.folder is not None:
                outcome = await self._send_folder(entry)
            else:
                outcome = await self._send_dicom(slot, entry, headers)
            await self._record(slot, entry, outcome, started)
            if isinstance(outcome, DestinationDown):
                break

    async def _prepare_all(self, slot: _Slot) -> None:
        """Replace each leased entry by its route's copy (morphing after the ack, HARDENING decision 4)."""
        assert self.prepare is not None
        prepared: list[Entry] = []
        for entry in list(slot.leased):
            try:
                prepared.append(await self.prepare(entry))
            except PrepareError as e:
                await self._record(slot, entry, DeadLetter(f"morph: {e}"), self.clock.seconds())
            except Exception as e:  # a bug or an I/O error: try again later, never send unmorphed
                self.log.failure("preparing {entry_id} for {destination} failed", entry_id=entry.entry_id, destination=self.name)
                await self._record(slot, entry, Retry(f"could not prepare the copy: {e}"), self.clock.seconds())
        slot.leased = prepared

    async def _record(self, slot: _Slot, entry: Entry, outcome: Outcome, started: float) -> None:
        """Write one entry's outcome to the journal and tell the observer.

        If the journal refuses it, the outcome is kept on the slot and
        written again before the slot leases anything else (HARDENING F15).
        """
        slot.leased = [e for e in slot.leased if e.entry_id != entry.entry_id]
        try:
            await self._record_outcome(slot, entry, outcome, started)
        except JournalRefused:
            slot.unrecorded.append((entry, outcome, started))
            raise

    async def _record_outcome(self, slot: _Slot, entry: Entry, outcome: Outcome, started: float) -> None:
        """The body of :meth:`_record`."""
        now = self._schedule_now()
        fields = dict(
            destination=self.name,
            entry_id=entry.entry_id,
            correlation_id=entry.instance.correlation_id,
            sop_instance_uid=entry.instance.sop_instance_uid,
            attempt=entry.attempts + 1,
        )
        if isinstance(outcome, Delivered):
            await self._journal(self.store.complete, [entry.entry_id], now, outcome.warning)
            self._destination_ok()
            if outcome.warning:
                # (not "warning": a log event with that key looks like a Python warning to legacy observers)
                self.log.warn("delivered {sop_instance_uid} to {destination} with {status_warning}", status_warning=outcome.warning, **fields)
            else:
                self.log.debug("delivered {sop_instance_uid} to {destination}", **fields)
            self.observer.delivered(entry, self.clock.seconds() - started, outcome.warning)
            if entry.last_error.startswith(AMBIGUOUS_PREFIX) or any(
                a.error.startswith(AMBIGUOUS_PREFIX) for a in entry.history
            ):
                self.observer.redelivered(entry)
        elif isinstance(outcome, Retry):
            reason = (AMBIGUOUS_PREFIX if outcome.ambiguous else "") + outcome.reason
            gave_up = give_up(entry, now, self.config.retry)
            if gave_up is not None:
                await self._dead_letter(entry, f"{reason}; {gave_up}", now, fields)
                return
            retry = self.config.retry
            delay = backoff(
                entry.attempts,
                initial=retry.initial_delay,
                maximum=retry.max_delay,
                multiplier=retry.multiplier,
                jitter=retry.jitter,
                rand=self.rand,
            )
            await self._journal(self.store.retry, entry.entry_id, now + delay, reason, now)
            self.log.info("retrying {sop_instance_uid} to {destination} in {delay:.1f}s: {reason}", delay=delay, reason=reason, **fields)
            self.observer.retried(entry, reason)
        elif isinstance(outcome, DeadLetter):
            await self._dead_letter(entry, outcome.reason, now, fields)
        else:
            # Destination-wide: this entry was not really tried, the rest go back unchanged.
            await self._journal(self.store.retry, entry.entry_id, now, outcome.reason, now, counted=False)
            rest = [e.entry_id for e in slot.leased]
            slot.leased = []
            if rest:
                try:
                    await self._journal(self.store.release, rest)
                except JournalRefused:
                    slot.unreleased.extend(rest)
                    raise
            await self._destination_fault(outcome)

    async def _dead_letter(self, entry: Entry, reason: str, now: float, fields: dict[str, Any]) -> None:
        await self._journal(self.store.dead_letter, entry.entry_id, reason, now)
        self.log.warn("dead-lettered {sop_instance_uid} for {destination}: {reason}", reason=reason, **fields)
        self.observer.dead_lettered(entry, reason)

    # -- circuit breaker -----------------------------------------------------------------

    def _destination_ok(self) -> None:
        self._consecutive = 0
        self._permanent = False

    def _backoff(self, attempt: int) -> float:
        retry = self.config.retry
        return backoff(
            attempt,
            initial=retry.initial_delay,
            maximum=retry.max_delay,
            multiplier=retry.multiplier,
            jitter=retry.jitter,
            rand=self.rand,
        )

    async def _destination_fault(self, outcome: DestinationDown) -> None:
        """Count a destination-wide fault; open the circuit at the threshold, else back off."""
        self._consecutive += 1
        self._last_error = outcome.reason
        self._permanent = outcome.permanent
        self.observer.destination_fault(self.name, outcome.reason, outcome.permanent)
        self.log.warn(
            "destination {destination} failed ({count} in a row): {reason}",
            destination=self.name,
            count=self._consecutive,
            reason=outcome.reason,
        )
        if self._consecutive >= self.config.circuit.failures:
            if not self._circuit_open:
                self._open_circuit(outcome)
            return
        # Below the threshold: wait before this slot tries the destination again.
        await self._sleep(self._backoff(self._consecutive - 1), pokeable=False)

    def _open_circuit(self, outcome: DestinationDown) -> None:
        self._circuit_open = True
        self.log.error(
            "destination {destination} is down, circuit open: {reason}", destination=self.name, reason=outcome.reason
        )
        self.observer.destination_down(self.name, outcome.reason, outcome.permanent)
        self._note_circuit(True, outcome.reason)
        self._probe = Deferred.fromCoroutine(self._probe_loop())
        self._probe.addErrback(self._crashed, "probe")

    async def _probe_loop(self) -> None:
        """Probe the destination at backoff intervals until it answers; then close the circuit."""
        attempt = 0
        while not self._stopping:
            max_delay = self.config.retry.max_delay
            delay = max_delay if self._permanent else self._backoff(attempt)
            await self._sleep(delay, pokeable=False)
            if self._stopping:
                return
            error = await self._probe_once()
            if error is None:
                self._close_circuit()
                return
            self._last_error = error.reason
            self._permanent = error.permanent
            attempt += 1
            self.log.info("probe of {destination} failed: {reason}", destination=self.name, reason=error.reason)
            await self._expire_while_down()

    async def _expire_while_down(self) -> None:
        """Apply ``max_age`` to the entries of a destination that is down as a whole.

        Its entries make no attempts while the circuit is open (HARDENING
        decision 9), so :func:`give_up` never sees them: without this, a
        destination that never comes back would keep their spool files forever
        (F17: "kept until all are done or dead-lettered").
        """
        max_age = self.config.retry.max_age
        now = self._schedule_now()
        reason = f"gave up after {max_age:.0f}s in the queue (max_age) while the destination was down: {self._last_error}"
        try:
            expired = await self._journal(self.store.expire, self.name, now - max_age, reason, now)
        except JournalRefused:
            return
        for entry in expired:
            self.observer.dead_lettered(entry, reason)
        if expired:
            self.log.warn(
                "dead-lettered {count} entries for {destination} older than max_age {max_age:.0f}s (destination down)",
                count=len(expired),
                destination=self.name,
                max_age=max_age,
            )

    async def _probe_once(self) -> DestinationDown | None:
        """One probe: C-ECHO for a DICOM AE, a write test for a folder; ``None`` on success."""
        if self.folder is not None:
            try:
                await self._file(self.folder.check_writable)
            except OSError as e:
                return DestinationDown(f"{type(e).__name__}: {e}")
            return None
        assert isinstance(self.config, DicomDestination)
        try:
            association = await self.connect(self.config, [])
        except Exception as e:
            outcome = classify_error(e, data_sent=False, connecting=True)
            return outcome if isinstance(outcome, DestinationDown) else DestinationDown(str(e))
        try:
            status = await Deferred.fromCoroutine(association.echo())
        except Exception as e:
            association.abort()
            return DestinationDown(f"C-ECHO failed: {type(e).__name__}: {e}")
        await self._release(association)
        if status != 0:
            return DestinationDown(f"C-ECHO status 0x{status:04X}")
        return None

    def _note_circuit(self, circuit_open: bool, reason: str) -> None:
        """Write the circuit state to the journal, where ``queue list`` (another process) reads it."""
        d = self.store_runner.run(self.store.set_circuit, self.name, circuit_open, reason, self.wall())
        d.addErrback(lambda f: self.log.failure("recording the circuit of {destination} failed", f, destination=self.name))

    def _close_circuit(self) -> None:
        self._circuit_open = False
        self._probe = None
        self._destination_ok()
        self.log.info("destination {destination} is up, circuit closed", destination=self.name)
        self.observer.destination_up(self.name)
        self._note_circuit(False, "")
        waiting, self._circuit_closed = self._circuit_closed, []
        for d in waiting:
            d.callback(None)

    # -- sending -------------------------------------------------------------------------

    async def _send_folder(self, entry: Entry) -> Outcome:
        assert self.folder is not None
        try:
            await self._file(self.folder.write, entry.path, entry.instance)
        except UnsafePath as e:
            return DeadLetter(f"unsafe path: {e}")
        except OSError as e:
            if not os.path.exists(entry.path):
                return Retry(f"spool file missing: {e}")
            # The folder is missing, full or read-only: the destination as a whole.
            return DestinationDown(f"{type(e).__name__}: {e}")
        return Delivered(0)

    async def _ensure_association(self, slot: _Slot, headers: dict[int, Part10Header]) -> DestinationDown | None:
        """Make sure the slot has an open association carrying contexts for its leased entries."""
        assert isinstance(self.config, DicomDestination)
        pairs = [
            (headers[e.entry_id].sop_class_uid, headers[e.entry_id].transfer_syntax_uid)
            for e in slot.leased
            if e.entry_id in headers
        ]
        association = slot.association
        if association is not None:
            first = set(pairs[:1])
            if association.is_open and slot.sent < self.batch_size and first <= slot.proposed and not first & slot.refused:
                return None
            await self._close_association(slot)
        proposals = proposals_for(pairs)
        if len(proposals) > _MAX_CONTEXTS:
            # PS3.8 9.3.2.2: too many contexts for one association; later entries wait for the next.
            proposals = proposals[:_MAX_CONTEXTS]
        slot.connecting = self.connect(self.config, proposals)
        try:
            slot.association = await slot.connecting
        except Exception as e:
            outcome = classify_error(e, data_sent=False, connecting=True)
            return outcome if isinstance(outcome, DestinationDown) else DestinationDown(str(e))
        finally:
            slot.connecting = None
        slot.proposed = frozenset((sop, ts) for sop, syntaxes in proposals for ts in syntaxes if ts == syntaxes[0])
        slot.refused = set()
        slot.sent = 0
        slot.last_used = self.clock.seconds()
        self._destination_ok()
        return None

    async def _send_dicom(self, slot: _Slot, entry: Entry, headers: dict[int, Part10Header]) -> Outcome:
        """C-STORE one entry on the slot's association (opening one if needed)."""
        header = headers.get(entry.entry_id)
        if header is None:  # pragma: no cover - recorded in _send_batch already
            return Retry("no header")
        down = await self._ensure_association(slot, headers)
        if down is not None:
            return down
        association = slot.association
        assert association is not None
        path = entry.path
        scratch: str | None = None
        if association.context_for(header.sop_class_uid, header.transfer_syntax_uid) is None:
            target = self._fallback_syntax(association, header)
            if target is None:
                slot.refused.add((header.sop_class_uid, header.transfer_syntax_uid))
                return classify_error(
                    NoPresentationContext(
                        f"no accepted presentation context for {header.sop_class_uid} in {header.transfer_syntax_uid}"
                    ),
                    data_sent=False,
                )
            fd, scratch = tempfile.mkstemp(prefix="transcode-", suffix=".dcm", dir=self.scratch_dir)
            os.close(fd)
            try:
                await self._file(transcode, entry.path, scratch, target)
            except TranscodeError as e:
                os.unlink(scratch)
                return DeadLetter(f"cannot convert to {target}: {e}")
            path = scratch
        slot.sent += 1
        slot.last_used = self.clock.seconds()
        try:
            result = await Deferred.fromCoroutine(association.store(path))
        except Exception as e:
            if isinstance(e, AssociationAborted) or not association.is_open:
                # Never reuse an association that failed mid-send (HARDENING F05, fo-dicom #1359).
                slot.association = None
            return classify_error(e, data_sent=_data_went_out(e))
        finally:
            slot.last_used = self.clock.seconds()
            if scratch is not None and os.path.exists(scratch):
                os.unlink(scratch)
        outcome = classify_status(result.status, entry.attempts + 1, self.config.retry)
        if result.error_comment and not isinstance(outcome, Delivered):
            if isinstance(outcome, Retry):
                outcome = Retry(f"{outcome.reason}: {result.error_comment}", outcome.ambiguous)
            elif isinstance(outcome, DeadLetter):
                outcome = DeadLetter(f"{outcome.reason}: {result.error_comment}")
        if slot.sent >= self.batch_size:
            await self._close_association(slot)
        return outcome

    def _fallback_syntax(self, association: ClientAssociation, header: Part10Header) -> str | None:
        """An accepted native syntax the instance can be converted to, preferring Explicit VR LE."""
        if header.transfer_syntax_uid not in NATIVE_SYNTAXES:
            return None
        accepted = {
            c.transfer_syntax for c in association.contexts.values() if c.abstract_syntax == header.sop_class_uid
        }
        for ts in (EXPLICIT_VR_LE, IMPLICIT_VR_LE):
            if ts in accepted:
                return ts
        return None

    async def _close_association(self, slot: _Slot) -> None:
        """Release the slot's association (abort if the peer does not answer within the ACSE timeout)."""
        association, slot.association = slot.association, None
        slot.proposed = frozenset()
        slot.sent = 0
        if association is not None and association.is_open:
            await self._release(association)

    async def _release(self, association: ClientAssociation) -> None:
        timeout = self.config.acse_timeout if isinstance(self.config, DicomDestination) else 30.0
        released = association.release()
        timer = self.clock.callLater(timeout, association.abort)
        try:
            await released
        except Exception:
            pass
        finally:
            if timer.active():
                timer.cancel()
