"""The HTTP endpoint: metrics, health, readiness and the token-protected admin API.

Most tests render the resource tree with twisted.web's ``DummyRequest`` and
a fake :class:`~gateway.http.Backend`; the readiness tests drive
:class:`~gateway.http.ServiceBackend` over a stand-in service with an
injected spool probe (tests run as root, so permissions cannot make the
spool unwritable); one test serves a real loopback port.
"""

from __future__ import annotations

import io
import json
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody
from twisted.web.error import UnsupportedMethod
from twisted.web.resource import getChildForRequest
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from gateway.blocking import SynchronousRunner
from gateway.http import BadRequest, HttpService, NotFound, Refused, ServiceBackend, build_site


class FakeBackend:
    """Records calls and answers from canned data."""

    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.calls: list[tuple[Any, ...]] = []
        self.applied = True

    def readiness(self) -> Deferred[list[str]]:
        return succeed(self.reasons)

    def queues(self) -> Deferred[list[dict[str, Any]]]:
        self.calls.append(("queues",))
        return succeed([{"destination": "pacs", "queued": 3, "dead": 1}])

    def dead_letters(self, destination: str | None) -> Deferred[list[dict[str, Any]]]:
        self.calls.append(("dead_letters", destination))
        return succeed([{"entry_id": 7, "destination": destination or "pacs"}])

    def retry(self, entry_id: int, to: str | None, force: bool = False) -> Deferred[int]:
        self.calls.append(("retry", entry_id, to) + (("force",) if force else ()))
        if entry_id == 404:
            return fail(NotFound("no dead letter 404"))
        if to == "nowhere":
            return fail(BadRequest("unknown destination 'nowhere'"))
        if to == "research" and not force:
            return fail(Refused("entry 7 not re-targeted to research: its copy is made with plan ..."))
        return succeed(entry_id + 100)

    def purge(self, entry_id: int) -> Deferred[None]:
        self.calls.append(("purge", entry_id))
        return succeed(None)

    def reload(self) -> Deferred[bool]:
        self.calls.append(("reload",))
        return succeed(self.applied)


def render(site: Any, method: bytes, path: str, token: str | None = None, body: bytes = b"") -> DummyRequest:
    """Render one request through the tree; returns the finished DummyRequest."""
    path, _, query = path.partition("?")
    request = DummyRequest(path.lstrip("/").encode().split(b"/"))
    request.method = method
    request.path = path.encode()
    request.content = io.BytesIO(body)
    if query:
        key, _, value = query.partition("=")
        request.args = {key.encode(): [value.encode()]}
    if token is not None:
        request.requestHeaders.addRawHeader(b"authorization", f"Bearer {token}".encode())
    resource = getChildForRequest(site.resource, request)
    try:
        result = resource.render(request)
    except UnsupportedMethod:
        # twisted.web.server.Request turns this into 405 Method Not Allowed.
        request.setResponseCode(405)
        result = b""
    if result is not NOT_DONE_YET:
        request.write(result)
        request.finish()
    return request


def body_of(request: DummyRequest) -> Any:
    return json.loads(b"".join(request.written))


class OpenEndpointTests(SynchronousTestCase):
    """/metrics and the health endpoints need no token."""

    def setUp(self) -> None:
        self.registry = CollectorRegistry()
        Counter("dicom_gateway_test", "a test counter", registry=self.registry).inc()
        self.backend = FakeBackend()
        self.site = build_site(self.registry, self.backend, token="s3cret")

    def test_metrics_serves_the_injected_registry(self) -> None:
        """/metrics is the exposition of the injected registry, with the Prometheus content type."""
        request = render(self.site, b"GET", "/metrics")
        self.assertIn(b"dicom_gateway_test_total 1.0", b"".join(request.written))
        self.assertIn(b"text/plain", request.responseHeaders.getRawHeaders(b"content-type")[0])

    def test_healthz_is_open(self) -> None:
        """/healthz answers 200 without a token."""
        request = render(self.site, b"GET", "/healthz")
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(body_of(request), {"alive": True})

    def test_readyz_ok(self) -> None:
        """/readyz is 200 when the backend has no reason."""
        request = render(self.site, b"GET", "/readyz")
        self.assertEqual(request.responseCode, 200)

    def test_readyz_503_with_reasons(self) -> None:
        """/readyz is 503 with the JSON reasons when not ready."""
        self.backend.reasons = ["spool not writable: EIO"]
        request = render(self.site, b"GET", "/readyz")
        self.assertEqual(request.responseCode, 503)
        self.assertEqual(body_of(request), {"ready": False, "reasons": ["spool not writable: EIO"]})


