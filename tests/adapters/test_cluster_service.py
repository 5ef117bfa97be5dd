"""``GatewayService`` as a cluster node (issue 14), in-process.

As in :mod:`tests.adapters.test_service`: real objects over a temporary
spool, a memory store (:class:`~tests.unit.test_heartbeat.FlakyStore`, which
raises :class:`~gateway.queue.interfaces.StoreUnavailable` on demand),
synchronous runners, and a listener on port 0 of the global reactor, spoken
to with the gateway's own SCU. Heartbeats and housekeeping rounds are driven
by calling them, never by waiting.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from pydicom.data import get_testdata_file
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from gateway.associate import AssociationRejected, connect_tcp, proposals_for_files
from gateway.blocking import SynchronousRunner
from gateway.config.load import load_config_text
from gateway.config.schema import GatewayConfig
from gateway.httpbackend import ServiceBackend, spool_probe
from gateway.queue.interfaces import NewEntry
from gateway.service import GatewayService, dead_node_after
from tests.unit.queue.test_store import make_record
from tests.unit.test_heartbeat import FlakyStore

#: One folder destination; the spool's own folder.
LOCAL = """\
ae_title: GW
node: gw-a
listen:
  - host: 127.0.0.1
    port: 0
spool: {path: spool, min_free: 0, resume_margin: 0}
destinations:
  one: {folder: out1}
routes:
  - {name: r1, forward: [one]}
"""

#: The same on a shared spool and a PostgreSQL queue (the store itself is injected).
SHARED = LOCAL.replace(
    "spool: {path: spool, min_free: 0, resume_margin: 0}\n",
    "spool: {path: spool, min_free: 0, resume_margin: 0, shared: true}\n"
    "queue: {backend: postgresql, dsn: 'host=db.invalid dbname=gw'}\n",
)

CT = get_testdata_file("CT_small.dcm", download=False)


class ClusterServiceTestCase(TestCase):
    """Builds, starts and stops :class:`GatewayService` nodes over one temporary folder."""

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.now = [1_000_000.0]

    def config(self, text: str, node: str = "gw-a") -> GatewayConfig:
        """Load ``text`` with ``node:`` replaced."""
        return load_config_text(text.replace("node: gw-a", f"node: {node}"), os.path.join(self.tmp, "gateway.yaml"), self.tmp)

    def start(self, text: str, store: FlakyStore, node: str = "gw-a") -> GatewayService:
        """Start a node over ``store`` with the test's wall clock."""
        service = GatewayService(
            reactor,
            self.config(text, node),
            blocking=SynchronousRunner(),
            store_runner=SynchronousRunner(),
            store=store,
            wall=lambda: self.now[0],
        )
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        self.assertIsNone(self.successResultOf(service.ready))
        return service

    async def associate(self, service: GatewayService) -> Any:
        """Open an association to the node's listener (CT_small proposed)."""
        port = service.listeners[0].port
        assert port is not None
        return await connect_tcp(
            reactor, "127.0.0.1", port.getHost().port, calling_ae_title="CT01", called_ae_title="GW",
            proposals=proposals_for_files([CT]), timeout=10.0,
        )

    def spool_file(self, name: str, age: float = 0.0) -> str:
        """A Part 10 file ``instances/<name>.dcm`` last changed ``age`` seconds before the test's now."""
        folder = os.path.join(self.tmp, "spool", "instances")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, name + ".dcm")
        shutil.copy(CT, path)
        os.utime(path, (self.now[0] - age, self.now[0] - age))
        return path


class StoreOutageTests(ClusterServiceTestCase):
    """A heartbeat that fails: /readyz 503, RJ(2,3,1), 0xA700; and recovery by itself."""

    async def test_outage_refuses_new_work_and_the_next_good_heartbeat_restores_it(self) -> None:
        """While the store is away nothing is acknowledged and nothing new is accepted; once a heartbeat succeeds, instances flow again."""
        store = FlakyStore("gw-a")
        service = self.start(LOCAL, store)
        backend = ServiceBackend(service, load=lambda path: None, probe=spool_probe, clock=Clock(), interval=5.0)
        backend.start()
        self.addCleanup(backend.stop)
        self.assertEqual(self.successResultOf(backend.readiness()), [])
        open_before = await self.associate(service)

        store.down = True
        self.successResultOf(service.heartbeat.beat())
        self.assertEqual(self.successResultOf(backend.readiness()), ["queue store unreachable"])
        with self.assertRaises(AssociationRejected) as raised:
            await self.associate(service)
        rejection = raised.exception.rejection
        self.assertEqual((rejection.result, rejection.source, rejection.reason), (2, 3, 1))
        # An association opened before the outage: its C-STORE is not acknowledged.
        result = await open_before.store(CT)
        self.assertEqual(result.status, 0xA700)
        await open_before.release()
        self.assertEqual(store.entries(), [])

        store.down = False
        self.successResultOf(service.heartbeat.beat())
        self.assertEqual(self.successResultOf(backend.readiness()), [])
        assoc = await self.associate(service)
        self.assertEqual((await assoc.store(CT)).status, 0x0000)
        await assoc.release()
        [entry] = store.entries()
        self.assertEqual(entry.instance.node, "gw-a")

    async def test_rejections_are_counted_under_store(self) -> None:
        """The RJ of an outage is counted with reason ``store`` (not ``space``)."""
        store = FlakyStore("gw-a")
        service = self.start(LOCAL, store)
        store.down = True
        self.successResultOf(service.heartbeat.beat())
        with self.assertRaises(AssociationRejected):
            await self.associate(service)
        sample = service.metrics.registry.get_sample_value(
            "dicom_gateway_associations_rejected_total", {"listener": "127.0.0.1:0", "reason": "store"}
        )
        self.assertEqual(sample, 1.0)


