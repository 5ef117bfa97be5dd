"""Tests for :mod:`gateway.send.dicomweb` against a scripted STOW-RS server over real loopback HTTP.

The server is :class:`tests.support.stow_server.StowResource` in the test's
reactor; the sender is the real one with its Agent and connection pool. Each
test sends entries and checks both sides: the outcomes the worker would
record and what the server received (requests, bodies, headers).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any, Sequence

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.blocking import SynchronousRunner
from gateway.codecs import ConversionError, TransferSyntaxPolicy
from gateway.codecs.convert import Converted
from gateway.config.schema import CircuitConfig, DicomWebAuth, DicomWebBatch, DicomWebDestination, RetryConfig
from gateway.queue.interfaces import Entry, EntryState, InstanceRecord
from gateway.queue.outcome import DeadLetter, DeadLetterKind, Delivered, DestinationDown, Outcome, Retry
from gateway.send import SendContext
from gateway.send import dicomweb as dicomweb_module
from gateway.send import http as http_module
from gateway.send.dicomweb import DicomWebSender
from gateway.send.registry import SENDERS, register_sender, sender_for
from tests.adapters.test_forward import WorkerTestsMixin
from tests.support.ports import free_port
from tests.support.stow_server import Script, StowResource, parse_multipart, site_for

CT_SMALL = get_testdata_file("CT_small.dcm", download=False)


def make_files(folder: str, count: int) -> list[tuple[str, str]]:
    """``count`` copies of CT_small with their own SOP Instance UIDs: ``[(path, uid), ...]``."""
    made = []
    for index in range(count):
        ds = dcmread(CT_SMALL)
        uid = generate_uid()
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        path = os.path.join(folder, f"{index}.dcm")
        ds.save_as(path)
        made.append((path, uid))
    return made


def entry_for(path: str, uid: str, entry_id: int, attempts: int = 0) -> Entry:
    """A leased entry for the file."""
    record = InstanceRecord(
        instance_id=f"i{entry_id}", path=path, sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid=uid, transfer_syntax_uid="1.2.840.10008.1.2.1", size=os.path.getsize(path), sha256="00",
        received_at=0.0, correlation_id=f"c{entry_id}",
    )
    return Entry(entry_id, record, "r", "cloud", path, EntryState.LEASED, attempts, 0.0, 0.0)


class SenderTestBase(TestCase):
    """Starts a scripted server on a free loopback port; makes senders for it."""

    timeout = 30

    def setUp(self) -> None:
        self.folder = self.mktemp()
        os.makedirs(self.folder)
        self.events: list[Any] = []

    def serve(self, script: Script) -> StowResource:
        """Serve ``script`` on a loopback port; the URL is ``self.url``."""
        resource = StowResource(script, reactor)
        port = reactor.listenTCP(0, site_for(resource), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        self.url = f"http://127.0.0.1:{port.getHost().port}/dicom-web"
        return resource

    def sender(self, **overrides: Any) -> DicomWebSender:
        """The sender of a destination at ``self.url`` (its pool closed at the end)."""
        values: dict[str, Any] = dict(name="cloud", url=self.url, timeout=10.0,
                                      retry=RetryConfig(unknown_status_attempts=3, max_delay=60.0))
        values.update(overrides)
        config = DicomWebDestination(**values)
        context = SendContext(SynchronousRunner(), reactor, reactor, scratch_dir=self.folder, observe=self.events.append)
        sender = sender_for(config, context)
        assert isinstance(sender, DicomWebSender)
        self.addCleanup(sender.client.close)
        return sender

    async def send(self, sender: DicomWebSender, batch: Sequence[Entry]) -> list[Outcome]:
        """Run one batch to the end and return the outcomes in order."""
        outcomes = []
        async for _entry, outcome in sender.send(0, batch):
            outcomes.append(outcome)
        return outcomes

    def batch(self, count: int, attempts: int = 0) -> tuple[list[Entry], list[str]]:
        """``count`` fresh instances as entries, and their UIDs."""
        files = make_files(self.folder, count)
        return [entry_for(p, u, i + 1, attempts) for i, (p, u) in enumerate(files)], [u for _, u in files]


class DeliveryTests(SenderTestBase):
    """A plain STOW-RS request: the body the server gets and the outcomes of a 200."""

    async def test_body_is_the_files_verbatim_with_content_length_and_quoted_parameters(self) -> None:
        """The server gets one request whose parts are the spool files byte for byte, with Content-Length and quoted type/boundary."""
        server = self.serve(Script())
        entries, uids = self.batch(3)
        outcomes = await self.send(self.sender(), entries)
        self.assertEqual(outcomes, [Delivered(0)] * 3)
        (received,) = server.received
        (body,) = server.bodies
        self.assertEqual(received.content_length, len(body))
        self.assertIn('type="application/dicom"', received.content_type)
        self.assertRegex(received.content_type, r'^multipart/related; .*boundary="[^"]+"$')
        parts = parse_multipart(received.content_type, body)
        self.assertEqual([headers["content-type"] for headers, _ in parts], ["application/dicom"] * 3)
        for (_, content), entry in zip(parts, entries):
            with open(entry.path, "rb") as f:
                self.assertEqual(content, f.read())
        self.assertEqual(received.uids, uids)
        (event,) = self.events
        self.assertEqual((event.destination, event.code, event.instances, event.bytes_sent),
                         ("cloud", 200, 3, len(body)))

    async def test_batches_are_cut_by_bytes(self) -> None:
        """With max_bytes below two instances, each instance goes in its own request."""
        server = self.serve(Script())
        entries, _ = self.batch(3)
        size = os.path.getsize(entries[0].path)
        outcomes = await self.send(self.sender(batch=DicomWebBatch(50, int(size * 1.5))), entries)
        self.assertEqual(outcomes, [Delivered(0)] * 3)
        self.assertEqual([len(r.uids) for r in server.received], [1, 1, 1])

    async def test_connection_refused_is_the_destination_down(self) -> None:
        """Nothing listening: one DestinationDown (the worker puts the rest back), no dead letter."""
        self.url = f"http://127.0.0.1:{free_port()}/dicom-web"
        entries, _ = self.batch(2)
        outcomes = await self.send(self.sender(), entries)
        self.assertEqual(len(outcomes), 1)
        self.assertIsInstance(outcomes[0], DestinationDown)

    async def test_probe_is_a_qido_get_and_any_2xx_is_up(self) -> None:
        """The probe answers None from a server that answers GET /studies with 200, and down when it refuses the token."""
        self.serve(Script(bearer="right"))
        token = os.path.join(self.folder, "token")
        with open(token, "w") as f:
            f.write("wrong\n")
        sender = self.sender(auth=DicomWebAuth(kind="bearer", token_file=token))
        down = await sender.probe()
        self.assertIsInstance(down, DestinationDown)
        self.assertIn("401", down.reason)
        with open(token, "w") as f:
            f.write("right-but-longer-so-the-size-changes\n")
        self.assertIsInstance(await sender.probe(), DestinationDown)
        with open(token, "w") as f:
            f.write("right\n")
        self.assertIsNone(await sender.probe())


class ResponseTests(SenderTestBase):
    """Per-instance classification of 202 and 409 answers (PS3.18 10.5.3)."""

    async def test_mixed_202_classifies_each_instance_from_its_own_item(self) -> None:
        """Stored, A700, C000, not mentioned, 0x0111 and 0x0110 in one 202: delivered, retry, dead, retry, dead, retry."""
        entries, uids = self.batch(6)
        plan = {uids[1]: [0xA700], uids[2]: [0xC000], uids[3]: ["omit"], uids[4]: [0x0111], uids[5]: [0x0110]}
        server = self.serve(Script(failures=plan))
        outcomes = await self.send(self.sender(), entries)
        self.assertEqual(server.received[0].status, 202)
        self.assertIsInstance(outcomes[0], Delivered)
        self.assertIsInstance(outcomes[1], Retry)
        self.assertIn("0xA700", outcomes[1].reason)
        self.assertEqual(outcomes[2], DeadLetter("STOW-RS: cannot understand (Failure Reason 0xC000)", DeadLetterKind.REFUSED))
        self.assertEqual(outcomes[3], Retry("the STOW-RS response did not mention this instance"))
        self.assertIsInstance(outcomes[4], DeadLetter)
        self.assertIn("0x0111", outcomes[4].reason)
        self.assertEqual(outcomes[5], Retry("STOW-RS Failure Reason 0x0110"))

    async def test_an_instance_not_mentioned_is_sent_alone_next_time(self) -> None:
        """Retried after a response that did not mention it, an instance goes in a request of its own; the others together."""
        server = self.serve(Script())
        entries, uids = self.batch(3)
        entries[1] = dataclasses.replace(entries[1], last_error="the STOW-RS response did not mention this instance")
        self.assertEqual(await self.send(self.sender(), entries), [Delivered(0)] * 3)
        self.assertEqual(sorted(r.uids for r in server.received), sorted([[uids[1]], [uids[0], uids[2]]]))

    async def test_0110_is_retried_a_bounded_number_of_times(self) -> None:
        """0x0110 at the third attempt (unknown_status_attempts 3) is a dead letter naming the code."""
        entries, uids = self.batch(1, attempts=2)
        self.serve(Script(failures={uids[0]: [0x0110]}))
        (outcome,) = await self.send(self.sender(), entries)
        self.assertEqual(outcome, DeadLetter("STOW-RS Failure Reason 0x0110 after 3 attempts", DeadLetterKind.REFUSED))

    async def test_409_none_stored_each_from_its_reason(self) -> None:
        """A 409 with A700 and A900: one retried, one dead-lettered (not all treated alike by the status)."""
        entries, uids = self.batch(2)
        server = self.serve(Script(failures={uids[0]: [0xA700], uids[1]: [0xA900]}))
        outcomes = await self.send(self.sender(), entries)
        self.assertEqual(server.received[0].status, 409)
        self.assertIsInstance(outcomes[0], Retry)
        self.assertIsInstance(outcomes[1], DeadLetter)


class HttpStatusTests(SenderTestBase):
    """Statuses that concern the whole request: 413, 429, 401, other 4xx, cuts and slowness."""

    async def test_413_halves_the_request_until_each_part_fits(self) -> None:
        """A server taking one instance per request: 3 -> 413, 1 ok, 2 -> 413, 1 ok, 1 ok; all delivered."""
        server = self.serve(Script(max_instances=1))
        entries, uids = self.batch(3)
        outcomes = await self.send(self.sender(), entries)
        self.assertEqual(outcomes, [Delivered(0)] * 3)
        self.assertEqual([r.status for r in server.received], [413, 200, 413, 200, 200])
        self.assertEqual([u for r in server.received if r.status == 200 for u in r.uids], uids)

    async def test_413_for_one_instance_is_a_dead_letter(self) -> None:
        """One instance the server still finds too large: dead letter with the status."""
        self.serve(Script(steps={0: {"status": 413, "message": "payload too large"}}))
        entries, _ = self.batch(1)
        (outcome,) = await self.send(self.sender(), entries)
        self.assertIsInstance(outcome, DeadLetter)
        self.assertIn("413", outcome.reason)
        self.assertIn("payload too large", outcome.reason)

    async def test_429_retries_every_instance_after_retry_after(self) -> None:
        """429 with Retry-After: 7 retries each instance with after == 7 seconds."""
        self.serve(Script(steps={0: {"status": 429, "retry_after": "7"}}))
        entries, _ = self.batch(2)
        outcomes = await self.send(self.sender(), entries)
        self.assertEqual([type(o) for o in outcomes], [Retry, Retry])
        self.assertEqual([o.after for o in outcomes], [7.0, 7.0])  # type: ignore[union-attr]

    async def test_503_is_the_destination_down_with_its_retry_after(self) -> None:
        """503 with Retry-After 30 (an archive in maintenance): one DestinationDown asking 30 s, no attempt spent."""
        self.serve(Script(steps={0: {"status": 503, "retry_after": "30"}}))
        entries, _ = self.batch(2)
        outcomes = await self.send(self.sender(), entries)
        self.assertEqual(outcomes, [DestinationDown("STOW-RS HTTP 503, retry after 30s", after=30.0)])

    async def test_other_4xx_is_a_dead_letter_with_the_servers_message(self) -> None:
        """400 with a message: each instance dead-lettered with the status and the message."""
        self.serve(Script(steps={0: {"status": 400, "message": "bad thing\x00here"}}))
        entries, _ = self.batch(2)
        outcomes = await self.send(self.sender(), entries)
        self.assertEqual(outcomes, [DeadLetter("STOW-RS HTTP 400: bad thing?here", DeadLetterKind.REFUSED)] * 2)

    async def test_4xx_echoing_our_bearer_token_keeps_it_out_of_the_dead_letter(self) -> None:
        """A 400 whose message quotes the Authorization header sent: the dead letter's reason never holds the token."""
        self.serve(Script(steps={0: {"status": 400, "message": "rejected request with Authorization: Bearer tok-SECRET-4711"}}))
        token = os.path.join(self.folder, "token")
        with open(token, "w") as f:
            f.write("tok-SECRET-4711")
        entries, _ = self.batch(1)
        outcomes = await self.send(self.sender(auth=DicomWebAuth(kind="bearer", token_file=token)), entries)
        self.assertIsInstance(outcomes[0], DeadLetter)
        self.assertNotIn("SECRET", outcomes[0].reason)
        self.assertIn("[redacted]", outcomes[0].reason)

    async def test_401_opens_the_circuit_not_a_dead_letter(self) -> None:
        """A refused static token: one DestinationDown, no dead letter, no retry counted."""
        self.serve(Script(bearer="right"))
        token = os.path.join(self.folder, "token")
        with open(token, "w") as f:
            f.write("wrong")
        entries, _ = self.batch(2)
        outcomes = await self.send(self.sender(auth=DicomWebAuth(kind="bearer", token_file=token)), entries)
        self.assertEqual(len(outcomes), 1)
        self.assertIsInstance(outcomes[0], DestinationDown)
        self.assertIn("401", outcomes[0].reason)
        self.assertNotIn("wrong", outcomes[0].reason)

    async def test_bearer_file_is_read_again_when_it_changes(self) -> None:
        """After the token file is replaced, the next request carries the new token and is delivered."""
        server = self.serve(Script(bearer="second"))
        token = os.path.join(self.folder, "token")
        with open(token, "w") as f:
            f.write("first")
        sender = self.sender(auth=DicomWebAuth(kind="bearer", token_file=token))
        entries, _ = self.batch(1)
        self.assertIsInstance((await self.send(sender, entries))[0], DestinationDown)
        with open(token + ".new", "w") as f:
            f.write("second\n")
        os.replace(token + ".new", token)
        self.assertEqual(await self.send(sender, entries), [Delivered(0)])
        self.assertEqual([r.authorization for r in server.received], ["Bearer first", "Bearer second"])

    async def test_oauth2_token_cached_and_renewed_once_after_a_401(self) -> None:
        """The token endpoint is asked once for two requests; after a revocation the 401 brings one new token and a resend."""
        server = self.serve(Script(token={"client_id": "gw", "secret": "s3cret", "expires_in": 3600}))
        secret = os.path.join(self.folder, "secret")
        with open(secret, "w") as f:
            f.write("s3cret\n")
        auth = DicomWebAuth(kind="oauth2", token_url=self.url + "/token", client_id="gw", client_secret_file=secret)
        sender = self.sender(auth=auth)
        first, _ = self.batch(1)
        second, _ = self.batch(1)
        self.assertEqual(await self.send(sender, first), [Delivered(0)])
        self.assertEqual(await self.send(sender, second), [Delivered(0)])
        self.assertEqual(server.token_requests, 1)
        server.revoke_tokens()
        third, _ = self.batch(1)
        self.assertEqual(await self.send(sender, third), [Delivered(0)])
        self.assertEqual(server.token_requests, 2)
        studies = [r for r in server.received if r.path == "/studies"]
        self.assertEqual([r.status for r in studies], [200, 200, 401, 200])

    async def test_oauth2_wrong_secret_is_the_destination_down_without_the_secret(self) -> None:
        """A token endpoint refusing the client: DestinationDown whose reason holds the error code, never the secret."""
        self.serve(Script(token={"client_id": "gw", "secret": "right"}))
        secret = os.path.join(self.folder, "secret")
        with open(secret, "w") as f:
            f.write("sup3r-wrong")
        auth = DicomWebAuth(kind="oauth2", token_url=self.url + "/token", client_id="gw", client_secret_file=secret)
        entries, _ = self.batch(1)
        (outcome,) = await self.send(self.sender(auth=auth), entries)
        self.assertIsInstance(outcome, DestinationDown)
        self.assertIn("invalid_client", outcome.reason)
        self.assertNotIn("sup3r-wrong", outcome.reason)

    async def test_connection_cut_mid_body_retries_each_instance(self) -> None:
        """The server closes the connection after 1000 body bytes: every instance is retried, the next request delivers."""
        server = self.serve(Script(steps={0: {"cut_after": 1000}}))
        entries, _ = self.batch(2)
        sender = self.sender()
        outcomes = await self.send(sender, entries)
        self.assertEqual([type(o) for o in outcomes], [Retry, Retry])
        self.assertIn("STOW-RS request failed", outcomes[0].reason)  # type: ignore[union-attr]
        self.assertEqual(await self.send(sender, entries), [Delivered(0)] * 2)
        self.assertEqual([r.status for r in server.received], [0, 200])

    async def test_slow_server_times_out_as_an_ambiguous_retry(self) -> None:
        """An answer later than the timeout: each instance retried, ambiguous (the whole body had been sent)."""
        self.serve(Script(steps={0: {"delay": 3}}))
        entries, _ = self.batch(1)
        (outcome,) = await self.send(self.sender(timeout=0.5), entries)
        self.assertIsInstance(outcome, Retry)
        self.assertTrue(outcome.ambiguous)  # type: ignore[union-attr]
        self.assertIn("no complete answer within 0.5s", outcome.reason)  # type: ignore[union-attr]


