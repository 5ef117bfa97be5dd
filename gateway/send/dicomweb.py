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

import os
import tempfile
import time
from dataclasses import dataclass, replace
from urllib.parse import urlsplit
from typing import AsyncGenerator, Final, Mapping, Sequence

from gateway import __version__
from gateway.codecs import ConversionError
from gateway.codecs.convert import Converted, convert_for
from gateway.config.schema import DicomWebDestination, DicomWebTLSConfig
from gateway.dicomweb.body import MultipartBody, Part
from gateway.dicomweb.client_auth import Answer, AuthError, Authenticator, authenticator_for
from gateway.dicomweb.stow_response import NOT_MENTIONED, ResponseError, classify_instances, parse
from gateway.events import DicomWebAnswered
from gateway.queue.interfaces import Entry
from gateway.queue.outcome import DeadLetter, DeadLetterKind, DestinationDown, Outcome, Retry
from gateway.send import SendContext
from gateway.send.http import BytesBody, HttpClient, TimedOut, endpoint, is_connect_error, retry_after, server_message, url_secrets

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
        message = server_message(answer, secrets)
        return [
            DeadLetter(f"STOW-RS HTTP {code}" + (f": {message}" if message else ""), DeadLetterKind.REFUSED) for _ in uids
        ]
    return [Retry(f"STOW-RS HTTP {code}") for _ in uids]


# -- the sender --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ready:
    """An entry with the file to send."""

    entry: Entry
    file: Converted
    size: int


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
        return await self.token_client.request(method, url, headers, BytesBody(body) if body else None, 65536)

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
                message = server_message(answer, self._secrets(authorization))
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
        if is_connect_error(exc) or (isinstance(exc, TimedOut) and not written):
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

