"""The sender of a DICOMweb destination: STOW-RS requests (PS3.18 10.5; issue 17).

For a slot's batch it:

1. gets each entry's file under the destination's transfer-syntax policy
   (:func:`gateway.codecs.convert.convert_for` on the file runner): a
   conversion the codecs cannot do is a dead letter of kind ``conversion``,
   an unreadable file one of kind ``unreadable``, a missing one a retry;
2. cuts the rest into requests of at most ``batch.max_bytes`` bytes (an
   instance larger than that goes alone);
3. POSTs each to ``{url}/studies`` (before the URL's query, if it has one) as ``multipart/related;
   type="application/dicom"`` streamed from the files with a
   ``Content-Length`` (:class:`gateway.dicomweb.body.MultipartBody`), on a
   persistent connection of the destination's pool;
4. classifies the answer (:func:`classify_answer`): per instance from the
   response module for 200, 202 and 409 (PS3.18 10.5.3), and for the
   request as a whole otherwise:

   ======================  ==============================================================
   HTTP status             outcome
   ======================  ==============================================================
   200, 202, 409           each instance from its own item (Referenced/Failed SOP Sequence);
                           an unreadable body: retry (ambiguous for 200 and 202)
   401, 403                the destination is down (credentials); after one 401 an OAuth2
                           token, or a bearer file that changed, is tried once more first
   408, 429                retry every instance, not before ``Retry-After`` (RFC 9110 10.2.3)
   502, 503, 504           the destination is down (a proxy before a down archive, maintenance:
                           HARDENING decision 9, no attempt counted), not before ``Retry-After``
   413                     halve the request and send each half; one instance: dead letter
   other 4xx               dead letter with the status and the server's message (cut)
   other 5xx, 1xx, 3xx     retry (bounded by ``retry.max_attempts``)
   ======================  ==============================================================

   A request that got no answer is a destination-wide fault when it never
   connected (refused, DNS, TLS), and a retry of each instance otherwise,
   *ambiguous* when the whole body had been sent (the server may have
   stored it; HARDENING F06).

Converted copies are removed after their request. The circuit probe is a
QIDO-RS ``GET {url}/studies?limit=1`` (PS3.18 10.6), or ``probe_url``: any
2xx answer means up.
"""

from __future__ import annotations

import email.utils
import os
import re
import tempfile
import time
from dataclasses import dataclass, replace
from urllib.parse import parse_qsl, urlsplit, urlunsplit
from typing import Any, AsyncGenerator, Final, Mapping, Sequence

from twisted.internet import error as neterror
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IPolicyForHTTPS
from zope.interface import implementer

from gateway import __version__
from gateway.codecs import ConversionError
from gateway.codecs.convert import Converted, convert_for
from gateway.config.schema import DicomWebDestination, DicomWebTLSConfig
from gateway.dicomweb.body import MultipartBody, Part
from gateway.dicomweb.client_auth import Answer, AuthError, Authenticator, authenticator_for
from gateway.dicomweb.stow_response import MAX_BODY, NOT_MENTIONED, ResponseError, classify_instances, parse, printable
from gateway.events import DicomWebAnswered
from gateway.queue.interfaces import Entry
from gateway.queue.outcome import DeadLetter, DeadLetterKind, DestinationDown, Outcome, Retry
from gateway.send import SendContext
from gateway.send.classify import _is_tls_error

__all__ = ["DicomWebSender", "HttpClient", "classify_answer", "endpoint", "retry_after", "url_secrets"]

#: What we ask the server to answer in (PS3.18 8.7.3.5, 10.5.3).
ACCEPT: Final = b"application/dicom+json, application/dicom+xml;q=0.5"
#: HTTP statuses after which every instance is retried, honouring Retry-After.
RETRY_LATER: Final = frozenset({408, 429})
#: HTTP statuses that say the service as a whole is unavailable (RFC 9110 15.6.3-15.6.5):
#: the destination is down, honouring Retry-After; a long outage never spends attempts.
UNAVAILABLE: Final = frozenset({502, 503, 504})
#: HTTP statuses that carry a Store Instances Response to read per instance (PS3.18 10.5.3).
PER_INSTANCE: Final = frozenset({200, 202, 409})
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


def _server_message(answer: Answer, secrets: Sequence[bytes] = ()) -> str:
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