class AbortTests(SenderTestBase):
    """The worker's grace period over: the request in flight is cancelled."""

    async def test_abort_cancels_the_request_in_flight_as_an_ambiguous_retry(self) -> None:
        """abort() while the server delays its answer: the instance is retried, ambiguous (its body had gone out)."""
        self.serve(Script(steps={0: {"delay": 5}}))
        entries, _ = self.batch(1)
        sender = self.sender()
        reactor.callLater(0.3, sender.abort)  # type: ignore[attr-defined]
        (outcome,) = await self.send(sender, entries)
        self.assertIsInstance(outcome, Retry)
        self.assertTrue(outcome.ambiguous)  # type: ignore[union-attr]
        self.assertEqual(sender.connections(), 0)


class ConversionTests(SenderTestBase):
    """The transfer-syntax policy's conversion, through convert_for's contract."""

    async def test_conversion_error_is_a_dead_letter_of_kind_conversion_and_others_go(self) -> None:
        """convert_for raising ConversionError for one entry dead-letters it (kind conversion); the other is delivered."""
        server = self.serve(Script())
        entries, uids = self.batch(2)
        real = dicomweb_module.convert_for

        def convert(policy: TransferSyntaxPolicy, path: str, scratch: str, accepted: Sequence[str] = ()) -> Converted:
            if path == entries[0].path:
                raise ConversionError("no codec")
            return real(TransferSyntaxPolicy(), path, scratch)

        self.patch(dicomweb_module, "convert_for", convert)
        outcomes = await self.send(self.sender(policy=TransferSyntaxPolicy("jpeg2000-lossless")), entries)
        self.assertEqual(outcomes[0], DeadLetter("cannot convert to jpeg2000-lossless: no codec", DeadLetterKind.CONVERSION))
        self.assertEqual(outcomes[1], Delivered(0))
        self.assertEqual(server.received[0].uids, [uids[1]])

    async def test_temporary_copies_are_sent_then_removed(self) -> None:
        """A converted copy (temporary) is what the server receives, and it is gone after the request."""
        server = self.serve(Script())
        entries, _ = self.batch(1)
        copy = os.path.join(self.folder, "converted.dcm")

        def convert(policy: TransferSyntaxPolicy, path: str, scratch: str, accepted: Sequence[str] = ()) -> Converted:
            shutil.copyfile(path, copy)
            return Converted(copy, "1.2.840.10008.1.2.1", entries[0].instance.sop_instance_uid, temporary=True)

        self.patch(dicomweb_module, "convert_for", convert)
        self.assertEqual(await self.send(self.sender(), entries), [Delivered(0)])
        self.assertEqual(len(server.received), 1)
        self.assertFalse(os.path.exists(copy))


