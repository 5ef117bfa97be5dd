"""The sender of a folder destination: each entry becomes a Part 10 file under the folder.

Paths, atomic writes and the refusal of unsafe values are
:class:`gateway.folder.FolderWriter`'s; this module maps what it says to
outcomes:

- written: :class:`~gateway.queue.outcome.Delivered`;
- a refused value (:class:`~gateway.folder.UnsafePath`): a dead letter of
  kind ``unsafe_path`` (HARDENING D06);
- the spooled (or morphed) file gone: a retry of that entry;
- any other ``OSError`` (the folder missing, full, read-only): the
  destination as a whole is down, the circuit counts it.

The circuit probe is :meth:`FolderWriter.check_writable`.
"""

from __future__ import annotations

import os
from typing import AsyncGenerator, Sequence

from gateway.config.schema import FolderDestination
from gateway.folder import FolderWriter, UnsafePath
from gateway.queue.interfaces import Entry
from gateway.queue.outcome import DeadLetter, DeadLetterKind, Delivered, DestinationDown, Outcome, Retry
from gateway.send import SendContext

__all__ = ["FolderSender"]


class FolderSender:
    """Writes one folder destination's entries (see the module docstring).

    :param config: the destination.
    :param context: the worker's file runner.
    """

    slots = 1
    batch_size = 50
    #: Ten minutes: a write never takes that long.
    lease_seconds = 600.0

    def __init__(self, config: FolderDestination, context: SendContext) -> None:
        self.config = config
        self.context = context
        self.writer = FolderWriter(config.path, config.pattern)

    async def send(self, slot: int, batch: Sequence[Entry]) -> AsyncGenerator[tuple[Entry, Outcome], None]:
        """Write each entry in order, yielding its outcome."""
        for entry in batch:
            yield entry, await self.write(entry)

    async def write(self, entry: Entry) -> Outcome:
        """Write one entry and say what came of it."""
        try:
            await self.context.file_runner.run(self.writer.write, entry.path, entry.instance)
        except UnsafePath as e:
            return DeadLetter(f"unsafe path: {e}", DeadLetterKind.UNSAFE_PATH)
        except OSError as e:
            if not os.path.exists(entry.path):
                return Retry(f"spool file missing: {e}")
            # The folder is missing, full or read-only: the destination as a whole.
            return DestinationDown(f"{type(e).__name__}: {e}")
        return Delivered(0)

    async def probe(self) -> DestinationDown | None:
        """The folder exists and a file can be created in it."""
        try:
            await self.context.file_runner.run(self.writer.check_writable)
        except OSError as e:
            return DestinationDown(f"{type(e).__name__}: {e}")
        return None

    async def idle(self, slot: int, now: float) -> float | None:
        """Nothing is held between writes."""
        return None

    async def close(self, slot: int) -> None:
        """Nothing is held between writes."""

    def abort(self) -> None:
        """A write in progress finishes on its thread (it is atomic)."""

    def connections(self) -> int:
        """A folder has no connections."""
        return 0
