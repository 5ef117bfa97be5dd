"""Tests for the study tracker (:mod:`gateway.notify.tracker`) and the documents it builds (issue 18).

The tracker runs against :class:`tests.unit.notify.fakes.FakeStudyJournal`
(the stores' journal is another branch's); time is a variable, runners are
synchronous, and the notification files go to a temporary folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from twisted.internet.defer import ensureDeferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from gateway.blocking import SynchronousRunner
from gateway.config.schema import ExpectSeries, NotifyConfig, RouteConfig
from gateway.notify.document import NOTIFICATION_SOP_CLASS, from_json, idempotency_key
from gateway.notify.tracker import StudyTracker, tracker_interval
from gateway.prepare import NO_MORPH
from gateway.queue.interfaces import InstanceRecord
from gateway.queue.studies import DestinationProgress, SeriesSeen, StudyProgress, StudyRow
from tests.support.datasets import write_instance
from tests.unit.notify.fakes import FakeStudyJournal

UID = "1.2.3.4"
NOTIFY = NotifyConfig(sinks=("hook", "ris"), quiet_period=10.0, max_wait=100.0)


def row(**changes: Any) -> StudyRow:
    """An open row of route ct opened at t=0, last instance at t=5, 3 CT instances in one series."""
    values: dict[str, Any] = dict(
        route="ct", study_instance_uid=UID, state="open", opened_at=0.0, last_instance_at=5.0, instances=3,
        series={"1.2.3.4.1": SeriesSeen("1.2.3.4.1", 1, "CT", 3)},
    )
    values.update(changes)
    return StudyRow(**values)


def progress(outstanding: int = 0, delivered: int = 3, dead: int = 0, sample: InstanceRecord | None = None) -> StudyProgress:
    """Progress at the one destination pacs."""
    return StudyProgress("ct", UID, 3, (DestinationProgress("pacs", outstanding, delivered, dead),), 0.0, 5.0, sample)


class TrackerTests(SynchronousTestCase):
    """When a study completes, what is queued, and what is not."""

    def setUp(self) -> None:
        """A fake journal with one open row, a tracker at time ``self.now``."""
        self.folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.folder)
        self.journal = FakeStudyJournal()
        self.journal.rows[("ct", UID)] = row()
        self.journal.progress[("ct", UID)] = progress()
        self.now = 20.0
        self.holding = True
        self.routes = {"ct": RouteConfig(name="ct", forward=("pacs",), notify=NOTIFY)}
        self.told: list[Any] = []
        self.tracker = StudyTracker(
            store=self.journal,
            store_runner=SynchronousRunner(),
            file_runner=SynchronousRunner(),
            routes=lambda: self.routes,
            instances_dir=self.folder,
            owner="",
            node="n1",
            wall=lambda: self.now,
            holds=lambda: succeed(self.holding),
            completed=self.told.append,
        )

    def run_once(self) -> list[Any]:
        """One round; its completions."""
        return self.successResultOf(ensureDeferred(self.tracker.run_once()))

    def documents(self) -> list[Any]:
        """The documents of the last completion, read back from their files."""
        (_, _, _, notifications) = self.journal.completed[-1]
        result = []
        for record, entries in notifications:
            with open(record.path, "rb") as f:
                result.append((record, entries, from_json(f.read())))
        return result

    def test_complete_after_quiet_period(self) -> None:
        """Quiet for the period, nothing outstanding: one notification per sink, sequence 1, complete."""
        (completion,) = self.run_once()
        self.assertEqual((completion.event, completion.sequence, completion.forced), ("complete", 1, False))
        self.assertEqual(self.told, [completion])
        documents = self.documents()
        self.assertEqual([entries[0].destination for _, entries, _ in documents], ["hook", "ris"])
        for record, entries, document in documents:
            self.assertEqual(record.sop_class_uid, NOTIFICATION_SOP_CLASS)
            self.assertEqual(record.sop_instance_uid, idempotency_key(document.sink, "ct", UID, 1))
            self.assertEqual(record.sop_instance_uid, document.idempotency_key)
            self.assertEqual(entries[0].route, "ct")
            # Without a journaled plan the workers would dead-letter the entry (gateway.prepare).
            self.assertEqual(entries[0].plan, NO_MORPH)
            self.assertEqual(os.path.dirname(record.path), self.folder)
            self.assertTrue(record.path.endswith(".dcm"))
            self.assertEqual((document.event, document.sequence, document.instances), ("complete", 1, 3))
            self.assertEqual(document.destinations[0].destination, "pacs")
            self.assertEqual(document.destinations[0].outcome, "delivered")
            self.assertEqual(document.modalities, ("CT",))
            self.assertFalse(document.with_failures)
        self.assertEqual(self.journal.rows[("ct", UID)].state, "complete")

    def test_not_quiet_yet(self) -> None:
        """An instance 4 s ago with a 10 s quiet period: nothing yet, no file written."""
        self.now = 9.0
        self.assertEqual(self.run_once(), [])
        self.assertEqual(os.listdir(self.folder), [])

    def test_outstanding_waits_then_max_wait_forces(self) -> None:
        """Entries still queued: no completion; after max_wait a forced one naming the destination's outstanding entries."""
        self.journal.progress[("ct", UID)] = progress(outstanding=2, delivered=1)
        self.assertEqual(self.run_once(), [])
        self.now = 100.0
        (completion,) = self.run_once()
        self.assertTrue(completion.forced)
        document = self.documents()[0][2]
        self.assertTrue(document.forced)
        self.assertEqual(document.extra["outstanding"], {"pacs": 2})
        self.assertEqual(document.destinations[0].outcome, "partial")

    def test_amended(self) -> None:
        """A row completed once before: event amended, sequence 2, a new idempotency key."""
        self.journal.rows[("ct", UID)] = row(completions=1)
        (completion,) = self.run_once()
        document = self.documents()[0][2]
        self.assertEqual((document.event, document.sequence), ("amended", 2))
        self.assertEqual(document.idempotency_key, idempotency_key("hook", "ct", UID, 2))
        self.assertNotEqual(document.idempotency_key, idempotency_key("hook", "ct", UID, 1))

    def test_dead_letter_is_with_failures(self) -> None:
        """A dead-lettered instance: complete with_failures, the destination partial."""
        self.journal.progress[("ct", UID)] = progress(delivered=2, dead=1)
        (completion,) = self.run_once()
        self.assertTrue(completion.with_failures)
        document = self.documents()[0][2]
        self.assertTrue(document.with_failures)
        self.assertEqual((document.destinations[0].failed, document.destinations[0].outcome), (1, "partial"))

    def test_lost_race_deletes_the_files(self) -> None:
        """An instance arrives between the decision and the commit: complete_study says no, the files go."""
        def arrive() -> None:
            self.journal.rows[("ct", UID)] = row(last_instance_at=19.0)

        self.journal.before_complete = arrive
        self.assertEqual(self.run_once(), [])
        self.assertEqual(os.listdir(self.folder), [])
        self.assertEqual(self.journal.completed, [])

    def test_commit_then_error_keeps_the_files(self) -> None:
        """complete_study commits, then its caller sees an error (a connection lost in the COMMIT).

        The notifications are queued: their files must stay for the workers (deleting
        them would lose the notification while its entry says queued).
        """
        journaled: dict[str, InstanceRecord] = {}
        original = self.journal.complete_study

        def commit_then_fail(*args: Any) -> bool:
            self.assertTrue(original(*args))
            for record, _ in args[-1]:
                journaled[record.instance_id] = record
            raise ConnectionError("server closed the connection unexpectedly")

        def instance_record(instance_id: str) -> InstanceRecord:
            return journaled[instance_id]

        self.journal.complete_study = commit_then_fail  # type: ignore[method-assign]
        self.journal.instance_record = instance_record  # type: ignore[attr-defined]
        self.failureResultOf(ensureDeferred(self.tracker.run_once()), ConnectionError)
        (_, _, _, notifications) = self.journal.completed[-1]
        self.assertEqual(len(notifications), 2)
        for record, _ in notifications:
            self.assertTrue(os.path.isfile(record.path))

    def test_error_when_the_journal_cannot_say_keeps_the_files(self) -> None:
        """complete_study fails and the journal cannot be asked: the files stay (start-up recovery sorts them)."""
        def fail(*args: Any) -> bool:
            raise ConnectionError("down")

        self.journal.complete_study = fail  # type: ignore[method-assign]
        self.failureResultOf(ensureDeferred(self.tracker.run_once()), ConnectionError)
        self.assertEqual(len(os.listdir(self.folder)), 2)

    def test_error_before_commit_deletes_unjournaled_files(self) -> None:
        """complete_study fails without recording and the journal says so: the files go (no leak while running)."""
        def fail(*args: Any) -> bool:
            raise ConnectionError("refused")

        def instance_record(instance_id: str) -> InstanceRecord:
            raise KeyError(instance_id)

        self.journal.complete_study = fail  # type: ignore[method-assign]
        self.journal.instance_record = instance_record  # type: ignore[attr-defined]
        self.failureResultOf(ensureDeferred(self.tracker.run_once()), ConnectionError)
        self.assertEqual(os.listdir(self.folder), [])

    def test_files_durable_before_commit(self) -> None:
        """When complete_study runs, every notification file already exists with its document."""
        seen: list[int] = []
        self.journal.before_complete = lambda: seen.append(len(os.listdir(self.folder)))
        self.run_once()
        self.assertEqual(seen, [2])

    def test_expect_series(self) -> None:
        """An expected SR series missing: no completion; once it arrived, complete."""
        self.routes = {"ct": RouteConfig(name="ct", forward=("pacs",), notify=NotifyConfig(
            sinks=("hook",), quiet_period=10.0, max_wait=100.0, expect_series=(ExpectSeries(modality="SR"),)))}
        self.assertEqual(self.run_once(), [])
        series = dict(row().series)
        series["9"] = SeriesSeen("9", 99, "SR", 1)
        self.journal.rows[("ct", UID)] = row(series=series)
        self.assertEqual(len(self.run_once()), 1)

    def test_expect_series_count(self) -> None:
        """Series 1 with 10 instances expected and 3 arrived: waits."""
        self.routes = {"ct": RouteConfig(name="ct", forward=("pacs",), notify=NotifyConfig(
            sinks=("hook",), quiet_period=10.0, expect_series=(ExpectSeries(series_number=1, instances=10),)))}
        self.assertEqual(self.run_once(), [])

    def test_expect_count(self) -> None:
        """Number of Study Related Instances 5 with 3 arrived: waits when expect_count, not otherwise."""
        self.journal.rows[("ct", UID)] = row(expected_instances=5)
        self.routes = {"ct": RouteConfig(name="ct", forward=("pacs",), notify=NotifyConfig(
            sinks=("hook",), quiet_period=10.0, expect_count=True))}
        self.assertEqual(self.run_once(), [])
        self.routes = {"ct": RouteConfig(name="ct", forward=("pacs",), notify=NotifyConfig(sinks=("hook",), quiet_period=10.0))}
        self.assertEqual(len(self.run_once()), 1)

    def test_route_removed_closes_without_notification(self) -> None:
        """A route gone by reload: its open study is closed forced, with no notification queued."""
        self.routes = {}
        (completion,) = self.run_once()
        self.assertEqual((completion.event, completion.forced, completion.sinks), ("closed", True, ()))
        self.assertEqual(self.journal.completed[0][3], [])
        self.assertEqual(os.listdir(self.folder), [])

    def test_not_housekeeping_node(self) -> None:
        """A node that does not hold the housekeeping singleton completes nothing."""
        self.holding = False
        self.assertEqual(self.run_once(), [])
        self.assertEqual(self.journal.rows[("ct", UID)].state, "open")

    def test_header_fields_from_sample(self) -> None:
        """The accession, patient and study fields come from the sample instance's header."""
        path = os.path.join(self.folder, "sample.dcm")
        write_instance(path, size=2048, study_instance_uid=UID)
        sample = InstanceRecord("s", path, "1.2.840.10008.5.1.4.1.1.2", "1.9", "1.2.840.10008.1.2.1", 1, "", 0.0, "c")
        self.journal.progress[("ct", UID)] = progress(sample=sample)
        self.run_once()
        document = self.documents()[0][2]
        self.assertEqual((document.patient_id, document.patient_name), ("INTEROP-1", "TEST^INTEROP"))
        self.assertEqual(document.study_date, "20240101")

    def test_unreadable_sample_still_notifies(self) -> None:
        """A sample that is not DICOM: the notification goes without header fields."""
        path = os.path.join(self.folder, "junk.dcm")
        with open(path, "wb") as f:
            f.write(b"junk")
        sample = InstanceRecord("s", path, "x", "1.9", "", 1, "", 0.0, "c")
        self.journal.progress[("ct", UID)] = progress(sample=sample)
        self.assertEqual(len(self.run_once()), 1)
        self.assertEqual(self.documents()[0][2].patient_id, "")


