"""The study journal (issue 18) on a real PostgreSQL.

``PostgresStudyTests`` runs the ``StudyJournalTests`` mixin (the one the
SQLite store and the in-memory fake pass) on
:class:`~gateway.queue.postgres.PostgresQueueStore`; the other classes pin
what only PostgreSQL does: two nodes' intakes noting one study at once
(``INSERT ... ON CONFLICT DO UPDATE`` merging ``series_seen`` in SQL), two
nodes' trackers racing ``complete_study`` (the row locked ``FOR UPDATE``),
an intake racing a completion, and schema version 5 migrated from a
version-4 database keeping its data.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from gateway.queue import pgschema
from gateway.queue.interfaces import EntryState, NewEntry
from gateway.queue.postgres import PostgresQueueStore
from gateway.queue.studies import SeriesSeen
from tests.adapters.test_postgres_store import PostgresTestCase
from tests.support import postgres as pg
from tests.unit.queue.test_store import T0, make_record
from tests.unit.queue.test_studies import STUDY, StudyJournalTests, note, notification


class PostgresStudyTests(StudyJournalTests, PostgresTestCase):
    """The shared study journal mixin on PostgreSQL."""

    def make_store(self) -> PostgresQueueStore:
        """A store for node ``"node"`` on this test's fresh database."""
        return PostgresQueueStore(self.database.dsn, "node", password=self.database.password)

    def make_peer(self, store: PostgresQueueStore, node: str) -> PostgresQueueStore:
        """A second store (its own pool: another node) on the same database."""
        return PostgresQueueStore(self.database.dsn, node, password=self.database.password)