class SharedSpoolRecoveryTests(ClusterServiceTestCase):
    """Start-up recovery on a shared spool removes only this node's unjournaled files."""

    def test_only_own_unjournaled_files_are_removed_at_start(self) -> None:
        """gw-a's orphan goes; gw-b's unused slot, gw-b's journaled instance and an unowned file stay."""
        store = FlakyStore("gw-a")
        own = self.spool_file("gw-a~" + "1" * 32)
        other = self.spool_file("gw-b~" + "2" * 32)
        journaled = self.spool_file("gw-b~" + "3" * 32)
        unowned = self.spool_file("4" * 32)
        store.peer("gw-b").add_instance(make_record("gw-b~" + "3" * 32, path=journaled), [NewEntry("r1", "elsewhere")], 1.0, 0.0)
        service = self.start(SHARED, store)
        self.assertFalse(os.path.exists(own))
        self.assertTrue(all(os.path.exists(p) for p in (other, journaled, unowned)))
        # This node's slots are named after it.
        slot, durable = service.spool.slots.take()
        self.assertTrue(slot.startswith("gw-a~") and durable, slot)

    def test_spool_of_its_own_removes_every_unjournaled_file(self) -> None:
        """Without spool.shared every unjournaled file is this node's, whatever its name (today's rule)."""
        store = FlakyStore("gw-a")
        files = [self.spool_file("gw-b~" + "2" * 32), self.spool_file("5" * 32)]
        self.start(LOCAL, store)
        self.assertFalse(any(os.path.exists(p) for p in files))


