"""Run the gateway as a real operating-system process for interop tests.

The process is ``sys.executable -m gateway run -c CONFIG`` started with the
repository root as its working directory and first ``PYTHONPATH`` entry, so
it runs the source tree under test, never a stale installed copy.  Readiness
is the contract's: the listen port accepts TCP connections.
"""

from __future__ import annotations

import os
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.peerprocess import PeerProcess
from tests.support.ports import free_port, port_is_open

__all__ = [
    "REPO_ROOT",
    "wait_until",
    "CliResult",
    "GatewayProcess",
    "default_config",
    "dicom_destination",
    "folder_destination",
]

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
        # Any free port: concurrent test gateways must not compete for 9102.
        "http": {"host": "127.0.0.1", "port": 0},
    }


def dicom_destination(
    port: int,
    ae_title: str = "STORESCP",
    *,
    host: str = "127.0.0.1",
    initial_delay: str = "200ms",
    max_delay: str = "2s",
    **overrides: Any,
) -> dict[str, Any]:
    """Build a DICOM AE destination with short timers for interop tests.

    The retry delays are short (``initial_delay`` 200 ms, ``max_delay`` 2 s)
    so retries and circuit probes happen within a test's bounded waits.

    :param port: the destination's port.
    :param ae_title: its AE title (the called AE title we present).
    :param host: its address.
    :param initial_delay: ``retry.initial_delay``.
    :param max_delay: ``retry.max_delay``.
    :param overrides: more destination keys (``max_associations``, ``batch_size``,
        ``retry``: merged into the retry mapping, ...).
    :returns: a mapping for ``destinations.<name>``.
    """
    retry: dict[str, Any] = {"initial_delay": initial_delay, "max_delay": max_delay}
    retry.update(overrides.pop("retry", {}))
    destination: dict[str, Any] = {
        "ae_title": ae_title,
        "host": host,
        "port": port,
        "max_associations": 2,
        "batch_size": 50,
        "idle_release": "1s",
        "timeouts": {"connect": "5s", "acse": "10s", "dimse": "20s"},
        "retry": retry,
        "circuit": {"failures": 3},
    }
    destination.update(overrides)
    return destination


def folder_destination(folder: str | os.PathLike[str], **overrides: Any) -> dict[str, Any]:
    """Build a folder destination writing ``Study/Series/SOP.dcm`` files.

    :param folder: the destination folder (absolute; outside the spool).
    :param overrides: more keys (``pattern``).
    :returns: a mapping for ``destinations.<name>``.
    """
    return {"folder": str(Path(folder).resolve()), **overrides}


@dataclass(frozen=True)
class CliResult:
    """The outcome of one ``python -m gateway ...`` administration command.

    :param returncode: the exit status.
    :param stdout: what it printed on stdout.
    :param stderr: what it printed on stderr.
    :param argv: the command that ran.
    """

    returncode: int
    stdout: str
    stderr: str
    argv: tuple[str, ...]

    def json(self) -> Any:
        """Parse stdout as JSON (for ``--json`` commands).

        :returns: the parsed value.
        :raises AssertionError: if the command failed or printed no JSON.
        """
        try:
            return json.loads(self.stdout)
        except ValueError:
            raise AssertionError(f"not JSON:\n{self.describe()}") from None

    def describe(self) -> str:
        """Render the command and its output for an assertion message.

        :returns: a multi-line description.
        """
        return (f"$ {' '.join(self.argv)}\n(exit {self.returncode})\n"
                f"{self.stdout}\n{self.stderr}")


def wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    message: str | Callable[[], str] = "condition",
    interval: float = 0.1,
) -> Any:
    """Poll ``predicate`` until it returns something true, or fail.

    :param predicate: called repeatedly; its first true result is returned.
    :param timeout: seconds before giving up.
    :param message: what was awaited (or a callable building it, for details
        such as a log tail), for the assertion message.
    :param interval: seconds between polls.
    :returns: the predicate's first true result.
    :raises AssertionError: on timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout}s waiting for {text}")
        time.sleep(interval)


class GatewayProcess(PeerProcess):
    """One gateway process with its own config, port and spool under a directory.

    Keyword overrides replace top-level config keys; for mapping-valued keys
    (``accept``, ``limits``) they are merged into the defaults, so
    ``GatewayProcess(d, accept={"calling_ae_titles": ["CT*"]})`` keeps
    ``unknown_sop_classes``.

    Several gateways acting as one (issue 14) each get a ``node`` name (the
    top-level ``node:`` key) and may share a spool folder: ``spool`` given as
    a mapping or a path sets :attr:`spool` to that folder, so the helpers
    below look where the gateway writes.

    :param tmpdir: a directory for the config, spool and log (created).
    :param node: the ``node:`` name (none by default: the gateway's own default).
    :param http_port: the HTTP port (``http.port``; any free port chosen by the
        gateway by default), for a caller that must know it before the start
        (a load balancer's health check).
    :param overrides: config keys to replace or merge.
    """

    def __init__(self, tmpdir: str | os.PathLike[str], *, node: str | None = None,
                 http_port: int | None = None, **overrides: Any) -> None:
        self.dir = Path(tmpdir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_port(self.host)
        self.spool = self.dir / "spool"
        self.node = node
        config = default_config(self.port, self.spool)
        if node is not None:
            config = {"node": node, **config}
        if http_port is not None:
            config["http"] = {"host": self.host, "port": http_port}
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        spool = config["spool"]
        self.spool = Path(spool["path"] if isinstance(spool, dict) else spool).resolve()
        self.config = config
        self.config_path = self.dir / "gateway.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        super().__init__("gateway", self.dir / "gateway.log", stop_timeout=20.0)

    def command(self) -> list[str]:
        """The command that runs the gateway: this checkout's ``python -m gateway run``.

        :returns: the argv.
        """
        return [sys.executable, "-m", "gateway", "run", "-c", str(self.config_path)]

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        """Start the process and wait until its port accepts connections.

        :param timeout: seconds to wait for readiness.
        :returns: this object.
        :raises RuntimeError: if the process exits or never listens.
        """
        self.spawn(self.command(), lambda: port_is_open(self.host, self.port), timeout,
                   env=self._env(), cwd=REPO_ROOT, what=f"listen on {self.port}")
        return self

    def _env(self) -> dict[str, str]:
        """Build the environment of a gateway command (this checkout first).

        :returns: the environment.
        """
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])]
        )
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def cli(self, *args: str, timeout: float = 60.0) -> CliResult:
        """Run an administration command against this gateway's config.

        ``-c CONFIG`` is appended, so ``gw.cli("queue", "list", "--json")``
        runs ``python -m gateway queue list --json -c CONFIG``.

        :param args: the command and its arguments.
        :param timeout: seconds before the command is killed.
        :returns: its exit status and output.
        """
        argv = [sys.executable, "-m", "gateway", *args, "-c", str(self.config_path)]
        proc = subprocess.run(argv, cwd=REPO_ROOT, env=self._env(), capture_output=True,
                              text=True, timeout=timeout, check=False)
        return CliResult(proc.returncode, proc.stdout, proc.stderr, tuple(argv))

    def queue_rows(self) -> dict[str, dict[str, Any]]:
        """Read ``queue list --json`` as rows by destination name.

        :returns: ``{destination: row}``.
        :raises AssertionError: if the command fails.
        """
        result = self.cli("queue", "list", "--json")
        if result.returncode != 0:
            raise AssertionError(result.describe())
        return {row["destination"]: row for row in result.json()}

    def dead_letters(self) -> list[dict[str, Any]]:
        """Read ``queue list --dead --json``.

        :returns: one dict per dead-lettered entry.
        :raises AssertionError: if the command fails.
        """
        result = self.cli("queue", "list", "--dead", "--json")
        if result.returncode != 0:
            raise AssertionError(result.describe())
        rows: list[dict[str, Any]] = result.json()
        return rows

    def rewrite_config(self, **overrides: Any) -> None:
        """Replace top-level config keys and rewrite the file (not reloaded).

        Unlike the constructor, values replace keys whole (no merging), so a
        test can drop a destination or a route.

        :param overrides: config keys to replace.
        """
        self.config = {**self.config, **overrides}
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def http_url(self, path: str) -> str:
        """The URL of ``path`` on this gateway's HTTP endpoint (``http.port`` must be fixed).

        :param path: e.g. ``/readyz``.
        :returns: the URL.
        :raises RuntimeError: if the port is left to the gateway (0).
        """
        port = int((self.config.get("http") or {}).get("port") or 0)
        if not port:
            raise RuntimeError("http.port is 0: pass http_port to know it before the start")
        return f"http://{self.host}:{port}{path}"

    def readyz(self, timeout: float = 5.0) -> tuple[int, str]:
        """Ask ``/readyz`` once.

        :param timeout: seconds for the request.
        :returns: ``(status, body)``; ``(0, reason)`` when nothing answered.
        """
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(self.http_url("/readyz"), timeout=timeout) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")
        except OSError as error:
            return 0, str(error)

    def reload(self) -> None:
        """Send SIGHUP: the gateway re-reads routes and destinations.

        :raises RuntimeError: if it is not running.
        """
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError("the gateway is not running")
        self._proc.send_signal(signal.SIGHUP)

    def journaled_ids(self) -> set[str]:
        """The instance ids the queue journal holds (read-only; empty before it exists).

        :returns: the ``instances.instance_id`` values.
        """
        import sqlite3

        path = self.spool / "queue.sqlite"
        if not path.exists():
            return set()
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            return {row[0] for row in conn.execute("SELECT instance_id FROM instances")}
        except sqlite3.OperationalError:
            return set()
        finally:
            conn.close()

    def instances(self) -> list[Path]:
        """List committed instances still in the spool, oldest first.

        These are the files of ``<spool>/instances/*.dcm`` the journal holds
        (routed, not yet delivered everywhere or kept by retention; since
        issue 13 the journal, not the name, says a file is an acknowledged
        instance: that folder also holds empty slot files, and a file being
        received) and ``<spool>/unrouted/*.dcm`` (acknowledged instances
        that matched no route, which the gateway keeps; the receive-only
        tests run without routes).

        :returns: paths of committed Part 10 files.
        """
        known = self.journaled_ids()
        paths = [path for path in (self.spool / "instances").glob("*.dcm") if path.stem in known]
        if (self.spool / "unrouted").is_dir():
            paths += (self.spool / "unrouted").glob("*.dcm")
        dated = []
        for path in paths:
            try:
                dated.append((path.stat().st_mtime_ns, path.name, path))
            except FileNotFoundError:
                continue  # removed by the clean-up meanwhile: no longer in the spool
        return [path for _, _, path in sorted(dated)]

    def incoming(self) -> list[Path]:
        """List files that hold no acknowledged instance and are not unused slots.

        Those are what ``<spool>/incoming/`` holds (probe files; ``.part``
        files of older versions) and the non-empty ``<spool>/instances/*.dcm``
        the journal does not hold: an instance being received, or one a
        failure left behind (which the gateway must remove).

        :returns: paths of partial files.
        """
        folder = self.spool / "incoming"
        found = sorted(folder.iterdir()) if folder.is_dir() else []
        known = self.journaled_ids()
        for path in sorted((self.spool / "instances").glob("*.dcm")):
            try:
                if path.stem not in known and path.stat().st_size > 0:
                    found.append(path)
            except FileNotFoundError:
                continue
        return found
