"""The console's data over the running gateway: :class:`ServiceConsoleData` (issue 18).

:class:`ServiceConsoleData` is the :class:`~gateway.console.data.ConsoleData`
the pages use. It reads the journal through the console's keyset queries
(:mod:`gateway.queue.console_sql`, :mod:`gateway.queue.memory_console`) on the
store's runner, the audit trail (:mod:`gateway.console.auditread`) and the
rule check (:func:`gateway.check.check_file`) on the file runner, and the
rest (listeners, workers, configuration) from memory.

Actions are the HTTP API's: every retry, re-target, purge, pause and reload
goes through :class:`~gateway.httpbackend.ServiceBackend`'s audited methods,
so the console and the API keep one set of rules and one audit record per
entry, with the console's operator (``via="console"``). A re-target that no
route in force would make is refused (the API's 409) unless the form says
``force``; a forced one is audited as such.

Bulk actions (the selected ids, or every dead letter matching a filter)
change at most :data:`~gateway.console.data.BULK_LIMIT` entries and say when
the filter matched more (``truncated``). They run :data:`ACTION_BATCH`
entries at a time, each batch waiting for the one before, so a bulk action
never floods the store's runner: the workers' own store calls keep their
turn between batches.

The overview is cached for :data:`OVERVIEW_TTL` seconds and concurrent
requests share one read, so a room of browsers refreshing every few seconds
costs one set of store reads per second at most.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.python.failure import Failure

from gateway.admin import Operator
from gateway.console.auditread import read_audit
from gateway.console.data import (
    BULK_LIMIT,
    ActionResult,
    AuditPage,
    DeadFilter,
    DeadPage,
    DestinationView,
    FoundInstance,
    ListenerView,
    NodeView,
    Overview,
    RuleCheck,
)
from gateway.queue.interfaces import Entry

__all__ = ["ServiceConsoleData", "OVERVIEW_TTL", "ACTION_BATCH", "RATE_BUCKETS", "RATE_BUCKET_SECONDS", "destination_kind"]

#: Seconds an overview is served from memory.
OVERVIEW_TTL = 1.0
#: Entries one batch of a bulk action changes before the next batch starts.
ACTION_BATCH = 50
#: The overview's delivery chart: 60 buckets of one minute (the last hour).
RATE_BUCKETS = 60
RATE_BUCKET_SECONDS = 60.0

#: The configuration type's name -> the overview's kind.
_KINDS = {
    "DicomDestination": "dicom",
    "FolderDestination": "folder",
    "DicomWebDestination": "dicomweb",
    "WebhookSink": "webhook",
    "Hl7Sink": "hl7",
    "FhirSink": "fhir",
}


def destination_kind(destination: Any) -> str:
    """``dicom``, ``folder``, ``dicomweb``, ``webhook``, ``hl7`` or ``fhir``, from the destination's configuration type."""
    return _KINDS.get(type(destination).__name__, type(destination).__name__.lower())


