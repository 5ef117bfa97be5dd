"""Tests for :mod:`gateway.dicomweb.stow_response` and the sender's HTTP status table (PS3.18 10.5.3)."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from gateway.config.schema import DicomWebDestination, RetryConfig
from gateway.dicomweb.client_auth import Answer
from gateway.dicomweb.stow_response import (
    MAX_BODY,
    InstanceResult,
    ResponseError,
    StoreResponse,
    classify_failure,
    classify_instances,
    parse,
    parse_json,
    parse_xml,
)
from gateway.queue.outcome import DeadLetter, DeadLetterKind, Delivered, DestinationDown, Retry
from gateway.send.dicomweb import classify_answer, retry_after

RETRY = RetryConfig(unknown_status_attempts=3, max_delay=120.0)


def item(uid: str, reason_tag: str = "", reason: int | None = None) -> dict:
    """A sequence item naming ``uid`` (and a reason)."""
    data = {"00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]}, "00081155": {"vr": "UI", "Value": [uid]}}
    if reason_tag:
        data[reason_tag] = {"vr": "US", "Value": [reason]}
    return data


JSON_BODY = json.dumps({
    "00081190": {"vr": "UR", "Value": ["http://x/studies/1"]},
    "00081199": {"vr": "SQ", "Value": [item("1.1"), item("1.2", "00081196", 0xB000)]},
    "00081198": {"vr": "SQ", "Value": [item("1.3", "00081197", 0xA700)]},
}).encode()

XML_BODY = b"""<?xml version="1.0" encoding="UTF-8"?>
<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM">
  <DicomAttribute tag="00081199" vr="SQ" keyword="ReferencedSOPSequence">
    <Item number="1">
      <DicomAttribute tag="00081150" vr="UI"><Value number="1">1.2.840.10008.5.1.4.1.1.2</Value></DicomAttribute>
      <DicomAttribute tag="00081155" vr="UI"><Value number="1">1.1</Value></DicomAttribute>
    </Item>
  </DicomAttribute>
  <DicomAttribute tag="00081198" vr="SQ" keyword="FailedSOPSequence">
    <Item number="1">
      <DicomAttribute tag="00081155" vr="UI"><Value number="1">1.3</Value></DicomAttribute>
      <DicomAttribute tag="00081197" vr="US"><Value number="1">49152</Value></DicomAttribute>
    </Item>
  </DicomAttribute>
