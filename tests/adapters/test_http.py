"""The HTTP endpoint: metrics, health, readiness and the guarded admin API.

Most tests render the resource tree with twisted.web's ``DummyRequest`` and
a fake :class:`~gateway.http.Backend`; the limits of the HTTP port (issue
11) are tested on a real :class:`~gateway.http.GuardedChannel` built by the
site and fed bytes over a ``StringTransport``, with a ``task.Clock`` for its
deadline; the readiness and audit tests drive
:class:`~gateway.http.ServiceBackend` over a stand-in service with an
injected spool probe (tests run as root, so permissions cannot make the
spool unwritable); one test serves a real loopback port.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody
from twisted.web.error import UnsupportedMethod
from twisted.web.http_headers import Headers
from twisted.web.resource import getChildForRequest
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from gateway.admin import Operator
from gateway.audit import AuditTrail, MemorySink
from gateway.blocking import SynchronousRunner
from gateway.config.schema import ApiToken
from gateway.http import (
    MAX_BODY_BYTES,
    BadRequest,
    HttpService,
    NotFound,
    Refused,
    ServiceBackend,
    build_site,
    served_hosts,
    spool_probe,
)
from gateway.queue.interfaces import InstanceRecord, NewEntry
from gateway.queue.memory import MemoryQueueStore

TOKEN = "s3cret-token-0123456789"
ALICE = (ApiToken("alice", TOKEN), ApiToken("bob", "another-token-9876543210"))
#: An operator acting through the API, for backend calls made directly.
OPERATOR = Operator("alice", "127.0.0.1:40404", "api")


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

    def retry(self, entry_id: int, to: str | None, operator: Operator, force: bool = False) -> Deferred[int]:
        self.calls.append(("retry", entry_id, to, operator.who) + (("force",) if force else ()))
        if entry_id == 404:
            return fail(NotFound("no dead letter 404"))
        if to == "nowhere":
            return fail(BadRequest("unknown destination 'nowhere'"))
        if to == "research" and not force:
            return fail(Refused("entry 7 not re-targeted to research: its copy is made with plan ..."))
        return succeed(entry_id + 100)

    def purge(self, entry_id: int, operator: Operator) -> Deferred[None]:
        self.calls.append(("purge", entry_id, operator.who))
        return succeed(None)

    def pause(self, destination: str, paused: bool, operator: Operator) -> Deferred[None]:
        self.calls.append(("pause" if paused else "resume", destination, operator.who, operator.address))
        if destination == "nowhere":
            return fail(NotFound("no destination 'nowhere'"))
        return succeed(None)

    def reload(self, operator: Operator) -> Deferred[bool]:
        self.calls.append(("reload", operator.who))
        return succeed(self.applied)


def render(
    site: Any,
    method: bytes,
    path: str,
    token: str | None = TOKEN,
    body: bytes = b"",
    host: str | None = "127.0.0.1:9102",
    content_type: str | None = "application/json",
    extra: dict[bytes, bytes] | None = None,
) -> DummyRequest:
    """Render one request through the tree; returns the finished DummyRequest.

    By default the request carries Alice's token, a local Host and, for
    changes, a JSON content type; each can be left out with ``None``.
    """
    path, _, query = path.partition("?")
    request = DummyRequest(path.lstrip("/").encode().split(b"/"))
    request.method = method
    request.path = path.encode()
    request.content = io.BytesIO(body)
    request.client = IPv4Address("TCP", "127.0.0.1", 40404)
    if query:
        key, _, value = query.partition("=")
        request.args = {key.encode(): [value.encode()]}
    if token is not None:
        request.requestHeaders.addRawHeader(b"authorization", f"Bearer {token}".encode())
    if host is not None:
        request.requestHeaders.addRawHeader(b"host", host.encode())
    if content_type is not None and method not in (b"GET", b"HEAD"):
        request.requestHeaders.addRawHeader(b"content-type", content_type.encode())
    for name, value in (extra or {}).items():
        request.requestHeaders.addRawHeader(name, value)
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
    """The JSON body a rendered request wrote."""
    return json.loads(b"".join(request.written))


class OpenEndpointTests(SynchronousTestCase):
    """/metrics and the health endpoints need no token and answer whatever the Host."""

    def setUp(self) -> None:
        self.registry = CollectorRegistry()
        Counter("dicom_gateway_test", "a test counter", registry=self.registry).inc()
        self.backend = FakeBackend()
        self.site = build_site(self.registry, self.backend, ALICE)

    def test_metrics_serves_the_injected_registry(self) -> None:
        """/metrics is the exposition of the injected registry, with the Prometheus content type."""
        request = render(self.site, b"GET", "/metrics", token=None)
        self.assertIn(b"dicom_gateway_test_total 1.0", b"".join(request.written))
        self.assertIn(b"text/plain", request.responseHeaders.getRawHeaders(b"content-type")[0])

    def test_healthz_is_open(self) -> None:
        """/healthz answers 200 without a token."""
        request = render(self.site, b"GET", "/healthz", token=None)
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(body_of(request), {"alive": True})

    def test_readyz_ok(self) -> None:
        """/readyz is 200 when the backend has no reason."""
        request = render(self.site, b"GET", "/readyz", token=None)
        self.assertEqual(request.responseCode, 200)

    def test_readyz_503_with_reasons(self) -> None:
        """/readyz is 503 with the JSON reasons when not ready."""
        self.backend.reasons = ["spool not writable: EIO"]
        request = render(self.site, b"GET", "/readyz", token=None)
        self.assertEqual(request.responseCode, 503)
        self.assertEqual(body_of(request), {"ready": False, "reasons": ["spool not writable: EIO"]})

    def test_open_endpoints_answer_any_host(self) -> None:
        """Prometheus and load balancers reach /metrics, /healthz and /readyz by any name (or none)."""
        for path in ("/metrics", "/healthz", "/readyz"):
            for host in ("gateway.example.org:9102", "10.1.2.3", None):
                request = render(self.site, b"GET", path, token=None, host=host)
                # DummyRequest leaves the code unset (None) when a resource does not set it: 200 on the wire.
                self.assertIn(request.responseCode, (None, 200), (path, host))
                self.assertTrue(b"".join(request.written), (path, host))


class TokenTests(SynchronousTestCase):
    """/api refuses a missing or wrong bearer token, and is never open."""

    def setUp(self) -> None:
        self.backend = FakeBackend()
        self.site = build_site(CollectorRegistry(), self.backend, ALICE)

    def test_missing_token_is_401(self) -> None:
        """No Authorization header: 401 with a Bearer challenge, and the backend is not called."""
        request = render(self.site, b"GET", "/api/v1/queues", token=None)
        self.assertEqual(request.responseCode, 401)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"www-authenticate"), [b'Bearer realm="dicom-gateway"'])
        self.assertEqual(self.backend.calls, [])

    def test_wrong_token_is_401(self) -> None:
        """A wrong token: 401 for reads and actions alike."""
        self.assertEqual(render(self.site, b"GET", "/api/v1/queues", token="guess").responseCode, 401)
        self.assertEqual(render(self.site, b"POST", "/api/v1/reload", token=TOKEN[:-1]).responseCode, 401)
        self.assertEqual(self.backend.calls, [])

    def test_right_token_is_served(self) -> None:
        """The right token reaches the backend."""
        request = render(self.site, b"GET", "/api/v1/queues")
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(body_of(request)["queues"][0]["queued"], 3)

    def test_each_token_acts_under_its_name(self) -> None:
        """An action carries the name of the token that authorised it (for the audit trail)."""
        render(self.site, b"POST", "/api/v1/reload")
        render(self.site, b"POST", "/api/v1/reload", token="another-token-9876543210")
        self.assertEqual(self.backend.calls, [("reload", "alice"), ("reload", "bob")])

    def test_no_token_configured_means_closed(self) -> None:
        """With no token at all, /api answers 401 to everything (it used to be open)."""
        site = build_site(CollectorRegistry(), self.backend, ())
        self.assertEqual(render(site, b"GET", "/api/v1/queues", token=None).responseCode, 401)
        self.assertEqual(render(site, b"GET", "/api/v1/queues", token="").responseCode, 401)
        self.assertEqual(render(site, b"POST", "/api/v1/reload", token=None).responseCode, 401)
        self.assertEqual(self.backend.calls, [])

    def test_tokens_are_read_per_request(self) -> None:
        """A callable token source is asked on each request, so a reload of http.token_file applies at once."""
        current = [ALICE[0]]
        site = build_site(CollectorRegistry(), self.backend, lambda: tuple(current))
        self.assertEqual(render(site, b"GET", "/api/v1/queues").responseCode, 200)
        current[:] = [ApiToken("carol", "carols-new-token-000000")]
        self.assertEqual(render(site, b"GET", "/api/v1/queues").responseCode, 401)


class HostTests(SynchronousTestCase):
    """/api answers only the Host names the gateway serves (DNS rebinding)."""

    def setUp(self) -> None:
        self.backend = FakeBackend()
        hosts = served_hosts("192.0.2.10", ["gw.example.org"])
        self.site = build_site(CollectorRegistry(), self.backend, ALICE, hosts)

    def test_foreign_host_is_403_even_with_the_token(self) -> None:
        """A page on attacker.example whose name now resolves to us gets 403, not the queue."""
        for host in ("attacker.example", "attacker.example:9102", "127.0.0.1.attacker.example", "localhost.evil"):
            request = render(self.site, b"GET", "/api/v1/queues", host=host)
            self.assertEqual(request.responseCode, 403, host)
            self.assertIn("error", body_of(request))
        self.assertEqual(render(self.site, b"POST", "/api/v1/reload", host="attacker.example").responseCode, 403)
        self.assertEqual(self.backend.calls, [])

    def test_missing_host_is_403(self) -> None:
        """A request without a Host header is not one the gateway serves."""
        self.assertEqual(render(self.site, b"GET", "/api/v1/queues", host=None).responseCode, 403)

    def test_served_hosts_are_answered(self) -> None:
        """The listen address, localhost, 127.0.0.1, [::1] and http.allowed_hosts, with or without a port."""
        for host in ("192.0.2.10:9102", "localhost", "LOCALHOST:9102", "127.0.0.1", "[::1]:9102", "gw.example.org"):
            self.assertEqual(render(self.site, b"GET", "/api/v1/queues", host=host).responseCode, 200, host)

    def test_foreign_origin_is_403(self) -> None:
        """A browser request from another site's page (or a sandboxed one, Origin: null) is refused; our own origin is not."""
        for origin in ("https://attacker.example", "null", "http://localhost.evil:9102", "file://"):
            self.assertEqual(
                render(self.site, b"POST", "/api/v1/reload", extra={b"origin": origin.encode()}).responseCode, 403, origin
            )
        self.assertEqual(self.backend.calls, [])
        request = render(self.site, b"POST", "/api/v1/reload", extra={b"origin": b"http://127.0.0.1:9102"})
        self.assertEqual(request.responseCode, 200)

    def test_wildcard_listen_address_adds_no_name(self) -> None:
        """Listening on 0.0.0.0 does not make "0.0.0.0" a served name."""
        self.assertEqual(served_hosts("0.0.0.0"), frozenset({"localhost", "127.0.0.1", "::1"}))


