"""What the console's pages read and do: the :class:`ConsoleData` protocol and its records (issue 18).

The pages (:mod:`gateway.console.site`) never touch the store, the audit
file or the configuration themselves: they ask a :class:`ConsoleData`
(:class:`gateway.console.backend.ServiceConsoleData` over the running
gateway; a fake in the page tests). Every method returns a Deferred and
runs its store work on the store's thread. Lists are keyset pages: a page
is at most ``limit`` rows and carries the cursor of the next one, so a
page costs the same with a million journal entries as with ten.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

from twisted.internet.defer import Deferred

from gateway.admin import Operator
from gateway.queue.interfaces import Entry, InstanceRecord

__all__ = [
    "DeadFilter",
    "DeadPage",
    "DestinationView",
    "ListenerView",
    "NodeView",
    "Overview",
    "ActionResult",
    "AuditRecordView",
    "AuditPage",
    "FoundInstance",
    "RuleCheck",
    "ConsoleData",
    "BULK_LIMIT",
]

#: The most dead letters one bulk action ("all matching the filter") changes;
#: the confirmation says so when the filter matches more.
BULK_LIMIT = 10000


@dataclass(frozen=True)
class DeadFilter:
    """The dead-letter page's filter (every field optional).

    :ivar reason: a :class:`~gateway.queue.outcome.DeadLetterKind` value.
    :ivar enqueued_before: only entries enqueued before this wall-clock time (the "age" filter).
    """

    destination: str | None = None
    reason: str | None = None
    route: str | None = None
    enqueued_before: float | None = None


@dataclass(frozen=True)
class DeadPage:
    """One page of dead letters, newest first; ``next_before`` is the cursor of the next page (``None``: last)."""

    entries: tuple[Entry, ...]
    next_before: int | None = None


@dataclass(frozen=True)
class DestinationView:
    """One destination on the overview.

    :ivar kind: ``dicom``, ``folder``, ``dicomweb``, ``webhook``, ``hl7`` or ``fhir``.
    :ivar state: ``up``, ``down`` (circuit open), ``paused``.
    :ivar rate: deliveries per minute over the last hour, oldest first (60 buckets).
    """

    name: str
    kind: str
    state: str
    queued: int = 0
    in_flight: int = 0
    dead: int = 0
    oldest_age: float | None = None
    last_error: str = ""
    last_error_at: float | None = None
    circuit_reason: str = ""
    rate: tuple[int, ...] = ()


@dataclass(frozen=True)
class ListenerView:
    """One listener on the overview."""

    name: str
    address: str
    tls: bool
    open_associations: int


@dataclass(frozen=True)
class NodeView:
    """One node sharing the queue."""

    name: str
    last_seen_age: float
    leases: int
    detail: str = ""
    this_node: bool = False


@dataclass(frozen=True)
class Overview:
    """The overview page's figures (``node``: the node that answers)."""

    node: str
    destinations: tuple[DestinationView, ...]
    listeners: tuple[ListenerView, ...]
    nodes: tuple[NodeView, ...]
    spool_free_bytes: int | None
    spool_floor_bytes: int | None
    spool_error: str = ""
    generated_at: float = 0.0


@dataclass(frozen=True)
class ActionResult:
    """What an operator action did: the entries it changed and those it could not (id -> why)."""

    changed: tuple[int, ...] = ()
    failed: Mapping[int, str] = field(default_factory=dict)
    truncated: bool = False  # the filter matched more than BULK_LIMIT


@dataclass(frozen=True)
class AuditRecordView:
    """One audit record, flattened for the page (``record``: the JSON object as written)."""

    at: str
    event: str
    outcome: str
    ae_titles: tuple[str, ...]
    summary: str
    record: Mapping[str, Any]


@dataclass(frozen=True)
class AuditPage:
    """Recent audit records of this node, newest first (``next_before``: cursor of older ones)."""

    node: str
    records: tuple[AuditRecordView, ...]
    next_before: str | None = None


@dataclass(frozen=True)
class FoundInstance:
    """One instance ``find`` answered, with every entry (each with its history)."""

    instance: InstanceRecord
    entries: tuple[Entry, ...]


@dataclass(frozen=True)
class RuleCheck:
    """What ``dicom-gateway check`` answers for one file (:func:`gateway.check.check_file`'s report)."""

    report: Mapping[str, Any]


class ConsoleData(Protocol):
    """The gateway as the console sees it."""

    node: str

    def overview(self) -> "Deferred[Overview]":
        """Destinations, listeners, nodes and the spool, now."""

    def find(self, by: str, value: str, limit: int = 500) -> "Deferred[tuple[FoundInstance, ...]]":
        """``by``: ``study``, ``accession``, ``patient`` or ``sop`` (what ``dicom-gateway find`` takes)."""

    def dead_letters(self, where: DeadFilter, before: int | None, limit: int = 50) -> "Deferred[DeadPage]":
        """One page of dead letters matching ``where``, ids below ``before``."""

    def count_dead(self, where: DeadFilter) -> "Deferred[int]":
        """How many dead letters match ``where`` (what a bulk action would affect, before it is confirmed)."""

    def dead_letter(self, entry_id: int) -> "Deferred[Entry]":
        """One entry with its history. Fails with KeyError when there is none."""

    def retry(
        self, ids: Sequence[int] | None, where: DeadFilter | None, to: str | None, operator: Operator, force: bool = False
    ) -> "Deferred[ActionResult]":
        """Requeue the given dead letters (or, with ``ids=None``, every one matching ``where``, up to
        :data:`BULK_LIMIT`), re-targeted to ``to`` when given; audited with ``operator``. A re-target
        no route would make fails for that entry unless ``force`` (the API's rule)."""

    def purge(self, ids: Sequence[int] | None, where: DeadFilter | None, operator: Operator) -> "Deferred[ActionResult]":
        """Delete the given dead letters (or every one matching ``where``); audited."""

    def pause(self, destination: str, paused: bool, operator: Operator) -> "Deferred[None]":
        """Pause or resume a destination; audited."""

    def reload(self, operator: Operator) -> "Deferred[bool]":
        """Reload the configuration; audited."""

    def audit(self, event: str | None, ae: str | None, before: str | None, limit: int = 100) -> "Deferred[AuditPage]":
        """This node's recent audit records, newest first, filtered by event (name or id) and AE title."""

    def check(self, path: str, calling_ae_title: str = "", called_ae_title: str = "") -> "Deferred[RuleCheck]":
        """Which routes match the file, where it would go and each route's tag diff; nothing is sent."""

    def spool_file(self, instance_id: str) -> "Deferred[str]":
        """The spooled file of an instance on record (the rule tester's "pick one from the spool"). KeyError: none."""

    def destinations(self) -> tuple[str, ...]:
        """The configured destination names (re-target choices, filters)."""

    def routes(self) -> tuple[Any, ...]:
        """The routes as loaded (:class:`~gateway.config.schema.RouteConfig`)."""
