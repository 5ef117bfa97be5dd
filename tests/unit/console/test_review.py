"""Review of issue 18's console: what the reactor thread may not do, and what the pages must refuse."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.console.support import ConsoleHarness


class UsersFileOffTheReactorTests(SynchronousTestCase):
    """The users file is stat'ed, read and parsed by ``run_blocking``, never on the reactor thread."""

    def setUp(self) -> None:
        self.folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.folder)
        self.h = ConsoleHarness(self.folder)
        self.in_runner = False
        self.stats: list[bool] = []

        def stat(path: str) -> os.stat_result:
            self.stats.append(self.in_runner)
            return os.stat(path)

        self.h.console.users._stat = stat

        def runner(f: Callable[[], Any]) -> "Deferred[Any]":
            self.in_runner = True
            try:
                return maybeDeferred(f)
            finally:
                self.in_runner = False

        self.h.console.run_blocking = runner

    def test_every_file_access_is_in_the_runner(self) -> None:
        """Sign in and read pages: the users file is looked at only from within run_blocking."""
        client = self.h.signed_in("ada")
        self.assertEqual(client.get("/console/").status, 200)
        self.assertEqual(client.get("/console/find").status, 200)
        self.assertTrue(self.stats)
        self.assertNotIn(False, self.stats)

    def test_a_held_refresh_holds_the_answer(self) -> None:
        """While the refresh has not run the request waits (no page from the reactor's own file read)."""
        held: list[Deferred[Any]] = []
        calls: list[Callable[[], Any]] = []

        def later(f: Callable[[], Any]) -> "Deferred[Any]":
            d: Deferred[Any] = Deferred()
            held.append(d)
            calls.append(f)
            return d

        self.h.console.run_blocking = later
        from twisted.internet.testing import StringTransport
        from twisted.internet.address import IPv4Address

        channel = self.h.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /console/login HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.stats, [])
        calls[0]()  # what the thread does
        held[0].callback(None)
        self.assertIn(b"200", transport.value().split(b"\r\n", 1)[0])
        self.assertIn(b'id="login"', transport.value())


class UploadPlacesTests(SynchronousTestCase):
    """Parallel rule-test uploads cannot fill the spool: at most MAX_UPLOADS are under way."""

    def setUp(self) -> None:
        self.folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.folder)
        self.h = ConsoleHarness(self.folder, upload_limit=100000)
        self.client = self.h.signed_in("vera")

    def start(self) -> Any:
        """An upload whose headers and the first half of its body are sent; (channel, transport)."""
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        from tests.unit.console.fakes import multipart

        body, content_type = multipart({"csrf": self.client.csrf("/console/rules")}, b"x" * 50000)
        head = (f"POST /console/rules HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: gw_console={self.client.cookies['gw_console']}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n").encode("ascii")
        channel = self.h.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        channel.makeConnection(transport)
        channel.dataReceived(head + body[: len(body) // 2])
        return channel, transport

    def test_a_third_upload_at_once_is_503_until_one_ends(self) -> None:
        """Two uploads arriving: a third is refused (503) before its body is stored; one cut, a new one is taken."""
        from gateway.console.site import MAX_UPLOADS

        self.assertEqual(MAX_UPLOADS, 2)
        first = self.start()
        second = self.start()
        self.assertEqual((first[1].value(), second[1].value()), (b"", b""))
        third = self.start()
        self.assertIn(b" 503 ", third[1].value().split(b"\r\n", 1)[0])
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        first[0].connectionLost(Failure(ConnectionDone()))
        fourth = self.start()
        self.assertEqual(fourth[1].value(), b"")
        for channel, _ in (second, third, fourth):
            channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.h.console.uploads, 0)
