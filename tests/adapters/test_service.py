"""``GatewayService`` in-process: start-up order, reload, and routing of received instances.

The service is built from :func:`~gateway.config.load.load_config_text`
with real objects: a temporary spool, folder destinations (their workers
write real files), a :class:`~gateway.queue.memory.MemoryQueueStore` and
:class:`~gateway.blocking.SynchronousRunner` for both the blocking work and
the store. The listener binds port 0 on the global reactor, so the tests use
trial's :class:`~twisted.trial.unittest.TestCase`, send instances with the
gateway's own SCU (:func:`~gateway.associate.connect_tcp`), and stop the
service in their clean-up.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from pydicom.data import get_testdata_file
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from gateway.associate import connect_tcp, proposals_for_files
from gateway.blocking import SynchronousRunner
from gateway.config.errors import ConfigErrors
from gateway.config.load import load_config_text
from gateway.config.schema import GatewayConfig
from gateway.queue.memory import MemoryQueueStore
from gateway.service import GatewayService

BASE = """\
ae_title: GW
listen:
  - host: 127.0.0.1
    port: 0
spool: {path: spool, min_free: 0, resume_margin: 0}
destinations:
  one: {folder: out1}
  two: {folder: out2}
"""
ROUTES_ONE = BASE + "routes:\n  - {name: r1, forward: [one]}\n"
ROUTES_BOTH = BASE + "routes:\n  - {name: r1, forward: [one]}\n  - {name: r2, forward: [two]}\n"


class _WatchingStore(MemoryQueueStore):
    """A memory journal that notes, when ``recover`` runs, which services are already running."""

    def __init__(self) -> None:
        super().__init__()
        self.service: GatewayService | None = None
        self.running_at_recover: list[tuple[str, bool]] | None = None

    def recover(self, now: float) -> int:
        assert self.service is not None
        self.running_at_recover = [(s.name, s.running) for s in self.service]
        return super().recover(now)


class ServiceTestCase(TestCase):
    """Builds, starts and stops a :class:`GatewayService` over a temporary folder."""

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def config(self, text: str) -> GatewayConfig:
        return load_config_text(text, os.path.join(self.tmp, "gateway.yaml"), self.tmp)

    def start(self, text: str = ROUTES_ONE, store: MemoryQueueStore | None = None) -> GatewayService:
        self.store = store if store is not None else MemoryQueueStore()
        service = GatewayService(
            reactor,
            self.config(text),
            blocking=SynchronousRunner(),
            store_runner=SynchronousRunner(),
            store=self.store,
        )
        if isinstance(self.store, _WatchingStore):
            self.store.service = service
        service.startService()
        self.addCleanup(self.stop, service)
        return service

    def stop(self, service: GatewayService) -> Deferred[Any]:
        return service.stopService() if service.running else Deferred.fromCoroutine(self._nothing())

    async def _nothing(self) -> None:
        return None

    async def send(self, service: GatewayService, path: str) -> int:
        """C-STORE ``path`` to the service's listener and return the status."""
        port = service.listeners[0].port
        assert port is not None
        assoc = await connect_tcp(
            reactor,
            "127.0.0.1",
            port.getHost().port,
            calling_ae_title="CT01",
            called_ae_title="GW",
            proposals=proposals_for_files([path]),
            timeout=10.0,
        )
        result = await assoc.store(path)
        await assoc.release()
        return result.status

    def orphan(self, name: str) -> str:
        """Put a Part 10 file in the spool's instances/ folder with no journal record."""
        folder = os.path.join(self.tmp, "spool", "instances")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, name + ".dcm")
        shutil.copy(get_testdata_file("CT_small.dcm", download=False), path)
        return path


class StartTests(ServiceTestCase):
    """Start-up: recovery first, then workers and listeners."""

    def test_recovery_runs_before_listeners_and_workers_start(self) -> None:
        """When the journal's recover runs, no listener or worker is running; afterwards all are."""
        store = _WatchingStore()
        service = self.start(store=store)
        self.assertIsNotNone(store.running_at_recover)
        assert store.running_at_recover is not None
        self.assertEqual(
            sorted(name for name, _ in store.running_at_recover), sorted(["listen:127.0.0.1:0", "one", "two"])
        )
        self.assertEqual([running for _, running in store.running_at_recover], [False, False, False])
        self.assertTrue(all(s.running for s in service))
        self.assertIsNone(self.successResultOf(service.ready))
        self.assertIsNotNone(service.listeners[0].port)

    def test_unjournaled_spool_file_is_removed_and_slots_made_before_accepting(self) -> None:
        """A spool file the journal lacks was never acknowledged: it is removed at start, and slot files are ready, before the listener binds (issue 13)."""
        path = self.orphan("orphan1")
        store = _WatchingStore()
        original = store.instance_ids
        seen: list[tuple[bool, bool]] = []

        def instance_ids() -> Any:
            assert store.service is not None
            seen.append((store.service.listeners[0].running, os.path.exists(path)))
            return original()

        store.instance_ids = instance_ids  # type: ignore[method-assign]
        service = self.start(store=store)
        self.assertEqual(seen[0], (False, True))
        self.assertFalse(os.path.exists(path))
        self.assertNotIn("orphan1", store.instance_ids())
        self.assertEqual(len(service.spool.slots), service.spool.slots.batch)

    def test_leftover_part_file_is_removed_at_start(self) -> None:
        """An incomplete .part file left in incoming/ is removed at start-up."""
        incoming = os.path.join(self.tmp, "spool", "incoming")
        os.makedirs(incoming)
        part = os.path.join(incoming, "x.part")
        with open(part, "wb") as f:
            f.write(b"partial")
        self.start()
        self.assertFalse(os.path.exists(part))

    async def test_received_instance_is_journaled_for_its_route(self) -> None:
        """A C-STORE through the listener is answered 0x0000 and journaled for the routed destination only."""
        service = self.start()
        status = await self.send(service, get_testdata_file("CT_small.dcm", download=False))
        self.assertEqual(status, 0)
        self.assertEqual([e.destination for e in self.store.entries()], ["one"])


