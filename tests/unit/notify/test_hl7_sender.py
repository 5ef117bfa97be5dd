"""Tests for :class:`gateway.send.hl7.Hl7Sender` with an injected connection and a fake clock.

The connector hands the sender's protocol a StringTransport (or never
connects), and :class:`twisted.internet.task.Clock` stands for time, so the
connect, handshake and ACK timeouts are checked without waiting.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gateway.blocking import SynchronousRunner
from gateway.config.schema import CircuitConfig, DestinationTLSConfig, Hl7Sink
from gateway.notify.document import StudyNotification, to_json
from gateway.notify.hl7 import MessageError, control_id
from gateway.notify.mllp import encode
from gateway.queue.interfaces import Entry, EntryState, InstanceRecord, NewEntry
from gateway.queue.outcome import DeadLetter, DeadLetterKind, Delivered, DestinationDown, Outcome, Retry
from gateway.send import SendContext
from gateway.send.hl7 import Hl7Sender, MllpClientProtocol
from gateway.send.registry import SENDERS, register_sender
from tests.adapters.test_forward import RETRY, WorkerTestsMixin

KEY = "ab" * 32


class Harness(SynchronousTestCase):
    """A sender whose connector is scripted by the test."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.folder = self.mktemp()
        os.makedirs(self.folder)
        self.protocols: list[MllpClientProtocol] = []
        self.transports: list[StringTransport] = []
        self.mode = "connect"

    def sender(self, **overrides: Any) -> Hl7Sender:
        """A sender whose connector connects at once to a StringTransport, or never (mode "hang")."""
        values: dict[str, Any] = dict(name="ris", host="127.0.0.1", port=2575, timeout=5.0)
        values.update(overrides)

        def connect(protocol: MllpClientProtocol) -> "Deferred[Any]":
            self.protocols.append(protocol)
            if self.mode == "hang":
                return Deferred()
            transport = StringTransport()
            self.transports.append(transport)
            protocol.makeConnection(transport)
            done: Deferred[Any] = Deferred()
            done.callback(protocol)
            return done

        context = SendContext(SynchronousRunner(), self.clock)
        return Hl7Sender(Hl7Sink(**values), context, connect=connect)

    def entry(self, **overrides: Any) -> Entry:
        """A leased entry whose file holds a notification with a patient."""
        values: dict[str, Any] = dict(idempotency_key=KEY, event="complete", sequence=1, route="ct", sink="ris",
                                      study_instance_uid="1.2.3", patient_id="PX", patient_name="Doe^J")
        values.update(overrides)
        path = os.path.join(self.folder, "n.json")
        with open(path, "wb") as handle:
            handle.write(to_json(StudyNotification(**values)))
        record = InstanceRecord("i1", path, "notification", KEY, "", 1, "00", 0.0, "c1")
        return Entry(1, record, "ct", "ris", path, EntryState.LEASED, 0, 0.0, 0.0)

    def start(self, sender: Hl7Sender, entry: Entry) -> "Deferred[list[Outcome]]":
        """Run one batch of ``entry``; the Deferred fires with its outcomes."""

        async def run() -> list[Outcome]:
            return [outcome async for _e, outcome in sender.send(0, [entry])]

        return Deferred.fromCoroutine(run())


