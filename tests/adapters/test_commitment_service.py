"""``GatewayService`` and Storage Commitment (issue 15): the report worker is made only where commitment is configured."""

from __future__ import annotations

import os
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


class CommitmentEnabledByReloadTests(ServiceTestCase):
    """A reload that adds ``commitment``: the listeners' SCP accepts N-ACTIONs at once, so a worker must send their reports."""

    def test_reload_adding_commitment_makes_and_starts_a_worker(self) -> None:
        """Started without ``commitment``, reloaded with one: a running worker, poked by each journaled N-ACTION (else the reports owed wait for a restart)."""
        service = self.start()
        self.assertIsNone(service.commitment_worker)
        with_commitment = replace(self.config(ROUTES_ONE), commitment=CommitmentConfig())
        self.assertIs(self.successResultOf(service.reload(lambda source: with_commitment)), True)
        worker = service.commitment_worker
        self.assertIsInstance(worker, CommitmentWorker)
        self.assertIn(worker, list(service))
        self.assertTrue(worker.running)
        self.assertEqual(service.commitment_scp.on_journaled, worker.poke)
        # A second reload keeps the same worker (one per node).
        self.assertIs(self.successResultOf(service.reload(lambda source: with_commitment)), True)
        self.assertIs(service.commitment_worker, worker)


class RecordsKeptForTheLookbackTests(ServiceTestCase):
    """Housekeeping keeps the records a commitment request looks back to (``lookback``, until its deadline), not only the duplicate window."""

    async def test_delivered_record_outlives_the_duplicate_window_while_a_request_may_look_back_to_it(self) -> None:
        """An instance delivered two hours ago (duplicate window 1 h, files kept 0 s): its file goes, its record stays for the 7-day lookback, so a request about it is not answered 0x0112."""
        import time

        from gateway.queue.interfaces import NewEntry
        from tests.unit.queue.test_store import make_record

        config = replace(self.config(ROUTES_ONE), commitment=CommitmentConfig(lookback=7 * 86400.0))
        self.assertLess(config.duplicate_window, 7200)  # the window alone would forget it
        self.store = MemoryQueueStore()
        service = GatewayService(reactor, config, blocking=SynchronousRunner(), store_runner=SynchronousRunner(), store=self.store)
        service.startService()
        self.addCleanup(self.stop, service)
        await service.ready
        then = time.time() - 7200
        path = os.path.join(self.tmp, "delivered.dcm")
        with open(path, "wb") as f:
            f.write(b"DICM")
        record = make_record("delivered", path=path, received_at=then)
        self.store.add_instance(record, [NewEntry("r1", "elsewhere")], then, 0.0)
        [entry] = self.store.lease("elsewhere", 1, then, 60.0)
        self.store.complete([entry.entry_id], then)
        await service._clean_once()
        self.assertFalse(os.path.exists(path))  # retention.keep_delivered still removes the file
        found = self.store.received([record.sop_instance_uid], time.time() - 7 * 86400.0)
        self.assertEqual([r.instance_id for r in found.get(record.sop_instance_uid, [])], ["delivered"])