</NativeDicomModel>
"""


class ParseTests(SynchronousTestCase):
    """Both media types of the response, and hostile bodies."""

    def test_json(self) -> None:
        """Referenced items with and without a Warning Reason, a failed one with its Failure Reason."""
        response = parse_json(JSON_BODY)
        self.assertEqual(response.referenced, (
            InstanceResult("1.1", "1.2.840.10008.5.1.4.1.1.2", None),
            InstanceResult("1.2", "1.2.840.10008.5.1.4.1.1.2", 0xB000),
        ))
        self.assertEqual(response.failed, (InstanceResult("1.3", "1.2.840.10008.5.1.4.1.1.2", 0xA700),))

    def test_json_array_of_one(self) -> None:
        """Some servers wrap the data set in an array of one (PS3.18 F.2): read the same."""
        self.assertEqual(parse_json(b"[" + JSON_BODY + b"]"), parse_json(JSON_BODY))

    def test_xml_with_namespace(self) -> None:
        """The Native DICOM Model (PS3.19) with its namespace: 1.1 referenced, 1.3 failed with 0xC000."""
        response = parse_xml(XML_BODY)
        self.assertEqual([r.sop_instance_uid for r in response.referenced], ["1.1"])
        self.assertEqual(response.failed, (InstanceResult("1.3", "", 0xC000),))

    def test_dispatch_by_content_type_and_multipart_xml(self) -> None:
        """parse() reads JSON by its type, XML by its type, and XML as the one part of a multipart/related answer."""
        self.assertEqual(parse("application/dicom+json; charset=utf-8", JSON_BODY), parse_json(JSON_BODY))
        self.assertEqual(parse("application/dicom+xml", XML_BODY), parse_xml(XML_BODY))
        multipart = b"--b1\r\nContent-Type: application/dicom+xml\r\n\r\n" + XML_BODY + b"\r\n--b1--\r\n"
        self.assertEqual(parse('multipart/related; type="application/dicom+xml"; boundary=b1', multipart), parse_xml(XML_BODY))

    def test_unknown_type_is_an_error(self) -> None:
        """text/html is not a Store Instances Response."""
        self.assertRaises(ResponseError, parse, "text/html", b"<html></html>")

    def test_doctype_is_refused(self) -> None:
        """XML with an entity declaration (billion laughs) is refused before parsing."""
        bomb = b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxx">]><NativeDicomModel>&x;</NativeDicomModel>'
        self.assertRaises(ResponseError, parse_xml, bomb)

    def test_deep_json_is_an_error_not_a_crash(self) -> None:
        """100000 nested arrays raise ResponseError (never RecursionError)."""
        self.assertRaises(ResponseError, parse_json, b"[" * 100000 + b"]" * 100000)

    def test_too_large_is_refused(self) -> None:
        """A body over MAX_BODY is refused unread."""
        self.assertRaises(ResponseError, parse_json, b" " * (MAX_BODY + 1))

    def test_odd_values_are_ignored_or_bounded(self) -> None:
        """Items without a UID are skipped, reasons out of 16 bits are None, UIDs are cut to 64 printable characters."""
        body = json.dumps({"00081198": {"vr": "SQ", "Value": [
            {"00081197": {"Value": [1]}},
            item("9" * 500 + "\x07", "00081197", 70000),
            "not an object",
        ]}}).encode()
        (only,) = parse_json(body).failed
        self.assertEqual(len(only.sop_instance_uid), 64)
        self.assertIsNone(only.reason)

    def test_not_an_object(self) -> None:
        """A JSON number is not a response."""
        self.assertRaises(ResponseError, parse_json, b"42")


class ClassificationTests(SynchronousTestCase):
    """The Failure Reason table and per-instance classification."""

    def test_failure_reason_table(self) -> None:
        """A7xx retry; A9xx, C000, C122, 0122, 0124, 0111 dead; 0110 and unknown bounded; none bounded."""
        retry = lambda code, n=1: classify_failure(code, n, RETRY)  # noqa: E731
        self.assertIsInstance(retry(0xA700), Retry)
        self.assertIsInstance(retry(0xA7FF), Retry)
        for code in (0xA900, 0xC000, 0xC122, 0x0122, 0x0124, 0x0111):
            outcome = retry(code)
            self.assertIsInstance(outcome, DeadLetter, hex(code))
            self.assertEqual(outcome.kind, DeadLetterKind.REFUSED)  # type: ignore[union-attr]
            self.assertIn(f"0x{code:04X}", outcome.reason)
        for code in (0x0110, 0xD123, None):
            self.assertIsInstance(retry(code, 2), Retry)
            self.assertIsInstance(retry(code, 3), DeadLetter)

    def test_each_instance_from_its_own_item(self) -> None:
        """Referenced -> delivered (warning kept), failed -> its reason, both -> failed, neither -> retried alone."""
        response = StoreResponse(
            referenced=(InstanceResult("a"), InstanceResult("b", reason=0xB006), InstanceResult("d")),
            failed=(InstanceResult("c", reason=0xA900), InstanceResult("d", reason=0xA700)),
        )
        outcomes = classify_instances(["a", "b", "c", "d", "e"], [1] * 5, response, RETRY)
        self.assertEqual(outcomes[0], Delivered(0))
        self.assertEqual(outcomes[1], Delivered(0xB006, "STOW-RS Warning Reason 0xB006"))
        self.assertIsInstance(outcomes[2], DeadLetter)
        self.assertIsInstance(outcomes[3], Retry)
        self.assertEqual(outcomes[4], Retry("the STOW-RS response did not mention this instance"))


def answer(code: int, body: bytes = b"", **headers: str) -> Answer:
    """An HTTP answer."""
    return Answer(code, {k.replace("_", "-"): v for k, v in headers.items()}, body)


class HttpStatusTableTests(SynchronousTestCase):
    """:func:`gateway.send.dicomweb.classify_answer`: the module docstring's table, row by row."""

    config = DicomWebDestination("cloud", "http://x", retry=RETRY)

    def classify(self, a: Answer, n: int = 2) -> object:
        return classify_answer(a, [f"1.{i}" for i in range(n)], [1] * n, self.config, 1_000_000.0)

    def test_per_instance_codes_read_the_body(self) -> None:
        """200/202/409 with a body: outcomes from the items, whatever the status."""
        body = json.dumps({"00081199": {"vr": "SQ", "Value": [item("1.0")]},
                           "00081198": {"vr": "SQ", "Value": [item("1.1", "00081197", 0xC000)]}}).encode()
        for code in (200, 202, 409):
            outcomes = self.classify(answer(code, body, content_type="application/dicom+json"))
            self.assertEqual([type(o) for o in outcomes], [Delivered, DeadLetter], code)  # type: ignore[union-attr]

    def test_unreadable_bodies(self) -> None:
        """200 unreadable: ambiguous retries (no instance is delivered unlisted); 202: ambiguous retries; 409: plain retries."""
        self.assertEqual([o.ambiguous for o in self.classify(answer(200, b"garbage", content_type="text/plain"))], [True] * 2)
        self.assertEqual([o.ambiguous for o in self.classify(answer(202, b"x", content_type="text/plain"))], [True] * 2)
        self.assertEqual([o.ambiguous for o in self.classify(answer(409, b"x", content_type="text/plain"))], [False] * 2)

    def test_200_without_a_response_module_delivers_nothing(self) -> None:
        """A 200 whose body is empty or an HTML page (an SSO proxy's login page) records no instance delivered: each is retried, ambiguous."""
        for body, content_type in ((b"", ""), (b"<html><body>Please sign in</body></html>", "text/html")):
            outcomes = self.classify(answer(200, body, content_type=content_type))
            self.assertEqual([type(o) for o in outcomes], [Retry, Retry], body)  # type: ignore[union-attr]
            self.assertTrue(all(o.ambiguous for o in outcomes), body)  # type: ignore[union-attr]
            self.assertTrue(all("200" in o.reason for o in outcomes), body)  # type: ignore[union-attr]

    def test_whole_request_codes(self) -> None:
        """401/403 -> auth; 413 -> split; 408/429/500 -> retry; 502/503/504 -> destination down; 400/404/415 -> dead letter."""
        self.assertEqual(self.classify(answer(401)), "auth")
        self.assertEqual(self.classify(answer(403)), "auth")
        self.assertEqual(self.classify(answer(413)), "split")
        for code in (502, 503, 504):
            (down,) = self.classify(answer(code, retry_after="30"))  # type: ignore[misc]
            self.assertEqual(down, DestinationDown(f"STOW-RS HTTP {code}, retry after 30s", after=30.0))
        for code in (408, 429, 500):
            self.assertEqual({type(o) for o in self.classify(answer(code))}, {Retry}, code)  # type: ignore[union-attr]
        for code in (400, 404, 415):
            self.assertEqual({type(o) for o in self.classify(answer(code, b"no"))}, {DeadLetter}, code)  # type: ignore[union-attr]

    def test_retry_after_seconds_and_date_and_cap(self) -> None:
        """Retry-After as seconds, as an HTTP-date (relative to now), capped at max_delay, 0 when unreadable."""
        self.assertEqual(retry_after("30", 0.0, 120.0), 30.0)
        self.assertEqual(retry_after("99999", 0.0, 120.0), 120.0)
        self.assertEqual(retry_after("Thu, 01 Jan 1970 00:01:00 GMT", 0.0, 120.0), 60.0)
        self.assertEqual(retry_after("soon", 0.0, 120.0), 0.0)
        self.assertEqual(retry_after(None, 0.0, 120.0), 0.0)
        (first, _) = self.classify(answer(429, retry_after="45"))  # type: ignore[misc]
        self.assertEqual(first.after, 45.0)

    def test_server_message_is_cut_and_printable(self) -> None:
        """A 400's message of 1000 characters with control bytes is kept as 200 printable characters and '...'."""
        (first, _) = self.classify(answer(400, ("\x1b[31m" + "m" * 1000).encode()))  # type: ignore[misc]
        self.assertTrue(first.reason.startswith("STOW-RS HTTP 400: ?[31m"))
        self.assertTrue(first.reason.endswith("m..."))
        self.assertLess(len(first.reason), 240)


