"""Tests for :mod:`gateway.admin`: the operator views shared by the CLI and (later) the HTTP API.

The views run over a :class:`~gateway.queue.memory.MemoryQueueStore` filled
through its public interface; the tests pin the rows' figures, the table's
columns, entry rendering with history, ``find``'s per-destination states
and JSON output.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from gateway import admin
from gateway.queue.interfaces import EntryState, InstanceRecord, NewEntry
from gateway.queue.memory import MemoryQueueStore

NOW = 1_700_000_000.0


def record(instance_id: str, sha256: str = "", study: str = "1.2.3", sop: str = "") -> InstanceRecord:
    """An instance record with recognisable fields."""
    return InstanceRecord(
        instance_id=instance_id,
        path=f"/spool/instances/{instance_id}.dcm",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid=sop or f"1.2.3.{instance_id}",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        size=1234,
        sha256=sha256 or instance_id,
        received_at=NOW - 7200,
        correlation_id="corr-" + instance_id,
        study_instance_uid=study,
        patient_id="PID",
        accession_number="ACC",
        calling_ae_title="CT01",
        source_address="10.0.0.7:40000",
    )


class AdminTests(SynchronousTestCase):
    """Rows, tables, entries and find results."""

    def setUp(self) -> None:
        self.store = MemoryQueueStore()
        ids = self.store.add_instance(record("a"), [NewEntry("r", "pacs"), NewEntry("r", "folder")], NOW - 7200, 0).entry_ids
        self.pacs_a, self.folder_a = ids
        self.store.add_instance(record("b"), [NewEntry("r", "pacs"), NewEntry("r", "folder")], NOW - 60, 0)

    def test_queue_rows_have_every_configured_destination_first(self) -> None:
        """Configured destinations come first in their order, then any other the journal knows, sorted."""
        self.store.add_instance(record("c"), [NewEntry("r", "zz-old")], NOW, 0)
        rows = admin.queue_rows(self.store, ["pacs", "folder", "idle"], NOW)
        self.assertEqual([r["destination"] for r in rows], ["pacs", "folder", "idle", "zz-old"])
        idle = rows[2]
        self.assertEqual((idle["queued"], idle["dead"], idle["oldest_age_seconds"], idle["paused"]), (0, 0, None, False))

    def test_queue_rows_count_states_and_oldest_age(self) -> None:
        """Queued, in-flight, dead and delivered are counted; the oldest age is that of the oldest queued entry."""
        leased = self.store.lease("pacs", 1, NOW, 600)
        self.store.dead_letter(leased[0].entry_id, "0xA900", NOW)
        (folder,) = self.store.lease("folder", 1, NOW, 600)
        rows = {r["destination"]: r for r in admin.queue_rows(self.store, ["pacs", "folder"], NOW)}
        self.assertEqual((rows["pacs"]["queued"], rows["pacs"]["dead"], rows["pacs"]["in_flight"]), (1, 1, 0))
        self.assertEqual((rows["folder"]["queued"], rows["folder"]["in_flight"]), (1, 1))
        self.assertEqual(rows["pacs"]["oldest_age_seconds"], 60)

    def test_table_has_header_and_state_columns(self) -> None:
        """The text table names its columns, shows ages with units and marks a paused destination."""
        self.store.set_paused("pacs", True)
        rows = admin.queue_rows(self.store, ["pacs", "folder"], NOW)
        lines = admin.format_queue_rows(rows, NOW).splitlines()
        self.assertEqual(lines[0].split()[:6], ["DESTINATION", "QUEUED", "IN-FLIGHT", "DEAD", "DELIVERED", "OLDEST"])
        self.assertEqual(lines[1].split()[:7], ["pacs", "2", "0", "0", "0", "2.0h", "paused"])
        self.assertEqual(lines[2].split()[:7], ["folder", "2", "0", "0", "0", "2.0h", "active"])

    def test_table_truncates_long_errors(self) -> None:
        """The last error is cut to 60 characters so a line stays readable."""
        (entry,) = self.store.lease("pacs", 1, NOW, 600)
        self.store.retry(entry.entry_id, NOW + 10, "E" * 200, NOW)
        rows = admin.queue_rows(self.store, ["pacs"], NOW)
        line = admin.format_queue_rows(rows, NOW).splitlines()[1]
        self.assertIn("E" * 60, line)
        self.assertNotIn("E" * 61, line)

    def test_age_units(self) -> None:
        """Ages are shown in seconds, minutes, hours or days, and never negative."""
        self.assertEqual(
            [admin._age(NOW, NOW - s) for s in (5, 90, 7200, 3 * 86400)] + [admin._age(NOW, NOW + 10), admin._age(NOW, None)],
            ["5s", "1.5m", "2.0h", "3.0d", "0s", "-"],
        )

    def test_entry_dict_is_json_with_state_and_history(self) -> None:
        """An entry becomes plain data: state as its value, history as dicts, the instance nested."""
        (entry,) = self.store.lease("pacs", 1, NOW, 600)
        self.store.retry(entry.entry_id, NOW + 10, "connection refused", NOW)
        data = json.loads(admin.to_json(admin.entry_dict(self.store.get(entry.entry_id))))
        self.assertEqual(data["state"], "queued")
        self.assertEqual(data["history"], [{"at": NOW, "error": "connection refused", "counted": True}])
        self.assertEqual(data["instance"]["sop_instance_uid"], "1.2.3.a")

    def test_format_entry_shows_dead_reason_and_attempts(self) -> None:
        """A dead letter's description names its destination, route, file, reason and each attempt."""
        (entry,) = self.store.lease("pacs", 1, NOW, 600)
        self.store.retry(entry.entry_id, NOW, "A-ABORT", NOW, counted=False)
        self.store.lease("pacs", 1, NOW, 600)
        self.store.dead_letter(entry.entry_id, "0xA900 SOP class rejected", NOW)
        text = admin.format_entry(self.store.get(entry.entry_id))
        self.assertTrue(text.startswith(f"entry {entry.entry_id}: dead for pacs (route r)"))
        self.assertIn("file         /spool/instances/a.dcm", text)
        self.assertIn("dead letter  0xA900 SOP class rejected", text)
        self.assertIn("A-ABORT (not counted)", text)

    def test_format_find_states(self) -> None:
        """Find shows delivered, dead-lettered (with why), duplicate and queued entries per destination."""
        (pacs,) = self.store.lease("pacs", 1, NOW, 600)
        self.store.complete([pacs.entry_id], NOW)
        (folder,) = self.store.lease("folder", 1, NOW, 600)
        self.store.dead_letter(folder.entry_id, "folder refused", NOW)
        self.store.add_instance(record("dup", sha256="a", sop="1.2.3.a"), [NewEntry("r", "pacs")], NOW, 3600 * 24)
        text = admin.format_find(self.store.find(study_instance_uid="1.2.3"))
        self.assertRegex(text, rf"-> pacs\s+\[{pacs.entry_id}\] delivered ")
        self.assertRegex(text, rf"-> folder\s+\[{folder.entry_id}\] dead-lettered: folder refused")
        self.assertIn("identical re-send, not forwarded again", text)
        self.assertRegex(text, r"-> pacs\s+\[\d+\] queued, 0 attempts")

    def test_format_find_empty_and_entryless(self) -> None:
        """No match says so; an instance with no entries says it is kept in the spool."""
        self.assertEqual(admin.format_find([]), "no instance on record matches")
        self.store.add_instance(record("lonely", study="5.5"), [], NOW, 0)
        self.assertIn("(no destination: kept in the spool)", admin.format_find(self.store.find(study_instance_uid="5.5")))

    def test_entry_states_round_trip_through_json(self) -> None:
        """Every entry state serialises to its string value."""
        for state in EntryState:
            self.assertEqual(json.loads(admin.to_json({"s": state.value}))["s"], state.value)


