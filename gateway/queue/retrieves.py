"""Query/Retrieve in the journal: retrieves in progress and remapped UIDs (issue 16).

The gateway is a Query/Retrieve SCP that proxies to archives (the *sources*).
A C-MOVE in ``relay`` mode (and a C-GET the gateway cannot C-GET from the
source) is done in two legs: the gateway asks the source to C-MOVE the
instances to the gateway itself, takes them into custody through the normal
intake (spool, journal), and sends them on: to the move destination through
a normal queue (C-MOVE), or back on the requester's association (C-GET).

The two legs meet in the journal, not in one process's memory, so that a
restart, or another node receiving the sub-operations, still finds which
retrieve an incoming C-STORE belongs to: the source's sub-operation
C-STORE-RQ carries the Move Originator AE Title and Message ID (PS3.7
9.1.1.1), and the message ID the gateway put on its outgoing C-MOVE is
allocated here, unique among the open retrieves of every node
(:meth:`IRetrieveJournal.open_retrieve`); the SOP Instance UID must also be
one the locating C-FIND returned.

The journal also keeps remapped -> original UIDs (:meth:`IRetrieveJournal.remember_uids`):
``uid_remap`` is a one-way HMAC, and a query for a remapped Study Instance
UID must reach the source as the original.

Nothing stays forever (the housekeeping node's clean-up, :mod:`gateway.service`):
finished retrieves and their items go after ``retention.retrieves``
(:meth:`IRetrieveJournal.purge_retrieves`), remapped UIDs nobody looked up or
wrote for ``retention.remapped_uids`` (:meth:`IRetrieveJournal.purge_remapped_uids`),
both in bounded batches, one transaction each. A pair's last use is recorded
at most once per :data:`REMAP_TOUCH_INTERVAL` (a cheap write, not one per query).

Times are wall-clock seconds since the epoch, passed in by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Collection, Mapping, Sequence

from zope.interface import Attribute, Interface

from gateway.queue.commitments import Reference


class RetrieveState(Enum):
    """Where one retrieve stands."""

    OPEN = "open"  # sub-operations under way
    DONE = "done"  # the final response was sent (some sub-operations may have failed)
    CANCELLED = "cancelled"  # the requester sent C-CANCEL
    FAILED = "failed"  # could not be done at all (sources down, deadline before any sub-operation)


class ItemState(Enum):
    """One instance of a retrieve (one sub-operation towards the requester or move destination)."""

    EXPECTED = "expected"  # the locating C-FIND named it; not received from the source yet
    RECEIVED = "received"  # in custody (linked to its queue entry, when one was made)
    COMPLETED = "completed"  # delivered to the move destination / stored on the requester's association
    WARNING = "warning"  # delivered with a warning status
    FAILED = "failed"  # the source could not give it, or the destination / requester refused it


#: A remapped UID's last use is written again only when the one on record is older than this (seconds).
REMAP_TOUCH_INTERVAL = 86400.0


class RetrieveIdsExhausted(Exception):
    """Every outgoing message ID (1-65535) is held by an open retrieve: answer 0xA702 (out of resources)."""


@dataclass(frozen=True)
class NewRetrieve:
    """A C-MOVE-RQ or C-GET-RQ accepted (:meth:`IRetrieveJournal.open_retrieve`).

    :ivar kind: ``move`` or ``get``.
    :ivar requester_ae_title: the calling AE of the request.
    :ivar listener: the listener that took it.
    :ivar requester_message_id: the request's Message ID (its responses answer it).
    :ivar destination: the move destination's name in ``modalities`` (``""`` for C-GET).
    :ivar mode: ``relay`` or ``pass_through``.
    :ivar level: the Query/Retrieve Level (PATIENT, STUDY, SERIES, IMAGE).
    :ivar sources: the sources, in order.
    :ivar expected: the instances the locating C-FIND returned (SOP Class UID may be ``""``).
    :ivar deadline: when the retrieve ends with what is done (``retrieve.timeout``).
    """

    kind: str
    requester_ae_title: str
    listener: str
    requester_message_id: int
    destination: str
    mode: str
    level: str
    sources: tuple[str, ...]
    expected: tuple[Reference, ...]
    deadline: float


@dataclass(frozen=True)
class Retrieve:
    """A journaled retrieve.

    :ivar message_id: the Message ID of the gateway's own C-MOVE to the sources
        (the Move Originator Message ID of their sub-operations); unique among
        OPEN retrieves of every node.
    :ivar node: the node that took the request (it answers the requester).
    """

    retrieve_id: int
    request: NewRetrieve
    message_id: int
    node: str
    state: RetrieveState
    created_at: float
    finished_at: float | None = None
    error: str = ""


@dataclass(frozen=True)
class RetrieveProgress:
    """The sub-operation counts of a retrieve, for its pending and final responses (PS3.4 C.4.2.1.3, C.4.3.1.3).

    ``remaining`` counts EXPECTED and RECEIVED items; ``completed``,
    ``warning`` and ``failed`` the others. A RECEIVED item whose queue entry
    (to a ``move.*`` destination) is DELIVERED counts completed (warning when
    it carries a warning), DEAD counts failed. ``failed_uids`` are the SOP
    Instance UIDs of the failed items (the Failed SOP Instance UID List).
    """

    remaining: int = 0
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: tuple[str, ...] = ()


@dataclass(frozen=True)
class RetrieveItem:
    """One item of a retrieve as an operator sees it (:meth:`IRetrieveJournal.retrieve_items`).

    :ivar state: the item's own state.
    :ivar entry_id: the queue entry that sends it on (``None``: none, e.g. C-GET).
    :ivar reason: why it failed (the item's reason, else the linked entry's dead reason).
    :ivar counted: which count of :class:`RetrieveProgress` it adds to now
        (``remaining``, ``completed``, ``warning``, ``failed``), read from its entry.
    """

    sop_class_uid: str
    sop_instance_uid: str
    state: ItemState
    entry_id: int | None
    reason: str
    updated_at: float
    counted: str


@dataclass(frozen=True)
class RetrievePurge:
    """What one :meth:`IRetrieveJournal.purge_retrieves` batch deleted."""

    retrieves: int = 0
    items: int = 0


class IRetrieveJournal(Interface):
    """Retrieves in progress and remapped UIDs (one transaction per call)."""

    node = Attribute("The node this store object speaks for.")

    def open_retrieve(new: NewRetrieve, now: float) -> Retrieve:
        """Journal a retrieve, OPEN, its items EXPECTED, with a fresh outgoing message ID.

        :raises RetrieveIdsExhausted: every message ID is held by an OPEN retrieve.
        """

    def match_sub_operation(message_id: int, sop_instance_uid: str) -> Retrieve | None:
        """The OPEN retrieve whose outgoing message ID is ``message_id`` and that expects ``sop_instance_uid``.

        ``None`` when there is none (the C-STORE is then an ordinary one, or
        refused by the caller: see :mod:`gateway.qr`).
        """

    def link_item(retrieve_id: int, sop_instance_uid: str, entry_id: int | None, now: float) -> None:
        """The item arrived in custody: RECEIVED, with the queue entry that sends it on (``None`` for C-GET)."""

    def item_outcome(
        retrieve_id: int, sop_instance_uid: str, state: ItemState, reason: str, now: float, expected_only: bool = False
    ) -> None:
        """Record an item's end without a queue entry (C-GET sub-operations, source failures, the deadline).

        With ``expected_only`` only an item still EXPECTED changes: a source
        that lists as failed an instance the gateway already holds (RECEIVED,
        on its way to the move destination) does not make it failed.

        :raises KeyError: unknown retrieve or UID.
        """

    def fail_expected(retrieve_id: int, reason: str, now: float) -> tuple[str, ...]:
        """End FAILED, in one transaction, the items still EXPECTED (never received), leaving the others alone.

        The stall rule of a relayed C-MOVE (:mod:`gateway.qr.move`): once the
        sources have ended, an instance never received will not come, while
        one in custody (RECEIVED) is still on its way to the move destination.

        :returns: the SOP Instance UIDs so ended, in request order.
        :raises KeyError: unknown retrieve.
        """

    def progress(retrieve_id: int) -> RetrieveProgress:
        """The counts now (reading the linked entries' states). :raises KeyError:"""

    def finish_retrieve(retrieve_id: int, state: RetrieveState, error: str, now: float) -> None:
        """End it (DONE, CANCELLED, FAILED): its message ID is free again. :raises KeyError:"""

    def get_retrieve(retrieve_id: int) -> Retrieve:
        """One retrieve. :raises KeyError:"""

    def retrieves(
        state: RetrieveState | None = None, limit: int = 1000, before: tuple[float, int] | None = None
    ) -> list[Retrieve]:
        """Retrieves, newest first (``created_at``, then id).

        :param before: a keyset cursor ``(created_at, retrieve_id)``: only
            retrieves listed after that one (the last of the previous page).
        """

    def retrieve_items(retrieve_id: int, limit: int = 100000) -> list[RetrieveItem]:
        """A retrieve's items in request order, each with what it counts now. :raises KeyError:"""

    def open_retrieve_counts() -> Mapping[str, int]:
        """OPEN retrieves by kind (``move``, ``get``), for the ``retrieves_open`` gauge."""

    def purge_retrieves(finished_before: float, limit: int) -> RetrievePurge:
        """Delete finished retrieves (DONE, CANCELLED, FAILED) ended before ``finished_before``, with their items.

        One transaction deleting at most ``limit`` rows (items and retrieves
        together), oldest end first; a retrieve goes once its last item has
        gone, so a large one takes several batches. The caller repeats until
        a batch deletes nothing. OPEN retrieves are never touched.
        """

    def remember_uids(pairs: Sequence[tuple[str, str]], now: float) -> None:
        """Keep ``(remapped, original)`` UID pairs (idempotent); writing a pair again is a use (as ``original_uids``)."""

    def original_uids(remapped: Collection[str], now: float | None = None) -> Mapping[str, str]:
        """The originals of those remapped UIDs that are on record.

        With ``now``, the lookup counts as a use: the entries found whose last
        use is older than :data:`REMAP_TOUCH_INTERVAL` get ``now`` (one write,
        only then).
        """

    def purge_remapped_uids(unused_before: float, limit: int) -> int:
        """Delete at most ``limit`` remapped UIDs last used (looked up or written) before ``unused_before``; how many went."""
