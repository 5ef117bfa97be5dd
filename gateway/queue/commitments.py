"""Storage Commitment in the journal: the store's second interface (issue 15).

The gateway is a Storage Commitment SCP (PS3.4 Annex J, Push Model). A
requester's N-ACTION is answered at once; the outcome goes later in an
N-EVENT-REPORT, on a new association (PS3.4 J.3.3). Between the two the
gateway owes a report, and that debt must survive restarts, ``kill -9`` and
the death of the node that took the request: so it is journaled, beside the
queue, by the same stores (SQLite, PostgreSQL, the in-memory fake), through
:class:`ICommitmentJournal`.

A :class:`Transaction` moves through :class:`TransactionState`::

    OPEN --reported--> REPORTED
      |  \\--dead------> DEAD --requeue--> OPEN
      +--defer (not decided yet, or a delivery attempt failed)--> OPEN

While OPEN, a worker leases it (like a queue entry: owner node, generation,
``leased_until``; an expired lease of a dead node is taken back by
``lease_transactions``), evaluates the requested instances against what the
journal knows of them, and either *decides* the report (``decide_transaction``:
recorded once, never changed, so every retry and every node sends the same
one) or defers to a later look. A decided report is sent until the requester
answers success (``transaction_reported``) or ``report_deadline`` passes
(``transaction_dead``). Every write that ends a lease is fenced by the
generation leased (:class:`~gateway.queue.interfaces.LeaseLost`).

What the journal knows of an instance (:meth:`ICommitmentJournal.received`):
its :class:`~gateway.queue.interfaces.InstanceRecord` with every entry (the
copies' states per route and destination), or an :class:`Unforwarded` note
(an instance a rule dropped, or kept as unrouted: acknowledged, sent nowhere),
and, for destinations that commit themselves (``storage_commitment: true``),
the archive's answer per delivered copy (:class:`CopyCommitment`). A copy's
UIDs may differ from the instance's (a route that remaps UIDs), so the
forwarder notes them when it delivers (:meth:`ICommitmentJournal.note_copies`),
before it records the delivery.

Times are wall-clock seconds since the epoch, passed in by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Collection, Mapping, Sequence

from zope.interface import Attribute, Interface

from gateway.queue.interfaces import Attempt, Entry


class TransactionState(Enum):
    """Where one Storage Commitment transaction stands."""

    OPEN = "open"  # a report is owed (not decided yet, or decided and not yet acknowledged)
    REPORTED = "reported"  # the requester answered the N-EVENT-REPORT with success
    DEAD = "dead"  # report_deadline passed without a delivered report; kept until an operator acts


class CopyState(Enum):
    """An archive's Storage Commitment of one delivered copy (``storage_commitment: true``)."""

    PENDING = "pending"  # delivered, not yet asked
    REQUESTED = "requested"  # in an N-ACTION to the archive, no answer yet
    COMMITTED = "committed"  # the archive's report listed it as committed
    FAILED = "failed"  # the archive's report listed it in its Failed SOP Sequence


