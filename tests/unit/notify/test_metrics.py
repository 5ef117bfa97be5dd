"""Tests for the notification metrics (issue 18): StudyCompleted counted by route, sink and event."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from twisted.trial.unittest import SynchronousTestCase

from gateway import events
from gateway.observe import GatewayMetrics


class StudyMetricsTests(SynchronousTestCase):
    """``studies_completed_total``, ``study_notifications_total`` and ``study_completion_seconds``."""

    def test_completion_counted(self) -> None:
        """A complete and a forced amendment: counted by route/how, per sink/event, and their durations observed."""
        registry = CollectorRegistry()
        metrics = GatewayMetrics(registry, wall=lambda: 0.0)
        metrics.observe(events.StudyCompleted("ct", "complete", False, False, ("hook", "ris"), 12.0))
        metrics.observe(events.StudyCompleted("ct", "amended", True, True, ("hook",), 7200.0))
        metrics.observe(events.StudyCompleted("old", "closed", True, False, (), 5.0))
        value = registry.get_sample_value
        self.assertEqual(value("dicom_gateway_studies_completed_total", {"route": "ct", "how": "complete"}), 1.0)
        self.assertEqual(value("dicom_gateway_studies_completed_total", {"route": "ct", "how": "forced"}), 1.0)
        self.assertEqual(value("dicom_gateway_studies_completed_total", {"route": "old", "how": "closed"}), 1.0)
        self.assertEqual(value("dicom_gateway_study_notifications_total", {"sink": "hook", "event": "complete"}), 1.0)
        self.assertEqual(value("dicom_gateway_study_notifications_total", {"sink": "hook", "event": "amended"}), 1.0)
        self.assertEqual(value("dicom_gateway_study_notifications_total", {"sink": "ris", "event": "complete"}), 1.0)
        self.assertEqual(value("dicom_gateway_study_completion_seconds_count", {"route": "ct"}), 2.0)
        self.assertEqual(value("dicom_gateway_study_completion_seconds_sum", {"route": "ct"}), 7212.0)
        self.assertIsNone(value("dicom_gateway_study_completion_seconds_count", {"route": "old"}))
