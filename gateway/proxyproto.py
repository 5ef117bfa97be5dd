"""The PROXY protocol (versions 1 and 2) in front of a listener: who the modality behind HAProxy is.

Behind a TCP load balancer every connection comes from the balancer's
address. HAProxy's ``send-proxy-v2`` (or ``send-proxy``) writes a header in
front of the connection's first byte naming the original source and
destination; with ``listen[i].proxy_protocol: {trusted: [CIDR...]}`` the
gateway reads that header *before anything else* and from then on access
rules, routing (``source_ip``), logs and audit see the modality's address.

Theory of operation
-------------------
:class:`ProxyHeaderParser` is sans-IO: bytes in, a :class:`ProxyHeader` (and
the bytes after it) out, or :class:`ProxyHeaderError`. It follows the
specification (haproxy ``doc/proxy-protocol.txt``):

* version 1 is one text line, ``PROXY TCP4|TCP6|UNKNOWN src dst sport dport``
  ending in CRLF, at most 107 bytes in all (section 2.1);
* version 2 starts with the 12-byte signature ``\\r\\n\\r\\n\\0\\r\\nQUIT\\n``,
  then the version/command byte (0x20 LOCAL, 0x21 PROXY), the family and
  transport byte (0x11 TCP over IPv4, 0x21 TCP over IPv6, 0x00 UNSPEC), a
  16-bit big-endian length and that many bytes of addresses and TLVs
  (section 2.2). TLVs are skipped.

Reads are bounded before they are buffered (HARDENING R4): the parser
decides the version from the first bytes, refuses a v1 line with no CRLF
within 107 bytes at once and a v2 length above :data:`V2_MAX_LENGTH` as soon
as the 16-byte fixed part is in, so a hostile peer never makes it hold more
than 16 + :data:`V2_MAX_LENGTH` bytes. The first byte that cannot begin
either signature (a DICOM PDU sent straight to the listener, a TLS
ClientHello) is refused as a *missing* header.

A LOCAL command (v2) or ``PROXY UNKNOWN`` (v1) means "this connection is the
proxy's own" (HAProxy's health checks with ``check-send-proxy``): the
connection keeps its real addresses. So does a v2 PROXY command with the
UNSPEC family, as the specification requires. UDP and UNIX-socket families
are refused: a DICOM association is TCP (PS3.8 9.1.1).

:class:`ProxyProtocolFactory` is the Twisted adapter. It wraps the
listener's factory *outside* TLS (the TLS handshake starts after the
header, in the bytes that follow it), and for each connection:

1. refuses a peer whose address is outside ``trusted`` at once, before
   reading a byte (a modality that could write its own header could claim
   any address and pass every ``networks`` rule);
2. arms a deadline (``proxy_protocol.timeout``, 5 s by default): a header not
   complete by then closes the connection;
3. feeds bytes to the parser; on a header, connects the wrapped protocol
   (TLS, then the DICOM acceptor, whose ARTIM starts only now) with this
   wrapper as its transport, whose :meth:`getPeer` answers the header's
   source, and passes on the bytes that followed the header.

Every refusal is logged, counted and audited (a Security Alert, Node
Authentication) through ``on_refused``; a peer that closes before sending a
full header is only logged at debug level (HAProxy's TCP checks do that).
:meth:`getHost` keeps answering the gateway's own listening address: routes
and metrics name the gateway's listener, not the balancer's frontend.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

__all__ = [
    "V1_MAX_LENGTH",
    "V2_SIGNATURE",
    "V2_MAX_LENGTH",
    "REFUSAL_REASONS",
    "ProxyHeader",
    "ProxyHeaderError",
    "ProxyHeaderParser",
    "TrustedNetworks",
    "ProxyProtocolFactory",
]

#: The longest version 1 header, CRLF included (proxy-protocol.txt 2.1: "107 characters").
V1_MAX_LENGTH: Final = 107
#: The version 1 prefix.
V1_SIGNATURE: Final = b"PROXY "
#: The version 2 signature (proxy-protocol.txt 2.2).
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
#: The longest address-and-TLV part of a version 2 header we accept. The
#: addresses take at most 216 bytes (UNIX sockets); HAProxy's optional TLVs
#: (ALPN, authority, unique id, SSL) stay well below this.
V2_MAX_LENGTH: Final = 1024
#: The default deadline for the header, in seconds.
DEFAULT_TIMEOUT: Final = 5.0

#: The labels of a refusal (bounded, for the metric and the audit record).
REFUSAL_REASONS: Final = ("untrusted", "missing", "malformed", "timeout")

# proxy-protocol.txt 2.2: the family/transport byte.
_TCP4: Final = 0x11
_TCP6: Final = 0x21
_UNSPEC: Final = 0x00
_V2_FIXED: Final = 16


class ProxyHeaderError(Exception):
    """The bytes are not an acceptable PROXY header.

    :ivar label: ``missing`` (the connection does not start with a PROXY
        signature at all) or ``malformed`` (it does, but the header is wrong).
    """

    def __init__(self, label: str, message: str) -> None:
        super().__init__(message)
        self.label = label


@dataclass(frozen=True)
class ProxyHeader:
    """A parsed PROXY header.

    :ivar version: 1 or 2.
    :ivar local: ``True`` for LOCAL (v2) or UNKNOWN (v1), and for the UNSPEC
        family: the connection keeps its real addresses.
    :ivar source: the original source ``(host, port)``; ``None`` when ``local``.
    :ivar destination: the original destination ``(host, port)``; ``None`` when ``local``.
    """

    version: int
    local: bool
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None


def _port(text: bytes) -> int:
    """A v1 port: 1 to 5 decimal digits, at most 65535."""
    if not (1 <= len(text) <= 5 and text.isdigit()):
        raise ProxyHeaderError("malformed", f"bad port {text[:8]!r}")
    value = int(text)
    if value > 65535:
        raise ProxyHeaderError("malformed", f"port {value} out of range")
    return value


def _parse_v1(line: bytes) -> ProxyHeader:
    """Parse one v1 line, CRLF excluded (proxy-protocol.txt 2.1)."""
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("malformed", "non-ASCII bytes in a version 1 header") from None
    parts = text.split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        # "the receiver must ignore anything presented before the CRLF".
        return ProxyHeader(version=1, local=True)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("malformed", "version 1 header is not 'PROXY TCP4|TCP6 src dst sport dport'")
    kind = ipaddress.IPv4Address if parts[1] == "TCP4" else ipaddress.IPv6Address
    try:
        source = kind(parts[2])
        destination = kind(parts[3])
    except ValueError:
        raise ProxyHeaderError("malformed", f"version 1 addresses are not {parts[1]} addresses") from None
    return ProxyHeader(
        version=1,
        local=False,
        source=(str(source), _port(parts[4].encode())),
        destination=(str(destination), _port(parts[5].encode())),
    )


def _parse_v2(command: int, family: int, body: bytes) -> ProxyHeader:
    """Parse a v2 header's variable part (proxy-protocol.txt 2.2)."""
    if command == 0x0:
        return ProxyHeader(version=2, local=True)
    if family == _UNSPEC:
        return ProxyHeader(version=2, local=True)
    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    if family == _TCP4:
        if len(body) < 12:
            raise ProxyHeaderError("malformed", "version 2 TCP4 addresses shorter than 12 bytes")
        src, dst = ipaddress.IPv4Address(body[0:4]), ipaddress.IPv4Address(body[4:8])
        sport, dport = struct.unpack("!HH", body[8:12])
    elif family == _TCP6:
        if len(body) < 36:
            raise ProxyHeaderError("malformed", "version 2 TCP6 addresses shorter than 36 bytes")
        src, dst = ipaddress.IPv6Address(body[0:16]), ipaddress.IPv6Address(body[16:32])
        sport, dport = struct.unpack("!HH", body[32:36])
    else:
        raise ProxyHeaderError("malformed", f"version 2 family 0x{family:02x} is not TCP over IPv4 or IPv6")
    return ProxyHeader(version=2, local=False, source=(str(src), sport), destination=(str(dst), dport))


