"""The HTTP client the HTTP-speaking senders share: STOW-RS, webhook and FHIR (issues 17 and 18).

:class:`HttpClient` (a Twisted ``Agent`` with one persistent pool per
destination, TLS from the destination's settings, a timeout per request and a
bounded answer body), :class:`BytesBody` (a small in-memory request body),
:func:`retry_after` (RFC 9110 10.2.3), :func:`server_message` (the server's own
words for a refusal, with credentials redacted), :func:`endpoint` and
:func:`url_secrets` (URL building and the URL's secrets), and
:func:`is_connect_error` (a request that never connected: the destination is
down as a whole). Each sender keeps its own classification of answers.
"""

from __future__ import annotations

import email.utils
import re
from urllib.parse import parse_qsl, urlsplit, urlunsplit
from typing import Any, Final, Mapping, Sequence

from twisted.internet import error as neterror
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IPolicyForHTTPS
from zope.interface import implementer

from gateway.config.schema import DicomWebDestination, DicomWebTLSConfig
from gateway.dicomweb.client_auth import Answer
from gateway.dicomweb.stow_response import MAX_BODY, printable
from gateway.send.classify import _is_tls_error

__all__ = ["BytesBody", "HttpClient", "TimedOut", "endpoint", "is_connect_error", "retry_after", "server_message", "url_secrets"]

#: Characters of the server's message kept in a dead letter's reason.
MESSAGE_CHARS: Final = 200


def retry_after(value: str | None, now: float, cap: float) -> float:
    """Seconds to wait from a ``Retry-After`` header (RFC 9110 10.2.3: delay-seconds or an HTTP-date).

    :param value: the header, ``None`` when absent.
    :param now: the wall-clock time (for an HTTP-date).
    :param cap: the most we wait (the destination's ``retry.max_delay``), a
        hostile or mistaken value never parks the queue for days.
    :returns: 0 when absent or unreadable.
    """
    if not value:
        return 0.0
    value = value.strip()
    if value.isdigit():
        return min(float(value), cap)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return 0.0
    if when is None:
        return 0.0
    return max(0.0, min(when.timestamp() - now, cap))


#: A credential of an HTTP authentication scheme (RFC 9110 11.4), as a server may echo it in an error body.
_CREDENTIAL = re.compile(r"(?i)\b(Bearer|Basic)(\s+)[A-Za-z0-9._~+/=-]+")


def endpoint(base: str, path: str, query: str = "") -> str:
    """``base`` with ``path`` appended to its path, before its query (a function key, ``?code=...``), and ``query`` added.

    A destination's ``url`` may carry a query (the configuration accepts
    one): ``url + "/studies"`` would put the path inside the query.
    """
    parts = urlsplit(base)
    joined = "&".join(q for q in (parts.query, query) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + path, joined, ""))


def url_secrets(*urls: str) -> tuple[bytes, ...]:
    """The query values of ``urls`` (a key may travel there), to keep out of reasons like the credentials."""
    values = []
    for url in urls:
        for _, value in parse_qsl(urlsplit(url).query, keep_blank_values=False):
            values.append(("x " + value).encode("latin-1", "replace"))  # redacted as a credential part too
    return tuple(values)


def server_message(answer: Answer, secrets: Sequence[bytes] = ()) -> str:
    """The server's own words for a refusal, cut and made printable (no more than it wrote).

    Privacy: a server (or a proxy before it) may echo the request's headers
    in its error body; the ``Authorization`` value sent (``secrets``: the whole
    header value and its credential part) and anything that looks like a
    Basic or Bearer credential are replaced by ``[redacted]`` *before* the cut,
    so no secret, nor a prefix of one, reaches a dead letter's reason.
    """
    text = answer.body.decode("utf-8", "replace")
    for secret in secrets:
        value = secret.decode("latin-1")
        for piece in (value, value.partition(" ")[2].strip()):
            if len(piece) >= 4:
                text = text.replace(piece, "[redacted]")
    text = _CREDENTIAL.sub(lambda m: m.group(1) + m.group(2) + "[redacted]", text)
    return printable(text.strip(), MESSAGE_CHARS)


# -- the HTTP client -------------------------------------------------------------------------


