"""CPU time a process has used, from ``/proc/PID/stat`` (Linux), for per-instance CPU figures.

A rate measured on a shared, loaded machine says as much about the other
work on the box as about the gateway; the CPU time the gateway process spent
per instance does not depend on how long it waited for a core. The bench
scripts print both side by side.
"""

from __future__ import annotations

import os

__all__ = ["cpu_seconds"]

#: Clock ticks per second, the unit of ``utime`` and ``stime`` (proc(5)).
_TICKS: int = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, all its threads, in seconds.

    Fields 14 (``utime``) and 15 (``stime``) of ``/proc/PID/stat``; the
    command name (field 2) may hold spaces, so the line is split after its
    closing parenthesis.

    :param pid: the process.
    :returns: seconds of CPU.
    :raises OSError: if the process is gone.
    """
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # After the ")" the first field is field 3 (state): utime is field 14, index 11.
    return (int(fields[11]) + int(fields[12])) / _TICKS
