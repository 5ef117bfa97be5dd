"""The spool's free-space floor, beside :mod:`gateway.spool` whose filesystem it watches.

:class:`SpaceGuard` reads the spool's free space (``Spool.free_bytes``):
below the configured floor the SCP answers 0xA700 (PS3.4 B.2.3, Refused: Out
of Resources) and new associations are rejected with A-ASSOCIATE-RJ (2, 3, 1)
temporary congestion (PS3.8 9.3.4); it accepts again once the free space is
above the floor plus a margin (hysteresis, so it does not flap).
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger


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
