"""Socket tuning shared by the acceptor and the requestor.

Two settings make a large difference with DICOM peers, whose traffic is a
request, a burst of data, and a small response:

* ``TCP_NODELAY`` on our sockets, so our small PDUs (C-STORE-RSP, A-RELEASE)
  are not held back by Nagle's algorithm;
* on Linux, ``TCP_QUICKACK`` re-armed after every read (the kernel clears it
  again by itself), so a peer that leaves Nagle on (Debian's DCMTK does
  unless ``TCP_NODELAY=1`` is set in its environment) gets our ACK at once
  instead of after the delayed-ACK timer (about 40 ms), which otherwise caps
  such a peer at a few tens of instances per second.
"""

from __future__ import annotations

import socket
from typing import Any

_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def set_no_delay(transport: Any) -> None:
    """Turn Nagle's algorithm off on ``transport`` when it is a TCP transport."""
    setter = getattr(transport, "setTcpNoDelay", None)
    if setter is not None:
        try:
            setter(True)
        except OSError:
            pass


def quickack(transport: Any) -> None:
    """Re-arm ``TCP_QUICKACK`` (Linux only; a no-op elsewhere or on non-socket transports)."""
    if _TCP_QUICKACK is None:
        return
    handle = getattr(transport, "getHandle", lambda: None)()
    if isinstance(handle, socket.socket):
        try:
            handle.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        except OSError:
            pass