class ContentTypeTests(SynchronousTestCase):
    """Changes need Content-Type: application/json (a cross-site form cannot send it)."""

    def setUp(self) -> None:
        self.backend = FakeBackend()
        self.site = build_site(CollectorRegistry(), self.backend, ALICE)

    def test_change_without_json_content_type_is_415(self) -> None:
        """POST and DELETE without the JSON content type (or with a form's) answer 415 and change nothing."""
        for content_type in (None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
            self.assertEqual(
                render(self.site, b"POST", "/api/v1/reload", content_type=content_type).responseCode, 415, content_type
            )
            self.assertEqual(
                render(self.site, b"DELETE", "/api/v1/dead-letters/9", content_type=content_type).responseCode, 415
            )
        self.assertEqual(self.backend.calls, [])

    def test_json_with_charset_is_accepted_and_reads_need_none(self) -> None:
        """application/json with parameters is fine; GET needs no content type."""
        request = render(self.site, b"POST", "/api/v1/reload", content_type="Application/JSON; charset=utf-8")
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(render(self.site, b"GET", "/api/v1/queues", content_type=None).responseCode, 200)


class ApiTests(SynchronousTestCase):
    """The admin API's JSON and actions."""

    def setUp(self) -> None:
        self.backend = FakeBackend()
        self.site = build_site(CollectorRegistry(), self.backend, ALICE)

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
        self.assertEqual(self.backend.calls, [("retry", 7, "ris", "alice")])

    def test_refused_retarget_is_409_with_the_reason_and_force_passes(self) -> None:
        """A re-target the guard refuses answers 409 with its reason; {"force": true} reaches the backend as force."""
        refused = render(self.site, b"POST", "/api/v1/dead-letters/7/retry", body=b'{"to": "research"}')
        self.assertEqual(refused.responseCode, 409)
        self.assertIn("not re-targeted to research", body_of(refused)["error"])
        forced = render(self.site, b"POST", "/api/v1/dead-letters/7/retry", body=b'{"to": "research", "force": true}')
        self.assertEqual((forced.responseCode, body_of(forced)), (200, {"requeued": 107}))
        self.assertEqual(self.backend.calls,
                         [("retry", 7, "research", "alice"), ("retry", 7, "research", "alice", "force")])
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
        self.assertEqual(self.backend.calls, [("purge", 9, "alice")])

    def test_pause_and_resume(self) -> None:
        """POST .../destinations/{name}/pause and /resume act as the CLI's queue pause/resume, with who and from where."""
        request = render(self.site, b"POST", "/api/v1/destinations/pacs/pause")
        self.assertEqual((request.responseCode, body_of(request)), (200, {"destination": "pacs", "paused": True}))
        request = render(self.site, b"POST", "/api/v1/destinations/pacs/resume")
        self.assertEqual((request.responseCode, body_of(request)), (200, {"destination": "pacs", "paused": False}))
        self.assertEqual(
            self.backend.calls,
            [("pause", "pacs", "alice", "127.0.0.1:40404"), ("resume", "pacs", "alice", "127.0.0.1:40404")],
        )

    def test_pause_unknown_destination_is_404_and_get_is_405(self) -> None:
        """An unknown destination is 404; pausing needs POST."""
        self.assertEqual(render(self.site, b"POST", "/api/v1/destinations/nowhere/pause").responseCode, 404)
        self.assertEqual(render(self.site, b"GET", "/api/v1/destinations/pacs/pause").responseCode, 405)
        self.assertEqual(render(self.site, b"POST", "/api/v1/destinations/pacs/stop").responseCode, 404)

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


class JsonBodyTests(SynchronousTestCase):
    """Malformed or deeply nested JSON is a 400 with a JSON error, never a 500 page."""

    def setUp(self) -> None:
        self.backend = FakeBackend()
        self.site = build_site(CollectorRegistry(), self.backend, ALICE)

    def assert_json_400(self, body: bytes) -> None:
        """POST ``body`` to a retry and check the answer is a 400 with a JSON error."""
        request = render(self.site, b"POST", "/api/v1/dead-letters/7/retry", body=body)
        self.assertEqual(request.responseCode, 400, body[:40])
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertIsInstance(body_of(request)["error"], str)

    def test_malformed_json_is_400(self) -> None:
        """Truncated, trailing garbage, non-UTF-8 and wrongly shaped bodies are 400 with a JSON error."""
        for body in (b"{", b'{"to": "ris"} x', b"\xff\xfe{}", b'{"to": 5}', b'["ris"]', b"NaN-ish"):
            self.assert_json_400(body)
        self.assertEqual(self.backend.calls, [])

    def test_deeply_nested_json_is_400_not_500(self) -> None:
        """60,000 nested arrays (within the size limit) are refused before the parser recurses."""
        self.assert_json_400(b"[" * 60000 + b"]" * 60000)
        self.assert_json_400(b'{"to": ' + b'{"a": ' * 40 + b"1" + b"}" * 41)
        self.assertEqual(self.backend.calls, [])

    def test_nesting_inside_strings_is_not_counted(self) -> None:
        """Brackets inside a string are text, not nesting."""
        request = render(self.site, b"POST", "/api/v1/dead-letters/7/retry", body=b'{"to": "' + b"[" * 100 + b'"}')
        self.assertEqual(request.responseCode, 200)


class ChannelTests(SynchronousTestCase):
    """The limits of the HTTP port, enforced by the channel before any resource runs (issue 11)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.backend = FakeBackend()
        self.site = build_site(CollectorRegistry(), self.backend, ALICE, reactor=self.clock)
        self.temporary_files: list[Any] = []
        real = tempfile.TemporaryFile

        def recording(*args: Any, **kwargs: Any) -> Any:
            handle = real(*args, **kwargs)
            self.temporary_files.append(handle)
            return handle

        # twisted.web spools bodies of 100 kB or more (or of unknown length) through tempfile.TemporaryFile.
        self.patch(tempfile, "TemporaryFile", recording)

    def connect(self) -> tuple[Any, StringTransport]:
        """A channel built by the site, connected to a StringTransport."""
        address = IPv4Address("TCP", "127.0.0.1", 40000 + len(self.site.channels))
        channel = self.site.buildProtocol(address)
        transport = StringTransport(peerAddress=address, hostAddress=IPv4Address("TCP", "127.0.0.1", 9102))
        channel.makeConnection(transport)
        return channel, transport

    def head(self, method: str, path: str, *headers: str) -> bytes:
        """A request head with a local Host, Alice's token and a JSON content type."""
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1:9102", f"Authorization: Bearer {TOKEN}",
                 "Content-Type: application/json", *headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")

    def test_large_content_length_is_413_before_any_body_is_read(self) -> None:
        """Content-Length: 200 MB is refused 413 at the end of the headers: no temporary file, no resource call."""
        channel, transport = self.connect()
        channel.dataReceived(self.head("POST", "/api/v1/dead-letters/7/retry", "Content-Length: 200000000"))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "), transport.value()[:80])
        self.assertIn(b'"error"', transport.value())
        self.assertTrue(transport.disconnecting)
        sent = len(transport.value())
        channel.dataReceived(b"x" * 300_000)  # the client keeps sending: ignored
        self.assertEqual(len(transport.value()), sent)
        self.assertEqual(self.temporary_files, [])
        self.assertEqual(self.backend.calls, [])

    def test_large_body_is_refused_before_the_token_is_checked(self) -> None:
        """Without a token, a 200 MB body still stores nothing: the limit comes before authorisation."""
        channel, transport = self.connect()
        channel.dataReceived(b"POST /api/v1/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 200000000\r\n\r\n" + b"x" * 150_000)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertEqual(self.temporary_files, [])

    def test_body_at_the_limit_is_served_from_memory(self) -> None:
        """A body of exactly 64 KiB is read (into memory, not a temporary file) and reaches the resource."""
        channel, transport = self.connect()
        body = b'{"to": "ris", "pad": "' + b"p" * (MAX_BODY_BYTES - 24) + b'"}'
        self.assertEqual(len(body), MAX_BODY_BYTES)
        channel.dataReceived(self.head("POST", "/api/v1/dead-letters/7/retry", f"Content-Length: {len(body)}") + body)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "), transport.value()[:80])
        self.assertEqual(self.backend.calls, [("retry", 7, "ris", "alice")])
        self.assertEqual(self.temporary_files, [])

    def test_chunked_body_is_cut_at_the_limit(self) -> None:
        """A chunked body growing past 64 KiB is answered 413 and never reaches the resource or a file."""
        channel, transport = self.connect()
        channel.dataReceived(self.head("POST", "/api/v1/dead-letters/7/retry", "Transfer-Encoding: chunked"))
        chunk = b"%x\r\n%s\r\n" % (16384, b"[" * 16384)
        for _ in range(4):
            channel.dataReceived(chunk)
        self.assertEqual(transport.value(), b"")  # 64 KiB so far: still within the limit
        channel.dataReceived(b"1\r\n[\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "), transport.value()[:80])
        self.assertTrue(transport.disconnecting)
        channel.dataReceived(chunk + b"0\r\n\r\n")
        self.assertEqual(self.backend.calls, [])
        self.assertEqual(self.temporary_files, [])

    def test_small_chunked_body_is_served(self) -> None:
        """The control: a small chunked JSON body reaches the resource."""
        channel, transport = self.connect()
        body = b'{"to": "ris"}'
        channel.dataReceived(
            self.head("POST", "/api/v1/dead-letters/7/retry", "Transfer-Encoding: chunked")
            + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "), transport.value()[:80])
        self.assertEqual(self.backend.calls, [("retry", 7, "ris", "alice")])
        self.assertEqual(self.temporary_files, [])

    def test_at_most_64_connections(self) -> None:
        """The 65th concurrent connection is answered 503 and closed at once; a freed slot is usable again."""
        open_ones = [self.connect() for _ in range(64)]
        self.assertFalse(any(transport.disconnecting for _, transport in open_ones))
        channel, transport = self.connect()
        self.assertTrue(transport.disconnecting)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 "))
        channel.dataReceived(self.head("POST", "/api/v1/reload", "Content-Length: 0"))
        self.assertEqual(self.backend.calls, [])
        channel.connectionLost(Failure(ConnectionError("closed")))
        self.assertEqual(len(self.site.channels), 64)
        first, first_transport = open_ones[0]
        first.connectionLost(Failure(ConnectionError("closed")))
        channel, transport = self.connect()
        self.assertFalse(transport.disconnecting)
        channel.dataReceived(self.head("GET", "/api/v1/queues"))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "))

    def test_request_not_arrived_in_10_seconds_is_closed(self) -> None:
        """A client dripping header bytes (slowloris) is closed 10 s after it connected, however often it sends."""
        channel, transport = self.connect()
        for byte in b"GET /api/v1/queues HTTP/1.1\r\nHost: 1":
            if self.clock.seconds() >= 9.5:
                break
            channel.dataReceived(bytes([byte]))
            self.clock.advance(0.5)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.6)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.backend.calls, [])

    def test_deadline_does_not_cut_a_kept_alive_connection_mid_request(self) -> None:
        """Each request on a kept-alive connection gets its own 10 s; answered requests are never cut."""
        channel, transport = self.connect()
        self.clock.advance(9)
        channel.dataReceived(self.head("GET", "/api/v1/queues"))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "))
        self.clock.advance(9)
        self.assertFalse(transport.disconnecting)
        channel.dataReceived(self.head("GET", "/api/v1/queues"))
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 "), 2)
        self.clock.advance(10.1)
        self.assertTrue(transport.disconnecting)


