"""``/api/v1/commitments``: Storage Commitment transactions through the admin API (issue 15).

The tree is rendered with twisted.web's ``DummyRequest`` (as in
``test_http``) over a :class:`~gateway.http.ServiceBackend` whose stand-in
service holds the in-memory journal filled by
:func:`tests.unit.test_commitment_admin.fill`: one transaction reported,
one owed, one dead.
"""

from __future__ import annotations

import json
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.http import ServiceBackend, build_site
from gateway.queue.commitments import TransactionState
from tests.adapters.test_http import ALICE, _Service, body_of, render
from tests.unit.test_commitment_admin import T0, fill


class _Worker:
    """Stands in for the report worker: counts pokes."""

    def __init__(self) -> None:
        self.pokes = 0

    def poke(self) -> None:
        """Look now."""
        self.pokes += 1


class CommitmentApiTests(SynchronousTestCase):
    """GET the list and one transaction, POST a retry; every retry audited."""

    def setUp(self) -> None:
        self.service: Any = _Service(self.mktemp())
        fill(self.service.store)
        self.service.commitment_worker = _Worker()
        backend = ServiceBackend(self.service, load=lambda path: None, clock=Clock(), wall=lambda: T0)
        self.site = build_site(CollectorRegistry(), backend, ALICE)

    def records(self) -> list[dict[str, Any]]:
        """The audit records written so far, as JSON."""
        return [json.loads(r.to_json()) for r in self.service.audit_sink.records]

    def test_list_with_summary(self) -> None:
        """The summary (owed, overdue, dead) and every transaction, newest first."""
        request = render(self.site, b"GET", "/api/v1/commitments")
        self.assertEqual(request.responseCode, 200)
        body = body_of(request)
        self.assertEqual((body["summary"]["owed"], body["summary"]["overdue"], body["summary"]["dead"]), (1, 1, 1))
        self.assertEqual([r["transaction_uid"] for r in body["commitments"]], ["2.25.2", "2.25.1", "2.25.3"])

    def test_list_of_one_state_and_a_bad_state(self) -> None:
        """``?state=dead`` keeps the dead one; an unknown state is 400."""
        body = body_of(render(self.site, b"GET", "/api/v1/commitments?state=dead"))
        self.assertEqual([r["transaction_uid"] for r in body["commitments"]], ["2.25.3"])
        self.assertEqual(render(self.site, b"GET", "/api/v1/commitments?state=lost").responseCode, 400)

    def test_one_transaction(self) -> None:
        """``GET /api/v1/commitments/{uid}``: per instance and destination; an unknown or malformed UID is 404."""
        request = render(self.site, b"GET", "/api/v1/commitments/2.25.2")
        self.assertEqual(request.responseCode, 200)
        instances = {i["sop_instance_uid"]: i for i in body_of(request)["instances_detail"]}
        self.assertEqual(sorted(d["destination"] for d in instances["1.2.3.1"]["destinations"]), ["pacs", "vna"])
        self.assertEqual(render(self.site, b"GET", "/api/v1/commitments/9.9.9").responseCode, 404)
        self.assertEqual(render(self.site, b"GET", "/api/v1/commitments/..%2f").responseCode, 404)

    def test_retry_a_dead_report_is_audited_and_pokes_the_worker(self) -> None:
        """POST retry of the dead report: 200, owed again, the worker poked, one audit record naming the token's holder."""
        request = render(self.site, b"POST", "/api/v1/commitments/2.25.3/retry")
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(body_of(request)["requeued"]["state"], "open")
        self.assertEqual(self.service.store.get_transaction("2.25.3").state, TransactionState.OPEN)
        self.assertEqual(self.service.commitment_worker.pokes, 1)
        (record,) = self.records()
        self.assertEqual((record["event_id"], record["action"], record["outcome"]), ("110103", "U", 0))
        self.assertEqual(record["extra"]["transaction_uid"], "2.25.3")
        self.assertEqual((record["extra"]["action"], record["participants"][0]["user_id"]), ("commitment_retry", "alice"))

    def test_retry_refusals(self) -> None:
        """A report still owed is 409, an unknown one 404; both audited as minor failures, nothing poked."""
        self.assertEqual(render(self.site, b"POST", "/api/v1/commitments/2.25.2/retry").responseCode, 409)
        self.assertEqual(render(self.site, b"POST", "/api/v1/commitments/9.9.9/retry").responseCode, 404)
        self.assertEqual([r["outcome"] for r in self.records()], [4, 4])
        self.assertEqual(self.service.commitment_worker.pokes, 0)

    def test_token_required(self) -> None:
        """Like every /api resource: no token, 401."""
        self.assertEqual(render(self.site, b"GET", "/api/v1/commitments", token=None).responseCode, 401)