class HousekeepingTests(ClusterServiceTestCase):
    """Housekeeping on a shared spool runs only on the node holding the singleton, asked each round."""

    def delivered(self, store: FlakyStore, instance_id: str) -> str:
        """A spooled instance delivered long ago to a destination no worker serves; returns its file."""
        path = self.spool_file(instance_id)
        store.add_instance(make_record(instance_id, path=path, received_at=1.0), [NewEntry("r1", "elsewhere")], 1.0, 0.0)
        [entry] = store.lease("elsewhere", 1, 2.0, 60.0)
        store.complete([entry.entry_id], 3.0)
        return path

    async def test_only_the_singleton_holder_cleans(self) -> None:
        """Node b does not clean while a holds the singleton; once a is silent past its hold, b's round cleans."""
        a_store = FlakyStore("gw-a")
        b_store = a_store.peer("gw-b")
        a = self.start(SHARED, a_store, "gw-a")
        b = self.start(SHARED, b_store, "gw-b")
        path = self.delivered(a_store, "gw-a~" + "6" * 32)
        self.assertEqual((a.heartbeat.housekeeper, b.heartbeat.housekeeper), (True, False))
        await b._clean_once()
        self.assertTrue(os.path.exists(path))
        a.heartbeat.stop()  # a dies; its hold ends 3 heartbeats after its last beat
        self.now[0] += 3 * b.config.cluster.heartbeat + 1
        await b._clean_once()
        self.assertFalse(os.path.exists(path))

    async def test_holder_loses_the_singleton_between_rounds(self) -> None:
        """The round asks again: a node whose hold was taken over (it was paused) does not clean."""
        a_store = FlakyStore("gw-a")
        a = self.start(SHARED, a_store, "gw-a")
        path = self.delivered(a_store, "gw-a~" + "7" * 32)
        self.now[0] += 3 * a.config.cluster.heartbeat + 1
        self.assertTrue(a_store.peer("gw-b").hold_singleton("housekeeping", self.now[0], 15.0))
        self.assertTrue(a.heartbeat.housekeeper)  # stale: a has not beaten since
        await a._clean_once()
        self.assertTrue(os.path.exists(path))

    async def test_dead_nodes_unjournaled_files_are_swept(self) -> None:
        """The holder removes old unjournaled files of a node silent for ten leases; a live node's and recent files stay."""
        a_store = FlakyStore("gw-a")
        a = self.start(SHARED, a_store, "gw-a")
        bound = dead_node_after(a.config)
        a_store.peer("gw-dead").heartbeat(self.now[0] - bound - 10, 0.0)
        a_store.peer("gw-live").heartbeat(self.now[0], 0.0)
        dead_old = self.spool_file("gw-dead~" + "1" * 32, age=bound + 5)
        dead_recent = self.spool_file("gw-dead~" + "2" * 32, age=bound - 5)
        dead_journaled = self.spool_file("gw-dead~" + "3" * 32, age=bound + 5)
        a_store.peer("gw-dead").add_instance(
            make_record("gw-dead~" + "3" * 32, path=dead_journaled, received_at=self.now[0]), [NewEntry("r1", "elsewhere")], self.now[0], 0.0
        )
        live_old = self.spool_file("gw-live~" + "4" * 32, age=bound + 5)
        never_beat = self.spool_file("gw-gone~" + "5" * 32, age=bound + 5)
        await a._clean_once()
        self.assertEqual(
            {os.path.basename(p): os.path.exists(p) for p in (dead_old, dead_recent, dead_journaled, live_old, never_beat)},
            {
                os.path.basename(dead_old): False,
                os.path.basename(dead_recent): True,
                os.path.basename(dead_journaled): True,
                os.path.basename(live_old): True,
                os.path.basename(never_beat): False,
            },
        )

    async def test_node_local_spools_clean_only_their_own_instances(self) -> None:
        """With PostgreSQL and spool.shared false, a node's round leaves other nodes' instances (their files are on their disks)."""
        store = FlakyStore("gw-a")
        text = LOCAL.replace("routes:", "queue: {backend: postgresql, dsn: 'host=db.invalid'}\nroutes:")
        a = self.start(text, store)
        own = self.delivered(store, "8" * 32)
        other_path = self.spool_file("9" * 32)
        other = store.peer("gw-b")
        other.add_instance(make_record("9" * 32, path=other_path, received_at=1.0, node="gw-b"), [NewEntry("r1", "elsewhere")], 1.0, 0.0)
        [entry] = other.lease("elsewhere", 1, 2.0, 60.0)
        other.complete([entry.entry_id], 3.0)
        await a._clean_once()
        self.assertFalse(os.path.exists(own))
        self.assertTrue(os.path.exists(other_path))


class NodeLocalCleanUpTests(ClusterServiceTestCase):
    """Node-local spools on one queue: a node that never comes back must not stop the others' clean-up."""

    TEXT = LOCAL.replace("routes:", "queue: {backend: postgresql, dsn: 'host=db.invalid'}\nroutes:")

    def delivered_by(self, store: FlakyStore, node: str, instance_id: str, path: str) -> None:
        """Journal and deliver an instance received by ``node`` long ago (to a destination no worker serves)."""
        peer = store.peer(node)
        peer.add_instance(make_record(instance_id, path=path, received_at=1.0, node=node), [NewEntry("r1", "elsewhere")], 1.0, 0.0)
        [entry] = peer.lease("elsewhere", 1, 2.0, 60.0)
        peer.complete([entry.entry_id], 3.0)

    async def test_a_dead_nodes_thousand_oldest_records_do_not_block_the_clean_up(self) -> None:
        """1001 delivered instances of a node gone for good head the list: they are noted file-less and forgotten (their files are on its disk, untouched), and this node's own file is removed."""
        store = FlakyStore("gw-a")
        service = self.start(self.TEXT, store)
        store.peer("gw-dead").heartbeat(self.now[0] - dead_node_after(service.config) - 1, 0.0)
        theirs = self.spool_file("gw-dead-file")
        for i in range(1001):
            self.delivered_by(store, "gw-dead", f"d{i:04d}", theirs)
        own = self.spool_file("gw-a-file")
        self.delivered_by(store, "gw-a", "own", own)
        await service._clean_once()
        await service._clean_once()
        self.assertFalse(os.path.exists(own))
        self.assertTrue(os.path.exists(theirs))  # on the dead node's disk: never this node's to delete
        # Past the duplicate window (received long ago) their records are forgotten too.
        self.assertEqual([r.instance_id for r, _ in store.find() if r.node == "gw-dead"], [])

    async def test_a_live_nodes_files_are_left_to_it(self) -> None:
        """A live node's delivered instance keeps its file and its record until that node cleans it."""
        store = FlakyStore("gw-a")
        service = self.start(self.TEXT, store)
        store.peer("gw-b").heartbeat(self.now[0], 0.0)
        theirs = self.spool_file("gw-b-file")
        self.delivered_by(store, "gw-b", "b1", theirs)
        await service._clean_once()
        self.assertTrue(os.path.exists(theirs))
        self.assertEqual([r.path for r, _ in store.find() if r.instance_id == "b1"], [theirs])


