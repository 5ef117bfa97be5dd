"""``dicom_gateway_tls_handshake_failures_total{listener,reason}`` (HARDENING T04-T15, decision 11)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from twisted.trial.unittest import SynchronousTestCase

from gateway.observe import OTHER, GatewayMetrics
from gateway.tls import HANDSHAKE_FAILURE_REASONS


class TLSFailureMetricTests(SynchronousTestCase):
    """Failed handshakes are counted per listener under a bounded reason label."""

    def setUp(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry, version="9.9")

    def value(self, listener: str, reason: str) -> float | None:
        """The counter's value for one label pair (``None`` when the series does not exist)."""
        return self.registry.get_sample_value(
            "dicom_gateway_tls_handshake_failures_total", {"listener": listener, "reason": reason}
        )

    def test_each_reason_is_counted_per_listener(self) -> None:
        """expired twice and revoked once on one listener, unknown_ca on another: each series holds its count."""
        self.metrics.tls_handshake_failed("tls", "expired")
        self.metrics.tls_handshake_failed("tls", "expired")
        self.metrics.tls_handshake_failed("tls", "revoked")
        self.metrics.tls_handshake_failed("tls2", "unknown_ca")
        self.assertEqual((self.value("tls", "expired"), self.value("tls", "revoked"), self.value("tls2", "unknown_ca")),
                         (2, 1, 1))
        self.assertIsNone(self.value("tls2", "expired"))

    def test_unknown_reason_is_folded_into_other(self) -> None:
        """A label outside the bounded set (say, OpenSSL text) becomes ``other``; no new series appears."""
        self.metrics.tls_handshake_failed("tls", "some OpenSSL text; 1234")
        self.assertEqual(self.value("tls", OTHER), 1)
        self.assertNotIn(b"OpenSSL text", generate_latest(self.registry))

    def test_every_label_of_the_bounded_set_is_kept(self) -> None:
        """Each reason gateway.tls can report is its own label value, including the T06/T11/T14/T15 ones."""
        for reason in HANDSHAKE_FAILURE_REASONS:
            self.metrics.tls_handshake_failed("tls", reason)
        for reason in HANDSHAKE_FAILURE_REASONS:
            self.assertEqual(self.value("tls", reason), 1, reason)
        self.assertTrue({"expired", "not_yet_valid", "revoked", "wrong_key_usage", "weak_key", "weak_signature",
                         "no_certificate", "protocol_version", "timeout", "renegotiation", "oversized",
                         "unknown_ca", "other"} <= HANDSHAKE_FAILURE_REASONS)

    def test_exposition_has_the_contract_name_and_help(self) -> None:
        """The text exposition names the counter dicom_gateway_tls_handshake_failures_total with a HELP line."""
        self.metrics.tls_handshake_failed("tls", "timeout")
        text = generate_latest(self.registry).decode()
        self.assertIn("# HELP dicom_gateway_tls_handshake_failures_total", text)
        self.assertIn('dicom_gateway_tls_handshake_failures_total{listener="tls",reason="timeout"} 1.0', text)
