"""Tests for the DICOMweb destination metrics of :class:`gateway.observe.GatewayMetrics` (issue 17)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from twisted.trial.unittest import SynchronousTestCase

from gateway import events
from gateway.observe import GatewayMetrics, dicomweb_code_label


class DicomWebMetricsTests(SynchronousTestCase):
    """``dicomweb_responses_total{destination, code}``, ``dicomweb_sent_bytes_total`` and ``dicomweb_send_seconds``."""

    def setUp(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry)

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def test_code_labels_are_bounded(self) -> None:
        """Known statuses keep their number, other 4xx/5xx fold to their class, no answer is 'none', the rest 'other'."""
        self.assertEqual([dicomweb_code_label(c) for c in (200, 202, 409, 413, 429, 418, 599, 0, 302)],
                         ["200", "202", "409", "413", "429", "4xx", "5xx", "none", "other"])

    def test_an_answer_moves_the_three_metrics(self) -> None:
        """One 202 of 3 instances, 4096 bytes in 0.2 s: counted by code, bytes added, latency observed."""
        self.metrics.observe(events.DicomWebAnswered("cloud", 202, 3, 4096, 0.2))
        self.metrics.observe(events.DicomWebAnswered("cloud", 0, 3, 100, 1.0))
        self.assertEqual(self.value("dicom_gateway_dicomweb_responses_total", destination="cloud", code="202"), 1)
        self.assertEqual(self.value("dicom_gateway_dicomweb_responses_total", destination="cloud", code="none"), 1)
        self.assertEqual(self.value("dicom_gateway_dicomweb_sent_bytes_total", destination="cloud"), 4196)
        self.assertEqual(self.value("dicom_gateway_dicomweb_send_seconds_count", destination="cloud"), 2)
        self.assertEqual(self.value("dicom_gateway_dicomweb_send_seconds_bucket", destination="cloud", le="0.25"), 1)
