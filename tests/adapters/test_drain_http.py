"""Drain through the HTTP API and ``/readyz`` (issue 14), on the resource tree with a fake clock.

The backend is the real :class:`~gateway.httpbackend.ServiceBackend` over the
small service stand-in of :mod:`tests.adapters.test_http`, with a real
:class:`~gateway.drain.Drain` on a :class:`~twisted.internet.task.Clock`.
"""

from __future__ import annotations

import json
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.drain import Drain
from gateway.http import ServiceBackend, build_site
from tests.adapters.test_http import ALICE, _Service, body_of, render


class DrainApiTests(SynchronousTestCase):
    """POST /api/v1/drain and /undrain, and what /readyz answers meanwhile."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.service = _Service(self.mktemp())
        self.service.config.node = "gw-a"
        self.workers: list[Any] = []
        self.service.drain = Drain(self.clock, lambda: 10.0, lambda: self.workers)
        self.backend = ServiceBackend(self.service, load=lambda path: None, probe=lambda root: None, clock=self.clock)
        self.backend.start()
        self.addCleanup(self.backend.stop)
        self.site = build_site(CollectorRegistry(), self.backend, ALICE)

    def records(self) -> list[dict[str, Any]]:
        """The audit records written so far, as JSON."""
        return [json.loads(r.to_json()) for r in self.service.audit_sink.records]

    def test_readyz_names_the_node_when_ready(self) -> None:
        """A ready node answers 200 and names itself (config key ``node``)."""
        request = render(self.site, b"GET", "/readyz", token=None)
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(body_of(request), {"ready": True, "node": "gw-a"})

    def test_drain_fails_readyz_at_once_and_is_audited(self) -> None:
        """POST /api/v1/drain: 200 with the timeline; /readyz 503 'draining' at once (no clock advance); one audit record."""
        request = render(self.site, b"POST", "/api/v1/drain")
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(body_of(request), {"draining": True, "refusing": False, "grace_seconds": 10.0,
                                            "forwarding_drained": True, "node": "gw-a"})
        ready = render(self.site, b"GET", "/readyz", token=None)
        self.assertEqual(ready.responseCode, 503)
        self.assertEqual(body_of(ready), {"ready": False, "reasons": ["draining"], "node": "gw-a"})
        (record,) = self.records()
        self.assertEqual(record["extra"]["action"], "drain")
        self.assertEqual(record["participants"][0]["user_id"], "alice")

    def test_refusing_after_the_grace_and_undrain_reverses_it(self) -> None:
        """After the grace the node refuses; POST /api/v1/undrain makes it ready and accepting again, audited."""
        render(self.site, b"POST", "/api/v1/drain")
        self.clock.advance(10)
        self.assertTrue(self.service.drain.refusing())
        request = render(self.site, b"POST", "/api/v1/undrain")
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(body_of(request)["draining"], False)
        self.assertFalse(self.service.drain.refusing())
        self.assertEqual(render(self.site, b"GET", "/readyz", token=None).responseCode, 200)
        self.assertEqual([r["extra"]["action"] for r in self.records()], ["drain", "undrain"])

    def test_drain_needs_the_token(self) -> None:
        """Without the bearer token the API refuses and the node keeps serving."""
        request = render(self.site, b"POST", "/api/v1/drain", token=None)
        self.assertEqual(request.responseCode, 401)
        self.assertFalse(self.service.drain.draining)
        self.assertEqual(self.records(), [])

    def test_drain_is_a_post(self) -> None:
        """GET /api/v1/drain changes nothing (405)."""
        request = render(self.site, b"GET", "/api/v1/drain")
        self.assertEqual(request.responseCode, 405)
        self.assertFalse(self.service.drain.draining)