class ProxyHeaderParser:
    """Incremental parser of one PROXY header (v1 or v2); sans-IO.

    Feed it bytes as they arrive; it answers ``None`` until the header is
    complete, then the header and whatever followed it. It never buffers
    more than :data:`V1_MAX_LENGTH` bytes for v1 or 16 +
    :data:`V2_MAX_LENGTH` for v2.

    :param max_v2_length: the cap on a v2 header's length field.
    """

    def __init__(self, max_v2_length: int = V2_MAX_LENGTH) -> None:
        self._buffer = b""
        self._max_v2_length = max_v2_length
        self._done = False

    def feed(self, data: bytes) -> tuple[ProxyHeader, bytes] | None:
        """Add bytes; return the header and the bytes after it once it is complete.

        :param data: the next bytes of the connection.
        :returns: ``(header, rest)``, or ``None`` while more bytes are needed.
        :raises ProxyHeaderError: as soon as the bytes cannot be an acceptable header.
        :raises RuntimeError: if fed again after a header was returned.
        """
        if self._done:
            raise RuntimeError("the PROXY header was already parsed")
        buffer = self._buffer + data
        head = buffer[: len(V2_SIGNATURE)]
        if V2_SIGNATURE.startswith(head) and head:
            result = self._v2(buffer)
        elif V1_SIGNATURE.startswith(buffer[: len(V1_SIGNATURE)]) and buffer:
            result = self._v1(buffer)
        elif not buffer:
            return None
        else:
            raise ProxyHeaderError("missing", "the connection does not start with a PROXY protocol header")
        if result is None:
            self._buffer = buffer
            return None
        self._done = True
        self._buffer = b""
        return result

    def _v1(self, buffer: bytes) -> tuple[ProxyHeader, bytes] | None:
        end = buffer.find(b"\r\n", 0, V1_MAX_LENGTH)
        if end < 0:
            if len(buffer) >= V1_MAX_LENGTH:
                raise ProxyHeaderError("malformed", f"no CRLF within {V1_MAX_LENGTH} bytes of a version 1 header")
            if b"\n" in buffer:
                raise ProxyHeaderError("malformed", "a version 1 header must end in CRLF")
            return None
        return _parse_v1(buffer[:end]), buffer[end + 2 :]

    def _v2(self, buffer: bytes) -> tuple[ProxyHeader, bytes] | None:
        if len(buffer) < _V2_FIXED:
            return None
        version_command, family, length = buffer[12], buffer[13], struct.unpack("!H", buffer[14:16])[0]
        if version_command >> 4 != 2:
            raise ProxyHeaderError("malformed", f"version 2 signature with version {version_command >> 4}")
        command = version_command & 0x0F
        if command not in (0x0, 0x1):
            raise ProxyHeaderError("malformed", f"version 2 command {command} is neither LOCAL nor PROXY")
        if length > self._max_v2_length:
            raise ProxyHeaderError("malformed", f"version 2 length {length} above the cap of {self._max_v2_length}")
        if len(buffer) < _V2_FIXED + length:
            return None
        body = buffer[_V2_FIXED : _V2_FIXED + length]
        return _parse_v2(command, family, body), buffer[_V2_FIXED + length :]


