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

:class:`SpaceGuard` watches the spool's free space: below the configured
floor the SCP answers 0xA700 and new associations are rejected with
A-ASSOCIATE-RJ (2, 3, 1) temporary congestion; it accepts again once the
free space is above the floor plus a margin (hysteresis, so it does not flap).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Collection, Sequence

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.blocking import IBlockingRunner
from gateway.config.schema import RouteConfig
from gateway.dimse.status import Status
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
        d = self._file_runner.run(_unlink_if_present, spooled.path)

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
            os.rename(spooled.path, target)
            fd = os.open(self._unrouted_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
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


class SpaceGuard:
    """Free-space floor of the spool, with hysteresis.

    :param free_bytes: returns the spool filesystem's free bytes (``Spool.free_bytes``).
    :param clock: for caching the reading (``statvfs`` at most once per ``interval``).
    :param min_free: below this many bytes we refuse work.
    :param margin: we accept again only above ``min_free + margin``.
    """

    log = Logger(namespace="gateway.intake")

    def __init__(
        self, free_bytes: Callable[[], int], clock: IReactorTime, min_free: int, margin: int, interval: float = 1.0
    ) -> None:
        self._free_bytes = free_bytes
        self._clock = clock
        self.min_free = min_free
        self.margin = margin
        self._interval = interval
        self._checked_at: float | None = None
        self._low = False

    def low(self) -> bool:
        """Whether the spool is below its floor now (re-read at most once per interval)."""
        now = self._clock.seconds()
        if self._checked_at is None or now - self._checked_at >= self._interval:
            self._checked_at = now
            try:
                free = self._free_bytes()
            except OSError:
                free = 0
            if self._low and free > self.min_free + self.margin:
                self._low = False
                self.log.info("spool free space is back to {free} bytes; accepting again", free=free)
            elif not self._low and free < self.min_free:
                self._low = True
                self.log.error(
                    "spool free space {free} bytes is below the floor of {floor}; refusing instances",
                    free=free,
                    floor=self.min_free,
                )
        return self._low


def _orphan_info(path: str) -> tuple[SpooledInstance, AssociationInfo]:
    """Rebuild what ``admit`` needs for a spooled file that has no journal record.

    Runs on a blocking runner: it reads the file's meta and walks its data set.

    :raises ValueError: when the file is not a readable Part 10 file.
    """
    from gateway.associate import read_part10_header
    from gateway.spool import InstanceMeta, dataset_sha256
    from gateway.validate import MalformedDataset, walk_dataset

    header = read_part10_header(path)
    source_ae = header.source_ae_title
    with open(path, "rb") as fp:
        fp.seek(header.dataset_offset)
        try:
            summary = walk_dataset(fp, header.transfer_syntax_uid, allow_odd_lengths=True)
        except MalformedDataset as e:
            raise ValueError(f"{path}: {e}") from e
    meta = InstanceMeta(
        sop_class_uid=header.sop_class_uid,
        sop_instance_uid=header.sop_instance_uid,
        transfer_syntax_uid=header.transfer_syntax_uid,
        calling_ae_title=source_ae,
        called_ae_title="",
    )
    spooled = SpooledInstance(
        instance_id=os.path.splitext(os.path.basename(path))[0],
        path=path,
        size=os.path.getsize(path),
        summary=summary,
        meta=meta,
        sha256=dataset_sha256(path, header.dataset_offset),
    )
    info = AssociationInfo(
        assoc_id="recovery",
        peer_address="",
        calling_ae_title=source_ae,
        called_ae_title="",
        listener="recovery",
        contexts={},
    )
    return spooled, info


class Recovery:
    """Start-up recovery and spool clean-up around an :class:`Intake`.

    :param intake: re-admits orphan files.
    :param store: the queue store (through ``store_runner``).
    :param store_runner: the store's thread.
    :param file_runner: file reads and deletions.
    :param instances_dir: the spool's committed-instances folder.
    :param wall: wall-clock time.
    """

    log = Logger(namespace="gateway.intake")

    def __init__(
        self,
        *,
        intake: Intake,
        store: IQueueStore,
        store_runner: IBlockingRunner,
        file_runner: IBlockingRunner,
        instances_dir: str,
        wall: Callable[[], float],
        morphed_dir: str = "",
    ) -> None:
        self._morphed_dir = morphed_dir
        self._intake = intake
        self._store = store
        self._store_runner = store_runner
        self._file_runner = file_runner
        self._instances_dir = instances_dir
        self._wall = wall

    async def recover(self) -> tuple[int, int]:
        """Put in-flight entries back in the queue and re-route spooled files the journal lacks.

        A file in ``instances/`` with no journal record was committed by the
        spool but the gateway stopped before its journal transaction (so the
        modality was never told success and will likely re-send: duplicate
        control absorbs that). Such files are routed again, never deleted
        silently; one that cannot be read is reported and left in place.

        :returns: (entries returned from in-flight, orphan files re-routed).
        """
        returned = await self._store_runner.run(self._store.recover, self._wall())
        known = await self._store_runner.run(self._store.instance_ids)
        names = await self._file_runner.run(
            lambda: sorted(os.listdir(self._instances_dir)) if os.path.isdir(self._instances_dir) else []
        )
        rerouted = 0
        for name in names:
            if not name.endswith(".dcm") or name[:-4] in known:
                continue
            path = os.path.join(self._instances_dir, name)
            try:
                spooled, info = await self._file_runner.run(_orphan_info, path)
            except Exception as e:
                # Any failure to read one file (ValueError, OSError, a
                # struct.error from a meta cut short) is that file's problem:
                # report it, leave it, and go on recovering the others.
                self.log.error("spooled file {path} has no journal record and cannot be read: {error}", path=path, error=str(e))
                continue
            admission = await self._intake.admit(spooled, info, keep_file_on_failure=True)
            if admission.status != 0:
                self.log.error(
                    "spooled file {path} has no journal record and could not be routed again ({comment}); left in place",
                    path=path,
                    comment=admission.comment,
                )
            else:
                rerouted += 1
                self.log.warn(
                    "spooled file {path} had no journal record (the gateway stopped before acknowledging it); routed again",
                    path=path,
                )
        if returned:
            self.log.info("{count} in-flight queue entries returned to the queue", count=returned)
        return returned, rerouted

    async def clean(self, keep_delivered: float, duplicate_window: float = 0.0) -> int:
        """Delete spool files whose every entry is delivered, after ``keep_delivered`` seconds.

        Dead letters keep their files; so do queued entries. The record of an
        instance outlives its file until the duplicate window has passed too,
        so an identical re-send is still recognised after the file is gone
        (HARDENING decision 5). Returns how many files were removed.

        :param keep_delivered: seconds a delivered instance's file is kept (``retention``).
        :param duplicate_window: seconds the record must be kept for duplicate control.
        """
        now = self._wall()
        removed = 0
        done = await self._store_runner.run(self._store.finished_instances, now - keep_delivered, 1000, True)
        await self._remove_copies([record.instance_id for record in done])
        for record in done:
            try:
                await self._file_runner.run(_unlink_if_present, record.path)
            except OSError as e:
                self.log.warn("could not remove delivered spool file {path}: {error}", path=record.path, error=str(e))
                continue
            await self._store_runner.run(self._store.file_removed, record.instance_id)
            removed += 1
        horizon = now - max(keep_delivered, duplicate_window)
        expired = await self._store_runner.run(self._store.finished_instances, horizon, 1000, None)
        await self._remove_copies([record.instance_id for record in expired])
        for record in expired:
            if record.path:
                try:
                    await self._file_runner.run(_unlink_if_present, record.path)
                except OSError:
                    continue
                removed += 1
            await self._store_runner.run(self._store.forget_instance, record.instance_id)
        return removed

    async def _remove_copies(self, instance_ids: list[str]) -> None:
        """Delete the routes' morphed copies of these finished instances (one folder scan)."""
        if self._morphed_dir and instance_ids:
            from gateway.prepare import remove_copies

            await self._file_runner.run(remove_copies, self._morphed_dir, instance_ids)


def _unlink_if_present(path: str) -> None:
    """Remove ``path``; a file already gone is fine (a crash between unlink and the journal)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
