"""The housekeeping round cleans the Query/Retrieve journal (issue 16): retention of finished retrieves and remapped UIDs.

The service's ``_clean_once`` on a memory store: what is past
``retention.retrieves`` / ``retention.remapped_uids`` goes, what is not (and
every OPEN retrieve) stays, a node that does not hold the housekeeping
singleton deletes nothing, 0 keeps forever, the counts reach
``dicom_gateway_retrieve_journal_purged_total``; and
:meth:`~gateway.recovery.Recovery.clean_retrieves` works in bounded batches,
leaving a backlog for the next round.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from twisted.internet import reactor

from gateway import recovery as recovery_module
from gateway.blocking import SynchronousRunner
from gateway.config.schema import GatewayConfig
from gateway.queue.memory import MemoryQueueStore
from gateway.queue.retrieves import RetrieveState
from gateway.recovery import RetrieveCleanup
from gateway.service import GatewayService
from tests.adapters.test_service import ROUTES_ONE, ServiceTestCase
from tests.unit.queue.test_retrieves import new_retrieve, refs

HOUR = 3600.0
DAY = 86400.0


class RetrieveJournalHousekeepingTests(ServiceTestCase):
    """``GatewayService._clean_once`` and the retrieve journal."""

    async def started(self, config: GatewayConfig) -> GatewayService:
        """A started service on a fresh memory store (``self.store``)."""
        self.store = MemoryQueueStore()
        service = GatewayService(reactor, config, blocking=SynchronousRunner(), store_runner=SynchronousRunner(), store=self.store)
        service.startService()
        self.addCleanup(self.stop, service)
        await service.ready
        return service

    def ended(self, finished_at: float, n: int = 2) -> int:
        """A retrieve of ``n`` instances ended DONE at ``finished_at``; its id."""
        r = self.store.open_retrieve(new_retrieve(expected=refs(*range(n))), finished_at - 60)
        self.store.finish_retrieve(r.retrieve_id, RetrieveState.DONE, "", finished_at)
        return int(r.retrieve_id)

    def purged(self, service: GatewayService, table: str) -> float:
        """The value of ``dicom_gateway_retrieve_journal_purged_total{table}``."""
        value = service.metrics.registry.get_sample_value("dicom_gateway_retrieve_journal_purged_total", {"table": table})
        return float(value or 0.0)

    async def test_a_round_deletes_what_is_past_retention_and_keeps_the_rest(self) -> None:
        """Retention 1 h / 1 d: a retrieve ended 2 h ago and a pair unused for 2 d go (counted); a recent end, an old OPEN retrieve and a recently used pair stay."""
        config = replace(self.config(ROUTES_ONE), retrieve_retention=HOUR, remap_retention=DAY)
        service = await self.started(config)
        now = time.time()
        old = self.ended(now - 2 * HOUR, n=3)
        recent = self.ended(now - HOUR / 2)
        still_open = self.store.open_retrieve(new_retrieve(), now - 30 * DAY).retrieve_id
        self.store.remember_uids([("2.25.1", "1.2.1"), ("2.25.2", "1.2.2")], now - 2 * DAY)
        self.store.original_uids(["2.25.2"], now - HOUR)
        await service._clean_once()
        self.assertEqual(sorted(r.retrieve_id for r in self.store.retrieves()), sorted([recent, still_open]))
        with self.assertRaises(KeyError):
            self.store.get_retrieve(old)
        self.assertEqual(dict(self.store.original_uids(["2.25.1", "2.25.2"])), {"2.25.2": "1.2.2"})
        self.assertEqual(
            [self.purged(service, t) for t in ("retrieves", "retrieve_items", "remapped_uids")], [1.0, 3.0, 1.0]
        )
        await service._clean_once()  # nothing more to do: the counters stay
        self.assertEqual(self.purged(service, "retrieves"), 1.0)

    async def test_zero_retention_keeps_forever(self) -> None:
        """``retention: {retrieves: 0, remapped_uids: 0}``: a year-old end and a year-old pair stay."""
        config = replace(self.config(ROUTES_ONE), retrieve_retention=0.0, remap_retention=0.0)
        service = await self.started(config)
        now = time.time()
        kept = self.ended(now - 365 * DAY)
        self.store.remember_uids([("2.25.1", "1.2.1")], now - 365 * DAY)
        await service._clean_once()
        self.assertEqual([r.retrieve_id for r in self.store.retrieves()], [kept])
        self.assertEqual(dict(self.store.original_uids(["2.25.1"])), {"2.25.1": "1.2.1"})

    async def test_a_node_without_the_housekeeping_singleton_deletes_nothing(self) -> None:
        """When another node holds the housekeeping singleton, this node's round leaves the journal alone."""
        config = replace(self.config(ROUTES_ONE), retrieve_retention=HOUR, remap_retention=DAY)
        service = await self.started(config)
        now = time.time()
        kept = self.ended(now - 2 * HOUR)
        asked: list[str] = []

        def held_elsewhere(name: str, at: float, seconds: float) -> bool:
            asked.append(name)
            return False

        self.patch(self.store, "hold_singleton", held_elsewhere)
        await service._clean_once()
        self.assertIn("housekeeping", asked)
        self.assertEqual([r.retrieve_id for r in self.store.retrieves()], [kept])
        self.assertEqual(self.purged(service, "retrieves"), 0.0)


class BoundedBatchTests(ServiceTestCase):
    """``Recovery.clean_retrieves``: transactions of ``batch`` rows, at most RETRIEVE_BATCHES_PER_ROUND per round."""

    async def test_a_backlog_goes_in_bounded_transactions_over_rounds(self) -> None:
        """Batches of 4 rows, 2 per round: each purge call is asked for 4 rows at most; 3 retrieves of 2 items (9 rows) take 2 rounds."""
        self.store = MemoryQueueStore()
        service = GatewayService(
            reactor, self.config(ROUTES_ONE), blocking=SynchronousRunner(), store_runner=SynchronousRunner(), store=self.store
        )
        now = time.time()
        for n in range(3):
            r = self.store.open_retrieve(new_retrieve(expected=refs(1, 2)), now - 10 * DAY)
            self.store.finish_retrieve(r.retrieve_id, RetrieveState.DONE, "", now - 9 * DAY + n)
        limits: list[int] = []
        real = self.store.purge_retrieves

        def recorded(before: float, limit: int) -> Any:
            limits.append(limit)
            return real(before, limit)

        self.patch(self.store, "purge_retrieves", recorded)
        self.patch(recovery_module, "RETRIEVE_BATCHES_PER_ROUND", 2)
        first = await service.recovery.clean_retrieves(DAY, 0.0, batch=4)
        self.assertEqual(limits, [4, 4])
        self.assertLessEqual(first.retrieves + first.items, 8)
        self.assertEqual(len(self.store.retrieves()), 1)  # 8 rows: 2 retrieves and their 4 items, then 2 items of the third
        second = await service.recovery.clean_retrieves(DAY, 0.0, batch=4)
        self.assertEqual(self.store.retrieves(), [])
        self.assertEqual(
            RetrieveCleanup(first.retrieves + second.retrieves, first.items + second.items, 0), RetrieveCleanup(3, 6, 0)
        )