def classify_answer(
    answer: Answer,
    uids: Sequence[str],
    attempts: Sequence[int],
    config: DicomWebDestination,
    now: float,
    secrets: Sequence[bytes] = (),
) -> list[Outcome] | str:
    """Each instance's outcome from the answer to a STOW-RS request (see the module docstring's table).

    401/403 and 413 are the caller's (they need another request): for them
    the string ``"auth"`` or ``"split"`` is returned instead of outcomes;
    502/503/504 are one :class:`DestinationDown` (in a list of one).

    :param answer: the HTTP answer.
    :param uids: the SOP Instance UIDs sent, in order.
    :param attempts: real attempts made for each, this one included.
    :param config: the destination (retry settings).
    :param now: the wall-clock time (an HTTP-date Retry-After).
    :param secrets: the ``Authorization`` value sent, redacted from the server's message.
    """
    code = answer.code
    if code in PER_INSTANCE:
        try:
            response = parse(answer.headers.get("content-type", ""), answer.body)
        except ResponseError as e:
            # Custody: an instance is delivered only when the response lists it (issue 17: "each
            # instance is classified from its own entry ... not from the HTTP status"). A 200
            # without a readable Store Instances Response (PS3.18 10.5.3 says it carries one) may
            # be a proxy's page (an SSO login form answered 200), not the origin server: retried,
            # ambiguous (it may be stored), until retry.max_attempts gives up with this reason.
            # 202 (some stored) or 409 (none): which ones is unknown; 202 means some may be there.
            return [Retry(f"STOW-RS {code} with an unreadable response: {e}", ambiguous=code in (200, 202)) for _ in uids]
        return classify_instances(uids, attempts, response, config.retry)
    if code in (401, 403):
        return "auth"
    if code == 413:
        return "split"
    if code in UNAVAILABLE:
        after = retry_after(answer.headers.get("retry-after"), now, config.retry.max_delay)
        return [DestinationDown(f"STOW-RS HTTP {code}" + (f", retry after {after:g}s" if after else ""), after=after)]
    if code in RETRY_LATER:
        after = retry_after(answer.headers.get("retry-after"), now, config.retry.max_delay)
        return [Retry(f"STOW-RS HTTP {code}" + (f", retry after {after:g}s" if after else ""), after=after) for _ in uids]
    if 400 <= code <= 499:
        message = _server_message(answer, secrets)
        return [
            DeadLetter(f"STOW-RS HTTP {code}" + (f": {message}" if message else ""), DeadLetterKind.REFUSED) for _ in uids
        ]
    return [Retry(f"STOW-RS HTTP {code}") for _ in uids]


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


class _TimedOut(Exception):
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
        :raises _TimedOut: the timeout passed.
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
                raise _TimedOut(f"no complete answer within {self.config.timeout:g}s") from None
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


# -- the sender --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ready:
    """An entry with the file to send."""

    entry: Entry
    file: Converted
    size: int


def _is_connect_error(exc: BaseException) -> bool:
    """Whether the request failed before any connection was made (the destination's fault, not the data's)."""
    if isinstance(exc, (neterror.ConnectError, neterror.DNSLookupError, ConnectionRefusedError)):
        return True
    if _is_tls_error(exc):
        return True
    reasons = getattr(exc, "reasons", None)  # ResponseNeverReceived, RequestTransmissionFailed
    return bool(reasons) and all(r.check(neterror.ConnectError) is not None or _is_tls_error(r.value) for r in reasons)


