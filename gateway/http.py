"""The HTTP endpoint: ``/metrics``, ``/healthz``, ``/readyz`` and the admin API (issues 6 and 11).

Our own :mod:`twisted.web` resources (no WSGI thread pool):

* ``GET /metrics``: Prometheus text exposition of the injected registry.
  The state gauges come from a cached snapshot (:mod:`gateway.observe`), so
  this never waits for the queue store.
* ``GET /healthz``: 200 while the process serves requests.
* ``GET /readyz``: 200 when the spool is writable, every listener is bound,
  start-up recovery is done and the configuration is loaded; else 503 with
  ``{"ready": false, "reasons": [...]}``. The answer comes from a cached
  state: the spool is probed by a periodic check off the request path
  (:class:`ServiceBackend`), so a flood of probes never queues behind the
  spool's fsyncs, and the reasons name no paths.
* ``GET /api/v1/queues``, ``GET /api/v1/dead-letters[?destination=]``,
  ``POST /api/v1/dead-letters/{id}/retry`` (optional body ``{"to": DEST, "force": false}``;
  a re-target no route would make is 409 unless forced),
  ``DELETE /api/v1/dead-letters/{id}``,
  ``POST /api/v1/destinations/{name}/pause`` and ``.../resume``,
  ``POST /api/v1/reload``.

``/api`` is never open (issue 11): every request needs
``Authorization: Bearer <token>`` (compared in constant time with every
configured token; 401 otherwise), a ``Host`` the gateway serves and, when a
browser sends one, an ``Origin`` of the same hosts (403 otherwise: DNS
rebinding, cross-site requests), and, when it changes something,
``Content-Type: application/json`` (415 otherwise: a browser cannot send
that cross-origin without a CORS preflight, which we never grant). The
token's name goes with the action to the audit trail. ``/metrics`` and the
health endpoints stay open and answer whatever the ``Host``.

Limits are enforced in the channel, before any resource runs
(:class:`GuardedChannel`): a body above :data:`MAX_BODY_BYTES` is refused
with 413 from its ``Content-Length`` before one byte of it is read (and a
chunked body is cut at the same size); bodies are kept in memory, never in a
temporary file; at most :data:`MAX_CONNECTIONS` connections are open at
once; a request that has not arrived whole within :data:`REQUEST_DEADLINE`
seconds is closed. Malformed or too deeply nested JSON is a 400 with a
JSON error, never a 500 page.

Every store call goes through the store's runner; the resources answer with
``NOT_DONE_YET`` and finish the request when the Deferred fires. What the
resources need from the gateway is the small :class:`Backend` interface, so
tests drive them with a fake (``twisted.web.test.requesthelper.DummyRequest``).
"""

from __future__ import annotations

import hmac
import io
import ipaddress
import json
import os
import re
from typing import Any, Callable, Iterable, Protocol, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from gateway.admin import Operator
from gateway.config.schema import ApiToken
from gateway.durable import write_synced

__all__ = [
    "Backend",
    "ServiceBackend",
    "HttpService",
    "GuardedChannel",
    "GuardedRequest",
    "GatewaySite",
    "build_site",
    "served_hosts",
    "spool_probe",
    "NotFound",
    "BadRequest",
    "Refused",
    "MAX_BODY_BYTES",
    "MAX_CONNECTIONS",
    "REQUEST_DEADLINE",
    "MAX_JSON_DEPTH",
]

_log = Logger(namespace="gateway.http")

#: Request bodies above this are refused with 413 (the API's bodies are a few bytes).
MAX_BODY_BYTES = 64 * 1024

#: Connections open at once on the HTTP port; more are closed at once.
MAX_CONNECTIONS = 64

#: Seconds a request may take to arrive whole (its headers, then its body).
REQUEST_DEADLINE = 10.0

#: Seconds an open connection may sit idle between requests' bytes (twisted.web's default is 12 h).
IDLE_TIMEOUT = 60.0

#: JSON bodies nested deeper than this are refused before parsing (the parser recurses).
MAX_JSON_DEPTH = 32

#: How often the spool is probed for ``/readyz``.
PROBE_INTERVAL = 5.0

#: The hosts ``/api`` always answers to, besides the listen address and ``http.allowed_hosts``.
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

#: Methods that change nothing; every other one needs ``Content-Type: application/json``.
_SAFE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})


class NotFound(Exception):
    """The entry asked for does not exist (404)."""


class BadRequest(Exception):
    """The request cannot be carried out as given (400)."""


class Refused(Exception):
    """The request is understood but refused in the current state (409), e.g. an unsafe re-target."""