class IntervalTests(SynchronousTestCase):
    """How often the tracker runs."""

    def test_interval(self) -> None:
        """A quarter of the shortest quiet period, between 0.5 s and 10 s."""
        def routes(*quiet: float) -> tuple[RouteConfig, ...]:
            return tuple(RouteConfig(name=f"r{i}", forward=("d",), notify=NotifyConfig(sinks=("s",), quiet_period=q))
                         for i, q in enumerate(quiet))

        self.assertEqual(tracker_interval(routes(60.0, 8.0)), 2.0)
        self.assertEqual(tracker_interval(routes(1.0)), 0.5)
        self.assertEqual(tracker_interval(routes(3600.0)), 10.0)
        self.assertEqual(tracker_interval(()), 10.0)


class CustodyTests(SynchronousTestCase):
    """Files written before a completion that never committed are removed by start-up recovery."""

    def test_unjournaled_notification_files_are_removed_at_start(self) -> None:
        """A crash between the durable files and complete_study: Recovery.recover deletes exactly those files."""
        from gateway.queue.memory import MemoryQueueStore
        from gateway.recovery import Recovery

        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        for owner in ("", "n1"):
            tracker = StudyTracker(
                store=None, store_runner=SynchronousRunner(), file_runner=SynchronousRunner(), routes=dict,
                instances_dir=folder, owner=owner, node="n1", wall=lambda: 0.0, holds=lambda: succeed(True),
            )
            from gateway.notify.build import build_notifications

            documents = build_notifications(row(), progress(), NOTIFY, {}, now=20.0, forced=False, node="n1")
            # The tracker's own write, as it happens before complete_study (which never ran: the crash).
            records = self.successResultOf(ensureDeferred(tracker._write(documents, row(), 20.0)))
            self.assertEqual(len(records), 2)
            for record in records:
                self.assertTrue(os.path.basename(record.path).startswith(f"{owner}~" if owner else ""))
            recovery = Recovery(store=MemoryQueueStore(), store_runner=SynchronousRunner(),
                                file_runner=SynchronousRunner(), instances_dir=folder, wall=lambda: 0.0, owner=owner)
            _, removed = self.successResultOf(ensureDeferred(recovery.recover()))
            self.assertEqual(removed, 2)
            self.assertEqual(os.listdir(folder), [])
