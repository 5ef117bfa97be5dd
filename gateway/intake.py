"""Custody: what happens between "the spool has the file" and "the modality is told success".

:class:`Intake` takes each instance the spool committed, routes it
(:func:`gateway.route.evaluate`), and journals its queue entries in one store
transaction. Only when that transaction has committed does the storage SCP
answer C-STORE-RSP 0x0000 (HARDENING decision 10: fsync(file), rename,
fsync(dir), **journal commit**, respond). If the journal cannot be written,
the spooled file is removed and the modality gets 0xA700, so it keeps its
copy and retries: nothing is acknowledged that the gateway does not hold.

An instance that no route takes is moved to the spool's ``unrouted/`` folder
(fsynced) and acknowledged: kept, logged and counted, never dropped silently.

The rest of custody lives beside this module: the spool's free-space floor in
:mod:`gateway.space` and start-up recovery and clean-up in :mod:`gateway.recovery`.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Collection, Sequence

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.blocking import IBlockingRunner
from gateway.config.schema import RouteConfig
from gateway.dimse.status import Status
from gateway.durable import rename_durably, unlink_if_present
from gateway.private import make_private_dirs
from gateway.queue.interfaces import AddResult, InstanceRecord, IQueueStore, NewEntry
from gateway.receive import AssociationInfo
from gateway.parse import read_header
from gateway.prepare import route_plan
from gateway.route import RoutingContext, RoutingDecision, evaluate, needs_header
from gateway.spool import SpooledInstance


@dataclass(frozen=True)
class Admission:
    """The intake's answer for one instance: the status to send, and what was recorded."""

    status: int
    comment: str = ""
    entries: int = 0
    duplicates: tuple[str, ...] = ()
    unrouted: bool = False
    dropped: bool = False
    matched: tuple[str, ...] = ()
    #: The instance's correlation id (logged with the receipt and every forward attempt).
    correlation_id: str = ""


def instance_record(spooled: SpooledInstance, info: AssociationInfo, received_at: float) -> InstanceRecord:
    """The queue's record of a spooled instance.

    :param spooled: what the spool committed.
    :param info: the association it came on.
    :param received_at: wall-clock time of the commit.
    """
    summary = spooled.summary
    return InstanceRecord(
        instance_id=spooled.instance_id,
        path=spooled.path,
        sop_class_uid=spooled.meta.sop_class_uid,
        sop_instance_uid=spooled.meta.sop_instance_uid,
        transfer_syntax_uid=spooled.meta.transfer_syntax_uid,
        size=spooled.size,
        sha256=spooled.sha256,
        received_at=received_at,
        correlation_id=uuid.uuid4().hex[:16],
        study_instance_uid=summary.study_instance_uid or "",
        series_instance_uid=summary.series_instance_uid or "",
        patient_id=summary.patient_id or "",
        accession_number=summary.accession_number or "",
        modality=summary.modality or "",
        calling_ae_title=info.calling_ae_title,
        called_ae_title=info.called_ae_title,
        source_address=info.peer_address,
        dataset_offset=spooled.dataset_offset,
    )


