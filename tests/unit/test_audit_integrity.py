"""Tests that the audit trail cannot be flushed away or quietly edited (HARDENING H11).

* refusals are aggregated per address and reason into one summary a minute;
* every line carries the SHA-256 of the line before it, across rotations,
  restarts and concurrent appenders, and ``dicom-gateway audit verify``
  names the first broken link;
* the syslog sink's memory is bounded while connected as well as while
  disconnected, and the records it drops are counted.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.defer import succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from gateway.audit import (
    CHAIN_KEY,
    CHAIN_START,
    AuditTrail,
    JsonLinesFile,
    MemorySink,
    Participant,
    SyslogTLSSink,
    line_digest,
    lock_path,
    read_records,
    rotation_order,
    verify_chain,
)

#: The repository root (for subprocesses running this checkout).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def reject(trail: AuditTrail, peer: str = "10.0.0.7:40000", calling: str = "FLOOD", rejection: tuple[int, int, int] = (1, 1, 3)) -> Any:
    """One rejected association on listener ``main``.

    :returns: what the trail returned (a record, or ``None`` when counted).
    """
    return trail.association_rejected(
        peer=peer,
        calling_ae_title=calling,
        called_ae_title="GW",
        listener="main",
        reason=f"calling AE title {calling} not allowed",
        rejection=rejection,
    )


class AggregationTests(SynchronousTestCase):
    """Per address and reason, the first refusal of a minute is written, the rest summed into one record."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1700000000)
        self.sink = MemorySink()
        self.trail = AuditTrail([self.sink], ae_title="GW", wall=self.clock.seconds, hostname="gw", clock=self.clock)

    def test_flood_of_rejections_is_one_record_and_one_summary(self) -> None:
        """24,000 rejections in 10 s from one address (new ports, new AE titles): the first written, then one summary of 23,999 at the minute."""
        for n in range(24000):
            reject(self.trail, peer=f"10.0.0.7:{20000 + n % 40000}", calling=f"AE{n}")
            if n % 2400 == 2399:
                self.clock.advance(1.0)
        self.assertEqual(len(self.sink.records), 1)
        self.assertEqual(self.sink.records[0].participants[0].user_id, "AE0")
        self.clock.advance(50.0)
        self.assertEqual(len(self.sink.records), 2)
        summary = self.sink.records[1]
        self.assertEqual((summary.event_id, summary.disposition), ("110113", "rejected"))
        self.assertEqual(summary.extra["aggregated"], "23999")
        self.assertEqual(summary.extra["rejection"], "1,1,3")
        self.assertEqual(summary.participants[0].network_access_point, "10.0.0.7")
        self.assertIn("23999 more rejected associations from 10.0.0.7", summary.description)
        self.assertEqual(self.trail.aggregated, 23999)

    def test_a_new_minute_writes_the_first_rejection_again(self) -> None:
        """After the window closed, the next rejection from the same address is written in full."""
        self.assertIsNotNone(reject(self.trail))
        self.assertIsNone(reject(self.trail))
        self.clock.advance(60.0)
        self.assertIsNotNone(reject(self.trail))
        self.assertEqual([r.extra.get("aggregated") for r in self.sink.records], [None, "1", None])

    def test_certificate_subjects_are_counted_apart(self) -> None:
        """Two verified certificates refused from one address are two records; a repeat of one is counted into its summary."""
        for subject in ("CN=modality1", "CN=modality2", "CN=modality1"):
            self.trail.association_rejected(peer="127.0.0.1:1", calling_ae_title="CT1", called_ae_title="GW",
                                            listener="tls", reason="not mapped", rejection=(1, 1, 3),
                                            certificate_subject=subject)
        self.assertEqual([r.participants[0].certificate_subject for r in self.sink.records], ["CN=modality1", "CN=modality2"])
        self.clock.advance(60.0)
        self.assertEqual(self.sink.records[-1].participants[0].certificate_subject, "CN=modality1")
        self.assertEqual(self.sink.records[-1].extra["aggregated"], "1")

    def test_a_lone_rejection_writes_no_summary(self) -> None:
        """A window with nothing counted closes without a record."""
        reject(self.trail)
        self.clock.advance(120.0)
        self.assertEqual(len(self.sink.records), 1)

    def test_addresses_and_reasons_are_counted_apart(self) -> None:
        """Another address, or another A-ASSOCIATE-RJ from the same address, opens its own window."""
        reject(self.trail, peer="10.0.0.7:1")
        reject(self.trail, peer="10.0.0.8:1")
        reject(self.trail, peer="10.0.0.7:2", rejection=(1, 1, 7))
        reject(self.trail, peer="10.0.0.7:3")
        self.assertEqual(len(self.sink.records), 3)
        self.clock.advance(60.0)
        summaries = [r for r in self.sink.records if "aggregated" in r.extra]
        self.assertEqual([(s.participants[0].network_access_point, s.extra["rejection"]) for s in summaries],
                         [("10.0.0.7", "1,1,3")])

    def test_accepted_associations_and_instances_are_never_aggregated(self) -> None:
        """Accepted associations, received and exported instances are all written, however many."""
        for _ in range(5):
            self.trail.association_accepted(peer="10.0.0.7:1", calling_ae_title="CT", called_ae_title="GW", listener="main")
            self.trail.instance("received", sop_instance_uid="1.2", source=Participant("CT"), destination=self.trail.us("destination"))
            self.trail.instance("exported", sop_instance_uid="1.2", source=self.trail.us("source"), destination=Participant("f"))
        self.assertEqual(len(self.sink.records), 15)
        self.clock.advance(60.0)
        self.assertEqual(len(self.sink.records), 15)

    def test_tls_failures_and_refused_identities_are_not_aggregated_by_default(self) -> None:
        """By default every failed handshake and refused identity is its own record."""
        for n in range(3):
            self.trail.tls_failure(peer=f"10.0.0.9:{n}", listener="secure", reason="unknown_ca")
            self.trail.user_authentication(peer=f"10.0.0.9:{n}", calling_ae_title="CT", username=f"user{n}",
                                           identity_type=2, success=False, description="refused", listener="main")
        self.assertEqual(len(self.sink.records), 6)

    def test_tls_failures_and_refused_identities_can_be_aggregated(self) -> None:
        """With aggregate tls and user, failed handshakes (per reason) and refused identities (whatever the user name) are summed; accepted identities are not."""
        self.trail = AuditTrail([self.sink], ae_title="GW", wall=self.clock.seconds, hostname="gw", clock=self.clock,
                                aggregate=("rejected", "tls", "user"))
        for n in range(3):
            self.trail.tls_failure(peer=f"10.0.0.9:{n}", listener="secure", reason="unknown_ca")
            self.trail.user_authentication(peer=f"10.0.0.9:{n}", calling_ae_title="CT", username=f"user{n}",
                                           identity_type=2, success=False, description="refused", listener="main")
            self.trail.user_authentication(peer=f"10.0.0.9:{n}", calling_ae_title="CT", username="ok",
                                           identity_type=2, success=True, description="accepted", listener="main")
        self.assertEqual(len(self.sink.records), 2 + 3)
        self.clock.advance(60.0)
        summaries = {r.disposition: r for r in self.sink.records if "aggregated" in r.extra}
        self.assertEqual(summaries["tls_failure"].extra["aggregated"], "2")
        self.assertEqual(summaries["user_identity"].extra["aggregated"], "2")
        self.assertEqual(summaries["user_identity"].event_id, "110114")

    def test_stop_writes_the_open_summaries_first(self) -> None:
        """At stop, counted refusals are summarised before the stop record, and no timer is left behind."""
        reject(self.trail)
        reject(self.trail)
        self.trail.application_activity("stop")
        self.assertEqual([r.extra.get("aggregated") or r.disposition for r in self.sink.records], ["rejected", "1", "stop"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_many_addresses_share_one_overflow_window(self) -> None:
        """Beyond MAX_WINDOWS open windows, further addresses are summed under address '*'."""
        from gateway import audit

        self.patch(audit, "MAX_WINDOWS", 3)
        for n in range(10):
            reject(self.trail, peer=f"10.1.0.{n}:1")
        self.assertEqual(len(self.sink.records), 4)
        self.clock.advance(60.0)
        summary = self.sink.records[-1]
        self.assertEqual((summary.participants[0].network_access_point, summary.extra["aggregated"]), ("*", "6"))

    def test_without_a_clock_nothing_is_aggregated(self) -> None:
        """A trail built without a clock writes every record (tools, tests)."""
        sink = MemorySink()
        trail = AuditTrail([sink], ae_title="GW", hostname="gw")
        for _ in range(3):
            reject(trail)
        self.assertEqual(len(sink.records), 3)


class HashChainTests(SynchronousTestCase):
    """Each line carries the SHA-256 of the line before it, across rotations and restarts."""

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        self.path = os.path.join(self.dir, "audit", "audit.jsonl")

    def write(self, count: int, max_bytes: int = 0, keep: int = 10, what: str = "reload") -> None:
        """Write ``count`` records through a new JsonLinesFile (a new process, as far as the file can tell)."""
        sink = JsonLinesFile(self.path, max_bytes=max_bytes, keep=keep)
        trail = AuditTrail([sink], ae_title="GW", wall=lambda: 1700000000.0, hostname="gw")
        for n in range(count):
            trail.application_activity(what, f"record {n} " + "x" * 60)
        sink.close()

    def files(self) -> list[str]:
        """The audit files, oldest first."""
        folder = os.path.dirname(self.path)
        return rotation_order([os.path.join(folder, name) for name in os.listdir(folder) if name.startswith("audit.jsonl")])

    def lines(self, path: str) -> list[bytes]:
        """The raw lines of a file."""
        with open(path, "rb") as stream:
            return stream.read().splitlines()

    def test_each_line_links_to_the_one_before(self) -> None:
        """The first record links to the chain start; each next one to the SHA-256 of the line before."""
        self.write(3)
        lines = self.lines(self.path)
        links = [json.loads(line)[CHAIN_KEY] for line in lines]
        self.assertEqual(links, [CHAIN_START, line_digest(lines[0]), line_digest(lines[1])])
        self.assertEqual(str(verify_chain([self.path])), "OK: 3 record(s) in 1 file(s), the chain is unbroken")

    def test_the_chain_runs_across_rotations(self) -> None:
        """The first line of a rotated-in file links to the last line of the file rotated out."""
        self.write(30, max_bytes=1500, keep=20)
        files = self.files()
        self.assertGreater(len(files), 3)
        for older, newer in zip(files, files[1:]):
            self.assertEqual(json.loads(self.lines(newer)[0])[CHAIN_KEY], line_digest(self.lines(older)[-1]))
        report = verify_chain(files)
        self.assertTrue(report.ok, str(report))
        self.assertEqual(report.records, 30)

    def test_the_chain_continues_after_a_restart(self) -> None:
        """A new writer on an existing file links its first record to the last line on disk."""
        self.write(2)
        self.write(2, what="start")
        lines = self.lines(self.path)
        self.assertEqual(json.loads(lines[2])[CHAIN_KEY], line_digest(lines[1]))
        self.assertTrue(verify_chain([self.path]).ok)

    def test_a_restart_after_rotation_links_to_the_rotated_file(self) -> None:
        """With an empty live file (rotated, then a restart) the link is the last line of file.1."""
        self.write(3)
        os.replace(self.path, self.path + ".1")
        self.write(1)
        self.assertEqual(json.loads(self.lines(self.path)[0])[CHAIN_KEY], line_digest(self.lines(self.path + ".1")[-1]))

    def test_an_edited_record_is_reported_at_the_next_line(self) -> None:
        """Changing one record's text breaks the link of the record after it: verify names that file and line."""
        self.write(30, max_bytes=1500, keep=20)
        files = self.files()
        victim = files[1]
        lines = self.lines(victim)
        lines[1] = lines[1].replace(b"record", b"RECORD")
        with open(victim, "wb") as stream:
            stream.write(b"\n".join(lines) + b"\n")
        report = verify_chain(files)
        self.assertFalse(report.ok)
        self.assertEqual((report.broken_file, report.broken_line), (victim, 3))

    def test_a_deleted_record_is_reported(self) -> None:
        """Removing a line in the middle breaks the chain at the line that followed it."""
        self.write(5)
        lines = self.lines(self.path)
        del lines[2]
        with open(self.path, "wb") as stream:
            stream.write(b"\n".join(lines) + b"\n")
        report = verify_chain([self.path])
        self.assertEqual((report.broken_file, report.broken_line), (self.path, 3))

    def test_a_deleted_middle_file_is_reported(self) -> None:
        """A rotated file removed from the middle of the set breaks the first link of the file after it."""
        self.write(30, max_bytes=1500, keep=20)
        files = self.files()
        os.unlink(files[1])
        report = verify_chain(files[:1] + files[2:])
        self.assertEqual((report.broken_file, report.broken_line), (files[2], 1))

    def test_a_torn_line_is_ended_and_reported(self) -> None:
        """A line cut by a crash is ended before the next record; verify reports it as not a chained record."""
        self.write(2)
        with open(self.path, "ab") as stream:
            stream.write(b'{"time":"2023-11')
        self.write(1)
        lines = self.lines(self.path)
        self.assertEqual(len(lines), 4)
        self.assertEqual(json.loads(lines[3])[CHAIN_KEY], line_digest(lines[2]))
        report = verify_chain([self.path])
        self.assertEqual(report.broken_line, 3)
        self.assertIn("not a chained audit record", report.reason)

    def test_files_and_lock_are_owner_only(self) -> None:
        """The audit folder the writer creates is 0700; files, rotated files and the lock file are 0600."""
        old = os.umask(0o022)
        self.addCleanup(os.umask, old)
        self.write(30, max_bytes=1500, keep=3)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(self.path)).st_mode), 0o700)
        for path in [*self.files(), lock_path(self.path)]:
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, path)

    def test_rotation_order_puts_the_oldest_first(self) -> None:
        """A glob's order (.1, .10, .2) is put back in rotation order, the live file last."""
        self.assertEqual(rotation_order(["a.jsonl", "a.jsonl.1", "a.jsonl.10", "a.jsonl.2"]),
                         ["a.jsonl.10", "a.jsonl.2", "a.jsonl.1", "a.jsonl"])

    def test_the_cli_reports_the_first_broken_link_and_exits_non_zero(self) -> None:
        """dicom-gateway audit verify prints OK with a count (status 0), or FILE:LINE of the first broken link (status 1)."""
        self.write(30, max_bytes=1500, keep=20)
        files = self.files()
        command = [sys.executable, "-m", "gateway", "audit", "verify", *reversed(files)]
        env = dict(os.environ, PYTHONPATH=REPO_ROOT)
        good = subprocess.run(command, capture_output=True, text=True, env=env, check=False, timeout=120)
        self.assertEqual((good.returncode, good.stdout.strip()),
                         (0, f"OK: 30 record(s) in {len(files)} file(s), the chain is unbroken"), good.stderr)
        lines = self.lines(files[-1])
        lines[0] = lines[0].replace(b"reload", b"reloaX")
        with open(files[-1], "wb") as stream:
            stream.write(b"\n".join(lines) + b"\n")
        bad = subprocess.run(command, capture_output=True, text=True, env=env, check=False, timeout=120)
        self.assertEqual(bad.returncode, 1)
        self.assertTrue(bad.stderr.startswith(f"{files[-1]}:2: broken link: "), bad.stderr)