class TrustedNetworks:
    """The source networks PROXY headers are accepted from.

    :param networks: CIDR texts (``10.0.0.5/32``, ``fd00::/64``).
    """

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)

    def __contains__(self, host: object) -> bool:
        """Tell whether ``host`` (an address text; IPv4-mapped IPv6 counts as IPv4) is trusted."""
        if not isinstance(host, str):
            return False
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)


#: ``on_refused(peer, reason_label, detail)``: a connection was refused.
RefusalHook = Callable[[str, str, str], None]


class ProxyProtocolWrapper(ProtocolWrapper):
    """One connection: read the PROXY header, then become the wrapped protocol's transport.

    :param factory: the :class:`ProxyProtocolFactory`.
    :param wrapped: the protocol built by the wrapped factory (TLS or the acceptor).
    """

    factory: ProxyProtocolFactory
    log = Logger(namespace="gateway.proxyproto")

    def __init__(self, factory: ProxyProtocolFactory, wrapped: Any) -> None:
        super().__init__(factory, wrapped)
        self._parser = ProxyHeaderParser(factory.max_v2_length)
        self._deadline: IDelayedCall | None = None
        self._peer: IPv4Address | IPv6Address | None = None
        #: The header, once read.
        self.header: ProxyHeader | None = None
        self._passed = False
        self._refused = False
        self._real_peer = "?"

    def makeConnection(self, transport: Any) -> None:
        """Take the transport; the wrapped protocol is connected only after the header."""
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)

    def connectionMade(self) -> None:
        """Refuse an untrusted peer at once; otherwise wait for the header, within the deadline."""
        assert self.transport is not None
        peer = self.transport.getPeer()
        host = getattr(peer, "host", "?")
        self._real_peer = f"{host}:{getattr(peer, 'port', '?')}"
        if host not in self.factory.trusted:
            self._refuse("untrusted", f"{host} is not in proxy_protocol.trusted")
            return
        if self.factory.timeout > 0:
            self._deadline = self.factory.clock.callLater(self.factory.timeout, self._timed_out)

    def dataReceived(self, data: bytes) -> None:
        """Before the header: feed the parser. After: pass the bytes on."""
        if self._passed:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._refused:
            return
        try:
            result = self._parser.feed(data)
        except ProxyHeaderError as error:
            self._refuse(error.label, str(error))
            return
        if result is None:
            return
        header, rest = result
        self._cancel_deadline()
        self.header = header
        if header.source is not None:
            host, port = header.source
            self._peer = (IPv6Address if ":" in host else IPv4Address)("TCP", host, port)
        self._passed = True
        self.log.debug(
            "connection from {proxy} carries {source} (PROXY v{version})",
            proxy=self._real_peer,
            source="its own address" if header.local else f"{header.source[0]}:{header.source[1]}" if header.source else "?",
            version=header.version,
        )
        # This wrapper provides the transport's interfaces (directlyProvides in makeConnection).
        self.wrappedProtocol.makeConnection(cast(ITransport, self))
        if rest and self._passed and not self.disconnecting:
            self.wrappedProtocol.dataReceived(rest)

    def getPeer(self) -> Any:
        """The header's source address (the modality), or the real peer for LOCAL and before the header."""
        if self._peer is not None:
            return self._peer
        assert self.transport is not None
        return self.transport.getPeer()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """Pass the loss on if the wrapped protocol was connected; otherwise just forget the connection."""
        self._cancel_deadline()
        if self._passed:
            super().connectionLost(reason)
            return
        self.factory.unregisterProtocol(self)
        if not self._refused:
            self.log.debug("connection from {peer} closed before a PROXY header", peer=self._real_peer)

    def _timed_out(self) -> None:
        self._deadline = None
        if not self._passed and not self._refused:
            self._refuse("timeout", f"no complete PROXY header within {self.factory.timeout:g}s")

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _refuse(self, label: str, detail: str) -> None:
        """Log, report and close; no byte is sent (a PROXY refusal has no answer on the wire)."""
        self._refused = True
        self._cancel_deadline()
        self.factory.refused(self._real_peer, label, detail)
        assert self.transport is not None
        self.transport.loseConnection()