@dataclass(frozen=True)
class Reference:
    """One requested instance: a Referenced SOP Sequence item (PS3.4 J.3.2.1.1)."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class NewTransaction:
    """An N-ACTION-RQ accepted for later report (:meth:`ICommitmentJournal.add_transaction`).

    :ivar transaction_uid: (0008,1195), unique per request (PS3.3 C.14.1.1).
    :ivar calling_ae_title: the requester's AE title.
    :ivar called_ae_title: the AE title it called (ours; the report's calling AE).
    :ivar modality: the requester's name in the ``modalities`` table (its address).
    :ivar listener: the listener that took the request.
    :ivar policy: ``received``, ``delivered`` or ``committed``, fixed at request time.
    :ivar references: the requested instances, in request order, without repeats.
    :ivar deadline: when the report goes with what is known (absolute time).
    :ivar report_deadline: when an undelivered report becomes DEAD (absolute time).
    :ivar lookback_from: instances received before this time are not considered.
    :ivar unrouted: ``fail`` or ``success``: how a dropped or unrouted instance is reported.
    :ivar report_association: ``new`` or ``open`` (see :class:`gateway.config.schema.CommitmentConfig`).
    :ivar source_address: the requester's address as the listener saw it (audit).
    """

    transaction_uid: str
    calling_ae_title: str
    called_ae_title: str
    modality: str
    listener: str
    policy: str
    references: tuple[Reference, ...]
    deadline: float
    report_deadline: float
    lookback_from: float
    unrouted: str = "fail"
    report_association: str = "new"
    source_address: str = ""


@dataclass(frozen=True)
class Transaction:
    """A journaled transaction as the store returns it.

    :ivar request: what was asked (:class:`NewTransaction`).
    :ivar requested_at: when the N-ACTION was journaled.
    :ivar node: the node that took the N-ACTION.
    :ivar state: see :class:`TransactionState`.
    :ivar report: the decided report as JSON (``gateway.commitment`` writes and
        reads it), ``""`` until decided; once set it never changes.
    :ivar decided_at: when it was decided.
    :ivar attempts: counted report delivery attempts.
    :ivar next_attempt_at: when a worker should look at it again.
    :ivar last_error: the last delivery failure (or why it was deferred).
    :ivar reported_at: when the requester acknowledged the report.
    :ivar dead_reason: why it became DEAD.
    :ivar history: delivery attempts, oldest first.
    """

    request: NewTransaction
    requested_at: float
    node: str
    state: TransactionState
    report: str = ""
    decided_at: float | None = None
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str = ""
    reported_at: float | None = None
    dead_reason: str = ""
    history: tuple[Attempt, ...] = ()
    lease_owner: str = ""
    lease_generation: int = 0
    leased_until: float | None = None

    @property
    def transaction_uid(self) -> str:
        """The request's Transaction UID."""
        return self.request.transaction_uid


class TransactionConflict(ValueError):
    """The Transaction UID is on record with other references (PS3.3 C.14.1.1: it identifies one request)."""


@dataclass(frozen=True)
class Unforwarded:
    """An instance acknowledged and sent nowhere (:meth:`ICommitmentJournal.note_unforwarded`).

    :ivar outcome: ``dropped`` (a rule's ``drop``) or ``unrouted`` (no route took it).
    """

    sop_class_uid: str
    sop_instance_uid: str
    outcome: str
    received_at: float
    calling_ae_title: str = ""
    reason: str = ""


@dataclass(frozen=True)
class CopyCommitment:
    """An archive's commitment of one delivered copy (one entry of a ``storage_commitment`` destination).

    :ivar entry_id: the queue entry delivered.
    :ivar sop_class_uid: the copy's SOP Class UID as sent.
    :ivar sop_instance_uid: the copy's SOP Instance UID as sent (remapped or not).
    :ivar transaction_uid: the Transaction UID of the last N-ACTION that named it, ``""`` before.
    :ivar requests: how many N-ACTIONs named it.
    :ivar failure_reason: the archive's Failure Reason (0008,1197) when FAILED, else 0.
    """

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


@dataclass(frozen=True)
class ReceivedInstance:
    """What the journal knows of one requested SOP Instance UID (:meth:`ICommitmentJournal.received`).

    Either a journaled instance (``instance_id`` set; ``entries`` are all its
    entries, DUPLICATE ones included; ``copies`` the archive state of those
    entries that have one) or an :class:`Unforwarded` note (``outcome``
    ``dropped`` or ``unrouted``, no entries).
    """

    sop_class_uid: str
    sop_instance_uid: str
    received_at: float
    outcome: str = "journaled"
    instance_id: str = ""
    entries: tuple[Entry, ...] = ()
    copies: tuple[CopyCommitment, ...] = ()


@dataclass(frozen=True)
class TransactionStats:
    """Figures for the metrics, ``commitment list`` and the API.

    :ivar open: OPEN transactions (reports owed).
    :ivar decided: OPEN transactions whose report is decided and not yet acknowledged.
    :ivar overdue: OPEN transactions whose ``deadline`` has passed (a report owed and late).
    :ivar dead: DEAD transactions.
    :ivar reported: REPORTED transactions on record.
    :ivar oldest_open_at: ``requested_at`` of the oldest OPEN one.
    """

    open: int = 0
    decided: int = 0
    overdue: int = 0
    dead: int = 0
    reported: int = 0
    oldest_open_at: float | None = None


class ICommitmentJournal(Interface):
    """Storage Commitment transactions, unforwarded notes and archive commitments (one transaction per call)."""

    node = Attribute("The node this store object speaks for (as IQueueStore.node).")

    # -- transactions (the gateway as SCP) -------------------------------------------

    def add_transaction(new: NewTransaction, now: float) -> tuple[Transaction, bool]:
        """Journal an accepted N-ACTION; ``(transaction, created)``.

        A Transaction UID already on record with the same references (as a
        set: order and repeats ignored) returns that transaction and False
        (a repeated N-ACTION is idempotent, whatever its state). A new one
        is OPEN, due at ``now``, owned by no lease, taken by ``self.node``.

        :raises TransactionConflict: the UID is on record with other references.
        """

    def lease_transactions(now: float, limit: int, lease_seconds: float) -> list[Transaction]:
        """Lease up to ``limit`` OPEN transactions due (``next_attempt_at <= now``), earliest due first.

        A transaction is leasable when it holds no lease or its lease expired
        (``leased_until < now``, any node: a dead node's is taken over). The
        lease is this node's until ``now + lease_seconds``, generation one
        higher. Two nodes never hold the same transaction (PostgreSQL:
        ``FOR UPDATE SKIP LOCKED``).
        """

    def renew_transactions(generations: Mapping[str, int], now: float, lease_seconds: float) -> set[str]:
        """Extend leases still held; returns the UIDs whose lease was lost."""

    def decide_transaction(transaction_uid: str, report: str, now: float, generation: int) -> str:
        """Record the decided report (JSON) unless one is already recorded; returns the one on record.

        Keeps the lease. :raises LeaseLost: not leased under ``generation``.
        """

    def defer_transaction(
        transaction_uid: str, next_attempt_at: float, now: float, generation: int, error: str = "", counted: bool = False
    ) -> None:
        """End the lease, stay OPEN, look again at ``next_attempt_at``.

        ``counted`` records a report delivery attempt that failed with
        ``error`` (``attempts`` + 1, history); otherwise ``error`` (may be
        empty) only becomes ``last_error``. :raises LeaseLost:
        """

    def transaction_reported(transaction_uid: str, now: float, generation: int) -> None:
        """The requester answered the report with success: REPORTED, lease ended. :raises LeaseLost:"""

    def transaction_dead(transaction_uid: str, reason: str, now: float, generation: int) -> None:
        """``report_deadline`` passed: DEAD with ``reason``, lease ended. :raises LeaseLost:"""

    def requeue_transaction(transaction_uid: str, now: float, report_deadline: float) -> Transaction:
        """Operator retry of a DEAD transaction: OPEN, due now, attempts 0, history kept.

        :raises KeyError: no such transaction, or it is not DEAD.
        """

    def get_transaction(transaction_uid: str) -> Transaction:
        """One transaction with its history. :raises KeyError:"""

    def transactions(state: TransactionState | None = None, limit: int = 1000) -> list[Transaction]:
        """Transactions, newest request first, optionally of one state."""

    def transaction_stats(now: float) -> TransactionStats:
        """The figures of :class:`TransactionStats`."""

    # -- what was received ----------------------------------------------------------------

    def note_unforwarded(items: Sequence[Unforwarded], now: float) -> None:
        """Record instances acknowledged and sent nowhere (dropped, unrouted)."""

    def received(sop_instance_uids: Collection[str], since: float) -> Mapping[str, list[ReceivedInstance]]:
        """What was received under each UID at or after ``since``, oldest first.

        UIDs with nothing on record are absent from the result. One query
        (or a few, by chunks) for the whole set: a study's thousands of UIDs
        must not cost a round trip each.
        """

    # -- archives that commit (the gateway as SCU) ------------------------------------

    def note_copies(copies: Sequence[tuple[int, str, str, str]], now: float) -> None:
        """Note delivered copies ``(entry_id, destination, sop_class_uid, sop_instance_uid)`` as PENDING.

        Called by the forwarder before it records the deliveries. A copy
        already noted keeps its state unless it is FAILED, which becomes
        PENDING again (a redelivery is asked about anew); its UIDs are updated.
        """

    def pending_copies(destination: str, now: float, timeout: float, limit: int) -> list[CopyCommitment]:
        """Copies of ``destination`` to ask about: PENDING, or REQUESTED before ``now - timeout``; oldest first."""

    def copies_requested(destination: str, entry_ids: Sequence[int], transaction_uid: str, now: float) -> None:
        """Note an N-ACTION sent to ``destination`` for these copies (REQUESTED, ``requests`` + 1).

        The Transaction UID is remembered with its destination, so a late
        report to an earlier request still counts.
        """

    def copies_answered(
        transaction_uid: str, committed: Sequence[str], failed: Sequence[tuple[str, int]], now: float
    ) -> int:
        """Record an archive's report: copies (by SOP Instance UID) of the request's destination.

        ``committed`` become COMMITTED; ``failed`` ``(uid, reason)`` become
        FAILED unless already COMMITTED (a later success wins over an earlier
        failure, never the reverse). Returns how many copies changed.

        :raises KeyError: no request with that Transaction UID was ever sent.
        """
