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
destination-wide fault (HARDENING decision 9).

A send whose outcome is unknown (the association ended after the data went
out, or the DIMSE timeout fired) is retried with ``ambiguous: `` at the
start of its recorded error (:func:`gateway.queue.policy.retry_text`); when
an entry whose history holds such an attempt is delivered, the worker emits
:class:`~gateway.events.Redelivered` as well: the destination may now hold two copies
(at-least-once, HARDENING F06, F07). Because this is read from the journal,
it holds across restarts too.

Several nodes, one queue (issue 14)
-----------------------------------
The store may be shared by several gateway processes (PostgreSQL), each a
*node* (``store.node``), each running a worker per destination. What was
per destination stays per destination, across the cluster:

* **Association slots.** Slot ``k`` sends only while this node holds the
  store's claim on slot ``k`` of the destination
  (:meth:`~gateway.queue.interfaces.IQueueStore.claim_slot`, for
  ``lease_seconds``): at most ``max_associations`` holders in the whole
  cluster, so an archive that takes 4 associations gets 4 from the
  cluster, not 4 per node. A slot claims at its turn when it holds no live
  claim, and the heartbeat renews the claims held (a claim is a journal
  write: renewing it at every turn would undo issue 13's one write per
  batch). A slot without its claim closes its association and polls
  (``poll_interval``, not woken by pokes: the holder sends what this node
  receives); a slot whose claim is found taken
  mid-batch sends nothing more of the batch. Since slot ``k`` always
  leases shard ``k``, a study still travels through one slot at a time,
  whichever node received its instances, and arrives in order. Claims are
  released at stop and when draining.
* **Shares.** Each node claims at most its share of the slots: ``slots //
  live nodes``, one more for the first ``slots mod live nodes`` nodes by
  name (live: a heartbeat in the store within ``lease_seconds``, not
  draining; this node always counts), read at every heartbeat. A node
  added while the cluster runs thus gets slots, and work, from the others:
  a slot held beyond the share is given up at its next turn, between
  batches, after its deliveries are written (a study never has two slots
  at once). When a node dies (``kill -9``), its leases and claims run out
  within ``lease_seconds``, the survivors' shares grow at their next
  heartbeat and their slots claim at their next poll: its backlog flows
  again within ``lease_seconds * 4 / 3 + poll_interval``. With node-local spools (the store's
  ``local_only``) a slot idle for a heartbeat interval also gives its claim
  up, since only the node that received an instance can send it; it claims
  again when poked or a heartbeat later. An instance received by a node
  that holds no slot of its destination is sent by a node that does, at
  that node's next poll (``poll_interval``).
* **Leases and their heartbeat.** Every ``lease_seconds / 3`` the worker
  renews the leases of every entry it holds (being sent, delivered but not
  yet written, refused by the journal: all still LEASED), and the claims of
  its slots. A slot about to send while its renewal is overdue (the
  heartbeat did not run: the process was paused) renews first, and sends
  nothing whose lease has run out. A lease that expires anyway (a paused
  or partitioned node) is taken back by another node's lease.
* **Fencing.** Every write that ends a lease names the generation leased
  (``settle``'s deliveries, ``retry``, ``dead_letter``, ``release``). When
  another node took the entry over after our lease expired, the write is
  refused (:class:`~gateway.queue.interfaces.LeaseLost`, ``Settled.lost``)
  or the renewal reports it: this node's outcome is dropped (logged as a
  warning naming entry, destination and node, counted in
  ``leases_lost_total``, :class:`~gateway.events.LeaseLost`), the other
  node's stands, and the slot carries on (never a journal refusal). Such
  an entry may have reached the destination twice: at-least-once, as
  after a crash.
