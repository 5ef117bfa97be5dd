"""``GatewayService`` and Storage Commitment (issue 15): the report worker is made only where commitment is configured."""

from __future__ import annotations

from dataclasses import replace

from twisted.internet import reactor

from gateway.blocking import SynchronousRunner
from gateway.commitment.worker import CommitmentWorker
from gateway.config.schema import CommitmentConfig, GatewayConfig
from gateway.queue.commitments import TransactionState
from gateway.queue.memory import MemoryQueueStore
from gateway.service import GatewayService
from tests.adapters.test_service import ROUTES_ONE, ServiceTestCase
from tests.unit.queue.test_commitments import new_transaction, refs


class CommitmentWorkerWiringTests(ServiceTestCase):
    """The service's commitment block."""

    def build(self, config: GatewayConfig) -> GatewayService:
        """A service (not started) on a memory store."""
        self.store = MemoryQueueStore()
        return GatewayService(reactor, config, blocking=SynchronousRunner(), store_runner=SynchronousRunner(), store=self.store)

    def test_no_commitment_no_worker(self) -> None:
        """Without a ``commitment`` section nothing changes: no worker, a poke does nothing."""
        service = self.build(self.config(ROUTES_ONE))
        self.assertIsNone(service.commitment_worker)
        service.poke_commitments()
        self.assertFalse(any(isinstance(s, CommitmentWorker) for s in service))

    def test_top_level_commitment_makes_a_worker(self) -> None:
        """A top-level ``commitment`` section: one worker, a child of the service, with the cluster lease."""
        config = replace(self.config(ROUTES_ONE), commitment=CommitmentConfig())
        service = self.build(config)
        worker = service.commitment_worker
        assert worker is not None
        self.assertIn(worker, list(service))
        self.assertEqual(worker.lease_seconds, config.cluster.lease)

    def test_listener_commitment_makes_a_worker(self) -> None:
        """A listener's own ``commitment`` is enough."""
        config = self.config(ROUTES_ONE)
        config = replace(config, listen=(replace(config.listen[0], commitment=CommitmentConfig()),))
        self.assertIsNotNone(self.build(config).commitment_worker)

    def test_worker_runs_with_the_service(self) -> None:
        """Started with the service: a journaled transaction is looked at on a poke (its instance not received yet: deferred, kept OPEN)."""
        config = replace(self.config(ROUTES_ONE), commitment=CommitmentConfig())
        self.store = MemoryQueueStore()
        service = GatewayService(reactor, config, blocking=SynchronousRunner(), store_runner=SynchronousRunner(), store=self.store)
        service.startService()
        self.addCleanup(self.stop, service)
        d = service.ready

        def started(_: object) -> None:
            import time

            now = time.time()
            self.store.add_transaction(
                new_transaction("2.25.5", refs(1), deadline=now + 3600, report_deadline=now + 7200, lookback_from=now - 60),
                now,
            )
            service.poke_commitments()
            transaction = self.store.get_transaction("2.25.5")
            self.assertEqual(transaction.state, TransactionState.OPEN)
            self.assertIn("undecided", transaction.last_error)

        d.addCallback(started)
        return d
