"""Tests for the webhook body (:mod:`gateway.notify.webhook`) and sender (:mod:`gateway.send.webhook`), issue 18."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Mapping

from twisted.internet import error as neterror
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.blocking import SynchronousRunner
from gateway.config.schema import RetryConfig, WebhookSink
from gateway.dicomweb.client_auth import Answer
from gateway.notify.document import DestinationOutcome, SeriesSummary, StudyNotification, idempotency_key, to_json
from gateway.notify.webhook import body, sign, verify
from gateway.queue.interfaces import Entry, EntryState, InstanceRecord
from gateway.queue.outcome import DeadLetter, DeadLetterKind, Delivered, DestinationDown, Retry
from gateway.send import SendContext
from gateway.send.registry import sender_for
from gateway.send.webhook import WebhookSender, classify_webhook

SECRET = b"s3cret-key"


def notification(**changes: Any) -> StudyNotification:
    """A notification with patient fields, two destinations and a series."""
    values: dict[str, Any] = dict(
        idempotency_key=idempotency_key("hook", "ct", "1.2.3", 1),
        event="complete",
        sequence=1,
        route="ct",
        sink="hook",
        study_instance_uid="1.2.3",
        accession_number="A1",
        patient_id="PID-42",
        patient_name="Doe^Jane",
        modalities=("CT",),
        instances=3,
        series=(SeriesSummary("1.2.3.1", 1, "CT", 3),),
        destinations=(DestinationOutcome("pacs", delivered=3),),
        completed_at=100.0,
    )
    values.update(changes)
    return StudyNotification(**values)


class BodyTests(SynchronousTestCase):
    """The JSON body and its HMAC signature."""

    def test_fields(self) -> None:
        """The body carries the study, counts, destinations, event, sequence and key."""
        document = json.loads(body(notification(), phi=True))
        self.assertEqual(document["study_instance_uid"], "1.2.3")
        self.assertEqual(document["counts"], {"instances": 3, "series": 1})
        self.assertEqual(document["destinations"][0]["destination"], "pacs")
        self.assertEqual(document["destinations"][0]["delivered"], 3)
        self.assertEqual((document["event"], document["sequence"]), ("complete", 1))
        self.assertEqual(document["idempotency_key"], notification().idempotency_key)
        self.assertEqual(document["patient"]["patient_id"], "PID-42")

    def test_no_phi(self) -> None:
        """phi false: no patient object and neither the ID nor the name anywhere in the bytes."""
        data = body(notification().without_phi(), phi=False)
        self.assertNotIn(b"PID-42", data)
        self.assertNotIn(b"Doe", data)
        self.assertNotIn("patient", json.loads(data))

    def test_signature(self) -> None:
        """sha256=<hex HMAC-SHA256>; verify accepts it and refuses another body or key."""
        data = body(notification(), phi=False)
        signature = sign(SECRET, data)
        self.assertTrue(signature.startswith(b"sha256="))
        self.assertEqual(len(signature), len(b"sha256=") + 64)
        self.assertTrue(verify(SECRET, data, signature))
        self.assertFalse(verify(SECRET, data + b" ", signature))
        self.assertFalse(verify(b"other", data, signature))


class ClassifyTests(SynchronousTestCase):
    """The outcome rules of the contract."""

    sink = WebhookSink(name="hook", url="http://x/", secret_file="/k", retry=RetryConfig(max_delay=60.0))

    def classify(self, code: int, headers: Mapping[str, str] | None = None, data: bytes = b"") -> Any:
        """Classify an answer of ``code``."""
        return classify_webhook(Answer(code, headers or {}, data), self.sink, 0.0)

    def test_2xx_delivered(self) -> None:
        """200, 202 and 204 are delivered."""
        for code in (200, 202, 204):
            self.assertIsInstance(self.classify(code), Delivered)

    def test_retried(self) -> None:
        """408, 429, 500, 503 are retried; 429/503 honour Retry-After (capped by max_delay)."""
        for code in (408, 429, 500, 502, 503):
            self.assertIsInstance(self.classify(code), Retry)
        self.assertEqual(self.classify(429, {"retry-after": "7"}).after, 7.0)
        self.assertEqual(self.classify(503, {"retry-after": "7000"}).after, 60.0)
        self.assertEqual(self.classify(500, {"retry-after": "7"}).after, 0.0)

    def test_other_4xx_dead(self) -> None:
        """400/404/422 are dead letters of kind refused with the status and the body's start."""
        outcome = self.classify(422, data=b"bad study")
        self.assertIsInstance(outcome, DeadLetter)
        self.assertEqual(outcome.kind, DeadLetterKind.REFUSED)
        self.assertIn("422", outcome.reason)
        self.assertIn("bad study", outcome.reason)


