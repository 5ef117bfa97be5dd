"""The queue store's interface and the records it holds.

The store is the gateway's journal of custody. Every instance acknowledged
to a modality has an :class:`InstanceRecord` and one :class:`Entry` per
(route, destination) its routes name, committed *before* the C-STORE-RSP
(HARDENING decision 10). From then on each entry moves through
:class:`EntryState`::

    QUEUED --lease--> LEASED --complete--> DELIVERED
      ^                 |  \\--dead_letter--> DEAD --requeue_dead--> QUEUED
      |                 |
      +----retry/release+        (DUPLICATE: never sent, see add_instance)

``IQueueStore`` is synchronous and small on purpose: it runs on the
store's threads through an :class:`~gateway.blocking.IBlockingRunner`
(SQLite connections are not shared across threads), and the same test mixin
runs against the SQLite store, the PostgreSQL store and the in-memory fake
(Buildbot's verified fakes). Every method that changes state is one
transaction: after a crash the store holds either all of it or none of it.

Several nodes, one queue (issue 14)
-----------------------------------
Each store object speaks for one *node* (``store.node``, the ``node:`` of
the configuration). Several nodes may share one store (PostgreSQL; or two
objects on one SQLite file in tests), so:

* a lease names its owner node and a *generation* (``Entry.lease_owner``,
  ``Entry.lease_generation``; the generation grows by one at every lease of
  the entry). Every write that ends or extends a lease (``settle``'s
  deliveries, ``complete``, ``retry``, ``release``, ``dead_letter``,
  ``renew``) may be *fenced*: given the generation the caller leased, it
  changes the entry only while the entry is still LEASED under that
  generation, so a node paused past its lease cannot overwrite the outcome
  the node that took over recorded. Unfenced calls (``generation=None``)
  are the operator's and keep today's behaviour.
* ``lease`` also takes back expired leases of any node (a node that died):
  they return to the queue first, noted in flight by the same rule as
  ``recover`` (the lowest ``UNRECORDED_DELIVERIES + 1`` entries of each
  expired lease), then are leased like any other due entry.
* ``recover`` (at start) returns only the leases of this node (and leases
  with no owner, from journals older than issue 14): another node's leases
  are live until they expire.
* what is per destination becomes cluster-wide: association slots
  (``claim_slot``: at most ``slots`` holders across all nodes, and slot
  ``k`` serves shard ``k``, so a study keeps its order whichever node
  received it), the circuit (``set_circuit``/``circuit``), pause and the
  duplicate window (both already in the store).
* ``heartbeat``/``nodes`` tell who is alive; ``hold_singleton`` elects one
  node for housekeeping that must run once (spool clean-up, retention,
  expiry of dead letters).

Times are wall-clock seconds since the epoch (``float``), passed in by the
caller (the caller owns the clock; the store never reads time).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Mapping, Sequence

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from gateway.queue.studies import StudyNote


class EntryState(Enum):
    """Where one (instance, route, destination) entry stands."""

    QUEUED = "queued"  # waiting for its next attempt (next_attempt_at)
    LEASED = "leased"  # taken by a worker; back to QUEUED if the lease expires (crash)
    DELIVERED = "delivered"  # the destination answered success or warning
    DEAD = "dead"  # given up; kept with its reason until an operator acts
    DUPLICATE = "duplicate"  # an identical re-send within the window: acknowledged, not forwarded


@dataclass(frozen=True)
class InstanceRecord:
    """One received (spooled) instance.

    :ivar instance_id: the spool's internal id (file name stem); never peer data.
    :ivar path: the spooled Part 10 file.
    :ivar sha256: hex digest of the data set bytes as received (duplicate control).
    :ivar received_at: wall-clock time of the commit.
    :ivar correlation_id: ties the received instance to every forward attempt in logs.
    :ivar dataset_offset: where the data set starts in ``path`` (the file
        meta's length, known at intake); 0 when unknown (journals older than
        schema version 4), and the file meta is then read to find it.
    """

    instance_id: str
    path: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    size: int
    sha256: str
    received_at: float
    correlation_id: str
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    patient_id: str = ""
    accession_number: str = ""
    modality: str = ""
    calling_ae_title: str = ""
    called_ae_title: str = ""
    source_address: str = ""
    dataset_offset: int = 0
    #: The node that received (and spooled) the instance; "" before issue 14.
    #: With node-local spools (``spool.shared: false``) only that node can send it.
    node: str = ""


@dataclass(frozen=True)
class PlanRecord:
    """A route's morph plan as the journal keeps it (issue 11: the morph travels with the entry).

    :ivar plan_hash: SHA-256 of ``definition`` (:func:`gateway.morph.plan_hash`), hex.
    :ivar definition: the plan's canonical, versioned JSON
        (:func:`gateway.morph.canonical_json`); the store keeps each
        distinct plan once, whatever the number of entries that name it.
    """

    plan_hash: str
    definition: str


@dataclass(frozen=True)
class NewEntry:
    """An entry to create with an instance.

    :ivar path: the file to send, when the route morphed its own copy;
        ``None`` means the instance's spooled file (shared, not copied).
    :ivar plan: the morph plan of the route as it was when the instance was
        journaled; the copy is made with it, whatever the configuration says
        at send time. ``None`` records no plan: such an entry is
        dead-lettered (reason ``morph``) rather than sent (see
        :class:`gateway.prepare.CopyMaker`).
    """

    route: str
    destination: str
    path: str | None = None
    plan: PlanRecord | None = None


#: The error recorded by ``recover`` on the entries of each lease that may have
#: been on the wire when the gateway died (HARDENING F13). It starts like the
#: forward worker's ambiguous attempts (``gateway.queue.policy.AMBIGUOUS_PREFIX``), so a later delivery
#: counts as a redelivery: the destination may hold two copies.
RECOVERED_IN_FLIGHT = "ambiguous: in flight when the gateway stopped"

#: The error recorded by ``lease`` on the entries of another node's expired
#: lease that may have been on the wire (the same rule as ``recover``),
#: followed by the node's name: ``ambiguous: lease of node NAME expired``.
EXPIRED_LEASE_PREFIX = "ambiguous: lease of node "


class LeaseLost(KeyError):
    """A fenced write found the entry no longer LEASED under the caller's generation.

    Another node took the entry over after the caller's lease expired (or an
    operator acted on it): the outcome recorded there stands, the caller's
    is dropped (and logged by the caller).
    """

#: The most deliveries a worker slot keeps before writing them to the journal
#: (:meth:`IQueueStore.settle`, issue 13). A delivery not yet written when the
#: gateway dies means a re-send (at-least-once), so ``recover`` notes this many
#: entries of each lease, plus the one on the wire, as in flight.
UNRECORDED_DELIVERIES = 16


@dataclass(frozen=True)
class Settled:
    """What :meth:`IQueueStore.settle` did.

    :ivar leased: the entries it leased, oldest first.
    :ivar next_due: when nothing was leased, the earliest ``next_attempt_at``
        of a QUEUED entry of the destination (any shard), or ``None``; always
        ``None`` when something was leased.
    """

    leased: tuple[Entry, ...] = ()
    next_due: float | None = None
    #: Deliveries given with a generation that no longer held (:class:`LeaseLost`):
    #: not recorded; the node that took the entry over records its outcome.
    lost: tuple[int, ...] = ()


@dataclass(frozen=True)
class Attempt:
    """One real send attempt (circuit probes are not attempts)."""

    at: float
    error: str
    counted: bool = True


@dataclass(frozen=True)
class Entry:
    """One entry as the store returns it (with its instance)."""

    entry_id: int
    instance: InstanceRecord
    route: str
    destination: str
    path: str
    state: EntryState
    attempts: int
    enqueued_at: float
    next_attempt_at: float
    last_error: str = ""
    delivered_at: float | None = None
    dead_reason: str = ""
    history: tuple[Attempt, ...] = ()
    #: The hash of the morph plan journaled with the entry (:meth:`IQueueStore.plan`
    #: gives its definition); ``None`` for an entry journaled without one.
    plan_hash: str | None = None
    #: The node that holds (or last held) the entry's lease; "" if never leased.
    lease_owner: str = ""
    #: Grows by one at every lease of the entry; the fence of the lease-ending writes.
    lease_generation: int = 0
    #: When the current lease expires (LEASED only), else ``None``.
    leased_until: float | None = None


@dataclass(frozen=True)
class AddResult:
    """What :meth:`IQueueStore.add_instance` did.

    :ivar entry_ids: the new entries' ids, in the order given.
    :ivar duplicates: destinations for which the entry was stored as DUPLICATE.
    """

    entry_ids: tuple[int, ...]
    duplicates: tuple[str, ...] = ()


@dataclass(frozen=True)
class DestinationStats:
    """Per-destination figures for ``queue list``, the API and metrics."""

    destination: str
    queued: int = 0
    in_flight: int = 0
    dead: int = 0
    delivered: int = 0
    duplicates: int = 0
    oldest_queued_at: float | None = None
    last_error: str = ""
    last_error_at: float | None = None
    last_success_at: float | None = None
    paused: bool = False
    circuit_open: bool = False
    circuit_reason: str = ""
    circuit_since: float | None = None
    #: QUEUED entries that only an absent node can send (node-local spools:
    #: their instance's node has not sent a heartbeat for ``stranded_after`` seconds).
    stranded: int = 0


@dataclass(frozen=True)
class NodeStatus:
    """One node as its heartbeats describe it (:meth:`IQueueStore.nodes`).

    :ivar node: its name.
    :ivar started_at: when the node's current process started.
    :ivar last_seen: its last heartbeat.
    :ivar leases: entries it holds LEASED now.
    :ivar slots: association slots it holds now (:meth:`IQueueStore.claim_slot`).
    :ivar detail: what the node said of itself (address, version, draining).
    """

    node: str
    started_at: float
    last_seen: float
    leases: int = 0
    slots: int = 0
    detail: str = ""


class StoreUnavailable(Exception):
    """The store cannot be reached (PostgreSQL down or partitioned, a timeout).

    Raised by any method instead of the driver's own error, so callers can
    tell "the journal is away" (answer 0xA700, refuse associations, keep
    outcomes in memory) from a bug. Nothing was changed by the failed call
    as far as the caller can know (a commit whose answer was lost is the
    one ambiguity; the methods are written so a retry is harmless).
    """


class IQueueStore(Interface):
    """The durable queue (``SqliteQueueStore``, ``PostgresQueueStore`` and ``MemoryQueueStore``)."""

    node = Attribute("The name of the node this store object speaks for (leases, heartbeats, singletons).")

    def add_instance(
        record: InstanceRecord,
        entries: Sequence[NewEntry],
        now: float,
        duplicate_window: float,
        notes: Sequence[StudyNote] = (),
    ) -> AddResult:
        """Record a received instance and its entries in one transaction.

        An entry is stored as ``DUPLICATE`` (not forwarded) when the same
        destination already has a non-DEAD entry, enqueued within
        ``duplicate_window`` seconds before ``now``, for an instance with the
        same SOP Instance UID **and** the same ``sha256`` (HARDENING decision 5).
        A window of 0 disables the check.

        ``notes`` (issue 18, :class:`gateway.queue.studies.StudyNote`, one per
        notifying route that matched): each creates or updates its route's
        ``studies`` row in the same transaction, after the entries; a note
        whose route's new entries are all DUPLICATE changes nothing, a note
        on a ``complete`` row reopens it (``open``, ``opened_at = now``,
        ``completions`` kept). The conventions are listed in
        :mod:`gateway.queue.memory_studies`.
        """

    def add_instances(
        batch: Sequence[tuple[InstanceRecord, Sequence[NewEntry]]],
        now: float,
        duplicate_window: float,
        notes: Sequence[Sequence[StudyNote]] | None = None,
    ) -> list[AddResult]:
        """Several :meth:`add_instance` calls in one transaction (group commit): all or nothing.

        Instances of the batch are added in order, so a later one sees the
        entries of an earlier one (an identical re-send within the same batch
        is a duplicate). If any one fails, nothing of the batch is recorded
        and the error is raised. ``notes``, when given, holds one sequence of
        study notes per batch item (:class:`ValueError` otherwise).
        """

    def lease(destination: str, limit: int, now: float, lease_seconds: float, shard: tuple[int, int] | None = None) -> list[Entry]:
        """Take up to ``limit`` due QUEUED entries of ``destination``, oldest first (by entry id).

        Due means ``next_attempt_at <= now``. Nothing is leased while the
        destination is paused. With ``shard=(k, n)`` only entries whose study
        hash (crc32 of the Study Instance UID) modulo ``n`` equals ``k`` are
        leased, so a study always travels through the same association slot.
        Leased entries become LEASED until ``now + lease_seconds``, owned by
        ``self.node``, with their generation one higher than before.

        First, expired leases of the destination (``leased_until < now``,
        any node) go back to QUEUED, their lowest ``UNRECORDED_DELIVERIES + 1``
        entries per lease (same owner and ``leased_until``) noted with an
        uncounted attempt ``EXPIRED_LEASE_PREFIX + owner + " expired"``, as
        ``recover`` notes its own. A store with node-local spools
        (``local_only``) leases only entries whose instance's ``node`` is its own.
        Two nodes never hold the same entry (PostgreSQL: ``FOR UPDATE SKIP LOCKED``).
        """

    def complete(entry_ids: Sequence[int], now: float, warning: str = "", generations: Mapping[int, int] | None = None) -> None:
        """Mark leased entries DELIVERED (a warning status is kept as ``last_error``).

        With ``generations`` (entry id -> the generation leased), an entry
        whose lease is no longer that generation is skipped (fenced); an id
        absent from ``generations`` is written unfenced (so are ``settle``'s
        and ``release``'s).
        """

    def settle(
        destination: str,
        delivered: Sequence[tuple[int, str]],
        now: float,
        limit: int,
        lease_seconds: float,
        shard: tuple[int, int] | None = None,
        generations: Mapping[int, int] | None = None,
    ) -> Settled:
        """The worker's turn in one transaction: record deliveries, then lease the next entries.

        ``delivered`` holds ``(entry_id, warning)`` pairs, each recorded as by
        :meth:`complete` (fenced by ``generations``; those that lost their
        lease are listed in ``Settled.lost``); then up to ``limit`` entries are leased as by
        :meth:`lease`. When nothing is leased the result carries
        :meth:`next_due`, so an idle worker needs no second call. With no
        deliveries and nothing due, no write transaction is made at all (a
        write takes the one write lock the intake's commits wait for).
        """

    def retry(
        entry_id: int, next_attempt_at: float, error: str, now: float, counted: bool = True, generation: int | None = None
    ) -> None:
        """Return a leased entry to QUEUED for ``next_attempt_at``, recording the attempt.

        ``counted=False`` records the error without counting an attempt (a
        destination-wide fault: the instance itself was not tried).

        :raises LeaseLost: ``generation`` is given and the entry is not LEASED under it.
        :raises KeyError: the entry is not LEASED.
        """

    def release(entry_ids: Sequence[int], generations: Mapping[int, int] | None = None) -> None:
        """Return leased entries to QUEUED unchanged (shutdown, circuit opened before sending).

        Fenced by ``generations`` as :meth:`complete` is: a lost lease is skipped.
        """

    def dead_letter(entry_id: int, reason: str, now: float, generation: int | None = None) -> None:
        """Move an entry to DEAD with ``reason``; its file is kept.

        :raises LeaseLost: ``generation`` is given and the entry is not LEASED under it.
        :raises KeyError: the entry is not QUEUED or LEASED.
        """

    def renew(generations: Mapping[int, int], now: float, lease_seconds: float) -> set[int]:
        """Extend leases still held (the heartbeat of a send in flight) to ``now + lease_seconds``.

        ``generations`` maps entry ids to the generation the caller leased;
        returns the ids whose lease was lost (not LEASED under that generation
        any more): the caller must not record an outcome for them.
        """

    def claim_slot(destination: str, slot: int, slots: int, now: float, seconds: float) -> bool:
        """Hold association slot ``slot`` of ``destination`` for ``seconds`` (claim or renew).

        Cluster-wide ``max_associations``: slot ``k`` (``0 <= k < slots``) has
        at most one holder node at a time. True when this node holds it now
        (it was free, expired, or already this node's); False when another
        node holds a live claim, or a live lease (``leased_until >= now``) on
        an entry of shard ``(slot, slots)``: the batch of the slot's previous
        holder, whose lease may outlast its claim (leased after the claim's
        last renewal); the study's later entries must not overtake it. A node
        sends to the destination only through the slots it holds, and slot
        ``k`` leases shard ``(k, slots)``.

        :raises ValueError: not ``0 <= slot < slots``.
        """

    def release_slot(destination: str, slot: int) -> None:
        """Give up this node's claim on a slot (stop, drain); another node's claim is left alone."""

    def circuit(destination: str) -> tuple[bool, str, float | None]:
        """The destination's circuit as last recorded by any node: ``(open, reason, since)``."""

    def heartbeat(now: float, started_at: float, detail: str = "") -> None:
        """Record that this node is alive (its row in ``nodes``), with what it says of itself."""

    def nodes(now: float) -> list[NodeStatus]:
        """Every node that ever sent a heartbeat, by name, with the leases and slots it holds."""

    def hold_singleton(name: str, now: float, seconds: float) -> bool:
        """Take or keep the named once-only job (housekeeping) for this node.

        True while this node holds it. PostgreSQL: a session advisory lock
        (held until the session ends; ``seconds`` is unused, keepalives bound
        a dead node's hold); SQLite and memory: a lease of ``seconds``
        renewed by each call.
        """

    def expire(destination: str, enqueued_before: float, reason: str, now: float, limit: int = 1000) -> list[Entry]:
        """Dead-letter up to ``limit`` QUEUED entries of ``destination`` enqueued before ``enqueued_before``.

        ``max_age`` for a destination that is down as a whole: its entries make no
        attempts, so :func:`gateway.queue.policy.give_up` never sees them.
        Returns the entries, now DEAD.
        """

    def requeue_dead(entry_id: int, now: float, destination: str | None = None) -> int:
        """Operator retry of a DEAD entry: back to QUEUED at the tail of the queue.

        With ``destination`` the entry is re-targeted there. Attempts restart
        at 0; the history is kept. Returns the (possibly new) entry id.

        :raises KeyError: no such entry, or it is not DEAD.
        """

    def requeue_instance(instance_id: str, destination: str, route: str, now: float, plan: PlanRecord | None = None) -> int:
        """Operator replay: a new QUEUED entry for an instance (never treated as a duplicate).

        ``plan`` is the morph plan the new entry is sent with (``None``: none recorded).
        """

    def plan(plan_hash: str) -> str:
        """The definition (canonical JSON) of a journaled plan.

        :raises KeyError: no plan with that hash is on record.
        """

    def adopt_plans(plans: Mapping[str, PlanRecord]) -> int:
        """Give entries journaled without a plan (before schema version 3) the plan of their route.

        ``plans`` maps route names to the plans those routes have now. Each
        entry without a plan whose route is in ``plans`` gets that plan;
        the others keep none (and are dead-lettered when a worker takes
        them). Returns the number of entries that got a plan.
        """

    def purge(entry_id: int) -> None:
        """Delete a DEAD entry for good (operator decision).

        :raises KeyError: no such entry, or it is not DEAD.
        """

    def get(entry_id: int) -> Entry:
        """One entry with its history.

        :raises KeyError: no such entry.
        """

    def entries(destination: str | None = None, state: EntryState | None = None, limit: int = 1000) -> list[Entry]:
        """Entries filtered by destination and state, oldest first."""

    def find(
        study_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
        patient_id: str | None = None,
        accession_number: str | None = None,
    ) -> list[tuple[InstanceRecord, list[Entry]]]:
        """Instances matching every given criterion, each with all its entries."""

    def recover(now: float) -> int:
        """On start: this node's LEASED entries (and those with no owner) back to QUEUED
        (their outcome is unknown). Returns the count. Other nodes' leases are
        left to expire (``lease`` takes them back).

        A worker sends a lease's entries one at a time in id order and keeps
        at most :data:`UNRECORDED_DELIVERIES` deliveries unwritten, so of the
        entries one lease took (same destination, same ``leased_until``) only
        the lowest ``UNRECORDED_DELIVERIES + 1`` ids still LEASED can have
        reached the destination. Those get an uncounted attempt
        :data:`RECOVERED_IN_FLIGHT` (history and ``last_error``), so an
        eventual delivery is counted as a redelivery.
        """

    def stats(now: float, stranded_after: float = 120.0) -> Mapping[str, DestinationStats]:
        """Figures per destination that has entries or a paused flag.

        ``stranded`` counts QUEUED entries of instances received by a node
        other than this one that has sent no heartbeat for ``stranded_after``
        seconds, when this store has node-local spools (``local_only``); else 0.
        """

    def set_paused(destination: str, paused: bool) -> None:
        """Hold (or release) a destination: entries keep queueing but none are leased."""

    def set_circuit(destination: str, circuit_open: bool, reason: str, now: float) -> None:
        """Record a destination's circuit state (open: down as a whole, being probed), for ``queue list``."""

    def next_due(destination: str) -> float | None:
        """The earliest ``next_attempt_at`` of a QUEUED entry of ``destination``, or None."""

    def shift_schedule(destination: str, after: float, delta: float, latest: float | None = None) -> int:
        """Move the due times of ``destination``'s QUEUED entries after a wall-clock step (HARDENING F19).

        Entries due later than ``after`` get ``delta`` seconds added, so a retry keeps the delay
        it had left; then, with ``latest``, no entry stays due later than ``latest``.
        Returns the number of entries changed.
        """

    def finished_instances(older_than: float, limit: int = 1000, has_file: bool | None = None) -> list[InstanceRecord]:
        """Instances received before ``older_than`` whose entries are all DELIVERED or DUPLICATE
        (none queued, leased or dead), or that have no entries at all: their files may go.

        ``has_file=True`` returns only those whose file was not yet removed
        (see :meth:`file_removed`), ``False`` only those whose file was, and
        ``None`` both. Oldest first. An instance's age counts from its last
        delivery (or its reception, when it has no delivered entry), so
        ``retention.keep_delivered`` keeps it that long after it was delivered.
        """

    def file_removed(instance_id: str) -> None:
        """Note that an instance's spooled file was deleted (its ``path`` becomes ``""``).

        The record stays, so duplicate control still knows the instance for
        the rest of its window after the file is gone.
        """

    def forget_instance(instance_id: str) -> None:
        """Delete an instance record and its entries (after its files were removed)."""

    def instance_ids() -> set[str]:
        """Every instance id on record (recovery compares them with the spool's files)."""

    def close() -> None:
        """Release resources (the SQLite connection)."""
