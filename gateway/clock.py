"""The gateway's reactor keeps time with ``time.monotonic()`` (HARDENING F19).

Twisted's reactors schedule ``callLater`` on ``reactor.seconds()``, which is
``time.time()``: the wall clock. When NTP or an operator steps the wall clock
back by an hour, every pending delay (retry backoff, circuit probe, ARTIM,
DIMSE and idle timers) would wait an extra hour; stepped forward, all of them
would fire at once. Every delay the gateway schedules on the reactor is a
duration (times written to the journal come from an injected ``wall``
function, never from the reactor), so the reactor's clock can be the
monotonic one, which never jumps.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["use_monotonic_clock"]


def use_monotonic_clock(reactor: Any) -> Any:
    """Make ``reactor.seconds`` (and so every ``callLater`` deadline) monotonic.

    Must run before anything is scheduled: a deadline computed on the wall
    clock would never be reached on the monotonic one.

    :param reactor: a reactor (``IReactorTime`` with ``getDelayedCalls``).
    :returns: the same reactor.
    :raises RuntimeError: if delayed calls are already pending.
    """
    if reactor.getDelayedCalls():
        raise RuntimeError("use_monotonic_clock: delayed calls are already scheduled on the wall clock")
    reactor.seconds = time.monotonic
    return reactor
