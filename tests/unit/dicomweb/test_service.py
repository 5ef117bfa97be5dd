"""The STOW-RS service's Twisted layer: a real spool and intake (memory journal) behind the site, driven with bytes.

Each test builds the site over a :class:`~gateway.spool.Spool` in a
temporary folder and an :class:`~gateway.intake.Intake` over a
:class:`~gateway.queue.memory.MemoryQueueStore` (synchronous runners), feeds
a request over a ``StringTransport`` and reads the response and the journal.
"""

from __future__ import annotations

from dataclasses import replace
import json
import os
import shutil
import struct
import tempfile
from typing import Any

from prometheus_client import CollectorRegistry
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gateway.blocking import SynchronousRunner
from gateway.config.schema import DicomWebAuthConfig, DicomWebListenConfig, DicomWebServiceConfig, RouteConfig
from gateway.dicomweb.service import StowHandler, StowMetrics, StowSite, read_part10_prefix
from gateway.dicomweb.tokens import parse_tokens
from gateway.intake import Intake
from gateway.queue.interfaces import EntryState
from gateway.queue.memory import MemoryQueueStore
from gateway.spool import Spool
from tests.support.datasets import write_instance

TOKEN = "stow-test-token-0123456789"
BOUNDARY = "stow-boundary"


def instance_bytes(folder: str, name: str, **uids: str) -> bytes:
    """A small CT Part 10 file's bytes."""
    path = os.path.join(folder, name)
    write_instance(path, ExplicitVRLittleEndian, 4096, **uids)
    with open(path, "rb") as fp:
        return fp.read()


def multipart(*parts: bytes) -> bytes:
    """A ``multipart/related`` body of ``parts``."""
    out = b""
    for part in parts:
        out += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