class _AwayDuringCleanUp(FlakyStore):
    """A store that goes away in the middle of a housekeeping round (after the heartbeat said it was there)."""

    def finished_instances(self, *args: Any, **kwargs: Any) -> Any:
        """Unreachable, as PostgreSQL stopping between the heartbeat and the round."""
        from gateway.queue.interfaces import StoreUnavailable

        raise StoreUnavailable("server closed the connection unexpectedly")


class HousekeepingOutageTests(ClusterServiceTestCase):
    """A store lost during a housekeeping round is an outage, not a bug."""

    def test_round_lost_to_an_outage_logs_one_warning(self) -> None:
        """The round fails with StoreUnavailable: a warning without a traceback (trial fails on logged errors)."""
        from twisted.logger import globalLogPublisher

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        service = self.start(LOCAL, _AwayDuringCleanUp("gw-a"))
        self.successResultOf(service._clean())
        [warning] = [e for e in events if "clean-up skipped" in e.get("log_format", "")]
        self.assertIn("server closed the connection", warning["error"])
        self.assertFalse([e for e in events if e.get("log_failure") is not None])


class ReloadTests(ClusterServiceTestCase):
    """A reload (SIGHUP) never changes the node, the queue or the cluster periods of a running node."""

    def test_node_queue_and_cluster_changes_need_a_restart(self) -> None:
        """Routes apply; node, queue and cluster keep their running values, and each change is logged as needing a restart."""
        from twisted.logger import globalLogPublisher

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        store = FlakyStore("gw-a")
        service = self.start(LOCAL, store)
        changed = (
            LOCAL.replace("node: gw-a", "node: gw-z")
            .replace("routes:", "queue: {path: other.sqlite}\ncluster: {lease: 60s, heartbeat: 10s}\nroutes:")
            .replace("{name: r1, forward: [one]}", "{name: r2, forward: [one]}")
        )
        self.assertIs(self.successResultOf(service.reload(lambda source: load_config_text(changed, source, self.tmp))), True)
        self.assertEqual([r.name for r in service.config.routes], ["r2"])
        self.assertEqual((service.config.node, service.config.cluster.lease), ("gw-a", 20.0))
        self.assertEqual(service.config.queue_path, os.path.join(self.tmp, "spool", "queue.sqlite"))
        self.assertEqual(service.config.queue.path, service.config.queue_path)
        warned = {e.get("what") for e in events if "restart the gateway" in e.get("log_format", "")}
        self.assertTrue({"node", "queue", "cluster"} <= warned, warned)


class NodeNameTests(ClusterServiceTestCase):
    """One live process per node name (PostgreSQL queue): a second is refused before it touches anything."""

    FAST = SHARED.replace("routes:", "cluster: {lease: 1s, heartbeat: 200ms}\nroutes:")

    def build(self, store: FlakyStore) -> GatewayService:
        """A node on the real wall clock (heartbeats must move), not started."""
        import time

        return GatewayService(
            reactor, self.config(self.FAST), blocking=SynchronousRunner(), store_runner=SynchronousRunner(), store=store, wall=time.time
        )

    async def test_second_process_under_a_live_name_is_refused_before_recovery(self) -> None:
        """While gw-a beats, another gw-a fails its start with NodeNameInUse, and gw-a's unjournaled slot file is untouched."""
        from twisted.internet.defer import Deferred

        from gateway.heartbeat import NodeNameInUse

        store = FlakyStore("gw-a")
        first = self.build(store)
        first.startService()
        self.addCleanup(first.stopService)
        await first.ready
        slot = os.path.join(first.spool.instances_dir, first.spool.slots.take()[0] + ".dcm")
        second = self.build(store.peer("gw-a"))
        with self.assertRaises(NodeNameInUse):
            await Deferred.fromCoroutine(second._start())
        self.assertTrue(os.path.exists(slot))

    async def test_clean_stop_frees_the_name_at_once(self) -> None:
        """A stopped node's last heartbeat says so: ``queue nodes`` shows it stopped and the next start does not wait."""
        from gateway.admin import node_rows
        from gateway.heartbeat import said_stopped

        store = FlakyStore("gw-a")
        first = self.build(store)
        first.startService()
        await first.ready
        await first.stopService()
        [status] = store.nodes(self.now[0])
        self.assertTrue(said_stopped(status.detail), status)
        self.assertEqual(node_rows(store, status.last_seen, 0.2)[0]["state"], "stopped")
        second = self.build(store.peer("gw-a"))
        second.startService()
        self.addCleanup(second.stopService)
        self.assertIsNone(self.successResultOf(second.ready))  # no wait: started synchronously
