"""Start-up recovery and spool clean-up: custody after a stop, and after delivery.

:class:`Recovery` runs once at start-up and then on a timer around an
:class:`~gateway.intake.Intake`:

* :meth:`Recovery.recover` puts in-flight queue entries back in the queue and
  re-routes spooled files the journal lacks (the gateway stopped between the
  spool's commit and the journal transaction, HARDENING decision 10, so the
  modality was never told success);
* :meth:`Recovery.clean` deletes the files of delivered instances after the
  retention time and forgets their records once the duplicate window has
  passed (HARDENING decision 5).
"""

from __future__ import annotations

import os
from typing import Callable

from twisted.logger import Logger

from gateway.meta import read_part10_header
from gateway.blocking import IBlockingRunner
from gateway.intake import Intake
from gateway.durable import unlink_if_present
from gateway.prepare import remove_copies
from gateway.queue.interfaces import IQueueStore
from gateway.receive import AssociationInfo
from gateway.spool import InstanceMeta, SpooledInstance, dataset_sha256
from gateway.validate import MalformedDataset, walk_dataset


def _orphan_info(path: str) -> tuple[SpooledInstance, AssociationInfo]:
    """Rebuild what ``admit`` needs for a spooled file that has no journal record.

    Runs on a blocking runner: it reads the file's meta and walks its data set.

    :raises ValueError: when the file is not a readable Part 10 file.
    """
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
                await self._file_runner.run(unlink_if_present, record.path)
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
