"""Archive committers of two nodes on one PostgreSQL journal (issue 15): one node asks, another takes over.

:class:`~gateway.commitment.archive.ArchiveCommitter` holds the store
singleton ``commitment:<destination>`` (a PostgreSQL session advisory lock)
before it asks the archive; the committers here run on a ``task.Clock`` with
a synchronous runner against a real PostgreSQL (tests/support/postgres.py),
the archive a scripted ``ask``.
"""

from __future__ import annotations

from typing import Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from gateway.blocking import SynchronousRunner
from gateway.commitment.archive import ArchiveCommitter
from gateway.commitment.model import Reference
from gateway.config.schema import DicomDestination
from gateway.queue.commitments import CopyState
from gateway.queue.interfaces import NewEntry
from gateway.queue.postgres import PostgresQueueStore
from tests.adapters.test_postgres_store import PostgresTestCase
from tests.unit.queue.test_store import T0, make_record

PACS = DicomDestination(
    name="pacs", ae_title="PACS", host="127.0.0.1", port=11112, calling_ae_title="GW",
    storage_commitment=True, commitment_timeout=60.0,
)


class TwoNodeArchiveCommitterTests(PostgresTestCase):
    """The singleton on PostgreSQL: never two nodes asking one archive, and a take-over when the holder dies."""

    def setUp(self) -> None:
        PostgresTestCase.setUp(self)
        self.clock = Clock()
        self.clock.advance(T0)
        #: (node, transaction UID, SOP Instance UIDs) per N-ACTION.
        self.asked: list[tuple[str, str, list[str]]] = []
        self.count = 0

    def committer(self, store: PostgresQueueStore) -> ArchiveCommitter:
        """A started committer of ``pacs`` speaking for ``store``'s node."""

        def ask(destination: DicomDestination, uid: str, references: Sequence[Reference]) -> "Deferred[tuple[int, str]]":
            self.asked.append((store.node, uid, [r.sop_instance_uid for r in references]))
            return succeed((0, ""))

        committer = ArchiveCommitter(
            "pacs", lambda: PACS, store, store, SynchronousRunner(), self.clock, self.clock.seconds, ask,
            singleton_seconds=15.0,
        )
        committer.startService()
        self.addCleanup(lambda: committer.running and committer.stopService())
        return committer

    def deliver(self, store: PostgresQueueStore) -> str:
        """A journaled instance with a delivered copy for ``pacs``, noted as the forwarder does; its UID."""
        self.count += 1
        uid = f"1.2.3.{self.count}"
        record = make_record(f"i{self.count}", sop_instance_uid=uid)
        (entry_id,) = store.add_instance(record, [NewEntry("r1", "pacs")], self.clock.seconds(), 0.0).entry_ids
        store.note_copies([(entry_id, "pacs", record.sop_class_uid, uid)], self.clock.seconds())
        return uid

    def test_one_node_asks_and_the_other_takes_over_when_it_dies(self) -> None:
        """Node a holds the singleton and asks; node b never does while a lives; once a's session ends, b asks."""
        a, b = self.open_store("node-a"), self.open_store("node-b")
        first = self.deliver(a)
        committer_a = self.committer(a)
        committer_b = self.committer(b)
        self.clock.advance(5.0)
        self.assertEqual([(node, uids) for node, _, uids in self.asked], [("node-a", [first])])
        self.assertTrue(committer_a.holder)
        self.assertFalse(committer_b.holder)
        # Node a dies: its committer stops and its sessions end (the advisory lock goes with them).
        committer_a.stopService()
        a.close()
        second = self.deliver(b)
        self.clock.advance(5.0)
        self.assertEqual([(node, uids) for node, _, uids in self.asked], [("node-a", [first]), ("node-b", [second])])
        self.assertTrue(committer_b.holder)
        copies = b.received([first, second], 0.0)
        self.assertEqual({c.state for u in (first, second) for r in copies[u] for c in r.copies}, {CopyState.REQUESTED})
