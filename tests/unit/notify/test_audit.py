"""Tests for the audit of notifications (issue 18): a delivery to a sink is Data Export (PS3.15 A.5.3.5)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.config.schema import Hl7Sink, WebhookSink
from gateway.events import DeadLettered, Delivered
from gateway.queue.outcome import DeadLetterKind
from gateway.security import AuditObserver
from tests.unit.test_audit import MemorySink, _Entry, trail


class SinkAuditTests(SynchronousTestCase):
    """Sinks have no AE title: the record names their URL (query left out) or host:port."""

    def setUp(self) -> None:
        """An audit observer knowing a webhook and an HL7 sink."""
        self.sink = MemorySink()
        destinations = {
            "hook": WebhookSink("hook", "https://ris.example/hook?key=s3cret", "/k"),
            "ris": Hl7Sink("ris", "ris.example", 2575),
        }
        self.observer = AuditObserver(trail(self.sink), lambda: destinations)

    def test_webhook_delivery_is_data_export(self) -> None:
        """A delivered notification: 110106 exported, the URL without its query as access point."""
        self.observer.observe(Delivered(_Entry("hook"), 0.1, ""))
        record = self.sink.records[0]
        self.assertEqual((record.event_id, record.disposition), ("110106", "exported"))
        self.assertEqual(record.participants[1].network_access_point, "https://ris.example/hook")
        self.assertNotIn("s3cret", repr(record))

    def test_hl7_delivery_names_host_and_port(self) -> None:
        """An HL7 sink: host:port."""
        self.observer.observe(Delivered(_Entry("ris"), 0.1, ""))
        self.assertEqual(self.sink.records[0].participants[1].network_access_point, "ris.example:2575")

    def test_dead_notification(self) -> None:
        """A dead-lettered notification is audited as a serious failure, without crashing on the sink."""
        self.observer.observe(DeadLettered(_Entry("hook"), DeadLetterKind.REFUSED, "webhook HTTP 400"))
        self.assertEqual(self.sink.records[0].outcome, 8)
