"""Instance files made ahead of time, so a received instance needs no directory fsync.

A new file is durable only once its directory entry is (POSIX promises
nothing else, and ext4 without a journal, this project's CI disk, can lose
an entry whose directory was not synced). The spool used to pay that per
instance: ``fsync(file)``, ``rename``, ``fsync(instances/)``. A
:class:`SlotPool` pays it per batch instead (issue 13): it creates
``batch`` empty files (256 by default) in ``instances/`` (``O_EXCL | O_NOFOLLOW``, mode
0600), then fsyncs the folder once; each file is then a *slot* whose entry
survives a power cut, and the spool writes an instance into it under its
final name and ``fdatasync``\\ s it (data and size) before the journal
commit (:data:`gateway.durable.FlushPolicy.PRECREATED_DATASYNC`).

A slot is used once. Its name is the instance's internal id (a uuid4 hex
string, never peer data: HARDENING D06); on a spool shared by several nodes
(``spool.shared``, issue 14) the id starts with the node's name and
:data:`OWNER_SEPARATOR` (``gw-1~3f2a...``), so each file names its *owner*:
start-up recovery removes only its own node's unjournaled files, never a
slot of another live node or a file another node is writing. Once the instance is delivered, the
janitor unlinks the file as before. No slot is ever reused, so no journal
row can come to name a file that holds another instance's bytes (reuse
would need the release committed first).

Whether a file in ``instances/`` holds an acknowledged instance is the
journal's to say, not the file's: a file with no journal row was never
acknowledged (an unused slot, or an instance cut short by a crash), and
start-up recovery deletes it (:mod:`gateway.recovery`).

The pool refills itself on the file runner when it runs low; when it is
empty (a burst faster than the refills) :meth:`SlotPool.take` hands out a
name whose entry is not yet durable, and the spool then syncs the folder
for that one instance (today's cost, never less safety).
"""

from __future__ import annotations

import os
import uuid
from collections import deque
from typing import Final

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from gateway.blocking import IBlockingRunner
from gateway.durable import CREATE_FLAGS, FileOps, fsync_dir

__all__ = ["SlotPool", "make_slots", "DCM_SUFFIX", "OWNER_SEPARATOR", "owner_prefix", "owner_of"]

#: The suffix of instance files (slots included).
DCM_SUFFIX: Final = ".dcm"

#: Between the owner node and the uuid in the ids of a shared spool; never in
#: a node name (``[A-Za-z0-9._-]``) nor in a uuid's hex digits.
OWNER_SEPARATOR: Final = "~"


def owner_prefix(node: str) -> str:
    """The prefix of the ids a node makes: ``"<node>~"``, or ``""`` for an unshared spool.

    :param node: the node's name; ``""`` when the spool is not shared.
    """
    return node + OWNER_SEPARATOR if node else ""


def owner_of(instance_id: str) -> str:
    """The node that made an instance id (file name stem), or ``""`` for an id without an owner.

    :param instance_id: an id, or a file name without its suffix.
    """
    owner, separator, _ = instance_id.partition(OWNER_SEPARATOR)
    return owner if separator else ""


def make_slots(directory: str, count: int, ops: FileOps, prefix: str = "") -> list[str]:
    """Create ``count`` empty slot files in ``directory`` and make their entries durable (blocking).

    :param directory: the spool's ``instances/`` folder.
    :param count: how many.
    :param ops: the system calls.
    :param prefix: the owner's :func:`owner_prefix` (shared spools).
    :returns: the new slots' ids (file names without the suffix).
    :raises OSError: creating a file or syncing the folder failed; the files
        created are removed again.
    """
    made: list[str] = []
    try:
        for _ in range(count):
            slot = prefix + uuid.uuid4().hex
            fd = ops.open(os.path.join(directory, slot + DCM_SUFFIX), CREATE_FLAGS, 0o600)
            ops.close(fd)
            made.append(slot)
        fsync_dir(directory, ops)
    except OSError:
        for slot in made:
            try:
                ops.unlink(os.path.join(directory, slot + DCM_SUFFIX))
            except OSError:
                pass
        raise
    return made


class SlotPool:
    """Durable empty instance files, handed out one per instance (see the module docstring).

    Used from the reactor thread only; the files are made on ``runner``.

    :param directory: the spool's ``instances/`` folder.
    :param ops: the system calls.
    :param runner: where batches are made (off the reactor thread).
    :param batch: files per batch (one folder fsync each).
    :param low_water: start a refill when fewer than this many are left.
    :param prefix: put before every id (:func:`owner_prefix` of the node, on a shared spool).
    """

    log = Logger(namespace="gateway.spool")

    def __init__(
        self, directory: str, ops: FileOps, runner: IBlockingRunner, *, batch: int = 64, low_water: int = 16, prefix: str = ""
    ) -> None:
        self.directory = directory
        self.prefix = prefix
        self._ops = ops
        self._runner = runner
        self.batch = batch
        self.low_water = low_water
        self._free: deque[str] = deque()
        self._refilling = False
        #: Instances that had to sync the folder themselves (the pool was empty).
        self.misses = 0

    def __len__(self) -> int:
        """How many durable slots are ready."""
        return len(self._free)

    def fill_now(self) -> None:
        """Make one batch at once, on the caller's thread (at start-up, before listening).

        :raises OSError: from :func:`make_slots`.
        """
        self._free.extend(make_slots(self.directory, self.batch, self._ops, self.prefix))

    def take(self) -> tuple[str, bool]:
        """
        A slot for the next instance.

        :returns: ``(instance_id, durable)``: ``durable`` is false when the
            pool was empty and the id names no file yet: the caller creates it
            (``O_EXCL``) and syncs the folder at commit.
        """
        if len(self._free) < self.low_water:
            self._refill()
        if self._free:
            return self._free.popleft(), True
        self.misses += 1
        return self.prefix + uuid.uuid4().hex, False

    def _refill(self) -> None:
        """Make a batch on the runner, unless one is on its way."""
        if self._refilling:
            return
        self._refilling = True
        d: Deferred[list[str]] = self._runner.run(make_slots, self.directory, self.batch, self._ops, self.prefix)

        def made(slots: list[str]) -> None:
            self._free.extend(slots)

        def failed(failure: object) -> None:
            # A full or failing disk: instances fall back to syncing the folder
            # themselves, and their own commit reports the fault (D11, D12).
            self.log.warn("could not make spool slots: {error}", error=getattr(failure, "getErrorMessage", lambda: failure)())

        def done(_: object) -> None:
            self._refilling = False

        d.addCallbacks(made, failed).addBoth(done)
