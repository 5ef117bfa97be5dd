"""The in-memory :class:`~gateway.queue.commitments.ICommitmentJournal`: the verified fake's half for issue 15.

:class:`~gateway.queue.memory.MemoryQueueStore` inherits
:class:`MemoryCommitmentJournal`; the ``CommitmentJournalTests`` mixin runs
against it, the SQLite store and the PostgreSQL store, so the engine's unit
tests (which run on this fake) see the durable stores' behaviour.

The conventions the three stores share (the mixin pins each one):

* A transaction is *held* under a generation while it is OPEN, has a lease
  (``leased_until`` set; an expired lease nobody took back still counts, as
  for entries) and its ``lease_generation`` is that generation. Every
  fenced write checks it first and raises
  :class:`~gateway.queue.interfaces.LeaseLost` (a :class:`KeyError`),
  changing nothing; an unknown Transaction UID is lost too.
* Ending a lease (``defer``, ``reported``, ``dead``) clears ``leased_until``
  and keeps ``lease_owner`` and ``lease_generation`` (the last holder).
* ``transaction_dead`` appends ``Attempt(now, reason, counted=False)`` to
  the history (as ``dead_letter`` does for entries), so the reason survives
  ``requeue_transaction``, which clears ``dead_reason``, keeps the decided
  report and sets the request's ``report_deadline`` to the one given.
* ``lease_transactions`` orders by ``next_attempt_at``, then by request
  order; ``transactions`` lists newest request first (``requested_at``,
  then request order); ``received`` lists a UID's records by
  ``received_at``, journaled instances before notes at the same time, then
  by instance id (notes: in the order noted); an instance's entries and
  copies are in entry id order.
* ``overdue`` counts OPEN transactions with ``deadline < now``.
* ``copies_requested`` leaves COMMITTED copies (and copies of another
  destination, or unknown ids) alone. ``copies_answered`` applies to every
  copy of the request's destination with that SOP Instance UID (whichever
  Transaction UID last named it): ``committed`` makes any other state
  COMMITTED; ``failed`` makes PENDING or REQUESTED ones FAILED; a UID in
  both lists is committed. A copy counts once in the result.
* ``note_copies`` of a FAILED copy makes it PENDING with ``noted_at = now``
  and no failure reason; ``pending_copies`` is ordered by ``noted_at``,
  then entry id.
* ``forget_instance`` and ``purge`` drop the copy commitments of the
  entries they delete; notes and transactions are never deleted by the
  queue's housekeeping.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Collection, Mapping, Sequence

from gateway.queue.commitments import (
    CopyCommitment,
    CopyState,
    NewTransaction,
    ReceivedInstance,
    Transaction,
    TransactionConflict,
    TransactionState,
    TransactionStats,
    Unforwarded,
)
from gateway.queue.interfaces import Attempt, Entry, LeaseLost

if TYPE_CHECKING:
    from gateway.queue.memory import _Row, _Tables

__all__ = ["MemoryCommitmentJournal", "CommitmentTables", "reference_set"]


def reference_set(new: NewTransaction) -> frozenset[tuple[str, str]]:
    """The references of a request as a set (order and repeats ignored): what makes two N-ACTIONs the same."""
    return frozenset((r.sop_class_uid, r.sop_instance_uid) for r in new.references)


@dataclass
class _Txn:
    """One mutable transactions row."""

    seq: int
    request: NewTransaction
    requested_at: float
    node: str
    state: TransactionState = TransactionState.OPEN
    report: str = ""
    decided_at: float | None = None
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str = ""
    reported_at: float | None = None
    dead_reason: str = ""
    history: list[Attempt] = field(default_factory=list)
    lease_owner: str = ""
    lease_generation: int = 0
    leased_until: float | None = None

    def frozen(self) -> Transaction:
        """The frozen view of this row."""
        return Transaction(
            request=self.request,
            requested_at=self.requested_at,
            node=self.node,
            state=self.state,
            report=self.report,
            decided_at=self.decided_at,
            attempts=self.attempts,
            next_attempt_at=self.next_attempt_at,
            last_error=self.last_error,
            reported_at=self.reported_at,
            dead_reason=self.dead_reason,
            history=tuple(self.history),
            lease_owner=self.lease_owner,
            lease_generation=self.lease_generation,
            leased_until=self.leased_until,
        )


@dataclass
class _Copy:
    """One mutable copy commitments row (keyed by entry id)."""

    entry_id: int
    destination: str
    sop_class_uid: str
    sop_instance_uid: str
    state: CopyState
    noted_at: float
    transaction_uid: str = ""
    requested_at: float | None = None
    answered_at: float | None = None
    requests: int = 0
    failure_reason: int = 0

    def frozen(self) -> CopyCommitment:
        """The frozen view of this row."""
        return CopyCommitment(
            entry_id=self.entry_id,
            destination=self.destination,
            sop_class_uid=self.sop_class_uid,
            sop_instance_uid=self.sop_instance_uid,
            state=self.state,
            noted_at=self.noted_at,
            transaction_uid=self.transaction_uid,
            requested_at=self.requested_at,
            answered_at=self.answered_at,
            requests=self.requests,
            failure_reason=self.failure_reason,
        )


@dataclass
class CommitmentTables:
    """The commitment tables every node's store object shares (part of the memory store's ``_Tables``)."""

    transactions: dict[str, _Txn] = field(default_factory=dict)
    next_seq: int = 1
    # Notes in the order noted (the SQL stores' autoincrement id).
    unforwarded: list[Unforwarded] = field(default_factory=list)
    copies: dict[int, _Copy] = field(default_factory=dict)
    # Outbound N-ACTIONs: Transaction UID -> destination asked.
    requests: dict[str, str] = field(default_factory=dict)


class MemoryCommitmentJournal:
    """ICommitmentJournal in dicts (mixed into :class:`~gateway.queue.memory.MemoryQueueStore`).

    Every method completes or raises before changing anything (one
    transaction); the fake has no threads, so two nodes never interleave.
    """

    node: str
    _t: _Tables

    @property
    def _c(self) -> CommitmentTables:
        """The commitment tables."""
        return self._t.commitments

    def _txn_held(self, transaction_uid: str, generation: int) -> _Txn:
        """The row of a transaction this caller still holds under ``generation``.

        :raises LeaseLost: unknown, not OPEN, not leased, or leased under another generation.
        """
        row = self._c.transactions.get(transaction_uid)
        if (
            row is None
            or row.state is not TransactionState.OPEN
            or row.leased_until is None
            or row.lease_generation != generation
        ):
            raise LeaseLost(transaction_uid)
        return row

    # -- transactions ---------------------------------------------------------------

    def add_transaction(self, new: NewTransaction, now: float) -> tuple[Transaction, bool]:
        """Journal an accepted N-ACTION, or return the one on record (see the interface).

        :raises TransactionConflict: the UID is on record with other references (PS3.3 C.14.1.1).
        """
        row = self._c.transactions.get(new.transaction_uid)
        if row is not None:
            if reference_set(row.request) != reference_set(new):
                raise TransactionConflict(new.transaction_uid)
            return row.frozen(), False
        row = _Txn(seq=self._c.next_seq, request=new, requested_at=now, node=self.node, next_attempt_at=now)
        self._c.next_seq += 1
        self._c.transactions[new.transaction_uid] = row
        return row.frozen(), True

    def lease_transactions(self, now: float, limit: int, lease_seconds: float) -> list[Transaction]:
        """Lease due OPEN transactions without a live lease, earliest due first (see the interface)."""
        if limit <= 0:
            return []
        due = sorted(
            (
                row
                for row in self._c.transactions.values()
                if row.state is TransactionState.OPEN
                and row.next_attempt_at <= now
                and (row.leased_until is None or row.leased_until < now)
            ),
            key=lambda row: (row.next_attempt_at, row.seq),
        )[:limit]
        for row in due:
            row.lease_owner = self.node
            row.lease_generation += 1
            row.leased_until = now + lease_seconds
        return [row.frozen() for row in due]

    def renew_transactions(self, generations: Mapping[str, int], now: float, lease_seconds: float) -> set[str]:
        """Extend the leases still held; return the UIDs lost (see the interface)."""
        lost: set[str] = set()
        for uid, generation in generations.items():
            try:
                row = self._txn_held(uid, generation)
            except LeaseLost:
                lost.add(uid)
                continue
            row.leased_until = now + lease_seconds
        return lost

    def decide_transaction(self, transaction_uid: str, report: str, now: float, generation: int) -> str:
        """Record the report once; return the one on record (see the interface). :raises LeaseLost:"""
        row = self._txn_held(transaction_uid, generation)
        if not row.report:
            row.report = report
            row.decided_at = now
        return row.report

    def defer_transaction(
        self,
        transaction_uid: str,
        next_attempt_at: float,
        now: float,
        generation: int,
        error: str = "",
        counted: bool = False,
    ) -> None:
        """End the lease, stay OPEN until ``next_attempt_at`` (see the interface). :raises LeaseLost:"""
        row = self._txn_held(transaction_uid, generation)
        row.next_attempt_at = next_attempt_at
        row.leased_until = None
        row.last_error = error
        if counted:
            row.attempts += 1
            row.history.append(Attempt(now, error, True))

    def transaction_reported(self, transaction_uid: str, now: float, generation: int) -> None:
        """The report was acknowledged: REPORTED (see the interface). :raises LeaseLost:"""
        row = self._txn_held(transaction_uid, generation)
        row.state = TransactionState.REPORTED
        row.reported_at = now
        row.leased_until = None

    def transaction_dead(self, transaction_uid: str, reason: str, now: float, generation: int) -> None:
        """``report_deadline`` passed: DEAD (see the interface). :raises LeaseLost:"""
        row = self._txn_held(transaction_uid, generation)
        row.state = TransactionState.DEAD
        row.dead_reason = reason
        row.leased_until = None
        row.history.append(Attempt(now, reason, False))

    def requeue_transaction(self, transaction_uid: str, now: float, report_deadline: float) -> Transaction:
        """Operator retry of a DEAD transaction (see the interface). :raises KeyError:"""
        row = self._c.transactions.get(transaction_uid)
        if row is None or row.state is not TransactionState.DEAD:
            raise KeyError(transaction_uid)
        row.state = TransactionState.OPEN
        row.next_attempt_at = now
        row.attempts = 0
        row.dead_reason = ""
        row.leased_until = None
        row.request = replace(row.request, report_deadline=report_deadline)
        return row.frozen()

    def get_transaction(self, transaction_uid: str) -> Transaction:
        """One transaction (see the interface). :raises KeyError:"""
        return self._c.transactions[transaction_uid].frozen()

    def transactions(self, state: TransactionState | None = None, limit: int = 1000) -> list[Transaction]:
        """Transactions, newest request first (see the interface)."""
        rows = sorted(
            (row for row in self._c.transactions.values() if state is None or row.state is state),
            key=lambda row: (row.requested_at, row.seq),
            reverse=True,
        )
        return [row.frozen() for row in rows[: max(limit, 0)]]

    def transaction_stats(self, now: float) -> TransactionStats:
        """Open, decided, overdue, dead and reported counts, and the oldest open request (see the interface)."""
        rows = list(self._c.transactions.values())
        open_rows = [row for row in rows if row.state is TransactionState.OPEN]
        return TransactionStats(
            open=len(open_rows),
            decided=sum(1 for row in open_rows if row.report),
            overdue=sum(1 for row in open_rows if row.request.deadline < now),
            dead=sum(1 for row in rows if row.state is TransactionState.DEAD),
            reported=sum(1 for row in rows if row.state is TransactionState.REPORTED),
            oldest_open_at=min((row.requested_at for row in open_rows), default=None),
        )

    # -- what was received ------------------------------------------------------------

    def note_unforwarded(self, items: Sequence[Unforwarded], now: float) -> None:
        """Record instances acknowledged and sent nowhere (see the interface)."""
        self._c.unforwarded.extend(items)

    def received(self, sop_instance_uids: Collection[str], since: float) -> Mapping[str, list[ReceivedInstance]]:
        """What was received under each UID at or after ``since`` (see the interface)."""
        wanted = set(sop_instance_uids)
        found: dict[str, list[tuple[tuple[float, int, str, int], ReceivedInstance]]] = {}
        by_instance: dict[str, list[_Row]] = {}
        for row in self._t.rows.values():  # id order
            by_instance.setdefault(row.instance_id, []).append(row)
        for record in self._t.instances.values():
            if record.sop_instance_uid not in wanted or record.received_at < since:
                continue
            rows = by_instance.get(record.instance_id, [])
            copies = tuple(self._c.copies[row.entry_id].frozen() for row in rows if row.entry_id in self._c.copies)
            item = ReceivedInstance(
                sop_class_uid=record.sop_class_uid,
                sop_instance_uid=record.sop_instance_uid,
                received_at=record.received_at,
                instance_id=record.instance_id,
                entries=tuple(self._entry(row) for row in rows),
                copies=copies,
            )
            found.setdefault(record.sop_instance_uid, []).append(((record.received_at, 0, record.instance_id, 0), item))
        for n, note in enumerate(self._c.unforwarded):
            if note.sop_instance_uid not in wanted or note.received_at < since:
                continue
            item = ReceivedInstance(
                sop_class_uid=note.sop_class_uid,
                sop_instance_uid=note.sop_instance_uid,
                received_at=note.received_at,
                outcome=note.outcome,
            )
            found.setdefault(note.sop_instance_uid, []).append(((note.received_at, 1, "", n), item))
        return {uid: [item for _, item in sorted(items, key=lambda pair: pair[0])] for uid, items in found.items()}

    # -- archives that commit ---------------------------------------------------------------

    def note_copies(self, copies: Sequence[tuple[int, str, str, str]], now: float) -> None:
        """Note delivered copies as PENDING; a FAILED one is asked about anew (see the interface)."""
        for entry_id, destination, sop_class_uid, sop_instance_uid in copies:
            row = self._c.copies.get(entry_id)
            if row is None:
                self._c.copies[entry_id] = _Copy(entry_id, destination, sop_class_uid, sop_instance_uid, CopyState.PENDING, now)
                continue
            row.destination = destination
            row.sop_class_uid = sop_class_uid
            row.sop_instance_uid = sop_instance_uid
            if row.state is CopyState.FAILED:
                row.state = CopyState.PENDING
                row.noted_at = now
                row.failure_reason = 0
                row.answered_at = None

    def pending_copies(self, destination: str, now: float, timeout: float, limit: int) -> list[CopyCommitment]:
        """PENDING copies and REQUESTED ones unanswered for ``timeout``, oldest first (see the interface)."""
        if limit <= 0:
            return []
        rows = sorted(
            (
                row
                for row in self._c.copies.values()
                if row.destination == destination
                and (
                    row.state is CopyState.PENDING
                    or (
                        row.state is CopyState.REQUESTED
                        and row.requested_at is not None
                        and row.requested_at < now - timeout
                    )
                )
            ),
            key=lambda row: (row.noted_at, row.entry_id),
        )
        return [row.frozen() for row in rows[:limit]]

    def copies_requested(self, destination: str, entry_ids: Sequence[int], transaction_uid: str, now: float) -> None:
        """Note an N-ACTION sent to ``destination`` for these copies (see the interface)."""
        self._c.requests[transaction_uid] = destination
        for entry_id in dict.fromkeys(entry_ids):
            row = self._c.copies.get(entry_id)
            if row is None or row.destination != destination or row.state is CopyState.COMMITTED:
                continue
            row.state = CopyState.REQUESTED
            row.transaction_uid = transaction_uid
            row.requested_at = now
            row.requests += 1

    def copies_answered(
        self, transaction_uid: str, committed: Sequence[str], failed: Sequence[tuple[str, int]], now: float
    ) -> int:
        """Record an archive's report for its request's destination (see the interface). :raises KeyError:"""
        destination = self._c.requests[transaction_uid]
        ok = set(committed)
        failures = {uid: reason for uid, reason in failed if uid not in ok}
        changed = 0
        for row in self._c.copies.values():
            if row.destination != destination:
                continue
            if row.sop_instance_uid in ok and row.state is not CopyState.COMMITTED:
                row.state = CopyState.COMMITTED
                row.failure_reason = 0
            elif row.sop_instance_uid in failures and row.state in (CopyState.PENDING, CopyState.REQUESTED):
                row.state = CopyState.FAILED
                row.failure_reason = failures[row.sop_instance_uid]
            else:
                continue
            row.answered_at = now
            changed += 1
        return changed

    # -- the queue's deletions ------------------------------------------------------------

    def _drop_copies(self, entry_ids: Collection[int]) -> None:
        """Forget the copy commitments of deleted entries."""
        for entry_id in entry_ids:
            self._c.copies.pop(entry_id, None)

    # Provided by MemoryQueueStore.
    def _entry(self, row: _Row) -> Entry:  # pragma: no cover - overridden
        """The frozen view of an entry row."""
        raise NotImplementedError
