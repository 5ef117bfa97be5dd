"""ServiceConsoleData (issue 18): the console's data over a gateway service with a real store (SQLite and memory).

The service is a small stand-in holding what the console reads of a
:class:`~gateway.service.GatewayService` (a configuration loaded from YAML,
a real store on a temp dir, synchronous runners, listeners, workers, an
audit trail kept in memory and written to a file); the actions go through a
real :class:`~gateway.httpbackend.ServiceBackend`, so what is audited and
refused is what the HTTP API does.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.admin import Operator
from gateway.audit import AuditTrail, JsonLinesFile, MemorySink
from gateway.blocking import SynchronousRunner
from gateway.config import schema
from gateway.config.load import load_config_text
from gateway.console import backend as backend_module
from gateway.console.backend import ServiceConsoleData, destination_kind
from gateway.console.data import DeadFilter
from gateway.forward_types import WorkerStatus
from gateway.httpbackend import ServiceBackend
from gateway.prepare import route_plan
from gateway.queue.interfaces import EntryState, NewEntry
from gateway.queue.memory import MemoryQueueStore
from gateway.queue.sqlite import SqliteQueueStore
from tests.unit.queue.test_store import T0, make_record

CONSOLE = Operator(who="alice", address="192.0.2.9:5000", via="console")

CONFIG = """\
ae_title: GW
node: gw-1
listen: [{{host: 127.0.0.1, port: 11112, name: main}}]
spool: {spool}
audit: {{file: {audit}}}
destinations:
  pacs: {{ae_title: PACS, host: 127.0.0.1, port: 104}}
  archive: {{folder: {folder}}}
  research: {{folder: {folder}-r}}
routes:
  - name: clinical
    forward: [pacs, archive]
  - name: research
    forward: [research]
    morph:
      - set: {{InstitutionName: Anonymous}}
