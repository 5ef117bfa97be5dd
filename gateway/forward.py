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

1. in **one** journal transaction (:meth:`~gateway.queue.interfaces.IQueueStore.settle`),
   record the deliveries of its last batch and lease up to ``batch_size``
   due entries; none -> sleep until :meth:`DestinationWorker.poke` (the
   receive side calls it after each enqueue), until the next due time (the
   same call returns it), or for at most ``poll_interval`` (the CLI changes
   the store from another process: pauses, operator retries), whichever
   comes first;
2. hand the batch to the destination's :class:`~gateway.send.Sender`
   (:mod:`gateway.send.dicom` for a DICOM AE, :mod:`gateway.send.folder`
   for a folder; :mod:`gateway.send.registry` says which), which yields each
   entry's outcome (:mod:`gateway.queue.outcome`) as it is known;
3. record each outcome: a delivery is kept on the slot (written in step 1
   of the next turn, or on its own once
   :data:`~gateway.queue.interfaces.UNRECORDED_DELIVERIES` gather, before a
   wait for the circuit and at stop); ``retry`` after a backoff or
   ``dead_letter`` with its kind, each in its own transaction at once (they
   are rare). A per-instance outcome never blocks the entries behind it;
4. if the batch emptied the queue while instances stream in (some arrived
   during the batch, or a poke woke the slot within ``linger`` of its last
   batch), wait up to ``linger`` seconds for ``min_batch`` arrivals, so the
   next lease takes a batch, not the one instance that came meanwhile.

Journal writes and the durability each needs (issue 13)
-------------------------------------------------------
The intake's commit is the custody promise and waits for the journal's one
write lock (SQLite WAL: one writer), so the forwarder writes as seldom as it
safely can: about one transaction per batch, not four per instance.

* **Lease** (``settle``): durable before the first send, because it is what
  keeps another slot, another process or a restarted gateway from sending
  the same entry at the same time, and what ``recover`` reads after a crash
  to know what may have been on the wire.
* **Delivery** (``settle``, batched): need not be durable before the next
  send. A delivery lost in a crash leaves its entry LEASED; ``recover``
  returns it to the queue noted as in flight
  (:data:`~gateway.queue.interfaces.RECOVERED_IN_FLIGHT`, for the lowest
  ``UNRECORDED_DELIVERIES + 1`` entries of each lease) and it is sent
  again, counted as a redelivery: at-least-once, what HARDENING F06/F13
  already accept for the send in flight. It must be durable before the
  entry's file can go (retention reads DELIVERED rows only) and before a
  delivery is announced (events, metrics, logs are emitted after the
  write), and it is never lost in normal operation: a stop writes it, a
  refused write keeps it on the slot and nothing new is leased until the
  journal takes it (HARDENING F15). An entry delivered stays LEASED in the
  journal until then, and ``lease`` takes only QUEUED entries: it is never
  sent twice while the gateway runs.
* **Retry, dead letter, release**: written at once, each its own
  transaction. A lost retry or release costs only a re-send, but a dead
  letter must not be sent again, and all three are rare: batching them
  would gain nothing.
* **Copies an archive will commit** (issue 15, ``storage_commitment: true``
  only): before ``settle`` writes a batch's deliveries, one
  :meth:`~gateway.queue.commitments.ICommitmentJournal.note_copies` notes
  each delivered copy with the UIDs it was sent under, for
  :mod:`gateway.commitment.archive` to ask the archive about. It follows the
  delivery's path: refused, the deliveries stay on the slot and the turn is
  retried.
* **Idle turns** write nothing: ``settle`` with nothing to record looks for
  due entries with a read first, and returns the next due time with its
  answer (no separate ``next_due`` call).

A destination-wide fault (:class:`~gateway.queue.outcome.DestinationDown`)
puts the entry being tried back without counting an attempt and releases
the rest of the batch unchanged, and goes to the destination's
:class:`~gateway.circuit.Circuit`: after ``circuit.failures`` consecutive
such faults it opens, no slot leases, and the sender's probe (C-ECHO for a
DICOM AE; "the folder exists and is writable" for a folder) runs at backoff
intervals, at the maximum interval straight away after a permanent
rejection. Probes are not attempts. The first successful probe closes the
circuit and the slots resume. Nothing is dead-lettered for a
destination-wide fault (HARDENING decision 9). The circuit, its listener
and its record shared with the other nodes are the worker's
:class:`~gateway.forward_circuit.SharedCircuit`.

A send whose outcome is unknown (the association ended after the data went
out, or the DIMSE timeout fired) is retried with ``ambiguous: `` at the
start of its recorded error (:func:`gateway.queue.policy.retry_text`); when
an entry whose history holds such an attempt is delivered, the worker emits
:class:`~gateway.events.Redelivered` as well: the destination may now hold two copies
(at-least-once, HARDENING F06, F07). Because this is read from the journal,
it holds across restarts too.

