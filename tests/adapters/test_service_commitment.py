"""``GatewayService`` and the archives that commit (issue 15): committers made, poked, reloaded, stopped.

The service of :mod:`tests.adapters.test_service` (memory store, synchronous
runners, listener on port 0). ``storage_commitment`` is set on the loaded
configuration's destination directly, so these tests do not depend on the
loader's keys.
"""

from __future__ import annotations

import dataclasses

from gateway.commitment.archive import ArchiveCommitter, ArchiveReports
from gateway.config.schema import DicomDestination, GatewayConfig
from tests.adapters.test_service import ServiceTestCase

TEXT = """\
ae_title: GW
listen:
  - host: 127.0.0.1
    port: 0
spool: {path: spool, min_free: 0, resume_margin: 0}
destinations:
  pacs: {ae_title: PACS, host: 127.0.0.1, port: 1}
  one: {folder: out1}
routes:
  - {name: r1, forward: [pacs, one]}
"""


class ArchiveCommitmentServiceTests(ServiceTestCase):
    """The committers of ``storage_commitment`` destinations, as the service builds them."""

    def config(self, text: str, committing: bool = True) -> GatewayConfig:  # type: ignore[override]
        """The loaded configuration, with ``pacs`` committing unless ``committing`` is false."""
        config = super().config(text)
        return dataclasses.replace(
            config,
            destinations=tuple(
                dataclasses.replace(d, storage_commitment=committing) if isinstance(d, DicomDestination) else d
                for d in config.destinations
            ),
        )

    async def test_a_committing_destination_gets_a_running_committer_its_worker_pokes(self) -> None:
        """pacs commits: its committer runs with the service and its worker pokes it; the folder has none; reports have a recorder."""
        service = self.start(TEXT)
        self.assertEqual(sorted(service.committers), ["pacs"])
        committer = service.committers["pacs"]
        self.assertIsInstance(committer, ArchiveCommitter)
        self.assertTrue(committer.running)
        self.assertIn(committer, list(service))
        self.assertEqual(service.workers["pacs"].on_noted, committer.poke)
        self.assertIsNone(service.workers["one"].on_noted)
        self.assertIsNone(service.workers["one"].commitments)
        self.assertIsInstance(service.archive_reports, ArchiveReports)
        self.assertIs(service.commitment_scp.archive_reports, service.archive_reports)
        await service.stopService()
        self.assertFalse(committer.running)

    def test_no_committer_without_storage_commitment(self) -> None:
        """Nothing commits: no committer, no note hook (nothing changes for a site without it)."""
        self.store = None  # type: ignore[assignment]
        from twisted.internet import reactor

        from gateway.blocking import SynchronousRunner
        from gateway.queue.memory import MemoryQueueStore
        from gateway.service import GatewayService

        service = GatewayService(
            reactor,
            self.config(TEXT, committing=False),
            blocking=SynchronousRunner(),
            store_runner=SynchronousRunner(),
            store=MemoryQueueStore(),
        )
        self.assertEqual(service.committers, {})
        self.assertIsNone(service.workers["pacs"].commitments)
        self.assertIsNone(service.workers["pacs"].on_noted)

    def test_a_reload_that_makes_a_destination_commit_adds_its_committer(self) -> None:
        """Reloaded with storage_commitment on pacs: a running committer, poked by pacs's new worker."""
        service = self.start(TEXT)
        self.assertIs(self.successResultOf(service.reload(lambda source: self.config(TEXT, committing=False))), True)
        self.assertIsNone(service.workers["pacs"].on_noted)
        self.assertIs(self.successResultOf(service.reload(lambda source: self.config(TEXT))), True)
        committer = service.committers["pacs"]
        self.assertTrue(committer.running)
        self.assertEqual(service.workers["pacs"].on_noted, committer.poke)
