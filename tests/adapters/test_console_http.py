"""The console served by the real :class:`~gateway.http.HttpService` on a free loopback port (issue 18).

The pages read a fake ConsoleData (the real one is tested with the
gateway by the browser tests); what is real here is everything between the
browser and the pages: TCP, the guarded channel, cookies across requests,
the form posts, the rule tester's upload streamed to a file under the spool
and its 413 above the limit, and the wiring :func:`gateway.http.console_resource`
does from the configuration (key file, users file, upload folder).
"""

from __future__ import annotations

import io
import os
import stat
import sys
import types
from typing import Any
from urllib.parse import urlencode

from prometheus_client import CollectorRegistry
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from gateway.config.schema import ConsoleConfig
from gateway.http import HttpService, build_site, console_resource
from tests.unit.console.fakes import FakeConsoleData, multipart, parse_html
from tests.unit.console.support import PASSWORDS, ConsoleHarness


class _Browser:
    """An Agent that keeps the console's cookies."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.agent = Agent(reactor)
        self.cookies: dict[str, str] = {}

    async def request(self, method: str, path: str, body: bytes | None = None, content_type: str = "") -> tuple[int, dict[str, list[bytes]], bytes]:
        headers = Headers()
        if self.cookies:
            headers.addRawHeader(b"cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items()).encode("ascii"))
        if content_type:
            headers.addRawHeader(b"content-type", content_type.encode("ascii"))
        producer = FileBodyProducer(io.BytesIO(body)) if body is not None else None
        response = await self.agent.request(method.encode("ascii"), (self.base + path).encode("ascii"), headers, producer)
        data = await readBody(response)
        for value in response.headers.getRawHeaders(b"set-cookie", []):
            name, _, rest = value.decode("ascii").partition("=")
            cookie = rest.split(";", 1)[0]
            if "max-age=0" in value.decode("ascii").lower():
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = cookie
        return response.code, {k.decode(): v for k, v in response.headers.getAllRawHeaders()}, data

    async def post_form(self, path: str, fields: Any) -> tuple[int, dict[str, list[bytes]], bytes]:
        return await self.request("POST", path, urlencode(fields, doseq=True).encode("ascii"), "application/x-www-form-urlencoded")


class ConsoleOverTcpTests(TestCase):
    """The console on a real loopback port."""
    def setUp(self) -> None:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        self.h = ConsoleHarness(folder, upload_limit=512 * 1024)
        # The real HTTP service with the real threaded upload parsing (not the synchronous one of the unit tests).
        from twisted.internet.threads import deferToThread

        self.h.console.run_blocking = deferToThread
        service = HttpService(reactor, "127.0.0.1", 0, self.h.site)
        service.startService()
        self.addCleanup(service.stopService)
        assert service.port is not None
        self.browser = _Browser(f"http://127.0.0.1:{service.port.getHost().port}")

    async def _sign_in(self, name: str) -> None:
        code, _, body = await self.browser.request("GET", "/console/login")
        self.assertEqual(code, 200)
        csrf = parse_html(body).one("form", id="login").one("input", name="csrf").attrs["value"]
        code, headers, _ = await self.browser.post_form("/console/login", {"user": name, "password": PASSWORDS[name], "csrf": csrf})
        self.assertEqual(code, 303)
        self.assertEqual(headers["Location"], [b"/console/"])

    def test_sign_in_act_and_upload(self) -> None:
        """Over TCP: sign in, pause, a form without CSRF refused, a streamed upload checked, 413 above the limit."""
        async def run() -> None:
            code, headers, _ = await self.browser.request("GET", "/console/")
            self.assertEqual((code, headers["Location"]), (303, [b"/console/login"]))
            await self._sign_in("otto")
            code, _, body = await self.browser.request("GET", "/console/")
            self.assertEqual(code, 200)
            page = parse_html(body)
            self.assertEqual(page.by_id("whoami").text(), "otto (operator)")
            csrf = page.one("tr", data_destination="pacs").one("form", class_="pause").one("input", name="csrf").attrs["value"]
            code, _, _ = await self.browser.post_form("/console/destinations/pacs/pause", {"csrf": csrf})
            self.assertEqual(code, 303)
            self.assertIn(("pause", "pacs", True), [c[:3] for c in self.h.data.calls])
            # A form without the token is refused.
            code, _, body = await self.browser.post_form("/console/destinations/pacs/resume", {})
            self.assertEqual(code, 403)
            self.assertIsNotNone(parse_html(body).by_id("csrf-refused"))
            # An upload above the API's in-memory body limit, below the console's own.
            payload = os.urandom(200 * 1024)
            body, content_type = multipart({"csrf": csrf}, payload)
            code, _, answer = await self.browser.request("POST", "/console/rules", body, content_type)
            self.assertEqual(code, 200)
            self.assertEqual(self.h.data.checked[-1][1], payload)
            self.assertEqual([li.attrs["data-route"] for li in parse_html(answer).by_id("matches").all("li")], ["ct"])
            self.assertEqual(os.listdir(self.h.upload_folder), [])
            # Above the limit: 413 from the Content-Length, nothing checked.
            body, content_type = multipart({"csrf": csrf}, os.urandom(600 * 1024))
            code, _, _ = await self.browser.request("POST", "/console/rules", body, content_type)
            self.assertEqual(code, 413)
            self.assertEqual(len(self.h.data.checked), 1)
            self.assertEqual(os.listdir(self.h.upload_folder), [])

        return Deferred.fromCoroutine(run())


class ConsoleResourceWiringTests(TestCase):
    """:func:`gateway.http.console_resource` builds ``/console`` from the configuration."""

    def setUp(self) -> None:
        # The real ServiceConsoleData is another module of issue 18 (gateway.console.backend);
        # here a stand-in module records how it is built.
        self.built: list[tuple[Any, Any]] = []
        module = types.ModuleType("gateway.console.backend")

        def make(service: Any, backend: Any) -> FakeConsoleData:
            self.built.append((service, backend))
            return FakeConsoleData()

        module.ServiceConsoleData = make  # type: ignore[attr-defined]
        saved = sys.modules.get("gateway.console.backend")
        sys.modules["gateway.console.backend"] = module
        self.addCleanup(lambda: sys.modules.__setitem__("gateway.console.backend", saved) if saved else sys.modules.pop("gateway.console.backend", None))
        self.spool = os.path.abspath(self.mktemp())
        os.makedirs(self.spool)

    def service(self, console: ConsoleConfig) -> Any:
        config = types.SimpleNamespace(console=console, spool=types.SimpleNamespace(path=self.spool))
        return types.SimpleNamespace(config=config, audit=None)

    def test_generated_key_users_file_and_upload_folder(self) -> None:
        """console_resource generates the key, reads the users file, sets the upload folder and limit."""
        users = os.path.join(self.spool, "users")
        service = self.service(ConsoleConfig(users_file=users, upload_limit=2048, refresh=7.0))
        backend = object()
        resource = console_resource(service, backend, frozenset({"127.0.0.1"}))  # type: ignore[arg-type]
        assert resource is not None
        self.assertEqual(self.built, [(service, backend)])
        key = os.path.join(self.spool, "console-key")
        self.assertEqual(stat.S_IMODE(os.stat(key).st_mode), 0o600)
        self.assertEqual(resource.users.path, users)
        self.assertEqual(resource.refresh, 7.0)
        site = build_site(CollectorRegistry(), object(), (), console=resource)
        self.assertEqual(site.upload_path, b"/console/rules")
        self.assertEqual(site.upload_limit, 2048)
        self.assertEqual(site.upload_folder, os.path.join(self.spool, "console-uploads"))
        # The same key again at the next start: sessions survive a restart.
        again = console_resource(service, backend, frozenset({"127.0.0.1"}))  # type: ignore[arg-type]
        session = resource.signer.new("ada", "fp", 0.0)
        self.assertEqual(again.signer.decode(resource.signer.encode(session), 1.0), session)

    def test_reload_applies_users_file_and_durations(self) -> None:
        """After a reload, the console reads the new users file and session durations (read per request)."""
        service = self.service(ConsoleConfig(users_file=os.path.join(self.spool, "old-users")))
        resource = console_resource(service, object(), frozenset({"127.0.0.1"}))  # type: ignore[arg-type]
        assert resource is not None
        from tests.unit.console.fakes import Client
        from tests.unit.console.support import _LINES

        from twisted.internet.defer import maybeDeferred

        resource.run_blocking = maybeDeferred  # the password check in line, so the in-memory client gets its answer
        site = build_site(CollectorRegistry(), object(), (), console=resource)
        self.assertEqual(Client(site).get("/console/login").status, 503)  # no such file: closed
        new_users = os.path.join(self.spool, "new-users")
        with open(new_users, "w") as handle:
            handle.write("\n".join(_LINES.values()) + "\n")
        service.config.console = ConsoleConfig(users_file=new_users, session_timeout=60.0, session_lifetime=120.0, refresh=9.0)
        response = Client(site).sign_in("ada", PASSWORDS["ada"])
        self.assertEqual(response.status, 303)
        self.assertEqual((resource.signer.timeout, resource.signer.lifetime, resource.refresh), (60.0, 120.0, 9.0))

    def test_disabled(self) -> None:
        """console.enabled false serves no /console."""
        self.assertIsNone(console_resource(self.service(ConsoleConfig(enabled=False)), object(), frozenset()))  # type: ignore[arg-type]
        self.assertIsNone(build_site(CollectorRegistry(), object(), ()).resource.children.get(b"console"))