class TokenTests(SynchronousTestCase):
    """/api refuses a missing or wrong bearer token."""

    def setUp(self) -> None:
        self.backend = FakeBackend()
        self.site = build_site(CollectorRegistry(), self.backend, token="s3cret")

    def test_missing_token_is_401(self) -> None:
        """No Authorization header: 401, and the backend is not called."""
        request = render(self.site, b"GET", "/api/v1/queues")
        self.assertEqual(request.responseCode, 401)
        self.assertEqual(self.backend.calls, [])

    def test_wrong_token_is_401(self) -> None:
        """A wrong token: 401 for reads and actions alike."""
        self.assertEqual(render(self.site, b"GET", "/api/v1/queues", token="guess").responseCode, 401)
        self.assertEqual(render(self.site, b"POST", "/api/v1/reload", token="s3cre").responseCode, 401)
        self.assertEqual(self.backend.calls, [])

    def test_right_token_is_served(self) -> None:
        """The right token reaches the backend."""
        request = render(self.site, b"GET", "/api/v1/queues", token="s3cret")
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(body_of(request)["queues"][0]["queued"], 3)

    def test_no_token_configured_means_open(self) -> None:
        """With an empty token the API needs no header."""
        site = build_site(CollectorRegistry(), self.backend, token="")
        self.assertEqual(render(site, b"GET", "/api/v1/queues").responseCode, 200)


class ApiTests(SynchronousTestCase):
    """The admin API's JSON and actions."""

    def setUp(self) -> None:
        self.backend = FakeBackend()
        self.site = build_site(CollectorRegistry(), self.backend)

    def test_dead_letters_filter_by_destination(self) -> None:
        """?destination= is passed to the backend."""
        request = render(self.site, b"GET", "/api/v1/dead-letters?destination=ris")
        self.assertEqual(body_of(request)["dead_letters"][0]["destination"], "ris")
        self.assertEqual(self.backend.calls, [("dead_letters", "ris")])

    def test_retry_with_target(self) -> None:
        """POST .../{id}/retry with {"to": ...} requeues and answers the new id."""
        request = render(self.site, b"POST", "/api/v1/dead-letters/7/retry", body=b'{"to": "ris"}')
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(body_of(request), {"requeued": 107})
        self.assertEqual(self.backend.calls, [("retry", 7, "ris")])

    def test_refused_retarget_is_409_with_the_reason_and_force_passes(self) -> None:
        """A re-target the guard refuses answers 409 with its reason; {"force": true} reaches the backend as force."""
        refused = render(self.site, b"POST", "/api/v1/dead-letters/7/retry", body=b'{"to": "research"}')
        self.assertEqual(refused.responseCode, 409)
        self.assertIn("not re-targeted to research", body_of(refused)["error"])
        forced = render(self.site, b"POST", "/api/v1/dead-letters/7/retry", body=b'{"to": "research", "force": true}')
        self.assertEqual((forced.responseCode, body_of(forced)), (200, {"requeued": 107}))
        self.assertEqual(self.backend.calls, [("retry", 7, "research"), ("retry", 7, "research", "force")])
        bad = render(self.site, b"POST", "/api/v1/dead-letters/7/retry", body=b'{"to": "research", "force": "yes"}')
        self.assertEqual(bad.responseCode, 400)

    def test_retry_unknown_entry_is_404_and_bad_target_400(self) -> None:
        """A missing entry answers 404; an unknown destination 400; a non-JSON body 400."""
        self.assertEqual(render(self.site, b"POST", "/api/v1/dead-letters/404/retry").responseCode, 404)
        self.assertEqual(
            render(self.site, b"POST", "/api/v1/dead-letters/7/retry", body=b'{"to": "nowhere"}').responseCode, 400
        )
        self.assertEqual(render(self.site, b"POST", "/api/v1/dead-letters/7/retry", body=b"{").responseCode, 400)

    def test_delete_purges(self) -> None:
        """DELETE .../{id} purges the entry."""
        request = render(self.site, b"DELETE", "/api/v1/dead-letters/9")
        self.assertEqual(body_of(request), {"purged": 9})
        self.assertEqual(self.backend.calls, [("purge", 9)])

    def test_reload_refused_is_409(self) -> None:
        """A refused reload answers 409 with applied false."""
        self.backend.applied = False
        request = render(self.site, b"POST", "/api/v1/reload")
        self.assertEqual(request.responseCode, 409)
        self.assertEqual(body_of(request), {"applied": False})

    def test_get_on_reload_is_not_allowed(self) -> None:
        """Reload is POST only (a GET cannot trigger it)."""
        request = render(self.site, b"GET", "/api/v1/reload")
        self.assertEqual(request.responseCode, 405)
        self.assertEqual(self.backend.calls, [])


