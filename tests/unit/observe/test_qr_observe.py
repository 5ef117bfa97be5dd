"""The Query/Retrieve audit records and metrics (issue 16), from the events through the gateway's sinks.

Audit (:class:`AuditObserver`): a C-FIND answered is a Query (PS3.15
A.5.3.10, 110112) whose participant object is the SOP class with the query
identifier base64 in ParticipantObjectQuery; a C-MOVE/C-GET answered is DICOM
Instances Transferred (110104, action R) from the gateway to the move
destination or the requester; a refused one a Security Alert. Metrics
(:class:`GatewayMetrics`): ``queries_total{outcome}``, ``query_results_total``,
``query_source_failures_total{source}``, ``query_latency_seconds{source}``,
``retrieves_total{verb,outcome}``, ``retrieve_suboperations_total{result}``.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway import events
from gateway.audit import AuditTrail, MemorySink
from gateway.config.schema import ModalityConfig
from gateway.observe import GatewayMetrics
from gateway.security import AuditObserver

STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
IMPLICIT_LE = "1.2.840.10008.1.2"
#: A query identifier's bytes (PatientName "DOE^JOHN", Implicit VR LE): PHI.
IDENTIFIER = b"\x10\x00\x10\x00\x08\x00\x00\x00DOE^JOHN"


def query(outcome: str = "success", **overrides: Any) -> events.QueryAnswered:
    """A C-FIND answered on l1 by WS1."""
    values: dict[str, Any] = dict(
        listener="l1",
        calling_ae_title="WS1",
        peer="10.0.0.5:4000",
        sop_class_uid=STUDY_FIND,
        level="STUDY",
        identifier=IDENTIFIER,
        transfer_syntax=IMPLICIT_LE,
        outcome=outcome,
        status=0x0000,
        results=3,
    )
    values.update(overrides)
    return events.QueryAnswered(**values)


def retrieve(verb: str = "move", outcome: str = "success", **overrides: Any) -> events.RetrieveAnswered:
    """A C-MOVE (to ws1) or C-GET answered on l1 for WS1."""
    values: dict[str, Any] = dict(
        listener="l1",
        calling_ae_title="WS1",
        peer="10.0.0.5:4000",
        verb=verb,
        sop_class_uid=STUDY_MOVE if verb == "move" else STUDY_GET,
        level="STUDY",
        outcome=outcome,
        status=0x0000,
        completed=200,
        destination="ws1" if verb == "move" else "",
        move_destination="WS_1" if verb == "move" else "",
        sources=("archive1",),
        study_uids=("1.2.3.4",),
    )
    values.update(overrides)
    return events.RetrieveAnswered(**values)


class QRAuditTests(SynchronousTestCase):
    """Each Q/R event the audit trail records, and its PS3.15 shape."""

    def setUp(self) -> None:
        self.sink = MemorySink()
        self.trail = AuditTrail([self.sink], ae_title="GW", hostname="gw-host", clock=Clock(), wall=lambda: 0.0)
        modality = ModalityConfig(name="ws1", ae_title="WS_1", host="10.0.0.31", port=104)
        self.observer = AuditObserver(self.trail, dict, lambda: {"ws1": modality})

    def records(self) -> list[dict[str, Any]]:
        """The records written so far, as JSON."""
        return [json.loads(r.to_json()) for r in self.sink.records]

    def test_query_is_a_query_record_with_its_keys(self) -> None:
        """A.5.3.10: event 110112, action E, the requester marked, the SOP class with the identifier base64."""
        self.observer.observe(query())
        (record,) = self.records()
        self.assertEqual((record["event_id"], record["action"], record["outcome"]), ("110112", "E", 0))
        requester = record["participants"][0]
        self.assertEqual((requester["user_id"], requester["requestor"]), ("WS1", True))
        (obj,) = record["objects"]
        self.assertEqual((obj["kind"], obj["id"], obj["transfer_syntax"]), ("sop_class", STUDY_FIND, IMPLICIT_LE))
        self.assertEqual(base64.b64decode(obj["query"]), IDENTIFIER)
        self.assertEqual((record["extra"]["level"], record["extra"]["results"]), ("STUDY", "3"))

    def test_partial_query_names_the_failed_source(self) -> None:
        """A source left out: minor failure, the source named in the record."""
        self.observer.observe(query("partial", failed_sources=("archive2",), reason="archive2: timeout"))
        (record,) = self.records()
        self.assertEqual((record["outcome"], record["extra"]["failed_sources"]), (4, "archive2"))
        self.assertIn("archive2: timeout", record["description"])

    def test_refused_query_is_a_security_alert(self) -> None:
        """A requester that may not query: Security Alert, Use of Restricted Function; no keys recorded."""
        self.observer.observe(query("refused", status=0xA700, results=0, reason="calling AE title not in query.allowed_ae_titles"))
        (record,) = self.records()
        self.assertEqual((record["event_id"], record["event_type"]), ("110113", "Use of Restricted Function"))
        self.assertNotIn("objects", record)

    def test_move_is_instances_transferred_to_the_destination(self) -> None:
        """A.5.3.7: 110104 action R; the gateway the source, the modality the destination, the study an object."""
        self.observer.observe(retrieve())
        (record,) = self.records()
        self.assertEqual((record["event_id"], record["action"], record["outcome"], record["disposition"]), ("110104", "R", 0, "moved"))
        users = [(p["user_id"], p.get("role", ""), p.get("requestor", False)) for p in record["participants"]]
        self.assertEqual(users, [("GW", "Source Role ID", False), ("WS1", "", True), ("WS_1", "Destination Role ID", False)])
        self.assertEqual(record["participants"][2]["network_access_point"], "10.0.0.31:104")
        self.assertEqual(record["objects"], [{"kind": "study", "id": "1.2.3.4"}])
        self.assertEqual(record["extra"]["completed"], "200")

    def test_get_with_failures_goes_to_the_requester(self) -> None:
        """C-GET: the requester is the destination; failures make a minor failure with the count of failed UIDs."""
        self.observer.observe(retrieve("get", "warning", status=0xB000, completed=5, failed=2, failed_uids=("1.2.5", "1.2.6")))
        (record,) = self.records()
        self.assertEqual((record["outcome"], record["disposition"], record["extra"]["failed_uids"]), (4, "retrieved", "2"))
        self.assertEqual(record["participants"][1]["role"], "Destination Role ID")

    def test_unknown_destination_is_a_security_alert(self) -> None:
        """A move destination the caller may not name (0xA801): Security Alert naming the AE asked for."""
        self.observer.observe(retrieve(outcome="refused", status=0xA801, completed=0, destination="", move_destination="EVIL"))
        (record,) = self.records()
        self.assertEqual(record["event_id"], "110113")
        self.assertIn("EVIL", [p["user_id"] for p in record["participants"]])


class QRMetricsTests(SynchronousTestCase):
    """The Q/R metrics move at their events; their series exist at zero before."""

    def setUp(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry, ["WS1"], wall=lambda: 1000.0, version="9.9")

    def value(self, name: str, **labels: str) -> float | None:
        """One sample's value."""
        return self.registry.get_sample_value(name, labels)

    def test_series_exist_at_zero(self) -> None:
        """Outcomes, verbs, sub-operation results and declared sources are there before any event."""
        self.metrics.declare([], [], [], query_sources=["archive1"])
        self.assertEqual(self.value("dicom_gateway_queries_total", outcome="limited"), 0)
        self.assertEqual(self.value("dicom_gateway_retrieves_total", verb="get", outcome="cancelled"), 0)
        self.assertEqual(self.value("dicom_gateway_retrieve_suboperations_total", result="warning"), 0)
        self.assertEqual(self.value("dicom_gateway_query_source_failures_total", source="archive1"), 0)
        self.assertEqual(self.value("dicom_gateway_query_latency_seconds_count", source="archive1"), 0)

    def test_query_events(self) -> None:
        """A query counts its outcome and results; a source its latency, and its failure when not ok."""
        self.metrics.observe(query("partial", results=7))
        self.metrics.observe(events.QuerySourceAnswered("archive1", True, 7, 0.2))
        self.metrics.observe(events.QuerySourceAnswered("archive2", False, 0, 30.0, "timeout"))
        self.assertEqual(self.value("dicom_gateway_queries_total", outcome="partial"), 1)
        self.assertEqual(self.value("dicom_gateway_query_results_total"), 7)
        self.assertEqual(self.value("dicom_gateway_query_latency_seconds_count", source="archive1"), 1)
        self.assertEqual(self.value("dicom_gateway_query_latency_seconds_bucket", source="archive1", le="0.25"), 1)
        self.assertEqual(self.value("dicom_gateway_query_source_failures_total", source="archive2"), 1)
        self.assertIsNone(self.value("dicom_gateway_query_source_failures_total", source="archive1"))

    def test_retrieve_events(self) -> None:
        """A retrieve counts its verb and outcome and its sub-operations by result; an unknown outcome is ``other``."""
        self.metrics.observe(retrieve("move", "warning", completed=198, failed=2, warning=1))
        self.metrics.observe(retrieve("get", "strange", completed=3))
        self.assertEqual(self.value("dicom_gateway_retrieves_total", verb="move", outcome="warning"), 1)
        self.assertEqual(self.value("dicom_gateway_retrieves_total", verb="get", outcome="other"), 1)
        self.assertEqual(self.value("dicom_gateway_retrieve_suboperations_total", result="completed"), 201)
        self.assertEqual(self.value("dicom_gateway_retrieve_suboperations_total", result="failed"), 2)
        self.assertEqual(self.value("dicom_gateway_retrieve_suboperations_total", result="warning"), 1)
