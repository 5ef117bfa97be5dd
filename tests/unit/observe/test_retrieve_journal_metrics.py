"""Issue 16's journal metrics: ``dicom_gateway_retrieves_open{kind}`` through the refresher, and the clean-up counter."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, generate_latest
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer_only

from gateway import events
from gateway.blocking import SynchronousRunner
from gateway.observe import GatewayMetrics, StateRefresher
from gateway.queue.interfaces import IQueueStore
from gateway.queue.memory import MemoryQueueStore
from gateway.queue.retrieves import RetrieveState
from tests.unit.queue.test_retrieves import new_retrieve
from tests.unit.queue.test_store import T0


@implementer_only(IQueueStore)
class _QueueOnly(MemoryQueueStore):
    """A store that journals no retrieves."""


class RetrievesOpenGaugeTests(SynchronousTestCase):
    """OPEN retrieves by kind, read at the refresh (never at scrape time)."""

    def setUp(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry, wall=lambda: T0)
        self.spool = self.mktemp()
        os.makedirs(self.spool)

    def refresh(self, store: MemoryQueueStore) -> None:
        """One synchronous refresh over ``store``."""
        StateRefresher(
            metrics=self.metrics, store=store, store_runner=SynchronousRunner(), file_runner=SynchronousRunner(),
            spool_root=self.spool, destinations=lambda: ["pacs"], down=lambda: [], clock=Clock(), wall=lambda: T0,
        ).refresh()

    def value(self, kind: str) -> float | None:
        """The gauge's sample for ``kind``."""
        return self.registry.get_sample_value("dicom_gateway_retrieves_open", {"kind": kind})

    def test_gauge_counts_open_retrieves_by_kind_at_the_refresh(self) -> None:
        """Two open moves and an open get (an ended move not counted); a retrieve opened after the refresh waits for the next one."""
        store = MemoryQueueStore("gw-a")
        store.open_retrieve(new_retrieve(), T0)
        store.open_retrieve(new_retrieve(), T0)
        store.open_retrieve(new_retrieve(kind="get", destination=""), T0)
        ended = store.open_retrieve(new_retrieve(), T0)
        store.finish_retrieve(ended.retrieve_id, RetrieveState.DONE, "", T0)
        self.refresh(store)
        self.assertEqual((self.value("move"), self.value("get")), (2.0, 1.0))
        store.open_retrieve(new_retrieve(kind="get", destination=""), T0)
        generate_latest(self.registry)
        self.assertEqual(self.value("get"), 1.0)
        self.refresh(store)
        self.assertEqual(self.value("get"), 2.0)

    def test_zero_for_each_kind_when_none_is_open(self) -> None:
        """An empty journal exports 0 for move and get (a series to alert on)."""
        self.refresh(MemoryQueueStore("gw-a"))
        self.assertEqual((self.value("move"), self.value("get")), (0.0, 0.0))

    def test_no_gauge_without_a_retrieve_journal(self) -> None:
        """A store that journals no retrieves exports no such gauge (absent, not a false 0)."""
        self.refresh(_QueueOnly("gw-a"))
        self.assertIsNone(self.value("move"))


class CleanupCounterTests(SynchronousTestCase):
    """``dicom_gateway_retrieve_journal_purged_total{table}`` from RetrieveJournalCleaned."""

    def test_counts_add_up_by_table_from_zero(self) -> None:
        """Declared at 0 for each table; two events add their rows per table."""
        registry = CollectorRegistry()
        metrics = GatewayMetrics(registry, wall=lambda: T0)

        def value(table: str) -> float | None:
            return registry.get_sample_value("dicom_gateway_retrieve_journal_purged_total", {"table": table})

        self.assertEqual([value(t) for t in ("retrieves", "retrieve_items", "remapped_uids")], [0.0, 0.0, 0.0])
        metrics.observe(events.RetrieveJournalCleaned(2, 30, 0))
        metrics.observe(events.RetrieveJournalCleaned(1, 5, 7))
        self.assertEqual([value(t) for t in ("retrieves", "retrieve_items", "remapped_uids")], [3.0, 35.0, 7.0])
