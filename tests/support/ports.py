"""Loopback port helpers for tests that start real network peers.

Only the interop tier uses these: unit and adapter tests never touch a real
socket.
"""

from __future__ import annotations

import os
import random
import socket
import time

__all__ = ["RESERVATIONS_ENV", "PortTimeout", "free_port", "port_is_open", "wait_for_port"]


class PortTimeout(AssertionError):
    """Raised when a port did not start accepting connections in time."""


#: The environment variable naming a folder where the ports handed out in this test run are
#: reserved (set by ``tests.runner`` for the whole run, trial's workers included).
RESERVATIONS_ENV = "GATEWAY_TEST_PORT_DIR"

#: How many ports below the kernel's ephemeral range the tests draw from.
_POOL_SIZE = 12_000

#: Ports this process handed out already.
_handed: set[int] = set()


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (``ip_local_port_range``), 32768 if unknown."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as stream:
            return int(stream.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _reserve(port: int) -> bool:
    """Reserve ``port`` for this test run across processes (an ``O_EXCL`` file per port).

    :param port: the candidate.
    :returns: ``True`` if no other process of this run holds it (or no run folder is set).
    """
    folder = os.environ.get(RESERVATIONS_ENV)
    if not folder:
        return True
    try:
        os.close(os.open(os.path.join(folder, str(port)), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    except OSError:
        return True
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port for a test's listener that nothing else of this run will take.

    Asking the kernel for port 0 and releasing it left a window in which any
    outbound connection on the machine could be given the same port from the
    ephemeral range before the subprocess bound it (seen in CI: "Address
    already in use" at a gateway's start). So the port comes from the
    ``_POOL_SIZE`` ports just below the ephemeral range, which the kernel
    never hands to outbound connections; it is reserved for the whole test
    run across trial's worker processes (see :data:`RESERVATIONS_ENV`), never
    handed out twice by one process, and checked free by a bind.

    :param host: the address the port must be free on.
    :returns: the port.
    :raises RuntimeError: when the pool is exhausted.
    """
    high = _ephemeral_low()
    low = max(1024, high - _POOL_SIZE)
    start = random.randrange(low, high)
    for offset in range(high - low):
        port = low + (start - low + offset) % (high - low)
        if port in _handed:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        if not _reserve(port):
            continue
        _handed.add(port)
        return port
    raise RuntimeError(f"no free test port in {low}-{high - 1}")


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