class Backend(Protocol):
    """What the HTTP resources need from the running gateway."""

    def readiness(self) -> "Deferred[list[str]]":
        """Why the gateway is not ready (an empty list when it is)."""

    def queues(self) -> "Deferred[list[dict[str, Any]]]":
        """One row per destination (see :func:`gateway.admin.queue_rows`)."""

    def dead_letters(self, destination: str | None) -> "Deferred[list[dict[str, Any]]]":
        """Dead-letter entries, optionally of one destination."""

    def retry(self, entry_id: int, to: str | None, operator: Operator, force: bool = False) -> "Deferred[int]":
        """Requeue a dead letter (to another destination with ``to``); fires with the entry id.

        Fails with :class:`NotFound` or :class:`BadRequest`, and with
        :class:`Refused` when ``to`` sends the entry's copy where no route
        sends copies with its plan (unless ``force``).
        """

    def purge(self, entry_id: int, operator: Operator) -> "Deferred[None]":
        """Delete a dead letter; fails with :class:`NotFound`."""

    def pause(self, destination: str, paused: bool, operator: Operator) -> "Deferred[None]":
        """Pause or resume a destination; fails with :class:`NotFound`."""

    def reload(self, operator: Operator) -> "Deferred[bool]":
        """Reload the configuration; fires with whether it was applied."""


def spool_probe(root: str) -> None:
    """Prove the spool is writable: create, write, fsync and remove a small file (blocking; run it on a runner).

    The probe file is created with ``O_CREAT | O_EXCL | O_NOFOLLOW``: a
    symbolic link planted in its place is never followed (issue 11).

    :param root: the spool directory.
    :raises OSError: the spool cannot be written.
    """
    path = os.path.join(root, ".readyz-probe")
    try:
        os.unlink(path)  # left by a probe interrupted by a crash
    except FileNotFoundError:
        pass
    write_synced(path, b"ok\n", mode=0o600)
    os.remove(path)


# -- the channel: limits before any resource runs ----------------------------------------


