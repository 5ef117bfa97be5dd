"""The sender of a FHIR sink: one ImagingStudy per notification, by conditional update (issue 18).

Each entry of a FHIR sink is a study notification (its file is
:func:`gateway.notify.document.to_json`). For each, in entry order:

1. the file is read on the file runner and parsed (unreadable: a dead letter
   of kind ``unreadable``; missing: a retry); without ``phi`` the patient
   fields are dropped (:meth:`~gateway.notify.document.StudyNotification.without_phi`);
2. with ``subject: search`` the Patient is looked up,
   ``GET {url}/Patient?identifier=<patient_system>|<PatientID>`` (FHIR R4
   search.html#token): one match is the reference, none a retry (it may be
   registered later; ``retry.max_attempts`` bounds it), several a dead letter;
3. the resource (:func:`gateway.notify.fhir.imaging_study`) is PUT to
   ``{url}/ImagingStudy?identifier=urn:dicom:uid|urn:oid:<uid>`` as
   ``application/fhir+json`` (FHIR R4 http.html#cond-update, "Conditional update": no match
   creates, one match updates, several answer 412; no ``If-Match``, the
   latest notification wins);
4. the answer is classified (:func:`classify`):

   ======================  ==============================================================
   HTTP status             outcome
   ======================  ==============================================================
   200, 201                delivered (updated, created)
   412                     dead letter: several ImagingStudy resources carry the identifier
   401, 403                the destination is down (credentials); after one 401 an OAuth2
                           token, or a bearer file that changed, is tried once more first
   502, 503, 504           the destination is down, not before ``Retry-After`` (a proxy before
                           a down server, maintenance: HARDENING decision 9, so a weekend
                           outage spends no attempts and dead-letters nothing)
   408, 429, other 5xx     retry, not before ``Retry-After`` (RFC 9110 10.2.3)
   other 4xx               dead letter with the OperationOutcome's text (secrets and the
                           patient's identifiers redacted)
   anything else           retry (bounded by ``retry.max_attempts``)
   ======================  ==============================================================

   A request that never connected is the destination down; one cut short is
   retried (ambiguous: the server may have applied it; a conditional update
   applied twice leaves the same resource).

Order: the update replaces the whole resource, so the last PUT wins. A
notification retried after a later one of the same study was delivered (a
``complete`` that met a 500, then its ``amended``) would put the older
counts back; the sender remembers the latest notification it delivered per
study (the last :data:`REMEMBERED` studies, in memory) and reports one older
by both ``sequence`` and ``completed_at`` delivered, with a warning, without
sending it.

The circuit probe is ``GET {url}/metadata`` (FHIR R4 http.html#capabilities):
any 2xx is up. One slot, so the receiver sees the notifications in order.
Nothing here logs; reasons carry no patient data.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import replace
from typing import AsyncGenerator, Final, Mapping, Sequence
from urllib.parse import urlsplit

from gateway import __version__
from gateway.config.schema import DicomWebDestination, DicomWebTLSConfig, FhirSink
from gateway.dicomweb.client_auth import Answer, AuthError, Authenticator, authenticator_for
from gateway.notify.document import StudyNotification, from_json
from gateway.notify.fhir import FhirBuildError, conditional_url, imaging_study, outcome_text, patient_reference, patient_search_url
from gateway.queue.interfaces import Entry
from gateway.queue.outcome import DeadLetter, DeadLetterKind, Delivered, DestinationDown, Outcome, Retry
from gateway.send import SendContext
from gateway.send.http import (
    HttpClient,
    BytesBody,
    is_connect_error,
    server_message,
    TimedOut,
    endpoint,
    retry_after,
    url_secrets,
)

__all__ = ["FhirSender", "classify", "FHIR_JSON"]

#: The FHIR JSON media type (FHIR R4 http.html#mime-type, "Content Types and encodings").
FHIR_JSON: Final = b"application/fhir+json"
#: HTTP statuses retried, honouring Retry-After (with every 5xx but UNAVAILABLE).
RETRY_LATER: Final = frozenset({408, 429})
#: HTTP statuses that say the service as a whole is unavailable (RFC 9110 15.6.3-15.6.5): the
#: destination is down (as for STOW-RS, issue 17), so a long outage spends no attempts.
UNAVAILABLE: Final = frozenset({502, 503, 504})
#: Entries leased at once (sent one after the other, in order).
BATCH_SIZE: Final = 10
#: Bytes of an answer kept (an OperationOutcome, a Patient Bundle).
ANSWER_LIMIT: Final = 256 * 1024
#: Studies whose last delivered ``sequence`` the sender remembers (see the module docstring).
REMEMBERED: Final = 4096


def _client_config(sink: FhirSink) -> DicomWebDestination:
    """The sink as the HTTP client's configuration (timeout, TLS, one connection)."""
    return DicomWebDestination(name=sink.name, url=sink.url, auth=sink.auth, timeout=sink.timeout, connections=1, tls=sink.tls)