class ServiceTests(SynchronousTestCase):
    """Requests in, responses and journal rows out."""

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.clock = Clock()
        self.spool = Spool(os.path.join(self.tmp, "spool"), SynchronousRunner(), implementation_class_uid="1.2.3",
                           implementation_version_name="T", max_instance_size=1 << 26, slot_batch=4)
        self.spool.recover()
        self.spool.prepare_slots()
        self.store = MemoryQueueStore()
        self.contexts: list[Any] = []
        self.intake = Intake(
            store=self.store, store_runner=SynchronousRunner(), file_runner=SynchronousRunner(),
            routes=lambda: [RouteConfig("all", ("pacs",))], wall=lambda: 1_000_000.0, duplicate_window=3600.0,
            unrouted_dir=os.path.join(self.tmp, "unrouted"),
        )
        real_context = self.intake._context

        def context(info: Any, received_at: float) -> Any:
            made = real_context(info, received_at)
            self.contexts.append(made)
            return made

        self.intake._context = context  # type: ignore[method-assign]
        tokens, _ = parse_tokens(f"alice:{TOKEN}\n")
        self.config = DicomWebServiceConfig(
            listen=(DicomWebListenConfig(port=0),),
            auth=DicomWebAuthConfig(tokens_file=os.path.join(self.tmp, "none"), tokens=tokens),
            max_request_size=1 << 20,
        )
        self.low = False
        self.registry = CollectorRegistry()
        self.handler = StowHandler(
            config=lambda: self.config, ae_title=lambda: "GATEWAY", spool=lambda: self.spool,
            admit=lambda writer, info, refuse: self.intake.take(writer, info, None, refuse),
            space_low=lambda: self.low, blocking=SynchronousRunner(), clock=self.clock,
            metrics=StowMetrics(self.registry),
        )
        self.site = StowSite(self.handler, self.clock, max_connections=100, header_timeout=5.0)
        self.study = generate_uid()

    def post(self, body: bytes, path: str = "/studies", *, token: str | None = TOKEN,
             content_type: str = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
             extra: tuple[str, ...] = (), chunk: int = 0) -> tuple[int, dict[str, str], bytes]:
        """Send one request; the status, headers (lower-cased) and body of the response."""
        address = IPv4Address("TCP", "10.0.0.7", 40000)
        channel = self.site.buildProtocol(address)
        transport = StringTransport(peerAddress=address, hostAddress=IPv4Address("TCP", "127.0.0.1", 8080))
        channel.makeConnection(transport)
        lines = [f"POST {path} HTTP/1.1", "Host: x", f"Content-Type: {content_type}", f"Content-Length: {len(body)}", *extra]
        if token is not None:
            lines.append(f"Authorization: Bearer {token}")
        channel.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode())
        step = chunk or max(1, len(body))
        for at in range(0, len(body), step):
            channel.dataReceived(body[at : at + step])
        return parse_response(transport.value())

    def test_all_stored_is_200_and_journaled_with_the_dicomweb_context(self) -> None:
        """Two instances in one POST: 200, both journaled, routed with origin dicomweb and the client's name."""
        a = instance_bytes(self.tmp, "a.dcm", study_instance_uid=self.study)
        b = instance_bytes(self.tmp, "b.dcm", study_instance_uid=self.study)
        code, headers, body = self.post(multipart(a, b), chunk=1000)
        self.assertEqual(code, 200)
        self.assertEqual(headers["content-type"], "application/dicom+json")
        self.assertEqual(len(json.loads(body)["00081199"]["Value"]), 2)
        self.assertEqual(len(self.store.entries("pacs")), 2)
        self.assertEqual({(c.origin, c.calling_ae_title, c.called_ae_title, c.source_address, c.listener) for c in self.contexts},
                         {("dicomweb", "alice", "GATEWAY", "10.0.0.7", "dicomweb")})

    def test_spooled_data_set_is_the_posted_one_byte_for_byte(self) -> None:
        """The spool file's data set equals the posted file's data set (only the meta is the gateway's)."""
        a = instance_bytes(self.tmp, "a.dcm", study_instance_uid=self.study)
        self.assertEqual(self.post(multipart(a), chunk=333)[0], 200)
        posted = read_part10_prefix(a)
        assert isinstance(posted, tuple)
        stored = []
        for name in os.listdir(self.spool.instances_dir):
            with open(os.path.join(self.spool.instances_dir, name), "rb") as fp:
                data = fp.read()
            found = read_part10_prefix(data) if data else None
            if isinstance(found, tuple):
                stored.append(data[found[1]:])
        self.assertEqual(stored, [a[posted[1]:]])

    def test_non_dicom_part_fails_alone_with_c000(self) -> None:
        """A part that is not PS3.10 fails with 0xC000; the others are stored: 202."""
        a = instance_bytes(self.tmp, "a.dcm", study_instance_uid=self.study)
        code, _, body = self.post(multipart(a, b"hello, not DICOM"))
        self.assertEqual(code, 202)
        reply = json.loads(body)
        self.assertEqual(reply["00081198"]["Value"][0]["00081197"]["Value"], [0xC000])
        self.assertEqual(len(self.store.entries("pacs")), 1)

    def test_study_mismatch_single_is_409_mixed_is_202(self) -> None:
        """POST /studies/{uid}: an instance of another study fails 0xA900 and is not journaled."""
        other = instance_bytes(self.tmp, "o.dcm", study_instance_uid=generate_uid())
        code, _, body = self.post(multipart(other), f"/studies/{self.study}")
        self.assertEqual(code, 409)
        self.assertEqual(json.loads(body)["00081198"]["Value"][0]["00081197"]["Value"], [0xA900])
        self.assertEqual(self.store.entries("pacs"), [])
        mine = instance_bytes(self.tmp, "m.dcm", study_instance_uid=self.study)
        self.assertEqual(self.post(multipart(mine, other), f"/studies/{self.study}")[0], 202)
        self.assertEqual(len(self.store.entries("pacs")), 1)

    def test_repost_is_accepted_and_not_queued_again(self) -> None:
        """The same instance posted twice: 200 both times, one queue entry (the duplicate window)."""
        a = instance_bytes(self.tmp, "a.dcm", study_instance_uid=self.study)
        self.assertEqual(self.post(multipart(a))[0], 200)
        self.assertEqual(self.post(multipart(a))[0], 200)
        self.assertEqual(len(self.store.entries("pacs", EntryState.QUEUED)), 1)
        self.assertEqual(len(self.store.entries("pacs", EntryState.DUPLICATE)), 1)

    def test_single_part_application_dicom(self) -> None:
        """A body of type application/dicom is one instance."""
        a = instance_bytes(self.tmp, "a.dcm", study_instance_uid=self.study)
        self.assertEqual(self.post(a, content_type="application/dicom")[0], 200)
        self.assertEqual(len(self.store.entries("pacs")), 1)

    def test_refusals_before_the_body(self) -> None:
        """401 (with WWW-Authenticate), 415, 413, 503 (with Retry-After), 404, 400: answered at the headers."""
        code, headers, _ = self.post(b"x", token=None)
        self.assertEqual((code, headers.get("www-authenticate", "")[:6]), (401, "Bearer"))
        self.assertEqual(self.post(b"x", token="wrong-token-0123456789")[0], 401)
        self.assertEqual(self.post(b"{}", content_type="application/dicom+json")[0], 415)
        self.assertEqual(self.post(b"x", content_type='multipart/related; type="application/dicom+xml"; boundary=b')[0], 415)
        self.assertEqual(self.post(b"x", content_type='multipart/related; type="application/dicom"')[0], 400)
        self.assertEqual(self.post(b"x" * (2 << 20))[0], 413)
        self.assertEqual(self.post(b"x", "/other")[0], 404)
        self.low = True
        code, headers, _ = self.post(b"x")
        self.assertEqual((code, headers.get("retry-after")), (503, "60"))
        self.assertEqual(self.store.entries("pacs"), [])

    def test_malformed_multipart_is_400(self) -> None:
        """No delimiter at all, or a body without its close delimiter: 400."""
        self.assertEqual(self.post(b"no delimiter here at all")[0], 400)
        a = instance_bytes(self.tmp, "a.dcm", study_instance_uid=self.study)
        truncated = multipart(a)[: -len(f"--{BOUNDARY}--\r\n") - 2]
        self.assertEqual(self.post(truncated)[0], 400)

    def test_requests_are_audited_with_the_client(self) -> None:
        """A stored request is a DICOM Instances Transferred record naming the client; a 401 a Security Alert."""
        records: list[tuple[Any, ...]] = []

        class Audit:
            def emit(self, event: Any, action: str, outcome: Any, **kwargs: Any) -> None:
                records.append((event.code, action, int(outcome), kwargs))

            def us(self, role: str) -> Any:
                from gateway.audit import Participant

                return Participant(user_id="GATEWAY", role=role)

        self.handler.audit = Audit()
        self.post(b"x", token=None)
        a = instance_bytes(self.tmp, "a.dcm", study_instance_uid=self.study)
        self.post(multipart(a))
        self.assertEqual([(code, action) for code, action, _, _ in records], [("110113", "E"), ("110104", "C")])
        stored = records[1][3]
        self.assertEqual((stored["participants"][0].user_id, stored["participants"][0].network_access_point), ("alice", "10.0.0.7"))
        self.assertEqual([o.id for o in stored["objects"]], [self.study])
        self.assertEqual(stored["extra"]["http_status"], "200")

    def test_certificate_rules_and_require_all(self) -> None:
        """A verified certificate matching a rule names the client; ``require: all`` needs the token too."""
        from cryptography import x509

        from gateway.config.schema import DicomWebClientCertificate
        from tests.support.certs import material

        m = material()
        with open(m.client, "rb") as fp:
            certificate = x509.load_pem_x509_certificate(fp.read())

        class TLSTransport:
            def getPeerCertificate(self) -> Any:
                return certificate

        rule = DicomWebClientCertificate("CN=modality1", "uploader")
        self.config = replace(self.config, auth=replace(self.config.auth, certificates=(rule,)))
        self.assertEqual(self.handler.authenticate(None, TLSTransport()), ("uploader", m.subject("client")))
        self.assertEqual(self.handler.authenticate(f"Bearer {TOKEN}".encode(), object())[0], "alice")
        self.config = replace(self.config, auth=replace(self.config.auth, require="all"))
        self.assertIsNone(self.handler.authenticate(None, TLSTransport())[0])
        self.assertIsNone(self.handler.authenticate(f"Bearer {TOKEN}".encode(), object())[0])
        self.assertEqual(self.handler.authenticate(f"Bearer {TOKEN}".encode(), TLSTransport())[0], "alice")
        other = DicomWebClientCertificate("CN=someone-else", "x")
        self.config = replace(self.config, auth=replace(self.config.auth, certificates=(other,), require="any"))
        self.assertIsNone(self.handler.authenticate(None, TLSTransport())[0])

    def test_requests_are_counted_by_code(self) -> None:
        """``dicom_gateway_dicomweb_requests_total{code}`` counts answered requests."""
        self.post(b"x", token=None)
        a = instance_bytes(self.tmp, "a.dcm", study_instance_uid=self.study)
        self.post(multipart(a))
        value = self.registry.get_sample_value
        self.assertEqual(value("dicom_gateway_dicomweb_requests_total", {"code": "401"}), 1.0)
        self.assertEqual(value("dicom_gateway_dicomweb_requests_total", {"code": "200"}), 1.0)


