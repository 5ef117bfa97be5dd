"""The housekeeping round purges the study journal (issue 18): rows completed before ``retention.studies``.

The service's ``_clean_once`` on a memory store: complete rows past the
retention go, recent completions and open rows stay, a node that does not
hold the housekeeping singleton deletes nothing, 0 keeps forever; and
:meth:`~gateway.recovery.Recovery.clean_studies` works in bounded batches.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from twisted.internet import reactor

from gateway import recovery as recovery_module
from gateway.blocking import SynchronousRunner
from gateway.config.schema import GatewayConfig
from gateway.queue.interfaces import NewEntry
from gateway.queue.memory import MemoryQueueStore
from gateway.service import GatewayService
from tests.adapters.test_service import ROUTES_ONE, ServiceTestCase
from tests.unit.queue.test_store import make_record
from tests.unit.queue.test_studies import note

HOUR = 3600.0
DAY = 86400.0


class StudyHousekeepingTests(ServiceTestCase):
    """``GatewayService._clean_once`` and the study journal."""

    async def started(self, config: GatewayConfig) -> GatewayService:
        """A started service on a fresh memory store (``self.store``)."""
        self.store = MemoryQueueStore()
        service = GatewayService(reactor, config, blocking=SynchronousRunner(), store_runner=SynchronousRunner(), store=self.store)
        service.startService()
        self.addCleanup(self.stop, service)
        await service.ready
        return service

    def study(self, uid: str, received: float, completed: float | None) -> None:
        """A study row of route ``ct`` noted at ``received``, completed at ``completed`` (None: still open)."""
        record = make_record("i-" + uid, study_instance_uid=uid, sop_instance_uid=uid + ".1", received_at=received)
        self.store.add_instance(record, [NewEntry("ct", "pacs")], received, 0.0, notes=[note(uid)])
        if completed is not None:
            self.assertTrue(self.store.complete_study("ct", uid, received, 0, completed, True, []))

    async def test_a_round_deletes_completions_past_retention_only(self) -> None:
        """Retention 1 d: a study completed 2 d ago goes; one completed an hour ago and an old open one stay."""
        service = await self.started(replace(self.config(ROUTES_ONE), study_retention=DAY))
        now = time.time()
        self.study("1.7.1", now - 3 * DAY, now - 2 * DAY)
        self.study("1.7.2", now - 2 * HOUR, now - HOUR)
        self.study("1.7.3", now - 30 * DAY, None)
        await service._clean_once()
        self.assertEqual(sorted(r.study_instance_uid for r in self.store.studies()), ["1.7.2", "1.7.3"])

    async def test_zero_retention_keeps_forever(self) -> None:
        """``retention: {studies: 0}``: a year-old completion stays."""
        service = await self.started(replace(self.config(ROUTES_ONE), study_retention=0.0))
        now = time.time()
        self.study("1.7.1", now - 366 * DAY, now - 365 * DAY)
        await service._clean_once()
        self.assertEqual([r.study_instance_uid for r in self.store.studies()], ["1.7.1"])

    async def test_a_node_without_the_housekeeping_singleton_deletes_nothing(self) -> None:
        """When another node holds the housekeeping singleton, this node's round leaves the studies alone."""
        service = await self.started(replace(self.config(ROUTES_ONE), study_retention=DAY))
        now = time.time()
        self.study("1.7.1", now - 3 * DAY, now - 2 * DAY)
        self.patch(self.store, "hold_singleton", lambda name, at, seconds: False)
        await service._clean_once()
        self.assertEqual([r.study_instance_uid for r in self.store.studies()], ["1.7.1"])

    async def test_a_backlog_goes_in_bounded_transactions_over_rounds(self) -> None:
        """Batches of 2 rows, 2 per round: 5 old completions take 2 rounds of purge calls asked for 2 rows each."""
        service = await self.started(self.config(ROUTES_ONE))
        now = time.time()
        for n in range(5):
            self.study(f"1.8.{n}", now - 10 * DAY, now - 9 * DAY + n)
        limits: list[int] = []
        real = self.store.purge_studies

        def recorded(before: float, limit: int) -> Any:
            limits.append(limit)
            return real(before, limit)

        self.patch(self.store, "purge_studies", recorded)
        self.patch(recovery_module, "RETRIEVE_BATCHES_PER_ROUND", 2)
        self.assertEqual(await service.recovery.clean_studies(DAY, batch=2), 4)
        self.assertEqual(limits, [2, 2])
        self.assertEqual([r.study_instance_uid for r in self.store.studies()], ["1.8.4"])
        self.assertEqual(await service.recovery.clean_studies(DAY, batch=2), 1)
        self.assertEqual(self.store.studies(), [])
