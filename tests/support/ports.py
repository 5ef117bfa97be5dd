"""Loopback port helpers for tests that start real network peers.

Only the interop tier uses these: unit and adapter tests never touch a real
socket.
"""

from __future__ import annotations

import socket
import time

__all__ = ["PortTimeout", "free_port", "port_is_open", "wait_for_port"]


class PortTimeout(AssertionError):
    """Raised when a port did not start accepting connections in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a currently unused TCP port.

    The port is bound to port 0, read back and released, so a later bind by a
    subprocess can race with other processes; on a CI box this is good enough.

    :param host: the address to bind.
    :returns: a port number that was free a moment ago.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Check once whether something accepts TCP connections at ``host:port``.

    :param host: address to connect to.
    :param port: port to connect to.
    :param timeout: connect timeout in seconds.
    :returns: ``True`` if the connection was accepted.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float = 15.0) -> None:
    """Poll until ``host:port`` accepts a TCP connection.

    :param host: address to connect to.
    :param port: port to connect to.
    :param timeout: how long to keep trying, in seconds.
    :raises PortTimeout: if the port did not open in time.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_is_open(host, port):
            return
        time.sleep(0.05)
    raise PortTimeout(f"{host}:{port} did not accept connections within {timeout}s")
