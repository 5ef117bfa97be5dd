"""Tests for the study notes of :mod:`gateway.intake` (issue 18).

The intake passes one :class:`~gateway.queue.studies.StudyNote` per route
with ``notify`` that gave an instance entries, with the instance's journal
write (``add_instance``/``add_instances``, the group commit): the in-memory
store's ``studies`` rows show what reached the journal. Series Number and
Number of Study Related Instances come from the values the structure walk
read, never from parsing a header or reading the file again.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import pydicom
from pydicom.data import get_testdata_file
from twisted.trial.unittest import SynchronousTestCase

from gateway.blocking import SynchronousRunner
from gateway.config.schema import NotifyConfig, RouteConfig
from gateway.dimse.status import Status
from gateway.intake import study_notes
from gateway.queue.studies import SeriesSeen, StudyNote
from gateway.route import RoutingDecision
from gateway.spool import InstanceMeta
from tests.unit.test_intake import INFO, T0, IntakeTestsMixin, _CountingRunner, _HeldRunner

NOTIFY = NotifyConfig(sinks=("hook",))


class AdmitNoteTests(IntakeTestsMixin, SynchronousTestCase):
    """``Intake.admit``: notes for notifying routes only."""

    def test_notifying_route_notes_the_study_other_routes_do_not(self) -> None:
        """Of two matching routes only the one with ``notify`` gets a studies row, with the instance's series."""
        self.routes = [RouteConfig("clinical", ("pacs",)), RouteConfig("ris", ("folder",), notify=NOTIFY)]
        admission = self.admit(self.spooled("i1"))
        self.assertEqual(admission.status, Status.SUCCESS)
        row = self.store.study("ris", "1.2.3")
        self.assertEqual((row.state, row.instances, row.opened_at, row.last_instance_at), ("open", 1, T0, T0))
        self.assertEqual(row.series, {"1.2.3.1": SeriesSeen("1.2.3.1", None, "CT", 1)})
        self.assertRaises(KeyError, self.store.study, "clinical", "1.2.3")
        self.assertEqual([r.route for r in self.store.studies()], ["ris"])

    def test_no_notifying_route_no_row_and_the_store_is_called_as_before(self) -> None:
        """Without a notifying route nothing is noted and add_instances gets no ``notes`` keyword."""
        calls: list[dict[str, Any]] = []
        add = self.store.add_instances
        self.patch(self.store, "add_instances", lambda *a, **k: calls.append(k) or add(*a, **k))
        self.admit(self.spooled("i1"))
        self.assertEqual(calls, [{}])
        self.assertEqual(self.store.studies(), [])

    def test_instance_without_study_uid_is_not_noted(self) -> None:
        """An instance without a Study Instance UID is journaled but noted nowhere."""
        from dataclasses import replace

        self.routes = [RouteConfig("ris", ("pacs",), notify=NOTIFY)]
        spooled = self.spooled("i1")
        spooled = replace(spooled, summary=replace(spooled.summary, study_instance_uid=None))
        self.assertEqual(self.admit(spooled).status, Status.SUCCESS)
        self.assertEqual(self.store.instance_ids(), {"i1"})
        self.assertEqual(self.store.studies(), [])

    def test_identical_resend_is_not_news(self) -> None:
        """A re-send within the duplicate window (all entries DUPLICATE) leaves the row as it was."""
        self.routes = [RouteConfig("ris", ("pacs",), notify=NOTIFY)]
        self.admit(self.spooled("i1"))
        before = self.store.study("ris", "1.2.3")
        self.now += 60
        self.assertEqual(self.admit(self.spooled("i2")).duplicates, ("pacs",))
        self.assertEqual(self.store.study("ris", "1.2.3"), before)
        self.now += 60
        self.admit(self.spooled("i3", sop_instance_uid="1.2.3.4.6"))
        self.assertEqual(self.store.study("ris", "1.2.3").instances, 2)

    def test_a_route_without_entries_is_not_noted(self) -> None:
        """A notifying route that gave the instance no entry (a drop) notes nothing."""
        self.routes = [RouteConfig("ris", (), drop=True, notify=NOTIFY)]
        self.admit(self.spooled("i1"))
        self.assertEqual(self.store.studies(), [])

    def test_group_commit_passes_each_items_notes(self) -> None:
        """Instances waiting for one transaction are noted through one add_instances call, one note list per item."""
        self.routes = [RouteConfig("ris", ("pacs",), notify=NOTIFY), RouteConfig("plain", ("folder",))]
        runner = _HeldRunner()
        intake = self.make_intake(self.store)
        intake._store_runner = runner  # type: ignore[assignment]
        first = intake.admit(self.spooled("i1"), INFO)
        second = intake.admit(self.spooled("i2", sop_instance_uid="2.2"), INFO)
        third = intake.admit(self.spooled("i3", sop_instance_uid="3.3"), INFO)
        runner.release_one()
        calls: list[Any] = []
        add = self.store.add_instances
        self.patch(self.store, "add_instances", lambda items, *a, **k: calls.append(k.get("notes")) or add(items, *a, **k))
        runner.release_one()
        self.assertEqual([self.successResultOf(d).status for d in (first, second, third)], [Status.SUCCESS] * 3)
        self.assertEqual(calls, [[[StudyNote("ris", "1.2.3", "1.2.3.1", None, "CT", None)]] * 2])
        self.assertEqual(self.store.study("ris", "1.2.3").instances, 3)

    def test_one_by_one_after_a_failed_batch_keeps_the_notes(self) -> None:
        """When the batch fails and each instance is written alone, each still carries its notes."""
        from gateway.queue.interfaces import InstanceRecord

        self.routes = [RouteConfig("ris", ("pacs",), notify=NOTIFY)]
        runner = _HeldRunner()
        intake = self.make_intake(self.store)
        intake._store_runner = runner  # type: ignore[assignment]
        self.store.add_instance(InstanceRecord("i2", "/x", "1.2", "0.0", "1.2.840.10008.1.2.1", 1, "h", T0, "c"), [], T0, 0)
        first = intake.admit(self.spooled("i1"), INFO)
        second = intake.admit(self.spooled("i2", sop_instance_uid="2.2"), INFO)
        third = intake.admit(self.spooled("i3", sop_instance_uid="3.3"), INFO)
        runner.release_one()
        runner.release_one()
        statuses = [self.successResultOf(d).status for d in (first, second, third)]
        self.assertEqual(statuses, [Status.SUCCESS, Status.OUT_OF_RESOURCES, Status.SUCCESS])
        self.assertEqual(self.store.study("ris", "1.2.3").instances, 2)
        self.flushLoggedErrors(ValueError)