"""


class _Listener:
    """A ListenerService as the overview reads it."""

    def __init__(self, listener: Any, active: int) -> None:
        self.listener = listener
        self.port = None
        self.factory = type("F", (), {"active": active})()


class _Worker:
    """A destination worker as the overview and the actions see it."""

    def __init__(self, name: str, circuit: str = "closed", last_error: str = "") -> None:
        self._status = WorkerStatus(name, circuit, 0, last_error, 0)
        self.pokes = 0

    def status(self) -> WorkerStatus:
        return self._status

    def poke(self) -> None:
        self.pokes += 1


class _Spool:
    def __init__(self, free: int) -> None:
        self.free = free

    def free_bytes(self) -> int:
        if self.free < 0:
            raise OSError(5, "Input/output error")
        return self.free


class _Service:
    """What ServiceConsoleData and ServiceBackend read of a GatewayService."""

    def __init__(self, root: str, store: Any) -> None:
        os.makedirs(root, exist_ok=True)
        self.root = root
        self.audit_file = os.path.join(root, "audit.jsonl")
        self.config = load_config_text(
            CONFIG.format(spool=os.path.join(root, "spool"), audit=self.audit_file, folder=os.path.join(root, "out")),
            "gateway.yaml",
            root,
        )
        self.store = store
        self.store_runner = SynchronousRunner()
        self.blocking = SynchronousRunner()
        self.listeners = [_Listener(self.config.listen[0], 3)]
        self.workers: dict[str, Any] = {name: _Worker(name) for name in ("pacs", "archive", "research")}
        self.spool = _Spool(5 * 1024**3)
        self.audit_sink = MemorySink()
        self.audit_file_sink = JsonLinesFile(self.audit_file)
        self.audit = AuditTrail([self.audit_sink, self.audit_file_sink], ae_title="GW", hostname="gw-host")
        self.reloads = 0

    def reload(self, load: Any) -> "Deferred[bool]":
        self.reloads += 1
        d: Deferred[bool] = Deferred()
        d.callback(True)
        return d


class ConsoleDataTests:
    """Behaviour of ServiceConsoleData over one store kind; mixed into a TestCase with ``make_store``."""

    successResultOf: Any
    failureResultOf: Any
    assertEqual: Any
    assertIn: Any
    assertTrue: Any
    assertFalse: Any
    assertIsNone: Any
    assertIsNotNone: Any
    addCleanup: Any
    mktemp: Any
    patch: Any

    def make_store(self, root: str) -> Any:
        raise NotImplementedError

    def setUp(self) -> None:
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        self.store = self.make_store(root)
        self.addCleanup(self.store.close)
        self.service = _Service(root, self.store)
        self.addCleanup(self.service.audit_file_sink.close)
        self.now = [T0 + 3600.0]
        self.backend = ServiceBackend(self.service, load=lambda path: None, clock=Clock(), wall=lambda: self.now[0])
        self.data = ServiceConsoleData(self.service, self.backend, wall=lambda: self.now[0])
        self.n = 0

    # -- helpers -----------------------------------------------------------------------

    def add(self, destination: str = "pacs", route: str = "clinical", at: float = T0, plan: Any = None, **record: Any) -> int:
        """Journal one instance with one entry; returns the entry id."""
        self.n += 1
        values = dict(sop_instance_uid=f"1.2.3.{self.n}", received_at=at, path=os.path.join(self.service.root, f"i{self.n}.dcm"))
        values.update(record)
        result = self.store.add_instance(make_record(f"i{self.n}", **values), [NewEntry(route, destination, plan=plan)], at, 0.0)
        return int(result.entry_ids[0])

    def dead(self, reason: str = "refused (status 0xa700)", **kw: Any) -> int:
        """One dead letter; returns its id."""
        entry_id = self.add(**kw)
        self.store.dead_letter(entry_id, reason, kw.get("at", T0) + 1)
        return entry_id

    def operator_records(self, action: str) -> list[Any]:
        """The audit records of operator ``action``s."""
        return [r for r in self.service.audit_sink.records if r.extra.get("action") == action]

    # -- overview ----------------------------------------------------------------------

    def test_overview_figures(self) -> None:
        """Each configured destination with its kind, state, counts, oldest age and rate; the listener, node and spool."""
        for _ in range(3):
            self.add("pacs", at=T0 + 100)
        self.dead(destination="archive", at=T0)
        leased = self.store.lease("pacs", 1, T0 + 3000, 60)
        self.store.complete([leased[0].entry_id], T0 + 3000)  # in the last hour (from T0): minute 50 of 60
        self.store.set_paused("research", True)
        self.store.set_circuit("archive", True, "folder not writable", T0 + 3500)
        self.store.heartbeat(T0 + 3590, T0, "127.0.0.1")
        overview = self.successResultOf(self.data.overview())
        self.assertEqual(overview.node, "gw-1")
        views = {v.name: v for v in overview.destinations}
        self.assertEqual([v.name for v in overview.destinations], ["pacs", "archive", "research"])
        self.assertEqual({n: (v.kind, v.state) for n, v in views.items()},
                         {"pacs": ("dicom", "up"), "archive": ("folder", "down"), "research": ("folder", "paused")})
        self.assertEqual((views["pacs"].queued, views["pacs"].dead, views["archive"].dead), (2, 0, 1))
        self.assertEqual(views["pacs"].oldest_age, 3500.0)
        self.assertEqual(views["archive"].circuit_reason, "folder not writable")
        self.assertEqual(len(views["pacs"].rate), 60)
        self.assertEqual(views["pacs"].rate[50], 1)
        self.assertEqual(sum(views["pacs"].rate), 1)
        self.assertEqual(views["research"].rate, (0,) * 60)
        (listener,) = overview.listeners
        self.assertEqual((listener.name, listener.address, listener.tls, listener.open_associations), ("main", "127.0.0.1:11112", False, 3))
        self.assertEqual([(n.name, n.last_seen_age, n.this_node) for n in overview.nodes], [(self.store.node, 10.0, True)])
        self.assertEqual((overview.spool_free_bytes, overview.spool_error), (5 * 1024**3, ""))
        self.assertEqual(overview.spool_floor_bytes, self.service.config.spool.min_free_bytes)

    def test_a_worker_with_an_open_circuit_is_down(self) -> None:
        """The worker's own circuit (in memory, before the journal has it) makes the destination down, with its error."""
        self.service.workers["pacs"] = _Worker("pacs", "open", "connection refused")
        view = self.successResultOf(self.data.overview()).destinations[0]
        self.assertEqual((view.state, view.last_error), ("down", "connection refused"))

    def test_overview_is_cached_for_a_second_and_shared(self) -> None:
        """Two overviews within a second read the store once; after it, again; a pause forgets the cache."""
        calls: list[Any] = []
        real = self.store.console_stats

        def counting(names: Any) -> Any:
            calls.append(names)
            return real(names)

        self.patch(self.store, "console_stats", counting)
        first = self.successResultOf(self.data.overview())
        self.now[0] += 0.5
        self.assertIs(self.successResultOf(self.data.overview()), first)
        self.assertEqual(len(calls), 1)
        self.now[0] += 0.6
        self.successResultOf(self.data.overview())
        self.assertEqual(len(calls), 2)
        self.successResultOf(self.data.pause("pacs", True, CONSOLE))
        self.assertEqual(self.successResultOf(self.data.overview()).destinations[0].state, "paused")
        self.assertEqual(len(calls), 3)

    def test_concurrent_overviews_share_one_read(self) -> None:
        """While a read is in flight, further callers wait for it instead of starting their own."""
        pending: list[Deferred[Any]] = []

        class Deferring:
            def run(self, f: Any, *args: Any, **kw: Any) -> Deferred[Any]:
                d: Deferred[Any] = Deferred()
                pending.append(d)
                d.addCallback(lambda _: f(*args, **kw))
                return d

        self.service.store_runner = Deferring()
        a, b = self.data.overview(), self.data.overview()
        self.assertEqual(len(pending), 1)
        pending[0].callback(None)
        self.assertIs(self.successResultOf(a), self.successResultOf(b))

    def test_spool_error_is_reported_not_raised(self) -> None:
        """A statvfs failure leaves free bytes unknown with the error's words."""
        self.service.spool.free = -1
        overview = self.successResultOf(self.data.overview())
        self.assertEqual((overview.spool_free_bytes, overview.spool_error), (None, "Input/output error"))

    def test_kinds_from_the_configuration_types(self) -> None:
        """dicom, folder, dicomweb, webhook, hl7, fhir."""
        kinds = [
            destination_kind(schema.DicomDestination("a", "A", "h", 1, "GW")),
            destination_kind(schema.FolderDestination("b", "/x")),
            destination_kind(schema.DicomWebDestination("c", "http://x")),
            destination_kind(schema.WebhookSink("d", "http://x", "/k")),
            destination_kind(schema.Hl7Sink("e", "h", 1)),
            destination_kind(schema.FhirSink("f", "http://x")),
        ]
        self.assertEqual(kinds, ["dicom", "folder", "dicomweb", "webhook", "hl7", "fhir"])

    # -- reading -----------------------------------------------------------------------

    def test_dead_letter_pages_with_the_cursor(self) -> None:
        """Pages of 2: newest first, next_before on all but the last; the filter applies."""
        ids = [self.dead(destination="pacs" if n % 2 else "archive") for n in range(5)]
        first = self.successResultOf(self.data.dead_letters(DeadFilter(), None, 2))
        self.assertEqual([e.entry_id for e in first.entries], [ids[4], ids[3]])
        self.assertEqual(first.next_before, ids[3])
        second = self.successResultOf(self.data.dead_letters(DeadFilter(), first.next_before, 2))
        third = self.successResultOf(self.data.dead_letters(DeadFilter(), second.next_before, 2))
        self.assertEqual([e.entry_id for e in second.entries + third.entries], [ids[2], ids[1], ids[0]])
        self.assertIsNone(third.next_before)
        exact = self.successResultOf(self.data.dead_letters(DeadFilter(destination="pacs"), None, 2))
        self.assertEqual(([e.entry_id for e in exact.entries], exact.next_before), ([ids[3], ids[1]], None))
        self.assertEqual(self.successResultOf(self.data.count_dead(DeadFilter(destination="archive"))), 3)
        self.failureResultOf(self.data.dead_letters(DeadFilter(reason="bogus"), None, 2), ValueError)

    def test_dead_letter_detail_and_find(self) -> None:
        """dead_letter answers the entry with its history (KeyError when none); find by each key, with entries."""
        entry_id = self.dead(reason="refused (status 0xa700)", study_instance_uid="1.2.9", accession_number="A9", patient_id="P9")
        entry = self.successResultOf(self.data.dead_letter(entry_id))
        self.assertEqual((entry.state, entry.history[-1].error), (EntryState.DEAD, "refused (status 0xa700)"))
        self.failureResultOf(self.data.dead_letter(entry_id + 100), KeyError)
        for by, value in (("study", "1.2.9"), ("accession", "A9"), ("patient", " P9 "), ("sop", entry.instance.sop_instance_uid)):
            (found,) = self.successResultOf(self.data.find(by, value))
            self.assertEqual((by, found.instance.instance_id, [e.entry_id for e in found.entries]), (by, entry.instance.instance_id, [entry_id]))
        self.assertEqual(self.successResultOf(self.data.find("study", "nothing")), ())
        self.failureResultOf(self.data.find("name", "x"), ValueError)

    # -- actions -----------------------------------------------------------------------

    def test_retry_selected_requeues_and_audits_each_entry_as_the_console_user(self) -> None:
        """Each id requeued, one audit record per entry with the console's operator; the workers are poked."""
        ids = [self.dead() for _ in range(3)]
        result = self.successResultOf(self.data.retry(ids[:2], None, None, CONSOLE))
        self.assertEqual((sorted(result.changed), dict(result.failed), result.truncated), (sorted(ids[:2]), {}, False))
        self.assertEqual(self.store.dead_count(DeadFilter(), 100), 1)
        records = self.operator_records("retry")
        self.assertEqual(sorted(r.extra["entry_ids"] for r in records), sorted(str(i) for i in ids[:2]))
        self.assertEqual({(r.extra["via"], r.participants[0].user_id) for r in records}, {("console", "alice")})
        self.assertTrue(self.service.workers["pacs"].pokes >= 2)

    def test_retry_by_filter_truncates_at_the_bulk_limit(self) -> None:
        """With a limit of 3, a filter matching 5 changes the 3 newest and says truncated; the count says 4 (limit + 1)."""
        data = ServiceConsoleData(self.service, self.backend, wall=lambda: self.now[0], bulk_limit=3)
        ids = [self.dead(destination="archive") for _ in range(5)]
        self.dead(destination="pacs")
        self.assertEqual(self.successResultOf(data.count_dead(DeadFilter(destination="archive"))), 4)
        result = self.successResultOf(data.retry(None, DeadFilter(destination="archive"), None, CONSOLE))
        self.assertEqual((sorted(result.changed), result.truncated), (sorted(ids[2:]), True))
        self.assertEqual(self.store.dead_ids(DeadFilter(), 100), [ids[-1] + 1, ids[1], ids[0]])
        # Selected ids beyond the limit are cut too, and said so.
        more = self.successResultOf(data.purge([ids[0], ids[1], ids[0]], None, CONSOLE))
        self.assertEqual((sorted(more.changed), more.truncated), (sorted(ids[:2]), False))
        capped = self.successResultOf(data.purge([1, 2, 3, 4], None, CONSOLE))
        self.assertTrue(capped.truncated)
        self.assertEqual(len(capped.changed) + len(capped.failed), 3)

    def test_bulk_actions_run_in_bounded_batches(self) -> None:
        """A bulk action never has more than ACTION_BATCH entries in flight: the next batch starts when one ends."""
        self.patch(backend_module, "ACTION_BATCH", 2)
        ids = [self.dead() for _ in range(5)]
        in_flight: list[Deferred[Any]] = []
        most = [0]

        class Holding:
            def purge(self, entry_id: int, operator: Operator) -> Deferred[None]:
                d: Deferred[None] = Deferred()
                in_flight.append(d)
                most[0] = max(most[0], sum(1 for x in in_flight if not x.called))
                return d

        data = ServiceConsoleData(self.service, Holding(), wall=lambda: self.now[0])
        result = data.purge(None, DeadFilter(), CONSOLE)
        while any(not d.called for d in in_flight):
            for d in [d for d in in_flight if not d.called]:
                d.callback(None)
        self.assertEqual(sorted(self.successResultOf(result).changed), sorted(ids))
        self.assertEqual(most[0], 2)
        self.assertEqual(len(in_flight), 5)

    def test_retarget_across_notifications_and_instances_is_refused_even_forced(self) -> None:
        """A notification never goes to a DICOM or folder destination, nor an instance to a sink, whatever force says."""
        from gateway.notify.document import NOTIFICATION_SOP_CLASS

        secret = os.path.join(self.service.root, "hook.key")
        with open(secret, "w") as f:
            f.write("k")
        text = CONFIG.format(spool=os.path.join(self.service.root, "spool"), audit=self.service.audit_file,
                             folder=os.path.join(self.service.root, "out"))
        text = text.replace("destinations:\n", "destinations:\n  hook: {webhook: {url: 'http://127.0.0.1:9/h', secret_file: %s}}\n" % secret)
        self.service.config = load_config_text(text, "gateway.yaml", self.service.root)
        notification = self.dead(destination="hook", sop_class_uid=NOTIFICATION_SOP_CLASS)
        instance = self.dead()
        for entry_id, target in ((notification, "archive"), (notification, "pacs"), (instance, "hook")):
            result = self.successResultOf(self.data.retry([entry_id], None, target, CONSOLE, force=True))
            self.assertEqual(result.changed, ())
            self.assertIn("not even with force", result.failed[entry_id])
            self.assertEqual(self.store.get(entry_id).state, EntryState.DEAD)
        # Within its kind a notification may be retried (to the same sink).
        again = self.successResultOf(self.data.retry([notification], None, None, CONSOLE))
        self.assertEqual(len(again.changed), 1)

    def test_retarget_no_route_makes_is_refused_unless_forced(self) -> None:
        """A re-target to research of a clinical (unmorphed) copy fails for the entry (audited as refused); force makes it, audited as forced."""
        entry_id = self.dead()
        result = self.successResultOf(self.data.retry([entry_id], None, "research", CONSOLE))
        self.assertEqual(result.changed, ())
        self.assertIn("not re-targeted to research", result.failed[entry_id])
        self.assertEqual(self.store.get(entry_id).state, EntryState.DEAD)
        refused = self.operator_records("retarget")
        self.assertIn("retarget refused", refused[-1].description)
        forced = self.successResultOf(self.data.retry([entry_id], None, "research", CONSOLE, force=True))
        self.assertEqual(forced.changed, (entry_id,))
        self.assertIn("forced past the re-target guard", self.operator_records("retarget")[-1].description)

    def test_retarget_a_route_makes_is_allowed(self) -> None:
        """A research copy (the research route's plan) re-targeted to research needs no force."""
        plan = route_plan(self.service.config.routes[1])
        entry_id = self.dead(destination="archive", route="research", plan=plan)
        result = self.successResultOf(self.data.retry([entry_id], None, "research", CONSOLE))
        self.assertEqual((result.changed, dict(result.failed)), ((entry_id,), {}))
        self.assertEqual(self.store.dead_count(DeadFilter(), 10), 0)

    def test_failures_are_reported_per_entry(self) -> None:
        """An id that is no dead letter fails with why; the others are changed; both audited."""
        entry_id = self.dead()
        queued = self.add()
        result = self.successResultOf(self.data.purge([entry_id, queued, 999], None, CONSOLE))
        self.assertEqual(result.changed, (entry_id,))
        self.assertEqual(set(result.failed), {queued, 999})
        self.assertIn("no dead letter 999", result.failed[999])
        self.assertEqual(len(self.operator_records("purge")), 3)
        self.assertEqual(self.store.get(queued).state, EntryState.QUEUED)

    def test_pause_and_reload_are_audited(self) -> None:
        """pause/resume and reload go through the audited backend with the console's operator."""
        self.successResultOf(self.data.pause("pacs", True, CONSOLE))
        self.assertTrue(self.store.stats(self.now[0])["pacs"].paused)
        self.successResultOf(self.data.pause("pacs", False, Operator(who="alice", address="192.0.2.9:5000", via="api")))
        self.assertTrue(self.successResultOf(self.data.reload(CONSOLE)))
        self.assertEqual(self.service.reloads, 1)
        self.assertEqual(len(self.operator_records("pause")), 1)
        self.assertEqual(self.operator_records("resume")[0].extra["via"], "console")  # whatever the page passed
        self.assertEqual(self.operator_records("reload")[0].extra["via"], "console")

    # -- audit, rules, spool -------------------------------------------------------------

    def test_audit_page_reads_this_nodes_trail(self) -> None:
        """The console's own actions are on the audit page, newest first, filterable by event and AE."""
        self.successResultOf(self.data.pause("pacs", True, CONSOLE))
        self.successResultOf(self.data.pause("pacs", False, CONSOLE))
        page = self.successResultOf(self.data.audit(None, None, None))
        self.assertEqual(page.node, "gw-1")
        self.assertEqual([r.record["extra"]["action"] for r in page.records], ["resume", "pause"])
        event = page.records[0].event
        self.assertEqual(len(self.successResultOf(self.data.audit(event, "", "")).records), 2)
        self.assertEqual(self.successResultOf(self.data.audit("110113", None, None)).records, ())
        self.assertEqual(len(self.successResultOf(self.data.audit(None, None, None, limit=1)).records), 1)

    def test_check_routes_a_file_without_sending(self) -> None:
        """check answers check_file's report with the configuration in force: routes matched, destinations."""
        from tests.support.datasets import write_instance

        path = os.path.join(self.service.root, "probe.dcm")
        write_instance(path, size=2048)
        report = self.successResultOf(self.data.check(path, "CT1")).report
        self.assertEqual(report["file"], path)
        text = json.dumps(report)
        self.assertIn("clinical", text)
        self.assertIn("pacs", text)
        self.assertEqual(self.store.entries(), [])

    def test_spool_file_of_an_instance_on_record(self) -> None:
        """The file of an instance on record; KeyError when none, or when its file is gone."""
        self.add()
        path = os.path.join(self.service.root, "i1.dcm")
        self.failureResultOf(self.data.spool_file("i1"), KeyError)
        with open(path, "wb") as f:
            f.write(b"x")
        self.assertEqual(self.successResultOf(self.data.spool_file("i1")), path)
        self.failureResultOf(self.data.spool_file("nope"), KeyError)

    def test_destinations_and_routes(self) -> None:
        """The configured names and routes, in configuration order."""
        self.assertEqual(self.data.destinations(), ("pacs", "archive", "research"))
        self.assertEqual([r.name for r in self.data.routes()], ["clinical", "research"])


class SqliteConsoleDataTests(ConsoleDataTests, SynchronousTestCase):
    """ServiceConsoleData over the SQLite store."""

    def make_store(self, root: str) -> SqliteQueueStore:
        return SqliteQueueStore(os.path.join(root, "queue.sqlite"), node="gw-1")


class MemoryConsoleDataTests(ConsoleDataTests, SynchronousTestCase):
    """ServiceConsoleData over the in-memory store."""

    def make_store(self, root: str) -> MemoryQueueStore:
        return MemoryQueueStore(node="gw-1")


