"""Start-up recovery and spool clean-up: custody after a stop, and after delivery.

:class:`Recovery` runs once at start-up and then on a timer, over the queue
journal and the spool:

* :meth:`Recovery.recover` puts in-flight queue entries back in the queue and
  deletes the files in ``instances/`` that the journal lacks: the journal is
  the record of custody (issue 13), so such a file was never acknowledged
  (an unused slot, an instance cut short, or one whose journal transaction
  never committed: its modality was not told success and sends it again),
  exactly as a ``.part`` file was before;
* :meth:`Recovery.clean` deletes the files of delivered instances after the
  retention time and forgets their records once the duplicate window has
  passed (HARDENING decision 5);
* :meth:`Recovery.clean_retrieves` deletes the Query/Retrieve journal's
  finished retrieves and unused remapped UIDs after their retention (issue
  16), in bounded batches, on the housekeeping node only;
* :meth:`Recovery.clean_studies` deletes the study journal's rows completed
  longer ago than ``retention.studies`` (issue 18), the same way.

On a spool shared by several nodes (``spool.shared``, issue 14) every file
name starts with its owner node (:func:`gateway.slots.owner_of`). Start-up
recovery then removes only *this* node's unjournaled files: another node's
unused slots, and the instance it is writing right now, have no journal
record yet either. The files a dead node left behind are removed by
:meth:`Recovery.sweep_dead_nodes`, which only the housekeeping node runs, and
only for owners whose last heartbeat, and the file itself, are older than a
bound far beyond any lease (a node that has not beaten for that long cannot
be committing a transaction that names the file).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Collection

from twisted.logger import Logger

from gateway.blocking import IBlockingRunner
from gateway.durable import unlink_if_present
from gateway.prepare import remove_copies
from gateway.queue.interfaces import InstanceRecord, IQueueStore, NodeStatus
from gateway.queue.retrieves import IRetrieveJournal, RetrievePurge
from gateway.queue.studies import IStudyJournal
from gateway.slots import DCM_SUFFIX, owner_of


#: Rows one clean-up transaction of the retrieve journal deletes at most (issue 16).
RETRIEVE_BATCH = 500
#: Batches of each kind one housekeeping round runs at most: the rest waits for the next round,
#: so a backlog (a first run after an upgrade) never holds the store's thread for long.
RETRIEVE_BATCHES_PER_ROUND = 40


@dataclass(frozen=True)
class RetrieveCleanup:
    """What one round of :meth:`Recovery.clean_retrieves` deleted."""

    retrieves: int = 0
    items: int = 0
    remapped_uids: int = 0


class Recovery:
    """Start-up recovery and spool clean-up around an :class:`Intake`.

    :param store: the queue store (through ``store_runner``).
    :param store_runner: the store's thread.
    :param file_runner: file reads and deletions.
    :param instances_dir: the spool's committed-instances folder.
    :param wall: wall-clock time.
    :param morphed_dir: the routes' morphed copies.
    :param owner: this node's name on a shared spool (only its files are
        removed at start); ``""`` for a spool of its own (every file is this node's).
    """

    log = Logger(namespace="gateway.intake")

    def __init__(
        self,
        *,
        store: IQueueStore,
        store_runner: IBlockingRunner,
        file_runner: IBlockingRunner,
        instances_dir: str,
        wall: Callable[[], float],
        morphed_dir: str = "",
        owner: str = "",
    ) -> None:
        self._owner = owner
        self._morphed_dir = morphed_dir
        self._store = store
        self._store_runner = store_runner
        self._file_runner = file_runner
        self._instances_dir = instances_dir
        self._wall = wall

    async def recover(self) -> tuple[int, int]:
        """Put in-flight entries back in the queue and delete spooled files the journal lacks.

        A file in ``instances/`` with no journal record was never
        acknowledged: the C-STORE-RSP 0x0000 leaves only after the journal
        transaction naming it has committed (HARDENING decision 10, issue 13).
        Its sender saw a failure or an abort and keeps its copy. The files of
        unrouted instances live in ``unrouted/``, outside this rule.

        :returns: (entries returned from in-flight, files deleted).
        """
        returned = await self._store_runner.run(self._store.recover, self._wall())
        known = await self._store_runner.run(self._store.instance_ids)
        removed = await self._file_runner.run(self._remove_unjournaled, known)
        for path in removed:
            self.log.info("removed spool file {path}: no journal record, never acknowledged", path=path)
        if returned:
            self.log.info("{count} in-flight queue entries returned to the queue", count=returned)
        return returned, len(removed)

    def _remove_unjournaled(self, known: set[str]) -> list[str]:
        """Delete the ``.dcm`` files of ``instances/`` whose id is not in ``known`` (blocking).

        On a shared spool only the files this node owns are considered.

        :returns: the paths deleted (empty unused slots are not listed).
        """
        if not os.path.isdir(self._instances_dir):
            return []
        removed = []
        for name in sorted(os.listdir(self._instances_dir)):
            if not name.endswith(DCM_SUFFIX) or name[: -len(DCM_SUFFIX)] in known:
                continue
            if self._owner and owner_of(name[: -len(DCM_SUFFIX)]) != self._owner:
                continue  # another node's slot, or the instance it is writing now
            path = os.path.join(self._instances_dir, name)
            try:
                size = os.path.getsize(path)
                unlink_if_present(path)
            except OSError as e:
                self.log.error("could not remove unacknowledged spool file {path}: {error}", path=path, error=str(e))
                continue
            if size:
                removed.append(path)
        return removed

    async def sweep_dead_nodes(self, nodes: list[NodeStatus], older_than: float) -> int:
        """Remove the unjournaled files of nodes gone for good (housekeeping node only, shared spool).

        A file is removed when its id is not in the journal, its owner is
        another node whose last heartbeat is older than ``older_than`` (or
        that never sent one, or it has no owner), and it was itself last
        changed before ``older_than``. Such a file was never acknowledged
        (its node answered no C-STORE without the journal), and its node
        cannot be about to journal it.

        :param nodes: every node's status (:meth:`~gateway.queue.interfaces.IQueueStore.nodes`).
        :param older_than: wall-clock bound (e.g. now minus ten leases).
        :returns: how many files were removed.
        """
        alive = {status.node for status in nodes if status.last_seen >= older_than}
        alive.add(self._owner)
        # The files are listed before the journal is read: an id journaled in
        # between is then known, never removed.
        candidates = await self._file_runner.run(self._foreign_files, alive, older_than)
        if not candidates:
            return 0
        known = await self._store_runner.run(self._store.instance_ids)
        removed = await self._file_runner.run(self._remove_files, [path for stem, path in candidates if stem not in known])
        for path in removed:
            self.log.info("removed spool file {path} of a node gone for good: no journal record, never acknowledged", path=path)
        return len(removed)

    def _foreign_files(self, alive: set[str], older_than: float) -> list[tuple[str, str]]:
        """``(id, path)`` of the ``.dcm`` files of owners not in ``alive``, unchanged since ``older_than`` (blocking)."""
        if not os.path.isdir(self._instances_dir):
            return []
        found = []
        for entry in os.scandir(self._instances_dir):
            if not entry.name.endswith(DCM_SUFFIX):
                continue
            stem = entry.name[: -len(DCM_SUFFIX)]
            if owner_of(stem) in alive:
                continue
            try:
                if entry.stat(follow_symlinks=False).st_mtime >= older_than:
                    continue
            except FileNotFoundError:
                continue
            found.append((stem, entry.path))
        return sorted(found)

    def _remove_files(self, paths: list[str]) -> list[str]:
        """Unlink each path (blocking); the ones removed, errors logged."""
        removed = []
        for path in paths:
            try:
                unlink_if_present(path)
            except OSError as e:
                self.log.error("could not remove spool file {path}: {error}", path=path, error=str(e))
                continue
            removed.append(path)
        return removed

    async def clean(
        self, keep_delivered: float, duplicate_window: float = 0.0, node: str = "", gone: Collection[str] = ()
    ) -> int:
        """Delete spool files whose every entry is delivered, after ``keep_delivered`` seconds.

        Dead letters keep their files; so do queued entries. The record of an
        instance outlives its file until the duplicate window has passed too,
        so an identical re-send is still recognised after the file is gone
        (HARDENING decision 5). Returns how many files were removed.

        With node-local spools on one queue (issue 14, ``node`` given) a
        node deletes only the files of the instances it received (another
        node's are on that node's disk), but the records at the head of the
        queue's list must not wait for a node that never comes back: a record
        whose file is already gone is forgotten by any node, and the records
        of a node in ``gone`` are noted as without file (its start-up recovery
        deletes files the journal no longer knows) and forgotten after the
        window as usual. The oldest records are listed first, so without this
        a dead node's thousand oldest would stop every node's clean-up.

        :param keep_delivered: seconds a delivered instance's file is kept (``retention``).
        :param duplicate_window: seconds the record must be kept for duplicate control.
        :param node: with node-local spools sharing one queue, this node's
            name; ``""``: every record is this node's (SQLite, shared spool).
        :param gone: with ``node``, the nodes silent for good (their files are out of reach).
        """
        now = self._wall()
        removed = 0

        def owner(record: InstanceRecord) -> str:
            """``mine``, ``gone`` or ``other`` (a live node's: left to it)."""
            if not node or record.node in ("", node):
                return "mine"
            return "gone" if record.node in gone else "other"

        done = await self._store_runner.run(self._store.finished_instances, now - keep_delivered, 1000, True)
        await self._remove_copies([record.instance_id for record in done if owner(record) == "mine"])
        for record in done:
            whose = owner(record)
            if whose == "other":
                continue
            if whose == "mine":
                try:
                    await self._file_runner.run(unlink_if_present, record.path)
                except OSError as e:
                    self.log.warn("could not remove delivered spool file {path}: {error}", path=record.path, error=str(e))
                    continue
                removed += 1
            await self._store_runner.run(self._store.file_removed, record.instance_id)
        horizon = now - max(keep_delivered, duplicate_window)
        expired = await self._store_runner.run(self._store.finished_instances, horizon, 1000, None)
        await self._remove_copies([record.instance_id for record in expired if owner(record) == "mine"])
        for record in expired:
            whose = owner(record)
            if record.path and whose == "other":
                continue  # its file is on a live node's disk: that node removes it first
            if record.path and whose == "mine":
                try:
                    await self._file_runner.run(unlink_if_present, record.path)
                except OSError:
                    continue
                removed += 1
            await self._store_runner.run(self._store.forget_instance, record.instance_id)
        return removed

    async def _remove_copies(self, instance_ids: list[str]) -> None:
        """Delete the routes' morphed copies of these finished instances (one folder scan)."""
        if self._morphed_dir and instance_ids:
            await self._file_runner.run(remove_copies, self._morphed_dir, instance_ids)

    async def clean_retrieves(
        self, retrieve_retention: float, remap_retention: float, batch: int = RETRIEVE_BATCH
    ) -> RetrieveCleanup:
        """Delete finished retrieves and unused remapped UIDs past their retention (issue 16; housekeeping node only).

        Each kind goes in transactions of at most ``batch`` rows, repeated
        until one deletes nothing (or :data:`RETRIEVE_BATCHES_PER_ROUND`:
        the rest waits for the next round), each on the store's thread, so
        that no transaction is one giant DELETE and the intake's writes
        interleave. A retention of 0 keeps that kind forever.

        :param retrieve_retention: seconds a finished retrieve is kept (``retention.retrieves``).
        :param remap_retention: seconds a remapped UID is kept after its last use (``retention.remapped_uids``).
        :param batch: the most rows per transaction.
        :returns: what was deleted.
        """
        if not IRetrieveJournal.providedBy(self._store):
            return RetrieveCleanup()
        journal = IRetrieveJournal(self._store)
        now = self._wall()
        retrieves = items = remapped = 0
        if retrieve_retention > 0:
            for _ in range(RETRIEVE_BATCHES_PER_ROUND):
                purge: RetrievePurge = await self._store_runner.run(
                    journal.purge_retrieves, now - retrieve_retention, batch
                )
                retrieves += purge.retrieves
                items += purge.items
                if not purge.retrieves and not purge.items:
                    break
        if remap_retention > 0:
            for _ in range(RETRIEVE_BATCHES_PER_ROUND):
                deleted = await self._store_runner.run(journal.purge_remapped_uids, now - remap_retention, batch)
                remapped += deleted
                if not deleted:
                    break
        return RetrieveCleanup(retrieves=retrieves, items=items, remapped_uids=remapped)

    async def clean_studies(self, study_retention: float, batch: int = RETRIEVE_BATCH) -> int:
        """Delete study rows completed longer ago than ``study_retention`` (issue 18; housekeeping node only).

        As :meth:`clean_retrieves`: transactions of at most ``batch`` rows
        until one deletes nothing, at most :data:`RETRIEVE_BATCHES_PER_ROUND`
        per round. Open rows are never deleted (their study is still being
        tracked); a row deleted and then noted again starts afresh (its next
        notification says ``complete``, not ``amended``). A retention of 0
        keeps them forever.

        :param study_retention: seconds a complete row is kept after its completion (``retention.studies``).
        :param batch: the most rows per transaction.
        :returns: how many rows were deleted.
        """
        if study_retention <= 0 or not IStudyJournal.providedBy(self._store):
            return 0
        journal = IStudyJournal(self._store)
        bound = self._wall() - study_retention
        deleted = 0
        for _ in range(RETRIEVE_BATCHES_PER_ROUND):
            purged: int = await self._store_runner.run(journal.purge_studies, bound, batch)
            deleted += purged
            if not purged:
                break
        return deleted
