"""Tests for :func:`gateway.send.fhir.classify`: the FHIR sink's outcome table, status by status."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from gateway.config.schema import FhirSink, RetryConfig
from gateway.dicomweb.client_auth import Answer
from gateway.queue.outcome import DeadLetter, DeadLetterKind, Delivered, DestinationDown, Retry
from gateway.send.fhir import classify

SINK = FhirSink(name="fhir", url="http://f/r4", retry=RetryConfig(max_delay=120.0))
NOW = 1_700_000_000.0


def answer(code: int, body: bytes = b"", **headers: str) -> Answer:
    """An answer with lower-case header names."""
    return Answer(code, {k.replace("_", "-"): v for k, v in headers.items()}, body)


class ClassifyTests(SynchronousTestCase):
    """One assertion per row of the module docstring's table."""

    def test_200_and_201_are_delivered(self) -> None:
        """Updated and created are both delivered."""
        for code in (200, 201):
            self.assertEqual(classify(answer(code), "PUT", SINK, NOW), Delivered(0))

    def test_other_2xx_is_not_delivered(self) -> None:
        """A 204 or 202 is not the conditional update's answer (R4 http.html#cond-update): retried, not taken as stored."""
        for code in (202, 204):
            self.assertIsInstance(classify(answer(code), "PUT", SINK, NOW), Retry)

    def test_401_403_are_the_callers(self) -> None:
        """Credentials refused: the caller decides (one more try, then the destination down)."""
        self.assertEqual(classify(answer(401), "PUT", SINK, NOW), "auth")
        self.assertEqual(classify(answer(403), "PUT", SINK, NOW), "auth")

    def test_412_is_a_dead_letter(self) -> None:
        """Several matches: a refused dead letter saying so."""
        outcome = classify(answer(412), "PUT", SINK, NOW)
        self.assertIsInstance(outcome, DeadLetter)
        self.assertEqual(outcome.kind, DeadLetterKind.REFUSED)
        self.assertIn("several", outcome.reason)

    def test_unavailable_is_the_destination_down_with_retry_after(self) -> None:
        """502/503/504: DestinationDown with the Retry-After (an HTTP-date too), capped by max_delay."""
        self.assertEqual(classify(answer(503, retry_after="30"), "PUT", SINK, NOW),
                         DestinationDown("PUT: HTTP 503, retry after 30s", after=30.0))
        self.assertEqual(classify(answer(502), "PUT", SINK, NOW), DestinationDown("PUT: HTTP 502"))
        dated = classify(answer(504, retry_after="Tue, 14 Nov 2023 22:14:20 GMT"), "PUT", SINK, NOW)
        self.assertEqual(dated.after, 60.0)
        self.assertEqual(classify(answer(503, retry_after="99999"), "PUT", SINK, NOW).after, 120.0)

    def test_retry_later(self) -> None:
        """408, 429, 500 and 501: retries; 429's Retry-After honoured."""
        self.assertEqual(classify(answer(429, retry_after="5"), "PUT", SINK, NOW), Retry("PUT: HTTP 429, retry after 5s", after=5.0))
        for code in (408, 500, 501):
            self.assertEqual(classify(answer(code), "PUT", SINK, NOW), Retry(f"PUT: HTTP {code}"))

    def test_other_4xx_dead_letter_with_outcome_text_and_secrets_redacted(self) -> None:
        """422 with an OperationOutcome: its words in the reason, the bearer credential and patient ID replaced."""
        body = json.dumps({"resourceType": "OperationOutcome", "issue": [{
            "severity": "error", "code": "processing",
            "diagnostics": "subject P-123456 unknown; Authorization: Bearer abcdefgh12345"}]}).encode()
        outcome = classify(answer(422, body), "PUT", SINK, NOW, secrets=(b"Bearer abcdefgh12345", b"x P-123456"))
        self.assertIsInstance(outcome, DeadLetter)
        self.assertTrue(outcome.reason.startswith("PUT: HTTP 422: error processing: subject [redacted] unknown"), outcome.reason)
        self.assertNotIn("abcdefgh12345", outcome.reason)
        self.assertNotIn("P-123456", outcome.reason)

    def test_a_bearer_credential_not_ours_is_redacted_too(self) -> None:
        """Anything shaped like a Bearer credential in the server's words is redacted, ours or not."""
        outcome = classify(answer(400, b"bad: Bearer zzzzyyyyxxxx"), "PUT", SINK, NOW)
        self.assertNotIn("zzzzyyyyxxxx", outcome.reason)

    def test_1xx_3xx_retry(self) -> None:
        """An answer of no known meaning here is retried (bounded by max_attempts)."""
        for code in (100, 302, 304):
            self.assertIsInstance(classify(answer(code), "PUT", SINK, NOW), Retry)
