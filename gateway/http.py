"""The HTTP endpoint: ``/metrics``, ``/healthz``, ``/readyz`` and the admin API (issue 6).

Our own :mod:`twisted.web` resources (no WSGI thread pool):

* ``GET /metrics``: Prometheus text exposition of the injected registry.
  The state gauges come from a cached snapshot (:mod:`gateway.observe`), so
  this never waits for the queue store.
* ``GET /healthz``: 200 while the process serves requests.
* ``GET /readyz``: 200 when the spool is writable (an injected probe, run
  on the blocking runner), every listener is bound and the configuration is
  loaded; else 503 with ``{"ready": false, "reasons": [...]}``.
* ``GET /api/v1/queues``, ``GET /api/v1/dead-letters[?destination=]``,
  ``POST /api/v1/dead-letters/{id}/retry`` (optional body ``{"to": DEST, "force": false}``),
  ``DELETE /api/v1/dead-letters/{id}``, ``POST /api/v1/reload``. When a token
  is configured, ``/api`` needs ``Authorization: Bearer <token>`` (compared
  in constant time) and answers 401 otherwise; ``/metrics`` and the health
  endpoints stay open.

Every store call goes through the store's runner; the resources answer with
``NOT_DONE_YET`` and finish the request when the Deferred fires. What the
resources need from the gateway is the small :class:`Backend` interface, so
tests drive them with a fake (``twisted.web.test.requesthelper.DummyRequest``).
"""

from __future__ import annotations

import hmac
import json
import os
from typing import Any, Callable, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

__all__ = ["Backend", "ServiceBackend", "HttpService", "build_site", "spool_probe", "NotFound", "BadRequest", "Refused"]

_log = Logger(namespace="gateway.http")


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

    def retry(self, entry_id: int, to: str | None, force: bool = False) -> "Deferred[int]":
        """Requeue a dead letter (to another destination with ``to``); fires with the entry id.

        Fails with :class:`NotFound` or :class:`BadRequest`, and with
        :class:`Refused` when ``to`` sends the entry's copy where no route
        sends copies with its plan (unless ``force``).
        """

    def purge(self, entry_id: int) -> "Deferred[None]":
        """Delete a dead letter; fails with :class:`NotFound`."""

    def reload(self) -> "Deferred[bool]":
        """Reload the configuration; fires with whether it was applied."""


