"""The row shape both SQL stores share (issue 14): the columns of ``instances`` and
``entries`` in the order the stores write and select them, and the mapping of a
row to :class:`~gateway.queue.interfaces.InstanceRecord` and
:class:`~gateway.queue.interfaces.Entry`.

One place for it, so a column added by a migration of one store
(:mod:`gateway.queue.schema` for SQLite, :mod:`gateway.queue.pgschema` for
PostgreSQL) cannot be read by one store and forgotten by the other. Only the
``history`` column differs between the two (JSON text in SQLite, ``jsonb`` in
PostgreSQL): each store passes its decoder.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from gateway.queue.interfaces import Attempt, Entry, EntryState, InstanceRecord

__all__ = ["INSTANCE_COLUMNS", "ENTRY_COLUMNS", "ENTRY_SELECT", "record_from_row", "entry_from_row"]

INSTANCE_COLUMNS: tuple[str, ...] = (
    "instance_id",
    "path",
    "sop_class_uid",
    "sop_instance_uid",
    "transfer_syntax_uid",
    "size",
    "sha256",
    "received_at",
    "correlation_id",
    "study_instance_uid",
    "series_instance_uid",
    "patient_id",
    "accession_number",
    "modality",
    "calling_ae_title",
    "called_ae_title",
    "source_address",
    "dataset_offset",
    "node",
)

ENTRY_COLUMNS: tuple[str, ...] = (
    "entry_id",
    "route",
    "destination",
    "path",
    "state",
    "attempts",
    "enqueued_at",
    "next_attempt_at",
    "last_error",
    "delivered_at",
    "dead_reason",
    "history",
    "plan_hash",
    "lease_owner",
    "lease_generation",
    "leased_until",
)

#: One SELECT shape for every Entry: the entry's columns, then its instance's
#: (both stores; the entry table is ``e``, the instance table ``i``).
ENTRY_SELECT = (
    "SELECT "
    + ", ".join("e." + c for c in ENTRY_COLUMNS)
    + ", "
    + ", ".join("i." + c for c in INSTANCE_COLUMNS)
    + " FROM entries e JOIN instances i ON i.instance_id = e.instance_id"
)


def record_from_row(row: Sequence[Any]) -> InstanceRecord:
    """Build an :class:`InstanceRecord` from a row in :data:`INSTANCE_COLUMNS` order."""
    return InstanceRecord(**dict(zip(INSTANCE_COLUMNS, row)))


def entry_from_row(row: Sequence[Any], history: Callable[[Any], tuple[Attempt, ...]]) -> Entry:
    """Build an :class:`Entry` from a row of :data:`ENTRY_SELECT`.

    :param history: decodes the store's ``history`` column into attempts.
    """
    n = len(ENTRY_COLUMNS)
    values = dict(zip(ENTRY_COLUMNS, row[:n]))
    instance = record_from_row(row[n:])
    return Entry(
        entry_id=values["entry_id"],
        instance=instance,
        route=values["route"],
        destination=values["destination"],
        # The entry's own (morphed) copy if it has one, else the shared spool file.
        path=values["path"] if values["path"] is not None else instance.path,
        state=EntryState(values["state"]),
        attempts=values["attempts"],
        enqueued_at=values["enqueued_at"],
        next_attempt_at=values["next_attempt_at"],
        last_error=values["last_error"],
        delivered_at=values["delivered_at"],
        dead_reason=values["dead_reason"],
        history=history(values["history"]),
        plan_hash=values["plan_hash"],
        lease_owner=values["lease_owner"] or "",
        lease_generation=values["lease_generation"],
        leased_until=values["leased_until"] if values["state"] == EntryState.LEASED.value else None,
    )
