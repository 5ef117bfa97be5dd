"""Tests for ``dicom-gateway studies`` (:mod:`gateway.notify.cli`, issue 18)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.notify.cli import format_study_rows, study_rows
from gateway.queue.studies import SeriesSeen, StudyRow
from tests.unit.notify.fakes import FakeStudyJournal


class StudiesCommandTests(SynchronousTestCase):
    """The rows listed, filtered by state, and the table."""

    def setUp(self) -> None:
        """Two rows: an open one (newest) and a complete one."""
        self.journal = FakeStudyJournal()
        self.journal.rows[("ct", "1.1")] = StudyRow("ct", "1.1", "open", 100.0, 190.0, 4,
                                                    series={"s": SeriesSeen("s", 1, "CT", 4)})
        self.journal.rows[("mr", "2.2")] = StudyRow("mr", "2.2", "complete", 0.0, 50.0, 2, completions=1,
                                                    completed_at=60.0, forced=True)

    def test_rows_newest_first_and_state(self) -> None:
        """Both rows newest first; --state complete lists only the complete one."""
        rows = study_rows(self.journal, None, 10)
        self.assertEqual([r["study_instance_uid"] for r in rows], ["1.1", "2.2"])
        self.assertEqual((rows[0]["series"], rows[0]["instances"]), (1, 4))
        self.assertEqual([r["study_instance_uid"] for r in study_rows(self.journal, "complete", 10)], ["2.2"])
        self.assertEqual(len(study_rows(self.journal, None, 1)), 1)

    def test_table(self) -> None:
        """The table has a header, one line per row with ages, and says so when empty."""
        text = format_study_rows(study_rows(self.journal, None, 10), now=200.0)
        lines = text.splitlines()
        self.assertTrue(lines[0].startswith("ROUTE"))
        self.assertIn("open", lines[1])
        self.assertIn("10s", lines[1])  # last instance 10 s ago
        self.assertIn("yes", lines[2])  # forced
        self.assertTrue(lines[2].endswith("2.2"))
        self.assertEqual(format_study_rows([], now=0.0), "no studies")
