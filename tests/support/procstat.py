"""What ``/proc`` says about a process: memory, open files, threads (Linux).

The load, hostile-peer and TLS tests and the bench scripts watch the
gateway process with these, so that RSS and file-descriptor checks read the
same fields the same way everywhere.
"""

from __future__ import annotations

import os

__all__ = ["status_field", "rss_kib", "vm_hwm_kib", "reset_peak", "thread_count", "fd_count", "fd_limit"]


def status_field(pid: int, name: str) -> int:
    """Read one numeric field of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``, ``Threads``...).

    :param pid: the process.
    :param name: the field name, without the colon.
    :returns: its first number (KiB for the ``Vm*`` fields).
    :raises AssertionError: if the field is missing.
    :raises OSError: if the process is gone.
    """
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(f"{name}:"):
                return int(line.split()[1])
    raise AssertionError(f"no {name} for {pid}")


def rss_kib(pid: int) -> int:
    """The resident set size, KiB (``VmRSS``)."""
    return status_field(pid, "VmRSS")


def vm_hwm_kib(pid: int) -> int:
    """The peak resident set size since the process started, KiB (``VmHWM``)."""
    return status_field(pid, "VmHWM")


def reset_peak(pid: int) -> int:
    """Reset the process's peak resident set size to its current size (Linux 4.0+).

    Writing ``5`` to ``/proc/PID/clear_refs`` sets ``VmHWM`` to ``VmRSS``, so a
    later :func:`vm_hwm_kib` is the peak since this call: an allocation that
    was made and freed in between still shows (HARDENING P03, P05), where the
    resident size read afterwards would not.

    :param pid: the process (ours, or we are root).
    :returns: the new baseline, KiB (``VmHWM`` right after the reset).
    :raises AssertionError: if the kernel did not reset it.
    """
    with open(f"/proc/{pid}/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    baseline = vm_hwm_kib(pid)
    # Right after the reset VmHWM equals VmRSS, give or take pages touched in between.
    if baseline > rss_kib(pid) + 1024:
        raise AssertionError(f"VmHWM of {pid} was not reset ({baseline} KiB)")
    return baseline


def thread_count(pid: int) -> int:
    """The number of threads (``Threads``)."""
    return status_field(pid, "Threads")


def fd_count(pid: int) -> int:
    """The number of open file descriptors (entries in ``/proc/PID/fd``)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_limit(pid: int) -> int:
    """The soft limit on open files (``Max open files`` of ``/proc/PID/limits``).

    :raises AssertionError: if the line is missing.
    """
    with open(f"/proc/{pid}/limits") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError(f"no open-files limit for {pid}")
