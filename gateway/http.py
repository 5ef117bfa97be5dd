"""The HTTP endpoint: ``/metrics``, ``/healthz``, ``/readyz`` and the admin API (issues 6 and 11).

Our own :mod:`twisted.web` resources (no WSGI thread pool):

* ``GET /metrics``: Prometheus text exposition of the injected registry.
  The state gauges come from a cached snapshot (:mod:`gateway.observe`), so
  this never waits for the queue store.
* ``GET /healthz``: 200 while the process serves requests.
* ``GET /readyz``: 200 when the spool is writable, every listener is bound,
  start-up recovery is done, the configuration is loaded and the node is not
  draining; else 503 with ``{"ready": false, "reasons": [...]}`` (``"draining"``
  at once after ``dicom-gateway drain``); the body names the node
  (``"node"``, issue 14). The answer comes from a cached
  state: the spool is probed by a periodic check off the request path
  (:class:`ServiceBackend`), so a flood of probes never queues behind the
  spool's fsyncs, and the reasons name no paths.
* ``GET /api/v1/queues``, ``GET /api/v1/dead-letters[?destination=]``,
  ``POST /api/v1/dead-letters/{id}/retry`` (optional body ``{"to": DEST, "force": false}``;
  a re-target no route would make is 409 unless forced),
  ``DELETE /api/v1/dead-letters/{id}``,
  ``POST /api/v1/destinations/{name}/pause`` and ``.../resume``,
  ``POST /api/v1/reload``,
  ``POST /api/v1/drain`` and ``POST /api/v1/undrain`` (issue 14, :mod:`gateway.drain`;
  the answer is the drain's status).
* ``/console``: the operator console (issue 18, :mod:`gateway.console.site`),
  server-rendered pages signed in with the console users file; outside
  ``/api``, so its forms are not JSON but carry CSRF tokens, and the rule
  tester's upload is streamed to a file under the spool
  (:attr:`GatewaySite.upload_path`).

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
The module is the HTTP service and the assembly of its site; the parts live
beside it: the channel's limits in :mod:`gateway.httpguard`, the resources
in :mod:`gateway.httpresources`, the gateway behind them in
:mod:`gateway.httpbackend`. Their public names are re-exported here.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, Sequence

from prometheus_client import CollectorRegistry
from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site

from gateway.config.schema import ApiToken
from gateway.httpbackend import PROBE_INTERVAL, ServiceBackend, spool_probe
from gateway.httpguard import (
    IDLE_TIMEOUT,
    MAX_BODY_BYTES,
    MAX_CONNECTIONS,
    MAX_JSON_DEPTH,
    REQUEST_DEADLINE,
    GatewaySite,
    GuardedChannel,
    GuardedRequest,
)
from gateway.httpresources import (
    LOCAL_HOSTS,
    Backend,
    BadRequest,
    CommitmentsResource,
    RetrievesResource,
    DeadLettersResource,
    DestinationsResource,
    HealthResource,
    MetricsResource,
    NotFound,
    QueuesResource,
    ReadyResource,
    Refused,
    ReloadResource,
    DrainResource,
    _Guarded,
    served_hosts,
)

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
    "IDLE_TIMEOUT",
    "PROBE_INTERVAL",
    "LOCAL_HOSTS",
]

_log = Logger(namespace="gateway.http")

def build_site(
    registry: CollectorRegistry,
    backend: Backend,
    tokens: Sequence[ApiToken] | Callable[[], Sequence[ApiToken]],
    hosts: frozenset[str] = LOCAL_HOSTS,
    reactor: Any = None,
    max_connections: int = MAX_CONNECTIONS,
    request_deadline: float = REQUEST_DEADLINE,
    console: Resource | None = None,
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
    :param console: the ``/console`` resource (:class:`gateway.console.site.ConsoleResource`), or ``None``.
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
    v1.putChild(b"drain", DrainResource(backend, True))
    v1.putChild(b"undrain", DrainResource(backend, False))
    # Issue 15: Storage Commitment transactions, their detail and the retry of a dead report.
    v1.putChild(b"commitments", CommitmentsResource(backend))
    # Issue 16: C-MOVE / C-GET retrieves in the journal.
    v1.putChild(b"retrieves", RetrievesResource(backend))
    root.putChild(b"api", api)
    if console is not None:
        root.putChild(b"console", console)
    site = GatewaySite(root, reactor=reactor, max_connections=max_connections, request_deadline=request_deadline)
    upload_folder = getattr(console, "upload_folder", "")
    if console is not None and upload_folder:
        # Issue 18: the rule tester's upload is streamed to a file under the spool, with its own limit.
        site.upload_path = b"/console/rules"
        site.upload_limit = getattr(console, "upload_limit", 0)
        site.upload_folder = upload_folder
        site.upload_gate = getattr(console, "may_upload", None)
    site.noisy = False
    site.displayTracebacks = False
    return site


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


def console_resource(service: Any, backend: ServiceBackend, hosts: frozenset[str]) -> Resource | None:
    """The ``/console`` resource over the running gateway (issue 18), or ``None`` when ``console.enabled`` is off.

    Sessions are signed with ``console.session_key_file`` (shared by the
    nodes behind one load balancer), else with ``<spool>/console-key``
    (generated at first start, mode 0600).

    :raises ValueError: the session key file is unusable.
    """
    import os

    from gateway.console.backend import ServiceConsoleData
    from gateway.console.session import SessionSigner, load_or_create_key
    from gateway.console.site import ConsoleResource
    from gateway.console.users import UsersFile

    config = service.config.console
    if not config.enabled:
        return None
    spool = service.config.spool.path
    key = load_or_create_key(config.session_key_file or os.path.join(spool, "console-key"))
    resource = ConsoleResource(
        ServiceConsoleData(service, backend),
        UsersFile(config.users_file),
        SessionSigner(key, config.session_timeout, config.session_lifetime),
        hosts,
        trail=lambda: getattr(service, "audit", None),
        refresh=config.refresh,
        upload_folder=os.path.join(spool, "console-uploads"),
        upload_limit=config.upload_limit,
        settings=lambda: service.config.console,
    )
    if not config.users_file:
        _log.warn("console.users_file is not set: /console answers that no users are configured (make one with dicom-gateway console-user)")
    return resource


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
    hosts = served_hosts(config.host, config.allowed_hosts)
    site = build_site(
        metrics.registry,
        backend,
        api_tokens(service),
        hosts,
        reactor=reactor,
        console=console_resource(service, backend, hosts),
    )
    tls = None
    timeout = 10.0
    if config.tls is not None:
        from gateway.security import server_tls_settings
        from gateway.tls import ServerTLS

        tls = ServerTLS(server_tls_settings(config.tls))
        timeout = config.tls.handshake_timeout
    return HttpService(reactor, config.host, config.port, site, tls=tls, backend=backend, handshake_timeout=timeout)