class _Listener:
    def __init__(self, bound: bool) -> None:
        self.port = object() if bound else None
        self.listener = type("L", (), {"name": "main"})()


class _Service:
    """What ServiceBackend reads of a GatewayService."""

    def __init__(self, spool: str, bound: bool = True, ready: bool = True) -> None:
        from gateway.config.schema import RouteConfig

        self.config: Any = type(
            "C", (), {"spool": type("S", (), {"path": spool})(), "destinations": (type("D", (), {"name": "pacs"})(),),
                      "routes": (RouteConfig("r", ("pacs",)),)}
        )()
        self.blocking = SynchronousRunner()
        self.store_runner = SynchronousRunner()
        self.listeners = [_Listener(bound)]
        self.ready: Deferred[None] = Deferred()
        if ready:
            self.ready.callback(None)
        self.workers: dict[str, Any] = {}
        self.store = MemoryQueueStore()
        self.audit_sink = MemorySink()
        self.audit = AuditTrail([self.audit_sink], ae_title="GW", hostname="gw-host")
        self.reloads = 0

    def reload(self, load: Any) -> Deferred[bool]:
        self.reloads += 1
        return succeed(True)


class ReadinessTests(SynchronousTestCase):
    """ServiceBackend.readiness: a cached state (spool probed off the request path), listeners bound, recovery done."""

    def setUp(self) -> None:
        self.spool = self.mktemp()
        os.makedirs(self.spool)
        self.clock = Clock()

    def backend(self, service: Any, probe: Any = spool_probe) -> ServiceBackend:
        """A started ServiceBackend probing every 5 s of the test clock."""
        backend = ServiceBackend(service, load=lambda path: None, probe=probe, clock=self.clock, interval=5.0)
        backend.start()
        self.addCleanup(backend.stop)
        return backend

    def test_ready_with_a_real_probe(self) -> None:
        """A writable spool, bound listeners and finished recovery: no reasons."""
        backend = self.backend(_Service(self.spool))
        self.assertEqual(self.successResultOf(backend.readiness()), [])

    def test_not_ready_until_the_spool_was_probed(self) -> None:
        """Before the first probe ends, the spool is a reason (never assumed writable)."""
        backend = ServiceBackend(_Service(self.spool), load=lambda path: None, clock=self.clock)
        self.assertEqual(self.successResultOf(backend.readiness()), ["spool not checked yet"])

    def test_readyz_flood_does_not_touch_the_disk(self) -> None:
        """1000 /readyz requests run no probe: the spool is probed every 5 s by the clock, not per request."""
        probes: list[str] = []
        backend = self.backend(_Service(self.spool), probe=probes.append)
        site = build_site(CollectorRegistry(), backend, ALICE)
        for _ in range(1000):
            self.assertEqual(render(site, b"GET", "/readyz", token=None).responseCode, 200)
        self.assertEqual(probes, [self.spool])
        self.clock.advance(5)
        self.assertEqual(probes, [self.spool, self.spool])

    def test_unwritable_spool_turns_readyz_503_without_naming_paths(self) -> None:
        """A probe failing with EIO makes /readyz 503 with the error's words but not the spool's path; it recovers."""
        broken = [True]

        def probe(root: str) -> None:
            if broken[0]:
                raise OSError(5, "Input/output error", os.path.join(root, ".readyz-probe"))

        backend = self.backend(_Service(self.spool), probe=probe)
        site = build_site(CollectorRegistry(), backend, ALICE)
        request = render(site, b"GET", "/readyz", token=None)
        self.assertEqual(request.responseCode, 503)
        self.assertEqual(body_of(request)["reasons"], ["spool not writable: Input/output error"])
        self.assertNotIn(self.spool.encode(), b"".join(request.written))
        broken[0] = False
        self.clock.advance(5)
        self.assertEqual(render(site, b"GET", "/readyz", token=None).responseCode, 200)

    def test_unbound_listener_and_recovery_are_reasons(self) -> None:
        """An unbound listener and unfinished recovery are both reported."""
        backend = self.backend(_Service(self.spool, bound=False, ready=False))
        reasons = self.successResultOf(backend.readiness())
        self.assertIn("listener main not bound", reasons)
        self.assertIn("start-up recovery not finished", reasons)

    def test_missing_configuration_is_a_reason_not_a_crash(self) -> None:
        """With no configuration loaded, readiness says so instead of dereferencing it."""
        service = _Service(self.spool)
        service.config = None
        reasons = self.successResultOf(self.backend(service).readiness())
        self.assertIn("configuration not loaded", reasons)

    def test_worker_whose_journal_refuses_outcomes_is_a_reason(self) -> None:
        """A worker reporting a journal error (ENOSPC, HARDENING F15) makes /readyz name it, without paths."""
        from gateway.forward_types import WorkerStatus

        service = _Service(self.spool)
        status = WorkerStatus("pacs", "closed", 0, "", 0, journal_error="OSError: database or disk is full")
        service.workers = {"pacs": type("W", (), {"status": lambda self: status})()}
        reasons = self.successResultOf(self.backend(service).readiness())
        self.assertEqual(reasons, ["destination pacs: journal not writable, not dequeuing "
                                   "(OSError: database or disk is full)"])
        status = WorkerStatus("pacs", "closed", 0, "", 0, journal_error="[Errno 28] No space left: '/srv/spool/queue.sqlite'")
        reasons = self.successResultOf(self.backend(service).readiness())
        self.assertNotIn("/srv", reasons[0])

    def test_probe_never_follows_a_planted_symbolic_link(self) -> None:
        """A link planted at the probe's name is removed, not written through: its target stays intact."""
        target = os.path.join(self.mktemp())
        with open(target, "w") as f:
            f.write("precious\n")
        os.symlink(target, os.path.join(self.spool, ".readyz-probe"))
        spool_probe(self.spool)
        with open(target) as f:
            self.assertEqual(f.read(), "precious\n")
        self.assertFalse(os.path.lexists(os.path.join(self.spool, ".readyz-probe")))