class FakeClient:
    """An HTTP client answering from a list and recording requests."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.requests: list[tuple[bytes, str, dict[bytes, bytes], bytes]] = []

    def request(self, method: bytes, url: str, headers: Mapping[bytes, bytes], body: Any = None, limit: int = 0) -> "Deferred[Answer]":
        """Record the request (with its body bytes) and answer the next item (an exception fails)."""
        data = body.data if body is not None else b""
        self.requests.append((method, url, dict(headers), data))
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            return fail(answer)
        return succeed(answer)

    def close(self) -> "Deferred[None]":
        """Nothing to close."""
        return succeed(None)

    def abort(self) -> None:
        """Nothing in flight."""

    def connections(self) -> int:
        """None held."""
        return 0


class SenderTests(SynchronousTestCase):
    """WebhookSender reads each entry's document and posts it signed, in order."""

    def setUp(self) -> None:
        """A secret file and two notification files in a temporary folder."""
        self.folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.folder)
        self.secret_file = os.path.join(self.folder, "key")
        with open(self.secret_file, "wb") as f:
            f.write(SECRET + b"\n")

    def entry(self, entry_id: int, document: StudyNotification) -> Entry:
        """An entry of the sink whose file holds ``document``."""
        path = os.path.join(self.folder, f"n{entry_id}")
        with open(path, "wb") as f:
            f.write(to_json(document))
        record = InstanceRecord(str(entry_id), path, "notification", document.idempotency_key, "", 10, "", 0.0, "c",
                                study_instance_uid=document.study_instance_uid)
        return Entry(entry_id, record, "ct", "hook", path, EntryState.LEASED, 0, 0.0, 0.0)

    def send(self, sink: WebhookSink, client: FakeClient, batch: list[Entry]) -> list[Any]:
        """Run one send of ``batch``; the outcomes."""
        sender = WebhookSender(sink, SendContext(SynchronousRunner(), Clock()), client=client)

        async def run() -> list[Any]:
            return [outcome async for _, outcome in sender.send(0, batch)]

        return self.successResultOf(ensureDeferred(run()))

    def sink(self, phi: bool = False) -> WebhookSink:
        """The sink under test."""
        return WebhookSink(name="hook", url="http://127.0.0.1:1/hook", secret_file=self.secret_file, phi=phi)

    def test_signed_post_with_key_and_event(self) -> None:
        """The POST carries the body signed with the file's key (newline stripped), the idempotency key and the event."""
        client = FakeClient([Answer(204, {}, b"")])
        outcomes = self.send(self.sink(), client, [self.entry(1, notification(event="amended", sequence=2))])
        self.assertEqual(outcomes, [Delivered(204)])
        (method, url, headers, data) = client.requests[0]
        self.assertEqual((method, url), (b"POST", "http://127.0.0.1:1/hook"))
        self.assertTrue(verify(SECRET, data, headers[b"X-Gateway-Signature"]))
        self.assertEqual(headers[b"Idempotency-Key"], notification().idempotency_key.encode())
        self.assertEqual(headers[b"X-Gateway-Event"], b"amended")
        self.assertEqual(headers[b"Content-Type"], b"application/json")

    def test_phi_false_sends_no_patient(self) -> None:
        """A sink without phi never sends the Patient ID or name."""
        client = FakeClient([Answer(200, {}, b"")])
        self.send(self.sink(phi=False), client, [self.entry(1, notification())])
        self.assertNotIn(b"PID-42", client.requests[0][3])
        client = FakeClient([Answer(200, {}, b"")])
        self.send(self.sink(phi=True), client, [self.entry(1, notification())])
        self.assertIn(b"PID-42", client.requests[0][3])

    def test_in_order_and_outcomes(self) -> None:
        """Entries go in order, each with its own outcome."""
        client = FakeClient([Answer(200, {}, b""), Answer(500, {}, b""), Answer(400, {}, b"no")])
        batch = [self.entry(i, notification(sequence=i, idempotency_key=f"k{i}")) for i in (1, 2, 3)]
        outcomes = self.send(self.sink(), client, batch)
        self.assertEqual([type(o) for o in outcomes], [Delivered, Retry, DeadLetter])
        self.assertEqual([r[2][b"Idempotency-Key"] for r in client.requests], [b"k1", b"k2", b"k3"])

    def test_connection_refused_is_down_and_stops(self) -> None:
        """Never connected: DestinationDown for the first entry, the rest not tried."""
        client = FakeClient([neterror.ConnectionRefusedError()])
        batch = [self.entry(i, notification(idempotency_key=f"k{i}")) for i in (1, 2)]
        outcomes = self.send(self.sink(), client, batch)
        self.assertEqual(len(outcomes), 1)
        self.assertIsInstance(outcomes[0], DestinationDown)

    def test_cut_after_sending_is_ambiguous_retry(self) -> None:
        """A request that failed after connecting is retried, ambiguous."""
        client = FakeClient([neterror.ConnectionLost()])
        (outcome,) = self.send(self.sink(), client, [self.entry(1, notification())])
        self.assertIsInstance(outcome, Retry)
        self.assertTrue(outcome.ambiguous)

    def test_unreadable_document_dead(self) -> None:
        """A file that is not a notification document is a dead letter (unreadable); a missing one a retry."""
        entry = self.entry(1, notification())
        with open(entry.path, "wb") as f:
            f.write(b"{}")
        missing = self.entry(2, notification())
        os.unlink(missing.path)
        outcomes = self.send(self.sink(), FakeClient([]), [entry, missing])
        self.assertIsInstance(outcomes[0], DeadLetter)
        self.assertEqual(outcomes[0].kind, DeadLetterKind.UNREADABLE)
        self.assertIsInstance(outcomes[1], Retry)

    def test_registered(self) -> None:
        """The registry makes a WebhookSender for a WebhookSink."""
        from twisted.internet.testing import MemoryReactorClock

        sender = sender_for(self.sink(), SendContext(SynchronousRunner(), Clock(), reactor=MemoryReactorClock()))
        self.assertIsInstance(sender, WebhookSender)
        self.assertEqual(sender.slots, 1)
