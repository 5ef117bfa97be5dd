"""The cluster metrics of :mod:`gateway.observe` (issue 14).

``node_info``, ``cluster_heartbeat_seconds``, ``queue_store_up``,
``node_heartbeat_age_seconds``, ``node_leases`` and ``queue_stranded``, read
from a private registry after a :class:`~gateway.observe.StateRefresher`
refresh over a :class:`~gateway.queue.memory.MemoryQueueStore` that two other
nodes wrote to.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.blocking import SynchronousRunner
from gateway.observe import GatewayMetrics, NodeState, StateRefresher
from gateway.queue.interfaces import NewEntry
from gateway.queue.memory import MemoryQueueStore
from tests.unit.queue.test_store import make_record

T0 = 1_000_000.0


class ClusterMetricsTests(SynchronousTestCase):
    """Node gauges and stranded entries as a scrape sees them."""

    def setUp(self) -> None:
        self.registry = CollectorRegistry()
        self.now = T0
        self.metrics = GatewayMetrics(self.registry, wall=lambda: self.now)
        self.spool = self.mktemp()
        os.makedirs(self.spool)
        # This node (gw-a) has a node-local spool; gw-b received one instance and went silent.
        self.store = MemoryQueueStore("gw-a", local_only=True)
        gw_b = self.store.peer("gw-b")
        self.store.heartbeat(T0 - 1, T0 - 100)
        gw_b.heartbeat(T0 - 300, T0 - 1000)
        self.store.add_instance(make_record("a1", node="gw-a"), [NewEntry("r", "pacs")], T0 - 50, 0)
        self.store.add_instance(make_record("a2", node="gw-a"), [NewEntry("r", "pacs")], T0 - 50, 0)
        gw_b.add_instance(make_record("b1", node="gw-b"), [NewEntry("r", "pacs")], T0 - 400, 0)
        self.store.lease("pacs", 1, T0, 60)

    def refresher(self, store: MemoryQueueStore, stranded_after: float | None = 120.0, own: NodeState | None = None) -> StateRefresher:
        """A refresher over ``store`` on the test's clock and wall."""
        return StateRefresher(
            metrics=self.metrics, store=store, store_runner=SynchronousRunner(), file_runner=SynchronousRunner(),
            spool_root=self.spool, destinations=lambda: ["pacs"], down=lambda: [], clock=Clock(),
            wall=lambda: self.now, stranded_after=stranded_after, own_node=lambda: own,
        )

    def value(self, name: str, **labels: str) -> float | None:
        """One sample of the registry."""
        return self.registry.get_sample_value(name, labels)

    def test_node_info_and_heartbeat_interval(self) -> None:
        """``node_info{node}`` is 1 for this node only; the interval is the age alert's yardstick."""
        self.metrics.cluster_node("gw-a", 5.0)
        self.assertEqual(self.value("dicom_gateway_node_info", node="gw-a"), 1.0)
        self.assertEqual(self.value("dicom_gateway_cluster_heartbeat_seconds"), 5.0)
        self.metrics.cluster_node("gw-z", 5.0)
        self.assertIsNone(self.value("dicom_gateway_node_info", node="gw-a"))

    def test_store_up_follows_the_heartbeat(self) -> None:
        """``queue_store_up`` is 1 at start, 0 while the store does not answer, 1 again after."""
        self.assertEqual(self.value("dicom_gateway_queue_store_up"), 1.0)
        self.metrics.store_available(False)
        self.assertEqual(self.value("dicom_gateway_queue_store_up"), 0.0)
        self.metrics.store_available(True)
        self.assertEqual(self.value("dicom_gateway_queue_store_up"), 1.0)

    def test_every_node_with_its_age_and_leases(self) -> None:
        """Each node of the table is exported; the age is taken at scrape time, so a stale snapshot still ages."""
        self.successResultOf(self.refresher(self.store).refresh())
        self.assertEqual(self.value("dicom_gateway_node_heartbeat_age_seconds", node="gw-a"), 1.0)
        self.assertEqual(self.value("dicom_gateway_node_heartbeat_age_seconds", node="gw-b"), 300.0)
        self.assertEqual(self.value("dicom_gateway_node_leases", node="gw-a"), 1.0)
        self.assertEqual(self.value("dicom_gateway_node_leases", node="gw-b"), 0.0)
        self.now += 30  # no refresh (the store is away, say): the ages grow anyway
        self.assertEqual(self.value("dicom_gateway_node_heartbeat_age_seconds", node="gw-a"), 31.0)

    def test_stranded_entries_of_an_absent_node(self) -> None:
        """gw-b's queued entry is stranded for gw-a (node-local spools); gw-a's own are not."""
        self.successResultOf(self.refresher(self.store).refresh())
        self.assertEqual(self.value("dicom_gateway_queue_stranded", destination="pacs"), 1.0)
        self.assertEqual(self.value("dicom_gateway_queue_depth", destination="pacs"), 3.0)

    def test_stranded_is_zero_where_nothing_can_strand(self) -> None:
        """Without ``stranded_after`` (SQLite, shared spool) the series exists at 0."""
        shared = MemoryQueueStore("gw-a")
        shared._t = self.store._t
        self.successResultOf(self.refresher(shared, stranded_after=None).refresh())
        self.assertEqual(self.value("dicom_gateway_queue_stranded", destination="pacs"), 0.0)

    def test_store_without_a_node_table_exports_its_own_heartbeat(self) -> None:
        """A store without ``nodes`` (SQLite before its migration): this node's own heartbeat is exported."""

        class NoNodes(MemoryQueueStore):
            def __getattribute__(self, name: str) -> object:
                if name == "nodes":
                    raise AttributeError(name)
                return super().__getattribute__(name)

        self.successResultOf(self.refresher(NoNodes("gw-a"), stranded_after=None, own=NodeState("gw-a", T0 - 4)).refresh())
        self.assertEqual(self.value("dicom_gateway_node_heartbeat_age_seconds", node="gw-a"), 4.0)
        self.assertEqual(self.value("dicom_gateway_node_leases", node="gw-a"), 0.0)

    def test_cleanly_stopped_node_is_not_reported_late(self) -> None:
        """A node whose last heartbeat was a clean stop's (rolling restart, removed node) gets no age series: no alert."""
        from gateway.heartbeat import node_detail

        self.store.peer("gw-c").heartbeat(T0 - 500, T0 - 900, node_detail([], "1", False, stopped=True))
        self.successResultOf(self.refresher(self.store).refresh())
        self.assertIsNone(self.value("dicom_gateway_node_heartbeat_age_seconds", node="gw-c"))
        self.assertEqual(self.value("dicom_gateway_node_leases", node="gw-c"), 0.0)
        self.assertEqual(self.value("dicom_gateway_node_heartbeat_age_seconds", node="gw-b"), 300.0)
