"""An in-memory :class:`~gateway.queue.interfaces.IQueueStore`: the verified fake.

The forwarder's unit tests run against this store; the same
``QueueStoreTests`` mixin runs against it and against
:class:`~gateway.queue.sqlite.SqliteQueueStore`, so its behaviour is the
real store's (Buildbot's verified fakes). The conventions it shares with the
SQLite store (what ``attempts`` counts, what ``dead_letter`` writes to the
history, new ids on ``requeue_dead``, which calls skip or raise on an entry
in the wrong state) are listed in :mod:`gateway.queue.sqlite`.

Every method either completes or raises before changing anything, which is
this store's version of "one transaction".
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

from zope.interface import implementer

from gateway.queue.interfaces import (
    AddResult,
    Attempt,
    DestinationStats,
    Entry,
    EntryState,
    InstanceRecord,
    IQueueStore,
    NewEntry,
    PlanRecord,
    RECOVERED_IN_FLIGHT,
    Settled,
    UNRECORDED_DELIVERIES,
)
from gateway.queue.sqlite import check_shard, study_hash

__all__ = ["MemoryQueueStore"]

_OPEN = (EntryState.QUEUED, EntryState.LEASED, EntryState.DEAD)


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


@implementer(IQueueStore)
class MemoryQueueStore:
    """The queue in dicts: same behaviour as the SQLite store, nothing durable."""

    def __init__(self) -> None:
        self._instances: dict[str, InstanceRecord] = {}
        # Insertion order is id order: ids only grow, so iteration is oldest first.
        self._rows: dict[int, _Row] = {}
        self._destinations: dict[str, _Destination] = {}
        # Each distinct plan once, by hash (the SQLite ``plans`` table).
        self._plans: dict[str, str] = {}
        self._next_id = 1

    def _entry(self, row: _Row) -> Entry:
        """The frozen view of one row."""
        instance = self._instances[row.instance_id]
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
        entry_id = self._next_id
        self._next_id += 1
        self._rows[entry_id] = _Row(
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
        self._plans.setdefault(plan.plan_hash, plan.definition)
        return plan.plan_hash

    def _destination(self, name: str) -> _Destination:
        """The destination's row, created if absent."""
        return self._destinations.setdefault(name, _Destination())

    def _row_in(self, entry_id: int, states: Sequence[EntryState]) -> _Row:
        """The row of ``entry_id`` if it is in one of ``states``.

        :raises KeyError: no such entry, or it is in another state.
        """
        row = self._rows.get(entry_id)
        if row is None or row.state not in states:
            raise KeyError(entry_id)
        return row

    def add_instance(self, record: InstanceRecord, entries: Sequence[NewEntry], now: float, duplicate_window: float) -> AddResult:
        """Record a received instance and its entries (see the interface).

        :raises ValueError: an instance with this id is already recorded.
        """
        if record.instance_id in self._instances:
            raise ValueError(f"instance {record.instance_id!r} is already recorded")
        already: set[str] = set()
        if duplicate_window > 0:
            # HARDENING decision 5: same UID and bytes, forwarded within the window.
            for row in self._rows.values():
                other = self._instances[row.instance_id]
                if (
                    other.sop_instance_uid == record.sop_instance_uid
                    and other.sha256 == record.sha256
                    and row.state not in (EntryState.DEAD, EntryState.DUPLICATE)
                    and row.enqueued_at >= now - duplicate_window
                ):
                    already.add(row.destination)
        self._instances[record.instance_id] = record
        hash_ = study_hash(record.study_instance_uid)
        ids: list[int] = []
        duplicates: list[str] = []
        for new in entries:
            state = EntryState.DUPLICATE if new.destination in already else EntryState.QUEUED
            if state is EntryState.DUPLICATE:
                duplicates.append(new.destination)
            ids.append(
                self._insert(
                    record.instance_id, new.route, new.destination, new.path, state, now, hash_,
                    plan_hash=self._keep_plan(new.plan),
                )
            )
        return AddResult(entry_ids=tuple(ids), duplicates=tuple(duplicates))

    def add_instances(
        self, batch: Sequence[tuple[InstanceRecord, Sequence[NewEntry]]], now: float, duplicate_window: float
    ) -> list[AddResult]:
        """Several instances, all or nothing (see the interface).

        :raises ValueError: an instance id is already recorded, or repeated in the batch.
        """
        ids = [record.instance_id for record, _ in batch]
        if len(set(ids)) != len(ids) or any(i in self._instances for i in ids):
            raise ValueError("an instance of the batch is already recorded")
        return [self.add_instance(record, entries, now, duplicate_window) for record, entries in batch]

    def lease(self, destination: str, limit: int, now: float, lease_seconds: float, shard: tuple[int, int] | None = None) -> list[Entry]:
        """Take up to ``limit`` due QUEUED entries, oldest first (see the interface)."""
        check_shard(shard)
        if limit <= 0 or self._destination_paused(destination):
            return []
        taken: list[_Row] = []
        for row in self._rows.values():
            if len(taken) >= limit:
                break
            if row.destination != destination or row.state is not EntryState.QUEUED or row.next_attempt_at > now:
                continue
            if shard is not None and row.study_hash % shard[1] != shard[0]:
                continue
            taken.append(row)
        for row in taken:
            row.state = EntryState.LEASED
            row.leased_until = now + lease_seconds
        return [self._entry(row) for row in taken]

    def _destination_paused(self, name: str) -> bool:
        """Whether ``name`` is paused (without creating its row)."""
        row = self._destinations.get(name)
        return row is not None and row.paused

    def complete(self, entry_ids: Sequence[int], now: float, warning: str = "") -> None:
        """Mark LEASED entries DELIVERED; others are skipped (see the interface)."""
        for entry_id in entry_ids:
            row = self._rows.get(entry_id)
            if row is None or row.state is not EntryState.LEASED:
                continue
            row.state = EntryState.DELIVERED
            row.delivered_at = now
            row.last_error = warning
            row.leased_until = None
            self._destination(row.destination).last_success_at = now

    def settle(
        self,
        destination: str,
        delivered: Sequence[tuple[int, str]],
        now: float,
        limit: int,
        lease_seconds: float,
        shard: tuple[int, int] | None = None,
    ) -> Settled:
        """Record deliveries, then lease; with nothing leased, say when the next entry is due (see the interface)."""
        check_shard(shard)
        for entry_id, warning in delivered:
            self.complete([entry_id], now, warning)
        if limit <= 0:
            return Settled()
        leased = self.lease(destination, limit, now, lease_seconds, shard)
        if leased:
            return Settled(tuple(leased))
        return Settled((), self.next_due(destination))

    def retry(self, entry_id: int, next_attempt_at: float, error: str, now: float, counted: bool = True) -> None:
        """Return a LEASED entry to QUEUED, recording the attempt (see the interface).

        :raises KeyError: no such entry, or it is not LEASED.
        """
        row = self._row_in(entry_id, (EntryState.LEASED,))
        row.state = EntryState.QUEUED
        row.leased_until = None
        row.next_attempt_at = next_attempt_at
        row.last_error = error
        row.attempts += 1 if counted else 0
        row.history.append(Attempt(now, error, counted))
        destination = self._destination(row.destination)
        destination.last_error = error
        destination.last_error_at = now

    def release(self, entry_ids: Sequence[int]) -> None:
        """Return LEASED entries to QUEUED unchanged; others are skipped (see the interface)."""
        for entry_id in entry_ids:
            row = self._rows.get(entry_id)
            if row is not None and row.state is EntryState.LEASED:
                row.state = EntryState.QUEUED
                row.leased_until = None

    def dead_letter(self, entry_id: int, reason: str, now: float) -> None:
        """Move a QUEUED or LEASED entry to DEAD (see the interface).

        :raises KeyError: no such entry, or it is not QUEUED or LEASED.
        """
        row = self._row_in(entry_id, (EntryState.QUEUED, EntryState.LEASED))
        row.state = EntryState.DEAD
        row.leased_until = None
        row.dead_reason = reason
        row.last_error = reason
        row.history.append(Attempt(now, reason, False))
        destination = self._destination(row.destination)
        destination.last_error = reason
        destination.last_error_at = now

    def expire(self, destination: str, enqueued_before: float, reason: str, now: float, limit: int = 1000) -> list[Entry]:
        """Dead-letter old QUEUED entries of ``destination`` (see the interface)."""
        rows = sorted(
            (r for r in self._rows.values()
             if r.destination == destination and r.state is EntryState.QUEUED and r.enqueued_at < enqueued_before),
            key=lambda r: r.entry_id,
        )[:limit]
        for row in rows:
            self.dead_letter(row.entry_id, reason, now)
        return [self._entry(row) for row in rows]

    def requeue_dead(self, entry_id: int, now: float, destination: str | None = None) -> int:
        """Operator retry of a DEAD entry: a new id at the tail (see the interface)."""
        row = self._row_in(entry_id, (EntryState.DEAD,))
        del self._rows[entry_id]
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
        record = self._instances[instance_id]
        return self._insert(
            instance_id, route, destination, None, EntryState.QUEUED, now, study_hash(record.study_instance_uid),
            plan_hash=self._keep_plan(plan),
        )

    def plan(self, plan_hash: str) -> str:
        """The definition of a journaled plan (see the interface).

        :raises KeyError: no plan with that hash.
        """
        return self._plans[plan_hash]

    def adopt_plans(self, plans: Mapping[str, PlanRecord]) -> int:
        """Give entries without a plan their route's plan, when given (see the interface)."""
        adopted = 0
        for row in self._rows.values():
            plan = plans.get(row.route)
            if row.plan_hash is None and plan is not None and row.state in _OPEN:
                row.plan_hash = self._keep_plan(plan)
                adopted += 1
        return adopted

    def purge(self, entry_id: int) -> None:
        """Delete a DEAD entry for good (see the interface)."""
        self._row_in(entry_id, (EntryState.DEAD,))
        del self._rows[entry_id]

    def set_paused(self, destination: str, paused: bool) -> None:
        """Hold (or release) a destination (see the interface)."""
        self._destination(destination).paused = paused

    def set_circuit(self, destination: str, circuit_open: bool, reason: str, now: float) -> None:
        """Record a destination's circuit state (see the interface)."""
        d = self._destination(destination)
        d.circuit_open, d.circuit_reason, d.circuit_since = circuit_open, (reason if circuit_open else ""), now

    def get(self, entry_id: int) -> Entry:
        """One entry with its history (see the interface)."""
        return self._entry(self._rows[entry_id])

    def entries(self, destination: str | None = None, state: EntryState | None = None, limit: int = 1000) -> list[Entry]:
        """Entries filtered by destination and state, oldest first (see the interface)."""
        result: list[Entry] = []
        for row in self._rows.values():
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
            (r for r in self._instances.values() if all(getattr(r, name) == value for name, value in given.items())),
            key=lambda r: (r.received_at, r.instance_id),
        )
        return [(r, [self._entry(row) for row in self._rows.values() if row.instance_id == r.instance_id]) for r in records]

    def stats(self, now: float) -> Mapping[str, DestinationStats]:
        """Figures per destination with entries or a destinations row (see the interface)."""
        counts: dict[str, dict[EntryState, int]] = {}
        oldest: dict[str, float] = {}
        for row in self._rows.values():
            by_state = counts.setdefault(row.destination, {})
            by_state[row.state] = by_state.get(row.state, 0) + 1
            if row.state in (EntryState.QUEUED, EntryState.LEASED):
                oldest[row.destination] = min(oldest.get(row.destination, row.enqueued_at), row.enqueued_at)
        result: dict[str, DestinationStats] = {}
        for name in sorted(set(counts) | set(self._destinations)):
            by_state = counts.get(name, {})
            d = self._destinations.get(name, _Destination())
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
            )
        return result

    def next_due(self, destination: str) -> float | None:
        """The earliest due time of a QUEUED entry, or None (see the interface)."""
        times = [r.next_attempt_at for r in self._rows.values() if r.destination == destination and r.state is EntryState.QUEUED]
        return min(times) if times else None

    def shift_schedule(self, destination: str, after: float, delta: float, latest: float | None = None) -> int:
        """Move due times after a wall-clock step, then cap them (see the interface)."""
        changed = 0
        for row in self._rows.values():
            if row.destination != destination or row.state is not EntryState.QUEUED:
                continue
            if delta and row.next_attempt_at > after:
                row.next_attempt_at += delta
                changed += 1
            if latest is not None and row.next_attempt_at > latest:
                row.next_attempt_at = latest
                changed += 1
        return changed

    def recover(self, now: float) -> int:
        """Every LEASED entry back to QUEUED (see the interface)."""
        count = 0
        first: dict[tuple[str, float | None], list[_Row]] = {}
        for row in sorted(self._rows.values(), key=lambda r: r.entry_id):
            if row.state is EntryState.LEASED:
                group = first.setdefault((row.destination, row.leased_until), [])
                if len(group) <= UNRECORDED_DELIVERIES:
                    group.append(row)
        for row in (row for group in first.values() for row in group):
            row.last_error = RECOVERED_IN_FLIGHT
            row.history.append(Attempt(now, RECOVERED_IN_FLIGHT, False))
        for row in self._rows.values():
            if row.state is EntryState.LEASED:
                row.state = EntryState.QUEUED
                row.leased_until = None
                count += 1
        return count

    def finished_instances(
        self, older_than: float, limit: int = 1000, has_file: bool | None = None
    ) -> list[InstanceRecord]:
        """Instances whose files may go (see the interface)."""
        open_ids = {row.instance_id for row in self._rows.values() if row.state in _OPEN}
        finished = sorted(
            (
                r
                for r in self._instances.values()
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
            for row in self._rows.values()
            if row.instance_id == record.instance_id and row.delivered_at is not None
        ]
        return max(delivered) if delivered else record.received_at

    def file_removed(self, instance_id: str) -> None:
        """Clear an instance's path once its file is deleted; unknown ids are ignored (see the interface)."""
        record = self._instances.get(instance_id)
        if record is not None:
            self._instances[instance_id] = replace(record, path="")

    def forget_instance(self, instance_id: str) -> None:
        """Delete an instance and its entries; unknown ids are ignored (see the interface)."""
        for entry_id in [row.entry_id for row in self._rows.values() if row.instance_id == instance_id]:
            del self._rows[entry_id]
        self._instances.pop(instance_id, None)

    def instance_ids(self) -> set[str]:
        """Every instance id on record (see the interface)."""
        return set(self._instances)

    def close(self) -> None:
        """Nothing to release."""