class _Listener:
    def __init__(self, bound: bool) -> None:
        self.port = object() if bound else None
        self.listener = type("L", (), {"name": "main"})()


class _Service:
    """What ServiceBackend reads of a GatewayService."""

    def __init__(self, spool: str, bound: bool = True, ready: bool = True) -> None:
        self.config = type("C", (), {"spool": type("S", (), {"path": spool})(), "destinations": ()})()
        self.blocking = SynchronousRunner()
        self.store_runner = SynchronousRunner()
        self.listeners = [_Listener(bound)]
        self.ready: Deferred[None] = Deferred()
        if ready:
            self.ready.callback(None)
        self.workers: dict[str, Any] = {}


class ReadinessTests(SynchronousTestCase):
    """ServiceBackend.readiness: spool writable (injected fault), listeners bound, recovery done."""

    def setUp(self) -> None:
        self.spool = self.mktemp()
        import os

        os.makedirs(self.spool)

    def test_ready_with_a_real_probe(self) -> None:
        """A writable spool, bound listeners and finished recovery: no reasons."""
        backend = ServiceBackend(_Service(self.spool), load=lambda path: None)
        self.assertEqual(self.successResultOf(backend.readiness()), [])

    def test_unwritable_spool_turns_readyz_503(self) -> None:
        """A probe that fails with EIO makes /readyz answer 503 naming the spool."""

        def broken(root: str) -> None:
            raise OSError(5, "Input/output error")

        backend = ServiceBackend(_Service(self.spool), load=lambda path: None, probe=broken)
        request = render(build_site(CollectorRegistry(), backend), b"GET", "/readyz")
        self.assertEqual(request.responseCode, 503)
        self.assertIn("spool not writable", body_of(request)["reasons"][0])

    def test_unbound_listener_and_recovery_are_reasons(self) -> None:
        """An unbound listener and unfinished recovery are both reported."""
        backend = ServiceBackend(_Service(self.spool, bound=False, ready=False), load=lambda path: None)
        reasons = self.successResultOf(backend.readiness())
        self.assertIn("listener main not bound", reasons)
        self.assertIn("start-up recovery not finished", reasons)

    def test_worker_whose_journal_refuses_outcomes_is_a_reason(self) -> None:
        """A worker reporting a journal error (ENOSPC, HARDENING F15) makes /readyz name it."""
        from gateway.forward import WorkerStatus

        service = _Service(self.spool)
        status = WorkerStatus("pacs", "closed", 0, "", 0, journal_error="OSError: database or disk is full")
        service.workers = {"pacs": type("W", (), {"status": lambda self: status})()}
        reasons = self.successResultOf(ServiceBackend(service, load=lambda path: None).readiness())
        self.assertEqual(reasons, ["destination pacs: journal not writable, not dequeuing "
                                   "(OSError: database or disk is full)"])