class ConcurrentAppendersTests(SynchronousTestCase):
    """Two processes appending to (and rotating) one audit file keep one verifiable chain."""

    def test_two_processes_interleaving_and_rotating_keep_the_chain(self) -> None:
        """Two writer processes, 1000 records each, small rotation size: every record is kept and the chain verifies."""
        folder = os.path.abspath(self.mktemp())
        path = os.path.join(folder, "audit.jsonl")
        script = textwrap.dedent(
            f"""
            import sys
            from gateway.audit import AuditTrail, JsonLinesFile
            sink = JsonLinesFile({path!r}, max_bytes=50000, keep=100)
            trail = AuditTrail([sink], ae_title="GW", hostname=sys.argv[1])
            for n in range(1000):
                trail.application_activity("reload", sys.argv[1] + " " + str(n))
            sink.close()
            """
        )
        env = dict(os.environ, PYTHONPATH=REPO_ROOT)
        writers = [subprocess.Popen([sys.executable, "-c", script, name], env=env) for name in ("one", "two")]
        self.assertEqual([w.wait(timeout=120) for w in writers], [0, 0])
        files = rotation_order([os.path.join(folder, n) for n in os.listdir(folder) if n.startswith("audit.jsonl")])
        self.assertGreater(len(files), 2)
        report = verify_chain(files)
        self.assertTrue(report.ok, str(report))
        self.assertEqual(report.records, 2000)
        sources = sorted(r["source"] for f in files for r in read_records(f))
        self.assertEqual(sources, ["GW@one"] * 1000 + ["GW@two"] * 1000)


