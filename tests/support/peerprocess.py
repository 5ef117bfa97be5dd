"""A peer program run as a background process for interop tests.

DCMTK's ``storescp``, PixelMed's SCP and Orthanc share one life cycle: start
the program with its output in a log file, wait until it is ready (a port
that accepts, a REST API that answers), stop it with SIGTERM and SIGKILL
after a timeout, and show its log when a test fails.
:class:`PeerProcess` is that life cycle; a subclass says how to start and
how to tell it is ready.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["PeerProcess"]


class PeerProcess:
    """The process, its log file and its stop; subclasses define :meth:`start`.

    :param name: what the errors call it (``storescp``, ``Orthanc``...).
    :param log_path: the file its stdout and stderr go to (appended).
    :param stop_timeout: seconds :meth:`stop` waits after SIGTERM by default.
    """

    def __init__(self, name: str, log_path: str | os.PathLike[str], stop_timeout: float = 10.0) -> None:
        self.name = name
        self.log_path = Path(log_path)
        self.stop_timeout = stop_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The process id.

        :returns: the pid.
        :raises RuntimeError: if it is not running.
        """
        if self._proc is None:
            raise RuntimeError(f"{self.name} is not running")
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has ended.

        :returns: the status, or ``None`` while it runs (or was never started).
        """
        return None if self._proc is None else self._proc.poll()

    @property
    def running(self) -> bool:
        """Tell whether the process was started and has not exited.

        :returns: ``True`` while it runs.
        """
        return self._proc is not None and self._proc.poll() is None

    def spawn(self, argv: Sequence[str], ready: Callable[[], bool], timeout: float, *,
              env: dict[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
              what: str = "become ready") -> None:
        """Start ``argv`` and poll ``ready`` until it is true.

        :param argv: the command.
        :param ready: ``True`` once the peer can be used.
        :param timeout: seconds to wait for it.
        :param env: the environment (the test's by default).
        :param cwd: the working directory.
        :param what: the end of the error message when it never gets ready.
        :raises RuntimeError: if it exits first or is not ready in time (the log is in the message).
        """
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=env, cwd=cwd)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self._proc.returncode}:\n{self.log_text()}")
            if ready():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not {what} within {timeout:.0f} s:\n{self.log_text()}")

    def spawn_module(self, module: str, config: str, port: int, timeout: float = 30.0) -> None:
        """Run ``python -m module config`` from the checkout and wait until ``port`` on loopback accepts.

        The life cycle of the test servers that are modules of ``tests.support``
        (the STOW-RS, webhook and FHIR stand-ins): one JSON configuration file, one port.
        """
        import socket
        import sys

        root = Path(__file__).resolve().parents[2]

        def ready() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            except OSError:
                return False
            return True

        self.spawn([sys.executable, "-m", module, config], ready, timeout, cwd=root)

    def start(self) -> Any:
        """Start the peer and wait until it is ready (subclasses)."""
        raise NotImplementedError

    def stop(self, timeout: float | None = None) -> int:
        """Stop it with SIGTERM (its clean shutdown), SIGKILL after ``timeout``; safe twice.

        The process object is kept, so :attr:`pid` and :attr:`returncode` still
        answer afterwards.

        :param timeout: seconds to wait after SIGTERM (``stop_timeout`` by default).
        :returns: the exit status (0 when it was never started).
        """
        proc = self._proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def kill(self) -> int:
        """Kill the process with SIGKILL at once.

        :returns: the exit status (0 when it was never started).
        """
        proc = self._proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        return proc.returncode

    def log_text(self) -> str:
        """Read what the peer has logged so far.

        :returns: its combined stdout and stderr.
        """
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Any:
        """Start the peer.

        :returns: this object.
        """
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Stop the peer.

        :param exc_type: unused.
        :param exc: unused.
        :param tb: unused.
        """
        self.stop()
