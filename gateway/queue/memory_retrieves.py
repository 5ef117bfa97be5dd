"""The in-memory :class:`~gateway.queue.retrieves.IRetrieveJournal`: the verified fake's half for issue 16.

:class:`~gateway.queue.memory.MemoryQueueStore` inherits
:class:`MemoryRetrieveJournal`; the ``RetrieveJournalTests`` mixin runs
against it, the SQLite store and the PostgreSQL store.

The conventions the three stores share (the mixin pins each one):

* ``open_retrieve`` keeps the expected instances in request order without
  repeats (the first of a SOP Instance UID wins), so ``request.expected``
  comes back de-duplicated. Retrieve ids grow from 1 and are never reused.
* Outgoing message IDs are allocated round-robin: the first free one after
  the last allocated, in 1..:data:`MAX_MESSAGE_ID`, wrapping; an id is held
  only while its retrieve is OPEN (PS3.7 9.1.1.1: the Move Originator
  Message ID is 16 bits), so a late sub-operation of a finished retrieve is
  unlikely to meet a new one under the same id (and must also name an
  expected UID).
* ``match_sub_operation`` matches an OPEN retrieve holding that id whose
  items include the UID, whatever the item's state (a source that resends
  an instance is the caller's to judge).
* ``link_item`` and ``item_outcome`` raise :class:`KeyError` for an unknown
  retrieve or a UID it does not expect; they work in any retrieve state (a
  late delivery after the final response is still recorded). ``link_item``
  makes the item RECEIVED (clearing any recorded outcome); ``item_outcome``
  sets the state and reason as given.
* ``progress`` counts per item: EXPECTED -> remaining; COMPLETED, WARNING,
  FAILED as recorded; RECEIVED without an entry -> remaining; RECEIVED with
  an entry -> by the entry's state: DELIVERED counts completed, or warning
  when its ``last_error`` holds the warning; DUPLICATE counts completed (the
  destination already has that copy); DEAD, or an entry no longer in the
  journal (purged, or replaced by ``requeue_dead``), counts failed; any other
  state remaining. ``failed_uids`` in request order.
* ``finish_retrieve`` with a state that is not an end raises
  :class:`ValueError` (checked first), of an unknown retrieve :class:`KeyError`; a retrieve already ended
  stays as it is (the first end wins: a C-CANCEL racing the deadline).
* ``retrieves`` lists newest first (``created_at``, then id).
* ``remember_uids`` keeps the first original recorded for a remapped UID.
* A remapped UID's last use (``remember_uids``, ``original_uids`` with
  ``now``) moves only forward, and only when the recorded one is more than
  :data:`~gateway.queue.retrieves.REMAP_TOUCH_INTERVAL` older;
  ``purge_remapped_uids`` deletes, oldest use first (then UID), those used
  strictly before the bound.
* ``purge_retrieves`` walks the ended retrieves with ``finished_at`` strictly
  before the bound, oldest end first (then id); each deleted item and each
  deleted retrieve costs one of ``limit``; a retrieve's items go in request
  order, and the retrieve row only when its last item has gone and one more
  row fits in the batch.
* ``retrieves(before=(t, id))`` lists the retrieves after ``(t, id)`` in
  the newest-first order: ``created_at < t``, or ``created_at == t`` and a
  smaller id.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Collection, Mapping, Sequence

from gateway.queue.commitments import Reference
from gateway.queue.interfaces import EntryState
from gateway.queue.retrieves import (
    REMAP_TOUCH_INTERVAL,
    ItemState,
    NewRetrieve,
    Retrieve,
    RetrieveIdsExhausted,
    RetrieveItem,
    RetrieveProgress,
    RetrievePurge,
    RetrieveState,
)

if TYPE_CHECKING:
    from gateway.queue.memory import _Tables

__all__ = ["MemoryRetrieveJournal", "RetrieveTables", "MAX_MESSAGE_ID", "unique_expected", "next_message_id", "ENDS"]

#: The largest Message ID (an unsigned 16-bit value, PS3.7 E.1); 0 is never used.
MAX_MESSAGE_ID = 65535

#: The states ``finish_retrieve`` accepts.
ENDS = frozenset({RetrieveState.DONE, RetrieveState.CANCELLED, RetrieveState.FAILED})


def unique_expected(new: NewRetrieve) -> NewRetrieve:
    """``new`` with its expected instances without repeats (first of each SOP Instance UID, in order)."""
    seen: dict[str, Reference] = {}
    for ref in new.expected:
        seen.setdefault(ref.sop_instance_uid, ref)
    return replace(new, expected=tuple(seen.values()))


def next_message_id(held: Collection[int], last: int, limit: int = MAX_MESSAGE_ID) -> int:
    """The first id after ``last`` (wrapping in 1..``limit``) not in ``held``.

    :raises RetrieveIdsExhausted: every id is held.
    """
    if len(held) >= limit:
        raise RetrieveIdsExhausted(f"all {limit} outgoing message IDs are held by open retrieves")
    candidate = last
    for _ in range(limit):
        candidate = candidate % limit + 1
        if candidate not in held:
            return candidate
    raise RetrieveIdsExhausted(f"all {limit} outgoing message IDs are held by open retrieves")


@dataclass
class _Item:
    """One mutable retrieve item row."""

    reference: Reference
    state: ItemState = ItemState.EXPECTED
    entry_id: int | None = None
    reason: str = ""
    updated_at: float = 0.0


@dataclass
class _Retrieve:
    """One mutable retrieve row with its items (by SOP Instance UID, in request order)."""

    retrieve_id: int
    request: NewRetrieve
    message_id: int
    node: str
    created_at: float
    state: RetrieveState = RetrieveState.OPEN
    finished_at: float | None = None
    error: str = ""
    items: dict[str, _Item] = field(default_factory=dict)

    def frozen(self) -> Retrieve:
        """The frozen view of this row."""
        return Retrieve(
            retrieve_id=self.retrieve_id,
            request=self.request,
            message_id=self.message_id,
            node=self.node,
            state=self.state,
            created_at=self.created_at,
            finished_at=self.finished_at,
            error=self.error,
        )


@dataclass
class RetrieveTables:
    """The retrieve tables every node's store object shares (part of the memory store's ``_Tables``)."""

    retrieves: dict[int, _Retrieve] = field(default_factory=dict)
    next_id: int = 1
    # Outgoing message id -> retrieve id, for OPEN retrieves only.
    held: dict[int, int] = field(default_factory=dict)
    last_message_id: int = 0
    # remapped -> original.
    uids: dict[str, str] = field(default_factory=dict)
    # remapped -> last use (written or looked up).
    uid_used: dict[str, float] = field(default_factory=dict)


def count_item(
    state: ItemState, entry_id: int | None, entry_state: EntryState | None, entry_warning: str
) -> str:
    """Which count of :class:`RetrieveProgress` an item adds to (``remaining``, ``completed``, ``warning``, ``failed``).

    :param entry_state: the linked entry's state, ``None`` when it is not in the journal.
    :param entry_warning: the linked entry's ``last_error``.
    """
    if state is ItemState.EXPECTED:
        return "remaining"
    if state is not ItemState.RECEIVED:
        return state.value
    if entry_id is None:
        return "remaining"
    if entry_state is None or entry_state is EntryState.DEAD:
        return "failed"
    if entry_state is EntryState.DELIVERED:
        return "warning" if entry_warning else "completed"
    if entry_state is EntryState.DUPLICATE:
        return "completed"
    return "remaining"


def tally(counted: Sequence[tuple[str, str]]) -> RetrieveProgress:
    """A :class:`RetrieveProgress` from ``(count, sop_instance_uid)`` pairs in request order."""
    totals = {"remaining": 0, "completed": 0, "warning": 0, "failed": 0}
    failed: list[str] = []
    for count, uid in counted:
        totals[count] += 1
        if count == "failed":
            failed.append(uid)
    return RetrieveProgress(failed_uids=tuple(failed), **totals)


class MemoryRetrieveJournal:
    """IRetrieveJournal in dicts (mixed into :class:`~gateway.queue.memory.MemoryQueueStore`).

    Every method completes or raises before changing anything (one
    transaction); the fake has no threads, so two nodes never interleave.
    """

    node: str
    _t: _Tables
    #: The largest outgoing message ID (a test lowers it to reach exhaustion quickly).
    max_message_id: int = MAX_MESSAGE_ID

    @property
    def _r(self) -> RetrieveTables:
        """The retrieve tables."""
        return self._t.retrieves

    def open_retrieve(self, new: NewRetrieve, now: float) -> Retrieve:
        """Journal a retrieve, OPEN, its items EXPECTED, with a fresh outgoing message ID (see the interface).

        :raises RetrieveIdsExhausted: every message ID is held by an OPEN retrieve.
        """
        message_id = next_message_id(self._r.held, self._r.last_message_id, self.max_message_id)
        new = unique_expected(new)
        row = _Retrieve(self._r.next_id, new, message_id, self.node, now)
        row.items = {ref.sop_instance_uid: _Item(ref, updated_at=now) for ref in new.expected}
        self._r.next_id += 1
        self._r.retrieves[row.retrieve_id] = row
        self._r.held[message_id] = row.retrieve_id
        self._r.last_message_id = message_id
        return row.frozen()

    def match_sub_operation(self, message_id: int, sop_instance_uid: str) -> Retrieve | None:
        """The OPEN retrieve holding ``message_id`` that expects ``sop_instance_uid`` (see the interface)."""
        retrieve_id = self._r.held.get(message_id)
        if retrieve_id is None:
            return None
        row = self._r.retrieves[retrieve_id]
        if row.state is not RetrieveState.OPEN or sop_instance_uid not in row.items:
            return None
        return row.frozen()

    def _item(self, retrieve_id: int, sop_instance_uid: str) -> _Item:
        """One item. :raises KeyError: unknown retrieve or UID."""
        return self._r.retrieves[retrieve_id].items[sop_instance_uid]

    def link_item(self, retrieve_id: int, sop_instance_uid: str, entry_id: int | None, now: float) -> None:
        """The item arrived in custody: RECEIVED, linked to ``entry_id`` (see the interface). :raises KeyError:"""
        item = self._item(retrieve_id, sop_instance_uid)
        item.state = ItemState.RECEIVED
        item.entry_id = entry_id
        item.reason = ""
        item.updated_at = now

    def item_outcome(
        self, retrieve_id: int, sop_instance_uid: str, state: ItemState, reason: str, now: float, expected_only: bool = False
    ) -> None:
        """Record an item's end without a queue entry (see the interface). :raises KeyError:"""
        item = self._item(retrieve_id, sop_instance_uid)
        if expected_only and item.state is not ItemState.EXPECTED:
            return
        item.state = state
        item.reason = reason
        item.updated_at = now

    def fail_expected(self, retrieve_id: int, reason: str, now: float) -> tuple[str, ...]:
        """The items still EXPECTED end FAILED (see the interface). :raises KeyError:"""
        row = self._r.retrieves[retrieve_id]
        ended: list[str] = []
        for uid, item in row.items.items():
            if item.state is ItemState.EXPECTED:
                item.state = ItemState.FAILED
                item.reason = reason
                item.updated_at = now
                ended.append(uid)
        return tuple(ended)

    def _counted(self, item: _Item) -> tuple[str, str]:
        """Which count ``item`` adds to now, and its linked entry's dead reason (``""``: none)."""
        entry = None if item.entry_id is None else self._t.rows.get(item.entry_id)
        count = count_item(
            item.state,
            item.entry_id,
            None if entry is None else entry.state,
            "" if entry is None else entry.last_error,
        )
        return count, "" if entry is None else entry.dead_reason

    def progress(self, retrieve_id: int) -> RetrieveProgress:
        """The counts now, reading the linked entries' states (see the interface). :raises KeyError:"""
        row = self._r.retrieves[retrieve_id]
        return tally([(self._counted(item)[0], uid) for uid, item in row.items.items()])

    def retrieve_items(self, retrieve_id: int, limit: int = 100000) -> list[RetrieveItem]:
        """A retrieve's items in request order, each with what it counts now (see the interface). :raises KeyError:"""
        row = self._r.retrieves[retrieve_id]
        items: list[RetrieveItem] = []
        for item in list(row.items.values())[: max(limit, 0)]:
            counted, dead_reason = self._counted(item)
            items.append(
                RetrieveItem(
                    sop_class_uid=item.reference.sop_class_uid,
                    sop_instance_uid=item.reference.sop_instance_uid,
                    state=item.state,
                    entry_id=item.entry_id,
                    reason=item.reason or dead_reason,
                    updated_at=item.updated_at,
                    counted=counted,
                )
            )
        return items

    def open_retrieve_counts(self) -> Mapping[str, int]:
        """OPEN retrieves by kind (see the interface)."""
        counts: dict[str, int] = {}
        for row in self._r.retrieves.values():
            if row.state is RetrieveState.OPEN:
                counts[row.request.kind] = counts.get(row.request.kind, 0) + 1
        return counts

    def purge_retrieves(self, finished_before: float, limit: int) -> RetrievePurge:
        """Delete ended retrieves and their items, at most ``limit`` rows (see the interface)."""
        ended = sorted(
            (
                row
                for row in self._r.retrieves.values()
                if row.state is not RetrieveState.OPEN and row.finished_at is not None and row.finished_at < finished_before
            ),
            key=lambda row: (row.finished_at, row.retrieve_id),
        )
        budget, retrieves, items = limit, 0, 0
        for row in ended:
            if budget <= 0:
                break
            for uid in list(row.items)[:budget]:
                del row.items[uid]
                items += 1
                budget -= 1
            if row.items or budget <= 0:
                break
            del self._r.retrieves[row.retrieve_id]
            retrieves += 1
            budget -= 1
        return RetrievePurge(retrieves=retrieves, items=items)

    def finish_retrieve(self, retrieve_id: int, state: RetrieveState, error: str, now: float) -> None:
        """End an OPEN retrieve: its message ID is free again (see the interface). :raises KeyError:"""
        if state not in ENDS:
            raise ValueError(f"{state} does not end a retrieve")
        row = self._r.retrieves[retrieve_id]
        if row.state is not RetrieveState.OPEN:
            return
        row.state = state
        row.error = error
        row.finished_at = now
        self._r.held.pop(row.message_id, None)

    def get_retrieve(self, retrieve_id: int) -> Retrieve:
        """One retrieve (see the interface). :raises KeyError:"""
        return self._r.retrieves[retrieve_id].frozen()

    def retrieves(
        self, state: RetrieveState | None = None, limit: int = 1000, before: tuple[float, int] | None = None
    ) -> list[Retrieve]:
        """Retrieves, newest first, after the keyset cursor ``before`` (see the interface)."""
        rows = sorted(
            (
                row
                for row in self._r.retrieves.values()
                if (state is None or row.state is state)
                and (before is None or (row.created_at, row.retrieve_id) < (before[0], before[1]))
            ),
            key=lambda row: (row.created_at, row.retrieve_id),
            reverse=True,
        )
        return [row.frozen() for row in rows[: max(limit, 0)]]

    def remember_uids(self, pairs: Sequence[tuple[str, str]], now: float) -> None:
        """Keep ``(remapped, original)`` pairs; the first original of a remapped UID stays (see the interface)."""
        for remapped, original in pairs:
            self._r.uids.setdefault(remapped, original)
            self._touch(remapped, now)

    def _touch(self, remapped: str, now: float) -> None:
        """Record a use of ``remapped`` when the recorded one is older than REMAP_TOUCH_INTERVAL."""
        if self._r.uid_used.get(remapped, float("-inf")) < now - REMAP_TOUCH_INTERVAL:
            self._r.uid_used[remapped] = now

    def original_uids(self, remapped: Collection[str], now: float | None = None) -> Mapping[str, str]:
        """The originals of those remapped UIDs that are on record; a use with ``now`` (see the interface)."""
        found = {uid: self._r.uids[uid] for uid in set(remapped) if uid in self._r.uids}
        if now is not None:
            for uid in found:
                self._touch(uid, now)
        return found

    def purge_remapped_uids(self, unused_before: float, limit: int) -> int:
        """Delete at most ``limit`` remapped UIDs last used before ``unused_before`` (see the interface)."""
        stale = sorted(
            (used, uid) for uid, used in self._r.uid_used.items() if used < unused_before
        )[: max(limit, 0)]
        for _used, uid in stale:
            del self._r.uids[uid]
            del self._r.uid_used[uid]
        return len(stale)
