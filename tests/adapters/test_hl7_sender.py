"""Tests for :mod:`gateway.send.hl7` against the scripted MLLP receiver over real loopback TCP (and TLS).

The receiver is :class:`tests.support.mllp_receiver.Receiver` in the test's
reactor; the sender is the real one with its endpoint and TLS context. Each
test sends entries and checks both sides: the outcomes the worker would
record and what the receiver got (messages, connections).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from gateway.blocking import SynchronousRunner
from gateway.config.schema import DestinationTLSConfig, Hl7Sink
from gateway.notify.document import DestinationOutcome, SeriesSummary, StudyNotification, idempotency_key, to_json
from gateway.notify.hl7 import control_id
from gateway.queue.interfaces import Entry, EntryState, InstanceRecord
from gateway.queue.outcome import DeadLetter, DeadLetterKind, Delivered, DestinationDown, Outcome, Retry
from gateway.send import SendContext
from gateway.send.hl7 import Hl7Sender
from tests.support import certs
from tests.support.mllp_receiver import Receiver, ReceiverProcess
from tests.support.ports import free_port


def notification(number: int, **overrides: Any) -> StudyNotification:
    """A notification of study 1.2.826.0.1.<number>, with a patient."""
    uid = f"1.2.826.0.1.{number}"
    values: dict[str, Any] = dict(
        idempotency_key=idempotency_key("ris", "ct", uid, 1), event="complete", sequence=1, route="ct", sink="ris",
        study_instance_uid=uid, accession_number=f"ACC{number}", patient_id=f"PID{number}",
        patient_name="Doe^Jane", patient_birth_date="19800101", patient_sex="F", study_date="20260101",
        study_time="120000", study_description="CT HEAD", modalities=("CT",), instances=2,
        series=(SeriesSummary("1.2.3.4", 1, "CT", 2),), destinations=(DestinationOutcome("pacs", 2),),
    )
    values.update(overrides)
    return StudyNotification(**values)


class SenderTestBase(TestCase):
    """Starts the receiver on a loopback port; makes senders and entries for it."""

    timeout = 30

    def setUp(self) -> None:
        self.folder = self.mktemp()
        os.makedirs(self.folder)
        self.reached = 0

    def serve(self, script: Sequence[str] = (), tls: bool = False) -> Receiver:
        """Listen with a receiver answering by ``script``; its port is ``self.port``."""
        receiver = Receiver(script)
        if tls:
            m = certs.material()
            with open(m.server, "rb") as cert, open(m.server_key, "rb") as key:
                options = ssl.PrivateCertificate.loadPEM(key.read() + b"\n" + cert.read()).options()
            port = reactor.listenSSL(0, receiver, options, interface="127.0.0.1")  # type: ignore[attr-defined]
        else:
            port = reactor.listenTCP(0, receiver, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port
        return receiver

    def sender(self, clock: Any = reactor, **overrides: Any) -> Hl7Sender:
        """The sender of a sink at ``self.port`` (its connection closed at the end); ``clock`` times its timeouts."""
        values: dict[str, Any] = dict(name="ris", host="127.0.0.1", port=self.port, timeout=10.0,
                                      sending_application="GW", receiving_application="RIS")
        values.update(overrides)

        def reached() -> None:
            self.reached += 1

        context = SendContext(SynchronousRunner(), clock, reactor, scratch_dir=self.folder, reachable=reached)
        sender = Hl7Sender(Hl7Sink(**values), context)
        self.addCleanup(sender.close, 0)
        return sender

    def entries(self, docs: Sequence[StudyNotification], attempts: int = 0) -> list[Entry]:
        """Leased entries whose files hold ``docs``."""
        made = []
        for number, doc in enumerate(docs, start=1):
            path = os.path.join(self.folder, f"n{number}-{attempts}.json")
            with open(path, "wb") as handle:
                handle.write(to_json(doc))
            record = InstanceRecord(
                instance_id=f"i{number}", path=path, sop_class_uid="notification",
                sop_instance_uid=doc.idempotency_key, study_instance_uid=doc.study_instance_uid,
                transfer_syntax_uid="", size=os.path.getsize(path), sha256="00", received_at=0.0,
                correlation_id=f"c{number}",
            )
            made.append(Entry(number, record, "ct", "ris", path, EntryState.LEASED, attempts, 0.0, 0.0))
        return made

    async def send(self, sender: Hl7Sender, batch: Sequence[Entry]) -> list[Outcome]:
        """Run one batch to the end; the outcomes in order."""
        return [outcome async for _entry, outcome in sender.send(0, batch)]


class DeliveryTests(SenderTestBase):
    """AA delivers; the receiver gets valid ORU^R01 messages in entry order on one connection."""

    async def test_aa_delivers_in_order_on_one_reused_connection(self) -> None:
        """Three notifications are delivered, in entry order, all on the first connection, which stays open."""
        receiver = self.serve()
        docs = [notification(n) for n in (1, 2, 3)]
        sender = self.sender()
        outcomes = await self.send(sender, self.entries(docs))
        self.assertEqual(outcomes, [Delivered(0)] * 3)
        self.assertEqual([r.control_id for r in receiver.received], [control_id(d.idempotency_key) for d in docs])
        self.assertEqual([r.connection for r in receiver.received], [1, 1, 1])
        self.assertEqual(receiver.problems(), [])
        self.assertEqual(sender.connections(), 1)
        self.assertEqual(self.reached, 1)
        # A second batch reuses the same connection.
        outcomes = await self.send(sender, self.entries([notification(4)]))
        self.assertEqual(outcomes, [Delivered(0)])
        self.assertEqual(receiver.connections, 1)
        self.assertEqual(receiver.received[-1].connection, 1)

    async def test_message_is_oru_r01_with_the_study_facts_and_the_patient(self) -> None:
        """With phi the message carries PID-3/PID-5 and OBR-3 the accession; hl7apy's strict parse found no problem."""
        receiver = self.serve()
        await self.send(self.sender(), self.entries([notification(7)]))
        (message,) = receiver.received
        self.assertEqual(message.problem, "")
        self.assertEqual(message.message_type, "ORU^R01^ORU_R01")
        self.assertEqual(message.field("MSH", 3), "GW")
        self.assertEqual(message.field("MSH", 5), "RIS")
        self.assertEqual(message.field("PID", 3), "PID7")
        self.assertEqual(message.field("PID", 5), "Doe^Jane")
        self.assertEqual(message.field("OBR", 3), "ACC7")
        self.assertEqual(message.field("OBR", 25), "F")
        self.assertIn("1.2.826.0.1.7", message.text)

    async def test_phi_false_sends_no_patient_identifiers(self) -> None:
        """With phi false neither the Patient ID nor any part of the name nor the birth date reaches the receiver."""
        receiver = self.serve()
        await self.send(self.sender(phi=False), self.entries([notification(8, patient_name="Secretname^Jane")]))
        (message,) = receiver.received
        self.assertEqual(message.problem, "")
        for secret in ("PID8", "Secretname", "Jane", "19800101"):
            self.assertNotIn(secret, message.text)
        self.assertTrue(message.field("PID", 3).endswith("^ANON"))


