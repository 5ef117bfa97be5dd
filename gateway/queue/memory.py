"""An in-memory :class:`~gateway.queue.interfaces.IQueueStore`: the verified fake.

The forwarder's unit tests run against this store; the same
``QueueStoreTests`` mixin runs against it and against
:class:`~gateway.queue.sqlite.SqliteQueueStore`, so its behaviour is the
real store's (Buildbot's verified fakes). The conventions it shares with the
SQLite store (what ``attempts`` counts, what ``dead_letter`` writes to the
history, new ids on ``requeue_dead``, which calls skip or raise on an entry
in the wrong state, how fencing and expired leases behave) are listed in
:mod:`gateway.queue.sqlite`.

Several nodes (issue 14): the tables live in one :class:`_Tables` object;
:meth:`MemoryQueueStore.peer` returns a store object for another node on
the same tables, as two PostgreSQL stores (or two SQLite store objects on
one file) share one database. Every call runs to its end before the next
one starts (the fake has no threads), so two nodes never interleave inside
a call: that is this store's version of ``FOR UPDATE SKIP LOCKED``.

Every method either completes or raises before changing anything, which is
this store's version of "one transaction".
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Sequence, TypeVar

from zope.interface import implementer

from gateway.queue.interfaces import (
    AddResult,
    Attempt,
    DestinationStats,
    Entry,
    EntryState,
    EXPIRED_LEASE_PREFIX,
    InstanceRecord,
    IQueueStore,
    LeaseLost,
    NewEntry,
    NodeStatus,
    PlanRecord,
    RECOVERED_IN_FLIGHT,
    Settled,
    UNRECORDED_DELIVERIES,
)
from gateway.queue.commitments import ICommitmentJournal
from gateway.queue.retrieves import IRetrieveJournal
from gateway.queue.memory_commitments import CommitmentTables, MemoryCommitmentJournal
from gateway.queue.memory_retrieves import MemoryRetrieveJournal, RetrieveTables
from gateway.queue.memory_studies import MemoryStudyJournal, StudyTables, check_notes
from gateway.queue.studies import IStudyJournal, StudyNote
from gateway.queue.memory_console import MemoryConsoleQueries  # issue 18: the console's reads
from gateway.queue.sqlite import check_shard, check_slot, study_hash

__all__ = ["MemoryQueueStore"]

_OPEN = (EntryState.QUEUED, EntryState.LEASED, EntryState.DEAD)

#: The key of a timed claim: ``(destination, slot)`` for a slot, a name for a singleton.
_K = TypeVar("_K")

#: Whether a node counts as away (see :meth:`MemoryQueueStore.stats`).
_Absent = Callable[[str], bool]


@dataclass
class _Row:
    """One mutable entry row (the SQLite ``entries`` table's columns)."""

    entry_id: int
    instance_id: str
    route: str
    destination: str
    path: str | None
    state: EntryState
    enqueued_at: float
    next_attempt_at: float
    study_hash: int
    attempts: int = 0
    leased_until: float | None = None
    last_error: str = ""
    delivered_at: float | None = None
    dead_reason: str = ""
    history: list[Attempt] = field(default_factory=list)
    plan_hash: str | None = None
    lease_owner: str = ""
    lease_generation: int = 0


@dataclass
class _Destination:
    """One mutable destinations row."""

    paused: bool = False
    last_error: str = ""
    last_error_at: float | None = None
    last_success_at: float | None = None
    circuit_open: bool = False
    circuit_reason: str = ""
    circuit_since: float | None = None


@dataclass
class _Node:
    """One mutable nodes row (the last heartbeat of a node)."""

    started_at: float
    last_seen: float
    detail: str = ""


@dataclass
class _Tables:
    """Everything the store keeps: what every node's store object shares (one database)."""

    instances: dict[str, InstanceRecord] = field(default_factory=dict)
    # Insertion order is id order: ids only grow, so iteration is oldest first.
    rows: dict[int, _Row] = field(default_factory=dict)
    destinations: dict[str, _Destination] = field(default_factory=dict)
    # Each distinct plan once, by hash (the SQLite ``plans`` table).
    plans: dict[str, str] = field(default_factory=dict)
    next_id: int = 1
    # (destination, slot) -> (owner node, until): the SQLite ``slots`` table.
    slots: dict[tuple[str, int], tuple[str, float]] = field(default_factory=dict)
    nodes: dict[str, _Node] = field(default_factory=dict)
    # name -> (owner node, until): the SQLite ``singletons`` table.
    singletons: dict[str, tuple[str, float]] = field(default_factory=dict)
    # Storage Commitment (issue 15): transactions, notes, copy commitments.
    commitments: CommitmentTables = field(default_factory=CommitmentTables)
    # Query/Retrieve (issue 16): retrieves in progress, remapped UIDs.
    retrieves: RetrieveTables = field(default_factory=RetrieveTables)
    # Study completeness (issue 18): one row per (route, study) of the routes that notify.
    studies: StudyTables = field(default_factory=StudyTables)


@implementer(IQueueStore, ICommitmentJournal, IRetrieveJournal, IStudyJournal)
class MemoryQueueStore(MemoryCommitmentJournal, MemoryRetrieveJournal, MemoryStudyJournal, MemoryConsoleQueries):
    """The queue in dicts: same behaviour as the SQLite store, nothing durable.

    :param node: the node this store object speaks for (lease owner, heartbeats).
    :param local_only: node-local spools: lease only instances this node received.
    """

    def __init__(self, node: str = "node", local_only: bool = False) -> None:
        self.node = node
        self.local_only = local_only
        self._t = _Tables()

    def peer(self, node: str, local_only: bool = False) -> MemoryQueueStore:
        """Another node's store object on the same tables (a second gateway on one database).

        :param node: the other node's name.
        :param local_only: whether that node has a node-local spool.
        """
        other = type(self)(node, local_only)  # a test's subclass (a failing journal) stays itself
        other._t = self._t
        return other

    # -- plumbing -----------------------------------------------------------

    def _entry(self, row: _Row) -> Entry:
        """The frozen view of one row."""
        instance = self._t.instances[row.instance_id]
        return Entry(
            entry_id=row.entry_id,
            instance=instance,
            route=row.route,
            destination=row.destination,
            path=row.path if row.path is not None else instance.path,
            state=row.state,
            attempts=row.attempts,
            enqueued_at=row.enqueued_at,
            next_attempt_at=row.next_attempt_at,
            last_error=row.last_error,
            delivered_at=row.delivered_at,
            dead_reason=row.dead_reason,
            history=tuple(row.history),
            plan_hash=row.plan_hash,
            lease_owner=row.lease_owner,
            lease_generation=row.lease_generation,
            leased_until=row.leased_until if row.state is EntryState.LEASED else None,
        )

    def _insert(
        self,
        instance_id: str,
        route: str,
        destination: str,
        path: str | None,
        state: EntryState,
        now: float,
        hash_: int,
        history: list[Attempt] | None = None,
        plan_hash: str | None = None,
    ) -> int:
        """Add one row with the next id (the tail) and return the id."""
        entry_id = self._t.next_id
        self._t.next_id += 1
        self._t.rows[entry_id] = _Row(
            entry_id=entry_id,
            instance_id=instance_id,
            route=route,
            destination=destination,
            path=path,
            state=state,
            enqueued_at=now,
            next_attempt_at=now,
            study_hash=hash_,
            history=list(history or []),
            plan_hash=plan_hash,
        )
        return entry_id

    def _keep_plan(self, plan: PlanRecord | None) -> str | None:
        """Record a plan's definition once; return its hash."""
        if plan is None:
            return None
        self._t.plans.setdefault(plan.plan_hash, plan.definition)
        return plan.plan_hash

    def _destination(self, name: str) -> _Destination:
        """The destination's row, created if absent."""
        return self._t.destinations.setdefault(name, _Destination())

    def _row_in(self, entry_id: int, states: Sequence[EntryState]) -> _Row:
        """The row of ``entry_id`` if it is in one of ``states``.

        :raises KeyError: no such entry, or it is in another state.
        """
        row = self._t.rows.get(entry_id)
        if row is None or row.state not in states:
            raise KeyError(entry_id)
        return row

    @staticmethod
    def _held(row: _Row | None, generation: int | None) -> bool:
        """Whether a fenced write may change ``row``: LEASED, and under ``generation`` when one is given."""
        return (
            row is not None
            and row.state is EntryState.LEASED
            and (generation is None or row.lease_generation == generation)
        )

    # -- intake ---------------------------------------------------------------

    def add_instance(
        self,
        record: InstanceRecord,
        entries: Sequence[NewEntry],
        now: float,
        duplicate_window: float,
        notes: Sequence[StudyNote] = (),
    ) -> AddResult:
        """Record a received instance and its entries, and its study notes (see the interface).

        :raises ValueError: an instance with this id is already recorded.
        """
        if record.instance_id in self._t.instances:
            raise ValueError(f"instance {record.instance_id!r} is already recorded")
        already: set[str] = set()
        if duplicate_window > 0:
            # HARDENING decision 5: same UID and bytes, forwarded within the window.
            for row in self._t.rows.values():
                other = self._t.instances[row.instance_id]
                if (
                    other.sop_instance_uid == record.sop_instance_uid
                    and other.sha256 == record.sha256
                    and row.state not in (EntryState.DEAD, EntryState.DUPLICATE)
                    and row.enqueued_at >= now - duplicate_window
                ):
                    already.add(row.destination)
        self._t.instances[record.instance_id] = record
        hash_ = study_hash(record.study_instance_uid)
        ids: list[int] = []
        duplicates: list[str] = []
        states: list[EntryState] = []
        for new in entries:
            state = EntryState.DUPLICATE if new.destination in already else EntryState.QUEUED
            if state is EntryState.DUPLICATE:
                duplicates.append(new.destination)
            states.append(state)
            ids.append(
                self._insert(
                    record.instance_id, new.route, new.destination, new.path, state, now, hash_,
                    plan_hash=self._keep_plan(new.plan),
                )
            )
        self._apply_notes(notes, entries, states, now)
        return AddResult(entry_ids=tuple(ids), duplicates=tuple(duplicates))

    def add_instances(
        self,
        batch: Sequence[tuple[InstanceRecord, Sequence[NewEntry]]],
        now: float,
        duplicate_window: float,
        notes: Sequence[Sequence[StudyNote]] | None = None,
    ) -> list[AddResult]:
        """Several instances, all or nothing (see the interface).

        :raises ValueError: an instance id is already recorded, or repeated in the batch,
            or ``notes`` is not one sequence per batch item.
        """
        ids = [record.instance_id for record, _ in batch]
        if len(set(ids)) != len(ids) or any(i in self._t.instances for i in ids):
            raise ValueError("an instance of the batch is already recorded")
        per_item = check_notes(batch, notes)
        return [
            self.add_instance(record, entries, now, duplicate_window, item_notes)
            for (record, entries), item_notes in zip(batch, per_item)
        ]

    # -- the worker's cycle ---------------------------------------------------------

    def lease(self, destination: str, limit: int, now: float, lease_seconds: float, shard: tuple[int, int] | None = None) -> list[Entry]:
        """Take back expired leases, then take up to ``limit`` due QUEUED entries, oldest first (see the interface)."""
        check_shard(shard)
        if limit <= 0:
            return []
        self._reclaim_expired(destination, now)
        if self._destination_paused(destination):
            return []
        taken: list[_Row] = []
        for row in self._t.rows.values():
            if len(taken) >= limit:
                break
            if row.destination != destination or row.state is not EntryState.QUEUED or row.next_attempt_at > now:
                continue
            if shard is not None and row.study_hash % shard[1] != shard[0]:
                continue
            if self.local_only and self._t.instances[row.instance_id].node != self.node:
                continue
            taken.append(row)
        for row in taken:
            row.state = EntryState.LEASED
            row.leased_until = now + lease_seconds
            row.lease_owner = self.node
            row.lease_generation += 1
        return [self._entry(row) for row in taken]

    def _reclaim_expired(self, destination: str, now: float) -> int:
        """Return the destination's expired leases (any node) to QUEUED, noting the first of each as in flight."""
        expired = [
            row for row in self._t.rows.values()
            if row.destination == destination and row.state is EntryState.LEASED
            and row.leased_until is not None and row.leased_until < now
        ]
        groups: dict[tuple[str, float | None], list[_Row]] = {}
        for row in expired:  # id order
            group = groups.setdefault((row.lease_owner, row.leased_until), [])
            if len(group) <= UNRECORDED_DELIVERIES:
                group.append(row)
        for (owner, _), group in groups.items():
            note = EXPIRED_LEASE_PREFIX + owner + " expired"
            for row in group:
                row.last_error = note
                row.history.append(Attempt(now, note, False))
        for row in expired:
            row.state = EntryState.QUEUED
            row.leased_until = None
        return len(expired)

    def _destination_paused(self, name: str) -> bool:
        """Whether ``name`` is paused (without creating its row)."""
        row = self._t.destinations.get(name)
        return row is not None and row.paused

    def complete(self, entry_ids: Sequence[int], now: float, warning: str = "", generations: Mapping[int, int] | None = None) -> None:
        """Mark LEASED entries DELIVERED; others, and lost leases, are skipped (see the interface)."""
        self._complete([(entry_id, warning) for entry_id in entry_ids], now, generations)

    def _complete(
        self, delivered: Sequence[tuple[int, str]], now: float, generations: Mapping[int, int] | None
    ) -> tuple[int, ...]:
        """Record deliveries (fenced by ``generations``); return the fenced ids whose lease was lost."""
        lost: list[int] = []
        for entry_id, warning in delivered:
            row = self._t.rows.get(entry_id)
            generation = None if generations is None else generations.get(entry_id)
            if not self._held(row, generation):
                if generation is not None:
                    lost.append(entry_id)
                continue
            assert row is not None
            row.state = EntryState.DELIVERED
            row.delivered_at = now
            row.last_error = warning
            row.leased_until = None
            self._destination(row.destination).last_success_at = now
        return tuple(lost)

    def settle(
        self,
        destination: str,
        delivered: Sequence[tuple[int, str]],
        now: float,
        limit: int,
        lease_seconds: float,
        shard: tuple[int, int] | None = None,
        generations: Mapping[int, int] | None = None,
    ) -> Settled:
        """Record deliveries, then lease; with nothing leased, say when the next entry is due (see the interface)."""
        check_shard(shard)
        lost = self._complete(delivered, now, generations)
        if limit <= 0:
            return Settled(lost=lost)
        leased = self.lease(destination, limit, now, lease_seconds, shard)
        if leased:
            return Settled(tuple(leased), lost=lost)
        return Settled((), self.next_due(destination), lost)

    def retry(
        self, entry_id: int, next_attempt_at: float, error: str, now: float, counted: bool = True, generation: int | None = None
    ) -> None:
        """Return a LEASED entry to QUEUED, recording the attempt (see the interface).

        :raises LeaseLost: ``generation`` is given and the entry is not LEASED under it.
        :raises KeyError: no such entry, or it is not LEASED.
        """
        row = self._t.rows.get(entry_id)
        if not self._held(row, generation):
            raise LeaseLost(entry_id) if generation is not None else KeyError(entry_id)
        assert row is not None
        row.state = EntryState.QUEUED
        row.leased_until = None
        row.next_attempt_at = next_attempt_at
        row.last_error = error
        row.attempts += 1 if counted else 0
        row.history.append(Attempt(now, error, counted))
        destination = self._destination(row.destination)
        destination.last_error = error
        destination.last_error_at = now

    def release(self, entry_ids: Sequence[int], generations: Mapping[int, int] | None = None) -> None:
        """Return LEASED entries to QUEUED unchanged; others, and lost leases, are skipped (see the interface)."""
        for entry_id in entry_ids:
            row = self._t.rows.get(entry_id)
            if self._held(row, None if generations is None else generations.get(entry_id)):
                assert row is not None
                row.state = EntryState.QUEUED
                row.leased_until = None

    def dead_letter(self, entry_id: int, reason: str, now: float, generation: int | None = None) -> None:
        """Move a QUEUED or LEASED entry to DEAD (see the interface).

        :raises LeaseLost: ``generation`` is given and the entry is not LEASED under it.
        :raises KeyError: no such entry, or it is not QUEUED or LEASED.
        """
        if generation is not None:
            if not self._held(self._t.rows.get(entry_id), generation):
                raise LeaseLost(entry_id)
        row = self._row_in(entry_id, (EntryState.QUEUED, EntryState.LEASED))
        row.state = EntryState.DEAD
        row.leased_until = None
        row.dead_reason = reason
        row.last_error = reason
        row.history.append(Attempt(now, reason, False))
        destination = self._destination(row.destination)
        destination.last_error = reason
        destination.last_error_at = now

    def renew(self, generations: Mapping[int, int], now: float, lease_seconds: float) -> set[int]:
        """Extend the leases still held under their generation; return the lost ids (see the interface)."""
        lost: set[int] = set()
        for entry_id, generation in generations.items():
            row = self._t.rows.get(entry_id)
            if not self._held(row, generation):
                lost.add(entry_id)
                continue
            assert row is not None
            row.leased_until = now + lease_seconds
        return lost

    # -- several nodes ----------------------------------------------------------

    def claim_slot(self, destination: str, slot: int, slots: int, now: float, seconds: float) -> bool:
        """Claim or renew association slot ``slot`` unless another node holds it live (see the interface).

        :raises ValueError: not ``0 <= slot < slots``.
        """
        check_slot(slot, slots)
        if self._shard_leased_elsewhere(destination, slot, slots, now):
            return False
        return self._claim(self._t.slots, (destination, slot), now, seconds)

    def _shard_leased_elsewhere(self, destination: str, slot: int, slots: int, now: float) -> bool:
        """Whether another node holds a live lease on an entry of shard ``slot`` (the slot's previous holder's batch)."""
        return any(
            row.destination == destination and row.state is EntryState.LEASED and row.lease_owner != self.node
            and row.leased_until is not None and row.leased_until >= now and row.study_hash % slots == slot
            for row in self._t.rows.values()
        )

    def _claim(self, table: dict[_K, tuple[str, float]], key: _K, now: float, seconds: float) -> bool:
        """Take or keep a timed claim (a slot, a singleton): free, expired (``until < now``) or already ours."""
        held = table.get(key)
        if held is not None and held[0] != self.node and held[1] >= now:
            return False
        table[key] = (self.node, now + seconds)
        return True

    def release_slot(self, destination: str, slot: int) -> None:
        """Give up this node's claim on a slot; another node's is left alone (see the interface)."""
        held = self._t.slots.get((destination, slot))
        if held is not None and held[0] == self.node:
            del self._t.slots[(destination, slot)]

    def circuit(self, destination: str) -> tuple[bool, str, float | None]:
        """The circuit as last recorded by any node (see the interface)."""
        d = self._t.destinations.get(destination, _Destination())
        return d.circuit_open, d.circuit_reason, d.circuit_since

    def heartbeat(self, now: float, started_at: float, detail: str = "") -> None:
        """Record that this node is alive (see the interface)."""
        self._t.nodes[self.node] = _Node(started_at, now, detail)

    def nodes(self, now: float) -> list[NodeStatus]:
        """Every node that sent a heartbeat, by name, with the live leases and slots it holds (see the interface)."""
        leases: dict[str, int] = {}
        for row in self._t.rows.values():
            if row.state is EntryState.LEASED and row.leased_until is not None and row.leased_until >= now:
                leases[row.lease_owner] = leases.get(row.lease_owner, 0) + 1
        slots: dict[str, int] = {}
        for owner, until in self._t.slots.values():
            if until >= now:
                slots[owner] = slots.get(owner, 0) + 1
        return [
            NodeStatus(name, n.started_at, n.last_seen, leases.get(name, 0), slots.get(name, 0), n.detail)
            for name, n in sorted(self._t.nodes.items())
        ]

    def hold_singleton(self, name: str, now: float, seconds: float) -> bool:
        """Take or keep the named once-only job: a lease of ``seconds`` renewed by each call (see the interface)."""
        return self._claim(self._t.singletons, name, now, seconds)

    # -- operator actions -------------------------------------------------------

    def expire(self, destination: str, enqueued_before: float, reason: str, now: float, limit: int = 1000) -> list[Entry]:
        """Dead-letter old QUEUED entries of ``destination`` (see the interface)."""
        rows = sorted(
            (r for r in self._t.rows.values()
             if r.destination == destination and r.state is EntryState.QUEUED and r.enqueued_at < enqueued_before),
            key=lambda r: r.entry_id,
        )[:limit]
        for row in rows:
            self.dead_letter(row.entry_id, reason, now)
        return [self._entry(row) for row in rows]

    def requeue_dead(self, entry_id: int, now: float, destination: str | None = None) -> int:
        """Operator retry of a DEAD entry: a new id at the tail (see the interface)."""
        row = self._row_in(entry_id, (EntryState.DEAD,))
        del self._t.rows[entry_id]
        target = row.destination if destination is None else destination
        return self._insert(
            row.instance_id, row.route, target, row.path, EntryState.QUEUED, now, row.study_hash, row.history,
            row.plan_hash,
        )

    def requeue_instance(
        self, instance_id: str, destination: str, route: str, now: float, plan: PlanRecord | None = None
    ) -> int:
        """Operator replay: a new QUEUED entry (see the interface).

        :raises KeyError: no such instance.
        """
        record = self._t.instances[instance_id]
        return self._insert(
            instance_id, route, destination, None, EntryState.QUEUED, now, study_hash(record.study_instance_uid),
            plan_hash=self._keep_plan(plan),
        )

    def plan(self, plan_hash: str) -> str:
        """The definition of a journaled plan (see the interface).

        :raises KeyError: no plan with that hash.
        """
        return self._t.plans[plan_hash]

    def adopt_plans(self, plans: Mapping[str, PlanRecord]) -> int:
        """Give entries without a plan their route's plan, when given (see the interface)."""
        adopted = 0
        for row in self._t.rows.values():
            plan = plans.get(row.route)
            if row.plan_hash is None and plan is not None and row.state in _OPEN:
                row.plan_hash = self._keep_plan(plan)
                adopted += 1
        return adopted

    def purge(self, entry_id: int) -> None:
        """Delete a DEAD entry for good (see the interface)."""
        self._row_in(entry_id, (EntryState.DEAD,))
        del self._t.rows[entry_id]
        self._drop_copies((entry_id,))

    def set_paused(self, destination: str, paused: bool) -> None:
        """Hold (or release) a destination (see the interface)."""
        self._destination(destination).paused = paused

    def set_circuit(self, destination: str, circuit_open: bool, reason: str, now: float) -> None:
        """Record a destination's circuit state (see the interface)."""
        d = self._destination(destination)
        d.circuit_open, d.circuit_reason, d.circuit_since = circuit_open, (reason if circuit_open else ""), now

    # -- reading ------------------------------------------------------------------

    def get(self, entry_id: int) -> Entry:
        """One entry with its history (see the interface)."""
        return self._entry(self._t.rows[entry_id])

    def entries(self, destination: str | None = None, state: EntryState | None = None, limit: int = 1000) -> list[Entry]:
        """Entries filtered by destination and state, oldest first (see the interface)."""
        result: list[Entry] = []
        for row in self._t.rows.values():
            if len(result) >= max(limit, 0):
                break
            if (destination is None or row.destination == destination) and (state is None or row.state is state):
                result.append(self._entry(row))
        return result

    def find(
        self,
        study_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
        patient_id: str | None = None,
        accession_number: str | None = None,
    ) -> list[tuple[InstanceRecord, list[Entry]]]:
        """Instances matching every given criterion, oldest received first (see the interface)."""
        criteria = {
            "study_instance_uid": study_instance_uid,
            "sop_instance_uid": sop_instance_uid,
            "patient_id": patient_id,
            "accession_number": accession_number,
        }
        given = {name: value for name, value in criteria.items() if value is not None}
        records = sorted(
            (r for r in self._t.instances.values() if all(getattr(r, name) == value for name, value in given.items())),
            key=lambda r: (r.received_at, r.instance_id),
        )
        return [(r, [self._entry(row) for row in self._t.rows.values() if row.instance_id == r.instance_id]) for r in records]

    def stats(self, now: float, stranded_after: float = 120.0) -> Mapping[str, DestinationStats]:
        """Figures per destination with entries or a destinations row (see the interface)."""
        counts: dict[str, dict[EntryState, int]] = {}
        oldest: dict[str, float] = {}
        stranded: dict[str, int] = {}
        absent = self._absent_nodes(now, stranded_after) if self.local_only else None
        for row in self._t.rows.values():
            by_state = counts.setdefault(row.destination, {})
            by_state[row.state] = by_state.get(row.state, 0) + 1
            if row.state in (EntryState.QUEUED, EntryState.LEASED):
                oldest[row.destination] = min(oldest.get(row.destination, row.enqueued_at), row.enqueued_at)
            if absent is not None and row.state is EntryState.QUEUED:
                if absent(self._t.instances[row.instance_id].node):
                    stranded[row.destination] = stranded.get(row.destination, 0) + 1
        result: dict[str, DestinationStats] = {}
        for name in sorted(set(counts) | set(self._t.destinations)):
            by_state = counts.get(name, {})
            d = self._t.destinations.get(name, _Destination())
            result[name] = DestinationStats(
                destination=name,
                queued=by_state.get(EntryState.QUEUED, 0),
                in_flight=by_state.get(EntryState.LEASED, 0),
                dead=by_state.get(EntryState.DEAD, 0),
                delivered=by_state.get(EntryState.DELIVERED, 0),
                duplicates=by_state.get(EntryState.DUPLICATE, 0),
                oldest_queued_at=oldest.get(name),
                last_error=d.last_error,
                last_error_at=d.last_error_at,
                last_success_at=d.last_success_at,
                paused=d.paused,
                circuit_open=d.circuit_open,
                circuit_reason=d.circuit_reason,
                circuit_since=d.circuit_since,
                stranded=stranded.get(name, 0),
            )
        return result

    def _absent_nodes(self, now: float, stranded_after: float) -> _Absent:
        """A test: is a node other than this one without a heartbeat for ``stranded_after`` seconds (or ever)?"""
        nodes = self._t.nodes

        def absent(node: str) -> bool:
            seen = nodes.get(node)
            return node != self.node and (seen is None or seen.last_seen < now - stranded_after)

        return absent

    def next_due(self, destination: str) -> float | None:
        """The earliest due time of a QUEUED entry, or None (see the interface)."""
        times = [r.next_attempt_at for r in self._t.rows.values() if r.destination == destination and r.state is EntryState.QUEUED]
        return min(times) if times else None

    def shift_schedule(self, destination: str, after: float, delta: float, latest: float | None = None) -> int:
        """Move due times after a wall-clock step, then cap them (see the interface)."""
        changed = 0
        for row in self._t.rows.values():
            if row.destination != destination or row.state is not EntryState.QUEUED:
                continue
            if delta and row.next_attempt_at > after:
                row.next_attempt_at += delta
                changed += 1
            if latest is not None and row.next_attempt_at > latest:
                row.next_attempt_at = latest
                changed += 1
        return changed

    # -- lifecycle ------------------------------------------------------------------

    def recover(self, now: float) -> int:
        """This node's LEASED entries (and owner-less ones) back to QUEUED (see the interface)."""
        mine = [
            row for row in self._t.rows.values()
            if row.state is EntryState.LEASED and row.lease_owner in (self.node, "")
        ]
        first: dict[tuple[str, str, float | None], list[_Row]] = {}
        for row in mine:  # id order
            group = first.setdefault((row.destination, row.lease_owner, row.leased_until), [])
            if len(group) <= UNRECORDED_DELIVERIES:
                group.append(row)
        for row in (row for group in first.values() for row in group):
            row.last_error = RECOVERED_IN_FLIGHT
            row.history.append(Attempt(now, RECOVERED_IN_FLIGHT, False))
        for row in mine:
            row.state = EntryState.QUEUED
            row.leased_until = None
        return len(mine)

    def finished_instances(
        self, older_than: float, limit: int = 1000, has_file: bool | None = None
    ) -> list[InstanceRecord]:
        """Instances whose files may go (see the interface)."""
        open_ids = {row.instance_id for row in self._t.rows.values() if row.state in _OPEN}
        finished = sorted(
            (
                r
                for r in self._t.instances.values()
                if self._age_mark(r) < older_than
                and r.instance_id not in open_ids
                and (has_file is None or bool(r.path) == has_file)
            ),
            key=lambda r: (r.received_at, r.instance_id),
        )
        return finished[: max(limit, 0)]

    def _age_mark(self, record: InstanceRecord) -> float:
        """The last delivery time of an instance's entries, or its reception time."""
        delivered = [
            row.delivered_at
            for row in self._t.rows.values()
            if row.instance_id == record.instance_id and row.delivered_at is not None
        ]
        return max(delivered) if delivered else record.received_at

    def file_removed(self, instance_id: str) -> None:
        """Clear an instance's path once its file is deleted; unknown ids are ignored (see the interface)."""
        record = self._t.instances.get(instance_id)
        if record is not None:
            self._t.instances[instance_id] = replace(record, path="")

    def forget_instance(self, instance_id: str) -> None:
        """Delete an instance and its entries; unknown ids are ignored (see the interface)."""
        doomed = [row.entry_id for row in self._t.rows.values() if row.instance_id == instance_id]
        for entry_id in doomed:
            del self._t.rows[entry_id]
        self._drop_copies(doomed)
        self._t.instances.pop(instance_id, None)

    def instance_ids(self) -> set[str]:
        """Every instance id on record (see the interface)."""
        return set(self._t.instances)

    def close(self) -> None:
        """Nothing to release."""