def _json_bytes(code: int, reason: str, message: str) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response with a JSON error body."""
    body = json.dumps({"error": message}).encode("utf-8") + b"\n"
    head = (
        f"HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class GuardedRequest(Request):
    """A request whose body is kept in memory and cut at :data:`MAX_BODY_BYTES`.

    twisted.web writes a body of 100 kB or more, or of unknown length, to a
    temporary file before any resource sees it; here the body always goes to
    memory, and the channel has refused it before it could grow past the limit.
    """

    def gotLength(self, length: int | None) -> None:
        """Keep the body in memory, whatever its announced length (the channel refused a large one).

        :param length: the ``Content-Length``, or ``None`` (chunked).
        """
        self.content = io.BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        """Store a piece of body; past the limit, the channel refuses the request (413).

        :param data: the piece.
        """
        if self.content is None:
            return  # refused at the headers: nothing is stored
        if self.content.tell() + len(data) > MAX_BODY_BYTES:
            channel = self.channel
            if isinstance(channel, GuardedChannel):
                channel.refuse(413, "Content Too Large", f"request body larger than {MAX_BODY_BYTES} bytes")
            return
        self.content.write(data)


class GuardedChannel(HTTPChannel):
    """An HTTP/1.1 channel with the admin port's limits (issue 11).

    * a ``Content-Length`` above :data:`MAX_BODY_BYTES` is answered 413
      when the headers end, before any of the body is read or stored;
    * a chunked body is cut at the same size (:class:`GuardedRequest`);
    * past :attr:`GatewaySite.max_connections` open connections, a new
      one is answered 503 and closed at once;
    * a request that has not arrived whole within
      :attr:`GatewaySite.request_deadline` seconds is closed.

    A refused request never reaches a resource: once refused, the channel
    ignores everything the client still sends while the connection closes.
    """

    site: "GatewaySite"

    def __init__(self) -> None:
        super().__init__()
        self._refused = False
        self._deadline: IDelayedCall | None = None
        self._counted = False

    def connectionMade(self) -> None:
        """Count the connection (refusing it over the cap) and start the request deadline."""
        super().connectionMade()
        site = self.site
        if len(site.channels) >= site.max_connections:
            site.refused_connections += 1
            self.refuse(503, "Service Unavailable", "too many connections")
            return
        site.channels.add(self)
        self._counted = True
        self._start_deadline()

    def _start_deadline(self) -> None:
        self._cancel_deadline()
        if self.site.request_deadline > 0:
            self._deadline = self.callLater(self.site.request_deadline, self._deadline_passed)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self.transport is not None:
            self._refused = True
            self.transport.abortConnection()

    def refuse(self, code: int, reason: str, message: str) -> None:
        """Answer ``code`` with a JSON error and close; ignore whatever the client still sends.

        :param code: the status.
        :param reason: its reason phrase.
        :param message: the error in the JSON body.
        """
        if self._refused:
            return
        self._refused = True
        self._cancel_deadline()
        if self.transport is not None:
            self.transport.write(_json_bytes(code, reason, message))
            self.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        """Parse, unless the request was refused."""
        if self._refused:
            return
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        """Refuse a body announced larger than the limit before reading any of it (413)."""
        if self.length is not None and self.length > MAX_BODY_BYTES:
            self.refuse(413, "Content Too Large", f"request body larger than {MAX_BODY_BYTES} bytes")
            return
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        """Hand the request to the site, unless it was refused; it has arrived, stop its deadline."""
        if self._refused:
            return
        self._cancel_deadline()
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        """The response is sent; a kept-alive connection gets a new deadline for its next request.

        The deadline starts before the channel replays any pipelined bytes,
        so a next request already received whole cancels it at once.
        """
        if self.persistent and not self._refused:
            self._start_deadline()
        super().requestDone(request)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        """Forget the connection."""
        self._cancel_deadline()
        if self._counted:
            self.site.channels.discard(self)
            self._counted = False
        super().connectionLost(reason)


class GatewaySite(Site):
    """The HTTP site: :class:`GuardedChannel` connections, no access log.

    :param resource: the root resource.
    :param reactor: time for the deadlines and timeouts.
    :param max_connections: connections open at once.
    :param request_deadline: seconds a request may take to arrive.
    """

    protocol = GuardedChannel  # type: ignore[assignment]
    requestFactory = GuardedRequest

    def __init__(
        self,
        resource: Resource,
        reactor: Any = None,
        max_connections: int = MAX_CONNECTIONS,
        request_deadline: float = REQUEST_DEADLINE,
    ) -> None:
        super().__init__(resource, reactor=reactor, timeout=IDLE_TIMEOUT)
        self.max_connections = max_connections
        self.request_deadline = request_deadline
        self.channels: set[GuardedChannel] = set()
        #: Connections closed at once because :attr:`max_connections` were open.
        self.refused_connections = 0

    def log(self, request: Request) -> None:
        """No access log (a scrape every few seconds would flood the log)."""


# -- helpers -----------------------------------------------------------------------------


def _send_json(request: Request, code: int, body: Any) -> None:
    if getattr(request, "_disconnected", False) or getattr(request, "finished", False):
        return
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    request.write(json.dumps(body, sort_keys=True, default=str).encode("utf-8") + b"\n")
    request.finish()


def _render_async(request: Request, work: Callable[[], "Deferred[Any]"], ok: Callable[[Any], tuple[int, Any]]) -> Any:
    """Run ``work``, answer with ``ok(result)``; map the known errors to 4xx and the rest to 500."""

    def failed(failure: Failure) -> None:
        if failure.check(NotFound):
            _send_json(request, 404, {"error": str(failure.value) or "not found"})
        elif failure.check(Refused):
            _send_json(request, 409, {"error": str(failure.value)})
        elif failure.check(BadRequest):
            _send_json(request, 400, {"error": str(failure.value)})
        else:
            _log.failure("HTTP {method} {path} failed", failure, method=request.method, path=request.path)
            _send_json(request, 500, {"error": "internal error"})

    d = maybeDeferred(work)
    d.addCallback(lambda result: _send_json(request, *ok(result)))
    d.addErrback(failed)
    return NOT_DONE_YET


def _too_deep(text: str, limit: int) -> bool:
    """Whether JSON text nests arrays and objects deeper than ``limit`` (strings skipped)."""
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _json_body(request: Request) -> tuple[Any, str | None]:
    """The request's JSON body (``None`` when empty), or the reason it is refused.

    RFC 8259: UTF-8; nesting is bounded before parsing, so a deep body is a
    400, not a ``RecursionError``.

    :returns: ``(value, None)`` or ``(None, error)``.
    """
    raw = request.content.read(MAX_BODY_BYTES + 1) if request.content is not None else b""
    if len(raw) > MAX_BODY_BYTES:
        return None, f"request body larger than {MAX_BODY_BYTES} bytes"
    if not raw.strip():
        return None, None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "body is not UTF-8 JSON"
    if _too_deep(text, MAX_JSON_DEPTH):
        return None, f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
    try:
        return json.loads(text), None
    except (ValueError, RecursionError):
        return None, "body is not JSON"


class _Leaf(Resource):
    isLeaf = True


class _Error(_Leaf):
    def __init__(self, code: int, message: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        super().__init__()
        self._code = code
        self._message = message
        self._headers = tuple(headers)

    def render(self, request: Request) -> bytes:
        request.setResponseCode(self._code)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        for name, value in self._headers:
            request.setHeader(name, value)
        return json.dumps({"error": self._message}).encode("utf-8") + b"\n"


# -- open endpoints ----------------------------------------------------------------------


class MetricsResource(_Leaf):
    """``GET /metrics``: the registry in the Prometheus text format."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        """The exposition (version 0.0.4 text format)."""
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self._registry)


class HealthResource(_Leaf):
    """``GET /healthz``: the process answers."""

    def render_GET(self, request: Request) -> bytes:
        """Always 200 (liveness)."""
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/json")
        return b'{"alive": true}\n'


class ReadyResource(_Leaf):
    """``GET /readyz``: 200 when ready, 503 with the reasons otherwise."""

    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self._backend = backend

    def render_GET(self, request: Request) -> Any:
        """Ask the backend; answer 200 or 503."""
        return _render_async(
            request,
            self._backend.readiness,
            lambda reasons: (503, {"ready": False, "reasons": reasons}) if reasons else (200, {"ready": True}),
        )


# -- /api (token-protected) --------------------------------------------------------------


def served_hosts(listen_host: str, allowed: Iterable[str] = ()) -> frozenset[str]:
    """The ``Host`` names ``/api`` answers to.

    :param listen_host: ``http.host`` (a wildcard address adds nothing).
    :param allowed: ``http.allowed_hosts``.
    :returns: lower-case names, IPv6 addresses without brackets.
    """
    names = set(LOCAL_HOSTS) | {name.lower().strip("[]") for name in allowed}
    host = listen_host.lower().strip("[]")
    if host not in ("", "0.0.0.0", "::"):
        names.add(host)
    return frozenset(names)


_HOST_PORT = re.compile(r"^(?P<host>\[[^\]]*\]|[^:\[\]]*)(?::[0-9]*)?$")


def _host_name(header: bytes | None) -> str | None:
    """The host of a ``Host`` header without its port (RFC 9110 7.2), or ``None`` when malformed."""
    if not header:
        return None
    try:
        text = header.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    match = _HOST_PORT.match(text)
    if match is None:
        return None
    return match.group("host").strip("[]").rstrip(".") or None


def _origin_host(origin: bytes) -> str | None:
    """The host of an ``Origin`` header (RFC 6454: ``scheme://host[:port]``), or ``None`` (``null``, malformed)."""
    scheme, separator, rest = origin.partition(b"://")
    if not separator or scheme.lower() not in (b"http", b"https") or b"/" in rest:
        return None
    return _host_name(rest)


def _address(request: Request) -> str:
    peer = request.getClientAddress()
    host = getattr(peer, "host", None)
    return f"{host}:{getattr(peer, 'port', '')}" if host is not None else str(peer)


def _operator(request: Request) -> Operator:
    """Who sent an authorised request (set by :class:`_Guarded`)."""
    operator = getattr(request, "gateway_operator", None)
    return operator if isinstance(operator, Operator) else Operator("unknown", _address(request), "api")


class _Guarded(Resource):
    """``/api``: refuses a foreign ``Host`` (403), a missing or wrong token (401), a non-JSON change (415).

    :param tokens: returns the accepted tokens (read per request, so a reload applies).
    :param hosts: the ``Host`` names answered.
    """

    def __init__(self, tokens: Callable[[], Sequence[ApiToken]], hosts: frozenset[str]) -> None:
        super().__init__()
        self._tokens = tokens
        self._hosts = hosts

    def _holder(self, request: Request) -> str | None:
        """The name of the token the request carries, or ``None``."""
        header = request.getHeader(b"authorization") or b""
        if isinstance(header, str):
            header = header.encode("utf-8")
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return None
        given = given.strip()
        holder = None
        # Constant-time compare with every token, so timing reveals neither a token nor which one matched.
        for token in self._tokens():
            if hmac.compare_digest(given, token.token.encode("utf-8")) and holder is None:
                holder = token.name
        return holder

    def _refusal(self, request: Request) -> Resource | None:
        if _host_name(request.getHeader(b"host")) not in self._hosts:
            return _Error(403, "this Host is not served (add it to http.allowed_hosts)")
        origin = request.getHeader(b"origin")
        if origin is not None and _origin_host(origin) not in self._hosts:
            # A browser page of another site (CSRF); "null" (sandboxed pages, files) included.
            return _Error(403, "requests from other origins are refused")
        holder = self._holder(request)
        if holder is None:
            return _Error(401, "unauthorized", [(b"www-authenticate", b'Bearer realm="dicom-gateway"')])
        if request.method not in _SAFE_METHODS:
            content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
            if content_type != b"application/json":
                return _Error(415, "send Content-Type: application/json")
        request.gateway_operator = Operator(holder, _address(request), "api")  # type: ignore[attr-defined]
        return None

    def getChildWithDefault(self, path: bytes, request: Request) -> Resource:
        """Dispatch only an acceptable request."""
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        return super().getChildWithDefault(path, request)

    def render(self, request: Request) -> Any:
        """``/api`` itself."""
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal.render(request)
        return super().render(request)


class QueuesResource(_Leaf):
    """``GET /api/v1/queues``."""

    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self._backend = backend

    def render_GET(self, request: Request) -> Any:
        """Per destination: queued, in flight, dead letters, oldest age, last error, last success."""
        return _render_async(request, self._backend.queues, lambda rows: (200, {"queues": rows}))


class DeadLettersResource(Resource):
    """``GET /api/v1/dead-letters`` and the per-entry actions below it."""

    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self._backend = backend

    def render_GET(self, request: Request) -> Any:
        """The dead letters, optionally ``?destination=NAME``."""
        values = request.args.get(b"destination") or []
        destination = values[0].decode("utf-8", "replace") if values else None
        return _render_async(
            request, lambda: self._backend.dead_letters(destination), lambda rows: (200, {"dead_letters": rows})
        )

    def getChild(self, path: bytes, request: Request) -> Resource:
        """``/{id}`` and ``/{id}/retry``."""
        try:
            entry_id = int(path)
        except ValueError:
            return _Error(404, "no such dead letter")
        return DeadLetterResource(self._backend, entry_id)


class DeadLetterResource(Resource):
    """``DELETE /api/v1/dead-letters/{id}``; ``POST .../{id}/retry`` is its child."""

    def __init__(self, backend: Backend, entry_id: int) -> None:
        super().__init__()
        self._backend = backend
        self._entry_id = entry_id

    def getChild(self, path: bytes, request: Request) -> Resource:
        """``retry``; anything else is 404."""
        if path == b"retry":
            return RetryResource(self._backend, self._entry_id)
        return _Error(404, "not found")

    def render_DELETE(self, request: Request) -> Any:
        """Purge the dead letter for good."""
        operator = _operator(request)
        return _render_async(
            request, lambda: self._backend.purge(self._entry_id, operator), lambda _: (200, {"purged": self._entry_id})
        )


class RetryResource(_Leaf):
    """``POST /api/v1/dead-letters/{id}/retry`` with an optional ``{"to": DEST}`` body."""

    def __init__(self, backend: Backend, entry_id: int) -> None:
        super().__init__()
        self._backend = backend
        self._entry_id = entry_id

    def render_POST(self, request: Request) -> Any:
        """Requeue the entry; answers the (possibly new) entry id."""
        body, error = _json_body(request)
        if error is not None:
            return _Error(400, error).render(request)
        to: str | None = None
        force = False
        if body is not None:
            if (
                not isinstance(body, dict)
                or not isinstance(body.get("to", ""), str)
                or not isinstance(body.get("force", False), bool)
            ):
                return _Error(400, 'body must be {"to": "<destination>", "force": false}').render(request)
            to = body.get("to") or None
            force = bool(body.get("force", False))
        operator = _operator(request)
        return _render_async(
            request,
            lambda: self._backend.retry(self._entry_id, to, operator, force),
            lambda new_id: (200, {"requeued": new_id}),
        )


class DestinationsResource(Resource):
    """``/api/v1/destinations/{name}/pause`` and ``.../resume``."""

    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self._backend = backend

    def getChild(self, path: bytes, request: Request) -> Resource:
        """One destination, by name."""
        return _DestinationResource(self._backend, path.decode("utf-8", "replace"))


class _DestinationResource(Resource):
    def __init__(self, backend: Backend, name: str) -> None:
        super().__init__()
        self._backend = backend
        self._name = name

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path in (b"pause", b"resume"):
            return PauseResource(self._backend, self._name, path == b"pause")
        return _Error(404, "not found")


class PauseResource(_Leaf):
    """``POST /api/v1/destinations/{name}/pause`` (or ``resume``): as ``dicom-gateway queue pause``."""

    def __init__(self, backend: Backend, destination: str, paused: bool) -> None:
        super().__init__()
        self._backend = backend
        self._destination = destination
        self._paused = paused

    def render_POST(self, request: Request) -> Any:
        """Pause or resume; items keep queueing while paused."""
        _body, error = _json_body(request)
        if error is not None:
            return _Error(400, error).render(request)
        operator = _operator(request)
        return _render_async(
            request,
            lambda: self._backend.pause(self._destination, self._paused, operator),
            lambda _: (200, {"destination": self._destination, "paused": self._paused}),
        )


class ReloadResource(_Leaf):
    """``POST /api/v1/reload``: as SIGHUP."""

    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self._backend = backend

    def render_POST(self, request: Request) -> Any:
        """200 when applied, 409 when the new configuration was refused (the running one stays)."""
        _body, error = _json_body(request)
        if error is not None:
            return _Error(400, error).render(request)
        operator = _operator(request)
        return _render_async(
            request,
            lambda: self._backend.reload(operator),
            lambda applied: (200 if applied else 409, {"applied": bool(applied)}),
        )


def build_site(
    registry: CollectorRegistry,
    backend: Backend,
    tokens: Sequence[ApiToken] | Callable[[], Sequence[ApiToken]],
    hosts: frozenset[str] = LOCAL_HOSTS,
    reactor: Any = None,
    max_connections: int = MAX_CONNECTIONS,
    request_deadline: float = REQUEST_DEADLINE,
) -> GatewaySite:
    """The whole HTTP tree.

    :param registry: the metrics registry served at ``/metrics``.
    :param backend: the gateway behind the health and API resources.
    :param tokens: the bearer tokens ``/api`` accepts (or a callable returning
        them, read per request); none means every ``/api`` request is 401.
    :param hosts: the ``Host`` names ``/api`` answers (:func:`served_hosts`).
    :param reactor: time for the channel's deadlines; the global reactor by default.
    :param max_connections: connections open at once.
    :param request_deadline: seconds a request may take to arrive.
    :returns: the site.
    """
    current: Callable[[], Sequence[ApiToken]] = tokens if callable(tokens) else (lambda fixed=tuple(tokens): fixed)
    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry))
    root.putChild(b"healthz", HealthResource())
    root.putChild(b"readyz", ReadyResource(backend))
    api = _Guarded(current, hosts)
    v1 = Resource()
    api.putChild(b"v1", v1)
    v1.putChild(b"queues", QueuesResource(backend))
    v1.putChild(b"dead-letters", DeadLettersResource(backend))
    v1.putChild(b"destinations", DestinationsResource(backend))
    v1.putChild(b"reload", ReloadResource(backend))
    root.putChild(b"api", api)
    site = GatewaySite(root, reactor=reactor, max_connections=max_connections, request_deadline=request_deadline)
    site.noisy = False
    site.displayTracebacks = False
    return site