def _dead_letter(store: MemoryQueueStore, instance_id: str) -> int:
    """Journal one instance for pacs and dead-letter it; returns its entry id."""
    record = InstanceRecord(
        instance_id=instance_id, path="/nonexistent/i1.dcm", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid="1.2.3.4", transfer_syntax_uid="1.2.840.10008.1.2.1", size=1, sha256="x",
        received_at=0.0, correlation_id="c", study_instance_uid="1.2.3", patient_id="P",
        accession_number="A", calling_ae_title="CT", source_address="10.0.0.1:1",
    )
    (entry_id,) = store.add_instance(record, [NewEntry("r", "pacs")], 0.0, 0).entry_ids
    store.lease("pacs", 1, 0.0, 60)
    store.dead_letter(entry_id, "0xA900", 0.0)
    return entry_id


class AuditTests(SynchronousTestCase):
    """Every action taken through the API is in the audit trail: who, from where, which entries."""

    def setUp(self) -> None:
        self.service = _Service(self.mktemp())
        self.backend = ServiceBackend(self.service, load=lambda path: None, clock=Clock())
        self.site = build_site(CollectorRegistry(), self.backend, ALICE)

    def records(self) -> list[dict[str, Any]]:
        """The audit records written so far, as JSON."""
        return [json.loads(r.to_json()) for r in self.service.audit_sink.records]

    def test_retry_purge_pause_resume_reload_are_audited(self) -> None:
        """Each action writes one record naming the token's holder, the client address and the entry or destination."""
        first = _dead_letter(self.service.store, "i1")
        self.assertEqual(render(self.site, b"POST", f"/api/v1/dead-letters/{first}/retry").responseCode, 200)
        self.assertEqual(render(self.site, b"POST", "/api/v1/destinations/pacs/pause").responseCode, 200)
        self.assertTrue(self.service.store.stats(0.0)["pacs"].paused)
        self.assertEqual(render(self.site, b"POST", "/api/v1/destinations/pacs/resume").responseCode, 200)
        self.assertEqual(render(self.site, b"POST", "/api/v1/reload").responseCode, 200)
        records = self.records()
        self.assertEqual([r["extra"]["action"] for r in records], ["retry", "pause", "resume", "reload"])
        for record in records:
            self.assertEqual(record["participants"][0],
                             {"user_id": "alice", "network_access_point": "127.0.0.1:40404", "requestor": True})
            self.assertEqual(record["extra"]["via"], "api")
        self.assertEqual(records[0]["extra"]["entry_ids"], str(first))
        self.assertEqual((records[0]["event_id"], records[0]["action"]), ("110103", "U"))
        self.assertEqual(records[1]["extra"]["destination"], "pacs")

    def test_purge_and_retarget_and_refusals_are_audited(self) -> None:
        """A purge (action D), a re-target with its target, and a refused retry (minor failure) are all recorded."""
        first = _dead_letter(self.service.store, "i1")
        render(self.site, b"POST", f"/api/v1/dead-letters/{first}/retry", body=b'{"to": "pacs"}',
               token="another-token-9876543210")
        render(self.site, b"POST", "/api/v1/dead-letters/999/retry")
        second = _dead_letter(self.service.store, "i2")
        render(self.site, b"DELETE", f"/api/v1/dead-letters/{second}")
        retarget, refused, purge = self.records()
        self.assertEqual((retarget["extra"]["action"], retarget["extra"]["to"], retarget["participants"][0]["user_id"]),
                         ("retarget", "pacs", "bob"))
        self.assertEqual((refused["outcome"], refused["extra"]["entry_ids"]), (4, "999"))
        self.assertEqual((purge["action"], purge["extra"]["entry_ids"]), ("D", str(second)))