Several nodes, one queue (issue 14)
-----------------------------------
The store may be shared by several gateway processes (PostgreSQL). The
worker's standing in that cluster is its :class:`~gateway.membership.Membership`
(see its theory of operation): a heartbeat renews the leases the slots hold
and their claims on the destination's association slots, works out this
node's fair share of the slots, follows the circuit another node recorded,
and keeps the drain. The loop asks it, at each turn, whether the slot holds
its claim (else: close the association, poll), whether to give the slot up
(beyond the share, or idle with node-local spools) and whether to drain,
and, before each entry goes out, whether the slot's leases still run. A
write refused because another node took the lease over
(:class:`~gateway.queue.interfaces.LeaseLost`, ``Settled.lost``) drops this
node's outcome and the slot carries on.

When the store is unavailable (:class:`~gateway.queue.interfaces.StoreUnavailable`,
PostgreSQL down), the slots take the path of a full disk (HARDENING F15):
sends in flight finish, their outcomes stay on the slot and are written
when the store answers again, nothing new is leased meanwhile. A renewal
that fails is logged and tried at the next beat; a lease that expires
while the store is away may be taken over, and is then fenced (the
membership's theory of operation).

Every store call goes through ``store_runner`` (one thread in production);
file work (reading headers, transcoding, folder writes) goes through
``file_runner``, lent to the sender. Times stored in the journal come from ``wall``; delays are
scheduled on ``clock`` (the slots' sleeps and pokes: :class:`~gateway.forward_waits.Waits`).
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gateway.associate import ClientAssociation
from gateway.blocking import IBlockingRunner
from gateway import events
from gateway.config.schema import Destination, DicomDestination
from gateway.forward_circuit import SharedCircuit
from gateway.forward_types import (
    ForwardObserver,
    JournalRefused,
    Prepare,
    PrepareError,
    WorkerStatus,
    run_journal,
    run_store,
)
from gateway.forward_waits import Waits
from gateway.membership import Membership, SlotStanding, WorkerSide
from gateway.queue.commitments import ICommitmentJournal
from gateway.queue.interfaces import UNRECORDED_DELIVERIES, Entry, IQueueStore, LeaseLost, Settled
from gateway.queue.outcome import DeadLetter, DeadLetterKind, Delivered, DestinationDown, Outcome, Retry
from gateway.queue.policy import AMBIGUOUS_PREFIX, backoff, give_up, had_ambiguous_attempt, retry_text
from gateway.send import SendContext
from gateway.send.dicom import Proposals, connect_dicom, proposals_for
from gateway.send.registry import sender_for

__all__ = [
    "ForwardObserver",
    "WorkerStatus",
    "DestinationWorker",
    "Proposals",
    "connect_dicom",
    "proposals_for",
    "AMBIGUOUS_PREFIX",
    "JournalRefused",
    "PrepareError",
]

_T = TypeVar("_T")

@dataclass
class _Slot:
    """One slot's mutable state (its association, if any, is the sender's)."""

    index: int
    #: The slot's standing in the cluster: its claim, lease end, idleness (the membership's).
    standing: SlotStanding
    leased: list[Entry] = field(default_factory=list)
    done: "Deferred[None] | None" = None
    #: Outcomes the journal refused (ENOSPC, I/O error), recorded again before
    #: the slot leases more, and leases it could not give back (HARDENING F15).
    unrecorded: list[tuple[Entry, Outcome, float]] = field(default_factory=list)
    unreleased: dict[int, int] = field(default_factory=dict)
    #: The journal's last refusal on this slot's turn, empty once a turn succeeds.
    journal_error: str = ""
    #: Deliveries not yet written to the journal (at most UNRECORDED_DELIVERIES),
    #: each with the send's duration: written with the slot's next lease, or on
    #: their own when that many gather.
    delivered: list[tuple[Entry, Delivered, float]] = field(default_factory=list)
    #: The worker's arrival count when this slot last leased.
    arrivals: int = 0
    #: When the slot's last batch ended (``clock`` time), ``None`` before the first.
    batch_ended: float | None = None
    #: Whether instances are streaming in: arrivals met the slot's last batch,
    #: or a poke woke it within ``linger`` of that batch's end.
    streaming: bool = False
    #: (entry id, generation) of leases found lost while the slot's batch was
    #: being sent: their outcomes are dropped. Cleared at the end of the batch.
    lost: set[tuple[int, int]] = field(default_factory=set)
    #: Entries were dropped from ``leased`` while the sender had the batch:
    #: the sender is restarted with what is left.
    batch_changed: bool = False
    #: Draining: the slot has written its deliveries, released its claim and waits.
    drained: bool = False


#: A difference between wall-clock and monotonic progress at least this large
#: (seconds) between two turns is a step of the wall clock, not drift.
WALL_CLOCK_STEP = 30.0


class DestinationWorker(Service):
    """Forwards one destination's queue (see the module docstring).

    :param config: the destination; its sender comes from :func:`gateway.send.registry.sender_for`.
    :param store: the queue journal.
    :param store_runner: runs every store call (one thread in production).
    :param file_runner: runs file work: header reads, transcoding, folder writes.
    :param clock: schedules waits and timeouts.
    :param connect: opens an association, ``connect(destination, proposals)``
        (DICOM destinations); the default uses :func:`connect_dicom` with ``reactor``.
    :param rand: floats in [0, 1) for the backoff jitter.
    :param observer: receives the worker's :mod:`gateway.events` (nobody by default).
    :param wall: wall-clock time for the journal (``time.time``).
    :param monotonic: a clock no one can set (``time.monotonic``), to notice steps of ``wall``.
    :param reactor: the reactor the sender connects with.
    :param grace: seconds :meth:`stopService` lets in-flight sends finish.
    :param poll_interval: the longest idle sleep (the CLI changes the store from outside).
    :param scratch_dir: where transcoded copies are written (the system's temporary folder by default).
    :param linger: the longest a slot that drained its queue while instances
        kept arriving waits for ``min_batch`` arrivals before its next lease.
    :param min_batch: arrivals (pokes) that end such a wait early.
    :param lease_seconds: how long a lease (and a slot's claim) lasts unless
        renewed (default: the sender's ``lease_seconds``; the service passes
        the configured ``cluster.lease``).
    :param heartbeat_seconds: how often the heartbeat renews both and reads
        the shared circuit and the live nodes (the service passes
        ``cluster.heartbeat``; default: a third of the lease).
    """

    log = Logger(namespace="gateway.forward")

    def __init__(
        self,
        config: Destination,
        store: IQueueStore,
        store_runner: IBlockingRunner,
        file_runner: IBlockingRunner,
        clock: IReactorTime,
        connect: Callable[[DicomDestination, Proposals], "Deferred[ClientAssociation]"] | None = None,
        rand: Callable[[], float] = random.random,
        observer: events.IGatewayObserver = events.NULL_OBSERVER,
        wall: Callable[[], float] = time.time,
        reactor: Any = None,
        grace: float = 10.0,
        poll_interval: float = 1.0,
        scratch_dir: str | None = None,
        prepare: Prepare | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        linger: float = 0.05,
        min_batch: int = 8,
        lease_seconds: float | None = None,
        heartbeat_seconds: float | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.store = store
        self.store_runner = store_runner
        self.file_runner = file_runner
        self.clock = clock
        self.rand = rand
        self.observer = observer
        self.wall = wall
        self.monotonic = monotonic
        self._clock_anchor: tuple[float, float] | None = None
        self.grace = grace
        self.poll_interval = poll_interval
        self.scratch_dir = scratch_dir
        self.prepare = prepare
        self.sender = sender_for(
            config,
            SendContext(file_runner, clock, reactor, connect, scratch_dir, reachable=self._success, observe=observer.observe),
        )
        self.batch_size = self.sender.batch_size
        self.lease_seconds = self.sender.lease_seconds if lease_seconds is None else lease_seconds
        self._stopping = False
        #: The slots' sleeps, woken by their timers, a stop, and pokes (arrivals).
        self._waits = Waits(clock, lambda: self._stopping)
        self.linger = linger
        self.min_batch = max(1, min(min_batch, self.batch_size))
        #: The destination's circuit, its listener and its record shared with the other nodes.
        self.shared_circuit = SharedCircuit(
            config, clock, self.sender.probe, self._backoff, observer, store, store_runner, wall, self._schedule_now
        )
        self.circuit = self.shared_circuit.circuit
        self._stopped: Deferred[None] | None = None
        #: The worker's standing in the cluster: its heartbeat, slot claims and share, drain (issue 14).
        self.membership = Membership(
            self.name,
            store,
            store_runner,
            clock,
            self.shared_circuit,
            self.sender.slots,
            self.lease_seconds,
            observer,
            heartbeat_seconds=heartbeat_seconds,
            worker=WorkerSide(
                schedule_now=self._schedule_now,
                stopping=lambda: self._stopping,
                held=self._held,
                busy=self._busy,
                drop_lost=self._drop_lost,
                wake_all=lambda: self._waits.wake(all_sleepers=True),
                all_drained=self._all_drained,
            ),
        )
        self._slots = [_Slot(k, standing) for k, standing in enumerate(self.membership.slots)]
        #: Where delivered copies are noted for the archive's Storage Commitment
        #: (issue 15): the store itself, for a destination with
        #: ``storage_commitment: true`` only (no call, no cost for the others).
        #: A store without the interface fails here, at start, not at the first delivery.
        self.commitments: ICommitmentJournal | None = None
        if isinstance(config, DicomDestination) and config.storage_commitment:
            self.commitments = ICommitmentJournal(store, None)
            if self.commitments is None:
                raise TypeError(
                    f"destination {config.name} has storage_commitment: true, "
                    f"but the queue store ({type(store).__name__}) keeps no commitment journal"
                )
        #: Called after a turn wrote deliveries whose copies were noted (the
        #: service sets the destination's archive committer's poke).
        self.on_noted: Callable[[], None] | None = None

    # -- service -------------------------------------------------------------------------

    def startService(self) -> None:
        """Start the heartbeat, then every slot.

        The first beat reads the circuit the store records (another node's,
        or an earlier worker's before a reload or restart): a recorded open
        circuit is adopted and probed, not overwritten with "closed".
        """
        Service.startService(self)
        self._stopping = False
        self.circuit.start()
        self.membership.start()
        for slot in self._slots:
            slot.done = Deferred.fromCoroutine(self._run_slot(slot))
            slot.done.addErrback(self._crashed, f"slot {slot.index}")

    def stopService(self) -> "Deferred[None]":
        """Stop leasing, let in-flight sends finish for ``grace`` seconds, then abort.

        Leased entries not yet sent are released, and so are the slots' claims
        (another node may take them at once); the heartbeat renews the leases
        of the sends in flight until every slot has stopped. The Deferred fires when
        every slot has stopped and recorded its last outcome.
        """
        Service.stopService(self)
        if self._stopped is not None:
            return self._stopped
        self._stopping = True
        self._waits.wake(all_sleepers=True)
        self.membership.stop()
        self.circuit.stop()
        # The probe holds no lease: it is not waited for (it ends at its own timeouts).
        waiting = [slot.done for slot in self._slots if slot.done is not None]
        timer = self.clock.callLater(self.grace, self._abort_all)

        def finished(_: object) -> None:
            if timer.active():
                timer.cancel()
            # (The heartbeat renewed the leases of the sends the grace let finish.)
            self.membership.stopped()

        self._stopped = DeferredList(waiting, consumeErrors=True).addCallback(finished)
        return self._stopped

    def _crashed(self, failure: Any, what: str) -> None:
        self.log.failure("forward {destination} {what} crashed", failure, destination=self.name, what=what)

    def _abort_all(self) -> None:
        """Grace period over: abort every open association (in-flight sends fail as ambiguous)."""
        self.sender.abort()

    def set_draining(self, flag: bool) -> "Deferred[None]":
        """Drain (``True``) or undrain (``False``) this node's side of the destination (issue 14).

        Draining: no slot leases new entries or claims a slot; batches in
        flight finish and their outcomes are written; then each slot writes
        its deliveries, releases its claim (another node may take it) and
        closes its association. Undraining resumes the slots.

        :param flag: drain or undrain.
        :returns: a Deferred that fires once every slot is drained (at once
            for an undrain, or when the worker stops).
        """
        return self.membership.set_draining(flag)

    @property
    def draining(self) -> bool:
        """Whether :meth:`set_draining` asked this worker to drain."""
        return self.membership.draining

    def _all_drained(self) -> bool:
        """Whether every slot is drained (or no slot runs)."""
        return all(slot.drained or slot.done is None or slot.done.called for slot in self._slots)

    def poke(self) -> None:
        """Wake idle slots: entries were enqueued (called by the receive side)."""
        self._waits.poke()

    def status(self) -> WorkerStatus:
        """The worker's state (circuit, failures, last error, associations)."""
        return WorkerStatus(
            destination=self.name,
            circuit="closed" if self.circuit.is_closed else "open",
            consecutive_failures=self.circuit.failures,
            last_error=self.circuit.last_error,
            active_associations=self.sender.connections(),
            journal_error=next((s.journal_error for s in self._slots if s.journal_error), ""),
            slots_held=self.membership.claims_held(),
            draining=self.membership.draining,
        )

    async def _store(self, f: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run a store method through the store runner."""
        return await run_store(self.store_runner, f, *args, **kwargs)

    async def _journal(self, f: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run a store method that writes the worker's bookkeeping (:func:`~gateway.forward_types.run_journal`)."""
        return await run_journal(self.store_runner, f, *args, **kwargs)

    async def _file(self, f: Callable[..., _T], *args: Any) -> _T:
        """Run file work through the file runner."""
        result: _T = await self.file_runner.run(f, *args)
        return result

    # -- what the membership needs of the slots (issue 14) ---------------------------------

    def _held(self, index: int) -> dict[int, int]:
        """Every entry slot ``index`` holds LEASED, with the generation it leased: entry id -> generation."""
        slot = self._slots[index]
        held: dict[int, int] = {}
        for entry in slot.leased:
            held[entry.entry_id] = entry.lease_generation
        for entry, _, _ in slot.delivered:
            held[entry.entry_id] = entry.lease_generation
        for entry, _, _ in slot.unrecorded:
            held[entry.entry_id] = entry.lease_generation
        held.update(slot.unreleased)
        return held

    def _busy(self, index: int) -> bool:
        """Whether slot ``index`` holds any entry (leased, delivered but not written, refused, not released)."""
        slot = self._slots[index]
        return bool(slot.leased or slot.delivered or slot.unrecorded or slot.unreleased)

    def _drop_lost(self, lost: dict[int, int], during: str) -> None:
        """Drop from the slots the entries whose lease (of that generation) was lost.

        An entry not yet sent is not sent; one on the wire finishes, and its
        outcome is dropped (it is in ``slot.lost``); a delivery not yet
        written, or an outcome the journal refused, is forgotten. Entries
        that left the slot meanwhile (their outcome was written) are not
        touched: the renewal saw the result of our own write.
        """

        def gone(entry: Entry) -> bool:
            return lost.get(entry.entry_id) == entry.lease_generation

        for slot in self._slots:
            dropped = [e for e in slot.leased if gone(e)]
            if dropped:
                slot.leased = [e for e in slot.leased if not gone(e)]
                slot.lost.update((e.entry_id, e.lease_generation) for e in dropped)
                slot.batch_changed = True
            dropped += [e for e, _, _ in slot.delivered if gone(e)]
            slot.delivered = [d for d in slot.delivered if not gone(d[0])]
            dropped += [e for e, _, _ in slot.unrecorded if gone(e)]
            slot.unrecorded = [u for u in slot.unrecorded if not gone(u[0])]
            for entry in dropped:
                self.membership.lease_lost(entry.entry_id, during)
            for entry_id, generation in list(slot.unreleased.items()):
                if lost.get(entry_id) == generation:
                    del slot.unreleased[entry_id]
                    self.membership.lease_lost(entry_id, during)

    # -- slot loop -----------------------------------------------------------------------

    async def _run_slot(self, slot: _Slot) -> None:
        while not self._stopping:
            try:
                await self._slot_step(slot)
            except Exception as e:
                # A failing store (ENOSPC, a locked database, PostgreSQL away) or
                # a bug: stop dequeuing for a while, never spin (HARDENING F15).
                if isinstance(e, JournalRefused):
                    slot.journal_error = str(e)
                self.log.failure("forward {destination} slot {slot} failed", destination=self.name, slot=slot.index)
                await self._waits.sleep(self.poll_interval, pokeable=False)
            else:
                slot.journal_error = ""
        if slot.delivered:
            # Stopping: write what was delivered, so it is not sent again after the restart.
            try:
                await self._settle(slot, 0)
            except JournalRefused:
                self.log.failure("forward {destination} slot {slot}: deliveries not written at stop (they will be re-sent)",
                                 destination=self.name, slot=slot.index)
        await self.membership.release_claim(slot.standing)
        await self.sender.close(slot.index)

    async def _slot_step(self, slot: _Slot) -> None:
        """One turn of a slot: wait for the circuit, hold its claim, record deliveries and lease, send or idle."""
        if slot.unrecorded or slot.unreleased:
            # Fail closed: nothing new is leased until the journal takes the
            # outcomes it refused (a delivered entry must become DELIVERED,
            # not be sent again after a lease that never expires).
            if slot.delivered:
                await self._settle(slot, 0)
            while slot.unrecorded:
                entry, outcome, started = slot.unrecorded.pop(0)
                await self._record(slot, entry, outcome, started)
            if slot.unreleased:
                await self._journal(self.store.release, list(slot.unreleased), generations=dict(slot.unreleased))
                slot.unreleased = {}
            self.log.info("forward {destination} slot {slot}: journal writable again", destination=self.name, slot=slot.index)
            return
        if self.membership.draining:
            await self._drain_slot(slot)
            return
        if not self.circuit.is_closed:
            # Deliveries are written before a wait of unknown length.
            if slot.delivered:
                await self._settle(slot, 0)
            if not self._stopping:
                watcher = self.membership.when_draining()
                try:
                    await self._first(self.circuit.when_closed(), watcher)
                finally:
                    self.membership.forget(watcher)
            return
        if slot.standing.surrender:
            # More slots than this node's share: this one goes to another node.
            slot.standing.surrender = False
            if slot.delivered:
                await self._settle(slot, 0)
            await self.membership.release_claim(slot.standing)
            await self.sender.close(slot.index)
            self.log.info(
                "forward {destination}: slot {slot} given up for another node (this node's share is {share})",
                destination=self.name,
                slot=slot.index,
                share=self.membership.share,
            )
            if not self._stopping and not self.membership.draining:
                await self._waits.sleep(self.poll_interval, pokeable=False)
            return
        if slot.standing.yielded and not self.membership.holds_claim(slot.standing, self._schedule_now()):
            # Given up for idleness (node-local spools): claim again once this
            # node receives something, or a heartbeat later (a retry come due).
            slot.standing.yielded = False
            if not self._stopping and not self.membership.draining:
                await self._waits.sleep(self.membership.heartbeat_interval, pokeable=True)
            return
        await self._follow_wall_clock()
        if not await self.membership.hold(slot.standing):
            # Another node holds this slot (cluster-wide max_associations), or
            # this node holds its share: no association of ours for it; look
            # again at the next poll. Not pokeable: the holder sends what this
            # node receives (it polls the store), and a claim attempt per
            # received instance would load the store for nothing.
            if slot.delivered:
                await self._settle(slot, 0)
            await self.membership.release_claim(slot.standing)  # (one that ran out while this node held its share elsewhere)
            await self.sender.close(slot.index)
            if not self._stopping and not self.membership.draining:
                await self._waits.sleep(self.poll_interval, pokeable=False)
            return
        # The deliveries of the last batch and the next lease: one transaction.
        # (A refused write leaves both undone: the deliveries stay on the slot,
        # still LEASED in the journal, and are written at the next turn.)
        arrivals, slot.arrivals = slot.arrivals, self._waits.arrivals
        settled = await self._settle(slot, self.batch_size)
        if not settled.leased:
            slot.streaming = False
            if slot.standing.idle_since is None:
                slot.standing.idle_since = self._schedule_now()
            await self._idle(slot, settled.next_due)
            return
        slot.standing.idle_since = None
        if not slot.streaming and slot.batch_ended is not None:
            # Woken from idle soon after its last batch: a stream, not a lone instance.
            slot.streaming = self._waits.arrivals > arrivals and self.clock.seconds() - slot.batch_ended < self.linger
        slot.leased = list(settled.leased)
        try:
            await self._send_batch(slot)
        finally:
            slot.lost = set()
            slot.batch_changed = False
            if slot.leased:
                # Whatever is still leased here was never tried (stop, circuit, claim, error).
                rest = {e.entry_id: e.lease_generation for e in slot.leased}
                slot.leased = []
                try:
                    await self._journal(self.store.release, list(rest), generations=rest)
                except JournalRefused:
                    slot.unreleased.update(rest)
                    raise
        slot.batch_ended = self.clock.seconds()
        if self._waits.arrivals > slot.arrivals:
            slot.streaming = True
        if len(settled.leased) < self.batch_size:
            await self._linger(slot)

    async def _drain_slot(self, slot: _Slot) -> None:
        """Draining: write the slot's deliveries, give up its claim and association, wait for undrain or stop."""
        if slot.delivered:
            await self._settle(slot, 0)
        await self.membership.release_claim(slot.standing)
        await self.sender.close(slot.index)
        if self._stopping or not self.membership.draining:
            return
        slot.drained = True
        self.membership.check_drained()
        try:
            await self.membership.when_undrained()
        finally:
            slot.drained = False

    async def _first(self, *waits: "Deferred[None]") -> None:
        """Wait until one of ``waits`` fires (the others may fire later, unheard)."""
        await DeferredList(list(waits), fireOnOneCallback=True, consumeErrors=True)

    async def _settle(self, slot: _Slot, limit: int) -> Settled:
        """Write the slot's deliveries and lease up to ``limit`` entries, in one journal transaction.

        Once written, each delivery is logged and told to the observer (so an
        event never announces a delivery the journal may lose). Refused, the
        deliveries stay on the slot and :class:`JournalRefused` is raised.
        Each delivery is fenced by the generation leased: one whose lease
        another node took over is dropped (``Settled.lost``), not announced.
        """
        delivered, slot.delivered = slot.delivered, []
        now = self._schedule_now()
        try:
            if self.commitments is not None and delivered:
                # Issue 15: the archive will be asked (N-ACTION) about the copy
                # it received, so its UIDs are those of the copy as sent (a
                # route may remap them: the entry here is the prepared copy
                # the sender yielded, not the received instance). Noted before
                # the deliveries are written: a delivery on record always has
                # its copy noted. Refused, nothing of the turn is written
                # (the deliveries stay on the slot, as below); noted and the
                # settle refused, the note is redone at the next turn
                # (note_copies keeps a noted copy's state).
                await self._journal(
                    self.commitments.note_copies,
                    [
                        (entry.entry_id, self.name, entry.instance.sop_class_uid, entry.instance.sop_instance_uid)
                        for entry, _, _ in delivered
                    ],
                    now,
                )
            settled: Settled = await self._journal(
                self.store.settle,
                self.name,
                [(entry.entry_id, outcome.warning) for entry, outcome, _ in delivered],
                now,
                limit,
                self.membership.lease_seconds_of(slot.standing),
                shard=(slot.index, len(self._slots)),
                generations={entry.entry_id: entry.lease_generation for entry, _, _ in delivered},
            )
        except JournalRefused:
            slot.delivered = delivered + slot.delivered
            raise
        if settled.leased:
            self.membership.leased(slot.standing, now)
        if self.commitments is not None and delivered and self.on_noted is not None:
            self.on_noted()
        lost = set(settled.lost)
        for entry, outcome, duration in delivered:
            if entry.entry_id in lost:
                self.membership.lease_lost(entry.entry_id, "recording its delivery")
            else:
                self._announce_delivery(entry, outcome, duration)
        return settled

    async def _linger(self, slot: _Slot) -> None:
        """The batch emptied the queue while instances stream in: let a batch's worth gather.

        Leasing at once would take the one or two instances that arrived
        while the batch was sent (or none, when the destination is faster
        than the modality), one journal transaction each; waiting up to
        ``linger`` seconds for ``min_batch`` arrivals since the lease lets
        the next turn record this batch's deliveries and lease the next
        batch together (issue 13: the forwarder's commits per instance). A
        lone instance (no stream) is not held: its delivery is written at
        once, and the next one is leased as soon as it is poked.
        """
        if self._stopping or not slot.streaming or self._waits.arrivals - slot.arrivals >= self.min_batch:
            return
        await self._waits.sleep(self.linger, pokeable=True, until_arrivals=slot.arrivals + self.min_batch)

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
        # What this node knows of its claims and leases moves to the new
        # timeline too (the store's own records are renewed in it).
        self.membership.shift(step)
        moved = await self._journal(self.store.shift_schedule, self.name, wall - step, step)
        self.log.warn(
            "forward {destination}: wall clock stepped by {step:+.0f}s, {moved} queued entries moved with it",
            destination=self.name,
            step=step,
            moved=moved,
        )

    async def _idle(self, slot: _Slot, due: float | None) -> None:
        """Nothing due: let the sender release what is idle when its time comes, and sleep.

        :param due: the destination's earliest due time, as the lease found it.
        """
        now = self.clock.seconds()
        delay = self.poll_interval
        idle_left = await self.sender.idle(slot.index, now)
        if idle_left is not None:
            delay = min(delay, idle_left)
        if due is not None and due > self._schedule_now():
            # An entry comes due before the next poll. (One already due that
            # lease did not return is paused or another slot's: poll.)
            delay = min(delay, due - self._schedule_now())
        if not self._stopping:
            await self._waits.sleep(delay, pokeable=True)

    async def _send_batch(self, slot: _Slot) -> None:
        """Hand the slot's leased entries to the sender, recording each outcome as it comes.

        Before each entry goes out the slot checks it may still send (not
        stopping, circuit closed, claim and leases live: see
        :meth:`_may_go_on`). When leases were found lost meanwhile, the
        sender is given what is left of the batch (the lost entries are not
        sent); the association is the slot's and is kept.
        """
        if self.prepare is not None:
            await self._prepare_all(slot)
        while slot.leased and await self._may_go_on(slot):
            slot.batch_changed = False
            sending = self.sender.send(slot.index, list(slot.leased))
            finished = False
            try:
                while True:
                    started = self.clock.seconds()
                    try:
                        entry, outcome = await sending.__anext__()
                    except StopAsyncIteration:
                        finished = True
                        break
                    await self._record(slot, entry, outcome, started)
                    if isinstance(outcome, DestinationDown) or slot.batch_changed or not await self._may_go_on(slot):
                        break
            finally:
                await sending.aclose()
            if finished or not slot.batch_changed:
                break

    async def _may_go_on(self, slot: _Slot) -> bool:
        """Whether the slot may send the next entry of its batch.

        Not when stopping, when the circuit is open, when the slot's claim
        ran out or was taken, or when its leases ran out. A renewal overdue
        (the heartbeat did not run: a paused process) is made first, so
        entries another node took over meanwhile are dropped, not sent.
        """
        if not slot.leased or self._stopping or not self.circuit.is_closed:
            return False
        live = await self.membership.still_holds(slot.standing)
        return bool(slot.leased) and live

    async def _prepare_all(self, slot: _Slot) -> None:
        """Replace each leased entry by its route's copy (morphing after the ack, HARDENING decision 4)."""
        assert self.prepare is not None
        prepared: list[Entry] = []
        for entry in list(slot.leased):
            try:
                copy = await self.prepare(entry)
                if copy.path != entry.path:
                    # A morphed copy has its own file meta: where its data set
                    # starts is not the received file's (the sender reads it).
                    copy = dataclasses.replace(copy, instance=dataclasses.replace(copy.instance, dataset_offset=0))
                prepared.append(copy)
            except PrepareError as e:
                await self._record(slot, entry, DeadLetter(f"morph: {e}", DeadLetterKind.MORPH), self.clock.seconds())
            except Exception as e:  # a bug or an I/O error: try again later, never send unmorphed
                self.log.failure("preparing {entry_id} for {destination} failed", entry_id=entry.entry_id, destination=self.name)
                await self._record(slot, entry, Retry(f"could not prepare the copy: {e}"), self.clock.seconds())
        # (Leases found lost while preparing stay dropped.)
        slot.leased = [e for e in prepared if (e.entry_id, e.lease_generation) not in slot.lost]

    async def _record(self, slot: _Slot, entry: Entry, outcome: Outcome, started: float) -> None:
        """Write one entry's outcome to the journal and tell the observer.

        If the journal refuses it, the outcome is kept on the slot and
        written again before the slot leases anything else (HARDENING F15).
        The outcome of an entry whose lease was found lost while it was on
        the wire is dropped (the node that took it over records its own).
        """
        slot.leased = [e for e in slot.leased if e.entry_id != entry.entry_id]
        if (entry.entry_id, entry.lease_generation) in slot.lost:
            self.log.info(
                "forward {destination}: outcome of entry {entry_id} dropped (its lease was lost while it was sent)",
                destination=self.name,
                entry_id=entry.entry_id,
            )
            return
        try:
            await self._record_outcome(slot, entry, outcome, started)
        except LeaseLost:
            self.membership.lease_lost(entry.entry_id, "recording its outcome")
        except JournalRefused:
            if not isinstance(outcome, Delivered):
                # (A delivery whose write was refused is still on slot.delivered.)
                slot.unrecorded.append((entry, outcome, started))
            raise

    async def _record_outcome(self, slot: _Slot, entry: Entry, outcome: Outcome, started: float) -> None:
        """The body of :meth:`_record`."""
        now = self._schedule_now()
        fields = self._log_fields(entry)
        if isinstance(outcome, Delivered):
            # Kept on the slot and written with the next lease, or on its own
            # once UNRECORDED_DELIVERIES gather (see the module docstring).
            self._success()
            slot.delivered.append((entry, outcome, self.clock.seconds() - started))
            if len(slot.delivered) >= UNRECORDED_DELIVERIES:
                await self._settle(slot, 0)
        elif isinstance(outcome, Retry):
            reason = retry_text(outcome)
            gave_up = give_up(entry, now, self.config.retry)
            if gave_up is not None:
                await self._dead_letter(entry, DeadLetter(f"{reason}; {gave_up}", DeadLetterKind.GAVE_UP), now, fields)
                return
            # A Retry-After the destination sent is a floor, never shortened by the backoff (issue 17).
            delay = max(self._backoff(entry.attempts), outcome.after)
            await self._journal(self.store.retry, entry.entry_id, now + delay, reason, now, generation=entry.lease_generation)
            self.log.info("retrying {sop_instance_uid} to {destination} in {delay:.1f}s: {reason}", delay=delay, reason=reason, **fields)
            self.observer.observe(events.Retried(entry, reason))
        elif isinstance(outcome, DeadLetter):
            await self._dead_letter(entry, outcome, now, fields)
        else:
            # Destination-wide: this entry was not really tried, the rest go back unchanged.
            try:
                await self._journal(
                    self.store.retry, entry.entry_id, now, outcome.reason, now, counted=False, generation=entry.lease_generation
                )
            except LeaseLost:
                self.membership.lease_lost(entry.entry_id, "putting it back")
            rest = {e.entry_id: e.lease_generation for e in slot.leased}
            slot.leased = []
            if rest:
                try:
                    await self._journal(self.store.release, list(rest), generations=rest)
                except JournalRefused:
                    slot.unreleased.update(rest)
                    raise
            await self._destination_fault(outcome)

    def _log_fields(self, entry: Entry) -> dict[str, Any]:
        """The fields of an entry's outcome log lines (destination, ids, attempt)."""
        return dict(
            destination=self.name,
            entry_id=entry.entry_id,
            correlation_id=entry.instance.correlation_id,
            sop_instance_uid=entry.instance.sop_instance_uid,
            attempt=entry.attempts + 1,
        )

    def _announce_delivery(self, entry: Entry, outcome: Delivered, duration: float) -> None:
        """Log a delivery the journal has just recorded, and tell the observer."""
        fields = self._log_fields(entry)
        if outcome.warning:
            # (not "warning": a log event with that key looks like a Python warning to legacy observers)
            self.log.warn("delivered {sop_instance_uid} to {destination} with {status_warning}", status_warning=outcome.warning, **fields)
        else:
            self.log.debug("delivered {sop_instance_uid} to {destination}", **fields)
        self.observer.observe(events.Delivered(entry, duration, outcome.warning))
        if had_ambiguous_attempt(entry):
            self.observer.observe(events.Redelivered(entry))

    async def _dead_letter(self, entry: Entry, outcome: DeadLetter, now: float, fields: dict[str, Any]) -> None:
        await self._journal(self.store.dead_letter, entry.entry_id, outcome.reason, now, generation=entry.lease_generation)
        self.log.warn("dead-lettered {sop_instance_uid} for {destination}: {reason}", reason=outcome.reason, **fields)
        self.observer.observe(events.DeadLettered(entry, outcome.kind, outcome.reason))

    # -- destination-wide faults (the circuit and its listener are gateway.forward_circuit's) ---

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
        """Count a destination-wide fault; below the circuit's threshold, back off."""
        self.observer.observe(
            events.DestinationFault(self.name, outcome.reason, outcome.permanent, outcome.tls_failure)
        )
        self.log.warn(
            "destination {destination} failed ({count} in a row): {reason}",
            destination=self.name,
            count=self.circuit.failures + 1,
            reason=outcome.reason,
        )
        if self.circuit.fault(outcome):
            return
        # Below the threshold: wait before this slot tries the destination again
        # (not before a Retry-After the destination sent, issue 17).
        await self._waits.sleep(max(self._backoff(self.circuit.failures - 1), outcome.after), pokeable=False)

    def _success(self) -> None:
        """The destination answered (a delivery, an association opened): tell the circuit, note when."""
        self.shared_circuit.success()