class _BoundedBody(Protocol):
    """Collects a response body up to ``limit`` bytes (then stops reading: the rest is not wanted)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        #: Fires with the body; cancelling it stops the reading.
        self.done: Deferred[bytes] = Deferred(lambda _: self._stop())
        self.chunks: list[bytes] = []
        self.size = 0
        self.truncated = False

    def _stop(self) -> None:
        """The reading was cancelled (timeout, abort): stop the transport."""
        if self.transport is not None:
            self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        """Keep up to ``limit`` bytes; past it, stop reading (the rest is not wanted)."""
        if self.truncated:
            return
        room = self.limit - self.size
        if len(data) > room:
            self.chunks.append(data[:room])
            self.size = self.limit
            self.truncated = True
            self.transport.stopProducing()  # type: ignore[union-attr]
            return
        self.chunks.append(data)
        self.size += len(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        """The body ended (or was cut short by us): fire with what was kept; another failure fails."""
        if self.done.called:
            return
        if self.truncated or reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)


@implementer(IPolicyForHTTPS)
class _TLSPolicy:
    """TLS towards the destination: its CA file (or the system's trust), our client certificate if any.

    The server's name is checked (RFC 6125) either way; there is no plain fallback.
    """

    def __init__(self, tls: DicomWebTLSConfig) -> None:
        self.tls = tls

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        """The connection creator for ``hostname`` (IPolicyForHTTPS)."""
        host = hostname.decode("idna")
        if self.tls.ca:
            from gateway.tls import ClientTLSSettings, client_creator

            return client_creator(ClientTLSSettings(self.tls.ca, "", self.tls.certificate, self.tls.private_key), host)
        from twisted.internet.ssl import PrivateCertificate, optionsForClientTLS

        client = None
        if self.tls.certificate:
            with open(self.tls.certificate, "rb") as cert, open(self.tls.private_key, "rb") as key:
                client = PrivateCertificate.loadPEM(key.read() + b"\n" + cert.read())
        return optionsForClientTLS(host, clientCertificate=client)


class TimedOut(Exception):
    """The request took longer than the destination's ``timeout``."""


class HttpClient:
    """One destination's HTTP client: a persistent connection pool, a timeout per request, bounded answers.

    :param reactor: the reactor (TCP, time).
    :param config: the destination.
    """

    def __init__(self, reactor: Any, config: DicomWebDestination) -> None:
        self.reactor = reactor
        self.config = config
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = config.connections
        #: Idle connections are closed after a minute (servers close theirs sooner or later).
        self.pool.cachedConnectionTimeout = 60
        self.agent = Agent(reactor, contextFactory=_TLSPolicy(config.tls), connectTimeout=config.timeout, pool=self.pool)
        self._in_flight: list[list[Deferred[Any]]] = []

    async def request(
        self, method: bytes, url: str, headers: Mapping[bytes, bytes], body: Any = None, limit: int = MAX_BODY
    ) -> Answer:
        """One request; the whole exchange (connect, body, answer) bounded by the destination's timeout.

        :param method: the method.
        :param url: the URL.
        :param headers: request headers.
        :param body: an ``IBodyProducer`` or ``None``.
        :param limit: the most answer body bytes kept.
        :raises TimedOut: the timeout passed.
        """
        timed_out = []
        request = self.agent.request(method, url.encode("utf-8"), Headers({k: [v] for k, v in headers.items()}), body)
        #: What a timeout or an abort cancels: the request, then the reading of its answer.
        stage: list[Deferred[Any]] = [request]

        def expire() -> None:
            timed_out.append(True)
            stage[0].cancel()

        timer = self.reactor.callLater(self.config.timeout, expire)
        self._in_flight.append(stage)
        try:
            response = await request
            reader = _BoundedBody(limit)
            stage[0] = reader.done
            response.deliverBody(reader)
            data = await reader.done
        except Exception:
            if timed_out:
                raise TimedOut(f"no complete answer within {self.config.timeout:g}s") from None
            raise
        finally:
            self._in_flight.remove(stage)
            if timer.active():
                timer.cancel()
        names = {}
        for name, values in response.headers.getAllRawHeaders():
            names[name.decode("latin-1").lower()] = values[-1].decode("latin-1")
        return Answer(response.code, names, data)

    def abort(self) -> None:
        """Cancel every request in flight."""
        for stage in list(self._in_flight):
            stage[0].cancel()

    def connections(self) -> int:
        """Idle persistent connections held, plus requests in flight."""
        return sum(len(c) for c in self.pool._connections.values()) + len(self._in_flight)

    async def close(self) -> None:
        """Close the idle connections."""
        await self.pool.closeCachedConnections()


def is_connect_error(exc: BaseException) -> bool:
    """Whether the request failed before any connection was made (the destination's fault, not the data's)."""
    if isinstance(exc, (neterror.ConnectError, neterror.DNSLookupError, ConnectionRefusedError)):
        return True
    if _is_tls_error(exc):
        return True
    reasons = getattr(exc, "reasons", None)  # ResponseNeverReceived, RequestTransmissionFailed
    return bool(reasons) and all(r.check(neterror.ConnectError) is not None or _is_tls_error(r.value) for r in reasons)


@implementer(IBodyProducer)
class BytesBody:
    """A small request body held in memory (an OAuth2 token request's form)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> "Deferred[None]":
        """Write the bytes at once."""
        consumer.write(self.data)
        return succeed(None)

    def pauseProducing(self) -> None:
        """Written at once: nothing to pause."""

    def resumeProducing(self) -> None:
        """Written at once: nothing to resume."""

    def stopProducing(self) -> None:
        """Written at once: nothing to stop."""