class _LegacyStore(MemoryQueueStore):
    """A journal holding entries queued before plans were journaled (as a migrated version-2 file)."""

    def __init__(self) -> None:
        super().__init__()
        from gateway.queue.interfaces import NewEntry
        from tests.unit.queue.test_store import make_record

        self.add_instance(make_record("old", path=""), [NewEntry("r1", "one"), NewEntry("gone", "two")], 0.0, 0.0)
        self.service: GatewayService | None = None
        self.running_at_adopt: list[bool] | None = None

    def adopt_plans(self, plans: Any) -> int:
        assert self.service is not None
        self.running_at_adopt = [s.running for s in self.service]
        return super().adopt_plans(plans)


class LegacyPlanTests(ServiceTestCase):
    """Entries without a journaled plan get their route's plan at start, before any worker runs (issue 11)."""

    def test_plan_less_entries_adopt_their_routes_plan_before_workers_start(self) -> None:
        """r1's entry gets r1's plan (no morph); the entry of a route no longer configured keeps none."""
        from gateway.prepare import NO_MORPH

        store = _LegacyStore()
        service = GatewayService(
            reactor, self.config(ROUTES_ONE), blocking=SynchronousRunner(), store_runner=SynchronousRunner(), store=store
        )
        store.service = service
        service.startService()
        self.addCleanup(self.stop, service)
        self.assertEqual(store.running_at_adopt, [False] * len(store.running_at_adopt or [1]))
        self.assertEqual({e.route: e.plan_hash for e in store.find()[0][1]}, {"r1": NO_MORPH.plan_hash, "gone": None})


class ReloadTests(ServiceTestCase):
    """``GatewayService.reload`` (SIGHUP)."""

    def test_invalid_config_keeps_the_running_one(self) -> None:
        """A configuration that does not validate is refused: reload gives False and nothing changes."""
        service = self.start()
        old_config, old_workers = service.config, dict(service.workers)

        def load(source: str) -> GatewayConfig:
            return self.config(BASE + "routes:\n  - {name: r1, forward: [missing]}\n")

        self.assertRaises(ConfigErrors, load, "x")
        self.assertIs(self.successResultOf(service.reload(load)), False)
        self.assertIs(service.config, old_config)
        self.assertEqual(service.workers, old_workers)
        self.assertTrue(all(w.running for w in service.workers.values()))

    def test_changed_destination_replaces_only_its_worker(self) -> None:
        """Changing one destination restarts its worker; the other worker is the same running object."""
        service = self.start()
        one, two = service.workers["one"], service.workers["two"]
        changed = ROUTES_ONE.replace("two: {folder: out2}", "two: {folder: out2, pattern: '{SOPInstanceUID}.dcm'}")
        self.assertIs(self.successResultOf(service.reload(lambda source: self.config(changed))), True)
        self.assertIs(service.workers["one"], one)
        self.assertIsNot(service.workers["two"], two)
        self.assertFalse(two.running)
        self.assertNotIn(two, list(service))
        self.assertTrue(service.workers["two"].running)
        self.assertEqual(service.workers["two"].config.pattern, "{SOPInstanceUID}.dcm")

    def test_removed_and_added_destinations(self) -> None:
        """A destination dropped from the file loses its worker; a new one gets a running worker."""
        service = self.start()
        text = ROUTES_ONE.replace("two: {folder: out2}", "three: {folder: out3}")
        self.assertIs(self.successResultOf(service.reload(lambda source: self.config(text))), True)
        self.assertEqual(sorted(service.workers), ["one", "three"])
        self.assertTrue(service.workers["three"].running)

    async def test_new_route_changes_routing_of_the_next_instance(self) -> None:
        """After a reload adding a route, the next received instance is journaled for both destinations."""
        service = self.start()
        path = get_testdata_file("CT_small.dcm", download=False)
        self.assertEqual(await self.send(service, path), 0)
        self.assertIs(self.successResultOf(service.reload(lambda source: self.config(ROUTES_BOTH))), True)
        self.assertEqual(await self.send(service, path), 0)
        by_instance: dict[str, list[str]] = {}
        for entry in self.store.entries():
            by_instance.setdefault(entry.instance.instance_id, []).append(entry.destination)
        self.assertEqual(sorted(sorted(d) for d in by_instance.values()), [["one"], ["one", "two"]])

    def test_duplicate_window_is_applied(self) -> None:
        """The duplicate window of the new configuration is used by the intake."""
        service = self.start()
        text = ROUTES_ONE + "duplicates: {window: 5m}\n"
        self.assertIs(self.successResultOf(service.reload(lambda source: self.config(text))), True)
        self.assertEqual(service.intake.duplicate_window, 300.0)