class OperatorAuditTests(SynchronousTestCase):
    """:func:`gateway.admin.audit_operator_action`: one PS3.15-shaped record per operator action."""

    def test_record_shape_per_action(self) -> None:
        """Re-queue and purge are DICOM Instances Accessed (U, D); pause, resume and reload Application Activity."""
        from gateway.audit import AuditTrail, MemorySink, Outcome

        sink = MemorySink()
        trail = AuditTrail([sink], ae_title="GW", hostname="host")
        operator = admin.Operator("alice", "10.0.0.9:5000", "api")
        admin.audit_operator_action(trail, "retarget", operator, entry_ids=[3, 4], to="backup")
        admin.audit_operator_action(trail, "purge", operator, entry_ids=[5], outcome=Outcome.MINOR_FAILURE)
        admin.audit_operator_action(trail, "pause", operator, destination="pacs")
        retarget, purge, pause = (json.loads(r.to_json()) for r in sink.records)
        self.assertEqual((retarget["event_id"], retarget["action"], retarget["disposition"]), ("110103", "U", "retarget"))
        self.assertEqual(retarget["extra"], {"action": "retarget", "via": "api", "entry_ids": "3,4", "to": "backup"})
        self.assertEqual(retarget["participants"][0], {"user_id": "alice", "network_access_point": "10.0.0.9:5000", "requestor": True})
        self.assertEqual((purge["action"], purge["outcome"]), ("D", 4))
        self.assertEqual((pause["event_id"], pause["event_type"], pause["extra"]["destination"]),
                         ("110100", "Software Configuration", "pacs"))

    def test_local_operator_is_the_os_user(self) -> None:
        """The command line acts as the password database's name for the current uid, from "local"."""
        import os
        import pwd

        operator = admin.local_operator()
        self.assertEqual((operator.who, operator.address, operator.via), (pwd.getpwuid(os.getuid()).pw_name, "local", "cli"))