class DicomWebSender:
    """STOW-RS client of one DICOMweb destination (see the module docstring).

    :param config: the destination.
    :param context: the worker's runner, clock, reactor, scratch folder and observer.
    :param client: the HTTP client (tests inject one); made from ``context.reactor`` by default.
    """

    def __init__(self, config: DicomWebDestination, context: SendContext, client: HttpClient | None = None) -> None:
        self.config = config
        self.context = context
        self.clock = context.clock
        self.slots = config.connections
        self.batch_size = config.batch.max_instances
        #: Generous: the request may be retried once (a 401 with OAuth2) and split (413).
        self.lease_seconds = max(600.0, 4 * config.timeout)
        if client is None:
            if context.reactor is None:
                # DESIGN.md 1.2: the reactor is injected (the service always lends it).
                raise TypeError(f"destination {config.name}: a DICOMweb sender needs the reactor (SendContext.reactor)")
            client = HttpClient(context.reactor, config)
        self.client = client
        #: The OAuth2 token endpoint's client: the destination's own when on the same
        #: host, else one with the system's trust and no client certificate (the
        #: destination's private CA and certificate are not the identity provider's).
        self.token_client = client
        token_host = urlsplit(config.auth.token_url).netloc if config.auth.token_url else ""
        if token_host and token_host != urlsplit(config.url).netloc and context.reactor is not None:
            self.token_client = HttpClient(context.reactor, replace(config, tls=DicomWebTLSConfig(), connections=1))
        self.auth: Authenticator = authenticator_for(config.auth, self._fetch, self.clock, context.file_runner)
        self.wall = time.time

    async def _fetch(self, method: bytes, url: str, headers: Mapping[bytes, bytes], body: bytes) -> Answer:
        """A small request (the OAuth2 token endpoint)."""
        return await self.token_client.request(method, url, headers, _BytesBody(body) if body else None, 65536)

    # -- sending -------------------------------------------------------------------------------

    async def send(self, slot: int, batch: Sequence[Entry]) -> AsyncGenerator[tuple[Entry, Outcome], None]:
        """Convert what the policy asks, then POST the batch in requests of at most ``max_bytes``."""
        ready: list[_Ready] = []
        try:
            for entry in batch:
                prepared = await self._prepare(entry)
                if isinstance(prepared, _Ready):
                    ready.append(prepared)
                else:
                    yield entry, prepared
            for group in self._groups(ready):
                for entry, outcome in await self._post(group, auth_retried=False):
                    yield entry, outcome
                    if isinstance(outcome, DestinationDown):
                        return
        finally:
            for item in ready:
                if item.file.temporary:
                    await self.context.file_runner.run(_remove, item.file.path)

    async def _prepare(self, entry: Entry) -> _Ready | Outcome:
        """The file to send for ``entry`` under the policy, or the outcome that replaces sending it."""
        scratch = self.context.scratch_dir or tempfile.gettempdir()
        try:
            converted: Converted = await self.context.file_runner.run(convert_for, self.config.policy, entry.path, scratch)
            size: int = await self.context.file_runner.run(os.path.getsize, converted.path)
        except ConversionError as e:
            return DeadLetter(f"cannot convert to {self.config.policy.target}: {e}", DeadLetterKind.CONVERSION)
        except FileNotFoundError as e:
            return Retry(f"spool file missing: {e}")
        except Exception as e:  # pydicom's InvalidDicomError, a truncated header...
            return DeadLetter(f"unreadable Part 10 file: {type(e).__name__}: {e}", DeadLetterKind.UNREADABLE)
        return _Ready(entry, converted, size)

    def _groups(self, ready: Sequence[_Ready]) -> list[list[_Ready]]:
        """Requests of at most ``batch.max_bytes`` (an instance larger than that alone) and ``max_instances``.

        An instance the last response did not mention goes alone (issue 17: the
        server said nothing of it in a batch; alone, its answer is its own).
        """
        groups: list[list[_Ready]] = [[item] for item in ready if item.entry.last_error == NOT_MENTIONED]
        current: list[_Ready] = []
        size = 0
        for item in ready:
            if item.entry.last_error == NOT_MENTIONED:
                continue
            if current and (size + item.size > self.config.batch.max_bytes or len(current) >= self.batch_size):
                groups.append(current)
                current, size = [], 0
            current.append(item)
            size += item.size
        if current:
            groups.append(current)
        return groups

    async def _post(self, group: Sequence[_Ready], auth_retried: bool) -> list[tuple[Entry, Outcome]]:
        """One Store Instances request for ``group``, and whatever requests its answer calls for (a split, a new token)."""
        entries = [item.entry for item in group]
        try:
            authorization = await self.auth.header()
        except AuthError as e:
            return [(entries[0], DestinationDown(f"credentials: {e}"))]
        body = MultipartBody([Part(item.file.path, item.size) for item in group], self.context.file_runner)
        headers = {
            b"Content-Type": body.content_type(),
            b"Accept": ACCEPT,
            b"User-Agent": f"dicom-gateway/{__version__}".encode("ascii"),
        }
        if authorization is not None:
            headers[b"Authorization"] = authorization
        started = self.clock.seconds()
        try:
            answer = await self.client.request(b"POST", endpoint(self.config.url, "/studies"), headers, body)
        except Exception as e:
            self._observe(0, len(group), body.written, started)
            return self._no_answer(entries, e, sent_all=body.written == body.length, written=body.written)
        self._observe(answer.code, len(group), body.written, started)
        if answer.code not in (401, 403) and answer.code not in UNAVAILABLE:
            # The server answered: the circuit counts a success (a refusal of our
            # credentials is a fault of the destination as a whole, below).
            self.context.reachable()
        outcomes = classify_answer(
            answer,
            [item.file.sop_instance_uid for item in group],
            [item.entry.attempts + 1 for item in group],
            self.config,
            self.wall(),
            secrets=self._secrets(authorization),
        )
        if outcomes == "auth":
            # PS3.18 / RFC 9110 15.5.2: the credentials were refused. One more
            # try when new ones may be had (an OAuth2 token expired early, a
            # bearer file rotated), else the destination is down as a whole:
            # a credentials fault is not the instances' (no dead letter).
            if answer.code == 401 and not auth_retried and self.auth.invalidate():
                return await self._post(group, auth_retried=True)
            return [(entries[0], DestinationDown(f"STOW-RS HTTP {answer.code}: credentials refused"))]
        if outcomes == "split":
            if len(group) == 1:
                message = _server_message(answer, self._secrets(authorization))
                reason = "STOW-RS HTTP 413: the instance alone is too large for the server" + (f" ({message})" if message else "")
                return [(entries[0], DeadLetter(reason, DeadLetterKind.REFUSED))]
            # RFC 9110 15.5.14: the request is too large; halve it until it fits.
            half = len(group) // 2
            first = await self._post(group[:half], auth_retried)
            if first and isinstance(first[-1][1], DestinationDown):
                return first
            return first + await self._post(group[half:], auth_retried)
        assert not isinstance(outcomes, str)
        if len(outcomes) == 1 and isinstance(outcomes[0], DestinationDown):
            return [(entries[0], outcomes[0])]
        return list(zip(entries, outcomes))

    def _secrets(self, authorization: bytes | None) -> tuple[bytes, ...]:
        """What the server's words must not carry into a reason: the Authorization sent, the URLs' query values."""
        sent = (authorization,) if authorization is not None else ()
        return sent + url_secrets(self.config.url, self.config.probe_url)

    def _no_answer(
        self, entries: Sequence[Entry], exc: BaseException, sent_all: bool, written: int
    ) -> list[tuple[Entry, Outcome]]:
        """The request got no answer: never connected (destination down) or cut (retry, ambiguous once all was sent)."""
        text = f"{type(exc).__name__}: {exc}"
        if _is_connect_error(exc) or (isinstance(exc, _TimedOut) and not written):
            # Never connected, or timed out before a byte of the body went out (a
            # black-holed address, a server that never accepts): the destination's
            # fault as a whole, so a long outage never spends the instances' attempts.
            from gateway.tls import describe_tls_failure
            from gateway.tlslabels import destination_failure_label

            # A TLS failure is described as on DICOM destinations (HARDENING F20):
            # the reason says why, and its label travels as data.
            causes = [exc, *(r.value for r in getattr(exc, "reasons", None) or ())]
            described = next((d for d in map(describe_tls_failure, causes) if d), None)
            if described is not None:
                text = described
            return [(entries[0], DestinationDown(text, tls_failure=destination_failure_label(text)))]
        return [(entry, Retry(f"STOW-RS request failed: {text}", ambiguous=sent_all)) for entry in entries]

    def _observe(self, code: int, instances: int, sent: int, started: float) -> None:
        """Tell the observer a request ended (the ``dicomweb_*`` metrics)."""
        self.context.observe(DicomWebAnswered(self.config.name, code, instances, sent, self.clock.seconds() - started))

    # -- the rest of the Sender interface ------------------------------------------------

    async def probe(self) -> DestinationDown | None:
        """QIDO-RS ``GET {url}/studies?limit=1`` (PS3.18 10.6) or ``probe_url``: any 2xx is up."""
        url = self.config.probe_url or endpoint(self.config.url, "/studies", "limit=1")
        try:
            authorization = await self.auth.header()
        except AuthError as e:
            return DestinationDown(f"credentials: {e}")
        headers = {b"Accept": b"application/dicom+json", b"User-Agent": f"dicom-gateway/{__version__}".encode("ascii")}
        if authorization is not None:
            headers[b"Authorization"] = authorization
        try:
            answer = await self.client.request(b"GET", url, headers, None, 65536)
        except Exception as e:
            return DestinationDown(f"probe: {type(e).__name__}: {e}")
        if answer.code == 401:
            self.auth.invalidate()
        if 200 <= answer.code <= 299:
            return None
        return DestinationDown(f"probe: HTTP {answer.code}")

    async def idle(self, slot: int, now: float) -> float | None:
        """The pool closes idle connections itself."""
        return None

    async def close(self, slot: int) -> None:
        """The last slot to stop closes the pools' idle connections."""
        if slot == self.slots - 1:
            await self.client.close()
            if self.token_client is not self.client:
                await self.token_client.close()

    def abort(self) -> None:
        """Cancel the requests in flight (their instances are retried, ambiguous once their body was sent)."""
        self.client.abort()

    def connections(self) -> int:
        """Connections held (idle in the pool or carrying a request)."""
        return self.client.connections()


def _remove(path: str) -> None:
    """Remove a converted copy (gone already is fine)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@implementer(IBodyProducer)
class _BytesBody:
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