class TakeNoteTests(IntakeTestsMixin, SynchronousTestCase):
    """:meth:`Intake.take`: the note's series number and expected count from the walked header, no file read."""

    def setUp(self) -> None:
        super().setUp()
        from gateway.spool import Spool

        self.spool = Spool(os.path.join(self.tmp, "spool"), SynchronousRunner(), implementation_class_uid="1.2.3",
                           implementation_version_name="T", max_instance_size=1 << 26, slot_batch=4)
        self.spool.recover()
        self.spool.prepare_slots()
        self.file_runner = _CountingRunner()
        self.intake._file_runner = self.file_runner  # type: ignore[assignment]

    def writer_for(self, **changes: Any) -> Any:
        """A spool writer fed CT_small.dcm's data set, with ``changes`` set on it first."""
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        path = os.path.join(self.tmp, "changed.dcm")
        ds.save_as(path)
        with open(path, "rb") as f:
            raw = f.read()
        data = raw[ds.file_meta.FileMetaInformationGroupLength + 132 + 12 :]
        meta = InstanceMeta(ds.SOPClassUID, ds.SOPInstanceUID, ds.file_meta.TransferSyntaxUID, "CT01", "DICOMGW")
        writer = self.spool.begin(meta)
        writer.write(data)
        return writer, ds

    def test_series_number_and_expected_count_from_the_walked_header(self) -> None:
        """(0020,0011) and (0020,1208) reach the row from the values the walk read; the file runner is not used."""
        self.routes = [RouteConfig("ris", ("pacs",), notify=NOTIFY)]
        writer, ds = self.writer_for(SeriesNumber=7, NumberOfStudyRelatedInstances=12)
        admission = self.successResultOf(self.intake.take(writer, INFO))
        self.assertEqual(admission.status, Status.SUCCESS)
        self.assertEqual(self.file_runner.jobs, [])
        row = self.store.study("ris", ds.StudyInstanceUID)
        self.assertEqual(row.expected_instances, 12)
        self.assertEqual(row.series, {ds.SeriesInstanceUID: SeriesSeen(ds.SeriesInstanceUID, 7, "CT", 1)})

    def test_conditions_header_is_used_for_the_note(self) -> None:
        """With a condition (routing parses a header) the note still has the walk's values (no expected count when absent)."""
        from tests.unit.match.test_match import compile_text

        self.routes = [RouteConfig("ris", ("pacs",), match=compile_text("Modality: CT"), notify=NOTIFY)]
        writer, ds = self.writer_for(SeriesNumber=3)
        self.assertEqual(self.successResultOf(self.intake.take(writer, INFO)).status, Status.SUCCESS)
        row = self.store.study("ris", ds.StudyInstanceUID)
        self.assertEqual((row.expected_instances, row.series[ds.SeriesInstanceUID].series_number), (None, 3))


class StudyNotesFunctionTests(SynchronousTestCase):
    """:func:`gateway.intake.study_notes` on its own."""

    def test_unreadable_numbers_are_unknown(self) -> None:
        """A Series Number or count that is not a number is left unknown rather than failing the instance."""
        from gateway.validate import DatasetSummary

        summary = DatasetSummary("1.2", "1.2.3.4", "1.2.3", "1.2.3.1", "MR", 3, None, series_number="x")
        decision = RoutingDecision(entries=(("ris", "pacs"),), unrouted=False, matched=("ris",))
        (got,) = study_notes(decision, [RouteConfig("ris", ("pacs",), notify=NOTIFY)], summary)
        self.assertEqual(got, StudyNote("ris", "1.2.3", "1.2.3.1", None, "MR", None))

    def test_numbers_beyond_the_journals_integer_are_unknown(self) -> None:
        """An IS of 12 digits (valid, PS3.5 6.2) is more than PostgreSQL's integer: unknown, never the instance's failure.

        Kept, it would make the note's INSERT fail ("integer out of range") inside the
        instance's own transaction, and so refuse the C-STORE for a reason unrelated to custody.
        """
        from gateway.validate import DatasetSummary

        summary = DatasetSummary("1.2", "1.2.3.4", "1.2.3", "1.2.3.1", "MR", 3, None,
                                 series_number="999999999999", study_related_instances="-99999999999")
        decision = RoutingDecision(entries=(("ris", "pacs"),), unrouted=False, matched=("ris",))
        (got,) = study_notes(decision, [RouteConfig("ris", ("pacs",), notify=NOTIFY)], summary)
        self.assertEqual((got.series_number, got.expected_instances), (None, None))
        summary = replace(summary, series_number="2147483647", study_related_instances="0")
        (got,) = study_notes(decision, [RouteConfig("ris", ("pacs",), notify=NOTIFY)], summary)
        self.assertEqual((got.series_number, got.expected_instances), (2147483647, None))
