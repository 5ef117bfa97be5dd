"""The study journal (issue 18): one behaviour, three stores.

``StudyJournalTests`` pins :class:`~gateway.queue.studies.IStudyJournal` and
the ``notes`` of ``add_instance``/``add_instances`` (the conventions listed
in :mod:`gateway.queue.memory_studies`); it runs here against the in-memory
fake and the SQLite store, and in :mod:`tests.adapters.test_postgres_studies`
against PostgreSQL. ``SqliteTwoNodeStudyTests`` races two store objects on
one SQLite file; ``StudyMigrationTests`` takes a version-8 journal with data
to version 9.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from typing import Any, Sequence

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gateway.notify.document import NOTIFICATION_SOP_CLASS
from gateway.queue.interfaces import EntryState, InstanceRecord, NewEntry
from gateway.queue.memory import MemoryQueueStore
from gateway.queue.schema import MIGRATIONS
from gateway.queue.sqlite import SqliteQueueStore
from gateway.queue.studies import IStudyJournal, SeriesSeen, StudyNote
from tests.unit.queue.test_store import T0, make_record

STUDY = "1.2.826.0.1.3680043.8.498.77"
OTHER = "1.2.826.0.1.3680043.8.498.78"
SERIES = STUDY + ".1"
SERIES2 = STUDY + ".2"


def note(study: str = STUDY, route: str = "ct", series: str = SERIES, number: int | None = 1,
         modality: str = "CT", expected: int | None = None) -> StudyNote:
    """A StudyNote with plausible defaults."""
    return StudyNote(route, study, series, number, modality, expected)


def notification(key: str, study: str = STUDY, route: str = "ct", sink: str = "hook") -> tuple[InstanceRecord, list[NewEntry]]:
    """A notification record (idempotency key ``key``) with its entry for ``sink``."""
    record = make_record(
        "n-" + key, sop_class_uid=NOTIFICATION_SOP_CLASS, sop_instance_uid=key, study_instance_uid=study,
        series_instance_uid="", path=f"/spool/n-{key}.json", received_at=T0,
    )
    return record, [NewEntry(route, sink)]


class StudyJournalTests:
    """Behaviour every IStudyJournal must have; mixed into a TestCase with ``make_store`` and ``make_peer``."""

    assertEqual: Any
    assertTrue: Any
    assertFalse: Any
    assertIsNone: Any
    assertIsNotNone: Any
    assertRaises: Any
    addCleanup: Any

    def make_store(self) -> Any:
        """Return a fresh, empty store for node ``"node"`` (implemented by each concrete class)."""
        raise NotImplementedError

    def make_peer(self, store: Any, node: str) -> Any:
        """Return a store object for ``node`` sharing ``store``'s tables (implemented by each concrete class)."""
        raise NotImplementedError

    def store(self) -> Any:
        """A fresh store closed at cleanup."""
        s = self.make_store()
        self.addCleanup(s.close)
        return s

    def peer(self, store: Any, node: str) -> Any:
        """Another node's store object on ``store``'s tables, closed at cleanup."""
        p = self.make_peer(store, node)
        self.addCleanup(p.close)
        return p

    counter = 0

    def add(
        self,
        store: Any,
        at: float = T0,
        notes: Sequence[StudyNote] | None = None,
        study: str = STUDY,
        series: str = SERIES,
        destinations: Sequence[str] = ("pacs",),
        route: str = "ct",
        sop: str | None = None,
        sha256: str | None = None,
        window: float = 0.0,
        path: str | None = None,
    ) -> list[int]:
        """Journal one instance of ``study`` at ``at`` with entries of ``route``; returns the entry ids."""
        type(self).counter += 1
        n = type(self).counter
        record = make_record(
            f"i{n}", study_instance_uid=study, series_instance_uid=series, received_at=at,
            sop_instance_uid=sop or f"{study}.9.{n}", sha256=sha256 or f"{n:064x}",
            **({} if path is None else {"path": path}),
        )
        given = [note(study, route, series)] if notes is None else list(notes)
        result = store.add_instance(record, [NewEntry(route, d) for d in destinations], at, window, notes=given)
        return list(result.entry_ids)

    def deliver_all(self, store: Any, destination: str = "pacs", now: float = T0 + 1) -> None:
        """Lease and deliver every due entry of ``destination``."""
        leased = store.lease(destination, 10_000, now, 60.0)
        store.complete([e.entry_id for e in leased], now)

    # -- the interface --------------------------------------------------------------------

    def test_provides_the_interface(self) -> None:
        """The store provides IStudyJournal."""
        self.assertTrue(verifyObject(IStudyJournal, self.store()))

    # -- notes --------------------------------------------------------------------------------

    def test_first_note_creates_an_open_row(self) -> None:
        """The first instance's note creates an open row with its series, opened and last at ``now``."""
        store = self.store()
        self.add(store, T0 + 5, [note(number=3, modality="MR")])
        row = store.study("ct", STUDY)
        self.assertEqual(
            (row.route, row.study_instance_uid, row.state, row.opened_at, row.last_instance_at, row.instances),
            ("ct", STUDY, "open", T0 + 5, T0 + 5, 1),
        )
        self.assertEqual(row.series, {SERIES: SeriesSeen(SERIES, 3, "MR", 1)})
        self.assertEqual((row.completions, row.completed_at, row.forced, row.expected_instances), (0, None, False, None))

    def test_later_notes_update_counts_series_and_expected(self) -> None:
        """Later notes count instances per series, keep the first series number and modality, take the expected count."""
        store = self.store()
        self.add(store, T0, [note(number=None, modality="")])
        self.add(store, T0 + 1, [note(number=2, modality="CT", expected=5)])
        self.add(store, T0 + 2, [note(number=7, modality="SR")])
        self.add(store, T0 + 3, [note(series=SERIES2, number=4, modality="SR")], series=SERIES2)
        row = store.study("ct", STUDY)
        self.assertEqual((row.opened_at, row.last_instance_at, row.instances, row.expected_instances), (T0, T0 + 3, 4, 5))
        self.assertEqual(
            row.series, {SERIES: SeriesSeen(SERIES, 2, "CT", 3), SERIES2: SeriesSeen(SERIES2, 4, "SR", 1)}
        )

    def test_note_without_series_uid_counts_the_instance_only(self) -> None:
        """A note without a Series Instance UID counts the instance but adds no series."""
        store = self.store()
        self.add(store, T0, [note(series="")], series="")
        row = store.study("ct", STUDY)
        self.assertEqual((row.instances, row.series), (1, {}))

    def test_no_notes_no_row(self) -> None:
        """Instances journaled without notes (a route that does not notify) leave no row."""
        store = self.store()
        self.add(store, T0, [])
        self.assertRaises(KeyError, store.study, "ct", STUDY)
        self.assertEqual(store.studies(), [])

    def test_rows_are_per_route_and_study(self) -> None:
        """Two routes noting one instance keep one row each; another study its own."""
        store = self.store()
        type(self).counter += 1
        record = make_record(f"i{type(self).counter}", study_instance_uid=STUDY, series_instance_uid=SERIES)
        store.add_instance(
            record, [NewEntry("ct", "pacs"), NewEntry("research", "lab")], T0, 0.0,
            notes=[note(route="ct"), note(route="research")],
        )
        self.add(store, T0 + 1, study=OTHER, notes=[note(OTHER)])
        self.assertEqual(store.study("ct", STUDY).instances, 1)
        self.assertEqual(store.study("research", STUDY).instances, 1)
        self.assertEqual(store.study("ct", OTHER).instances, 1)
        self.assertEqual(store.study_progress("research", STUDY).destinations[0].destination, "lab")

    def test_duplicate_resend_does_not_note(self) -> None:
        """A re-send whose route entries are all DUPLICATE changes nothing; one with a fresh entry does."""
        store = self.store()
        self.add(store, T0, sop="1.2.3.4", sha256="cd" * 32, window=3600)
        before = store.study("ct", STUDY)
        self.add(store, T0 + 10, sop="1.2.3.4", sha256="cd" * 32, window=3600)
        self.assertEqual(store.study("ct", STUDY), before)
        # pacs already has it, archive does not: the route has news.
        self.add(store, T0 + 20, sop="1.2.3.4", sha256="cd" * 32, window=3600, destinations=("pacs", "archive"))
        after = store.study("ct", STUDY)
        self.assertEqual((after.instances, after.last_instance_at), (2, T0 + 20))

    def test_note_on_a_complete_row_reopens_it(self) -> None:
        """An instance after completion reopens the row: open, opened_at now, completions kept, forced cleared."""
        store = self.store()
        self.add(store, T0)
        row = store.study("ct", STUDY)
        self.assertTrue(store.complete_study("ct", STUDY, row.last_instance_at, 0, T0 + 100, True, []))
        self.add(store, T0 + 200)
        row = store.study("ct", STUDY)
        self.assertEqual(
            (row.state, row.opened_at, row.last_instance_at, row.completions, row.forced, row.instances),
            ("open", T0 + 200, T0 + 200, 1, False, 2),
        )
        self.assertEqual(row.completed_at, T0 + 100)

    def test_add_instances_notes_per_item(self) -> None:
        """add_instances writes each item's notes; a notes list of the wrong length is refused and nothing is kept."""
        store = self.store()
        batch = [
            (make_record("b1", study_instance_uid=STUDY, sop_instance_uid="1.2.9.1"), [NewEntry("ct", "pacs")]),
            (make_record("b2", study_instance_uid=OTHER, sop_instance_uid="1.2.9.2"), [NewEntry("ct", "pacs")]),
            (make_record("b3", study_instance_uid=STUDY, sop_instance_uid="1.2.9.3"), [NewEntry("ct", "pacs")]),
        ]
        self.assertRaises(ValueError, store.add_instances, batch, T0, 0.0, notes=[[note()]])
        self.assertEqual(store.find(study_instance_uid=STUDY), [])
        store.add_instances(batch, T0, 0.0, notes=[[note()], [note(OTHER)], []])
        self.assertEqual(store.study("ct", STUDY).instances, 1)
        self.assertEqual(store.study("ct", OTHER).instances, 1)
        store.add_instances(
            [(make_record("b4", study_instance_uid=STUDY, sop_instance_uid="1.2.9.4"), [NewEntry("ct", "pacs")])],
            T0 + 1, 0.0,
        )
        self.assertEqual(store.study("ct", STUDY).instances, 1)

    def test_failed_add_keeps_no_note(self) -> None:
        """An add that fails (the instance is already recorded) leaves the row as it was."""
        store = self.store()
        self.add(store, T0)
        record = make_record("dup", study_instance_uid=STUDY)
        store.add_instance(record, [NewEntry("ct", "pacs")], T0 + 1, 0.0, notes=[note()])
        before = store.study("ct", STUDY)
        self.assertRaises(ValueError, store.add_instance, record, [NewEntry("ct", "pacs")], T0 + 2, 0.0, notes=[note()])
        self.assertEqual(store.study("ct", STUDY), before)

    # -- progress --------------------------------------------------------------------------

    def test_progress_per_destination(self) -> None:
        """Progress counts the route's entries per destination by state and the instances' times."""
        store = self.store()
        self.add(store, T0, destinations=("pacs", "archive"))
        self.add(store, T0 + 3, destinations=("pacs", "archive"))
        self.add(store, T0 + 1, destinations=("pacs", "archive"))
        self.add(store, T0 + 2, study=OTHER, notes=[note(OTHER)])
        leased = store.lease("pacs", 10, T0 + 5, 60.0)
        store.complete([leased[0].entry_id], T0 + 5)
        store.dead_letter(leased[1].entry_id, "refused", T0 + 5)
        store.lease("archive", 1, T0 + 5, 60.0)
        progress = store.study_progress("ct", STUDY)
        self.assertEqual((progress.route, progress.study_instance_uid, progress.instances), ("ct", STUDY, 3))
        self.assertEqual((progress.first_received_at, progress.last_received_at), (T0, T0 + 3))
        by_name = {d.destination: d for d in progress.destinations}
        self.assertEqual([d.destination for d in progress.destinations], ["archive", "pacs"])
        self.assertEqual(
            (by_name["pacs"].outstanding, by_name["pacs"].delivered, by_name["pacs"].dead), (1, 1, 1)
        )
        self.assertEqual((by_name["archive"].outstanding, by_name["archive"].delivered), (3, 0))
        self.assertEqual(progress.outstanding, 4)

    def test_progress_counts_duplicates_and_other_routes_apart(self) -> None:
        """Duplicate entries are counted as such; another route's entries for the study are not counted."""
        store = self.store()
        self.add(store, T0, sop="1.2.3.5", sha256="ef" * 32, window=3600)
        self.add(store, T0 + 1, sop="1.2.3.5", sha256="ef" * 32, window=3600)
        self.add(store, T0 + 2, route="research", destinations=("lab",), notes=[note(route="research")])
        progress = store.study_progress("ct", STUDY)
        (pacs,) = progress.destinations
        self.assertEqual((pacs.destination, pacs.outstanding, pacs.duplicates, progress.instances), ("pacs", 1, 1, 2))

    def test_progress_excludes_notification_records(self) -> None:
        """Notification records (and their sink entries) are never counted as the study's instances."""
        store = self.store()
        self.add(store, T0)
        self.deliver_all(store)
        row = store.study("ct", STUDY)
        self.assertTrue(store.complete_study("ct", STUDY, row.last_instance_at, 0, T0 + 100, False, [notification("k1")]))
        progress = store.study_progress("ct", STUDY)
        self.assertEqual(progress.instances, 1)
        self.assertEqual([(d.destination, d.delivered, d.outstanding) for d in progress.destinations], [("pacs", 1, 0)])

    def test_progress_sample_has_a_file(self) -> None:
        """The sample is the earliest received instance whose file is still in the spool."""
        store = self.store()
        self.add(store, T0, path="")
        self.add(store, T0 + 2, path="/spool/late.dcm")
        self.add(store, T0 + 1, path="/spool/early.dcm")
        sample = store.study_progress("ct", STUDY).sample
        self.assertIsNotNone(sample)
        self.assertEqual((sample.path, sample.received_at), ("/spool/early.dcm", T0 + 1))

    def test_progress_of_an_unknown_study_is_empty(self) -> None:
        """A study with no instance of the route: nothing counted, no sample."""
        progress = self.store().study_progress("ct", STUDY)
        self.assertEqual((progress.instances, progress.destinations, progress.sample), (0, (), None))
        self.assertIsNone(progress.first_received_at)

    # -- complete_study ----------------------------------------------------------------------

    def test_complete_records_the_completion_and_queues_notifications(self) -> None:
        """A completion writes the row and every notification record with a QUEUED entry for its sink."""
        store = self.store()
        self.add(store, T0)
        self.deliver_all(store)
        row = store.study("ct", STUDY)
        done = store.complete_study(
            "ct", STUDY, row.last_instance_at, 0, T0 + 100, False, [notification("k1"), notification("k2", sink="ris")]
        )
        self.assertTrue(done)
        row = store.study("ct", STUDY)
        self.assertEqual((row.state, row.completions, row.completed_at, row.forced), ("complete", 1, T0 + 100, False))
        found = store.find(sop_instance_uid="k1") + store.find(sop_instance_uid="k2")
        self.assertEqual([record.sop_class_uid for record, _ in found], [NOTIFICATION_SOP_CLASS] * 2)
        self.assertEqual(
            [(e.route, e.destination, e.state, e.enqueued_at) for _, entries in found for e in entries],
            [("ct", "hook", EntryState.QUEUED, T0 + 100), ("ct", "ris", EntryState.QUEUED, T0 + 100)],
        )
        self.assertEqual([e.instance.sop_instance_uid for e in store.lease("hook", 10, T0 + 100, 60.0)], ["k1"])

    def test_complete_refused_while_entries_are_outstanding_unless_forced(self) -> None:
        """Queued or leased entries of the route keep the study open; forced completes it anyway, flagged."""
        store = self.store()
        self.add(store, T0)
        self.add(store, T0 + 1)
        store.lease("pacs", 1, T0 + 2, 60.0)
        row = store.study("ct", STUDY)
        self.assertFalse(store.complete_study("ct", STUDY, row.last_instance_at, 0, T0 + 100, False, [notification("k1")]))
        self.assertEqual(store.study("ct", STUDY).state, "open")
        self.assertEqual(store.find(sop_instance_uid="k1"), [])
        self.assertTrue(store.complete_study("ct", STUDY, row.last_instance_at, 0, T0 + 100, True, [notification("k1")]))
        row = store.study("ct", STUDY)
        self.assertEqual((row.state, row.forced), ("complete", True))

    def test_dead_letters_do_not_hold_a_study_open(self) -> None:
        """A dead-lettered entry is final: the study completes (with failures, the document's business)."""
        store = self.store()
        (entry_id,) = self.add(store, T0)
        store.dead_letter(entry_id, "refused", T0 + 1)
        row = store.study("ct", STUDY)
        self.assertTrue(store.complete_study("ct", STUDY, row.last_instance_at, 0, T0 + 100, False, []))

    def test_complete_refused_when_an_instance_arrived(self) -> None:
        """The compare-and-set on last_instance_at: an instance noted since the read makes it a no-op."""
        store = self.store()
        self.add(store, T0)
        self.deliver_all(store)
        row = store.study("ct", STUDY)
        self.add(store, T0 + 50)
        self.deliver_all(store, now=T0 + 51)
        self.assertFalse(store.complete_study("ct", STUDY, row.last_instance_at, 0, T0 + 100, True, [notification("k1")]))
        self.assertEqual(store.study("ct", STUDY).state, "open")
        self.assertEqual(store.find(sop_instance_uid="k1"), [])

    def test_complete_refused_when_completions_moved(self) -> None:
        """The compare-and-set on completions: a second completion with the old count (another tracker) is a no-op."""
        store = self.store()
        self.add(store, T0)
        row = store.study("ct", STUDY)
        self.assertTrue(store.complete_study("ct", STUDY, row.last_instance_at, 0, T0 + 100, True, [notification("k1")]))
        self.add(store, T0 + 200)
        reopened = store.study("ct", STUDY)
        self.assertFalse(
            store.complete_study("ct", STUDY, reopened.last_instance_at, 0, T0 + 300, True, [notification("k2")])
        )
        self.assertEqual(store.find(sop_instance_uid="k2"), [])
        self.assertTrue(
            store.complete_study("ct", STUDY, reopened.last_instance_at, 1, T0 + 300, True, [notification("k2")])
        )
        row = store.study("ct", STUDY)
        self.assertEqual((row.state, row.completions, row.completed_at), ("complete", 2, T0 + 300))

    def test_complete_of_a_complete_or_missing_row_is_refused(self) -> None:
        """A row already complete, or none, is not completed (again)."""
        store = self.store()
        self.assertFalse(store.complete_study("ct", STUDY, T0, 0, T0 + 100, True, []))
        self.add(store, T0)
        self.assertTrue(store.complete_study("ct", STUDY, T0, 0, T0 + 100, True, []))
        self.assertFalse(store.complete_study("ct", STUDY, T0, 1, T0 + 200, True, [notification("k9")]))
        self.assertEqual(store.study("ct", STUDY).completed_at, T0 + 100)

    def test_a_failure_inside_complete_rolls_everything_back(self) -> None:
        """A notification that cannot be recorded (its record already exists) leaves the row open and adds nothing."""
        store = self.store()
        self.add(store, T0)
        self.deliver_all(store)
        row = store.study("ct", STUDY)
        existing = notification("k0")
        store.add_instance(existing[0], existing[1], T0, 0.0)
        self.assertRaises(
            ValueError, store.complete_study, "ct", STUDY, row.last_instance_at, 0, T0 + 100, False,
            [notification("k1"), existing],
        )
        self.assertEqual(store.study("ct", STUDY), row)
        self.assertEqual(store.find(sop_instance_uid="k1"), [])
        self.assertEqual(len(store.entries(destination="hook")), 1)
        # Nothing is left half-done: the same completion then succeeds.
        self.assertTrue(store.complete_study("ct", STUDY, row.last_instance_at, 0, T0 + 100, False, [notification("k1")]))

    def test_outstanding_notifications_do_not_hold_the_study(self) -> None:
        """The previous completion's notifications still queued do not keep the amended study open."""
        store = self.store()
        self.add(store, T0)
        self.deliver_all(store)
        self.assertTrue(store.complete_study("ct", STUDY, T0, 0, T0 + 100, False, [notification("k1")]))
        self.add(store, T0 + 200)
        self.deliver_all(store, now=T0 + 201)
        self.assertTrue(store.complete_study("ct", STUDY, T0 + 200, 1, T0 + 300, False, [notification("k2")]))
        self.assertEqual(len(store.entries(destination="hook", state=EntryState.QUEUED)), 2)

    def test_two_nodes_completing_at_once_one_wins(self) -> None:
        """Two nodes' trackers complete the same read of the row: exactly one records it and its notifications."""
        store = self.store()
        other = self.peer(store, "node-b")
        self.add(store, T0)
        self.deliver_all(store)
        row = other.study("ct", STUDY)
        results = [
            store.complete_study("ct", STUDY, row.last_instance_at, 0, T0 + 100, False, [notification("a")]),
            other.complete_study("ct", STUDY, row.last_instance_at, 0, T0 + 100, False, [notification("b")]),
        ]
        self.assertEqual(results, [True, False])
        self.assertEqual(len(store.entries(destination="hook")), 1)

    # -- listing and retention --------------------------------------------------------------

    def test_open_studies_due_by_quiet_or_max_wait(self) -> None:
        """open_studies lists open rows quiet since the bound or opened before the other, quietest first."""
        store = self.store()
        self.add(store, T0 + 10, study="1.9.1", notes=[note("1.9.1")])
        self.add(store, T0 + 5, study="1.9.2", notes=[note("1.9.2")])
        self.add(store, T0 + 30, study="1.9.3", notes=[note("1.9.3")])
        self.add(store, T0 + 0, study="1.9.4", notes=[note("1.9.4")])
        self.add(store, T0 + 40, study="1.9.4", notes=[note("1.9.4")])  # opened at T0, busy
        self.add(store, T0 + 1, study="1.9.5", notes=[note("1.9.5")])
        store.complete_study("ct", "1.9.5", T0 + 1, 0, T0 + 2, True, [])
        self.assertEqual([r.study_instance_uid for r in store.open_studies(T0 + 10, T0 - 1)], ["1.9.2", "1.9.1"])
        self.assertEqual(
            [r.study_instance_uid for r in store.open_studies(T0 + 10, T0)], ["1.9.2", "1.9.1", "1.9.4"]
        )
        self.assertEqual([r.study_instance_uid for r in store.open_studies(T0 + 100, T0, limit=2)], ["1.9.2", "1.9.1"])
        self.assertEqual(store.open_studies(T0 + 100, T0, limit=0), [])

    def test_studies_keyset_newest_first(self) -> None:
        """studies pages newest first by (last_instance_at, route, study), filtered by state, after a cursor."""
        store = self.store()
        for n, (at, route) in enumerate([(1, "ct"), (2, "ct"), (2, "mr"), (2, "ct"), (3, "ct")]):
            study = f"1.2.{10 - n}"
            self.add(store, T0 + at, study=study, route=route, notes=[note(study, route)])
        store.complete_study("ct", "1.2.6", T0 + 3, 0, T0 + 4, True, [])
        everything = [(r.last_instance_at - T0, r.route, r.study_instance_uid) for r in store.studies()]
        self.assertEqual(
            everything,
            [(3, "ct", "1.2.6"), (2, "mr", "1.2.8"), (2, "ct", "1.2.9"), (2, "ct", "1.2.7"), (1, "ct", "1.2.10")],
        )
        first = store.studies(limit=2)
        last = first[-1]
        rest = store.studies(limit=10, after=(last.last_instance_at, last.route, last.study_instance_uid))
        self.assertEqual([r.study_instance_uid for r in first + rest], [e[2] for e in everything])
        self.assertEqual([r.study_instance_uid for r in store.studies("complete")], ["1.2.6"])
        self.assertEqual(len(store.studies("open", after=(T0 + 2, "ct", "1.2.9"))), 2)

    def test_purge_studies_deletes_old_completions_in_batches(self) -> None:
        """purge_studies deletes complete rows completed strictly before the bound, oldest first, at most limit."""
        store = self.store()
        for n in range(4):
            study = f"1.3.{n}"
            self.add(store, T0, study=study, notes=[note(study)])
            store.complete_study("ct", study, T0, 0, T0 + 10 * n, True, [])
        self.add(store, T0, study="1.3.9", notes=[note("1.3.9")])  # open: never purged
        self.assertEqual(store.purge_studies(T0 + 20, limit=1), 1)
        self.assertRaises(KeyError, store.study, "ct", "1.3.0")
        self.assertEqual(store.purge_studies(T0 + 20, limit=10), 1)
        self.assertEqual(store.purge_studies(T0 + 20), 0)
        self.assertEqual(sorted(r.study_instance_uid for r in store.studies()), ["1.3.2", "1.3.3", "1.3.9"])
        self.assertEqual(store.purge_studies(T0 + 1000, limit=0), 0)
        self.assertEqual(store.purge_studies(T0 + 1000), 2)
        self.assertEqual([r.study_instance_uid for r in store.studies()], ["1.3.9"])


