"""The front door's metric and audit sinks (issue 14): refused PROXY connections and the drain gauge."""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway import events
from gateway.audit import AuditTrail, MemorySink
from gateway.observe import OTHER, GatewayMetrics
from gateway.security import AuditObserver


class ProxyRefusedMetricTests(SynchronousTestCase):
    """``dicom_gateway_proxy_protocol_refused_total{listener,reason}`` and ``dicom_gateway_draining``."""

    def setUp(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry, version="9.9")

    def value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """A sample's value (``None`` when the series does not exist)."""
        return self.registry.get_sample_value(name, labels or {})

    def test_refusals_are_counted_per_listener_and_bounded_reason(self) -> None:
        """Each ProxyRefused event counts once under its reason; a reason outside the set is 'other'."""
        self.metrics.observe(events.ProxyRefused("dicom", "10.0.0.9:1", "untrusted", "not trusted"))
        self.metrics.observe(events.ProxyRefused("dicom", "127.0.0.1:2", "missing", "no header"))
        self.metrics.observe(events.ProxyRefused("dicom", "127.0.0.1:3", "missing", "no header"))
        self.metrics.observe(events.ProxyRefused("dicom", "127.0.0.1:4", "anything else", "x"))
        name = "dicom_gateway_proxy_protocol_refused_total"
        self.assertEqual(self.value(name, {"listener": "dicom", "reason": "untrusted"}), 1)
        self.assertEqual(self.value(name, {"listener": "dicom", "reason": "missing"}), 2)
        self.assertEqual(self.value(name, {"listener": "dicom", "reason": OTHER}), 1)

    def test_draining_gauge_follows_the_drain(self) -> None:
        """dicom_gateway_draining is 1 after DrainChanged(True) and 0 after DrainChanged(False)."""
        self.assertEqual(self.value("dicom_gateway_draining"), 0)
        self.metrics.observe(events.DrainChanged(True))
        self.assertEqual(self.value("dicom_gateway_draining"), 1)
        self.metrics.observe(events.DrainChanged(False))
        self.assertEqual(self.value("dicom_gateway_draining"), 0)


class ProxyRefusedAuditTests(SynchronousTestCase):
    """A refused PROXY connection is a Security Alert (Node Authentication), aggregated per address."""

    def setUp(self) -> None:
        self.sink = MemorySink()
        self.clock = Clock()
        self.trail = AuditTrail([self.sink], ae_title="GW", hostname="gw-host", clock=self.clock, wall=lambda: 0.0)
        self.observer = AuditObserver(self.trail)

    def records(self) -> list[dict[str, object]]:
        """The records written so far, as JSON."""
        return [json.loads(r.to_json()) for r in self.sink.records]

    def test_a_refusal_is_a_security_alert_naming_the_real_peer(self) -> None:
        """One refusal: a Security Alert (110113) of type Node Authentication (110126, DCM) with the connection's address."""
        self.observer.observe(events.ProxyRefused("dicom", "10.0.0.9:5555", "untrusted", "10.0.0.9 is not trusted"))
        (record,) = self.records()
        self.assertEqual(record["event_id"], "110113")
        self.assertEqual(record["event_type"], "Node Authentication")
        self.assertEqual(record["disposition"], "proxy_refused")
        self.assertEqual(record["extra"], {"listener": "dicom", "reason": "untrusted"})
        self.assertEqual(record["participants"][0]["network_access_point"], "10.0.0.9:5555")  # type: ignore[index]

    def test_a_flood_from_one_address_is_aggregated(self) -> None:
        """100 refusals from one address in a window: the first record, then one summary counting the rest."""
        for port in range(100):
            self.observer.observe(events.ProxyRefused("dicom", f"10.0.0.9:{port}", "missing", "no header"))
        self.assertEqual(len(self.records()), 1)
        self.clock.advance(3600)
        records = self.records()
        self.assertEqual(len(records), 2)
        self.assertIn("99", json.dumps(records[1]))
