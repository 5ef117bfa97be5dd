"""Where audit records go: the hash-chained JSON-lines file, and syslog over TLS (RFC 5425).

:class:`JsonLinesFile` appends each :class:`~gateway.audit.AuditRecord` as a
line carrying the SHA-256 of the line before it (HARDENING H11), rotated by
size like the logs (:func:`gateway.logs.shift_rotated`); :class:`SyslogTLSSink`
sends a copy to the site's collector as RFC 5424 messages (the transport IHE
ATNA uses), formatted by :func:`format_rfc5424`. Both are audit sinks
(:class:`~gateway.audit.IAuditSink`). The records, their aggregation and the
verification of the chain stay in :mod:`gateway.audit`, which re-exports
these names. This module imports nothing of :mod:`gateway.audit` at run time
(only its types), so that re-export makes no import cycle. The JSON-lines
file is the record of truth; syslog is a copy for the site's SIEM.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import os
import threading
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import Counter
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.interfaces import IHandshakeListener, IPushProducer, ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from gateway.logs import shift_rotated
from gateway.private import make_private_dirs, open_private

if TYPE_CHECKING:
    from gateway.audit import AuditRecord

__all__ = [
    "CHAIN_KEY",
    "CHAIN_START",
    "JsonLinesFile",
    "SYSLOG_FACILITY",
    "SYSLOG_MAX_PENDING",
    "SyslogTLSSink",
    "format_rfc5424",
    "line_digest",
    "lock_path",
]


#: The key each line of the audit file carries: the SHA-256 of the line before it.
CHAIN_KEY = "prev_sha256"
#: What the first record of a trail links to (there is no line before it).
CHAIN_START = "0" * 64


def line_digest(line: bytes) -> str:
    """The link to a line: the hex SHA-256 of its bytes, without the newline.

    :param line: one line of the audit file, as stored.
    :returns: the value the next record's ``prev_sha256`` holds.
    """
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def lock_path(path: str) -> str:
    """The lock file of an audit file: hidden beside it, so ``audit.jsonl*`` does not match it.

    :param path: the audit file.
    :returns: ``<folder>/.<name>.lock``.
    """
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.lock")


def _last_line(fd: int, size: int) -> bytes | None:
    """The last non-empty line of the first ``size`` bytes of an open file, read from the end.

    :returns: the line without its newline, or ``None`` for an empty file.
    """
    block = 4096
    end = size
    tail = b""
    while end > 0:
        start = max(0, end - block)
        tail = os.pread(fd, end - start, start) + tail
        end = start
        stripped = tail.rstrip(b"\n")
        if b"\n" in stripped or (end == 0 and stripped):
            return stripped.rsplit(b"\n", 1)[-1]
        block *= 2
    return None


class JsonLinesFile:
    """Appends records as JSON lines to a file, hash-chained, rotating it by size.

    Rotation renames ``file`` to ``file.1`` (and ``file.1`` to ``file.2``
    and so on, keeping ``keep`` old files), as the log files do. Each line
    is written and flushed at once, so a crash loses at most the line being
    written; the audit trail is not fsync'ed per record (it would double the
    per-instance cost) and custody does not depend on it.

    Tamper evidence: every line carries ``prev_sha256``, the SHA-256 of the
    line before it, so editing, inserting or deleting a record breaks the
    next link (:func:`gateway.audit.verify_chain`, ``dicom-gateway audit verify``). The
    chain runs across rotations (the first line of a new file links to the
    last line of ``file.1``) and across restarts: the link is always taken
    from the last line *on disk*, never from memory alone.

    Several processes append to the same file (the gateway, and the
    ``dicom-gateway`` commands that audit an operator's action), so
    read-last-line, rotate and append happen under an exclusive
    :func:`fcntl.flock` on ``.file.lock`` (:func:`lock_path`), a file that is never rotated
    (a lock on the data file itself would be on the old inode after another
    process rotated it). Under the lock a writer whose descriptor no longer
    names ``file`` (another process rotated it) reopens it, and takes the
    link from the file's current last line, which another process may have
    written; when the file has not changed since its own last write it uses
    the digest it remembers instead of reading the line back.

    A chain shows that records were changed, not by whom: anyone able to
    rewrite the whole file can recompute it. Against that, the copy sent to a
    syslog collector (:class:`SyslogTLSSink`) is the record kept elsewhere.

    :param path: the file (created with mode 0600, its folder 0700).
    :param max_bytes: rotate when the file would grow past this size; 0 never.
    :param keep: rotated files kept.
    """

    log = Logger(namespace="gateway.audit")

    def __init__(self, path: str, max_bytes: int = 100 * 1024**2, keep: int = 10) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self._lock = threading.Lock()
        folder = os.path.dirname(path)
        if folder:
            make_private_dirs(folder, tighten_existing=False)
        self._lock_fd = open_private(lock_path(path), os.O_RDWR)
        self._fd = open_private(path, os.O_WRONLY | os.O_APPEND)
        #: (inode, size, digest of the last line) after this writer's last append.
        self._last: tuple[int, int, str] | None = None

    def write(self, record: AuditRecord) -> None:
        """Append one record, linked to the line before it, rotating first when it would not fit.

        :param record: the record.
        """
        body = record.to_json()
        try:
            with self._lock:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
                try:
                    self._append(body)
                finally:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        except OSError as error:
            self.log.error("cannot write the audit trail {path}: {error}", path=self.path, error=error)

    def _append(self, body: str) -> None:
        """Under the lock: reopen if rotated elsewhere, find the link, rotate if needed, append."""
        st = os.fstat(self._fd)
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            on_disk = None
        if on_disk is None or (on_disk.st_dev, on_disk.st_ino) != (st.st_dev, st.st_ino):
            os.close(self._fd)
            self._fd = open_private(self.path, os.O_WRONLY | os.O_APPEND)
            st = os.fstat(self._fd)
        previous = self._previous_digest(st.st_ino, st.st_size)
        st = os.fstat(self._fd)  # a torn last line may have been ended
        line = (body[:-1] + f',"{CHAIN_KEY}":"{previous}"}}\n').encode("ascii")
        if self.max_bytes and st.st_size and st.st_size + len(line) > self.max_bytes:
            self._rotate()
            st = os.fstat(self._fd)
        os.write(self._fd, line)
        self._last = (st.st_ino, st.st_size + len(line), line_digest(line))

    def _previous_digest(self, inode: int, size: int) -> str:
        """The digest of the last line on disk: of this file, else of ``file.1``, else the chain start."""
        if self._last is not None and self._last[:2] == (inode, size):
            return self._last[2]
        if size:
            with open(self.path, "rb") as stream:
                last = _last_line(stream.fileno(), size)
                torn = os.pread(stream.fileno(), 1, size - 1) != b"\n"
            if torn:
                # A torn line (a crash mid-write): end it, so this record
                # starts a line of its own; verify reports the torn one.
                os.write(self._fd, b"\n")
            if last is not None:
                return line_digest(last)
        try:
            fd = os.open(f"{self.path}.1", os.O_RDONLY)
        except FileNotFoundError:
            return CHAIN_START
        try:
            last = _last_line(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        return line_digest(last) if last is not None else CHAIN_START

    def _rotate(self) -> None:
        os.close(self._fd)
        if self.keep <= 0:
            os.unlink(self.path)
        else:
            shift_rotated(self.path, self.keep)
        self._fd = open_private(self.path, os.O_WRONLY | os.O_APPEND)

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            for fd in (self._fd, self._lock_fd):
                try:
                    os.close(fd)
                except OSError:
                    pass


#: RFC 5424 6.2.1: facility 10 is security/authorization (authpriv), as ATNA uses.
SYSLOG_FACILITY = 10

#: Severity per EventOutcomeIndicator (RFC 5424 Table 2): notice for success,
#: warning/error for failures. Keyed by the values of :class:`gateway.audit.Outcome`
#: (RFC 3881: 0 success, 4 minor, 8 serious, 12 major failure), which are ints, so
#: this module needs nothing of :mod:`gateway.audit` at run time.
_SEVERITY: Final[Mapping[int, int]] = {0: 5, 4: 4, 8: 3, 12: 3}


def format_rfc5424(record: AuditRecord, hostname: str, app_name: str = "dicom-gateway", procid: str = "-") -> bytes:
    """Format a record as an RFC 5424 syslog message with RFC 5425 octet-counting framing.

    ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG``, where MSGID is
    ``DICOM+RFC3881`` as IHE ATNA asks and MSG (UTF-8 with BOM, RFC 5424
    6.4) is the record's JSON. The frame is ``LEN SP MSG`` (RFC 5425 4.3).

    :param record: the record.
    :param hostname: our host name (at most 255 printable characters).
    :param app_name: the APP-NAME field.
    :param procid: the PROCID field.
    :returns: the framed message.
    """
    severity = _SEVERITY.get(record.outcome, 4)
    priority = SYSLOG_FACILITY * 8 + severity
    header = f"<{priority}>1 {record.time} {_field(hostname, 255)} {_field(app_name, 48)} {_field(procid, 128)} DICOM+RFC3881 -"
    message = header.encode("ascii") + b" \xef\xbb\xbf" + record.to_json().encode("utf-8")
    return str(len(message)).encode("ascii") + b" " + message


def _field(value: str, limit: int) -> str:
    """An RFC 5424 header field: printable US-ASCII without spaces, ``-`` when empty."""
    cleaned = "".join(c for c in value if "!" <= c <= "~")[:limit]
    return cleaned or "-"


#: Records a :class:`SyslogTLSSink` holds while the collector is away or slow.
SYSLOG_MAX_PENDING = 10000


class SyslogTLSSink:
    """Sends audit records to a collector as RFC 5424 messages over TLS (RFC 5425).

    The connection is kept by a Twisted ``ClientService`` (reconnecting with
    backoff). Memory is bounded whether the collector is down or merely slow
    (HARDENING H11): records wait in one buffer of ``max_pending`` records,
    the oldest dropped first,

    * while disconnected, and until the TLS handshake completes (a
      collector that accepts TCP and never finishes the handshake would
      otherwise fill the TLS layer's own, unbounded, pre-handshake buffer);
    * while connected but paused: the sink is a streaming producer of its
      transport, which pauses it when the collector reads slower than we
      write (Twisted's write buffer high-water mark), so the transport's
      buffer stays bounded too, and the sink's buffer takes the excess.

    Dropped records are counted in :attr:`dropped`, in the
    ``dicom_gateway_audit_syslog_dropped_total`` counter when a registry is
    given, and in the next record sent (``extra.syslog_dropped``: the records
    lost just before it), so the collector sees the gap. The JSON-lines file
    stays the record of truth; syslog is a copy for the site's SIEM.

    :param reactor: the reactor (time).
    :param endpoint: a client endpoint, normally TLS-wrapped (see
        :func:`gateway.security.build_audit`).
    :param hostname: our host name for the messages' HOSTNAME field.
    :param max_pending: records buffered while disconnected, handshaking or paused.
    :param registry: where the dropped-records counter is registered (none: not exported).
    """

    log = Logger(namespace="gateway.audit")

    def __init__(
        self,
        reactor: Any,
        endpoint: Any,
        hostname: str,
        max_pending: int = SYSLOG_MAX_PENDING,
        registry: Any = None,
    ) -> None:
        sink = self

        @implementer(IHandshakeListener, IPushProducer)
        class _Sender(Protocol):
            def connectionMade(self) -> None:
                sink._attached = self
                self.transport.registerProducer(self, True)
                if not ISSLTransport.providedBy(self.transport):
                    sink._connected(self)

            def handshakeCompleted(self) -> None:
                sink._connected(self)

            def connectionLost(self, reason: Any = None) -> None:
                sink._lost(self)

            def pauseProducing(self) -> None:
                sink._paused = True

            def resumeProducing(self) -> None:
                sink._paused = False
                sink._drain()

            def stopProducing(self) -> None:
                sink._paused = True

        self.hostname = hostname
        self._pending: Any = deque(maxlen=max(1, max_pending))
        self._protocol: Any = None
        self._attached: Any = None
        self._paused = False
        self._unreported = 0
        self.dropped = 0
        self.sent = 0
        self._counter: Any = None
        if registry is not None:
            self._counter = Counter(
                "dicom_gateway_audit_syslog_dropped",
                "Audit records not sent to the syslog collector because its buffer was full "
                "(collector down, handshaking or slow); the audit file still has them.",
                registry=registry,
            )
        self._service = ClientService(
            endpoint, Factory.forProtocol(_Sender), retryPolicy=backoffPolicy(maxDelay=60.0), clock=reactor
        )

    def start(self) -> None:
        """Start connecting (and reconnecting)."""
        self._service.startService()

    def close(self) -> Any:
        """Stop the connection; buffered records are dropped.

        :returns: a Deferred that fires when the connection is closed.
        """
        if self._attached is not None:
            # TLS closes only once no producer is registered.
            self._attached.transport.unregisterProducer()
            self._attached = None
        return self._service.stopService()

    @property
    def pending(self) -> int:
        """Records waiting in the buffer."""
        return len(self._pending)

    def write(self, record: AuditRecord) -> None:
        """Send one record now, or buffer it until the collector is reachable and reading.

        :param record: the record.
        """
        if len(self._pending) == self._pending.maxlen:
            self._drop()
        self._pending.append(record)
        self._drain()  # at once, when connected and not paused

    def _drop(self) -> None:
        """Count one record dropped from the buffer (its oldest)."""
        self.dropped += 1
        self._unreported += 1
        if self._counter is not None:
            self._counter.inc()

    def _send(self, record: AuditRecord) -> None:
        """Write one record to the collector, telling it how many were dropped just before."""
        if self._unreported:
            record = dataclasses.replace(record, extra={**record.extra, "syslog_dropped": str(self._unreported)})
            self._unreported = 0
        self._protocol.transport.write(format_rfc5424(record, self.hostname, procid=str(os.getpid())))
        self.sent += 1

    def _drain(self) -> None:
        """Send buffered records until the buffer is empty or the transport pauses us."""
        while self._pending and self._protocol is not None and not self._paused:
            self._send(self._pending.popleft())

    def _connected(self, protocol: Any) -> None:
        self._protocol = protocol
        self._paused = False
        self._drain()

    def _lost(self, protocol: Any) -> None:
        if self._attached is protocol:
            self._attached = None
        if self._protocol is protocol:
            self._protocol = None
            self._paused = False
