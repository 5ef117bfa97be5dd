"""Where audit records go besides the chained file: RFC 5424 syslog over TLS (RFC 5425).

:class:`SyslogTLSSink` sends each :class:`~gateway.audit.AuditRecord` to the
site's collector (the transport IHE ATNA uses), formatted by
:func:`format_rfc5424`. It is an :class:`~gateway.audit.IAuditSink` like
:class:`~gateway.audit.JsonLinesFile`; the records, their hash chain and their
aggregation stay in :mod:`gateway.audit`, which re-exports these names. This
module imports nothing of :mod:`gateway.audit` at run time (only its types), so
that re-export makes no import cycle. The JSON-lines file stays the record of
truth; syslog is a copy for the site's SIEM.
"""

from __future__ import annotations

import dataclasses
import os
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import Counter
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.interfaces import IHandshakeListener, IPushProducer, ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

if TYPE_CHECKING:
    from gateway.audit import AuditRecord

__all__ = ["SYSLOG_FACILITY", "SYSLOG_MAX_PENDING", "SyslogTLSSink", "format_rfc5424"]


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