* **The circuit.** The circuit a node opens or closes is written to the
  store (``set_circuit``); every heartbeat reads it back. Recorded open
  since later than this node's last success while closed here: the
  circuit opens here too (no local faults needed) and probes as usual.
  Recorded closed since later than it opened here: it closes here and the
  slots wake. So one node's probe result is every node's. A new worker
  starts from the recorded state (a reload no longer writes "closed" over
  another node's open circuit); its first probe comes after
  ``retry.initial_delay``.
* **Drain** (:meth:`DestinationWorker.set_draining`): no new lease, no
  new claim; batches in flight finish and are written; then each slot
  writes its deliveries, releases its claim and closes its association.
  Undrained, the slots go on.
* **Store unavailable** (:class:`~gateway.queue.interfaces.StoreUnavailable`,
  PostgreSQL down): the same path as a full disk (HARDENING F15): sends in
  flight finish, their outcomes stay on the slot and are written when the
  store answers again, nothing new is leased meanwhile. A renewal that
  fails is logged and tried at the next beat; a lease that expires while
  the store is away may be taken over, and is then fenced as above.

Every store call goes through ``store_runner`` (one thread in production);
file work (reading headers, transcoding, folder writes) goes through
``file_runner``, lent to the sender. Times stored in the journal come from ``wall``; delays are
scheduled on ``clock``.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from gateway.associate import ClientAssociation
from gateway.blocking import IBlockingRunner
from gateway.circuit import Circuit
from gateway import events
from gateway.config.schema import Destination, DicomDestination
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
    :ivar draining: :meth:`DestinationWorker.set_draining` asked the worker to drain.
    """

    destination: str
    circuit: str
    consecutive_failures: int
    last_error: str
    active_associations: int
    journal_error: str = ""
    slots_held: int = 0
    draining: bool = False


@dataclass
class _Slot:
    """One slot's mutable state (its association, if any, is the sender's)."""

    index: int
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
    #: Whether this node holds the store's claim on this slot (issue 14), and
    #: until when (``_schedule_now`` time) as far as this node knows.
    claimed: bool = False
    claim_until: float = 0.0
    #: Until when the slot's leases run (``_schedule_now`` time), as of its
    #: last lease or renewal.
    lease_until: float = 0.0
    #: (entry id, generation) of leases found lost while the slot's batch was
    #: being sent: their outcomes are dropped. Cleared at the end of the batch.
    lost: set[tuple[int, int]] = field(default_factory=set)
    #: Entries were dropped from ``leased`` while the sender had the batch:
    #: the sender is restarted with what is left.
    batch_changed: bool = False
    #: Draining: the slot has written its deliveries, released its claim and waits.
    drained: bool = False
    #: Since when (``_schedule_now`` time) the slot's leases found nothing; ``None`` while it has work.
    idle_since: float | None = None
    #: Node-local spools: the slot gave its claim up for idleness, and claims
    #: again when this node receives something (a poke) or a heartbeat later.
    yielded: bool = False
    #: This node holds more slots than its share: give this one up at the next turn.
    surrender: bool = False


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


#: A difference between wall-clock and monotonic progress at least this large
#: (seconds) between two turns is a step of the wall clock, not drift.
WALL_CLOCK_STEP = 30.0


def _says_draining(detail: str) -> bool:
    """Whether a node's heartbeat detail (JSON: address, version, draining) says it is draining."""
    try:
        said = json.loads(detail)
    except ValueError:
        return False
    return isinstance(said, dict) and bool(said.get("draining"))


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
        renewed; the heartbeat renews both every third of it (default: the
        sender's ``lease_seconds``; the service passes the configured lease).
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
            SendContext(file_runner, clock, reactor, connect, scratch_dir, reachable=self._success),
        )
        self.batch_size = self.sender.batch_size
        self.lease_seconds = self.sender.lease_seconds if lease_seconds is None else lease_seconds
        #: How often leases and slot claims are renewed and the shared circuit is read (issue 14).
        self.heartbeat_interval = self.lease_seconds / 3
        #: Node-local spools (``spool.shared: false``): this node can send only
        #: what it received, so an idle slot gives its claim up for the others.
        self.local_only = bool(getattr(store, "local_only", False))
        #: The most slots this node claims: all of them alone, else its share
        #: among the live nodes that are not draining (see :meth:`_follow_nodes`).
        self.share = self.sender.slots
        self._slots = [_Slot(k) for k in range(self.sender.slots)]
        self._stopping = False
        self._sleepers: list[_Sleeper] = []
        self.linger = linger
        self.min_batch = max(1, min(min_batch, self.batch_size))
        #: Pokes so far: the receive side's enqueues (a slot's linger counts them).
        self._arrivals = 0
        self.circuit = Circuit(
            clock, config.circuit.failures, self.sender.probe, self._backoff, config.retry.max_delay, self
        )
        self._stopped: Deferred[None] | None = None
        self._heartbeat_call: IDelayedCall | None = None
        self._heartbeat_stopped = False
        #: Wall-clock time of the last sign of life of the destination (a
        #: delivery, an association opened), and of the circuit's last opening
        #: here: compared with the ``since`` of the store's record.
        self._last_success: float | None = None
        self._opened_at: float | None = None
        self._draining = False
        #: Fired when draining starts (a slot waiting for the circuit stops waiting).
        self._drain_watchers: list[Deferred[None]] = []
        #: Fired at undrain or stop (drained slots wait on them).
        self._undrain_waiters: list[Deferred[None]] = []
        #: Fired once every slot is drained (the callers of set_draining(True)).
        self._drained_waiters: list[Deferred[None]] = []

    # -- service -------------------------------------------------------------------------

    def startService(self) -> None:
        """Start the heartbeat, then every slot.

        The first beat reads the circuit the store records (another node's,
        or an earlier worker's before a reload or restart): a recorded open
        circuit is adopted and probed, not overwritten with "closed".
        """
        Service.startService(self)
        self._stopping = False
        self._heartbeat_stopped = False
        self.circuit.start()
        self._beat()
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
        self._wake(all_sleepers=True)
        self._fire(self._drain_watchers)
        self._fire(self._undrain_waiters)
        self.circuit.stop()
        # The probe holds no lease: it is not waited for (it ends at its own timeouts).
        waiting = [slot.done for slot in self._slots if slot.done is not None]
        timer = self.clock.callLater(self.grace, self._abort_all)

        def finished(_: object) -> None:
            if timer.active():
                timer.cancel()
            # (The heartbeat renewed the leases of the sends the grace let finish.)
            self._heartbeat_stopped = True
            if self._heartbeat_call is not None and self._heartbeat_call.active():
                self._heartbeat_call.cancel()
            self._heartbeat_call = None
            self._fire(self._drained_waiters)

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
        done: Deferred[None] = Deferred()
        if not flag:
            self._draining = False
            self._fire(self._undrain_waiters)
            done.callback(None)
            return done
        self._draining = True
        self._drained_waiters.append(done)
        # Idle, lingering and backing-off slots go to their next turn now (and drain).
        self._wake(all_sleepers=True)
        self._fire(self._drain_watchers)
        self._check_drained()
        return done

    @property
    def draining(self) -> bool:
        """Whether :meth:`set_draining` asked this worker to drain."""
        return self._draining

    def _check_drained(self) -> None:
        """Fire the drain's waiters once every slot is drained (or no slot runs)."""
        if self._draining and all(slot.drained or slot.done is None or slot.done.called for slot in self._slots):
            self._fire(self._drained_waiters)

    @staticmethod
    def _fire(waiters: "list[Deferred[None]]") -> None:
        """Fire and forget every Deferred of ``waiters``."""
        fired = list(waiters)
        del waiters[:]
        for d in fired:
            if not d.called:
                d.callback(None)

    def poke(self) -> None:
        """Wake idle slots: entries were enqueued (called by the receive side)."""
        self._arrivals += 1
        self._wake(all_sleepers=False)

    def status(self) -> WorkerStatus:
        """The worker's state (circuit, failures, last error, associations)."""
        return WorkerStatus(
            destination=self.name,
            circuit="closed" if self.circuit.is_closed else "open",
            consecutive_failures=self.circuit.failures,
            last_error=self.circuit.last_error,
            active_associations=self.sender.connections(),
            journal_error=next((s.journal_error for s in self._slots if s.journal_error), ""),
            slots_held=sum(1 for s in self._slots if s.claimed),
            draining=self._draining,
        )

    # -- waiting -------------------------------------------------------------------------

    def _sleep(self, delay: float, pokeable: bool, until_arrivals: int | None = None) -> "Deferred[None]":
        """A Deferred that fires after ``delay``, on stop, and (if ``pokeable``) on :meth:`poke`.

        With ``until_arrivals``, a poke wakes it only once the worker's
        arrival count has reached that number.
        """
        d: Deferred[None] = Deferred()
        if self._stopping:
            d.callback(None)
            return d

        def fire() -> None:
            self._sleepers[:] = [s for s in self._sleepers if s.done is not d]
            if not d.called:
                d.callback(None)

        call = self.clock.callLater(max(0.0, delay), fire)
        self._sleepers.append(_Sleeper(d, call, pokeable, until_arrivals))
        return d

    def _wake(self, all_sleepers: bool) -> None:
        """Fire the sleepers (only the pokeable ones whose arrival count is reached unless ``all_sleepers``)."""

        def due(s: _Sleeper) -> bool:
            return all_sleepers or (s.pokeable and (s.until_arrivals is None or self._arrivals >= s.until_arrivals))

        # Take them out first: a woken slot may go back to sleep at once.
        woken = [s for s in self._sleepers if due(s)]
        self._sleepers = [s for s in self._sleepers if not due(s)]
        for s in woken:
            if s.call is not None and s.call.active():
                s.call.cancel()
            if not s.done.called:
                s.done.callback(None)

    async def _store(self, f: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run a store method through the store runner."""
        result: _T = await self.store_runner.run(f, *args, **kwargs)
        return result

    async def _journal(self, f: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run a store method that writes the worker's bookkeeping; its failure is a :class:`JournalRefused`.

        A fenced write that found the lease taken over raises
        :class:`~gateway.queue.interfaces.LeaseLost` as it is: that is no
        refusal of the journal, and the caller drops its outcome.
        """
        try:
            return await self._store(f, *args, **kwargs)
        except LeaseLost:
            raise
        except Exception as e:
            raise JournalRefused(f"{type(e).__name__}: {e}") from e

    async def _file(self, f: Callable[..., _T], *args: Any) -> _T:
        """Run file work through the file runner."""
        result: _T = await self.file_runner.run(f, *args)
        return result

    # -- heartbeat: leases, slot claims and the shared circuit (issue 14) ------------------

    def _beat(self) -> None:
        """Run one heartbeat now, then schedule the next one (never two at once)."""
        self._heartbeat_call = None
        d = Deferred.fromCoroutine(self._heartbeat())
        d.addErrback(self._crashed, "heartbeat")
        d.addBoth(lambda _: self._schedule_heartbeat())

    def _schedule_heartbeat(self) -> None:
        """The next beat, ``heartbeat_interval`` from now (none once the worker has stopped)."""
        if self._heartbeat_stopped or self._heartbeat_call is not None:
            return
        self._heartbeat_call = self.clock.callLater(self.heartbeat_interval, self._beat)

    async def _heartbeat(self) -> None:
        """Renew the leases held and the slots claimed, then follow the circuit another node recorded.

        Each step that fails (the store away) is logged and tried at the next beat.
        """
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("leases", self._renew_leases),
            ("nodes", self._follow_nodes),
            ("slot claims", self._renew_claims),
            ("circuit", self._follow_shared_circuit),
        ]
        for what, step in steps:
            try:
                await step()
            except Exception as e:
                self.log.warn(
                    "forward {destination}: renewing {what} failed (tried again in {interval:.1f}s): {error}",
                    destination=self.name,
                    what=what,
                    interval=self.heartbeat_interval,
                    error=f"{type(e).__name__}: {e}",
                )

    def _held(self) -> dict[int, int]:
        """Every entry this worker holds LEASED, with the generation it leased: entry id -> generation."""
        held: dict[int, int] = {}
        for slot in self._slots:
            for entry in slot.leased:
                held[entry.entry_id] = entry.lease_generation
            for entry, _, _ in slot.delivered:
                held[entry.entry_id] = entry.lease_generation
            for entry, _, _ in slot.unrecorded:
                held[entry.entry_id] = entry.lease_generation
            held.update(slot.unreleased)
        return held

    async def _renew_leases(self) -> None:
        """Extend every lease held for ``lease_seconds``; drop the entries whose lease another node took."""
        held = self._held()
        if not held:
            return
        now = self._schedule_now()
        lost = await self._store(self.store.renew, held, now, self.lease_seconds)
        for slot in self._slots:
            slot.lease_until = max(slot.lease_until, now + self.lease_seconds)
        if lost:
            self._drop_lost({entry_id: held[entry_id] for entry_id in lost if entry_id in held}, "renewing its lease")

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
                self._lease_lost(entry.entry_id, during)
            for entry_id, generation in list(slot.unreleased.items()):
                if lost.get(entry_id) == generation:
                    del slot.unreleased[entry_id]
                    self._lease_lost(entry_id, during)

    def _lease_lost(self, entry_id: int, during: str) -> None:
        """Log, count and announce a lease another node took over (the outcome of ours is dropped)."""
        self.log.warn(
            "forward {destination}: node {node} lost its lease of entry {entry_id} ({during}): another node took"
            " it over after the lease expired; that node's outcome stands, this node's is dropped",
            destination=self.name,
            node=self.store.node,
            entry_id=entry_id,
            during=during,
        )
        self.observer.observe(events.LeaseLost(self.name, entry_id, self.store.node))

    async def _claim(self, slot: _Slot, renewal: bool = False) -> bool:
        """Claim (or renew) the slot's association slot in the store: whether this node holds it now.

        :param renewal: the heartbeat's renewal of a claim held: if the slot
            gave its claim up meanwhile (drain, stop), the answer is ignored.
        """
        now = self._schedule_now()
        held: bool = await self._journal(self.store.claim_slot, self.name, slot.index, len(self._slots), now, self.lease_seconds)
        if renewal and not slot.claimed:
            return False
        if held:
            slot.claimed, slot.claim_until = True, now + self.lease_seconds
        elif slot.claimed:
            self.log.warn(
                "forward {destination}: slot {slot} was taken by another node (this node's claim had expired)",
                destination=self.name,
                slot=slot.index,
            )
            slot.claimed = False
        return held

    async def _renew_claims(self) -> None:
        """Renew the claim of every slot that holds one.

        With node-local spools, a slot idle for a whole heartbeat interval
        (its leases found nothing, it holds nothing) releases its claim
        instead: the entries of that shard another node received can only be
        sent by that node, and a claim held by an idle node would strand them.
        """
        now = self._schedule_now()
        for slot in self._slots:
            if not slot.claimed or self._stopping:
                continue
            if (
                self.local_only
                and slot.idle_since is not None
                and now - slot.idle_since >= self.heartbeat_interval
                and not (slot.leased or slot.delivered or slot.unrecorded or slot.unreleased)
            ):
                slot.yielded = True
                await self._release_claim(slot)
                continue
            await self._claim(slot, renewal=True)

    async def _follow_nodes(self) -> None:
        """Work out this node's share of the slots from the live nodes; mark the slots held beyond it.

        A node is live when its last heartbeat (``store.heartbeat``, written
        by the node's own heartbeat service) is at most ``lease_seconds`` old
        and it does not say it is draining; this node always counts. With
        ``n`` slots and ``m`` live nodes, sorted by name, the first
        ``n mod m`` nodes may claim ``n // m + 1`` slots and the others
        ``n // m`` (every node computes the same split from the same
        heartbeats), so a node added while the cluster runs gets slots (and
        work) from the others, and the survivors of a dead node take its
        slots once its claims run out. A slot held beyond the share is given
        up at its next turn (between batches: a study never has two slots at
        once). While nodes disagree (a heartbeat seen by one and not yet by
        another) the shares may overlap for a beat: the store's claims still
        keep one holder per slot.
        """
        now = self._schedule_now()
        live = {self.store.node}
        for status in await self._store(self.store.nodes, now):
            if status.last_seen >= now - self.lease_seconds and not _says_draining(status.detail):
                live.add(status.node)
        rank = sorted(live).index(self.store.node)
        per_node, extra = divmod(len(self._slots), len(live))
        self.share = per_node + (1 if rank < extra else 0)
        if self.local_only:
            # Node-local spools: every node must be able to send what it
            # received, so each may claim a free slot (idle slots give theirs up).
            self.share = max(self.share, 1)
        held = sorted((s for s in self._slots if s.claimed and not s.surrender), key=lambda s: -s.index)
        for slot in held[: max(0, len(held) - self.share)]:
            slot.surrender = True

    def _holds_claim(self, slot: _Slot, now: float) -> bool:
        """Whether the slot holds a claim that has not run out, as far as this node knows."""
        return slot.claimed and now < slot.claim_until

    async def _release_claim(self, slot: _Slot) -> None:
        """Give up the slot's claim (drain, stop); a refusal is logged (the claim then runs out by itself)."""
        if not slot.claimed:
            return
        slot.claimed = False
        try:
            await self._journal(self.store.release_slot, self.name, slot.index)
        except JournalRefused as e:
            self.log.warn(
                "forward {destination}: slot {slot}'s claim not released ({error}); it runs out in {seconds:.0f}s",
                destination=self.name,
                slot=slot.index,
                error=str(e),
                seconds=self.lease_seconds,
            )

    async def _follow_shared_circuit(self) -> None:
        """Adopt the circuit state another node recorded, when it is newer than what this node knows.

        Recorded open since after this node's last success, while closed
        here: open here too (and probe). Recorded closed since after this
        node's circuit opened, while open here: close here (the slots wake).
        """
        circuit_open, reason, since = await self._store(self.store.circuit, self.name)
        if since is None:
            return
        if circuit_open and self.circuit.is_closed and (self._last_success is None or since > self._last_success):
            self._opened_at = since
            self.circuit.adopt_open(reason)
        elif not circuit_open and not self.circuit.is_closed and (self._opened_at is None or since > self._opened_at):
            self.circuit.adopt_closed()

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
                await self._sleep(self.poll_interval, pokeable=False)
            else:
                slot.journal_error = ""
        if slot.delivered:
            # Stopping: write what was delivered, so it is not sent again after the restart.
            try:
                await self._settle(slot, 0)
            except JournalRefused:
                self.log.failure("forward {destination} slot {slot}: deliveries not written at stop (they will be re-sent)",
                                 destination=self.name, slot=slot.index)
        await self._release_claim(slot)
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
        if self._draining:
            await self._drain_slot(slot)
            return
        if not self.circuit.is_closed:
            # Deliveries are written before a wait of unknown length.
            if slot.delivered:
                await self._settle(slot, 0)
            if not self._stopping:
                watcher = self._watch(self._drain_watchers)
                try:
                    await self._first(self.circuit.when_closed(), watcher)
                finally:
                    if watcher in self._drain_watchers:
                        self._drain_watchers.remove(watcher)
            return
        if slot.surrender:
            # More slots than this node's share: this one goes to another node.
            slot.surrender = False
            if slot.delivered:
                await self._settle(slot, 0)
            await self._release_claim(slot)
            await self.sender.close(slot.index)
            self.log.info(
                "forward {destination}: slot {slot} given up for another node (this node's share is {share})",
                destination=self.name,
                slot=slot.index,
                share=self.share,
            )
            if not self._stopping and not self._draining:
                await self._sleep(self.poll_interval, pokeable=False)
            return
        if slot.yielded and not self._holds_claim(slot, self._schedule_now()):
            # Given up for idleness (node-local spools): claim again once this
            # node receives something, or a heartbeat later (a retry come due).
            slot.yielded = False
            if not self._stopping and not self._draining:
                await self._sleep(self.heartbeat_interval, pokeable=True)
            return
        await self._follow_wall_clock()
        holds = self._holds_claim(slot, self._schedule_now())
        others = sum(1 for s in self._slots if s.claimed and s is not slot)
        if not holds and (others >= self.share or not await self._claim(slot)):
            # Another node holds this slot (cluster-wide max_associations), or
            # this node holds its share: no association of ours for it; look
            # again at the next poll. Not pokeable: the holder sends what this
            # node receives (it polls the store), and a claim attempt per
            # received instance would load the store for nothing.
            if slot.delivered:
                await self._settle(slot, 0)
            await self._release_claim(slot)  # (one that ran out while this node held its share elsewhere)
            await self.sender.close(slot.index)
            if not self._stopping and not self._draining:
                await self._sleep(self.poll_interval, pokeable=False)
            return
        # The deliveries of the last batch and the next lease: one transaction.
        # (A refused write leaves both undone: the deliveries stay on the slot,
        # still LEASED in the journal, and are written at the next turn.)
        arrivals, slot.arrivals = slot.arrivals, self._arrivals
        settled = await self._settle(slot, self.batch_size)
        if not settled.leased:
            slot.streaming = False
            if slot.idle_since is None:
                slot.idle_since = self._schedule_now()
            await self._idle(slot, settled.next_due)
            return
        slot.idle_since = None
        if not slot.streaming and slot.batch_ended is not None:
            # Woken from idle soon after its last batch: a stream, not a lone instance.
            slot.streaming = self._arrivals > arrivals and self.clock.seconds() - slot.batch_ended < self.linger
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
        if self._arrivals > slot.arrivals:
            slot.streaming = True
        if len(settled.leased) < self.batch_size:
            await self._linger(slot)

    async def _drain_slot(self, slot: _Slot) -> None:
        """Draining: write the slot's deliveries, give up its claim and association, wait for undrain or stop."""
        if slot.delivered:
            await self._settle(slot, 0)
        await self._release_claim(slot)
        await self.sender.close(slot.index)
        if self._stopping or not self._draining:
            return
        slot.drained = True
        self._check_drained()
        try:
            await self._watch(self._undrain_waiters)
        finally:
            slot.drained = False

    def _watch(self, waiters: "list[Deferred[None]]") -> "Deferred[None]":
        """A new Deferred added to ``waiters`` (fired by :meth:`_fire`)."""
        d: Deferred[None] = Deferred()
        waiters.append(d)
        return d

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
            settled: Settled = await self._journal(
                self.store.settle,
                self.name,
                [(entry.entry_id, outcome.warning) for entry, outcome, _ in delivered],
                now,
                limit,
                self.lease_seconds,
                shard=(slot.index, len(self._slots)),
                generations={entry.entry_id: entry.lease_generation for entry, _, _ in delivered},
            )
        except JournalRefused:
            slot.delivered = delivered + slot.delivered
            raise
        if settled.leased:
            slot.lease_until = now + self.lease_seconds
        lost = set(settled.lost)
        for entry, outcome, duration in delivered:
            if entry.entry_id in lost:
                self._lease_lost(entry.entry_id, "recording its delivery")
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
        if self._stopping or not slot.streaming or self._arrivals - slot.arrivals >= self.min_batch:
            return
        await self._sleep(self.linger, pokeable=True, until_arrivals=slot.arrivals + self.min_batch)

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
        for slot in self._slots:
            # What this node knows of its claims and leases moves to the new
            # timeline too (the store's own records are renewed in it).
            slot.claim_until += step
            slot.lease_until += step
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
            await self._sleep(delay, pokeable=True)

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
        if self._schedule_now() >= slot.lease_until - self.heartbeat_interval:
            try:
                await self._renew_leases()
            except Exception as e:
                self.log.warn("forward {destination}: renewing leases failed: {error}", destination=self.name, error=f"{type(e).__name__}: {e}")
        now = self._schedule_now()
        return bool(slot.leased) and now < slot.lease_until and self._holds_claim(slot, now)

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
            self._lease_lost(entry.entry_id, "recording its outcome")
        except JournalRefused:
            if not isinstance(outcome, Delivered):
                # (A delivery whose write was refused is still on slot.delivered.)
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
            delay = self._backoff(entry.attempts)
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
                self._lease_lost(entry.entry_id, "putting it back")
            rest = {e.entry_id: e.lease_generation for e in slot.leased}
            slot.leased = []
            if rest:
                try:
                    await self._journal(self.store.release, list(rest), generations=rest)
                except JournalRefused:
                    slot.unreleased.update(rest)
                    raise
            await self._destination_fault(outcome)

    def _announce_delivery(self, entry: Entry, outcome: Delivered, duration: float) -> None:
        """Log a delivery the journal has just recorded, and tell the observer."""
        fields = dict(
            destination=self.name,
            entry_id=entry.entry_id,
            correlation_id=entry.instance.correlation_id,
            sop_instance_uid=entry.instance.sop_instance_uid,
            attempt=entry.attempts + 1,
        )
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

    # -- circuit breaker (the state machine is gateway.circuit's; this is its listener) ---

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
        # Below the threshold: wait before this slot tries the destination again.
        await self._sleep(self._backoff(self.circuit.failures - 1), pokeable=False)

    def _success(self) -> None:
        """The destination answered (a delivery, an association opened): tell the circuit, note when."""
        self._last_success = self.wall()
        self.circuit.success()

    def circuit_opened(self, fault: DestinationDown) -> None:
        """The circuit opened: log, tell the observer and the journal (where the other nodes read it)."""
        self.log.error(
            "destination {destination} is down, circuit open: {reason}", destination=self.name, reason=fault.reason
        )
        self.observer.observe(events.CircuitOpened(self.name, fault.reason, fault.permanent))
        self._opened_at = self.wall()
        self._note_circuit(True, fault.reason, self._opened_at)

    def circuit_adopted(self, circuit_open: bool, reason: str) -> None:
        """The circuit followed another node's record (issue 14): log and tell the observer.

        Nothing is written: the record is the other node's.
        """
        if circuit_open:
            self.log.warn(
                "destination {destination} is down as another node recorded, circuit open here too: {reason}",
                destination=self.name,
                reason=reason,
            )
        else:
            self.log.info("destination {destination} is up as another node's probe found, circuit closed here too", destination=self.name)
        self.observer.observe(events.CircuitAdopted(self.name, circuit_open, reason))

    def probe_failed(self, fault: DestinationDown) -> "Deferred[None]":
        """A probe failed: log, and apply ``max_age`` before the next one."""
        self.log.info("probe of {destination} failed: {reason}", destination=self.name, reason=fault.reason)
        return Deferred.fromCoroutine(self._expire_while_down())

    async def _expire_while_down(self) -> None:
        """Apply ``max_age`` to the entries of a destination that is down as a whole.

        Its entries make no attempts while the circuit is open (HARDENING
        decision 9), so :func:`give_up` never sees them: without this, a
        destination that never comes back would keep their spool files forever
        (F17: "kept until all are done or dead-lettered").
        """
        max_age = self.config.retry.max_age
        now = self._schedule_now()
        reason = f"gave up after {max_age:.0f}s in the queue (max_age) while the destination was down: {self.circuit.last_error}"
        try:
            expired = await self._journal(self.store.expire, self.name, now - max_age, reason, now)
        except JournalRefused:
            return
        for entry in expired:
            self.observer.observe(events.DeadLettered(entry, DeadLetterKind.GAVE_UP, reason))
        if expired:
            self.log.warn(
                "dead-lettered {count} entries for {destination} older than max_age {max_age:.0f}s (destination down)",
                count=len(expired),
                destination=self.name,
                max_age=max_age,
            )

    def _note_circuit(self, circuit_open: bool, reason: str, at: float | None = None) -> None:
        """Write the circuit state to the journal, where ``queue list`` (another process) and the other nodes read it."""
        d = self.store_runner.run(self.store.set_circuit, self.name, circuit_open, reason, self.wall() if at is None else at)
        d.addErrback(lambda f: self.log.failure("recording the circuit of {destination} failed", f, destination=self.name))

    def circuit_closed(self) -> None:
        """A probe succeeded: log, tell the observer and the journal (the circuit wakes the slots)."""
        self.log.info("destination {destination} is up, circuit closed", destination=self.name)
        self.observer.observe(events.CircuitClosed(self.name))
        self._note_circuit(False, "")
