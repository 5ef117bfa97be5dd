"""Inject file-system faults into a running process (HARDENING D11, D12).

:func:`build_shim` compiles ``faultshim.c`` (beside this module) with ``gcc``
once per test process; :class:`FaultShim` is the running switch: the
environment that preloads the shim into the gateway, and :meth:`FaultShim.arm`
/ :meth:`FaultShim.disarm`, which write or remove its control file while the
gateway runs.  :meth:`FaultShim.hits` reads the shim's own log of the failures
it injected, so a test proves the fault was actually hit: a preload that
silently did nothing would otherwise look like a gateway that is immune.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import subprocess
from pathlib import Path

from tests.support.interop import shared_dir

__all__ = ["FaultShim", "build_shim"]

#: The C source of the shim.
SOURCE = Path(__file__).with_name("faultshim.c")


@functools.cache
def build_shim() -> Path:
    """Compile the shim (once per process) into a temporary folder.

    :returns: the shared library's path.
    :raises AssertionError: if gcc is missing or the build fails (``make test``
        installs gcc, so under CI this is a failure, never a skip).
    """
    gcc = shutil.which("gcc")
    if gcc is None:
        raise AssertionError("gcc is needed to build tests/support/faultshim.c")
    out = shared_dir("faultshim") / "faultshim.so"
    build = subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-Wall", "-o", str(out), str(SOURCE), "-ldl"],
                           capture_output=True, text=True, check=False)
    if build.returncode != 0:
        raise AssertionError(f"building the fault shim failed:\n{build.stderr}")
    return out


class FaultShim:
    """One process's fault switch: which folder is faulted and what fails now.

    :param prefix: the folder whose paths are faulted (absolute).
    :param workdir: where the control file and the shim's log live (outside ``prefix``).
    """

    def __init__(self, prefix: str | os.PathLike[str], workdir: str | os.PathLike[str]) -> None:
        self.prefix = Path(prefix).resolve()
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.control = self.workdir / "faultshim.control"
        self.log = self.workdir / "faultshim.log"
        self.library = build_shim()

    def env(self) -> dict[str, str]:
        """The environment variables that preload the shim.

        :returns: ``LD_PRELOAD`` and the shim's own variables.
        """
        return {
            "LD_PRELOAD": str(self.library),
            "FAULTSHIM_PREFIX": str(self.prefix),
            "FAULTSHIM_CONTROL": str(self.control),
            "FAULTSHIM_LOG": str(self.log),
        }

    def arm(self, op: str, error: int, after_bytes: int | None = None) -> None:
        """Make ``op`` fail with ``error`` from now on.

        :param op: ``write``, ``fsync``, ``rename`` or ``open``.
        :param error: the errno (``errno.EIO``, ``errno.ENOSPC``...).
        :param after_bytes: for ``write``: each descriptor may first write
            this many bytes (a disk filling in the middle of a file).
        """
        line = f"{op} {error}" + (f" {after_bytes}" if after_bytes is not None else "")
        temp = self.control.with_suffix(".tmp")
        temp.write_text(line + "\n")
        os.replace(temp, self.control)

    def stop_at(self, point: str, substring: str) -> None:
        """Make the process stop itself (SIGSTOP) at ``point`` of a call on a file whose path contains ``substring``.

        :param point: ``write`` (before a write), ``sync`` (before an
            fsync/fdatasync) or ``synced`` (after one returned).
        :param substring: part of the file's path (under the prefix).
        """
        temp = self.control.with_suffix(".tmp")
        temp.write_text(f"stop {point} {substring}\n")
        os.replace(temp, self.control)

    def disarm(self) -> None:
        """Stop injecting faults."""
        try:
            self.control.unlink()
        except FileNotFoundError:
            pass

    def hits(self, op: str | None = None, error: int | None = None) -> list[str]:
        """The failures injected so far, as ``(op, errno, path)`` lines.

        :param op: only this operation.
        :param error: only this errno.
        :returns: the matching log lines (path of the file or folder).
        """
        try:
            lines = self.log.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            name, number, path = (line.split(" ", 2) + ["", ""])[:3]
            if (op is None or name == op) and (error is None or number == str(error)):
                out.append(path)
        return out


# errno names used by the tests, for their messages.
NAMES = {errno.EIO: "EIO", errno.ENOSPC: "ENOSPC", errno.EROFS: "EROFS", errno.EDQUOT: "EDQUOT"}
