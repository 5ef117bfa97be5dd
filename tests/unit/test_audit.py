"""Tests for :mod:`gateway.audit` (PS3.15 A.5.3-shaped records; RFC 5424/5425 framing)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.audit import (
    AuditTrail,
    JsonLinesFile,
    MemorySink,
    Outcome,
    Participant,
    format_rfc5424,
    read_records,
)
from gateway.events import DeadLettered, Delivered, FanOutObserver, Retried
from gateway.forward_types import ForwardObserver
from gateway.queue.outcome import DeadLetterKind
from gateway.security import AuditObserver


def trail(*sinks: object) -> AuditTrail:
    """An audit trail at a fixed time and host."""
    return AuditTrail(list(sinks), ae_title="GW", wall=lambda: 1700000000.25, hostname="gwhost")  # type: ignore[arg-type]


class RecordShapeTests(SynchronousTestCase):
    """The records follow the PS3.15 A.5.3 messages' codes and fields."""

    def test_application_start_record(self) -> None:
        """Start is Application Activity 110100 with type Application Start, outcome 0 kept."""
        sink = MemorySink()
        record = trail(sink).application_activity("start", "v1")
        data = json.loads(record.to_json())
        self.assertEqual(data["event_id"], "110100")
        self.assertEqual(data["event_type"], "Application Start")
        self.assertEqual(data["outcome"], 0)
        self.assertEqual(data["time"], "2023-11-14T22:13:20.250Z")
        self.assertEqual(sink.records, [record])

    def test_reload_refused_is_a_minor_failure(self) -> None:
        """A refused reload is recorded with outcome 4."""
        data = json.loads(trail().application_activity("reload", "bad", Outcome.MINOR_FAILURE).to_json())
        self.assertEqual((data["outcome"], data["disposition"]), (4, "reload"))

    def test_rejected_association_is_a_security_alert(self) -> None:
        """A rejected association is Security Alert 110113 with the RJ triple and the peer."""
        record = trail().association_rejected(
            peer="10.0.0.1:5000",
            calling_ae_title="CT1",
            called_ae_title="GW",
            listener="secure",
            reason="address not allowed",
            rejection=(1, 1, 1),
        )
        data = json.loads(record.to_json())
        self.assertEqual(data["event_id"], "110113")
        self.assertEqual(data["extra"]["rejection"], "1,1,1")
        self.assertEqual(data["participants"][0]["network_access_point"], "10.0.0.1:5000")
        self.assertTrue(data["participants"][0]["requestor"])

    def test_received_instance_has_study_and_patient_objects(self) -> None:
        """A received instance is 110104 action C with study (and its SOP instance) and patient objects."""
        t = trail()
        record = t.instance(
            "received",
            sop_instance_uid="1.2.3.4",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            study_uid="1.2.3",
            patient_id="PID1",
            source=Participant("CT1", "Source Role ID", "10.0.0.1", True),
            destination=t.us("destination"),
        )
        data = json.loads(record.to_json())
        self.assertEqual((data["event_id"], data["action"]), ("110104", "C"))
        self.assertEqual(data["objects"][0], {"kind": "study", "id": "1.2.3", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2", "sop_instance_uids": ["1.2.3.4"]})
        self.assertEqual(data["objects"][1], {"kind": "patient", "id": "PID1"})

    def test_exported_instance_is_data_export(self) -> None:
        """A folder delivery is Data Export 110106, action R."""
        t = trail()
        record = t.instance("exported", sop_instance_uid="1", source=t.us("source"), destination=Participant("f"))
        self.assertEqual((record.event_id, record.action), ("110106", "R"))

    def test_failing_sink_does_not_stop_the_others(self) -> None:
        """A sink that raises is logged; the next sink still gets the record."""

        class Broken:
            def write(self, record: object) -> None:
                raise RuntimeError("disk gone")

        sink = MemorySink()
        trail(Broken(), sink).application_activity("stop")
        self.assertEqual(len(sink.records), 1)
        self.assertEqual(len(self.flushLoggedErrors()), 0)


class JsonLinesFileTests(SynchronousTestCase):
    """The JSON-lines file: mode 0600, one record per line, rotation."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)
        self.path = os.path.join(self.dir, "audit", "audit.jsonl")

    def test_file_is_created_owner_only(self) -> None:
        """The audit file holds PHI, so it is created 0600 (its folder is created too)."""
        sink = JsonLinesFile(self.path)
        self.addCleanup(sink.close)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_records_are_lines_read_back(self) -> None:
        """Each record is one line; read_records gives them back in order."""
        sink = JsonLinesFile(self.path)
        self.addCleanup(sink.close)
        t = trail(sink)
        t.application_activity("start")
        t.application_activity("stop")
        self.assertEqual([r["disposition"] for r in read_records(self.path)], ["start", "stop"])

    def test_rotation_keeps_the_configured_number_of_files(self) -> None:
        """Past the size limit the file rotates to .1, .2; older ones are dropped."""
        sink = JsonLinesFile(self.path, max_bytes=1000, keep=2)
        self.addCleanup(sink.close)
        t = trail(sink)
        for _ in range(12):
            t.application_activity("reload", "x" * 100)
        self.assertTrue(os.path.exists(self.path + ".1"))
        self.assertTrue(os.path.exists(self.path + ".2"))
        self.assertFalse(os.path.exists(self.path + ".3"))
        self.assertLessEqual(os.path.getsize(self.path), 1000)


class SyslogFormatTests(SynchronousTestCase):
    """RFC 5424 messages with RFC 5425 octet counting."""

    def test_frame_length_and_header(self) -> None:
        """The frame is 'LEN SP MSG' with the authpriv priority and the ATNA MSGID."""
        record = trail().application_activity("start")
        frame = format_rfc5424(record, "gw host", procid="42")
        length, _, message = frame.partition(b" ")
        self.assertEqual(int(length), len(message))
        self.assertTrue(message.startswith(b"<85>1 2023-11-14T22:13:20.250Z gwhost dicom-gateway 42 DICOM+RFC3881 - \xef\xbb\xbf{"))

    def test_failure_raises_severity(self) -> None:
        """A minor failure is a warning (severity 4): priority 84."""
        record = trail().application_activity("reload", "", Outcome.MINOR_FAILURE)
        self.assertIn(b"<84>1 ", format_rfc5424(record, "h"))

    def test_every_outcome_has_its_severity(self) -> None:
        """Each outcome maps to its RFC 5424 severity (notice, warning, error, error); an unknown one to warning."""
        expected = {
            Outcome.SUCCESS: b"<85>1 ",
            Outcome.MINOR_FAILURE: b"<84>1 ",
            Outcome.SERIOUS_FAILURE: b"<83>1 ",
            Outcome.MAJOR_FAILURE: b"<83>1 ",
        }
        self.assertEqual(set(expected), set(Outcome))
        for outcome, priority in expected.items():
            record = trail().application_activity("reload", "", outcome)
            self.assertIn(priority, format_rfc5424(record, "h"), outcome)
        unknown = dataclasses.replace(trail().application_activity("reload"), outcome=3)
        self.assertIn(b"<84>1 ", format_rfc5424(unknown, "h"))


@dataclass(frozen=True)
class _Instance:
    sop_instance_uid: str = "1.2.3.4"
    sop_class_uid: str = "1.2.840.10008.5.1.4.1.1.2"
    study_instance_uid: str = "1.2.3"
    patient_id: str = "PID"
    correlation_id: str = "c1"


@dataclass(frozen=True)
class _Entry:
    destination: str
    route: str = "all"
    instance: _Instance = _Instance()


@dataclass(frozen=True)
class _Dicom:
    ae_title: str = "ARCHIVE"
    host: str = "archive.example"
    port: int = 104


@dataclass(frozen=True)
class _Folder:
    path: str = "/data/out"


class _Inner(ForwardObserver):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def delivered(self, entry: object, duration: float, warning: str) -> None:
        self.calls.append("delivered")

    def dead_lettered(self, entry: object, reason: str) -> None:
        self.calls.append("dead_lettered")

    def retried(self, entry: object, reason: str) -> None:
        self.calls.append("retried")


class ForwardAuditTests(SynchronousTestCase):
    """Forwarding events become audit records and still reach the metrics observer."""

    def setUp(self) -> None:
        self.sink = MemorySink()
        self.inner = _Inner()
        self.observer = FanOutObserver(
            AuditObserver(trail(self.sink), lambda: {"pacs": _Dicom(), "disk": _Folder()}), self.inner
        )

    def test_delivery_to_dicom_is_instances_transferred(self) -> None:
        """A delivery to a DICOM AE: 110104 action R, destination AE and address."""
        self.observer.observe(Delivered(_Entry("pacs"), 0.1, ""))
        record = self.sink.records[0]
        self.assertEqual((record.event_id, record.action, record.disposition), ("110104", "R", "forwarded"))
        self.assertEqual(record.participants[1].network_access_point, "archive.example:104")
        self.assertEqual(self.inner.calls, ["delivered"])

    def test_delivery_to_folder_is_data_export(self) -> None:
        """A delivery to a folder: Data Export with the folder as access point."""
        self.observer.observe(Delivered(_Entry("disk"), 0.1, ""))
        record = self.sink.records[0]
        self.assertEqual((record.event_id, record.disposition), ("110106", "exported"))
        self.assertEqual(record.participants[1].network_access_point, "/data/out")

    def test_delivery_to_dicomweb_is_instances_transferred_to_the_url_without_its_query(self) -> None:
        """Issue 17: a STOW-RS delivery is 110104 with the service URL, its query (which may hold a key) left out."""
        from gateway.config.schema import DicomWebDestination

        web = DicomWebDestination("cloud", "https://dicom.example/dicomWeb?code=s3cret")
        observer = AuditObserver(trail(self.sink), lambda: {"cloud": web})
        observer.observe(Delivered(_Entry("cloud"), 0.1, ""))
        record = self.sink.records[0]
        self.assertEqual((record.event_id, record.disposition), ("110104", "forwarded"))
        self.assertEqual(record.participants[1].network_access_point, "https://dicom.example/dicomWeb")

    def test_dead_letter_is_a_serious_failure(self) -> None:
        """A dead letter: outcome 8 with the reason."""
        self.observer.observe(DeadLettered(_Entry("pacs"), DeadLetterKind.REFUSED, "0xA900 dataset does not match"))
        record = self.sink.records[0]
        self.assertEqual((record.outcome, record.disposition), (8, "dead_letter"))
        self.assertIn("0xA900", record.description)

    def test_other_events_pass_through_unaudited(self) -> None:
        """A retry reaches the inner observer and writes no record."""
        self.observer.observe(Retried(_Entry("pacs"), "x"))
        self.assertEqual((self.inner.calls, self.sink.records), (["retried"], []))


class SyslogOverTLSTests(TestCase):
    """Records reach a TLS syslog collector (RFC 5425), buffered until it is reachable."""

    timeout = 30

    def test_records_written_before_the_connection_arrive_framed(self) -> None:
        """Two records written at once arrive, in order, as octet-counted RFC 5424 messages over TLS."""
        from twisted.internet import reactor
        from twisted.internet.endpoints import SSL4ServerEndpoint
        from twisted.internet.protocol import Factory, Protocol

        from gateway.config.load import load_config_text
        from gateway.security import build_audit
        from gateway.tls import ServerTLS, ServerTLSSettings
        from tests.support.certs import material

        m = material()
        received = bytearray()

        class Collector(Protocol):
            def dataReceived(self, data: bytes) -> None:
                received.extend(data)

        server = ServerTLS(ServerTLSSettings(m.server, m.server_key))
        endpoint = SSL4ServerEndpoint(reactor, 0, server, interface="127.0.0.1")  # type: ignore[arg-type]

        async def run() -> None:
            port = await endpoint.listen(Factory.forProtocol(Collector))
            self.addCleanup(port.stopListening)
            config = load_config_text(
                "ae_title: GW\nspool: /tmp/s\nlisten: [{host: 127.0.0.1, port: 0}]\n"
                f"audit: {{syslog: {{host: 127.0.0.1, port: {port.getHost().port}, ca: {m.ca}}}}}\n",
                "t.yaml",
                "/tmp",
            )
            t = build_audit(config, lambda: 1700000000.0, reactor=reactor)
            sink = t.sinks[-1]
            self.addCleanup(sink.close)  # type: ignore[attr-defined]
            t.application_activity("start")
            t.application_activity("stop")
            for _ in range(200):
                if received.count(b"DICOM+RFC3881") == 2:
                    break
                d: Any = Deferred()
                reactor.callLater(0.05, d.callback, None)  # type: ignore[attr-defined]
                await d
            frames = []
            rest = bytes(received)
            while rest:
                length, _, rest = rest.partition(b" ")
                frames.append(rest[: int(length)])
                rest = rest[int(length):]
            self.assertEqual([json.loads(f.split(b"\xef\xbb\xbf", 1)[1])["disposition"] for f in frames], ["start", "stop"])

        return Deferred.fromCoroutine(run())


@dataclass(frozen=True)
class _Summary:
    sop_instance_uid: str = "1.2.3.4"
    sop_class_uid: str = "1.2.840.10008.5.1.4.1.1.2"
    study_instance_uid: str = "1.2.3"
    patient_id: str = "PID"


@dataclass(frozen=True)
class _Spooled:
    summary: _Summary = _Summary()


@dataclass(frozen=True)
class _Info:
    calling_ae_title: str = "CT1 "
    peer_address: str = "10.0.0.9:4000"
    tls_subject: str = "CN=modality1"
    listener: str = "secure"


@dataclass(frozen=True)
class _Admission:
    status: int = 0
    dropped: bool = False
    matched: tuple[str, ...] = ()
    correlation_id: str = "c9"


class AdmissionAuditTests(SynchronousTestCase):
    """Received and dropped instances are audited at admission, with the sender's address and certificate."""

    def test_received_instance_names_its_sender(self) -> None:
        """A journaled instance: one received record with the peer, certificate subject and patient."""
        from gateway.security import audit_admission

        sink = MemorySink()
        admission = _Admission()
        self.assertIs(audit_admission(trail(sink), admission, _Spooled(), _Info()), admission)
        (record,) = sink.records
        self.assertEqual(record.disposition, "received")
        self.assertEqual(record.participants[0].user_id, "CT1")
        self.assertEqual(record.participants[0].certificate_subject, "CN=modality1")
        self.assertEqual(record.objects[1].id, "PID")

    def test_dropped_instance_is_received_then_dropped(self) -> None:
        """A drop route: received, then dropped with the route named."""
        from gateway.security import audit_admission

        sink = MemorySink()
        audit_admission(trail(sink), _Admission(dropped=True, matched=("junk",)), _Spooled(), _Info())
        self.assertEqual([r.disposition for r in sink.records], ["received", "dropped"])
        self.assertIn("junk", sink.records[1].description)

    def test_route_rejection_is_not_a_receipt(self) -> None:
        """A failure status (a reject route) records nothing: the modality keeps the instance."""
        from gateway.security import audit_admission

        sink = MemorySink()
        audit_admission(trail(sink), _Admission(status=0xA700), _Spooled(), _Info())
        self.assertEqual(sink.records, [])
