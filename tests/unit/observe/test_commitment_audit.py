"""The Storage Commitment audit records (issue 15), from the events through :class:`AuditObserver`.

Which PS3.15 A.5.3 shape each gets: a request answered is DICOM Instances
Accessed (110103, action R), a refused requester a Security Alert (110113,
Use of Restricted Function), a report delivered or given up DICOM Instances
Transferred (110104) from us to the requester, an archive's report DICOM
Instances Transferred from the archive to us.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway import events
from gateway.audit import AuditTrail, MemorySink
from gateway.config.schema import DicomDestination, ModalityConfig
from gateway.security import AuditObserver


class CommitmentAuditTests(SynchronousTestCase):
    """Each commitment event that the audit trail records, and its shape."""

    def setUp(self) -> None:
        self.sink = MemorySink()
        self.trail = AuditTrail([self.sink], ae_title="GW", hostname="gw-host", clock=Clock(), wall=lambda: 0.0)
        modality = ModalityConfig(name="ct1", ae_title="CT1", host="10.0.0.1", port=104)
        archive = DicomDestination(
            name="vna", ae_title="VNA", host="10.0.0.7", port=11112, calling_ae_title="GW", storage_commitment=True
        )
        self.observer = AuditObserver(self.trail, lambda: {"vna": archive}, lambda: {"ct1": modality})

    def records(self) -> list[dict[str, Any]]:
        """The records written so far, as JSON."""
        return [json.loads(r.to_json()) for r in self.sink.records]

    def test_accepted_request_is_instances_accessed(self) -> None:
        """An accepted N-ACTION: DICOM Instances Accessed, action R, success, the requester as requesting source, the Transaction UID kept."""
        self.observer.observe(events.CommitmentRequested("l1", "CT1", "10.0.0.1:4000", "2.25.7", "accepted", 0, 12))
        (record,) = self.records()
        self.assertEqual((record["event_id"], record["action"], record["outcome"]), ("110103", "R", 0))
        self.assertEqual(record["disposition"], "commitment_requested")
        requester, us = record["participants"]
        self.assertEqual((requester["user_id"], requester["network_access_point"], requester["requestor"]), ("CT1", "10.0.0.1:4000", True))
        self.assertEqual(us["user_id"], "GW")
        self.assertEqual(record["extra"]["transaction_uid"], "2.25.7")
        self.assertEqual(record["extra"]["instances"], "12")

    def test_refused_requester_is_a_security_alert(self) -> None:
        """A requester not allowed (0x0124): a Security Alert of type Use of Restricted Function, minor failure."""
        self.observer.observe(
            events.CommitmentRequested("l1", "ROGUE", "10.9.9.9:4000", "2.25.8", "refused", 0x0124, 1, "not in the modalities table")
        )
        (record,) = self.records()
        self.assertEqual((record["event_id"], record["event_type"], record["outcome"]), ("110113", "Use of Restricted Function", 4))
        self.assertIn("0x0124", record["description"])
        self.assertIn("not in the modalities table", record["description"])

    def test_failed_requests_carry_their_outcome(self) -> None:
        """A malformed or conflicting request is a minor failure; one the journal could not take a serious failure."""
        self.observer.observe(events.CommitmentRequested("l1", "CT1", "p", "2.25.9", "conflict", 0x0110, 2))
        self.observer.observe(events.CommitmentRequested("l1", "CT1", "p", "2.25.9", "unavailable", 0x0213, 2))
        self.assertEqual([r["outcome"] for r in self.records()], [4, 8])

    def test_report_delivered_is_instances_transferred_to_the_requester(self) -> None:
        """A delivered report: DICOM Instances Transferred from us to the requester at its address; event type 2 is a minor failure."""
        self.observer.observe(events.CommitmentReportSent("2.25.7", "ct1", "CT1", "delivered", 1, 12, 0, 30.0, 1))
        self.observer.observe(events.CommitmentReportSent("2.25.8", "ct1", "CT1", "delivered", 2, 10, 2, 30.0, 2))
        first, second = self.records()
        self.assertEqual((first["event_id"], first["action"], first["outcome"]), ("110104", "R", 0))
        self.assertEqual(first["disposition"], "commitment_reported")
        us, requester = first["participants"]
        self.assertEqual((us["user_id"], us["requestor"]), ("GW", True))
        self.assertEqual((requester["user_id"], requester["network_access_point"]), ("CT1", "10.0.0.1:104"))
        self.assertEqual(second["outcome"], 4)
        self.assertEqual((second["extra"]["committed"], second["extra"]["failed"]), ("10", "2"))

    def test_failed_attempt_is_not_audited_but_a_dead_report_is(self) -> None:
        """A failed attempt to be retried writes nothing; the last one (dead) a serious failure naming the error."""
        self.observer.observe(events.CommitmentReportFailed("2.25.7", "ct1", "connection refused", 1, 10.0))
        self.assertEqual(self.records(), [])
        self.observer.observe(events.CommitmentReportFailed("2.25.7", "ct1", "connection refused", 9, 0.0, dead=True))
        (record,) = self.records()
        self.assertEqual((record["event_id"], record["outcome"], record["disposition"]), ("110104", 8, "commitment_dead"))
        self.assertIn("connection refused", record["description"])
        self.assertEqual(record["participants"][1]["user_id"], "CT1")

    def test_archive_report_is_instances_transferred_from_the_archive(self) -> None:
        """An archive's report: the archive (at its configured address) is the source, we the destination."""
        self.observer.observe(events.ArchiveCommitmentReported("vna", "VNA", "2.25.3", 5, 0, 0))
        self.observer.observe(events.ArchiveCommitmentReported("", "VNA", "2.25.4", 1, 0, 0x0110))
        good, unknown = self.records()
        self.assertEqual((good["event_id"], good["outcome"], good["disposition"]), ("110104", 0, "archive_commitment"))
        self.assertEqual(good["participants"][0]["network_access_point"], "10.0.0.7:11112")
        self.assertEqual(unknown["outcome"], 4)
        self.assertIn("unknown Transaction UID", unknown["description"])

    def test_hostile_transaction_uid_is_escaped(self) -> None:
        """A peer-supplied Transaction UID with control characters stays one printable JSON line (HARDENING H09)."""
        self.observer.observe(events.CommitmentRequested("l1", "CT1", "p", "1.2\r\n\x1b[2J", "invalid", 0x0106, 0))
        line = self.sink.records[0].to_json()
        self.assertNotIn("\n", line)
        self.assertNotIn("\x1b", json.loads(line)["extra"]["transaction_uid"])