def classify(answer: Answer, what: str, sink: FhirSink, now: float, secrets: Sequence[bytes] = ()) -> Outcome | str:
    """The outcome of one answer to the conditional update (or the Patient search): the module docstring's table.

    :param answer: the answer.
    :param what: the request in words, for the reason (``"FHIR PUT ImagingStudy"``).
    :param sink: the sink (``retry.max_delay`` caps ``Retry-After``).
    :param now: the wall-clock time (an HTTP-date ``Retry-After``).
    :param secrets: what the server's words must not carry (the ``Authorization`` sent, patient identifiers).
    :returns: the outcome, or ``"auth"`` for 401/403 (the caller may try new credentials first).
    """
    code = answer.code
    if code in (200, 201):
        return Delivered(0)
    if code in (401, 403):
        return "auth"
    if code == 412:
        # FHIR R4 http.html#cond-update: "Multiple matches: The server returns a 412 Precondition Failed error".
        return DeadLetter(f"{what}: HTTP 412, several resources match the study's identifier", DeadLetterKind.REFUSED)
    if code in UNAVAILABLE:
        after = retry_after(answer.headers.get("retry-after"), now, sink.retry.max_delay)
        return DestinationDown(f"{what}: HTTP {code}" + (f", retry after {after:g}s" if after else ""), after=after)
    if code in RETRY_LATER or 500 <= code <= 599:
        after = retry_after(answer.headers.get("retry-after"), now, sink.retry.max_delay)
        return Retry(f"{what}: HTTP {code}" + (f", retry after {after:g}s" if after else ""), after=after)
    if 400 <= code <= 499:
        text = outcome_text(answer.body)
        message = server_message(Answer(code, answer.headers, text.encode("utf-8")), secrets)
        return DeadLetter(f"{what}: HTTP {code}" + (f": {message}" if message else ""), DeadLetterKind.REFUSED)
    return Retry(f"{what}: HTTP {code}")


