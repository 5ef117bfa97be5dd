"""The console's reads over the in-memory store (issue 18): the fake's half of :mod:`gateway.queue.console_sql`.

:class:`~gateway.queue.memory.MemoryQueueStore` inherits
:class:`MemoryConsoleQueries`; the ``ConsoleQueryTests`` mixin runs against
it, the SQLite store and the PostgreSQL store. The conventions the three
share (the mixin pins each one):

* ``dead_page`` and ``dead_ids`` list newest (highest id) first; the cursor
  ``before`` is exclusive; a :class:`~gateway.console.data.DeadFilter` of
  ``None`` fields (or ``None``) matches every dead letter.
* The reason filter is :meth:`DeadLetterKind.of_reason` of the stored text;
  an unknown reason raises :class:`ValueError`.
* ``enqueued_before`` is exclusive (``enqueued_at < t``).
* ``dead_count`` stops at ``cap``.
* ``delivery_histogram`` counts DELIVERED entries with ``since <=
  delivered_at < now`` in ``ceil((now - since) / bucket_seconds)`` buckets,
  oldest first; destinations without a delivery in the window are absent.
* ``find_page`` is ``find`` by one key with a limit on the instances.
* ``console_stats`` is ``stats`` for the named destinations (and any other
  with a destinations row) with ``delivered``, ``duplicates`` and
  ``stranded`` left 0; ``oldest_queued_at`` the oldest QUEUED or LEASED.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterator, Sequence

from gateway.queue.console_sql import FIND_COLUMNS, histogram_buckets
from gateway.queue.interfaces import DestinationStats, Entry, EntryState, InstanceRecord
from gateway.queue.outcome import DeadLetterKind

__all__ = ["MemoryConsoleQueries"]


class MemoryConsoleQueries:
    """The console's reads over :class:`~gateway.queue.memory.MemoryQueueStore`'s tables (``self._t``)."""

    _t: Any
    _entry: Any

    def _dead_rows(self, where: Any, before: int | None = None) -> Iterator[Any]:
        """The dead rows matching ``where`` below ``before``, newest first."""
        kind = DeadLetterKind(where.reason) if where is not None and where.reason is not None else None
        for row in reversed(self._t.rows.values()):
            if row.state is not EntryState.DEAD or (before is not None and row.entry_id >= before):
                continue
            if where is not None:
                if where.destination is not None and row.destination != where.destination:
                    continue
                if where.route is not None and row.route != where.route:
                    continue
                if where.enqueued_before is not None and not row.enqueued_at < where.enqueued_before:
                    continue
                if kind is not None and DeadLetterKind.of_reason(row.dead_reason) is not kind:
                    continue
            yield row

    def console_stats(self, names: Sequence[str]) -> dict[str, DestinationStats]:
        """The overview's figures: :meth:`stats` without delivered, duplicates and stranded (left 0)."""
        full = self.stats(0.0)  # type: ignore[attr-defined]
        result: dict[str, DestinationStats] = {}
        for name in list(dict.fromkeys(list(names) + sorted(full))):
            s = full.get(name, DestinationStats(destination=name))
            result[name] = replace(s, delivered=0, duplicates=0, stranded=0)
        return result

    def dead_page(self, where: Any, before: int | None, limit: int) -> list[Entry]:
        """Dead letters matching ``where`` below ``before``, newest first (see :mod:`gateway.queue.console_sql`)."""
        result: list[Entry] = []
        if limit <= 0:
            return result
        for row in self._dead_rows(where, before):
            result.append(self._entry(row))
            if len(result) >= limit:
                break
        return result

    def dead_count(self, where: Any, cap: int) -> int:
        """How many dead letters match ``where``, counting at most ``cap``."""
        n = 0
        if cap <= 0:
            return n
        for _ in self._dead_rows(where):
            n += 1
            if n >= cap:
                break
        return n

    def dead_ids(self, where: Any, limit: int) -> list[int]:
        """Ids of the dead letters matching ``where``, newest first, at most ``limit``."""
        result: list[int] = []
        if limit <= 0:
            return result
        for row in self._dead_rows(where):
            result.append(row.entry_id)
            if len(result) >= limit:
                break
        return result

    def delivery_histogram(self, since: float, bucket_seconds: float, now: float) -> dict[str, list[int]]:
        """Deliveries per destination per bucket, oldest first (see :mod:`gateway.queue.console_sql`)."""
        if bucket_seconds <= 0 or now <= since:
            return {}
        count = histogram_buckets(since, bucket_seconds, now)
        result: dict[str, list[int]] = {}
        for row in self._t.rows.values():
            at = row.delivered_at
            if row.state is EntryState.DELIVERED and at is not None and since <= at < now:
                index = int((at - since) // bucket_seconds)
                if 0 <= index < count:
                    result.setdefault(row.destination, [0] * count)[index] += 1
        return result

    def instance_record(self, instance_id: str) -> InstanceRecord:
        """The instance on record under ``instance_id``. :raises KeyError: there is none."""
        return self._t.instances[instance_id]  # type: ignore[no-any-return]

    def find_page(self, by: str, value: str, limit: int) -> list[tuple[InstanceRecord, list[Entry]]]:
        """Instances whose ``by`` is ``value``, oldest received first, at most ``limit``, with their entries."""
        column = FIND_COLUMNS.get(by)
        if column is None:
            raise ValueError(f"find by study, accession, patient or sop, not {by!r}")
        if limit <= 0:
            return []
        records = sorted(
            (r for r in self._t.instances.values() if getattr(r, column) == value),
            key=lambda r: (r.received_at, r.instance_id),
        )[:limit]
        wanted = {r.instance_id: [] for r in records}  # type: dict[str, list[Entry]]
        for row in self._t.rows.values():
            if row.instance_id in wanted:
                wanted[row.instance_id].append(self._entry(row))
        return [(r, wanted[r.instance_id]) for r in records]