_PATH = re.compile(r"(?<![\w.])'?/[^\s'\"]*'?")


def _no_paths(text: str) -> str:
    """``text`` with file system paths replaced, for ``/readyz`` (its body names no paths)."""
    return _PATH.sub("<path>", text)


class ServiceBackend:
    """:class:`Backend` over a :class:`~gateway.service.GatewayService`.

    Readiness is a cached state: :meth:`start` probes the spool every
    ``interval`` seconds on the service's blocking runner, and
    :meth:`readiness` answers from memory (issue 11: no disk write per
    request). Every action is written to the audit trail with who asked.

    :param service: the running gateway.
    :param load: the configuration loader used by ``reload``.
    :param probe: proves the spool writable (blocking; run on the service's blocking runner);
        by default the spool's own :meth:`~gateway.spool.Spool.probe`, which makes a commit's
        system calls (create, write, fsync, rename, folder fsyncs), so EIO on rename or a
        read-only filesystem fails readiness as it would fail the next instance (HARDENING
        D11, D12); :func:`spool_probe` where the service has no spool object.
    :param wall: wall-clock time.
    :param clock: schedules the periodic probe; the global reactor by default.
    :param interval: seconds between spool probes.
    """

    def __init__(
        self,
        service: Any,
        load: Callable[[str], Any],
        probe: Callable[[str], None] | None = None,
        wall: Callable[[], float] | None = None,
        clock: Any = None,
        interval: float = PROBE_INTERVAL,
    ) -> None:
        import time

        self._service = service
        self._load = load
        self._probe = probe
        self._wall = wall or time.time
        self._clock = clock
        self._interval = interval
        self._loop: LoopingCall | None = None
        self._probing = False
        #: ``None`` until the first probe ends; then ``""`` or why the spool is not writable.
        self.spool_error: str | None = None

    # -- readiness ----------------------------------------------------------------------

    def start(self) -> None:
        """Probe the spool now, then every ``interval`` seconds."""
        if self._loop is not None:
            return
        self._loop = LoopingCall(self.probe_now)
        if self._clock is not None:
            self._loop.clock = self._clock
        self._loop.start(self._interval, now=True)

    def stop(self) -> None:
        """Stop probing."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def probe_now(self) -> "Deferred[None]":
        """Probe the spool once (off the reactor thread) and cache the outcome.

        :returns: a Deferred firing when the outcome is cached.
        """
        config = self._service.config
        if self._probing or config is None:
            return succeed(None)
        self._probing = True
        spool = getattr(self._service, "spool", None)
        if self._probe is not None:
            d = self._service.blocking.run(self._probe, config.spool.path)
        elif spool is not None and hasattr(spool, "probe"):
            d = self._service.blocking.run(spool.probe)
        else:
            d = self._service.blocking.run(spool_probe, config.spool.path)

        def probed(_: object) -> None:
            self.spool_error = ""

        def unwritable(failure: Failure) -> None:
            error = failure.value
            reason = error.strerror if isinstance(error, OSError) and error.strerror else failure.getErrorMessage()
            self.spool_error = _no_paths(reason or "unknown error")

        def done(_: object) -> None:
            self._probing = False

        d.addCallbacks(probed, unwritable)
        d.addBoth(done)
        return d

    def readiness(self) -> "Deferred[list[str]]":
        """Spool writable, every listener bound, start-up recovery done, configuration loaded (from memory)."""
        service = self._service
        reasons: list[str] = []
        if service.config is None:
            reasons.append("configuration not loaded")
        if not service.ready.called:
            reasons.append("start-up recovery not finished")
        for listener in service.listeners:
            if listener.port is None:
                reasons.append(f"listener {listener.listener.name} not bound")
        for name, worker in sorted(getattr(service, "workers", {}).items()):
            # HARDENING F15: outcomes the journal refused; the worker stopped dequeuing.
            error = worker.status().journal_error
            if error:
                reasons.append(f"destination {name}: journal not writable, not dequeuing ({_no_paths(error)})")
        if self.spool_error is None:
            reasons.append("spool not checked yet")
        elif self.spool_error:
            reasons.append(f"spool not writable: {self.spool_error}")
        else:
            # HARDENING D11/D12: an instance's write, fsync or rename failed since the last
            # good probe; the next probe clears it once the spool commits again.
            fault = getattr(getattr(service, "spool", None), "fault", None)
            if fault is not None:
                reasons.append(f"spool failing: {_no_paths(str(fault))}")
        space = getattr(service, "space", None)
        if space is not None and space.low():
            # D11: below spool.min_free new work is refused (RJ(2,3,1), 0xA700).
            reasons.append("spool below its free-space floor (spool.min_free)")
        return succeed(reasons)

    # -- views ----------------------------------------------------------------------------

    def queues(self) -> "Deferred[list[dict[str, Any]]]":
        """:func:`gateway.admin.queue_rows` on the store's thread."""
        from gateway.admin import queue_rows

        names = [d.name for d in self._service.config.destinations]
        return self._service.store_runner.run(queue_rows, self._service.store, names, self._wall())

    def dead_letters(self, destination: str | None) -> "Deferred[list[dict[str, Any]]]":
        """Dead entries as :func:`gateway.admin.entry_dict`."""
        from gateway.admin import entry_dict
        from gateway.queue.interfaces import EntryState

        store = self._service.store

        def read() -> list[dict[str, Any]]:
            return [entry_dict(e) for e in store.entries(destination, EntryState.DEAD)]

        return self._service.store_runner.run(read)

    # -- actions (audited) ------------------------------------------------------------------

    def _audited(self, d: "Deferred[Any]", action: str, operator: Operator, **details: Any) -> "Deferred[Any]":
        """Write the action's audit record when ``d`` fires (a failure is recorded as a minor failure)."""
        from gateway.admin import audit_operator_action
        from gateway.audit import Outcome

        trail = getattr(self._service, "audit", None)

        def resolved() -> dict[str, Any]:
            # A detail may be a callable, read once the action ended (e.g. whether it was forced).
            return {k: v() if callable(v) else v for k, v in details.items()}

        def succeeded(result: Any) -> Any:
            if trail is not None:
                audit_operator_action(trail, action, operator, **resolved())
            return result

        def failed(failure: Failure) -> Failure:
            if trail is not None:
                fields = resolved()
                fields.pop("description", None)
                audit_operator_action(
                    trail,
                    action,
                    operator,
                    outcome=Outcome.MINOR_FAILURE,
                    description=f"{action} refused: {failure.getErrorMessage()}",
                    **fields,
                )
            return failure

        d.addCallbacks(succeeded, failed)
        return d

    def retry(self, entry_id: int, to: str | None, operator: Operator, force: bool = False) -> "Deferred[int]":
        """Requeue a dead letter; ``to`` must be a configured destination that may get the entry's copy.

        A re-target is refused (:class:`Refused`) when no route in force sends
        copies made with the entry's plan to ``to``, unless ``force``; a forced
        one is audited as such (issue 11).
        """
        from gateway.prepare import retarget_refusal

        action = "retarget" if to else "retry"
        if to is not None and to not in {d.name for d in self._service.config.destinations}:
            return self._audited(_failed(BadRequest(f"unknown destination {to!r}")), action, operator, entry_ids=[entry_id], to=to)
        store = self._service.store
        now = self._wall()
        routes = self._service.config.routes

        forced: list[str] = []

        def requeue() -> int:
            try:
                if to is not None:
                    refusal = retarget_refusal(routes, store.get(entry_id).plan_hash, to)
                    if refusal and not force:
                        raise Refused(f"entry {entry_id} not re-targeted to {to}: {refusal}")
                    if refusal:
                        forced.append(refusal)
                return int(store.requeue_dead(entry_id, now, to))
            except KeyError:
                raise NotFound(f"no dead letter {entry_id}")

        d = self._service.store_runner.run(requeue)

        def poke(new_id: int) -> int:
            # Wake the workers now rather than at their next poll.
            for worker in list(self._service.workers.values()):
                worker.poke()
            return new_id

        d.addCallback(poke)
        audited = self._audited(d, action, operator, entry_ids=[entry_id], to=to or "",
                                description=lambda: f"{action} to {to} forced past the re-target guard: {forced[0]}"
                                if forced else "")
        return audited

    def purge(self, entry_id: int, operator: Operator) -> "Deferred[None]":
        """Delete a dead letter."""
        store = self._service.store

        def purge() -> None:
            try:
                store.purge(entry_id)
            except KeyError:
                raise NotFound(f"no dead letter {entry_id}")

        return self._audited(self._service.store_runner.run(purge), "purge", operator, entry_ids=[entry_id])

    def pause(self, destination: str, paused: bool, operator: Operator) -> "Deferred[None]":
        """Pause or resume a configured destination (as ``dicom-gateway queue pause``)."""
        action = "pause" if paused else "resume"
        if destination not in {d.name for d in self._service.config.destinations}:
            return self._audited(_failed(NotFound(f"no destination {destination!r}")), action, operator, destination=destination)
        store = self._service.store
        d = self._service.store_runner.run(store.set_paused, destination, paused)

        def poke(result: Any) -> Any:
            worker = self._service.workers.get(destination)
            if worker is not None and not paused:
                worker.poke()
            return result

        d.addCallback(poke)
        return self._audited(d, action, operator, destination=destination)

    def reload(self, operator: Operator) -> "Deferred[bool]":
        """As SIGHUP."""
        from gateway.admin import audit_operator_action
        from gateway.audit import Outcome

        d = self._service.reload(self._load)

        def record(applied: bool) -> bool:
            trail = getattr(self._service, "audit", None)
            if trail is not None:
                audit_operator_action(
                    trail,
                    "reload",
                    operator,
                    outcome=Outcome.SUCCESS if applied else Outcome.MINOR_FAILURE,
                    description=f"reload {'applied' if applied else 'refused'}; asked by {operator.who}",
                )
            return applied

        d.addCallback(record)
        return d


