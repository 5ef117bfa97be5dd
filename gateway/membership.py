"""A forwarding worker's standing in the cluster: leases, slot claims, shares, the shared circuit, drain.

The per-destination worker (:class:`gateway.forward.DestinationWorker`)
composes one :class:`Membership`. The worker's slot loop leases, sends and
records; the membership keeps what the worker holds in the store alive and
fair among the nodes, and tells the loop what it may do: whether a slot
holds its claim, whether the worker drains.

Theory of operation (issue 14)
------------------------------
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
  again within ``lease_seconds + heartbeat + poll_interval`` (the
  heartbeat is the node's ``cluster.heartbeat``; ``lease_seconds / 3``
  when none is given). With node-local spools (the store's
  ``local_only``) a slot idle for a heartbeat interval also gives its claim
  up, since only the node that received an instance can send it; it claims
  again when poked or a heartbeat later. An instance received by a node
  that holds no slot of its destination is sent by a node that does, at
  that node's next poll (``poll_interval``).
* **Leases and their heartbeat.** Every heartbeat the worker
  renews the leases of every entry it holds (being sent, delivered but not
  yet written, refused by the journal: all still LEASED), and the claims of
  its slots. A slot about to send while its renewal is overdue (the
  heartbeat did not run: the process was paused) renews first, and sends
  nothing whose lease has run out. A lease that expires anyway (a paused
  or partitioned node) is taken back by another node's lease. Each slot
  renews its own entries, to its own ``leased_until``
  (:data:`SLOT_LEASE_SPREAD`): the store notes the first entries of each
  lease taken back as possibly sent, and tells leases apart by owner and
  ``leased_until``.
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
  store, and every heartbeat reads it back
  (:meth:`gateway.forward_circuit.SharedCircuit.follow_record`), so one
  node's probe result is every node's.
* **Drain** (:meth:`Membership.set_draining`, through
  :meth:`gateway.forward.DestinationWorker.set_draining`): no new lease, no
  new claim; batches in flight finish and are written; then each slot
  writes its deliveries, releases its claim and closes its association.
  Undrained, the slots go on.

What the membership needs of the worker (its view of the slots' entries,
its clock for due times, waking its sleepers) is passed in as a
:class:`WorkerSide`; what each slot holds of the cluster is a
:class:`SlotStanding` the worker's slot refers to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from gateway import events
from gateway.blocking import IBlockingRunner
from gateway.forward_circuit import SharedCircuit
from gateway.forward_types import JournalRefused, run_journal, run_store
from gateway.queue.interfaces import IQueueStore

__all__ = ["Membership", "SlotStanding", "WorkerSide"]

_T = TypeVar("_T")


@dataclass
class SlotStanding:
    """One association slot's standing in the cluster, as this node knows it (mutable: the slot's own).

    :ivar index: the slot (``k`` of ``shard=(k, n)``).
    :ivar claimed: this node holds the store's claim on the slot.
    :ivar claim_until: until when the claim runs (``schedule_now`` time) as far as this node knows.
    :ivar lease_until: until when the slot's leases run (``schedule_now`` time), as of its last lease or renewal.
    :ivar idle_since: since when (``schedule_now`` time) the slot's leases found nothing; ``None`` while it has work.
    :ivar yielded: node-local spools: the slot gave its claim up for idleness,
        and claims again when this node receives something (a poke) or a heartbeat later.
    :ivar surrender: this node holds more slots than its share: give this one up at the next turn.
    """

    index: int
    claimed: bool = False
    claim_until: float = 0.0
    lease_until: float = 0.0
    idle_since: float | None = None
    yielded: bool = False
    surrender: bool = False


@dataclass(frozen=True)
class WorkerSide:
    """What the membership needs of its worker, passed in rather than reached for.

    :ivar schedule_now: the time due times are written and compared in (the
        worker's wall clock, kept in step with steps of it).
    :ivar stopping: whether the worker is stopping.
    :ivar held: every entry slot ``index`` holds LEASED, with the generation
        it leased: entry id -> generation (``held(index)``).
    :ivar busy: whether slot ``index`` holds any entry (leased, delivered but
        not yet written, refused by the journal, not yet released).
    :ivar drop_lost: drop from the slots the entries whose lease of that
        generation was lost (``drop_lost(lost, during)``); it announces each
        with :meth:`Membership.lease_lost`.
    :ivar wake_all: wake every sleeping slot (draining: each goes to its next turn).
    :ivar all_drained: whether every slot is drained (or no slot runs).
    """

    schedule_now: Callable[[], float]
    stopping: Callable[[], bool]
    held: Callable[[int], "dict[int, int]"]
    busy: Callable[[int], bool]
    drop_lost: Callable[["dict[int, int]", str], None]
    wake_all: Callable[[], None]
    all_drained: Callable[[], bool]


#: Slot ``k``'s leases last ``k`` times this much longer than ``lease_seconds``
#: (seconds), so that two slots that lease or renew at the same ``now`` never
#: share one ``leased_until``: the store tells one lease from another by owner
#: and ``leased_until`` when it notes the first ``UNRECORDED_DELIVERIES + 1``
#: entries of a lease taken back as possibly sent (``lease``, ``recover``),
#: and one slot's sends must not push another's out of that count.
SLOT_LEASE_SPREAD = 0.001


def _says_draining(detail: str) -> bool:
    """Whether a node's heartbeat detail (JSON: address, version, draining) says it is draining."""
    try:
        said = json.loads(detail)
    except ValueError:
        return False
    return isinstance(said, dict) and bool(said.get("draining"))


def _fire_all(waiters: "list[Deferred[None]]") -> None:
    """Fire and forget every Deferred of ``waiters`` (the list is emptied first)."""
    fired = list(waiters)
    del waiters[:]
    for d in fired:
        if not d.called:
            d.callback(None)


def _watch(waiters: "list[Deferred[None]]") -> "Deferred[None]":
    """A new Deferred added to ``waiters`` (fired by :func:`_fire_all`)."""
    d: Deferred[None] = Deferred()
    waiters.append(d)
    return d


class Membership:
    """One worker's standing in the cluster (see the module docstring).

    :param name: the destination.
    :param store: the queue journal (``store.node`` is this node).
    :param store_runner: runs every store call.
    :param clock: schedules the heartbeat.
    :param shared_circuit: the destination's circuit (the worker's), which follows the record another node writes.
    :param slots: how many association slots the destination has.
    :param lease_seconds: how long a lease and a slot's claim last unless renewed.
    :param observer: receives :class:`~gateway.events.LeaseLost`.
    :param worker: what the membership needs of the worker.
    :param heartbeat_seconds: how often leases and claims are renewed and the
        shared circuit and the live nodes are read (the node's
        ``cluster.heartbeat``); ``lease_seconds / 3`` when not given. Below
        half the lease, so a lease is renewed at least twice before it runs out.
    """

    log = Logger(namespace="gateway.forward")

    def __init__(
        self,
        name: str,
        store: IQueueStore,
        store_runner: IBlockingRunner,
        clock: IReactorTime,
        shared_circuit: SharedCircuit,
        slots: int,
        lease_seconds: float,
        observer: events.IGatewayObserver,
        worker: WorkerSide,
        heartbeat_seconds: float | None = None,
    ) -> None:
        self.name = name
        self.store = store
        self.store_runner = store_runner
        self.clock = clock
        self.shared_circuit = shared_circuit
        self.lease_seconds = lease_seconds
        self.observer = observer
        self.worker = worker
        #: How often leases and slot claims are renewed and the shared circuit is read.
        self.heartbeat_interval = lease_seconds / 3 if heartbeat_seconds is None else heartbeat_seconds
        #: Node-local spools (``spool.shared: false``): this node can send only
        #: what it received, so an idle slot gives its claim up for the others.
        self.local_only = bool(getattr(store, "local_only", False))
        #: The most slots this node claims: all of them alone, else its share
        #: among the live nodes that are not draining (see :meth:`_follow_nodes`).
        self.share = slots
        #: Each slot's standing, by index.
        self.slots = [SlotStanding(k) for k in range(slots)]
        self._heartbeat_call: IDelayedCall | None = None
        self._heartbeat_stopped = False
        self._draining = False
        #: Fired when draining starts (a slot waiting for the circuit stops waiting).
        self._drain_watchers: list[Deferred[None]] = []
        #: Fired at undrain or stop (drained slots wait on them).
        self._undrain_waiters: list[Deferred[None]] = []
        #: Fired once every slot is drained (the callers of set_draining(True)).
        self._drained_waiters: list[Deferred[None]] = []

    # -- life ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the heartbeat (its first beat reads the circuit the store records)."""
        self._heartbeat_stopped = False
        self._beat()

    def stop(self) -> None:
        """The worker stops: drained and draining slots stop waiting (the heartbeat goes on)."""
        _fire_all(self._drain_watchers)
        _fire_all(self._undrain_waiters)

    def stopped(self) -> None:
        """Every slot has stopped: stop the heartbeat; a drain waited for is over."""
        self._heartbeat_stopped = True
        if self._heartbeat_call is not None and self._heartbeat_call.active():
            self._heartbeat_call.cancel()
        self._heartbeat_call = None
        _fire_all(self._drained_waiters)

    def _crashed(self, failure: Any) -> None:
        self.log.failure("forward {destination} {what} crashed", failure, destination=self.name, what="heartbeat")

    async def _store(self, f: Callable[..., _T], *args: Any) -> _T:
        """Run a store method through the store runner."""
        return await run_store(self.store_runner, f, *args)

    # -- drain ---------------------------------------------------------------------------

    def set_draining(self, flag: bool) -> "Deferred[None]":
        """Drain (``True``) or undrain (``False``) this node's side of the destination.

        :param flag: drain or undrain.
        :returns: a Deferred that fires once every slot is drained (at once
            for an undrain, or when the worker stops).
        """
        done: Deferred[None] = Deferred()
        if not flag:
            self._draining = False
            _fire_all(self._undrain_waiters)
            done.callback(None)
            return done
        self._draining = True
        self._drained_waiters.append(done)
        # Idle, lingering and backing-off slots go to their next turn now (and drain).
        self.worker.wake_all()
        _fire_all(self._drain_watchers)
        self.check_drained()
        return done

    @property
    def draining(self) -> bool:
        """Whether :meth:`set_draining` asked this worker to drain."""
        return self._draining

    def check_drained(self) -> None:
        """Fire the drain's waiters once every slot is drained (or no slot runs)."""
        if self._draining and self.worker.all_drained():
            _fire_all(self._drained_waiters)

    def when_draining(self) -> "Deferred[None]":
        """A Deferred fired when draining starts or the worker stops (:meth:`forget` it when done)."""
        return _watch(self._drain_watchers)

    def forget(self, watcher: "Deferred[None]") -> None:
        """Stop watching for a drain with ``watcher`` (from :meth:`when_draining`)."""
        if watcher in self._drain_watchers:
            self._drain_watchers.remove(watcher)

    def when_undrained(self) -> "Deferred[None]":
        """A Deferred fired at undrain or when the worker stops."""
        return _watch(self._undrain_waiters)

    # -- heartbeat: leases, slot claims and the shared circuit ---------------------------

    def _beat(self) -> None:
        """Run one heartbeat now, then schedule the next one (never two at once)."""
        self._heartbeat_call = None
        d = Deferred.fromCoroutine(self._heartbeat())
        d.addErrback(self._crashed)
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
            ("leases", self.renew_leases),
            ("nodes", self._follow_nodes),
            ("slot claims", self._renew_claims),
            ("circuit", self.shared_circuit.follow_record),
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

    def lease_seconds_of(self, slot: SlotStanding) -> float:
        """How long the slot's leases last: ``lease_seconds``, plus ``index * SLOT_LEASE_SPREAD``.

        Each slot's leases thus end at their own ``leased_until`` even when
        two slots lease or renew at the same ``now`` (see :data:`SLOT_LEASE_SPREAD`).
        """
        return self.lease_seconds + slot.index * SLOT_LEASE_SPREAD

    async def renew_leases(self) -> None:
        """Extend every lease held for ``lease_seconds``; drop the entries whose lease another node took.

        One renewal per slot holding entries, each to the slot's own
        ``leased_until`` (:meth:`lease_seconds_of`): a renewal of every slot at
        once would merge their leases into one for the store's in-flight rule.
        """
        now = self.worker.schedule_now()
        renewed = False
        for slot in self.slots:
            held = self.worker.held(slot.index)
            if not held:
                continue
            renewed = True
            lost = await self._store(self.store.renew, held, now, self.lease_seconds_of(slot))
            if lost:
                self.worker.drop_lost({entry_id: held[entry_id] for entry_id in lost if entry_id in held}, "renewing its lease")
        if not renewed:
            return
        for slot in self.slots:
            slot.lease_until = max(slot.lease_until, now + self.lease_seconds)

    def leased(self, slot: SlotStanding, now: float) -> None:
        """The slot leased entries at ``now``: its leases run ``lease_seconds`` from then."""
        slot.lease_until = now + self.lease_seconds

    def lease_lost(self, entry_id: int, during: str) -> None:
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

    async def claim(self, slot: SlotStanding, renewal: bool = False) -> bool:
        """Claim (or renew) the slot's association slot in the store: whether this node holds it now.

        :param renewal: the heartbeat's renewal of a claim held: if the slot
            gave its claim up meanwhile (drain, stop), the answer is ignored.
        :raises JournalRefused: the store failed.
        """
        now = self.worker.schedule_now()
        held: bool = await run_journal(
            self.store_runner, self.store.claim_slot, self.name, slot.index, len(self.slots), now, self.lease_seconds
        )
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
        now = self.worker.schedule_now()
        for slot in self.slots:
            if not slot.claimed or self.worker.stopping():
                continue
            if (
                self.local_only
                and slot.idle_since is not None
                and now - slot.idle_since >= self.heartbeat_interval
                and not self.worker.busy(slot.index)
            ):
                slot.yielded = True
                await self.release_claim(slot)
                continue
            await self.claim(slot, renewal=True)

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
        now = self.worker.schedule_now()
        live = {self.store.node}
        for status in await self._store(self.store.nodes, now):
            if status.last_seen >= now - self.lease_seconds and not _says_draining(status.detail):
                live.add(status.node)
        rank = sorted(live).index(self.store.node)
        per_node, extra = divmod(len(self.slots), len(live))
        self.share = per_node + (1 if rank < extra else 0)
        if self.local_only:
            # Node-local spools: every node must be able to send what it
            # received, so each may claim a free slot (idle slots give theirs up).
            self.share = max(self.share, 1)
        held = sorted((s for s in self.slots if s.claimed and not s.surrender), key=lambda s: -s.index)
        for slot in held[: max(0, len(held) - self.share)]:
            slot.surrender = True

    def holds_claim(self, slot: SlotStanding, now: float) -> bool:
        """Whether the slot holds a claim that has not run out, as far as this node knows."""
        return slot.claimed and now < slot.claim_until

    async def hold(self, slot: SlotStanding) -> bool:
        """Whether the slot may lease at this turn: it holds a live claim, or claims one now within this node's share.

        :raises JournalRefused: the claim could not be written.
        """
        if self.holds_claim(slot, self.worker.schedule_now()):
            return True
        if sum(1 for s in self.slots if s.claimed and s is not slot) >= self.share:
            return False
        return await self.claim(slot)

    async def still_holds(self, slot: SlotStanding) -> bool:
        """Whether the slot's leases and claim still run, as far as this node knows: may it send the next entry.

        A renewal overdue (the heartbeat did not run: a paused process) is
        made first, so entries another node took over meanwhile are dropped
        (:attr:`WorkerSide.drop_lost`), not sent.
        """
        if self.worker.schedule_now() >= slot.lease_until - self.heartbeat_interval:
            try:
                await self.renew_leases()
            except Exception as e:
                self.log.warn("forward {destination}: renewing leases failed: {error}", destination=self.name, error=f"{type(e).__name__}: {e}")
        now = self.worker.schedule_now()
        return now < slot.lease_until and self.holds_claim(slot, now)

    def claims_held(self) -> int:
        """How many slots this node claims."""
        return sum(1 for s in self.slots if s.claimed)

    async def release_claim(self, slot: SlotStanding) -> None:
        """Give up the slot's claim (drain, stop); a refusal is logged (the claim then runs out by itself)."""
        if not slot.claimed:
            return
        slot.claimed = False
        try:
            await run_journal(self.store_runner, self.store.release_slot, self.name, slot.index)
        except JournalRefused as e:
            self.log.warn(
                "forward {destination}: slot {slot}'s claim not released ({error}); it runs out in {seconds:.0f}s",
                destination=self.name,
                slot=slot.index,
                error=str(e),
                seconds=self.lease_seconds,
            )

    def shift(self, step: float) -> None:
        """The wall clock stepped by ``step``: what this node knows of its claims and leases moves with it.

        (The store's own records are renewed in the new timeline.)
        """
        for slot in self.slots:
            slot.claim_until += step
            slot.lease_until += step