class _ManualLane:
    """A spool lane whose work waits until the test runs it (a disk slower than the network)."""

    def __init__(self) -> None:
        self.work: list[tuple[Any, tuple[Any, ...]]] = []

    def submit(self, f: Any, *args: Any) -> None:
        self.work.append((f, args))

    def run(self) -> None:
        while self.work:
            f, args = self.work.pop(0)
            f(*args)


class _HeldRunner:
    """A blocking runner whose calls wait until the test releases them."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, tuple[Any, ...], Deferred[Any]]] = []

    def run(self, f: Any, *args: Any) -> "Deferred[Any]":
        d: Deferred[Any] = Deferred()
        self.calls.append((f, args, d))
        return d

    def release(self) -> None:
        while self.calls:
            f, args, d = self.calls.pop(0)
            d.callback(f(*args))


class BackPressureTests(SynchronousTestCase):
    """While the spool's lane lags, the client's transport is paused; it resumes once the lane has drained."""

    def test_slow_lane_pauses_the_client_until_drained(self) -> None:
        """A 6 MiB instance fed faster than the lane writes: paused past 4 MiB of backlog, resumed once written."""
        from gateway.dicomweb import service as stow

        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp, True)
        lane = _ManualLane()
        spool = Spool(os.path.join(tmp, "spool"), SynchronousRunner(), implementation_class_uid="1.2.3",
                      implementation_version_name="T", max_instance_size=1 << 30, slot_batch=4, lanes=lambda: lane)
        spool.recover()
        spool.prepare_slots()
        runner = _HeldRunner()
        tokens, _ = parse_tokens(f"alice:{TOKEN}\n")
        config = DicomWebServiceConfig(listen=(DicomWebListenConfig(port=0),),
                                       auth=DicomWebAuthConfig(tokens_file=os.path.join(tmp, "none"), tokens=tokens))
        handler = StowHandler(
            config=lambda: config, ae_title=lambda: "GW", spool=lambda: spool,
            admit=lambda writer, info, refuse: Deferred(), space_low=lambda: False, blocking=runner, clock=Clock(),
            metrics=StowMetrics(CollectorRegistry()),
        )
        site = StowSite(handler, Clock(), max_connections=10, header_timeout=5.0)
        address = IPv4Address("TCP", "10.0.0.7", 40000)
        channel = site.buildProtocol(address)
        transport = StringTransport(peerAddress=address, hostAddress=IPv4Address("TCP", "127.0.0.1", 8080))
        channel.makeConnection(transport)
        # A CT whose Pixel Data (the last element) is re-announced as 6 MiB, streamed below.
        small = instance_bytes(tmp, "big.dcm")
        at = small.rindex(b"\xe0\x7f\x10\x00OW")
        size = 6 * 1024 * 1024
        head = (f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + small[:at]
                + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, size))
        channel.dataReceived((f"POST /studies HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                              f'Content-Type: multipart/related; type="application/dicom"; boundary={BOUNDARY}\r\n'
                              "Transfer-Encoding: chunked\r\n\r\n").encode())

        def chunk(data: bytes) -> None:
            channel.dataReceived(f"{len(data):x}\r\n".encode() + data + b"\r\n")

        chunk(head)
        self.assertEqual(transport.producerState, "producing")
        # The pixel bytes, with the lane not writing: paused once more than PAUSE_BACKLOG wait for it.
        fed = 0
        while transport.producerState == "producing" and fed < size:
            chunk(b"\x00" * (256 * 1024))
            fed += 256 * 1024
        self.assertEqual(transport.producerState, "paused")
        self.assertGreater(fed, stow.PAUSE_BACKLOG - 512 * 1024)
        self.assertLess(fed, stow.PAUSE_BACKLOG + 512 * 1024)
        self.assertEqual(len(runner.calls), 1)  # one wait for the lane, off the reactor
        lane.run()  # the disk catches up
        runner.release()
        self.assertEqual(transport.producerState, "producing")


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body of one HTTP/1.1 response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if lines[0].startswith("HTTP/1.1 100"):
        return parse_response(body)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body