class StartupWarningTests(SynchronousTestCase):
    """HttpService warns loudly when it serves a non-loopback address without TLS."""

    def start(self, host: str, tls: Any = None) -> list[dict[str, Any]]:
        """Start an HttpService on ``host`` over a memory reactor; returns its critical log events."""
        events: list[dict[str, Any]] = []
        service = HttpService(MemoryReactorClock(), host, 0, build_site(CollectorRegistry(), FakeBackend(), ALICE), tls=tls)
        service.log = Logger(namespace="gateway.http", observer=events.append)
        service.startService()
        self.addCleanup(service.stopService)
        return [e for e in events if e["log_level"].name == "critical"]

    def test_non_loopback_without_tls_is_critical(self) -> None:
        """0.0.0.0 and a LAN address without TLS log a critical line naming the address and the fix."""
        for host in ("0.0.0.0", "192.0.2.10", "::"):
            (event,) = self.start(host)
            self.assertIn("http.tls", event["log_format"])
            self.assertEqual(event["host"], host)

    def test_loopback_or_tls_is_quiet(self) -> None:
        """Loopback addresses, or any address with TLS, log no such warning."""
        for host in ("127.0.0.1", "::1", "localhost"):
            self.assertEqual(self.start(host), [])
        from gateway.tls import ServerTLS, ServerTLSSettings
        from tests.support.certs import material

        m = material()
        self.assertEqual(self.start("0.0.0.0", tls=ServerTLS(ServerTLSSettings(m.server, m.server_key))), [])