class AcknowledgementTests(SenderTestBase):
    """AE, AR and no ACK, as the contract's outcome rules say."""

    async def test_ae_is_a_dead_letter_and_the_next_message_still_goes(self) -> None:
        """AE (on_error dead) dead-letters the entry with the receiver's text; the next entry is delivered on the same connection."""
        receiver = self.serve(["AE"])
        outcomes = await self.send(self.sender(), self.entries([notification(1), notification(2)]))
        self.assertIsInstance(outcomes[0], DeadLetter)
        assert isinstance(outcomes[0], DeadLetter)
        self.assertEqual(outcomes[0].kind, DeadLetterKind.REFUSED)
        self.assertIn("AE", outcomes[0].reason)
        self.assertIn("scripted AE", outcomes[0].reason)
        self.assertEqual(outcomes[1], Delivered(0))
        self.assertEqual([r.connection for r in receiver.received], [1, 1])

    async def test_ae_with_on_error_retry_is_a_retry(self) -> None:
        """on_error: retry turns AE into a retry (not ambiguous: the receiver answered)."""
        self.serve(["AE"])
        (outcome,) = await self.send(self.sender(on_error="retry"), self.entries([notification(1)]))
        self.assertIsInstance(outcome, Retry)
        assert isinstance(outcome, Retry)
        self.assertFalse(outcome.ambiguous)

    async def test_ar_is_retried_reject_retries_times_then_dead(self) -> None:
        """With reject_retries 2: AR at attempts 1 and 2 are retries, AR at attempt 3 is a dead letter."""
        receiver = self.serve(["AR", "AR", "AR"])
        sender = self.sender(reject_retries=2)
        doc = notification(1)
        outcomes = []
        for attempts in (0, 1, 2):
            outcomes += await self.send(sender, self.entries([doc], attempts=attempts))
        self.assertIsInstance(outcomes[0], Retry)
        self.assertIsInstance(outcomes[1], Retry)
        self.assertIsInstance(outcomes[2], DeadLetter)
        self.assertIn("AR", outcomes[2].reason)  # type: ignore[union-attr]
        self.assertEqual(len({r.control_id for r in receiver.received}), 1, "every re-send carries the same MSH-10")

    async def test_no_ack_within_timeout_is_an_ambiguous_retry_and_the_connection_is_dropped(self) -> None:
        """A held ACK: once the timeout passes the entry is retried as ambiguous and the next message goes on a new connection.

        The timeouts run on a fake clock, advanced once the receiver holds the
        message, so the outcome does not depend on how fast the machine is.
        """
        receiver = self.serve(["hold"])
        held: Deferred[None] = Deferred()
        receiver.on_message = lambda record: None if held.called else held.callback(None)
        clock = Clock()
        sender = self.sender(clock=clock, timeout=5.0)
        sending = Deferred.fromCoroutine(self.send(sender, self.entries([notification(1), notification(2)])))
        await held
        clock.advance(5.0)
        outcomes = await sending
        self.assertIsInstance(outcomes[0], Retry)
        assert isinstance(outcomes[0], Retry)
        self.assertTrue(outcomes[0].ambiguous)
        self.assertIn("no acknowledgement within 5s", outcomes[0].reason)
        self.assertEqual(outcomes[1], Delivered(0))
        self.assertEqual([r.connection for r in receiver.received], [1, 2])
        self.assertEqual(receiver.release(), 0, "the held connection was dropped")

    async def test_close_mid_ack_is_an_ambiguous_retry(self) -> None:
        """The receiver sends half an ACK and closes: ambiguous retry; the next message opens a new connection."""
        receiver = self.serve(["partial"])
        outcomes = await self.send(self.sender(), self.entries([notification(1), notification(2)]))
        self.assertIsInstance(outcomes[0], Retry)
        self.assertTrue(outcomes[0].ambiguous)  # type: ignore[union-attr]
        self.assertIn("closed", outcomes[0].reason)  # type: ignore[union-attr]
        self.assertEqual(outcomes[1], Delivered(0))
        self.assertEqual(receiver.connections, 2)

    async def test_ack_for_another_message_is_an_ambiguous_retry(self) -> None:
        """An AA whose MSA-2 names another control id counts as no ACK: ambiguous retry, connection dropped."""
        receiver = self.serve(["wrong-id"])
        outcomes = await self.send(self.sender(), self.entries([notification(1), notification(2)]))
        self.assertIsInstance(outcomes[0], Retry)
        self.assertTrue(outcomes[0].ambiguous)  # type: ignore[union-attr]
        self.assertIn("another message", outcomes[0].reason)  # type: ignore[union-attr]
        self.assertEqual(outcomes[1], Delivered(0))
        self.assertEqual(receiver.connections, 2)

    async def test_garbage_answer_is_an_ambiguous_retry(self) -> None:
        """Bytes outside an MLLP frame: ambiguous retry naming the framing fault."""
        self.serve(["garbage"])
        (outcome,) = await self.send(self.sender(), self.entries([notification(1)]))
        self.assertIsInstance(outcome, Retry)
        self.assertTrue(outcome.ambiguous)  # type: ignore[union-attr]
        self.assertIn("outside an MLLP frame", outcome.reason)  # type: ignore[union-attr]