class LoopbackTests(TestCase):
    """HttpService serves the site on a real loopback port."""

    async def _get(self, url: bytes, headers: Any = None) -> tuple[int, bytes]:
        response = await Agent(reactor).request(b"GET", url, headers)
        return response.code, await readBody(response)

    def test_serves_metrics_on_port_zero(self) -> None:
        """Port 0 binds a free port; /metrics answers over TCP."""
        registry = CollectorRegistry()
        Counter("dicom_gateway_loopback", "x", registry=registry).inc(2)
        service = HttpService(reactor, "127.0.0.1", 0, build_site(registry, FakeBackend(), "t"))
        service.startService()
        self.addCleanup(service.stopService)
        assert service.port is not None
        port = service.port.getHost().port

        async def check() -> None:
            code, body = await self._get(f"http://127.0.0.1:{port}/metrics".encode())
            self.assertEqual(code, 200)
            self.assertIn(b"dicom_gateway_loopback_total 2.0", body)
            code, _ = await self._get(f"http://127.0.0.1:{port}/api/v1/queues".encode())
            self.assertEqual(code, 401)

        return Deferred.fromCoroutine(check())


class RetargetGuardBackendTests(SynchronousTestCase):
    """ServiceBackend.retry re-targets an entry's copy only where a route sends that plan, unless forced (issue 11)."""

    def setUp(self) -> None:
        from gateway.config.schema import RouteConfig
        from gateway.prepare import NO_MORPH
        from gateway.queue.interfaces import NewEntry
        from gateway.queue.memory import MemoryQueueStore
        from tests.unit.morph.helpers import plan_of
        from tests.unit.queue.test_store import make_record

        self.store = MemoryQueueStore()
        (self.dead,) = self.store.add_instance(make_record("i1"), [NewEntry("clinical", "pacs", plan=NO_MORPH)], 0.0, 0.0).entry_ids
        self.store.dead_letter(self.dead, "0xA900", 0.0)
        routes = (
            RouteConfig("clinical", ("pacs", "copy")),
            RouteConfig("research", ("res",), morph=plan_of("- deidentify: basic\n")),
        )
        destinations = tuple(type("D", (), {"name": n})() for n in ("pacs", "copy", "res"))
        service = _Service(self.mktemp())
        service.config = type("C", (), {"destinations": destinations, "routes": routes})()
        service.store = self.store
        self.backend = ServiceBackend(service, load=lambda path: None, wall=lambda: 1.0)

    def test_identified_copy_to_a_de_identifying_destination_is_refused_then_forced(self) -> None:
        """to='res' fails with Refused naming the plans; force=True requeues it there with its own plan."""
        failure = self.failureResultOf(self.backend.retry(self.dead, "res"), Refused)
        self.assertIn("not re-targeted to res", str(failure.value))
        self.assertIn("routes to res: research (plan ", str(failure.value))
        self.assertEqual(self.store.get(self.dead).destination, "pacs")
        new_id = self.successResultOf(self.backend.retry(self.dead, "res", force=True))
        self.assertEqual(self.store.get(new_id).destination, "res")

    def test_same_plan_destination_needs_no_force(self) -> None:
        """to='copy', which route 'clinical' feeds unmorphed, is allowed as is."""
        new_id = self.successResultOf(self.backend.retry(self.dead, "copy"))
        self.assertEqual(self.store.get(new_id).destination, "copy")