@implementer(IStreamClientEndpoint)
class _Endpoint:
    """A client endpoint connecting its protocols to StringTransports at once (no handshake)."""

    def __init__(self) -> None:
        self.transports: list[StringTransport] = []

    def connect(self, factory: Any) -> Any:
        """Build the protocol and connect it to a new StringTransport."""
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        self.transports.append(transport)
        protocol.makeConnection(transport)
        return succeed(protocol)


def frames(data: bytes) -> list[dict[str, Any]]:
    """The JSON messages of RFC 5425 octet-counted frames."""
    result = []
    while data:
        length, _, data = data.partition(b" ")
        message, data = data[: int(length)], data[int(length):]
        result.append(json.loads(message.split(b"\xef\xbb\xbf", 1)[1]))
    return result


class SyslogBufferTests(SynchronousTestCase):
    """The syslog sink's buffer is bounded connected or not, and the records it drops are counted."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = _Endpoint()
        self.registry = CollectorRegistry()
        self.sink = SyslogTLSSink(self.clock, self.endpoint, "gw", max_pending=5, registry=self.registry)
        self.trail = AuditTrail([self.sink], ae_title="GW", wall=lambda: 1700000000.0, hostname="gw")

    def dropped_metric(self) -> float | None:
        """The dropped-records counter, as scraped."""
        return self.registry.get_sample_value("dicom_gateway_audit_syslog_dropped_total")

    def test_a_slow_collector_pauses_the_sink_and_its_buffer_is_bounded(self) -> None:
        """While the transport has paused us (its buffer is full), records wait in a buffer of max_pending; the excess is dropped and counted."""
        self.sink.start()
        (transport,) = self.endpoint.transports
        self.trail.application_activity("reload", "first")
        self.assertEqual(len(frames(transport.value())), 1)
        transport.producer.pauseProducing()  # the collector reads slower than we write
        transport.clear()
        for n in range(12):
            self.trail.application_activity("reload", f"while paused {n}")
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.sink.pending, 5)
        self.assertEqual(self.sink.dropped, 7)
        self.assertEqual(self.dropped_metric(), 7.0)
        transport.producer.resumeProducing()
        sent = frames(transport.value())
        self.assertEqual([f["description"] for f in sent], [f"while paused {n}" for n in range(7, 12)])
        self.assertEqual(sent[0]["extra"]["syslog_dropped"], "7")
        self.assertNotIn("syslog_dropped", sent[1].get("extra", {}))

    def test_records_wait_while_disconnected_bounded_and_the_gap_is_reported(self) -> None:
        """Before any connection, the buffer keeps the newest max_pending records; the first sent one says how many were dropped."""
        for n in range(8):
            self.trail.application_activity("reload", f"offline {n}")
        self.assertEqual((self.sink.pending, self.sink.dropped, self.dropped_metric()), (5, 3, 3.0))
        self.sink.start()
        sent = frames(self.endpoint.transports[0].value())
        self.assertEqual([f["description"] for f in sent], [f"offline {n}" for n in range(3, 8)])
        self.assertEqual(sent[0]["extra"]["syslog_dropped"], "3")

    def test_nothing_is_written_before_the_tls_handshake_completes(self) -> None:
        """On a TLS transport the records wait (bounded) until handshakeCompleted, not in the TLS layer's own buffer."""
        from twisted.internet.interfaces import ISSLTransport
        from zope.interface import directlyProvides

        class TLSEndpoint(_Endpoint):
            def connect(self, factory: Any) -> Any:
                protocol = factory.buildProtocol(None)
                transport = StringTransport()
                directlyProvides(transport, ISSLTransport)
                self.transports.append(transport)
                self.protocol = protocol
                protocol.makeConnection(transport)
                return succeed(protocol)

        endpoint = TLSEndpoint()
        sink = SyslogTLSSink(self.clock, endpoint, "gw", max_pending=5)
        trail = AuditTrail([sink], ae_title="GW", wall=lambda: 1700000000.0, hostname="gw")
        sink.start()
        for n in range(7):
            trail.application_activity("reload", f"handshaking {n}")
        self.assertEqual((endpoint.transports[0].value(), sink.pending, sink.dropped), (b"", 5, 2))
        endpoint.protocol.handshakeCompleted()
        self.assertEqual(len(frames(endpoint.transports[0].value())), 5)