class ConnectionTests(SenderTestBase):
    """Refused connections, the probe, TLS."""

    async def test_refused_connection_is_destination_down_and_stops_the_batch(self) -> None:
        """Nobody listening: one DestinationDown for the first entry, nothing else tried."""
        self.port = free_port()
        outcomes = await self.send(self.sender(), self.entries([notification(1), notification(2)]))
        self.assertEqual(len(outcomes), 1)
        self.assertIsInstance(outcomes[0], DestinationDown)
        self.assertEqual(self.reached, 0)

    async def test_probe_is_a_tcp_connect(self) -> None:
        """The probe answers None when the receiver listens (no message sent), DestinationDown when not."""
        receiver = self.serve()
        sender = self.sender()
        self.assertIsNone(await sender.probe())
        self.assertEqual(receiver.received, [])
        self.assertEqual(receiver.connections, 1)
        self.port = free_port()
        self.assertIsInstance(await self.sender().probe(), DestinationDown)

    async def test_tls_delivers_with_the_destination_tls_settings(self) -> None:
        """Over TLS (server certificate from the test CA, checked for its name) the message is delivered."""
        receiver = self.serve(tls=True)
        m = certs.material()
        sender = self.sender(host="127.0.0.1", tls=DestinationTLSConfig(ca=m.ca, server_name="localhost"))
        outcomes = await self.send(sender, self.entries([notification(1), notification(2)]))
        self.assertEqual(outcomes, [Delivered(0)] * 2)
        self.assertEqual([r.connection for r in receiver.received], [1, 1])
        self.assertEqual(receiver.problems(), [])

    async def test_tls_unknown_ca_is_destination_down_without_sending(self) -> None:
        """A server certificate from a CA we do not trust: DestinationDown with a TLS reason; nothing received."""
        receiver = self.serve(tls=True)
        m = certs.material()
        sender = self.sender(tls=DestinationTLSConfig(ca=m.other_ca, server_name="localhost"))
        (outcome,) = await self.send(sender, self.entries([notification(1)]))
        self.assertIsInstance(outcome, DestinationDown)
        self.assertIn("TLS", outcome.reason)  # type: ignore[union-attr]
        self.assertEqual(receiver.received, [])

    async def test_template_message_is_sent(self) -> None:
        """A sink with a template sends the rendered message; MSH-10 from {control_id} is matched by the ACK."""
        receiver = self.serve()
        path = os.path.join(self.folder, "adt.hl7")
        with open(path, "w") as handle:
            handle.write("MSH|^~\\&|{sending_application}||||{message_time}||ADT^A08|{control_id}|P|2.5.1\n"
                         "EVN|A08|{message_time}\nPID|||{patient_id}||{patient_name_xpn}\n")
        doc = notification(3, patient_name="O|Brien^Pat")
        (outcome,) = await self.send(self.sender(template=path), self.entries([doc]))
        self.assertEqual(outcome, Delivered(0))
        (message,) = receiver.received
        self.assertEqual(message.message_type, "ADT^A08")
        self.assertEqual(message.field("PID", 5), "O\\F\\Brien^Pat")
        self.assertEqual(message.problem, "")