class TimeoutTests(Harness):
    """Connect, handshake and ACK timeouts."""

    def test_connect_timeout_is_destination_down(self) -> None:
        """No connection within timeout: DestinationDown naming it, the attempt cancelled."""
        self.mode = "hang"
        result = self.start(self.sender(), self.entry())
        self.assertNoResult(result)
        self.clock.advance(5.0)
        (outcome,) = self.successResultOf(result)
        self.assertIsInstance(outcome, DestinationDown)
        self.assertIn("no connection within 5s", outcome.reason)  # type: ignore[union-attr]

    def test_tls_handshake_timeout_is_destination_down_and_nothing_is_written(self) -> None:
        """TCP connects but the TLS handshake never completes: DestinationDown; the message never written."""
        sender = self.sender(tls=DestinationTLSConfig(ca="/nonexistent-unused"))
        result = self.start(sender, self.entry())
        self.clock.advance(5.0)
        (outcome,) = self.successResultOf(result)
        self.assertIsInstance(outcome, DestinationDown)
        self.assertIn("TLS handshake", outcome.reason)  # type: ignore[union-attr]
        self.assertEqual(self.transports[0].value(), b"")

    def test_ack_timeout_is_an_ambiguous_retry_and_drops_the_connection(self) -> None:
        """The message is written; no ACK within timeout: ambiguous retry, connection aborted."""
        sender = self.sender()
        result = self.start(sender, self.entry())
        self.assertTrue(self.transports[0].value().startswith(b"\x0bMSH|"))
        self.clock.advance(4.9)
        self.assertNoResult(result)
        self.clock.advance(0.1)
        (outcome,) = self.successResultOf(result)
        self.assertIsInstance(outcome, Retry)
        self.assertTrue(outcome.ambiguous)  # type: ignore[union-attr]
        self.assertIn("no acknowledgement within 5s", outcome.reason)  # type: ignore[union-attr]
        self.assertTrue(self.transports[0].disconnecting)

    def test_ack_in_time_delivers_and_cancels_the_timer(self) -> None:
        """An AA before the timeout delivers; no timer is left behind."""
        sender = self.sender()
        result = self.start(sender, self.entry())
        ack = f"MSH|^~\\&|R||||20260101||ACK|1|P|2.5.1\rMSA|AA|{control_id(KEY)}\r".encode()
        self.protocols[0].dataReceived(encode(ack))
        self.assertEqual(self.successResultOf(result), [Delivered(0)])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(sender.connections(), 1)

    def test_abort_fails_the_message_in_flight_as_ambiguous(self) -> None:
        """abort() during the wait: the connection is aborted and the entry retried, ambiguous."""
        sender = self.sender()
        result = self.start(sender, self.entry())
        sender.abort()
        self.assertTrue(self.transports[0].disconnecting)
        self.protocols[0].connectionLost()
        (outcome,) = self.successResultOf(result)
        self.assertIsInstance(outcome, Retry)
        self.assertTrue(outcome.ambiguous)  # type: ignore[union-attr]


class PreparationTests(Harness):
    """What happens before anything is sent."""

    def test_missing_file_is_a_retry_without_connecting(self) -> None:
        """The entry's file is gone: a retry; no connection opened."""
        entry = self.entry()
        os.unlink(entry.path)
        (outcome,) = self.successResultOf(self.start(self.sender(), entry))
        self.assertIsInstance(outcome, Retry)
        self.assertEqual(self.protocols, [])

    def test_unreadable_document_is_a_dead_letter(self) -> None:
        """A file that is no notification document: dead letter of kind unreadable."""
        entry = self.entry()
        with open(entry.path, "wb") as handle:
            handle.write(b"{not json")
        (outcome,) = self.successResultOf(self.start(self.sender(), entry))
        self.assertIsInstance(outcome, DeadLetter)
        self.assertEqual(outcome.kind, DeadLetterKind.UNREADABLE)  # type: ignore[union-attr]

    def test_phi_false_removes_the_patient_before_building(self) -> None:
        """A phi-false sink's written message holds neither the Patient ID nor the name."""
        self.start(self.sender(phi=False), self.entry())
        written = self.transports[0].value()
        self.assertNotIn(b"PX", written)
        self.assertNotIn(b"Doe", written)

    def test_bad_template_refuses_to_make_the_sender(self) -> None:
        """A sink whose template file is missing cannot get a sender (fail loud at start or reload)."""
        self.assertRaises(MessageError, self.sender, template=os.path.join(self.folder, "missing.hl7"))

    def test_no_reactor_and_no_connector_is_refused(self) -> None:
        """Without a reactor to connect with, the sender refuses to be made (DESIGN.md 1.2)."""
        context = SendContext(SynchronousRunner(), self.clock)
        self.assertRaises(TypeError, Hl7Sender, Hl7Sink(name="ris", host="h", port=1), context)