def run_threads(*targets: Callable[[], None]) -> list[BaseException]:
    """Run each target on its own thread, started together; return what they raised."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(targets))

    def wrap(target: Callable[[], None]) -> None:
        try:
            barrier.wait(10)
            target()
        except BaseException as e:  # reported on the test's thread
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return errors


class ConcurrentStudyTests(PostgresTestCase):
    """Two nodes writing one study row at once, each from its own thread."""

    def test_two_intakes_noting_one_study_lose_nothing(self) -> None:
        """Two nodes journaling 40 instances each of one study (two series, batches of 4) count all 80, per series."""
        a, b = self.open_store("node-a"), self.open_store("node-b")

        def intake(store: PostgresQueueStore, prefix: str, series: str, number: int) -> Callable[[], None]:
            def run() -> None:
                for n in range(0, 40, 4):
                    batch = [
                        (make_record(f"{prefix}{n + k}", study_instance_uid=STUDY, series_instance_uid=series,
                                     sop_instance_uid=f"{series}.{n + k}", received_at=T0 + n),
                         [NewEntry("ct", "pacs")])
                        for k in range(4)
                    ]
                    store.add_instances(
                        batch, T0 + n, 0.0,
                        notes=[[note(series=series, number=number, modality="CT")] for _ in batch],
                    )
            return run

        errors = run_threads(intake(a, "a", STUDY + ".1", 1), intake(b, "b", STUDY + ".2", 2))
        self.assertEqual(errors, [])
        row = a.study("ct", STUDY)
        self.assertEqual(row.instances, 80)
        self.assertEqual(
            row.series,
            {STUDY + ".1": SeriesSeen(STUDY + ".1", 1, "CT", 40), STUDY + ".2": SeriesSeen(STUDY + ".2", 2, "CT", 40)},
        )
        self.assertEqual(a.study_progress("ct", STUDY).instances, 80)

    def test_two_trackers_racing_one_wins(self) -> None:
        """Rounds of two nodes completing the same read of a row at once: exactly one notification per round."""
        a, b = self.open_store("node-a"), self.open_store("node-b")
        for round_ in range(10):
            study = f"1.5.{round_}"
            a.add_instance(
                make_record(f"r{round_}", study_instance_uid=study, sop_instance_uid=study + ".1"),
                [NewEntry("ct", "pacs")], T0, 0.0, notes=[note(study)],
            )
            row = b.study("ct", study)
            results: dict[str, bool] = {}

            def complete(store: PostgresQueueStore, key: str) -> Callable[[], None]:
                def run() -> None:
                    results[key] = store.complete_study(
                        "ct", study, row.last_instance_at, 0, T0 + 10, True, [notification(f"{key}-{study}", study)]
                    )
                return run

            self.assertEqual(run_threads(complete(a, "a"), complete(b, "b")), [])
            self.assertEqual(sorted(results.values()), [False, True])
            winner = next(k for k, v in results.items() if v)
            sent = [e.instance.sop_instance_uid for e in a.entries(destination="hook") if e.instance.study_instance_uid == study]
            self.assertEqual(sent, [f"{winner}-{study}"])

    def test_intake_racing_a_completion_is_never_lost(self) -> None:
        """An instance noted while another node completes the study either reopens the row or stops the completion."""
        a, b = self.open_store("node-a"), self.open_store("node-b")
        for round_ in range(10):
            study = f"1.6.{round_}"
            a.add_instance(
                make_record(f"s{round_}", study_instance_uid=study, sop_instance_uid=study + ".1"),
                [NewEntry("ct", "pacs")], T0, 0.0, notes=[note(study)],
            )
            row = a.study("ct", study)
            results: dict[str, Any] = {}

            def complete() -> None:
                results["done"] = a.complete_study(
                    "ct", study, row.last_instance_at, 0, T0 + 10, True, [notification(f"n-{study}", study)]
                )

            def arrive() -> None:
                b.add_instance(
                    make_record(f"t{round_}", study_instance_uid=study, sop_instance_uid=study + ".2"),
                    [NewEntry("ct", "pacs")], T0 + 5, 0.0, notes=[note(study)],
                )

            self.assertEqual(run_threads(complete, arrive), [])
            after = a.study("ct", study)
            self.assertEqual(after.instances, 2)
            self.assertEqual(after.last_instance_at, T0 + 5)
            if results["done"]:
                # Completed first: the late instance reopened it (the next notification is an amendment).
                self.assertEqual((after.state, after.completions, after.opened_at), ("open", 1, T0 + 5))
            else:
                self.assertEqual((after.state, after.completions), ("open", 0))


class StudyMigrationTests(PostgresTestCase):
    """Schema version 5 on a database that was at version 4 (issue 16's clean-up schema)."""

    def setUp(self) -> None:
        """An empty database (no schema)."""
        self.database = pg.fresh_database(self, migrated=False)

    def test_version_4_database_migrates_keeping_its_data(self) -> None:
        """A database at version 4 with an instance and its entry reaches version 5 on open: data kept, notes work."""
        import psycopg

        record = make_record("i1", sop_instance_uid="2.25.43", study_instance_uid=STUDY)
        with psycopg.connect(self.database.dsn, password=self.database.password, autocommit=True) as conn:
            self.assertEqual(pgschema.apply_migrations(conn, "old", pgschema.MIGRATIONS[:4]), 4)
            conn.execute(
                "INSERT INTO instances (instance_id, path, sop_class_uid, sop_instance_uid, transfer_syntax_uid, size,"
                " sha256, received_at, correlation_id, study_instance_uid, node)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'old')",
                (record.instance_id, record.path, record.sop_class_uid, record.sop_instance_uid,
                 record.transfer_syntax_uid, record.size, record.sha256, record.received_at, record.correlation_id,
                 STUDY),
            )
            conn.execute(
                "INSERT INTO entries (instance_id, route, destination, state, enqueued_at, next_attempt_at, study_hash)"
                " VALUES ('i1', 'ct', 'pacs', 'queued', %s, %s, 0)",
                (T0, T0),
            )
            self.assertEqual(pgschema.schema_version(conn), 4)
        store = self.open_store("new")
        with psycopg.connect(self.database.dsn, password=self.database.password, autocommit=True) as conn:
            self.assertEqual(pgschema.schema_version(conn), pgschema.SCHEMA_VERSION)
        self.assertGreaterEqual(pgschema.SCHEMA_VERSION, 5)
        (entry,) = store.entries()
        self.assertEqual((entry.state, entry.instance.instance_id), (EntryState.QUEUED, "i1"))
        self.assertEqual(store.studies(), [])
        store.add_instance(
            make_record("i2", sop_instance_uid="2.25.44", study_instance_uid=STUDY), [NewEntry("ct", "pacs")],
            T0 + 1, 0.0, notes=[note()],
        )
        self.assertEqual(store.study("ct", STUDY).instances, 1)
        self.assertEqual(store.study_progress("ct", STUDY).instances, 2)
        indexes = {
            row[0]
            for row in pg.server().admin(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'studies'", database=self.database.name
            )
        }
        self.assertTrue({"studies_due", "studies_completed"} <= indexes)
