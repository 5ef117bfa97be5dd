"""The HTTP resources: ``/metrics``, ``/healthz``, ``/readyz`` and the admin API (issues 6 and 11).

What the resources need from the gateway is the small :class:`Backend`
interface (:class:`gateway.httpbackend.ServiceBackend` in the process; a
fake in tests). ``/api`` is guarded by :class:`_Guarded`: bearer token,
served ``Host`` and ``Origin``, JSON content type for changes (see
:mod:`gateway.http`). Every answer is JSON; the known errors
(:class:`NotFound`, :class:`Refused`, :class:`BadRequest`) map to 404, 409
and 400, anything else to a logged 500.
"""

from __future__ import annotations

import hmac
import json
import re
from typing import Any, Callable, Iterable, Protocol, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from gateway.admin import Operator
from gateway.config.schema import ApiToken
from gateway.httpguard import MAX_BODY_BYTES, MAX_JSON_DEPTH

__all__ = [
    "Backend",
    "NotFound",
    "BadRequest",
    "Refused",
    "LOCAL_HOSTS",
    "served_hosts",
    "MetricsResource",
    "HealthResource",
    "ReadyResource",
    "QueuesResource",
    "DeadLettersResource",
    "DestinationsResource",
    "ReloadResource",
    "DrainResource",
    "CommitmentsResource",
    "RetrievesResource",
]

_log = Logger(namespace="gateway.http")

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

    def drain(self, draining: bool, operator: Operator) -> "Deferred[dict[str, Any]]":
        """Start or end a drain (issue 14); fires with its status."""

    def commitments(self, state: str | None) -> "Deferred[dict[str, Any]]":
        """Storage Commitment transactions (issue 15), newest first, optionally of one state.

        Fires with ``{"summary": ..., "commitments": [...]}`` (see
        :func:`gateway.admin.commitment_rows`); fails with :class:`BadRequest`
        for an unknown state, :class:`NotFound` when the store keeps no
        Storage Commitment journal.
        """

    def commitment(self, transaction_uid: str) -> "Deferred[dict[str, Any]]":
        """One transaction in full (:func:`gateway.admin.commitment_detail`); fails with :class:`NotFound`."""

    def retry_commitment(self, transaction_uid: str, operator: Operator) -> "Deferred[dict[str, Any]]":
        """Send a dead report again; fires with the transaction's row; :class:`NotFound` or :class:`Refused` (not dead)."""

    def retrieves(self, state: str | None, limit: int, cursor: str | None) -> "Deferred[dict[str, Any]]":
        """C-MOVE/C-GET retrieves (issue 16), newest first, one keyset page.

        Fires with ``{"retrieves": [...], "next": cursor or None, "open": {...}}``
        (:func:`gateway.admin_retrieves.retrieve_page`); fails with
        :class:`BadRequest` for an unknown state or a bad cursor,
        :class:`NotFound` when the store keeps no retrieve journal.
        """

    def retrieve(self, retrieve_id: int) -> "Deferred[dict[str, Any]]":
        """One retrieve in full (:func:`gateway.admin_retrieves.retrieve_detail`); :class:`NotFound` when not on record."""



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
        """Ask the backend; answer 200 or 503, naming the node when it has a name (issue 14)."""
        node_name = getattr(self._backend, "node_name", None)

        def answer(reasons: list[str]) -> tuple[int, Any]:
            body: dict[str, Any] = {"ready": not reasons}
            if reasons:
                body["reasons"] = reasons
            if node_name is not None:
                body["node"] = node_name()
            return (503 if reasons else 200), body

        return _render_async(request, self._backend.readiness, answer)


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



class DrainResource(_Leaf):
    """``POST /api/v1/drain`` and ``POST /api/v1/undrain``: as ``dicom-gateway drain`` / ``undrain`` (issue 14)."""

    def __init__(self, backend: Backend, draining: bool) -> None:
        super().__init__()
        self._backend = backend
        self._draining = draining

    def render_POST(self, request: Request) -> Any:
        """200 with the drain's status (``draining``, ``refusing``, ``grace_seconds``, ``node``)."""
        _body, error = _json_body(request)
        if error is not None:
            return _Error(400, error).render(request)
        operator = _operator(request)
        return _render_async(request, lambda: self._backend.drain(self._draining, operator), lambda status: (200, status))