class LoopbackTests(TestCase):
    """HttpService serves the site on a real loopback port."""

    async def _get(self, url: bytes, headers: Any = None) -> tuple[int, bytes]:
        response = await Agent(reactor).request(b"GET", url, headers)
        return response.code, await readBody(response)

    def test_serves_metrics_on_port_zero(self) -> None:
        """Port 0 binds a free port; /metrics answers over TCP; /api needs the token."""
        registry = CollectorRegistry()
        Counter("dicom_gateway_loopback", "x", registry=registry).inc(2)
        service = HttpService(reactor, "127.0.0.1", 0, build_site(registry, FakeBackend(), ALICE))
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
            code, _ = await self._get(
                f"http://127.0.0.1:{port}/api/v1/queues".encode(), Headers({b"authorization": [f"Bearer {TOKEN}".encode()]})
            )
            self.assertEqual(code, 200)

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
        self.service = service
        self.backend = ServiceBackend(service, load=lambda path: None, wall=lambda: 1.0)

    def test_identified_copy_to_a_de_identifying_destination_is_refused_then_forced(self) -> None:
        """to='res' fails with Refused naming the plans; force=True requeues it there with its own plan."""
        failure = self.failureResultOf(self.backend.retry(self.dead, "res", OPERATOR), Refused)
        self.assertIn("not re-targeted to res", str(failure.value))
        self.assertIn("routes to res: research (plan ", str(failure.value))
        self.assertEqual(self.store.get(self.dead).destination, "pacs")
        new_id = self.successResultOf(self.backend.retry(self.dead, "res", OPERATOR, force=True))
        self.assertEqual(self.store.get(new_id).destination, "res")
        refused, forced = [json.loads(r.to_json()) for r in self.service.audit_sink.records]
        self.assertEqual((refused["outcome"], refused["extra"]["to"]), (4, "res"))
        self.assertIn("not re-targeted to res", refused["description"])
        self.assertEqual((forced["outcome"], forced["participants"][0]["user_id"]), (0, "alice"))
        self.assertIn("forced past the re-target guard", forced["description"])

    def test_same_plan_destination_needs_no_force(self) -> None:
        """to='copy', which route 'clinical' feeds unmorphed, is allowed as is."""
        new_id = self.successResultOf(self.backend.retry(self.dead, "copy", OPERATOR))
        self.assertEqual(self.store.get(new_id).destination, "copy")