class ProcessTests(SenderTestBase):
    """The receiver as a standalone process (what the notify helper's interop test runs)."""

    async def test_standalone_receiver_answers_by_script_and_records(self) -> None:
        """python -m tests.support.mllp_receiver --script AR,AA: the first send is retried, the second delivered; both recorded."""
        process = ReceiverProcess(self.folder, ["AR"]).start()
        self.addCleanup(process.stop)
        self.port = process.port
        sender = self.sender()
        doc = notification(5)
        first = await self.send(sender, self.entries([doc]))
        second = await self.send(sender, self.entries([doc], attempts=1))
        self.assertIsInstance(first[0], Retry)
        self.assertEqual(second, [Delivered(0)])
        recorded = process.messages()
        self.assertEqual([m["answer"] for m in recorded], ["AR", "AA"])
        self.assertEqual({m["control_id"] for m in recorded}, {control_id(doc.idempotency_key)})
        self.assertEqual([m["problem"] for m in recorded], ["", ""])
        self.assertEqual([m["connection"] for m in recorded], [1, 1])

    async def test_standalone_receiver_over_tls(self) -> None:
        """The receiver process serving TLS (--tls-certificate/--tls-key) gets the message from a TLS sink."""
        m = certs.material()
        process = ReceiverProcess(self.folder, tls_certificate=m.server, tls_key=m.server_key).start()
        self.addCleanup(process.stop)
        self.port = process.port
        sender = self.sender(tls=DestinationTLSConfig(ca=m.ca, server_name="localhost"))
        self.assertEqual(await self.send(sender, self.entries([notification(6)])), [Delivered(0)])
        self.assertEqual([m["problem"] for m in process.messages()], [""])
