"""Raw TLS ClientHello probes from a plain socket, and the first answer parsed off the wire.

OpenSSL 3 clients cannot send an SSLv3 ClientHello at all and refuse TLS
1.0/1.1 at the default security level (HARDENING note on T08), and the
gateway's own audit label says what the gateway *thinks* it did, not what
went on the wire. :func:`client_hello` builds the bytes of a ClientHello
record for any protocol version (RFC 8446 4.1.2, RFC 5246 7.4.1.2, RFC 6101
5.6.1.2), :func:`probe` sends it on a fresh TCP connection and returns the
server's first answer parsed from its records: a TLS alert (RFC 8446 6,
RFC 5246 7.2: level, description) or a ServerHello (with the version it
chose: ``legacy_version``, or the ``supported_versions`` extension for TLS
1.3, RFC 8446 4.2.1).

The hellos offer what a client of that version would: for SSLv3, TLS 1.0
and TLS 1.1, the CBC suites of those versions (RFC 5246 A.5, RFC 4492) and
no TLS 1.2 signature algorithms; for TLS 1.2, the ECDHE AES-GCM suites of
BCP 195; for TLS 1.3, ``TLS_AES_128_GCM_SHA256`` with an X25519 key share
(any 32 bytes are a valid X25519 public value, RFC 7748 5). So the same
builder, given a newer version, yields a hello the gateway accepts: the
control that shows a refusal comes from the version, not from a malformed
probe.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

__all__ = [
    "ALERT",
    "HANDSHAKE",
    "SSL3",
    "TLS10",
    "TLS11",
    "TLS12",
    "TLS13",
    "Answer",
    "client_hello",
    "probe",
    "read_answer",
]

#: Protocol versions on the wire (RFC 6101 A.1, RFC 2246, RFC 4346, RFC 5246, RFC 8446).
SSL3, TLS10, TLS11, TLS12, TLS13 = 0x0300, 0x0301, 0x0302, 0x0303, 0x0304

#: TLS record content types (RFC 8446 5.1).
ALERT, HANDSHAKE = 21, 22

#: Handshake message types (RFC 8446 4).
_CLIENT_HELLO, _SERVER_HELLO = 1, 2

#: Alert descriptions worth naming in messages (RFC 8446 6, RFC 5246 7.2).
ALERT_NAMES: dict[int, str] = {
    10: "unexpected_message",
    40: "handshake_failure",
    47: "illegal_parameter",
    50: "decode_error",
    70: "protocol_version",
    71: "insufficient_security",
    80: "internal_error",
    109: "missing_extension",
}

#: Cipher suites a pre-TLS-1.2 client offers (RFC 5246 A.5, RFC 4492 6), and the SCSV of RFC 5746.
_OLD_SUITES = (0xC013, 0xC014, 0x002F, 0x0035, 0x000A, 0x00FF)
#: ECDHE AES-GCM suites (BCP 195), all in the gateway's profile.
_TLS12_SUITES = (0xC02F, 0xC030, 0xC02B, 0xC02C)
#: TLS_AES_128_GCM_SHA256 and TLS_AES_256_GCM_SHA384 (RFC 8446 B.4).
_TLS13_SUITES = (0x1301, 0x1302)


@dataclass(frozen=True)
class Answer:
    """The server's first answer to a ClientHello.

    :param record_type: content type of its first record (21 alert, 22 handshake), 0 when none came.
    :param record_version: the ``legacy_record_version`` of that record.
    :param alert_level: 1 warning, 2 fatal (alerts only).
    :param alert_description: the alert's description code (alerts only).
    :param server_version: the version a ServerHello chose (ServerHellos only).
    :param closed: the server closed (or reset) the connection after what it sent.
    :param raw: the bytes read.
    """

    record_type: int
    record_version: int = 0
    alert_level: int = 0
    alert_description: int = 0
    server_version: int = 0
    closed: bool = False
    raw: bytes = b""

    def describe(self) -> str:
        """Say what came back, for assertion messages.

        :returns: one line.
        """
        if self.record_type == ALERT:
            name = ALERT_NAMES.get(self.alert_description, "?")
            return (f"alert level {self.alert_level} description {self.alert_description} ({name}) in a "
                    f"record of version 0x{self.record_version:04X}; closed {self.closed}")
        if self.record_type == HANDSHAKE:
            return f"ServerHello version 0x{self.server_version:04X}; closed {self.closed}"
        return f"nothing parseable ({self.raw[:32].hex()}); closed {self.closed}"


def _extension(kind: int, body: bytes) -> bytes:
    """One extension: type, length, body (RFC 8446 4.2)."""
    return struct.pack(">HH", kind, len(body)) + body


def _vector16(items: bytes) -> bytes:
    """A vector with a 2-byte length prefix."""
    return struct.pack(">H", len(items)) + items


def client_hello(version: int, *, record_version: int | None = None) -> bytes:
    """Build one TLS record holding a ClientHello offering ``version`` (and nothing newer).

    :param version: :data:`SSL3`, :data:`TLS10`, :data:`TLS11`, :data:`TLS12` or :data:`TLS13`.
    :param record_version: the record layer's version (default: ``version`` for SSLv3,
        else 0x0301 as real clients send, RFC 8446 5.1).
    :returns: the record's bytes.
    """
    suites = _TLS13_SUITES + _TLS12_SUITES if version == TLS13 else \
        _TLS12_SUITES if version == TLS12 else _OLD_SUITES
    extensions = b""
    if version >= TLS10:
        # supported_groups (x25519, secp256r1) and ec_point_formats (uncompressed): RFC 8422 5.1.
        extensions += _extension(10, _vector16(struct.pack(">HH", 0x001D, 0x0017)))
        extensions += _extension(11, b"\x01\x00")
    if version >= TLS12:
        # signature_algorithms: rsa_pss_rsae_sha256, rsa_pkcs1_sha256, ecdsa_secp256r1_sha256 (RFC 8446 4.2.3).
        extensions += _extension(13, _vector16(struct.pack(">HHH", 0x0804, 0x0401, 0x0403)))
        extensions += _extension(0xFF01, b"\x00")  # renegotiation_info, empty (RFC 5746 3.2)
    if version == TLS13:
        # supported_versions (RFC 8446 4.2.1) and an X25519 key share (4.2.8).
        extensions += _extension(43, b"\x02" + struct.pack(">H", TLS13))
        share = struct.pack(">HH", 0x001D, 32) + os.urandom(32)
        extensions += _extension(51, _vector16(share))
    legacy_version = min(version, TLS12)
    body = struct.pack(">H", legacy_version) + os.urandom(32)
    body += b"\x20" + os.urandom(32)  # a legacy session id, as middlebox-compatible clients send
    body += _vector16(b"".join(struct.pack(">H", s) for s in suites))
    body += b"\x01\x00"  # compression methods: null only
    if extensions:
        body += _vector16(extensions)
    handshake = bytes([_CLIENT_HELLO]) + len(body).to_bytes(3, "big") + body
    if record_version is None:
        record_version = SSL3 if version == SSL3 else TLS10
    return struct.pack(">BHH", HANDSHAKE, record_version, len(handshake)) + handshake


def _server_hello_version(fragment: bytes) -> int:
    """Read the chosen version from a ServerHello handshake message.

    :param fragment: the handshake record's payload, starting with the ServerHello.
    :returns: the ``supported_versions`` value if present (TLS 1.3), else ``legacy_version``.
    """
    legacy = struct.unpack_from(">H", fragment, 4)[0]
    offset = 4 + 2 + 32
    offset += 1 + fragment[offset]  # session id
    offset += 2 + 1  # cipher suite, compression method
    if offset + 2 > len(fragment):
        return int(legacy)
    end = offset + 2 + struct.unpack_from(">H", fragment, offset)[0]
    offset += 2
    while offset + 4 <= min(end, len(fragment)):
        kind, length = struct.unpack_from(">HH", fragment, offset)
        if kind == 43 and length == 2:
            return int(struct.unpack_from(">H", fragment, offset + 4)[0])
        offset += 4 + length
    return int(legacy)


def read_answer(sock: socket.socket, timeout: float = 10.0) -> Answer:
    """Read the server's first record (and whether it then closed) from ``sock``.

    :param sock: a connected socket the ClientHello was sent on.
    :param timeout: seconds to wait for each read.
    :returns: the parsed answer.
    """
    sock.settimeout(timeout)
    data = b""
    closed = False
    while True:
        if len(data) >= 5 and len(data) >= 5 + struct.unpack_from(">H", data, 3)[0]:
            break
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, socket.timeout):
            chunk = b""
        if not chunk:
            closed = True
            break
        data += chunk
    if len(data) < 5 or len(data) < 5 + struct.unpack_from(">H", data, 3)[0]:
        return Answer(0, closed=closed, raw=data)
    record_type, record_version, length = struct.unpack_from(">BHH", data, 0)
    payload = data[5:5 + length]
    if not closed and record_type == ALERT:
        # After a fatal alert the server must close (RFC 8446 6.2): see that it does.
        try:
            sock.settimeout(timeout)
            closed = sock.recv(65536) == b""
        except ConnectionResetError:
            closed = True
        except socket.timeout:
            closed = False
    if record_type == ALERT and len(payload) >= 2:
        return Answer(ALERT, record_version, payload[0], payload[1], closed=closed, raw=data)
    if record_type == HANDSHAKE and payload[:1] == bytes([_SERVER_HELLO]):
        return Answer(HANDSHAKE, record_version, server_version=_server_hello_version(payload), closed=closed,
                      raw=data)
    return Answer(record_type, record_version, closed=closed, raw=data)


def probe(host: str, port: int, version: int, *, record_version: int | None = None,
          timeout: float = 10.0) -> Answer:
    """Send one ClientHello offering ``version`` on a new connection and read the first answer.

    :param host: the server's address.
    :param port: its port.
    :param version: the version offered (see :func:`client_hello`).
    :param record_version: the record layer's version (see :func:`client_hello`).
    :param timeout: seconds for the connect and each read.
    :returns: the answer.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(client_hello(version, record_version=record_version))
        return read_answer(sock, timeout)