class CommitmentsResource(Resource):
    """``GET /api/v1/commitments[?state=open|reported|dead]``; one transaction and its retry below it (issue 15)."""

    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self._backend = backend

    def render_GET(self, request: Request) -> Any:
        """The reports owed, overdue and dead (``summary``) and the transactions, newest first."""
        values = request.args.get(b"state") or []
        state = values[0].decode("utf-8", "replace") if values else None
        return _render_async(request, lambda: self._backend.commitments(state), lambda body: (200, body))

    def getChild(self, path: bytes, request: Request) -> Resource:
        """``/{transaction_uid}`` and ``/{transaction_uid}/retry``."""
        uid = path.decode("ascii", "replace")
        # A UID is digits and dots, 64 at most (PS3.5 9.1): anything else names no transaction.
        if not re.fullmatch(r"[0-9.]{1,64}", uid):
            return _Error(404, "no such transaction")
        return CommitmentResource(self._backend, uid)


class CommitmentResource(Resource):
    """``GET /api/v1/commitments/{uid}``; ``POST .../{uid}/retry`` is its child."""

    def __init__(self, backend: Backend, transaction_uid: str) -> None:
        super().__init__()
        self._backend = backend
        self._uid = transaction_uid

    def getChild(self, path: bytes, request: Request) -> Resource:
        """``retry``; anything else is 404."""
        if path == b"retry":
            return CommitmentRetryResource(self._backend, self._uid)
        return _Error(404, "not found")

    def render_GET(self, request: Request) -> Any:
        """The request, each instance per destination as the verdict sees it now, the report, the attempts."""
        return _render_async(request, lambda: self._backend.commitment(self._uid), lambda body: (200, body))


class CommitmentRetryResource(_Leaf):
    """``POST /api/v1/commitments/{uid}/retry``: as ``dicom-gateway commitment retry``."""

    def __init__(self, backend: Backend, transaction_uid: str) -> None:
        super().__init__()
        self._backend = backend
        self._uid = transaction_uid

    def render_POST(self, request: Request) -> Any:
        """200 with the transaction (owed again); 404 unknown; 409 when it is not dead."""
        _body, error = _json_body(request)
        if error is not None:
            return _Error(400, error).render(request)
        operator = _operator(request)
        return _render_async(
            request, lambda: self._backend.retry_commitment(self._uid, operator), lambda row: (200, {"requeued": row})
        )


class RetrievesResource(Resource):
    """``GET /api/v1/retrieves[?state=open|done|cancelled|failed&limit=N&cursor=C]``; one retrieve below it (issue 16).

    Keyset pages: ``next`` in the answer is the ``cursor`` of the following
    page (``null`` on the last one); ``limit`` is 1 to
    :data:`gateway.admin_retrieves.MAX_PAGE` (default 100).
    """

    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self._backend = backend

    def render_GET(self, request: Request) -> Any:
        """One page of retrieves, newest first, with the open counts by kind."""
        from gateway.admin_retrieves import MAX_PAGE

        def arg(name: bytes) -> str | None:
            values = request.args.get(name) or []
            return values[0].decode("utf-8", "replace") if values else None

        limit_text = arg(b"limit")
        if limit_text is None:
            limit = 100
        elif re.fullmatch(r"[0-9]{1,7}", limit_text) and 1 <= int(limit_text) <= MAX_PAGE:
            limit = int(limit_text)
        else:
            return _Error(400, f"limit must be a whole number from 1 to {MAX_PAGE}").render(request)
        state, cursor = arg(b"state"), arg(b"cursor")
        return _render_async(request, lambda: self._backend.retrieves(state, limit, cursor), lambda body: (200, body))

    def getChild(self, path: bytes, request: Request) -> Resource:
        """``/{retrieve_id}``: digits only, anything else names no retrieve."""
        if not re.fullmatch(rb"[0-9]{1,18}", path):
            return _Error(404, "no such retrieve")
        return RetrieveResource(self._backend, int(path))


class RetrieveResource(Resource):
    """``GET /api/v1/retrieves/{id}``: as ``dicom-gateway retrieve show``."""

    def __init__(self, backend: Backend, retrieve_id: int) -> None:
        super().__init__()
        self._backend = backend
        self._id = retrieve_id

    def getChild(self, path: bytes, request: Request) -> Resource:
        """Nothing below a retrieve."""
        return _Error(404, "not found")

    def render_GET(self, request: Request) -> Any:
        """The request, the counts, the Failed SOP Instance UID List now and each item; 404 when not on record."""
        return _render_async(request, lambda: self._backend.retrieve(self._id), lambda body: (200, body))
