"""An in-process TCP fault proxy for forwarding-side fault tests (HARDENING C).

:class:`FaultProxy` listens on a free loopback port and forwards every
connection to a target (the destination SCP).  The gateway's destination is
pointed at the proxy, and the proxy misbehaves as a :class:`FaultPlan`
chosen per connection says:

- ``delay``: sleep before forwarding each chunk, in both directions;
- ``bandwidth``: cap the client->server rate (bytes/s);
- ``cut_after_bytes``: forward that many client->server bytes, then cut;
- ``drop_reply_after_bytes``: forward that many server->client bytes, then
  swallow the rest (the connection stays open: the client waits in vain);
- ``drop_reply_after_pdus``: the same, counted in whole PDUs (1 lets the
  A-ASSOCIATE-AC through and swallows every DIMSE response);
- ``cut_after_last_data_fragment``: cut right after forwarding the first
  P-DATA-TF whose PDV is the last fragment of a data set (PS3.8 9.3.5.1:
  message control header bit 1 set, bit 0 clear), before any response;
- ``close_after_response``: cut right after forwarding a server P-DATA-TF
  carrying the last fragment of a command (a DIMSE response).

"Cut" closes the client side at once and half-closes the server side, then
drains the server until it closes, so bytes already forwarded reach the SCP
(an RST could make it discard them) and the outcome is truly ambiguous.

The proxy parses PDU headers (PS3.8 9.3.1: type, reserved, 4-byte big-endian
length) in both directions and records the client->server ones in
:attr:`FaultProxy.client_pdus`, so a test can check PDU sizes.  Forwarding is
PDU by PDU.  It runs on plain sockets in background threads rather than in a
Twisted reactor: the interop tests block (``wait_until``), so the test
reactor does not spin while the proxy must work.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from tests.support.ports import free_port

__all__ = ["NO_FAULT", "P_DATA_TF", "FaultPlan", "FaultProxy", "PduRecord", "first_connections"]

#: PDU type of P-DATA-TF (PS3.8 9.3.5).
P_DATA_TF: int = 0x04

#: Size of a PDU header: type (1), reserved (1), length (4) (PS3.8 9.3.1).
_HEADER = 6


@dataclass(frozen=True)
class FaultPlan:
    """The faults applied to one proxied connection (all off by default).

    :param delay: seconds slept before forwarding each PDU, both directions.
    :param bandwidth: client->server rate cap in bytes/s (``None``: none).
    :param cut_after_bytes: cut after forwarding this many client->server bytes.
    :param drop_reply_after_bytes: swallow server->client bytes past this many.
    :param drop_reply_after_pdus: swallow server->client PDUs past this many.
    :param cut_after_last_data_fragment: cut after the first last data fragment.
    :param close_after_response: cut after each last command fragment from the server.
    """

    delay: float = 0.0
    bandwidth: int | None = None
    cut_after_bytes: int | None = None
    drop_reply_after_bytes: int | None = None
    drop_reply_after_pdus: int | None = None
    cut_after_last_data_fragment: bool = False
    close_after_response: bool = False


#: No fault: forward faithfully.
NO_FAULT = FaultPlan()


@dataclass(frozen=True)
class PduRecord:
    """One PDU header seen by the proxy.

    :param connection: the connection's ordinal number (1-based).
    :param pdu_type: the PDU type byte.
    :param length: the PDU length field (bytes after the 6-byte header).
    """

    connection: int
    pdu_type: int
    length: int


def first_connections(plan: FaultPlan, count: int = 1) -> Callable[[int], FaultPlan]:
    """Apply ``plan`` to the first ``count`` connections only, then forward faithfully.

    :param plan: the faults.
    :param count: how many connections get them.
    :returns: a plan chooser for :class:`FaultProxy`.
    """
    return lambda ordinal: plan if ordinal <= count else NO_FAULT


def _last_fragment_kinds(pdu: bytes) -> tuple[bool, bool]:
    """Tell whether a P-DATA-TF ends a command and/or a data set.

    Each PDV item is a 4-byte length, a presentation context ID, then the
    message control header: bit 0 set = command, bit 1 set = last fragment
    (PS3.8 9.3.5.1, Annex E.2).

    :param pdu: a whole P-DATA-TF PDU (header included).
    :returns: (last command fragment seen, last data fragment seen).
    """
    command = data = False
    offset = _HEADER
    while offset + 6 <= len(pdu):
        (item_length,) = struct.unpack_from(">I", pdu, offset)
        control = pdu[offset + 5]
        if control & 0x02:
            if control & 0x01:
                command = True
            else:
                data = True
        offset += 4 + item_length
    return command, data


class _Connection:
    """One proxied connection: two pump threads applying one plan.

    :param proxy: the owning proxy.
    :param ordinal: the connection number (1-based).
    :param client: the accepted socket.
    :param server: the socket to the target.
    :param plan: the faults.
    """

    def __init__(self, proxy: FaultProxy, ordinal: int, client: socket.socket,
                 server: socket.socket, plan: FaultPlan) -> None:
        self.proxy = proxy
        self.ordinal = ordinal
        self.client = client
        self.server = server
        self.plan = plan
        self.cut = threading.Event()
        #: Set just before a response that ends the connection goes to the client:
        #: from then on nothing more goes upstream (the cut is *after* the response).
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self._pumps_done = 0
        self._upstream = threading.Thread(target=self._pump, args=(True,), daemon=True)
        self._downstream = threading.Thread(target=self._pump, args=(False,), daemon=True)

    def start(self) -> None:
        """Start both pumps."""
        self._upstream.start()
        self._downstream.start()

    def do_cut(self) -> None:
        """Close the client side, half-close the server side (it is drained by its pump)."""
        with self._lock:
            if self.cut.is_set():
                return
            self.cut.set()
            self.proxy.cuts += 1
        for how, sock in ((socket.SHUT_RDWR, self.client), (socket.SHUT_WR, self.server)):
            try:
                sock.shutdown(how)
            except OSError:
                pass

    def close(self) -> None:
        """Close both sockets (stop)."""
        for sock in (self.client, self.server):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _pump(self, upstream: bool) -> None:
        """Forward one direction PDU by PDU, applying the plan.

        :param upstream: ``True`` for client->server, ``False`` for server->client.
        """
        src, dst = (self.client, self.server) if upstream else (self.server, self.client)
        plan = self.plan
        buffer = b""
        forwarded = 0
        pdus = 0
        try:
            while True:
                try:
                    chunk = src.recv(65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    break
                if self.cut.is_set():
                    continue  # drain and discard
                buffer += chunk
                while len(buffer) >= _HEADER and not self.cut.is_set():
                    pdu_type = buffer[0]
                    (length,) = struct.unpack_from(">I", buffer, 2)
                    if len(buffer) < _HEADER + length:
                        break
                    pdu, buffer = buffer[:_HEADER + length], buffer[_HEADER + length:]
                    pdus += 1
                    if upstream:
                        self.proxy._record(PduRecord(self.ordinal, pdu_type, length))
                    command_end, data_end = ((False, False) if pdu_type != P_DATA_TF
                                             else _last_fragment_kinds(pdu))
                    if plan.delay:
                        time.sleep(plan.delay)
                    if upstream:
                        budget = plan.cut_after_bytes
                    else:
                        budget = plan.drop_reply_after_bytes
                        if plan.drop_reply_after_pdus is not None and pdus > plan.drop_reply_after_pdus:
                            budget = forwarded
                    if budget is not None and forwarded + len(pdu) > budget:
                        pdu = pdu[:max(0, budget - forwarded)]
                        self._send(dst, pdu, upstream)
                        forwarded += len(pdu)
                        if upstream:
                            self.do_cut()
                        else:
                            self.proxy.swallowed += 1
                            buffer = b""
                            # Swallow the rest of this direction silently.
                            while src.recv(65536):
                                pass
                            return
                        continue
                    if upstream and self.closing.is_set():
                        continue  # the client's next request, after the closing response: never forwarded
                    if not upstream and command_end and plan.close_after_response:
                        self.closing.set()
                    self._send(dst, pdu, upstream)
                    forwarded += len(pdu)
                    if upstream and data_end and plan.cut_after_last_data_fragment:
                        self.do_cut()
                    if not upstream and command_end and plan.close_after_response:
                        self.do_cut()
        except OSError:
            pass
        finally:
            # Propagate the end of this direction as a half-close.
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            with self._lock:
                self._pumps_done += 1
                ended = self._pumps_done == 2
            if ended:
                self.proxy._ended()

    def _send(self, dst: socket.socket, data: bytes, upstream: bool) -> None:
        """Send bytes, honouring the bandwidth cap upstream.

        :param dst: the socket to write.
        :param data: the bytes.
        :param upstream: whether this is client->server.
        """
        rate = self.plan.bandwidth if upstream else None
        if not rate:
            dst.sendall(data)
            return
        step = 4096
        for start in range(0, len(data), step):
            piece = data[start:start + step]
            dst.sendall(piece)
            time.sleep(len(piece) / rate)


class FaultProxy:
    """A loopback TCP proxy to ``target_host:target_port`` injecting faults per connection.

    :param target_port: the destination's port.
    :param plan_for: chooses the :class:`FaultPlan` of the n-th connection
        (1-based); default: no fault.
    :param target_host: the destination's address.
    """

    def __init__(self, target_port: int,
                 plan_for: Callable[[int], FaultPlan] = lambda _n: NO_FAULT,
                 target_host: str = "127.0.0.1") -> None:
        self.host = "127.0.0.1"
        self.port = free_port(self.host)
        self.target = (target_host, target_port)
        self.plan_for = plan_for
        #: How many connections were cut by a fault.
        self.cuts = 0
        #: How many connections had server bytes swallowed.
        self.swallowed = 0
        self._lock = threading.Lock()
        self._pdus: list[PduRecord] = []
        self._open = 0
        self._peak = 0
        self._connections: list[_Connection] = []
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def client_pdus(self) -> list[PduRecord]:
        """Every client->server PDU header seen so far.

        :returns: a copy of the list.
        """
        with self._lock:
            return list(self._pdus)

    @property
    def connections(self) -> int:
        """Count the connections accepted so far.

        :returns: the number.
        """
        with self._lock:
            return len(self._connections)

    @property
    def peak_open(self) -> int:
        """The largest number of connections open at the same time so far.

        A connection is open from its accept until both directions ended.

        :returns: the number.
        """
        with self._lock:
            return self._peak

    def _ended(self) -> None:
        """Note that one connection ended in both directions."""
        with self._lock:
            self._open -= 1

    def _record(self, record: PduRecord) -> None:
        """Remember one client->server PDU header.

        :param record: the header.
        """
        with self._lock:
            self._pdus.append(record)

    def start(self) -> FaultProxy:
        """Listen and start accepting in a background thread.

        :returns: this object.
        """
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(16)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        """Accept connections until the listener is closed."""
        listener = self._listener
        assert listener is not None
        while True:
            try:
                client, _address = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                ordinal = len(self._connections) + 1
                connection = _Connection(self, ordinal, client, server, self.plan_for(ordinal))
                self._connections.append(connection)
                self._open += 1
                self._peak = max(self._peak, self._open)
            connection.start()

    def stop(self) -> None:
        """Stop listening and close every connection; safe to call twice."""
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.close()

    def __enter__(self) -> FaultProxy:
        """Start the proxy.

        :returns: this object.
        """
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Stop the proxy.

        :param exc_type: unused.
        :param exc: unused.
        :param tb: unused.
        """
        self.stop()