def spool_probe(root: str) -> None:
    """Prove the spool is writable: write, fsync and remove a small file (blocking; run it on a runner).

    :param root: the spool directory.
    :raises OSError: the spool cannot be written.
    """
    path = os.path.join(root, ".readyz-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, b"ok\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.remove(path)


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


class _Leaf(Resource):
    isLeaf = True


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


class _Guarded(Resource):
    """Refuses every request without the right bearer token (401) before dispatching to children."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self._token = token.encode("utf-8")

    def _authorised(self, request: Request) -> bool:
        if not self._token:
            return True
        header = request.getHeader(b"authorization") or b""
        if isinstance(header, str):
            header = header.encode("utf-8")
        scheme, _, given = header.partition(b" ")
        # Constant-time compare, so response timing does not reveal the token.
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self._token)

    def getChildWithDefault(self, path: bytes, request: Request) -> Resource:
        """Dispatch only an authorised request."""
        if not self._authorised(request):
            return _Unauthorised()
        return super().getChildWithDefault(path, request)

    def render(self, request: Request) -> Any:
        """``/api`` itself."""
        if not self._authorised(request):
            return _Unauthorised().render(request)
        return super().render(request)


class _Unauthorised(_Leaf):
    def render(self, request: Request) -> bytes:
        request.setResponseCode(401)
        request.setHeader(b"www-authenticate", b'Bearer realm="dicom-gateway"')
        request.setHeader(b"content-type", b"application/json")
        return b'{"error": "unauthorized"}\n'


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


class _Error(_Leaf):
    def __init__(self, code: int, message: str) -> None:
        super().__init__()
        self._code = code
        self._message = message

    def render(self, request: Request) -> bytes:
        request.setResponseCode(self._code)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"error": self._message}).encode("utf-8") + b"\n"


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
        return _render_async(
            request, lambda: self._backend.purge(self._entry_id), lambda _: (200, {"purged": self._entry_id})
        )


class RetryResource(_Leaf):
    """``POST /api/v1/dead-letters/{id}/retry`` with an optional ``{"to": DEST}`` body."""

    def __init__(self, backend: Backend, entry_id: int) -> None:
        super().__init__()
        self._backend = backend
        self._entry_id = entry_id

    def render_POST(self, request: Request) -> Any:
        """Requeue the entry; answers the (possibly new) entry id."""
        raw = request.content.read() if request.content is not None else b""
        to: str | None = None
        force = False
        if raw.strip():
            try:
                body = json.loads(raw)
            except ValueError:
                return _Error(400, "body is not JSON").render(request)
            if (
                not isinstance(body, dict)
                or not isinstance(body.get("to", ""), str)
                or not isinstance(body.get("force", False), bool)
            ):
                return _Error(400, 'body must be {"to": "<destination>", "force": false}').render(request)
            to = body.get("to") or None
            force = bool(body.get("force", False))
        return _render_async(
            request, lambda: self._backend.retry(self._entry_id, to, force), lambda new_id: (200, {"requeued": new_id})
        )


class ReloadResource(_Leaf):
    """``POST /api/v1/reload``: as SIGHUP."""

    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self._backend = backend

    def render_POST(self, request: Request) -> Any:
        """200 when applied, 409 when the new configuration was refused (the running one stays)."""
        return _render_async(
            request, self._backend.reload, lambda applied: (200 if applied else 409, {"applied": bool(applied)})
        )


class _QuietSite(Site):
    """A site without an access log line per request (a scrape every few seconds would flood the log)."""

    def log(self, request: Request) -> None:
        """No access log."""


def build_site(registry: CollectorRegistry, backend: Backend, token: str = "") -> Site:
    """The whole HTTP tree.

    :param registry: the metrics registry served at ``/metrics``.
    :param backend: the gateway behind the health and API resources.
    :param token: the bearer token for ``/api``; empty means none needed.
    :returns: a :class:`~twisted.web.server.Site`.
    """
    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry))
    root.putChild(b"healthz", HealthResource())
    root.putChild(b"readyz", ReadyResource(backend))
    api = _Guarded(token)
    v1 = Resource()
    api.putChild(b"v1", v1)
    v1.putChild(b"queues", QueuesResource(backend))
    v1.putChild(b"dead-letters", DeadLettersResource(backend))
    v1.putChild(b"reload", ReloadResource(backend))
    root.putChild(b"api", api)
    site = _QuietSite(root)
    site.noisy = False
    site.displayTracebacks = False
    return site


class ServiceBackend:
    """:class:`Backend` over a :class:`~gateway.service.GatewayService`.

    :param service: the running gateway.
    :param load: the configuration loader used by ``reload``.
    :param probe: proves the spool writable (blocking; run on the service's blocking runner).
    :param wall: wall-clock time.
    """

    def __init__(
        self,
        service: Any,
        load: Callable[[str], Any],
        probe: Callable[[str], None] = spool_probe,
        wall: Callable[[], float] | None = None,
    ) -> None:
        import time

        self._service = service
        self._load = load
        self._probe = probe
        self._wall = wall or time.time

    def readiness(self) -> "Deferred[list[str]]":
        """Spool writable, every listener bound, start-up recovery done, configuration loaded."""
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
                reasons.append(f"destination {name}: journal not writable, not dequeuing ({error})")
        d = service.blocking.run(self._probe, service.config.spool.path)

        def probed(_: object) -> list[str]:
            return reasons

        def unwritable(failure: Failure) -> list[str]:
            return reasons + [f"spool not writable: {failure.getErrorMessage()}"]

        d.addCallbacks(probed, unwritable)
        return d

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

    def retry(self, entry_id: int, to: str | None, force: bool = False) -> "Deferred[int]":
        """Requeue a dead letter; ``to`` must be a configured destination that may get the entry's copy."""
        from gateway.prepare import retarget_refusal

        if to is not None and to not in {d.name for d in self._service.config.destinations}:
            return _failed(BadRequest(f"unknown destination {to!r}"))
        store = self._service.store
        now = self._wall()
        routes = self._service.config.routes

        def requeue() -> int:
            try:
                if to is not None and not force:
                    refusal = retarget_refusal(routes, store.get(entry_id).plan_hash, to)
                    if refusal:
                        raise Refused(f"entry {entry_id} not re-targeted to {to}: {refusal}")
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
        return d

    def purge(self, entry_id: int) -> "Deferred[None]":
        """Delete a dead letter."""
        store = self._service.store

        def purge() -> None:
            try:
                store.purge(entry_id)
            except KeyError:
                raise NotFound(f"no dead letter {entry_id}")

        return self._service.store_runner.run(purge)

    def reload(self) -> "Deferred[bool]":
        """As SIGHUP."""
        return self._service.reload(self._load)


def _failed(error: Exception) -> "Deferred[Any]":
    d: Deferred[Any] = Deferred()
    d.errback(Failure(error))
    return d


class HttpService(Service):
    """Listens on ``http.host:http.port`` with a site; logs the bound port.

    :param reactor: the reactor.
    :param host: the interface.
    :param port: the port (0: any free one).
    :param site: what to serve.
    """

    log = Logger(namespace="gateway.http")

    def __init__(self, reactor: Any, host: str, port: int, site: Site) -> None:
        self._reactor = reactor
        self.host = host
        self.requested_port = port
        self.site = site
        self.port: IListeningPort | None = None
        self.setName("http")

    def startService(self) -> None:
        """Bind; a failure is logged (the gateway keeps serving DICOM)."""
        super().startService()
        cls = TCP6ServerEndpoint if ":" in self.host else TCP4ServerEndpoint
        endpoint = cls(self._reactor, self.requested_port, interface=self.host)
        d = endpoint.listen(self.site)
        d.addCallbacks(self._bound, self._failed)

    def _bound(self, port: IListeningPort) -> None:
        self.port = port
        address = port.getHost()
        self.log.info("HTTP (metrics, health, API) on http://{host}:{port}/", host=address.host, port=address.port)

    def _failed(self, failure: Failure) -> None:
        self.log.error(
            "cannot serve HTTP on {host}:{port}: {error}", host=self.host, port=self.requested_port, error=failure.getErrorMessage()
        )

    def stopService(self) -> "Deferred[None]":
        """Stop listening."""
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return maybeDeferred(port.stopListening)
        return succeed(None)


def http_service(reactor: Any, service: Any, metrics: Any, load: Callable[[str], Any]) -> HttpService:
    """The HTTP service for a :class:`~gateway.service.GatewayService`, from ``config.http``.

    :param reactor: the reactor.
    :param service: the gateway.
    :param metrics: its :class:`~gateway.observe.GatewayMetrics`.
    :param load: the configuration loader (for ``/api/v1/reload``).
    """
    config = service.config.http
    site = build_site(metrics.registry, ServiceBackend(service, load), config.token)
    return HttpService(reactor, config.host, config.port, site)
