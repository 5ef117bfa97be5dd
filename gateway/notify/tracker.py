"""The study tracker: decides when a study is complete and queues its notifications (issue 18).

Theory of operation
-------------------
The state is the journal's (``studies`` rows, :mod:`gateway.queue.studies`),
never this object's: the intake opens and updates rows in the transaction
that journals each instance, and the tracker, run on the housekeeping node
only (the holder of the ``housekeeping`` singleton when the queue is shared),
closes them. One round (:meth:`StudyTracker.run_once`)::

    rows  = open_studies(quiet_before = now - shortest quiet_period,
                         opened_before = now - shortest max_wait)
    for each row (quietest first):
        notify = the route's NotifyConfig         (route gone or no notify: see below)
        progress = study_progress(route, study)
        forced   = now - opened_at >= max_wait
        complete = outstanding == 0 and now - last_instance_at >= quiet_period
                   and expectations met (expect_series, expect_count)
        neither: next row
        documents = one StudyNotification per sink (gateway.notify.build)
        write each as a spool file, fsynced, folder fsynced   [durable BEFORE the commit]
        complete_study(..., notifications)                    [one transaction, compare-and-set]
        False (an instance arrived, another node completed it): delete the files

Custody: a crash after the files are written and before ``complete_study``
commits leaves files in ``instances/`` that no journal row names; start-up
recovery (:meth:`gateway.recovery.Recovery.recover`) deletes exactly those
(the files are named like the spool's instances, ``<owner~><uuid hex>.dcm``),
and the row is still open, so the next round completes it again with the same
``sequence`` and so the same idempotency key. After the commit the
notifications are entries like any other: at least once, the key lets the
receiver drop a repeat. An error from ``complete_study`` is no answer (the
commit may have happened): only files whose records the journal says it
lacks are deleted then; the others wait for start-up recovery.

A route removed by a reload, or whose ``notify`` was removed, has no sinks to
tell: its open rows are closed as ``forced`` with no notification, so they
do not stay open for ever (an instance arriving later opens the row again,
and a route that gets ``notify`` back notifies it then).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping

from twisted.logger import Logger

from gateway.blocking import IBlockingRunner
from gateway.config.schema import NotifyConfig, RouteConfig
from gateway.durable import CREATE_FLAGS, fsync_dir, unlink_if_present, write_all
from gateway.notify.build import build_notifications, expectations_met, study_fields
from gateway.notify.document import NOTIFICATION_SOP_CLASS, StudyNotification, to_json
from gateway.prepare import NO_MORPH
from gateway.queue.interfaces import InstanceRecord, NewEntry
from gateway.queue.studies import StudyRow
from gateway.slots import DCM_SUFFIX, owner_prefix

__all__ = ["StudyTracker", "Completion", "tracker_interval"]

#: The most rows one round looks at (the rest wait for the next round).
ROUND_LIMIT = 500


def tracker_interval(routes: tuple[RouteConfig, ...]) -> float:
    """Seconds between rounds: a quarter of the shortest quiet period, at least 0.5 s, at most 10 s."""
    quiet = [r.notify.quiet_period for r in routes if r.notify is not None]
    if not quiet:
        return 10.0
    return min(10.0, max(0.5, min(quiet) / 4))


@dataclass(frozen=True)
class Completion:
    """What one round recorded for one study (the :class:`gateway.events.StudyCompleted` data).

    :ivar notifications: the sinks told (empty: a route without sinks closed its row).
    :ivar seconds: from the study's first instance (of this opening) to its completion.
    """

    route: str
    study_instance_uid: str
    event: str
    sequence: int
    forced: bool
    with_failures: bool
    sinks: tuple[str, ...]
    seconds: float


def _write_durably(path: str, data: bytes) -> None:
    """Create ``path`` (mode 0600) with ``data``, fsync it and its folder (blocking).

    The name is new (a uuid), so no rename is needed: the folder's fsync makes
    the entry durable, the file's the bytes.
    """
    fd = os.open(path, CREATE_FLAGS, 0o600)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        unlink_if_present(path)
        raise
    os.close(fd)
    fsync_dir(os.path.dirname(path))


class StudyTracker:
    """Completes the studies of notifying routes (see the module docstring).

    :param store: the queue store (an :class:`~gateway.queue.studies.IStudyJournal`), called through ``store_runner``.
    :param store_runner: the store's thread.
    :param file_runner: file reads and writes.
    :param routes: the routes in force (a reload changes them), by name.
    :param instances_dir: the spool's instances folder (the notification files go there).
    :param owner: this node's name on a shared spool (the files' prefix), else ``""``.
    :param node: this node's name (in the documents).
    :param wall: wall-clock time.
    :param holds: whether this node is the housekeeping node now (asked every round).
    :param completed: told of each completion recorded (metrics, events, poking the sinks' workers).
    """

    log = Logger(namespace="gateway.notify")

    def __init__(
        self,
        *,
        store: Any,
        store_runner: IBlockingRunner,
        file_runner: IBlockingRunner,
        routes: Callable[[], Mapping[str, RouteConfig]],
        instances_dir: str,
        owner: str,
        node: str,
        wall: Callable[[], float],
        holds: Callable[[], Awaitable[bool]],
        completed: Callable[[Completion], None] = lambda completion: None,
    ) -> None:
        self.store = store
        self.store_runner = store_runner
        self.file_runner = file_runner
        self.routes = routes
        self.instances_dir = instances_dir
        self.owner = owner
        self.node = node
        self.wall = wall
        self.holds = holds
        self.completed = completed

    async def run_once(self) -> list[Completion]:
        """One round: complete what is complete (nothing when this node is not the housekeeping node)."""
        if not await self.holds():
            return []
        routes = self.routes()
        notifying = [r.notify for r in routes.values() if r.notify is not None]
        now = self.wall()
        # Rows of routes gone (or without notify) are closed whatever their age: ask for every open row then.
        quiet = min((n.quiet_period for n in notifying), default=0.0)
        wait = min((n.max_wait for n in notifying), default=0.0)
        rows: list[StudyRow] = await self.store_runner.run(
            self.store.open_studies, now - quiet, now - wait, ROUND_LIMIT
        )
        done = []
        for row in rows:
            route = routes.get(row.route)
            notify = route.notify if route is not None else None
            if notify is None:
                completion = await self._close_without_sinks(row)
            else:
                completion = await self._consider(row, notify)
            if completion is not None:
                done.append(completion)
                self.completed(completion)
        return done

    async def _close_without_sinks(self, row: StudyRow) -> Completion | None:
        """The row's route no longer notifies: close the row, forced, with no notification."""
        now = self.wall()
        closed = await self.store_runner.run(
            self.store.complete_study, row.route, row.study_instance_uid, row.last_instance_at, row.completions, now, True, []
        )
        if not closed:
            return None
        self.log.info("route {route} no longer notifies: an open study of it was closed without notification", route=row.route)
        return Completion(row.route, row.study_instance_uid, "closed", row.completions + 1, True, False, (), now - row.opened_at)

    async def _consider(self, row: StudyRow, notify: NotifyConfig) -> Completion | None:
        """Complete ``row`` if the route's rule says so; the completion recorded, or ``None``."""
        now = self.wall()
        forced = now - row.opened_at >= notify.max_wait
        quiet = now - row.last_instance_at >= notify.quiet_period
        if not forced and not quiet:
            return None
        if not forced and not expectations_met(row, notify):
            return None
        progress = await self.store_runner.run(self.store.study_progress, row.route, row.study_instance_uid)
        if not forced and progress.outstanding:
            return None
        fields: dict[str, str] = {}
        if progress.sample is not None:
            try:
                fields = await self.file_runner.run(study_fields, progress.sample.path)
            except (OSError, ValueError) as e:
                # The header is a nicety: the study's UIDs and counts are the journal's.
                self.log.warn("study header unreadable for a notification of route {route}: {error}",
                              route=row.route, error=type(e).__name__)
        notifications = build_notifications(row, progress, notify, fields, now=now, forced=forced, node=self.node)
        records = await self._write(notifications, row, now)
        # The entries carry the empty plan: the workers' CopyMaker dead-letters an entry
        # journaled without one (gateway.prepare), and a notification is never morphed.
        try:
            committed = await self.store_runner.run(
                self.store.complete_study,
                row.route,
                row.study_instance_uid,
                row.last_instance_at,
                row.completions,
                now,
                forced,
                [(record, [NewEntry(route=row.route, destination=n.sink, plan=NO_MORPH)]) for record, n in zip(records, notifications)],
            )
        except BaseException:
            # An error is no answer: the commit may have happened (PostgreSQL's connection lost in the
            # COMMIT). A file is deleted only when the journal says its record is not there; the others
            # stay (start-up recovery deletes the ones no record names), never a queued notification's file.
            await self._forget_unjournaled(records)
            raise
        if not committed:
            # Changed meanwhile (a new instance, another node): the files were never journaled.
            for record in records:
                await self.file_runner.run(unlink_if_present, record.path)
            return None
        first = notifications[0]
        return Completion(
            row.route, row.study_instance_uid, first.event, first.sequence, forced, first.with_failures,
            tuple(n.sink for n in notifications), now - row.opened_at,
        )

    async def _forget_unjournaled(self, records: list[InstanceRecord]) -> None:
        """After a failed ``complete_study``: delete the files whose records the journal does not have.

        When the journal cannot say (it is down, or has no ``instance_record``), the files are kept.
        """
        lookup = getattr(self.store, "instance_record", None)
        for record in records:
            if lookup is None:
                return
            try:
                await self.store_runner.run(lookup, record.instance_id)
            except KeyError:
                await self.file_runner.run(unlink_if_present, record.path)
            except Exception:
                self.log.warn("the journal could not say whether a notification was recorded: its file is kept")
                return

    async def _write(self, notifications: list[StudyNotification], row: StudyRow, now: float) -> list[InstanceRecord]:
        """Write each document as a durable spool file; their journal records (not yet journaled)."""
        records: list[InstanceRecord] = []
        try:
            for notification in notifications:
                data = to_json(notification)
                instance_id = owner_prefix(self.owner) + uuid.uuid4().hex
                path = os.path.join(self.instances_dir, instance_id + DCM_SUFFIX)
                await self.file_runner.run(_write_durably, path, data)
                records.append(
                    InstanceRecord(
                        instance_id=instance_id,
                        path=path,
                        sop_class_uid=NOTIFICATION_SOP_CLASS,
                        sop_instance_uid=notification.idempotency_key,
                        transfer_syntax_uid="",
                        size=len(data),
                        sha256=hashlib.sha256(data).hexdigest(),
                        received_at=now,
                        correlation_id=notification.idempotency_key[:16],
                        study_instance_uid=row.study_instance_uid,
                        accession_number=notification.accession_number,
                        # As the study's instances' records have it: the audit of the
                        # notification's export (PS3.15 A.5.3.5) names the patient.
                        patient_id=notification.patient_id,
                        node=self.node,
                    )
                )
        except BaseException:
            for record in records:
                await self.file_runner.run(unlink_if_present, record.path)
            raise
        return records