class ServerMessageSecretTests(SynchronousTestCase):
    """A refusal's body that echoes our credentials never puts them in a dead letter's reason (privacy)."""

    config = DicomWebDestination("cloud", "http://x", retry=RETRY)

    def test_echoed_authorization_header_is_redacted(self) -> None:
        """A 400 body quoting the request's Authorization header: the reason keeps neither the value nor the token."""
        token = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.s1gn4tur3"
        body = f"bad request; headers were: Authorization: Bearer {token}, Accept: */*".encode()
        (first, _) = classify_answer(
            answer(400, body), ["1.0", "1.1"], [1, 1], self.config, 0.0, secrets=(f"Bearer {token}".encode(),)
        )  # type: ignore[misc]
        self.assertIsInstance(first, DeadLetter)
        self.assertNotIn(token, first.reason)
        self.assertNotIn(token[:20], first.reason)
        self.assertIn("Authorization: [redacted]", first.reason)

    def test_credentials_of_any_scheme_are_redacted_without_being_named(self) -> None:
        """A Basic or Bearer credential the body echoes is redacted even when the caller gives no secret (a token renewed since)."""
        body = b"403 said the proxy to: authorization=Basic dXNlcjpodW50ZXIy; also Bearer abc.def-ghi_jkl~m+n/o="
        (first,) = classify_answer(answer(404, body), ["1.0"], [1], self.config, 0.0)  # type: ignore[misc]
        self.assertNotIn("dXNlcjpodW50ZXIy", first.reason)
        self.assertNotIn("abc.def", first.reason)
        self.assertIn("Basic [redacted]", first.reason)

    def test_secret_cut_at_the_message_limit_is_still_redacted(self) -> None:
        """A secret echoed across the message's 200-character cut leaves no prefix of itself in the reason."""
        secret = "Zm9vOmJhcg-SECRET-VALUE-9f8e7d6c5b4a"
        body = ("x" * 180 + " token=" + secret).encode()
        (first,) = classify_answer(answer(400, body), ["1.0"], [1], self.config, 0.0, secrets=(secret.encode(),))  # type: ignore[misc]
        self.assertNotIn(secret[:10], first.reason)