class WorkerTests(WorkerTestsMixin, SynchronousTestCase):
    """The sender under the real DestinationWorker and memory store: outcomes recorded as the contract says."""

    def setUp(self) -> None:
        WorkerTestsMixin.setUp(self)
        self.protocols: list[MllpClientProtocol] = []
        self.keys: list[str] = []

        def connect(protocol: MllpClientProtocol) -> "Deferred[Any]":
            self.protocols.append(protocol)
            protocol.makeConnection(StringTransport())
            return succeed(protocol)

        register_sender(Hl7Sink, lambda config, context: Hl7Sender(config, context, connect=connect))
        self.addCleanup(SENDERS.pop, Hl7Sink)

    def notify(self, number: int) -> None:
        """Journal one notification record (its file the document) with an entry for the sink ``ris``."""
        key = f"{number:064x}"
        self.keys.append(key)
        path = os.path.join(self.tmp, f"n{number}.json")
        with open(path, "wb") as handle:
            handle.write(to_json(StudyNotification(idempotency_key=key, event="complete", sequence=1, route="ct",
                                                   sink="ris", study_instance_uid=f"1.2.3.{number}")))
        record = InstanceRecord(f"n{number}", path, "notification", key, "", os.path.getsize(path), f"{number:064x}",
                                self.clock.seconds(), f"c{number}", study_instance_uid=f"1.2.3.{number}")
        self.store.add_instance(record, [NewEntry("ct", "ris")], self.clock.seconds(), 0.0)

    def answer(self, code: str, number: int) -> None:
        """The receiver acknowledges notification ``number`` with ``code`` on the latest connection."""
        ack = f"MSH|^~\\&|R||||20260101||ACK|a|P|2.5.1\rMSA|{code}|{control_id(self.keys[number - 1])}\r".encode()
        self.protocols[-1].dataReceived(encode(ack))

    def sink(self, **overrides: Any) -> Hl7Sink:
        """The sink ``ris`` with the worker tests' retry settings."""
        values: dict[str, Any] = dict(name="ris", host="127.0.0.1", port=2575, timeout=5.0, retry=RETRY,
                                      circuit=CircuitConfig(failures=3))
        values.update(overrides)
        return Hl7Sink(**values)

    def test_aa_then_ae_are_recorded_delivered_and_dead_in_order(self) -> None:
        """Two notifications: AA delivers the first, then the second goes; AE dead-letters it."""
        self.notify(1)
        self.notify(2)
        self.worker(self.sink())  # type: ignore[arg-type]
        self.answer("AA", 1)
        self.answer("AE", 2)
        states = {e.instance.sop_instance_uid: e.state for e in self.store.entries("ris")}
        self.assertEqual(states, {self.keys[0]: EntryState.DELIVERED, self.keys[1]: EntryState.DEAD})
        self.assertEqual(len(self.protocols), 1, "both on one connection")

    def test_ar_is_retried_then_dead_after_reject_retries(self) -> None:
        """reject_retries 1: the first AR requeues the entry, the second (after the backoff) dead-letters it."""
        self.notify(1)
        self.worker(self.sink(reject_retries=1))  # type: ignore[arg-type]
        self.answer("AR", 1)
        (entry,) = self.store.entries("ris")
        self.assertEqual(entry.state, EntryState.QUEUED)
        self.assertEqual(entry.attempts, 1)
        self.clock.advance(5.0)
        self.answer("AR", 1)
        (entry,) = self.store.entries("ris")
        self.assertEqual(entry.state, EntryState.DEAD)
        self.assertIn("AR", entry.dead_reason)
