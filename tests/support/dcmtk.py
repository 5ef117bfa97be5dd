"""Run the DCMTK command-line peers (echoscu, storescu, storescp) from tests.

DCMTK is software we did not write, so it is the reference peer of the
interop tier (DESIGN.md 8.3).  ``make test`` installs the Debian ``dcmtk``
package when ``storescu`` is missing, so in CI these tools are always present;
elsewhere :func:`skip_reason` lets a test class skip with a clear reason.

Hints about DCMTK's behaviour that the tests depend on:

- ``storescp`` accepts compressed transfer syntaxes only with ``+xa``
  (accept all); ``+B`` writes the data set exactly as received.
- ``storescu`` proposes a compressed syntax only when asked, one option per
  call: ``-xr`` RLE, ``-xy`` JPEG baseline (8 bit), ``-xs`` JPEG lossless;
  ``-xb`` puts explicit VR big endian first, ``-xi`` proposes implicit VR
  little endian only.
- ``storescu`` may change a file while sending it (it drops trailing padding
  and converts to the negotiated uncompressed syntax), so byte comparisons
  must use what ``storescp +B`` received from an identical send.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.peerprocess import PeerProcess
from tests.support.ports import free_port, port_is_open

__all__ = [
    "TOOLS",
    "Result",
    "Storescp",
    "echoscu",
    "find_tool",
    "require_tool",
    "skip_reason",
    "storescu",
]

#: The DCMTK programs the interop tests use.
TOOLS: tuple[str, ...] = ("echoscu", "storescu", "storescp")


@dataclass(frozen=True)
class Result:
    """The outcome of one DCMTK command.

    :param returncode: the process exit status.
    :param output: stdout and stderr, interleaved.
    :param argv: the command that ran.
    """

    returncode: int
    output: str
    argv: tuple[str, ...]

    def describe(self) -> str:
        """Render the command and its output for an assertion message.

        :returns: a multi-line description.
        """
        return f"$ {' '.join(self.argv)}\n(exit {self.returncode})\n{self.output}"


def find_tool(name: str) -> str | None:
    """Locate one DCMTK program on ``PATH``.

    :param name: ``echoscu``, ``storescu`` or ``storescp``.
    :returns: its absolute path, or ``None`` when it is not installed.
    """
    return shutil.which(name)


def skip_reason(*names: str) -> str | None:
    """Explain why DCMTK tests cannot run here, for a class's ``skip``.

    :param names: the programs needed (all of :data:`TOOLS` by default).
    :returns: a skip reason, or ``None`` when every program is installed.
    """
    missing = [name for name in (names or TOOLS) if find_tool(name) is None]
    if not missing:
        return None
    return (
        f"DCMTK {', '.join(missing)} not installed "
        "(run `make test`, or `apt-get install dcmtk`)"
    )


def require_tool(name: str) -> str:
    """Locate a DCMTK program, skipping the calling test when it is missing.

    :param name: the program.
    :returns: its absolute path.
    :raises twisted.trial.unittest.SkipTest: when it is not installed.
    """
    from twisted.trial.unittest import SkipTest

    path = find_tool(name)
    if path is None:
        raise SkipTest(skip_reason(name) or name)
    return path


def _run(argv: Sequence[str], timeout: float, env: dict[str, str] | None) -> Result:
    """Run a command to completion and collect its output.

    :param argv: the command line.
    :param timeout: seconds before the process is killed.
    :param env: extra environment variables.
    :returns: exit status and output.
    """
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        timeout=timeout,
        env=full_env,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, tuple(argv))


def echoscu(
    port: int,
    *,
    called_ae: str = "DICOMGW",
    calling_ae: str = "ECHOSCU",
    host: str = "127.0.0.1",
    extra: Iterable[str] = (),
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
) -> Result:
    """Send one C-ECHO with ``echoscu``.

    :param port: the peer's port.
    :param called_ae: ``-aec``, the peer's AE title.
    :param calling_ae: ``-aet``, our AE title.
    :param host: the peer's address.
    :param extra: more ``echoscu`` options (e.g. ``["-v"]``).
    :param timeout: seconds before the process is killed.
    :param env: extra environment variables.
    :returns: exit status and output.
    """
    argv = [
        require_tool("echoscu"),
        "-aet", calling_ae,
        "-aec", called_ae,
        "-to", "10", "-ta", "10",
        *extra,
        host, str(port),
    ]
    return _run(argv, timeout, env)


def storescu(
    port: int,
    files: Iterable[str | os.PathLike[str]],
    *,
    called_ae: str = "DICOMGW",
    calling_ae: str = "STORESCU",
    host: str = "127.0.0.1",
    extra: Iterable[str] = (),
    timeout: float = 300.0,
    env: dict[str, str] | None = None,
) -> Result:
    """Send files with ``storescu`` in one association.

    :param port: the peer's port.
    :param files: files or (with ``+sd``) directories to send.
    :param called_ae: ``-aec``, the peer's AE title.
    :param calling_ae: ``-aet``, our AE title.
    :param host: the peer's address.
    :param extra: more ``storescu`` options, e.g. ``["-xr"]`` or ``["+sd"]``.
    :param timeout: seconds before the process is killed.
    :param env: extra environment variables (e.g. ``TCP_NODELAY=1``).
    :returns: exit status and output.
    """
    argv = [
        require_tool("storescu"),
        "-aet", calling_ae,
        "-aec", called_ae,
        "-to", "10", "-ta", "30",
        *extra,
        host, str(port),
        *(os.fspath(f) for f in files),
    ]
    return _run(argv, timeout, env)


class Storescp(PeerProcess):
    """A ``storescp`` process on a free loopback port, as a context manager.

    By default it writes bit-preserving (``+B``) Part 10 files into
    ``outdir`` and accepts every transfer syntax it knows (``+xa``), so the
    data set bytes of what it writes are exactly what the sender put on the
    wire.

    :param outdir: an existing or new directory for received files.
    :param ae_title: ``-aet``, the SCP's AE title.
    :param bit_preserving: pass ``+B`` (else ``-B``).
    :param accept_all: pass ``+xa``.
    :param extra: more ``storescp`` options.
    :param env: extra environment variables.
    """

    def __init__(
        self,
        outdir: str | os.PathLike[str],
        *,
        ae_title: str = "STORESCP",
        bit_preserving: bool = True,
        accept_all: bool = True,
        extra: Iterable[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.outdir = Path(outdir)
        self.ae_title = ae_title
        self.port = free_port()
        self._argv = [
            require_tool("storescp"),
            "-aet", ae_title,
            "-od", str(self.outdir),
            "+B" if bit_preserving else "-B",
            *(["+xa"] if accept_all else []),
            *extra,
            str(self.port),
        ]
        self._env = dict(os.environ)
        self._env.update(env or {})
        super().__init__("storescp", self.outdir.parent / f"{self.outdir.name}.storescp.log")

    def start(self, timeout: float = 15.0) -> None:
        """Start ``storescp`` and wait until its port accepts connections.

        :param timeout: seconds to wait for the port.
        :raises RuntimeError: if it exits or never listens.
        """
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.spawn(self._argv, lambda: port_is_open("127.0.0.1", self.port), timeout, env=self._env,
                   what=f"listen on {self.port}")

    def files(self) -> list[Path]:
        """List the files received so far, sorted by name.

        :returns: paths of received files.
        """
        return sorted(p for p in self.outdir.iterdir() if p.is_file())