class SyslogOverRealTLSTests(TestCase):
    """Over a real TLS connection to a collector that stops reading, the sink is paused and its buffer stays bounded."""

    timeout = 60

    def test_a_collector_that_stops_reading_pauses_the_sink(self) -> None:
        """2,000 records to a collector that reads nothing: the TLS transport pauses the sink, at most max_pending wait, the rest are counted; once it reads, the gap is reported."""
        from twisted.internet import reactor
        from twisted.internet.defer import Deferred
        from twisted.internet.endpoints import HostnameEndpoint, SSL4ServerEndpoint, wrapClientTLS
        from twisted.internet.protocol import Factory, Protocol

        from gateway.tls import ClientTLSSettings, ServerTLS, ServerTLSSettings, client_creator
        from tests.support.certs import material

        m = material()
        received = bytearray()
        collectors: list[Any] = []

        class Collector(Protocol):
            def connectionMade(self) -> None:
                collectors.append(self)

            def dataReceived(self, data: bytes) -> None:
                received.extend(data)

        server = ServerTLS(ServerTLSSettings(m.server, m.server_key))
        endpoint = SSL4ServerEndpoint(reactor, 0, server, interface="127.0.0.1")  # type: ignore[arg-type]

        async def pause(seconds: float) -> None:
            d: Deferred[None] = Deferred()
            reactor.callLater(seconds, d.callback, None)  # type: ignore[attr-defined]
            await d

        async def run() -> None:
            port = await endpoint.listen(Factory.forProtocol(Collector))
            self.addCleanup(port.stopListening)
            creator = client_creator(ClientTLSSettings(m.ca, "localhost"), "localhost")
            client = wrapClientTLS(creator, HostnameEndpoint(reactor, "127.0.0.1", port.getHost().port))
            registry = CollectorRegistry()
            sink = SyslogTLSSink(reactor, client, "gw", max_pending=100, registry=registry)
            trail = AuditTrail([sink], ae_title="GW", wall=lambda: 1700000000.0, hostname="gw")
            sink.start()
            self.addCleanup(sink.close)
            trail.application_activity("start")
            for _ in range(200):
                if received and collectors:
                    break
                await pause(0.05)
            self.assertTrue(received, "the first record never arrived (no handshake?)")
            collectors[0].transport.pauseProducing()  # the collector stops reading
            for n in range(2000):
                trail.application_activity("reload", f"record {n} " + "x" * 400)
            self.assertTrue(sink._paused, "the TLS transport never paused the sink")
            self.assertEqual(sink.pending, 100)
            self.assertLess(sink.sent, 1000)
            dropped = sink.dropped
            self.assertEqual(sink.sent + sink.pending + dropped, 2001)
            self.assertEqual(registry.get_sample_value("dicom_gateway_audit_syslog_dropped_total"), float(dropped))
            collectors[0].transport.resumeProducing()
            for _ in range(400):
                if sink.pending == 0 and received.count(b"record 1999 ") == 1:
                    break
                await pause(0.05)
            messages = frames(bytes(received))
            self.assertEqual(len(messages), 2001 - dropped)
            gap = [msg for msg in messages if "syslog_dropped" in msg.get("extra", {})]
            self.assertEqual([int(msg["extra"]["syslog_dropped"]) for msg in gap], [dropped])

        return Deferred.fromCoroutine(run())
