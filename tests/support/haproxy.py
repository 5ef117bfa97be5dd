"""A real HAProxy (Debian ``haproxy``) in front of test gateways, configured like the shipped file.

The configuration is not written from scratch: :func:`render_config` reads
``etc/haproxy/haproxy.cfg`` and keeps every option of it (TCP mode, the
timeouts, ``balance leastconn``, ``send-proxy-v2``, the ``/readyz`` health
checks), replacing only what cannot be the same on a test machine: the
``bind`` lines (free loopback ports), the ``server`` lines (one per test
gateway, each with its own HTTP port for the check), and the parts of
``global`` that need root or a system path (``user``, ``group``,
``daemon``, the syslog target, the stats socket). So a test through this
HAProxy tests the shipped file's choices.

:class:`HAProxy` starts it in the foreground (``-db``) as a
:class:`~tests.support.peerprocess.PeerProcess`, stops it by pid, and reads
its stats socket (``show stat``) to tell whether HAProxy sees a server
``UP`` or ``DOWN``.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.peerprocess import PeerProcess
from tests.support.ports import free_port

__all__ = ["SHIPPED_CONFIG", "HAPROXY", "Node", "HAProxy", "haproxy_available", "render_config"]

#: The file the project ships.
SHIPPED_CONFIG: Path = Path(__file__).resolve().parents[2] / "etc" / "haproxy" / "haproxy.cfg"

#: The Debian package's binary (``haproxy`` on ``PATH`` otherwise).
HAPROXY: str = shutil.which("haproxy") or "/usr/sbin/haproxy"

#: The shipped frontends, and the backend each one uses.
_FRONTENDS = {"dicom": "gateways_dicom", "dicom_tls": "gateways_dicom_tls"}

#: ``global`` keywords dropped for a test instance (they need root, a system path or a daemon).
_DROPPED_GLOBAL = ("log", "user", "group", "daemon", "stats socket", "chroot", "pidfile")


def haproxy_available() -> bool:
    """Tell whether the haproxy binary is installed (``make test`` installs it).

    :returns: ``True`` if it can be run.
    """
    return os.access(HAPROXY, os.X_OK)


@dataclass(frozen=True)
class Node:
    """One gateway behind HAProxy.

    :param name: the server name in HAProxy (``gw1``), as in ``show stat``.
    :param dicom_port: the gateway's plain DICOM listener (with ``proxy_protocol``).
    :param http_port: its HTTP port, where HAProxy checks ``/readyz``.
    :param tls_port: its DICOM TLS listener, or ``None`` for no TLS backend server.
    :param host: its address.
    """

    name: str
    dicom_port: int
    http_port: int
    tls_port: int | None = None
    host: str = "127.0.0.1"


def render_config(
    nodes: Sequence[Node],
    *,
    dicom_port: int,
    tls_port: int | None,
    stats_socket: str,
    check: str | None = None,
    shipped: Path = SHIPPED_CONFIG,
) -> str:
    """Rewrite the shipped configuration for a test: loopback binds, the test gateways, a private stats socket.

    :param nodes: the gateways, in order.
    :param dicom_port: the loopback port of the plain DICOM frontend.
    :param tls_port: the loopback port of the TLS frontend (``None``: that
        frontend and its backend are left out).
    :param stats_socket: the path of the admin socket.
    :param check: replaces the shipped check timing (``inter 2s fall 3 rise 2``)
        on every server when given, e.g. ``"inter 500ms fall 2 rise 1"``;
        ``None`` keeps the shipped values.
    :param shipped: the file to start from.
    :returns: the configuration text.
    :raises ValueError: if the shipped file lacks a section this relies on.
    """
    out: list[str] = []
    section = ""
    name = ""
    seen: set[str] = set()
    skipping = False
    for raw in shipped.read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not line[0].isspace():
            words = line.split()
            section, name = words[0], (words[1] if len(words) > 1 else "")
            skipping = (section == "frontend" and name == "dicom_tls" and tls_port is None) or (
                section == "backend" and name == _FRONTENDS["dicom_tls"] and tls_port is None
            )
            seen.add(f"{section} {name}".strip())
            if skipping:
                continue
            out.append(line)
            if section == "global":
                out.append(f"    stats socket {stats_socket} mode 600 level admin")
                out.append("    log stdout format raw local0")
            continue
        if skipping:
            continue
        stripped = line.strip()
        if section == "global" and stripped.startswith(_DROPPED_GLOBAL):
            continue
        if section == "frontend" and stripped.startswith("bind "):
            port = dicom_port if name == "dicom" else tls_port
            out.append(f"    bind 127.0.0.1:{port}")
            continue
        if section == "backend" and stripped.startswith("default-server ") and check is not None:
            stripped = re.sub(r"\binter \S+", "", stripped)
            stripped = re.sub(r"\bfall \S+", "", stripped)
            stripped = re.sub(r"\brise \S+", "", stripped)
            out.append("    " + " ".join(stripped.split() + check.split()))
            continue
        if section == "backend" and stripped.startswith("server "):
            # Replaced by the test gateways, written once after the first shipped server line.
            if out[-1].lstrip().startswith("server "):
                continue
            tls = name == _FRONTENDS["dicom_tls"]
            for node in nodes:
                port = node.tls_port if tls else node.dicom_port
                if port is None:
                    continue
                out.append(f"    server {node.name} {node.host}:{port} port {node.http_port}")
            continue
        out.append(line)
    for needed in ("global", "defaults", "frontend dicom", f"backend {_FRONTENDS['dicom']}"):
        if needed not in seen:
            raise ValueError(f"{shipped}: no '{needed}' section")
    return "\n".join(out) + "\n"


class HAProxy(PeerProcess):
    """A haproxy process in front of ``nodes``, with the shipped file's options.

    :param tmpdir: a folder for the configuration and the log (created).
    :param nodes: the gateways.
    :param tls: also run the TLS passthrough frontend.
    :param check: shorter check timings for a test (see :func:`render_config`).
    """

    def __init__(self, tmpdir: str | os.PathLike[str], nodes: Sequence[Node], *, tls: bool = False,
                 check: str | None = None) -> None:
        self.dir = Path(tmpdir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.nodes = tuple(nodes)
        self.dicom_port = free_port()
        self.tls_port = free_port() if tls else None
        # A UNIX socket path is limited to 107 bytes; trial's temporary folders can be deeper.
        self._socket_dir = tempfile.mkdtemp(prefix="hap")
        self.stats_socket = os.path.join(self._socket_dir, "admin.sock")
        self.config_path = self.dir / "haproxy.cfg"
        self.config_path.write_text(render_config(self.nodes, dicom_port=self.dicom_port, tls_port=self.tls_port,
                                                  stats_socket=self.stats_socket, check=check))
        super().__init__("haproxy", self.dir / "haproxy.log", stop_timeout=10.0)

    def start(self, timeout: float = 20.0) -> HAProxy:
        """Start haproxy in the foreground and wait until its stats socket answers (its binds are up by then).

        :param timeout: seconds to wait.
        :returns: this object.
        :raises RuntimeError: if it exits (a configuration error) or never answers.
        """
        self.spawn([HAPROXY, "-db", "-f", str(self.config_path)], self._answers, timeout,
                   what="answer on its stats socket")
        return self

    def stop(self, timeout: float | None = None) -> int:
        """Stop by pid (SIGTERM: HAProxy's hard stop) and remove the socket folder.

        :param timeout: seconds before SIGKILL.
        :returns: the exit status.
        """
        status = super().stop(timeout)
        shutil.rmtree(self._socket_dir, ignore_errors=True)
        return status

    def _answers(self) -> bool:
        try:
            return "Name: HAProxy" in self.command("show info")
        except OSError:
            return False

    def command(self, text: str, timeout: float = 5.0) -> str:
        """Send one runtime API command on the stats socket.

        :param text: the command (``show stat``, ``disable server gateways_dicom/gw1``).
        :param timeout: seconds for the answer.
        :returns: HAProxy's answer.
        :raises OSError: if the socket does not answer.
        """
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(self.stats_socket)
            sock.sendall(text.encode() + b"\n")
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def stats(self) -> list[dict[str, str]]:
        """Read ``show stat``: one row per frontend, backend and server.

        :returns: the CSV rows as dicts (``pxname``, ``svname``, ``status``, ``scur``, ``stot``...).
        """
        text = self.command("show stat")
        return list(csv.DictReader(io.StringIO(text.lstrip("# "))))

    def server_status(self, server: str, backend: str = _FRONTENDS["dicom"]) -> str:
        """HAProxy's view of one server: ``UP``, ``DOWN``, ``UP 1/2`` (going down), ``DOWN 1/2``, ``MAINT``...

        :param server: the node's name.
        :param backend: ``gateways_dicom`` or ``gateways_dicom_tls``.
        :returns: the ``status`` column.
        :raises KeyError: if there is no such server.
        """
        for row in self.stats():
            if row.get("pxname") == backend and row.get("svname") == server:
                return row.get("status", "")
        raise KeyError(f"{backend}/{server}")

    def sessions_total(self, server: str, backend: str = _FRONTENDS["dicom"]) -> int:
        """How many connections HAProxy has sent to one server (``stot``).

        :param server: the node's name.
        :param backend: the backend.
        :returns: the count.
        """
        for row in self.stats():
            if row.get("pxname") == backend and row.get("svname") == server:
                return int(row.get("stot") or 0)
        raise KeyError(f"{backend}/{server}")

    def wait_for_status(self, server: str, status: str, timeout: float, backend: str = _FRONTENDS["dicom"]) -> None:
        """Wait until HAProxy reports ``status`` (exactly, e.g. ``UP`` or ``DOWN``) for a server.

        :param server: the node's name.
        :param status: the status awaited.
        :param timeout: seconds.
        :param backend: the backend.
        :raises AssertionError: on timeout (with the last status and the log).
        """
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            last = self.server_status(server, backend)
            if last == status:
                return
            time.sleep(0.1)
        raise AssertionError(f"{backend}/{server} is {last!r}, not {status!r}, after {timeout}s:\n{self.log_text()}")