class MemoryStudyTests(StudyJournalTests, SynchronousTestCase):
    """The mixin against the in-memory fake."""

    def make_store(self) -> MemoryQueueStore:
        """A fresh in-memory store."""
        return MemoryQueueStore()

    def make_peer(self, store: MemoryQueueStore, node: str) -> MemoryQueueStore:
        """Another node on the same tables."""
        return store.peer(node)


class SqliteStudyTests(StudyJournalTests, SynchronousTestCase):
    """The mixin against the SQLite store in a temporary directory."""

    def make_store(self) -> SqliteQueueStore:
        """A fresh SQLite store in a new temporary directory."""
        directory = self.mktemp()
        os.makedirs(directory)
        return SqliteQueueStore(os.path.join(directory, "queue.sqlite"))

    def make_peer(self, store: SqliteQueueStore, node: str) -> SqliteQueueStore:
        """A second store object (its own connection) on the same file, for ``node``."""
        return SqliteQueueStore(store.path, node)


class SqliteTwoNodeStudyTests(SynchronousTestCase):
    """Two store objects on one SQLite file (two nodes), each on its own thread."""

    def test_racing_completions_exactly_one_wins(self) -> None:
        """Several rounds of two nodes completing one study at once: each round exactly one wins, one notification."""
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "queue.sqlite")
        a, b = SqliteQueueStore(path, "node-a"), SqliteQueueStore(path, "node-b")
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        for round_ in range(20):
            study = f"1.4.{round_}"
            record = make_record(f"r{round_}", study_instance_uid=study, sop_instance_uid=study + ".1")
            a.add_instance(record, [NewEntry("ct", "pacs")], T0, 0.0, notes=[note(study)])
            row = b.study("ct", study)
            results: dict[str, bool] = {}
            errors: list[BaseException] = []
            barrier = threading.Barrier(2)

            def race(store: SqliteQueueStore, key: str) -> None:
                try:
                    barrier.wait(10)
                    results[key] = store.complete_study(
                        "ct", study, row.last_instance_at, 0, T0 + 10, True,
                        [notification(f"{key}-{study}", study)],
                    )
                except BaseException as e:
                    errors.append(e)

            threads = [threading.Thread(target=race, args=(s, k)) for s, k in ((a, "a"), (b, "b"))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            self.assertEqual(errors, [])
            self.assertEqual(sorted(results.values()), [False, True])
            winner = next(k for k, v in results.items() if v)
            notes = [e.instance.sop_instance_uid for e in a.entries(destination="hook") if e.instance.study_instance_uid == study]
            self.assertEqual(notes, [f"{winner}-{study}"])
            self.assertEqual(a.study("ct", study).completions, 1)


class StudyMigrationTests(SynchronousTestCase):
    """A version-8 journal with data migrated to version 9."""

    def test_version_8_journal_keeps_its_data_and_gains_studies(self) -> None:
        """The migration adds the studies table and indexes; instances and entries survive and notes work."""
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "queue.sqlite")
        conn = sqlite3.connect(path, isolation_level=None)
        for migration in MIGRATIONS[:8]:
            migration(conn)
        conn.execute("PRAGMA user_version = 8")
        record = make_record("old", study_instance_uid=STUDY)
        from gateway.queue.schema import _INSTANCE_COLUMNS

        conn.execute(
            "INSERT INTO instances (" + ", ".join(_INSTANCE_COLUMNS) + ") VALUES ("
            + ", ".join("?" * len(_INSTANCE_COLUMNS)) + ")",
            tuple(getattr(record, column) for column in _INSTANCE_COLUMNS),
        )
        conn.execute(
            "INSERT INTO entries (instance_id, route, destination, path, state, enqueued_at, next_attempt_at, history,"
            " study_hash) VALUES ('old', 'ct', 'pacs', NULL, 'queued', ?, ?, '[]', 0)",
            (T0, T0),
        )
        conn.close()
        store = SqliteQueueStore(path)
        self.addCleanup(store.close)
        self.assertEqual(store._version(), len(MIGRATIONS))
        ((found, entries),) = store.find(study_instance_uid=STUDY)
        self.assertEqual((found, [(e.route, e.destination, e.state) for e in entries]), (record, [("ct", "pacs", EntryState.QUEUED)]))
        indexes = {row[0] for row in store._conn.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'studies' AND type = 'index'")}
        self.assertTrue({"studies_due", "studies_completed"} <= indexes)
        self.assertEqual(store.studies(), [])
        new = make_record("new", study_instance_uid=STUDY, sop_instance_uid=STUDY + ".5")
        store.add_instance(new, [NewEntry("ct", "pacs")], T0 + 1, 0.0, notes=[note()])
        self.assertEqual(store.study("ct", STUDY).instances, 1)
        # The old instance counts in progress (entries of the route), though noted before the migration.
        self.assertEqual(store.study_progress("ct", STUDY).instances, 2)


class SqliteStudyPlanTests(SynchronousTestCase):
    """The study journal's queries on SQLite go through indexes (a study of thousands of instances stays cheap)."""

    def plan(self, store: SqliteQueueStore, sql: str, params: tuple[Any, ...]) -> str:
        """SQLite's query plan of ``sql``, one line per step."""
        return "\n".join(str(row[3]) for row in store._conn.execute("EXPLAIN QUERY PLAN " + sql, params))

    def test_progress_and_outstanding_search_by_study_then_instance(self) -> None:
        """Progress and complete_study's outstanding check search instances_study then entries_instance, never scan."""
        from gateway.queue import study_sql

        directory = self.mktemp()
        os.makedirs(directory)
        store = SqliteQueueStore(os.path.join(directory, "queue.sqlite"))
        self.addCleanup(store.close)
        params = (STUDY, NOTIFICATION_SOP_CLASS, "ct")
        for sql in (
            study_sql._OUTSTANDING,
            "SELECT count(*), min(i.received_at), max(i.received_at)" + study_sql._ROUTE_INSTANCES,
            "SELECT e.destination, e.state, count(*) FROM instances i JOIN entries e ON e.instance_id = i.instance_id"
            " WHERE i.study_instance_uid = ? AND i.sop_class_uid <> ? AND e.route = ? GROUP BY e.destination, e.state",
        ):
            plan = self.plan(store, sql, params)
            self.assertIn("USING INDEX instances_study", plan)
            self.assertIn("USING INDEX entries_instance", plan)
            self.assertNotIn("SCAN", plan.replace("SCAN CONSTANT ROW", ""))

    def test_purge_and_due_search_their_indexes(self) -> None:
        """purge_studies reads studies_completed, open_studies studies_due."""
        directory = self.mktemp()
        os.makedirs(directory)
        store = SqliteQueueStore(os.path.join(directory, "queue.sqlite"))
        self.addCleanup(store.close)
        purge = self.plan(
            store,
            "SELECT route, study_instance_uid FROM studies WHERE state = 'complete' AND completed_at < ?"
            " ORDER BY completed_at LIMIT ?",
            (T0, 10),
        )
        self.assertIn("studies_completed", purge)
        self.assertNotIn("TEMP B-TREE", purge)
        due = self.plan(
            store,
            "SELECT route FROM studies WHERE state = 'open' AND (last_instance_at <= ? OR opened_at <= ?)"
            " ORDER BY last_instance_at, route, study_instance_uid LIMIT ?",
            (T0, T0, 10),
        )
        self.assertIn("studies_due", due)