class Intake:
    """Routes committed instances and journals their queue entries before the ack.

    :param store: the queue store (called only through ``store_runner``).
    :param store_runner: the single thread the store lives on.
    :param file_runner: runs file moves (unrouted instances, cleanup).
    :param routes: returns the routes in force (they change on reload).
    :param wall: wall-clock time for the records.
    :param duplicate_window: seconds within which an identical re-send is not forwarded again.
    :param unrouted_dir: where instances that match no route are kept.
    :param on_enqueued: called with the destinations that got new entries (to wake their workers).
    :param destinations: returns the configured destination names (templated forwards are checked against them).
    """

    log = Logger(namespace="gateway.intake")

    def __init__(
        self,
        *,
        store: IQueueStore,
        store_runner: IBlockingRunner,
        file_runner: IBlockingRunner,
        routes: Callable[[], Sequence[RouteConfig]],
        wall: Callable[[], float],
        duplicate_window: float,
        unrouted_dir: str,
        on_enqueued: Callable[[Sequence[str]], None] = lambda destinations: None,
        destinations: Callable[[], Collection[str]] = lambda: (),
    ) -> None:
        self._destinations = destinations
        self._store = store
        self._store_runner = store_runner
        self._file_runner = file_runner
        self._routes = routes
        self._wall = wall
        self.duplicate_window = duplicate_window
        self._unrouted_dir = unrouted_dir
        self._on_enqueued = on_enqueued
        self.unrouted_total = 0
        self.duplicates_total = 0
        self.dropped_total = 0
        self.rejected_total = 0
        self.routing_errors_total = 0
        self.route_matches: dict[str, int] = {}
        # Group commit: journal requests that arrive while a transaction is
        # running wait here and go together in the next one (one fsync for
        # many associations' instances).
        self._pending: list[tuple[InstanceRecord, list[NewEntry], Deferred[AddResult]]] = []
        self._journaling = False

    def admit(
        self, spooled: SpooledInstance, info: AssociationInfo, *, keep_file_on_failure: bool = False
    ) -> Deferred[Admission]:
        """Route and journal one committed instance.

        :param spooled: what the spool committed.
        :param info: the association it came on.
        :param keep_file_on_failure: leave the spooled file in place when the
            journal cannot be written (start-up recovery: an orphan is never
            deleted, it is tried again at the next start).
        :returns: a Deferred that fires with the :class:`Admission`; it never fails.
        """
        received_at = self._wall()
        context = RoutingContext(
            calling_ae_title=info.calling_ae_title,
            called_ae_title=info.called_ae_title,
            source_address=info.peer_address.rsplit(":", 1)[0],
            listener=info.listener,
            listener_port=info.listener_port,
            tls_subject=info.tls_subject,
            received_at=received_at,
        )
        routes = tuple(self._routes())
        record = instance_record(spooled, info, received_at)
        if not needs_header(routes):
            return self._route(spooled, record, None, context, routes, keep_file_on_failure)
        # Conditions and templated forwards need the header: read it (no pixel
        # data) off the reactor thread. One that pydicom cannot read is kept
        # as unrouted with the reason: never lost, never guessed.
        d = self._file_runner.run(read_header, spooled.path)

        def unreadable(failure: Failure) -> Any:
            self.routing_errors_total += 1
            self.log.error(
                "{correlation_id} header of {sop_instance_uid} cannot be read for routing: {error}",
                correlation_id=record.correlation_id,
                sop_instance_uid=record.sop_instance_uid,
                error=failure.getErrorMessage(),
            )
            return None

        d.addCallbacks(lambda header: header.dataset, unreadable)
        d.addCallback(
            lambda dataset: self._route(spooled, record, dataset, context, routes, keep_file_on_failure)
            if dataset is not None
            else self._keep_unrouted(spooled, record)
        )
        return d

    def _route(
        self,
        spooled: SpooledInstance,
        record: InstanceRecord,
        dataset: Any,
        context: RoutingContext,
        routes: Sequence[RouteConfig],
        keep_file_on_failure: bool,
    ) -> Deferred[Admission]:
        """Apply the routing decision: reject, drop, keep as unrouted, or journal its entries."""
        decision = evaluate(dataset, context, routes, self._destinations())
        for name in decision.matched:
            self.route_matches[name] = self.route_matches.get(name, 0) + 1
        for error in decision.errors:
            self.routing_errors_total += 1
            self.log.error(
                "{correlation_id} routing error for {sop_instance_uid}: {error}",
                correlation_id=record.correlation_id,
                sop_instance_uid=record.sop_instance_uid,
                error=error,
            )
        if decision.reject is not None:
            self.rejected_total += 1
            self.log.info(
                "{correlation_id} {sop_instance_uid} rejected by route {route} with status 0x{status:04X}",
                correlation_id=record.correlation_id,
                sop_instance_uid=record.sop_instance_uid,
                route=decision.reject_route,
                status=decision.reject,
            )
            return self._discard(spooled, Admission(decision.reject, f"Rejected by route {decision.reject_route}", matched=decision.matched))
        if decision.dropped:
            self.dropped_total += 1
            self.log.info(
                "{correlation_id} {sop_instance_uid} dropped by a drop route ({routes})",
                correlation_id=record.correlation_id,
                sop_instance_uid=record.sop_instance_uid,
                routes=", ".join(decision.matched),
            )
            return self._discard(spooled, Admission(Status.SUCCESS, dropped=True, matched=decision.matched))
        if decision.unrouted:
            return self._keep_unrouted(spooled, record)
        # The route's morph is decided now and journaled with each entry
        # (issue 11): a later reload, restart or upgrade cannot change it.
        plans = {route.name: route_plan(route) for route in routes if route.forward}
        entries = [
            NewEntry(route=route, destination=destination, plan=plans[route])
            for route, destination in decision.entries
        ]
        d = self._journal(record, entries)
        d.addCallbacks(
            lambda result: self._journaled(record, decision, result),
            lambda failure: self._journal_failed(spooled, record, failure, keep_file_on_failure),
        )
        return d

    def _journal(self, record: InstanceRecord, entries: list[NewEntry]) -> Deferred[AddResult]:
        """Queue one journal write; it joins the next transaction (group commit)."""
        d: Deferred[AddResult] = Deferred()
        self._pending.append((record, entries, d))
        if not self._journaling:
            self._commit_pending()
        return d

    def _commit_pending(self) -> None:
        """Write every pending instance in one transaction on the store's thread.

        If the batch fails (one bad record spoils a transaction), each is
        retried alone, so one instance's failure never fails another's ack.
        """
        batch, self._pending = self._pending, []
        self._journaling = True
        items = [(record, entries) for record, entries, _ in batch]
        run = self._store_runner.run(self._store.add_instances, items, self._wall(), self.duplicate_window)

        def committed(results: list[AddResult]) -> None:
            for (_, _, d), result in zip(batch, results):
                d.callback(result)

        def failed(failure: Failure) -> Deferred[Any] | None:
            if len(batch) == 1:
                batch[0][2].errback(failure)
                return None
            singles = []
            for record, entries, d in batch:
                single = self._store_runner.run(
                    self._store.add_instance, record, entries, self._wall(), self.duplicate_window
                )
                single.chainDeferred(d)
                singles.append(single)
            return DeferredList(singles, consumeErrors=True)

        def next_batch(_: object) -> None:
            self._journaling = False
            if self._pending:
                self._commit_pending()

        run.addCallbacks(committed, failed).addBoth(next_batch)

    def _journaled(self, record: InstanceRecord, decision: RoutingDecision, result: AddResult) -> Admission:
        if result.duplicates:
            self.duplicates_total += len(result.duplicates)
            self.log.info(
                "{correlation_id} {sop_instance_uid} is an identical re-send; not forwarded again to {destinations}",
                correlation_id=record.correlation_id,
                sop_instance_uid=record.sop_instance_uid,
                destinations=", ".join(result.duplicates),
            )
        fresh = sorted({dest for _, dest in decision.entries} - set(result.duplicates))
        self.log.debug(
            "{correlation_id} {sop_instance_uid} queued for {destinations}",
            correlation_id=record.correlation_id,
            sop_instance_uid=record.sop_instance_uid,
            destinations=", ".join(fresh) or "(none: duplicates)",
        )
        if fresh:
            try:
                self._on_enqueued(fresh)
            except Exception:
                # The journal has committed: the instance is in custody and
                # must be acknowledged 0x0000. A worker that failed to wake
                # finds the entries at its next poll.
                self.log.failure("could not wake the workers of {destinations}", destinations=", ".join(fresh))
        return Admission(
            Status.SUCCESS,
            entries=len(result.entry_ids),
            duplicates=result.duplicates,
            matched=decision.matched,
            correlation_id=record.correlation_id,
        )

    def _journal_failed(
        self, spooled: SpooledInstance, record: InstanceRecord, failure: Failure, keep_file: bool = False
    ) -> Deferred[Admission]:
        """The journal could not be written: un-spool the file and answer 0xA700 (never 0x0000).

        With ``keep_file`` (recovery) the file stays where it is.
        """
        self.log.failure(
            "{correlation_id} could not journal {sop_instance_uid}; answering 0xA700",
            failure,
            correlation_id=record.correlation_id,
            sop_instance_uid=record.sop_instance_uid,
        )

        def remove() -> None:
            if keep_file:
                return
            try:
                os.unlink(spooled.path)
            except OSError:
                pass

        d = self._file_runner.run(remove)
        d.addBoth(lambda _: Admission(Status.OUT_OF_RESOURCES, "Out of resources: queue journal not writable"))
        return d

    def _discard(self, spooled: SpooledInstance, admission: Admission) -> Deferred[Admission]:
        """Remove a rejected or dropped instance's spooled file, then answer ``admission``."""
        d = self._file_runner.run(unlink_if_present, spooled.path)

        def failed(failure: Failure) -> Admission:
            self.log.failure("could not remove a discarded spool file", failure)
            return admission

        d.addCallbacks(lambda _: admission, failed)
        return d

    def _keep_unrouted(self, spooled: SpooledInstance, record: InstanceRecord) -> Deferred[Admission]:
        """Move an instance that no route takes to ``unrouted/`` (durably) and acknowledge it."""

        def move() -> str:
            make_private_dirs(self._unrouted_dir)  # HARDENING H08
            target = os.path.join(self._unrouted_dir, os.path.basename(spooled.path))
            rename_durably(spooled.path, target)
            return target

        def moved(target: str) -> Admission:
            self.unrouted_total += 1
            self.log.warn(
                "{correlation_id} {sop_instance_uid} from {calling_ae_title} matched no route; kept as {path}",
                correlation_id=record.correlation_id,
                sop_instance_uid=record.sop_instance_uid,
                calling_ae_title=record.calling_ae_title,
                path=target,
            )
            return Admission(Status.SUCCESS, unrouted=True, correlation_id=record.correlation_id)

        def failed(failure: Failure) -> Admission:
            self.log.failure("could not keep an unrouted instance", failure)
            return Admission(Status.OUT_OF_RESOURCES, "Out of resources: cannot keep unrouted instance")

        d = self._file_runner.run(move)
        d.addCallbacks(moved, failed)
        return d