class ServiceConsoleData:
    """:class:`~gateway.console.data.ConsoleData` over a :class:`~gateway.service.GatewayService`.

    :param service: the running gateway (``config``, ``store``, ``store_runner``,
        ``blocking`` (the file runner), ``listeners``, ``workers``, ``spool``).
    :param backend: the HTTP service's :class:`~gateway.httpbackend.ServiceBackend` (the audited actions).
    :param wall: wall-clock time.
    :param bulk_limit: the most entries one bulk action changes (tests make it small).
    """

    def __init__(
        self,
        service: Any,
        backend: Any,
        wall: Callable[[], float] | None = None,
        bulk_limit: int = BULK_LIMIT,
    ) -> None:
        import time

        self._service = service
        self._backend = backend
        self._wall = wall or time.time
        self._bulk_limit = bulk_limit
        self._overview: Overview | None = None
        self._overview_at = 0.0
        self._reading: list[Deferred[Overview]] | None = None

    # -- plumbing -------------------------------------------------------------------------

    @property
    def node(self) -> str:
        """The node the pages show (config ``node``, else the store's node name)."""
        config = self._service.config
        name = str(getattr(config, "node", "") or "") if config is not None else ""
        return name or str(getattr(self._service.store, "node", "") or "")

    @staticmethod
    def _console(operator: Operator) -> Operator:
        """``operator`` as the audit trail records a console action: ``via="console"`` whatever the page passed."""
        return operator if operator.via == "console" else dataclasses.replace(operator, via="console")

    def _store(self, f: Callable[..., Any], *args: Any) -> "Deferred[Any]":
        """``f(*args)`` on the store's runner."""
        return self._service.store_runner.run(f, *args)  # type: ignore[no-any-return]

    def _files(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> "Deferred[Any]":
        """``f(*args, **kwargs)`` on the file runner (the spool's blocking runner)."""
        return self._service.blocking.run(f, *args, **kwargs)  # type: ignore[no-any-return]

    def destinations(self) -> tuple[str, ...]:
        """The configured destination names (sinks included), in configuration order."""
        return tuple(d.name for d in self._service.config.destinations)

    def routes(self) -> tuple[Any, ...]:
        """The routes as loaded."""
        return tuple(self._service.config.routes)

    # -- overview -------------------------------------------------------------------------

    def overview(self) -> "Deferred[Overview]":
        """The overview, at most :data:`OVERVIEW_TTL` seconds old; concurrent callers share one read."""
        now = self._wall()
        if self._overview is not None and 0 <= now - self._overview_at < OVERVIEW_TTL:
            return succeed(self._overview)
        waiter: Deferred[Overview] = Deferred()
        if self._reading is not None:
            self._reading.append(waiter)
            return waiter
        self._reading = [waiter]

        def done(result: Any) -> None:
            waiters, self._reading = self._reading or [], None
            if isinstance(result, Overview):
                self._overview, self._overview_at = result, now
            for w in waiters:
                if isinstance(result, Failure):
                    w.errback(result)
                else:
                    w.callback(result)

        self._read_overview(now).addBoth(done)
        return waiter

    def _read_overview(self, now: float) -> "Deferred[Overview]":
        """Read every figure of the overview now (store, spool, memory)."""
        store = self._service.store
        since = now - RATE_BUCKETS * RATE_BUCKET_SECONDS

        names = self.destinations()

        def read() -> tuple[Any, Any, Any]:
            # Index range counts, not stats()' scan of every entry (a million on a busy journal).
            stats = store.console_stats(names)
            histogram = store.delivery_histogram(since, RATE_BUCKET_SECONDS, now)
            nodes = store.nodes(now)
            return stats, histogram, nodes

        d = self._store(read)

        def spool(figures: tuple[Any, Any, Any]) -> "Deferred[Overview]":
            free = self._files(self._free_bytes)

            def build(space: tuple[int | None, str]) -> Overview:
                return self._build_overview(now, *figures, *space)

            return free.addCallback(build)

        return d.addCallback(spool)

    def _free_bytes(self) -> tuple[int | None, str]:
        """The spool's free bytes (blocking: statvfs), or ``None`` and why not."""
        spool = getattr(self._service, "spool", None)
        try:
            if spool is not None and hasattr(spool, "free_bytes"):
                return int(spool.free_bytes()), ""
            st = os.statvfs(self._service.config.spool.path)
            return st.f_bavail * st.f_frsize, ""
        except OSError as e:
            return None, e.strerror or "cannot read the spool's free space"

    def _build_overview(
        self, now: float, stats: Any, histogram: dict[str, list[int]], nodes: Sequence[Any], free: int | None, error: str
    ) -> Overview:
        """The overview from what was read."""
        config = self._service.config
        workers = getattr(self._service, "workers", {}) or {}
        views = []
        for destination in config.destinations:
            s = stats.get(destination.name)
            worker = workers.get(destination.name)
            status = worker.status() if worker is not None else None
            circuit_open = bool(s is not None and s.circuit_open) or (status is not None and status.circuit == "open")
            if s is not None and s.paused:
                state = "paused"
            elif circuit_open:
                state = "down"
            else:
                state = "up"
            rate = histogram.get(destination.name) or [0] * RATE_BUCKETS
            views.append(
                DestinationView(
                    name=destination.name,
                    kind=destination_kind(destination),
                    state=state,
                    queued=s.queued if s is not None else 0,
                    in_flight=s.in_flight if s is not None else 0,
                    dead=s.dead if s is not None else 0,
                    oldest_age=None if s is None or s.oldest_queued_at is None else max(0.0, now - s.oldest_queued_at),
                    last_error=(s.last_error if s is not None else "") or (status.last_error if status is not None else ""),
                    last_error_at=s.last_error_at if s is not None else None,
                    circuit_reason=(s.circuit_reason if s is not None else "") or (status.last_error if circuit_open and status else ""),
                    rate=tuple(rate),
                )
            )
        listeners = []
        for service in getattr(self._service, "listeners", []):
            listener = service.listener
            port = getattr(service, "port", None)
            bound = getattr(port.getHost(), "port", listener.port) if port is not None and hasattr(port, "getHost") else listener.port
            listeners.append(
                ListenerView(
                    name=listener.name,
                    address=f"{listener.host}:{bound}",
                    tls=listener.tls is not None,
                    open_associations=int(getattr(service.factory, "active", 0)),
                )
            )
        this = getattr(self._service.store, "node", "")
        node_views = tuple(
            NodeView(
                name=n.node,
                last_seen_age=max(0.0, now - n.last_seen),
                leases=n.leases,
                detail=n.detail,
                this_node=n.node == this,
            )
            for n in nodes
        )
        return Overview(
            node=self.node,
            destinations=tuple(views),
            listeners=tuple(listeners),
            nodes=node_views,
            spool_free_bytes=free,
            spool_floor_bytes=int(config.spool.min_free_bytes) if getattr(config.spool, "min_free_bytes", None) is not None else None,
            spool_error=error,
            generated_at=now,
        )

    # -- reading the journal -------------------------------------------------------------

    def find(self, by: str, value: str, limit: int = 500) -> "Deferred[tuple[FoundInstance, ...]]":
        """Instances whose ``by`` (``study``, ``accession``, ``patient``, ``sop``) is ``value``, with every entry.

        Fails with ValueError for another ``by``.
        """
        d = self._store(self._service.store.find_page, by, value.strip(), limit)
        return d.addCallback(lambda found: tuple(FoundInstance(record, tuple(entries)) for record, entries in found))

    def dead_letters(self, where: DeadFilter, before: int | None, limit: int = 50) -> "Deferred[DeadPage]":
        """One page of dead letters, newest first; ``next_before`` set when there are more.

        Fails with ValueError when the filter's reason is no kind.
        """
        d = self._store(self._service.store.dead_page, where, before, limit + 1)

        def page(entries: list[Entry]) -> DeadPage:
            shown = tuple(entries[:limit])
            more = len(entries) > limit and bool(shown)
            return DeadPage(entries=shown, next_before=shown[-1].entry_id if more else None)

        return d.addCallback(page)

    def count_dead(self, where: DeadFilter) -> "Deferred[int]":
        """How many dead letters match ``where``, counted up to the bulk limit plus one (more than the limit: truncated)."""
        return self._store(self._service.store.dead_count, where, self._bulk_limit + 1)

    def dead_letter(self, entry_id: int) -> "Deferred[Entry]":
        """One entry with its history; fails with KeyError when there is none."""
        return self._store(self._service.store.get, entry_id)

    # -- actions (audited through ServiceBackend) -------------------------------------------

    def _targets(self, ids: Sequence[int] | None, where: DeadFilter | None) -> "Deferred[tuple[list[int], bool]]":
        """The entries a bulk action changes (at most the bulk limit) and whether more were asked for."""
        limit = self._bulk_limit
        if ids is not None:
            unique = list(dict.fromkeys(int(i) for i in ids))
            return succeed((unique[:limit], len(unique) > limit))
        store = self._service.store
        wanted = where if where is not None else DeadFilter()

        def read() -> tuple[list[int], bool]:
            found = store.dead_ids(wanted, limit + 1)
            return found[:limit], len(found) > limit

        return self._store(read)

    def _each(
        self, targets: "Deferred[tuple[list[int], bool]]", act: Callable[[int], "Deferred[Any]"]
    ) -> "Deferred[ActionResult]":
        """Apply ``act`` to every target, :data:`ACTION_BATCH` at a time; gather what changed and what failed."""
        changed: list[int] = []
        failed: dict[int, str] = {}

        def run(chosen: tuple[list[int], bool]) -> "Deferred[ActionResult]":
            ids, truncated = chosen
            result: Deferred[ActionResult] = Deferred()

            def batch(start: int) -> None:
                if start >= len(ids):
                    result.callback(ActionResult(changed=tuple(changed), failed=dict(failed), truncated=truncated))
                    return
                chunk = ids[start : start + ACTION_BATCH]
                calls = []
                for entry_id in chunk:
                    d = act(entry_id)
                    d.addCallbacks(
                        lambda _, i=entry_id: changed.append(i),
                        lambda f, i=entry_id: failed.__setitem__(i, f.getErrorMessage()),
                    )
                    calls.append(d)
                DeferredList(calls, consumeErrors=True).addCallback(lambda _: batch(start + ACTION_BATCH))

            batch(0)
            return result

        return targets.addCallback(run)

    def retry(
        self,
        ids: Sequence[int] | None,
        where: DeadFilter | None,
        to: str | None,
        operator: Operator,
        force: bool = False,
    ) -> "Deferred[ActionResult]":
        """Requeue dead letters (the ids, or those matching ``where``), re-targeted to ``to`` when given.

        Each entry is :meth:`ServiceBackend.retry`: audited one by one; a
        re-target no route in force would make fails for that entry (it
        stays dead) unless ``force``, which the console sets only when the
        operator ticked it; a forced one is audited as forced.
        """
        target = to or None
        operator = self._console(operator)
        return self._each(self._targets(ids, where), lambda i: self._backend.retry(i, target, operator, force=force))

    def purge(self, ids: Sequence[int] | None, where: DeadFilter | None, operator: Operator) -> "Deferred[ActionResult]":
        """Delete dead letters (the ids, or those matching ``where``), each :meth:`ServiceBackend.purge` (audited)."""
        operator = self._console(operator)
        return self._each(self._targets(ids, where), lambda i: self._backend.purge(i, operator))

    def pause(self, destination: str, paused: bool, operator: Operator) -> "Deferred[None]":
        """:meth:`ServiceBackend.pause` (audited); the next overview is read afresh."""
        self._overview = None
        return self._backend.pause(destination, paused, self._console(operator))  # type: ignore[no-any-return]

    def reload(self, operator: Operator) -> "Deferred[bool]":
        """:meth:`ServiceBackend.reload` (audited)."""
        self._overview = None
        return self._backend.reload(self._console(operator))  # type: ignore[no-any-return]

    # -- audit, rules, spool -------------------------------------------------------------

    def audit(self, event: str | None, ae: str | None, before: str | None, limit: int = 100) -> "Deferred[AuditPage]":
        """This node's audit records (:func:`gateway.console.auditread.read_audit` on the file runner)."""
        config = self._service.config
        path = config.audit.file if config is not None else ""
        return self._files(read_audit, path, self.node, event=event or None, ae=ae or None, before=before or None, limit=limit)

    def check(self, path: str, calling_ae_title: str = "", called_ae_title: str = "") -> "Deferred[RuleCheck]":
        """:func:`gateway.check.check_file` with the configuration in force (on the file runner); nothing is sent."""
        from gateway.check import check_file
        from gateway.route import RoutingContext

        config = self._service.config
        first = config.listen[0] if config.listen else None
        context = RoutingContext(
            calling_ae_title=calling_ae_title,
            called_ae_title=called_ae_title or config.ae_title,
            source_address="127.0.0.1",
            listener=first.name if first is not None else "",
            listener_port=first.port if first is not None else 0,
            received_at=self._wall(),
        )
        return self._files(check_file, config, path, context).addCallback(RuleCheck)

    def spool_file(self, instance_id: str) -> "Deferred[str]":
        """The spooled file of an instance on record; KeyError when there is none or its file is gone."""
        store = self._service.store

        def read() -> str:
            record = store.instance_record(instance_id)
            if not os.path.isfile(record.path):
                raise KeyError(f"instance {instance_id} has no file in the spool any more")
            return str(record.path)

        return self._store(read)