class FhirSender:
    """The conditional-update client of one FHIR sink (see the module docstring).

    :param config: the sink.
    :param context: the worker's runner, clock and reactor.
    :param client: the HTTP client (tests may inject one); made from ``context.reactor`` by default.
    :raises ValueError: ``subject: search`` without ``phi`` (searching sends the Patient ID).
    """

    def __init__(self, config: FhirSink, context: SendContext, client: HttpClient | None = None) -> None:
        if config.subject == "search" and not config.phi:
            # The search sends the Patient ID to the FHIR server: only a sink allowed PHI may.
            raise ValueError(
                f"destination {config.name}: fhir.subject 'search' looks the Patient up by Patient ID, "
                "which needs 'phi: true' (or use subject 'identifier')"
            )
        if config.subject not in ("search", "identifier"):
            raise ValueError(f"destination {config.name}: fhir.subject must be 'identifier' or 'search', not {config.subject!r}")
        self.config = config
        self.context = context
        self.clock = context.clock
        self.slots = 1
        self.batch_size = BATCH_SIZE
        #: Up to two requests per entry (search, update), each within the timeout, and one auth retry.
        self.lease_seconds = max(600.0, 4 * BATCH_SIZE * config.timeout)
        http = _client_config(config)
        if client is None:
            if context.reactor is None:
                # DESIGN.md 1.2: the reactor is injected (the service always lends it).
                raise TypeError(f"destination {config.name}: a FHIR sender needs the reactor (SendContext.reactor)")
            client = HttpClient(context.reactor, http)
        self.client = client
        #: The OAuth2 token endpoint's client: the sink's own when on the same host, else
        #: one with the system's trust (the sink's private CA is not the identity provider's).
        self.token_client = client
        token_host = urlsplit(config.auth.token_url).netloc if config.auth.token_url else ""
        if token_host and token_host != urlsplit(config.url).netloc and context.reactor is not None:
            self.token_client = HttpClient(context.reactor, replace(http, tls=DicomWebTLSConfig()))
        self.auth: Authenticator = authenticator_for(config.auth, self._fetch, self.clock, context.file_runner)
        self.wall = time.time
        #: Study Instance UID -> (sequence, completed_at) of the latest notification delivered,
        #: least recently delivered first (bounded by REMEMBERED).
        self.delivered: OrderedDict[str, tuple[int, float]] = OrderedDict()

    async def _fetch(self, method: bytes, url: str, headers: Mapping[bytes, bytes], body: bytes) -> Answer:
        """A small request (the OAuth2 token endpoint)."""
        return await self.token_client.request(method, url, headers, BytesBody(body) if body else None, 65536)

    # -- sending -------------------------------------------------------------------------------

    async def send(self, slot: int, batch: Sequence[Entry]) -> AsyncGenerator[tuple[Entry, Outcome], None]:
        """Each entry in order; stop after the destination is found down."""
        for entry in batch:
            outcome = await self._one(entry)
            yield entry, outcome
            if isinstance(outcome, DestinationDown):
                return

    async def _one(self, entry: Entry) -> Outcome:
        """Read, shape and PUT one notification."""
        notification = await self._read(entry)
        if not isinstance(notification, StudyNotification):
            return notification
        study = notification.study_instance_uid
        newest = self.delivered.get(study)
        if newest is not None and notification.sequence < newest[0] and notification.completed_at <= newest[1]:
            # Older by sequence and by completion time (a study purged by retention and
            # received again starts at sequence 1, later: that one is sent).
            return Delivered(0, f"superseded: notification {newest[0]} of the study was delivered already")
        if not self.config.phi:
            notification = notification.without_phi()
        secrets = tuple(
            ("x " + value).encode("utf-8")  # redacted as a credential part (see server_message)
            for value in (notification.patient_id, notification.patient_name)
            if value
        )
        patient = None
        if self.config.subject == "search":
            found = await self._search(notification, secrets)
            if not isinstance(found, str):
                return found
            patient = found
        resource = imaging_study(notification, self.config, patient)
        body = json.dumps(resource, separators=(",", ":")).encode("utf-8")
        headers = {b"Content-Type": FHIR_JSON + b"; charset=utf-8"}
        answer = await self._request(b"PUT", conditional_url(self.config.url, notification.study_instance_uid), headers, body)
        if not isinstance(answer, tuple):
            return answer
        answer, authorization = answer
        outcome = classify(answer, "FHIR PUT ImagingStudy", self.config, self.wall(), self._secrets(authorization) + secrets)
        assert not isinstance(outcome, str)
        if isinstance(outcome, Delivered):
            self._remember(study, notification.sequence, notification.completed_at)
        return outcome

    def _remember(self, study: str, sequence: int, completed_at: float) -> None:
        """Notification ``sequence`` of ``study``, completed at ``completed_at``, was delivered (the newest studies kept)."""
        known = self.delivered.get(study)
        if known is None or completed_at >= known[1]:
            self.delivered[study] = (sequence, completed_at)
        self.delivered.move_to_end(study)
        while len(self.delivered) > REMEMBERED:
            self.delivered.popitem(last=False)

    async def _read(self, entry: Entry) -> StudyNotification | Outcome:
        """The notification in the entry's file, or the outcome that replaces sending it."""
        try:
            data: bytes = await self.context.file_runner.run(_read_file, entry.path)
        except FileNotFoundError as e:
            return Retry(f"spool file missing: {e}")
        except OSError as e:
            return Retry(f"spool file unreadable: {type(e).__name__}: {e.strerror or e}")
        try:
            return from_json(data)
        except (ValueError, TypeError, UnicodeDecodeError) as e:
            return DeadLetter(f"unreadable notification document: {type(e).__name__}: {e}"[:300], DeadLetterKind.UNREADABLE)

    async def _search(self, notification: StudyNotification, secrets: Sequence[bytes]) -> str | Outcome:
        """``Patient/<id>`` of the study's patient (FHIR R4 search.html#token), or the outcome instead."""
        try:
            url = patient_search_url(self.config.url, self.config, notification)
        except FhirBuildError as e:
            return DeadLetter(f"FHIR subject search: {e}", DeadLetterKind.REFUSED)
        answer = await self._request(b"GET", url, {}, None)
        if not isinstance(answer, tuple):
            return answer
        answer, authorization = answer
        if answer.code != 200:
            outcome = classify(answer, "FHIR GET Patient", self.config, self.wall(), self._secrets(authorization) + tuple(secrets))
            assert not isinstance(outcome, str)
            if isinstance(outcome, Delivered):  # a 201 to a search: not an answer to read
                return Retry(f"FHIR GET Patient: HTTP {answer.code}")
            return outcome
        found, problem = patient_reference(answer.body)
        if problem:
            return Retry(f"FHIR GET Patient: {problem}")
        if not found:
            return Retry("FHIR GET Patient: no Patient has the study's Patient ID (yet)")
        if len(set(found)) > 1:
            return DeadLetter(f"FHIR GET Patient: {len(set(found))} Patients have the study's Patient ID", DeadLetterKind.REFUSED)
        return found[0]

    async def _request(
        self, method: bytes, url: str, headers: Mapping[bytes, bytes], body: bytes | None,
        auth_retried: bool = False, probe: bool = False,
    ) -> tuple[Answer, bytes | None] | Outcome:
        """One request with the sink's credentials: ``(answer, Authorization sent)``, or the outcome of no usable answer.

        401/403 are handled here (RFC 9110 15.5.2): one more try when new
        credentials may be had, else the destination is down as a whole (a
        credentials fault is not the notification's: no dead letter).
        """
        try:
            authorization = await self.auth.header()
        except AuthError as e:
            return DestinationDown(f"credentials: {e}")
        sent = {
            b"Accept": FHIR_JSON,
            b"User-Agent": f"dicom-gateway/{__version__}".encode("ascii"),
            **headers,
        }
        if authorization is not None:
            sent[b"Authorization"] = authorization
        try:
            answer = await self.client.request(method, url, sent, BytesBody(body) if body is not None else None, ANSWER_LIMIT)
        except Exception as e:
            return self._no_answer(method, e)
        if answer.code in (401, 403):
            if answer.code == 401 and not auth_retried and self.auth.invalidate():
                return await self._request(method, url, headers, body, auth_retried=True, probe=probe)
            return DestinationDown(f"FHIR {method.decode()} HTTP {answer.code}: credentials refused")
        if not probe and answer.code not in UNAVAILABLE:
            # The server answered (not a proxy before a down server): the circuit counts a success.
            self.context.reachable()
        return answer, authorization

    def _no_answer(self, method: bytes, exc: BaseException) -> Outcome:
        """No answer: never connected (destination down) or cut / timed out (retry, ambiguous)."""
        text = f"{type(exc).__name__}: {exc}"
        if is_connect_error(exc):
            from gateway.tls import describe_tls_failure
            from gateway.tlslabels import destination_failure_label

            causes = [exc, *(r.value for r in getattr(exc, "reasons", None) or ())]
            described = next((d for d in map(describe_tls_failure, causes) if d), None)
            if described is not None:
                text = described
            return DestinationDown(text, tls_failure=destination_failure_label(text))
        if isinstance(exc, TimedOut):
            return Retry(f"FHIR {method.decode()}: {exc}", ambiguous=method == b"PUT")
        return Retry(f"FHIR {method.decode()} failed: {text}", ambiguous=method == b"PUT")

    def _secrets(self, authorization: bytes | None) -> tuple[bytes, ...]:
        """What the server's words must not carry into a reason: the Authorization sent, the URL's query values."""
        sent = (authorization,) if authorization is not None else ()
        return sent + url_secrets(self.config.url)

    # -- the rest of the Sender interface ------------------------------------------------

    async def probe(self) -> DestinationDown | None:
        """``GET {url}/metadata`` (FHIR R4 http.html#capabilities, the CapabilityStatement): any 2xx is up."""
        result = await self._request(b"GET", endpoint(self.config.url, "/metadata"), {}, None, probe=True)
        if isinstance(result, DestinationDown):
            return replace(result, reason="probe: " + result.reason)
        if not isinstance(result, tuple):
            return DestinationDown(f"probe: {getattr(result, 'reason', result)}")
        answer, _ = result
        if 200 <= answer.code <= 299:
            return None
        return DestinationDown(f"probe: HTTP {answer.code}")

    async def idle(self, slot: int, now: float) -> float | None:
        """The pool closes idle connections itself."""
        return None

    async def close(self, slot: int) -> None:
        """Close the pools' idle connections."""
        await self.client.close()
        if self.token_client is not self.client:
            await self.token_client.close()

    def abort(self) -> None:
        """Cancel the request in flight (its notification is retried)."""
        self.client.abort()

    def connections(self) -> int:
        """Connections held (idle in the pool or carrying a request)."""
        return self.client.connections()


def _read_file(path: str) -> bytes:
    """A notification file's bytes (small: a study's summary)."""
    with open(path, "rb") as handle:
        return handle.read()