class _NeverConnects:
    """An HTTP client whose requests time out before any of the body is written (a black-holed address)."""

    async def request(self, *args: Any, **kwargs: Any) -> Any:
        raise http_module.TimedOut("no complete answer within 1s")

    async def close(self) -> None:
        """Nothing held."""


class TimeoutBeforeBodyTests(SenderTestBase):
    """A timeout with nothing sent is the destination's, so an outage never spends attempts."""

    async def test_timeout_before_any_body_byte_is_the_destination_down(self) -> None:
        """The request timed out before writing: one DestinationDown, not a retry per instance."""
        self.url = "http://192.0.2.1/dicom-web"
        config = DicomWebDestination(name="cloud", url=self.url, timeout=1.0)
        context = SendContext(SynchronousRunner(), reactor, reactor, scratch_dir=self.folder)
        sender = DicomWebSender(config, context, client=_NeverConnects())  # type: ignore[arg-type]
        entries, _ = self.batch(2)
        outcomes = await self.send(sender, entries)
        self.assertEqual(len(outcomes), 1)
        self.assertIsInstance(outcomes[0], DestinationDown)


class TLSTests(SenderTestBase):
    """https with the destination's CA and our client certificate (mutual TLS), and a server we must not trust."""

    def serve_tls(self, script: Script) -> StowResource:
        """Serve ``script`` over TLS (the test CA's server certificate; client certificates required)."""
        from twisted.internet import ssl

        from tests.support.certs import material

        m = material()
        with open(m.server_key, "rb") as key, open(m.server, "rb") as cert, open(m.ca, "rb") as ca:
            server = ssl.PrivateCertificate.loadPEM(key.read() + b"\n" + cert.read())
            options = server.options(ssl.Certificate.loadPEM(ca.read()))
        resource = StowResource(script, reactor)
        port = reactor.listenSSL(0, site_for(resource), options, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        self.url = f"https://127.0.0.1:{port.getHost().port}/dicom-web"
        self.material = m
        return resource

    async def test_mutual_tls_with_the_destination_ca_delivers(self) -> None:
        """CA and client certificate configured: the server (which requires a client certificate) stores the instance."""
        from gateway.config.schema import DicomWebTLSConfig

        server = self.serve_tls(Script())
        m = self.material
        entries, _ = self.batch(1)
        tls = DicomWebTLSConfig(ca=m.ca, certificate=m.client, private_key=m.client_key)
        self.assertEqual(await self.send(self.sender(tls=tls), entries), [Delivered(0)])
        self.assertEqual(len(server.received), 1)

    async def test_a_server_of_another_ca_is_the_destination_down_with_its_tls_label(self) -> None:
        """Trusting another CA: no request reaches the server; DestinationDown carries a TLS failure label."""
        from gateway.config.schema import DicomWebTLSConfig

        server = self.serve_tls(Script())
        m = self.material
        entries, _ = self.batch(1)
        tls = DicomWebTLSConfig(ca=m.other_ca, certificate=m.client, private_key=m.client_key)
        (outcome,) = await self.send(self.sender(tls=tls), entries)
        self.assertIsInstance(outcome, DestinationDown)
        self.assertEqual(outcome.tls_failure, "unknown_ca", outcome)  # type: ignore[union-attr]
        self.assertEqual(server.received, [])


@dataclasses.dataclass(frozen=True)
class _ScriptedDestination:
    """A destination kind of this test only, served by :class:`_RetryAfterSender`."""

    name: str = "archive"
    retry: RetryConfig = RetryConfig(initial_delay=1.0, max_delay=600.0, jitter=0.0)
    circuit: Any = None


class _RetryAfterSender:
    """Answers every entry with a retry that asks for 100 s (a STOW-RS 429 with Retry-After: 100)."""

    slots = 1
    batch_size = 10
    lease_seconds = 60.0

    def __init__(self, config: Any, context: SendContext) -> None:
        self.sent = 0

    async def send(self, slot: int, batch: Sequence[Entry]) -> Any:
        for entry in batch:
            self.sent += 1
            yield entry, Retry("STOW-RS HTTP 429, retry after 100s", after=100.0)

    async def probe(self) -> None:
        return None

    async def idle(self, slot: int, now: float) -> None:
        return None

    async def close(self, slot: int) -> None:
        """Nothing held."""

    def abort(self) -> None:
        """Nothing in flight."""

    def connections(self) -> int:
        return 0


class _UnavailableSender(_RetryAfterSender):
    """Answers with the destination down for 100 s (a STOW-RS 503 with Retry-After: 100)."""

    async def send(self, slot: int, batch: Sequence[Entry]) -> Any:
        for entry in batch:
            self.sent += 1
            yield entry, DestinationDown("STOW-RS HTTP 503, retry after 100s", after=100.0)


@dataclasses.dataclass(frozen=True)
class _UnavailableDestination(_ScriptedDestination):
    """The kind served by :class:`_UnavailableSender`."""


class RetryAfterFloorTests(WorkerTestsMixin, SynchronousTestCase):
    """The worker waits at least the Retry-After a sender's Retry carries, whatever its backoff says."""

    def setUp(self) -> None:
        WorkerTestsMixin.setUp(self)
        register_sender(_ScriptedDestination, _RetryAfterSender)
        self.addCleanup(SENDERS.pop, _ScriptedDestination)
        register_sender(_UnavailableDestination, _UnavailableSender)
        self.addCleanup(SENDERS.pop, _UnavailableDestination)

    def test_retry_after_is_a_floor_of_the_backoff(self) -> None:
        """Backoff 1 s, Retry-After 100 s: the entry is due again 100 s later, and not sent again 50 s later."""
        self.enqueue(self.instance())
        start = self.clock.seconds()
        worker = self.worker(_ScriptedDestination(circuit=CircuitConfig()))  # type: ignore[arg-type]
        (entry,) = self.store.entries("archive")
        self.assertEqual(entry.state, EntryState.QUEUED)
        self.assertGreaterEqual(entry.next_attempt_at, start + 100.0)
        self.assertEqual(worker.sender.sent, 1)  # type: ignore[attr-defined]
        self.clock.advance(50)
        self.assertEqual(worker.sender.sent, 1)  # type: ignore[attr-defined]

    def test_unavailable_waits_the_retry_after_without_spending_an_attempt(self) -> None:
        """A 503 asking 100 s below the circuit's threshold: not tried again 50 s later, no attempt counted."""
        self.enqueue(self.instance())
        worker = self.worker(_UnavailableDestination(circuit=CircuitConfig(failures=3)))  # type: ignore[arg-type]
        self.assertEqual(worker.sender.sent, 1)  # type: ignore[attr-defined]
        self.clock.advance(50)
        self.assertEqual(worker.sender.sent, 1)  # type: ignore[attr-defined]
        (entry,) = self.store.entries("archive")
        self.assertEqual(entry.attempts, 0)
        self.clock.advance(60)
        self.assertEqual(worker.sender.sent, 2)  # type: ignore[attr-defined]


class _EchoClient:
    """An HTTP client that records the URLs asked and answers each with ``code`` and a body echoing the URL."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.urls: list[str] = []

    async def request(self, method: bytes, url: str, headers: Any, body: Any = None, limit: int = 0) -> Any:
        from gateway.dicomweb.client_auth import Answer

        self.urls.append(url)
        return Answer(self.code, {"content-type": "text/plain"}, f"Cannot {method.decode()} {url}".encode())

    def abort(self) -> None:
        """Nothing in flight."""

    def connections(self) -> int:
        return 0

    async def close(self) -> None:
        """Nothing held."""


class UrlWithQueryTests(SynchronousTestCase):
    """A destination URL with a query (a function key, ``?code=...``): the STOW-RS and QIDO-RS paths go before it, and its values never reach a reason."""

    def setUp(self) -> None:
        self.folder = self.mktemp()
        os.makedirs(self.folder)

    def sender(self, code: int) -> tuple[DicomWebSender, _EchoClient]:
        client = _EchoClient(code)
        config = DicomWebDestination(name="cloud", url="https://cloud.example/dicomweb?code=K3Y-s3cr3t-value&x=1",
                                     retry=RetryConfig(unknown_status_attempts=3, max_delay=60.0))
        context = SendContext(SynchronousRunner(), reactor, None, scratch_dir=self.folder)
        return DicomWebSender(config, context, client=client), client  # type: ignore[arg-type]

    def run_batch(self, sender: DicomWebSender, entries: Sequence[Entry]) -> list[Outcome]:
        from twisted.internet.defer import ensureDeferred

        async def collect() -> list[Outcome]:
            return [outcome async for _entry, outcome in sender.send(0, entries)]

        return self.successResultOf(ensureDeferred(collect()))

    def test_studies_path_goes_before_the_query(self) -> None:
        """POST goes to {path}/studies?{query}, the probe to {path}/studies?{query}&limit=1, the query kept whole."""
        sender, client = self.sender(200)
        (path, uid), = make_files(self.folder, 1)
        self.run_batch(sender, [entry_for(path, uid, 1)])
        from twisted.internet.defer import ensureDeferred

        self.successResultOf(ensureDeferred(sender.probe()))
        self.assertEqual(client.urls, [
            "https://cloud.example/dicomweb/studies?code=K3Y-s3cr3t-value&x=1",
            "https://cloud.example/dicomweb/studies?code=K3Y-s3cr3t-value&x=1&limit=1",
        ])

    def test_a_refusal_echoing_the_url_keeps_its_key_out_of_the_dead_letter(self) -> None:
        """A 404 whose body repeats the URL asked: the dead letter's reason has no query value."""
        sender, _ = self.sender(404)
        (path, uid), = make_files(self.folder, 1)
        (outcome,) = self.run_batch(sender, [entry_for(path, uid, 1)])
        self.assertIsInstance(outcome, DeadLetter)
        self.assertNotIn("K3Y-s3cr3t", outcome.reason)