class ProxyProtocolFactory(WrappingFactory[ProxyProtocolWrapper]):
    """Wraps a listener's factory (TLS or the acceptor): PROXY header first, from trusted peers only.

    :param wrapped: the factory of what follows the header.
    :param trusted: the networks headers are accepted from.
    :param clock: for the header deadline.
    :param listener: the listener's name, for logs and the refusal hook.
    :param timeout: seconds a trusted peer has to send a complete header (0: no deadline).
    :param on_refused: told of each refusal, ``(peer, reason_label, detail)``
        (the gateway's observer: metric and audit record).
    :param max_v2_length: the cap on a version 2 header's length field.
    """

    protocol = ProxyProtocolWrapper
    log = Logger(namespace="gateway.proxyproto")
    noisy = False

    def __init__(
        self,
        wrapped: Any,
        trusted: TrustedNetworks,
        clock: IReactorTime,
        listener: str = "",
        timeout: float = DEFAULT_TIMEOUT,
        on_refused: RefusalHook | None = None,
        max_v2_length: int = V2_MAX_LENGTH,
    ) -> None:
        super().__init__(wrapped)
        self.trusted = trusted
        self.clock = clock
        self.listener = listener
        self.timeout = timeout
        self.on_refused = on_refused
        self.max_v2_length = max_v2_length
        #: Refusals by reason label.
        self.refusals: dict[str, int] = {}

    def refused(self, peer: str, label: str, detail: str) -> None:
        """Count, log and report one refused connection.

        :param peer: the real ``host:port`` of the connection.
        :param label: one of :data:`REFUSAL_REASONS`.
        :param detail: why, for the log and the audit record.
        """
        self.refusals[label] = self.refusals.get(label, 0) + 1
        self.log.warn(
            "listener {listener}: connection from {peer} refused: {detail}",
            listener=self.listener,
            peer=peer,
            detail=detail,
        )
        if self.on_refused is not None:
            self.on_refused(peer, label, detail)