def _failed(error: Exception) -> "Deferred[Any]":
    d: Deferred[Any] = Deferred()
    d.errback(Failure(error))
    return d


def is_loopback(host: str) -> bool:
    """Whether ``http.host`` is a loopback address (or ``localhost``).

    :param host: the configured interface.
    :returns: ``False`` for a wildcard, a routable address or any other name.
    """
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class HttpService(Service):
    """Listens on ``http.host:http.port`` with a site (over TLS with ``tls``); logs the bound port.

    :param reactor: the reactor.
    :param host: the interface.
    :param port: the port (0: any free one).
    :param site: what to serve.
    :param tls: a :class:`gateway.tls.ServerTLS` for HTTPS, or ``None``.
    :param backend: started and stopped with the service (its readiness probe).
    :param handshake_timeout: seconds a TLS handshake may take.
    """

    log = Logger(namespace="gateway.http")

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        site: Site,
        tls: Any = None,
        backend: Any = None,
        handshake_timeout: float = 10.0,
    ) -> None:
        self._reactor = reactor
        self.host = host
        self.requested_port = port
        self.site = site
        self.tls = tls
        self.backend = backend
        self.handshake_timeout = handshake_timeout
        self.port: IListeningPort | None = None
        self.setName("http")

    def startService(self) -> None:
        """Bind (warning loudly when a non-loopback address is served without TLS); a failure is logged."""
        super().startService()
        if self.backend is not None and hasattr(self.backend, "start"):
            self.backend.start()
        if self.tls is None and not is_loopback(self.host):
            self.log.critical(
                "the HTTP admin API listens on {host}, which is not a loopback address, WITHOUT TLS: bearer "
                "tokens and queue contents cross the network in clear; set http.tls or bind http.host to 127.0.0.1",
                host=self.host,
            )
        cls = TCP6ServerEndpoint if ":" in self.host else TCP4ServerEndpoint
        endpoint = cls(self._reactor, self.requested_port, interface=self.host)
        factory: Any = self.site
        if self.tls is not None:
            from gateway.tls import TLSListenerFactory

            factory = TLSListenerFactory(self.tls, self.site, self._reactor, self.handshake_timeout)
        d = endpoint.listen(factory)
        d.addCallbacks(self._bound, self._failed)

    def _bound(self, port: IListeningPort) -> None:
        self.port = port
        address = port.getHost()
        scheme = "https" if self.tls is not None else "http"
        self.log.info(
            "HTTP (metrics, health, API) on {scheme}://{host}:{port}/", scheme=scheme, host=address.host, port=address.port
        )

    def _failed(self, failure: Failure) -> None:
        self.log.error(
            "cannot serve HTTP on {host}:{port}: {error}", host=self.host, port=self.requested_port, error=failure.getErrorMessage()
        )

    def stopService(self) -> "Deferred[None]":
        """Stop listening."""
        super().stopService()
        if self.backend is not None and hasattr(self.backend, "stop"):
            self.backend.stop()
        if self.port is not None:
            port, self.port = self.port, None
            return maybeDeferred(port.stopListening)
        return succeed(None)


