"""The sender of a webhook sink: one signed HTTP POST per study notification (issue 18).

Each entry of a webhook sink is a notification record: its file (``entry.path``,
in the spool) holds :func:`gateway.notify.document.to_json` of the
notification. For each entry, strictly in entry order (``slots = 1``, so the
receiver sees a study's ``complete`` before its ``amended``), the sender:

1. reads the file on the file runner and parses it
   (:func:`~gateway.notify.document.from_json`); unreadable: a dead letter of
   kind ``unreadable``, missing: a retry;
2. removes the patient's fields unless the sink's ``phi`` is true
   (:meth:`~gateway.notify.document.StudyNotification.without_phi`);
3. POSTs :func:`gateway.notify.webhook.body` with the signature, the
   idempotency key and the event (:func:`gateway.notify.webhook.headers`;
   the secret re-read from ``secret_file`` at each batch, so a rotated key is
   used at once), and the authentication of ``auth`` if any;
4. classifies the answer (:func:`classify_webhook`):

   ===================  ==============================================================
   HTTP status          outcome
   ===================  ==============================================================
   2xx                  delivered
   408, 429, 500, 5xx   retry; 429 not before ``Retry-After`` (RFC 9110 10.2.3)
   502, 503, 504        the sink is down (circuit, no attempt spent), not before ``Retry-After``
   other 4xx            dead letter (kind ``refused``) with the status and the body's start
   1xx, 3xx             retry (bounded by ``retry.max_attempts``)
   ===================  ==============================================================

   A request that never connected (refused, DNS, TLS) is the sink's fault as
   a whole (:class:`~gateway.queue.outcome.DestinationDown`: the circuit
   takes over and no attempt is spent, HARDENING decision 9); one cut after
   it was sent is a retry, *ambiguous* (the receiver may have it: the
   idempotency key lets it drop the repeat).

The circuit probe is a ``HEAD`` of the URL: any answer at all (even 404 or
405) means the receiver is there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, AsyncGenerator, Final, Sequence, cast

from gateway import __version__
from gateway.config.schema import DicomWebTLSConfig, WebhookSink
from gateway.dicomweb.client_auth import Answer, AuthError, Authenticator, authenticator_for
from gateway.notify.document import StudyNotification, from_json
from gateway.notify.webhook import body as webhook_body
from gateway.notify.webhook import headers as webhook_headers
from gateway.queue.interfaces import Entry
from gateway.queue.outcome import DeadLetter, DeadLetterKind, Delivered, DestinationDown, Outcome, Retry
from gateway.send import SendContext
from gateway.send.http import HttpClient, BytesBody, is_connect_error, server_message, retry_after

__all__ = ["WebhookSender", "classify_webhook"]

#: Statuses retried, whatever the body says (RFC 9110 15.5.9, RFC 6585 4).
RETRY_STATUSES: Final = frozenset({408, 429})
#: Statuses whose Retry-After is honoured (RFC 9110 10.2.3: 429 and 503 carry it).
RETRY_AFTER_STATUSES: Final = frozenset({429, 503})
#: The receiver as a whole is unavailable (RFC 9110 15.6.3-15.6.5: a gateway or proxy before it
#: answers): the sink is down, as for STOW-RS and FHIR, so an outage behind a proxy spends no
#: attempts and never dead-letters a backlog of notifications (HARDENING decision 9). The issue
#: says "the rest retry": the notification is still retried, by the circuit's probe instead.
UNAVAILABLE: Final = frozenset({502, 503, 504})
#: Answer bytes kept (a dead letter keeps the start of it).
ANSWER_LIMIT: Final = 65536


def classify_webhook(answer: Answer, sink: WebhookSink, now: float, secrets: Sequence[bytes] = ()) -> Outcome:
    """The outcome of one POST from its answer (the module docstring's table).

    :param answer: the HTTP answer.
    :param sink: the sink (retry settings cap a Retry-After).
    :param now: the wall-clock time (an HTTP-date Retry-After).
    :param secrets: the ``Authorization`` value sent, kept out of a dead letter's reason.
    """
    code = answer.code
    if 200 <= code <= 299:
        return Delivered(code)
    if code in UNAVAILABLE:
        after = retry_after(answer.headers.get("retry-after"), now, sink.retry.max_delay)
        return DestinationDown(f"webhook HTTP {code}" + (f", retry after {after:g}s" if after else ""), after=after)
    if code in RETRY_STATUSES or 500 <= code <= 599:
        after = 0.0
        if code in RETRY_AFTER_STATUSES:
            after = retry_after(answer.headers.get("retry-after"), now, sink.retry.max_delay)
        return Retry(f"webhook HTTP {code}" + (f", retry after {after:g}s" if after else ""), after=after)
    if 400 <= code <= 499:
        message = server_message(answer, secrets)
        return DeadLetter(f"webhook HTTP {code}" + (f": {message}" if message else ""), DeadLetterKind.REFUSED)
    return Retry(f"webhook HTTP {code}")


@dataclass(frozen=True)
class _ClientSettings:
    """What :class:`~gateway.send.http.HttpClient` reads of its configuration: one connection, the sink's timeout."""

    timeout: float
    tls: DicomWebTLSConfig = field(default_factory=DicomWebTLSConfig)
    connections: int = 1


def _read(path: str) -> bytes:
    """A file's bytes (on the file runner)."""
    with open(path, "rb") as f:
        return f.read()


class WebhookSender:
    """The HTTP client of one webhook sink (see the module docstring).

    :param config: the sink.
    :param context: the worker's runner, clock and reactor.
    :param client: the HTTP client (tests inject one); made from ``context.reactor`` by default.
    """

    def __init__(self, config: WebhookSink, context: SendContext, client: Any = None) -> None:
        self.config = config
        self.context = context
        self.clock = context.clock
        #: One slot, small batches: the receiver sees the notifications in entry order.
        self.slots = 1
        self.batch_size = 10
        self.lease_seconds = max(600.0, 4 * config.timeout * self.batch_size)
        if client is None:
            if context.reactor is None:
                raise TypeError(f"sink {config.name}: a webhook sender needs the reactor (SendContext.reactor)")
            client = HttpClient(context.reactor, cast(Any, _ClientSettings(config.timeout, config.tls)))
        self.client = client
        self.auth: Authenticator = authenticator_for(config.auth, self._fetch, self.clock, context.file_runner)
        self.wall = time.time

    async def _fetch(self, method: bytes, url: str, headers: Any, data: bytes) -> Answer:
        """A small request (an OAuth2 token endpoint)."""
        return cast(Answer, await self.client.request(method, url, headers, BytesBody(data) if data else None, 65536))

    async def send(self, slot: int, batch: Sequence[Entry]) -> AsyncGenerator[tuple[Entry, Outcome], None]:
        """POST each entry's notification in order; stop at the first sign the sink is down."""
        try:
            secret = await self.context.file_runner.run(_read, self.config.secret_file)
        except OSError as e:
            # The key is the sink's (a configuration fault), not the notifications': nothing is spent.
            yield batch[0], DestinationDown(f"webhook secret_file unreadable: {type(e).__name__}")
            return
        secret = secret.strip()
        for entry in batch:
            outcome = await self._one(entry, secret)
            yield entry, outcome
            if isinstance(outcome, DestinationDown):
                return

    async def _one(self, entry: Entry, secret: bytes) -> Outcome:
        """Read, shape, sign and POST one notification; its outcome."""
        try:
            data = await self.context.file_runner.run(_read, entry.path)
        except FileNotFoundError as e:
            return Retry(f"notification file missing: {e}")
        try:
            notification: StudyNotification = from_json(data)
        except (ValueError, TypeError, KeyError) as e:
            return DeadLetter(f"unreadable notification document: {type(e).__name__}: {e}", DeadLetterKind.UNREADABLE)
        if not self.config.phi:
            notification = notification.without_phi()
        payload = webhook_body(notification, self.config.phi)
        headers = webhook_headers(notification, secret, payload)
        headers[b"User-Agent"] = f"dicom-gateway/{__version__}".encode("ascii")
        try:
            authorization = await self.auth.header()
        except AuthError as e:
            return DestinationDown(f"credentials: {e}")
        if authorization is not None:
            headers[b"Authorization"] = authorization
        request_body = BytesBody(payload)
        try:
            answer = await self.client.request(b"POST", self.config.url, headers, request_body, ANSWER_LIMIT)
        except Exception as e:
            text = f"{type(e).__name__}: {e}"
            if is_connect_error(e):
                return DestinationDown(f"webhook: {text}")
            # Cut or timed out after the request went out: the receiver may have it.
            return Retry(f"webhook request failed: {text}", ambiguous=True)
        if answer.code in (401, 403):
            self.auth.invalidate()
        if answer.code not in UNAVAILABLE:
            # The receiver answered (not a proxy before a down receiver): the circuit counts a success.
            self.context.reachable()
        sent = (authorization,) if authorization is not None else ()
        return classify_webhook(answer, self.config, self.wall(), sent)

    async def probe(self) -> DestinationDown | None:
        """A ``HEAD`` of the URL: any answer means the receiver listens."""
        try:
            await self.client.request(b"HEAD", self.config.url, {b"User-Agent": b"dicom-gateway"}, None, 1024)
        except Exception as e:
            return DestinationDown(f"probe: {type(e).__name__}: {e}")
        return None

    async def idle(self, slot: int, now: float) -> float | None:
        """The pool closes idle connections itself."""
        return None

    async def close(self, slot: int) -> None:
        """Close the pool's idle connection."""
        await self.client.close()

    def abort(self) -> None:
        """Cancel the request in flight (retried, ambiguous)."""
        self.client.abort()

    def connections(self) -> int:
        """Connections held (idle in the pool or carrying a request)."""
        return int(self.client.connections())
