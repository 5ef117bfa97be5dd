"""Run the gateway as a real operating-system process for interop tests.

The process is ``sys.executable -m gateway run -c CONFIG`` started with the
repository root as its working directory and first ``PYTHONPATH`` entry, so
it runs the source tree under test, never a stale installed copy.  Readiness
is the contract's: the listen port accepts TCP connections.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from tests.support.ports import free_port, port_is_open

__all__ = ["REPO_ROOT", "GatewayProcess", "default_config"]

#: The repository root: the directory holding ``gateway/``.
REPO_ROOT: Path = Path(__file__).resolve().parents[2]


def default_config(port: int, spool: Path) -> dict[str, Any]:
    """Build the configuration of this stage with test-friendly values.

    :param port: the loopback port to listen on.
    :param spool: the spool directory (absolute).
    :returns: a mapping ready to be dumped as YAML.
    """
    return {
        "ae_title": "DICOMGW",
        "listen": [{"host": "127.0.0.1", "port": port}],
        "accept": {"calling_ae_titles": ["*"], "unknown_sop_classes": False},
        "spool": str(spool),
        "limits": {
            "max_associations": 64,
            "max_pdu_length": 262144,
            "acse_timeout": "30s",
            "dimse_timeout": "60s",
            "network_timeout": "120s",
        },
    }


class GatewayProcess:
    """One gateway process with its own config, port and spool under a directory.

    Keyword overrides replace top-level config keys; for mapping-valued keys
    (``accept``, ``limits``) they are merged into the defaults, so
    ``GatewayProcess(d, accept={"calling_ae_titles": ["CT*"]})`` keeps
    ``unknown_sop_classes``.

    :param tmpdir: a directory for the config, spool and log (created).
    :param overrides: config keys to replace or merge.
    """

    def __init__(self, tmpdir: str | os.PathLike[str], **overrides: Any) -> None:
        self.dir = Path(tmpdir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_port(self.host)
        self.spool = self.dir / "spool"
        config = default_config(self.port, self.spool)
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        self.config = config
        self.config_path = self.dir / "gateway.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = self.dir / "gateway.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The gateway's process id.

        :returns: the pid.
        :raises RuntimeError: if it was never started.
        """
        if self._proc is None:
            raise RuntimeError("the gateway was not started")
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has ended.

        :returns: the status, or ``None`` while it runs.
        """
        return None if self._proc is None else self._proc.poll()

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        """Start the process and wait until its port accepts connections.

        :param timeout: seconds to wait for readiness.
        :returns: this object.
        :raises RuntimeError: if the process exits or never listens.
        """
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])]
        )
        env["PYTHONUNBUFFERED"] = "1"
        log = open(self.log_path, "ab")
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "-c", str(self.config_path)],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"gateway exited with {self._proc.returncode} before listening:\n"
                    + self.log_text()
                )
            if port_is_open(self.host, self.port):
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"gateway did not listen on {self.port}:\n{self.log_text()}")

    def stop(self, timeout: float = 20.0) -> int:
        """Send SIGTERM and wait for a clean exit (SIGKILL after ``timeout``).

        :param timeout: seconds to wait after SIGTERM.
        :returns: the exit status (``-9`` when it had to be killed).
        """
        proc = self._proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def kill(self) -> int:
        """Kill the process with SIGKILL (the power-cut stand-in).

        :returns: the exit status.
        """
        proc = self._proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        return proc.returncode

    def log_text(self) -> str:
        """Read what the gateway has logged so far.

        :returns: its stdout and stderr.
        """
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def instances(self) -> list[Path]:
        """List committed instances, ``<spool>/instances/*.dcm``, oldest first.

        :returns: paths of committed Part 10 files.
        """
        folder = self.spool / "instances"
        if not folder.is_dir():
            return []
        return sorted(folder.glob("*.dcm"), key=lambda p: (p.stat().st_mtime_ns, p.name))

    def incoming(self) -> list[Path]:
        """List temporary files in ``<spool>/incoming/``.

        :returns: paths of partial files.
        """
        folder = self.spool / "incoming"
        return sorted(folder.iterdir()) if folder.is_dir() else []

    def __enter__(self) -> GatewayProcess:
        """Start the gateway.

        :returns: this object.
        """
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the gateway.

        :param exc_type: unused.
        :param exc: unused.
        :param tb: unused.
        """
        self.stop()