def api_tokens(service: Any) -> Callable[[], Sequence[ApiToken]]:
    """The tokens ``/api`` accepts: the configured ones, else the generated one (made at first start).

    :param service: the gateway (its configuration is read per request, so a reload applies).
    :returns: a callable returning the tokens.
    :raises gateway.apitokens.TokenFileError: the generated token file is unusable.
    """
    from gateway.apitokens import configured_tokens, ensure_generated_token

    generated: tuple[ApiToken, ...] = ()
    if not configured_tokens(service.config.http):
        path, created, generated = ensure_generated_token(service.config.spool.path)
        _log.info(
            "admin API token {what} {path} (give it as 'Authorization: Bearer ...'; dicom-gateway commands read it there)",
            what="generated in" if created else "read from",
            path=path,
        )

    def current() -> Sequence[ApiToken]:
        return configured_tokens(service.config.http) or generated

    return current


def http_service(reactor: Any, service: Any, metrics: Any, load: Callable[[str], Any]) -> HttpService:
    """The HTTP service for a :class:`~gateway.service.GatewayService`, from ``config.http``.

    :param reactor: the reactor.
    :param service: the gateway.
    :param metrics: its :class:`~gateway.observe.GatewayMetrics`.
    :param load: the configuration loader (for ``/api/v1/reload``).
    :raises gateway.apitokens.TokenFileError: the generated token file is unusable.
    :raises gateway.tls.TLSConfigError: ``http.tls`` names unusable files.
    """
    config = service.config.http
    backend = ServiceBackend(service, load, clock=reactor)
    site = build_site(
        metrics.registry,
        backend,
        api_tokens(service),
        served_hosts(config.host, config.allowed_hosts),
        reactor=reactor,
    )
    tls = None
    timeout = 10.0
    if config.tls is not None:
        from gateway.security import server_tls_settings
        from gateway.tls import ServerTLS

        tls = ServerTLS(server_tls_settings(config.tls))
        timeout = config.tls.handshake_timeout
    return HttpService(reactor, config.host, config.port, site, tls=tls, backend=backend, handshake_timeout=timeout)
