"""Tests for the C-GET relay of :mod:`gateway.qr.get` (issue 16): a source without C-GET, C-MOVEd to the gateway.

The source is :class:`tests.unit.qr.test_move.FakeLink` (scripted C-FIND
matches, a C-MOVE whose final response the test fires); the journal is the
memory store (its retrieve journal and instance records); the sub-operations
"arrive" as the intake hands them over: a Part 10 file linked in the scratch
folder, then :meth:`GetRelays.notify` (the same process) or nothing (another
node: found by the 1 s poll, confirmed in the journal). Time is a
:class:`task.Clock`; nothing sleeps.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import pydicom
from pydicom.data import get_testdata_file
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.blocking import SynchronousRunner
from gateway.qr import get
from gateway.qr.context import QRContext, SubOperations
from gateway.queue.interfaces import InstanceRecord
from gateway.queue.memory import MemoryQueueStore
from gateway.queue.retrieves import RetrieveState
from tests.unit.qr.test_get import CT, EXPLICIT_LE, STUDY_GET, FakeResponder, FakeSource, study_identifier
from tests.unit.qr.test_move import FakeLink, match

CT_FILE = get_testdata_file("CT_small.dcm", download=False)
CT_UID = str(pydicom.dcmread(CT_FILE, stop_before_pixels=True).SOPInstanceUID)
T0 = 1_800_000_000.0


class Destination:
    """A DICOM destination as the relay needs it (an AE title)."""

    ae_title = "ARCH1"


class RelayHarness:
    """A scratch folder, a memory journal, a clock, a registry and a relay source over a :class:`FakeLink`."""

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)  # type: ignore[attr-defined]
        self.scratch = os.path.join(self.tmp, "scratch")
        self.clock = Clock()
        self.clock.advance(T0)
        self.store = MemoryQueueStore()
        self.relays = get.GetRelays()
        self.ctx = QRContext(
            config=lambda: None, journal=self.store, run=SynchronousRunner(), reactor=self.clock,
            wall=self.clock.seconds, ae_title="GW", extra={"get.file_runner": SynchronousRunner()},
        )

    def link(self, uids: list[str]) -> FakeLink:
        """A source whose locating C-FIND returns ``uids``."""
        return FakeLink("archive1", matches=[match(uid) for uid in uids])

    def relay(self, link: FakeLink, name: str = "archive1") -> get.MoveRelaySource:
        """The relay leg over ``link`` (opened through ``open_link``)."""

        class Info:
            calling_ae_title = "VIEWER"
            listener = "qr"

        class Rq:
            message_id = 5

        class Settings:
            timeout = 3600.0

        return get.MoveRelaySource(
            name, Destination(), self.ctx, self.scratch, EXPLICIT_LE,
            lambda expected, source: get._relay_retrieve(self.ctx, Info(), Rq(), "STUDY", Settings(), expected, source),
            open_link=lambda ctx, destination, classes: succeed(link), relays=self.relays,
        )

    def run_get(self, responder: Any, *sources: Any, **kwargs: Any) -> Deferred[None]:
        """:func:`get.retrieve` over ``sources`` (removing files for real)."""
        by_name = {s.name: s for s in sources}
        return ensureDeferred(
            get.retrieve(STUDY_GET, study_identifier(), responder, [s.name for s in sources],
                         lambda n, c: by_name[n], get._remove, self.clock, kwargs.pop("timeout", 3600.0), **kwargs)
        )

    def hand_over(self, retrieve_id: int, uid: str, journal: bool = True) -> str:
        """What the intake does for one sub-operation: the file linked in scratch, and (``journal``) its record committed."""
        path = get.handover_path(self.scratch, retrieve_id, uid)
        os.makedirs(self.scratch, exist_ok=True)
        ds = pydicom.dcmread(CT_FILE)
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.save_as(path, enforce_file_format=True)
        if journal:
            record = InstanceRecord(
                instance_id="i" + uid.replace(".", ""), path=path, sop_class_uid=CT, sop_instance_uid=uid,
                transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), size=os.path.getsize(path), sha256=uid,
                received_at=self.clock.seconds(), correlation_id="c",
            )
            self.store.add_instance(record, [], self.clock.seconds(), 0.0)
        return path

    def notify(self, retrieve_id: int, uid: str) -> str:
        """The same process's intake: hand over and tell the registry."""
        path = self.hand_over(retrieve_id, uid)
        header = get.read_part10_header(path)

        class Record:
            sop_class_uid = header.sop_class_uid
            sop_instance_uid = header.sop_instance_uid
            transfer_syntax_uid = header.transfer_syntax_uid
            dataset_offset = header.dataset_offset

        self.assertTrue(self.relays.notify(retrieve_id, path, Record()))  # type: ignore[attr-defined]
        return path

    def only_retrieve(self) -> Any:
        """The one retrieve journaled."""
        [retrieve] = self.store.retrieves()
        return retrieve


class NotifiedRelayTests(RelayHarness, SynchronousTestCase):
    """Instances told about by this process's intake are stored back at once; the journal follows."""

    def test_every_instance_handed_over_is_stored_back_and_journaled(self) -> None:
        """Two located, both handed over: stored on the requester, items COMPLETED, retrieve DONE, files gone, final 0x0000."""
        link = self.link(["1.1", "1.2"])
        responder = FakeResponder({CT: 0x0000})
        d = self.run_get(responder, self.relay(link))
        retrieve = self.only_retrieve()
        self.assertEqual(link.moves, [("1.2.840.10008.5.1.4.1.2.2.2", "GW", retrieve.message_id)])
        self.assertEqual((retrieve.request.kind, retrieve.request.sources), ("get", ("archive1",)))
        first = self.notify(retrieve.retrieve_id, "1.1")
        self.assertEqual(responder.stored, ["1.1"])
        self.assertFalse(os.path.exists(first))
        self.notify(retrieve.retrieve_id, "1.2")
        self.assertNoResult(d)  # the source's final C-MOVE-RSP comes before the release
        link.move_result.callback(get.SourceOutcome(0x0000, SubOperations(0, 2, 0, 0)))
        self.successResultOf(d)
        self.assertEqual(responder.stored, ["1.1", "1.2"])
        self.assertEqual(responder.finals, [dict(status=0x0000, counts=SubOperations(0, 2, 0, 0), comment="", failed=())])
        self.assertEqual([c.remaining for c in responder.pendings], [1, 0])
        self.assertEqual(self.store.progress(retrieve.retrieve_id).completed, 2)
        self.assertEqual(self.store.get_retrieve(retrieve.retrieve_id).state, RetrieveState.DONE)
        self.assertEqual(os.listdir(self.scratch), [])
        self.assertFalse(self.relays.notify(retrieve.retrieve_id, "x", None))  # unregistered
        self.assertEqual(link.released, 1)

    def test_source_without_final_response_is_aborted(self) -> None:
        """Everything handed over but the source never sends its final C-MOVE-RSP: aborted after SOURCE_END_WAIT, the C-GET succeeds."""
        link = self.link(["1.1"])
        responder = FakeResponder({CT: 0x0000})
        d = self.run_get(responder, self.relay(link))
        self.notify(self.only_retrieve().retrieve_id, "1.1")
        self.clock.advance(get.SOURCE_END_WAIT - 1)
        self.assertNoResult(d)
        self.clock.advance(1)
        self.successResultOf(d)
        self.assertEqual((link.aborted, link.released), (1, 0))
        self.assertEqual(responder.finals[0]["status"], 0x0000)

    def test_instance_missing_when_the_source_ends_is_failed_and_listed(self) -> None:
        """The source ends having sent one of two: final 0xB000, one failed, listed, its item FAILED."""
        link = self.link(["1.1", "1.2"])
        responder = FakeResponder({CT: 0x0000})
        d = self.run_get(responder, self.relay(link))
        retrieve = self.only_retrieve()
        self.notify(retrieve.retrieve_id, "1.1")
        link.move_result.callback(get.SourceOutcome(0xB000, SubOperations(0, 1, 1, 0)))
        self.successResultOf(d)
        [final] = responder.finals
        self.assertEqual((final["status"], final["counts"], final["failed"]), (0xB000, SubOperations(0, 1, 1, 0), ("1.2",)))
        self.assertEqual(self.store.progress(retrieve.retrieve_id).failed_uids, ("1.2",))

    def test_requester_refusal_is_a_failed_item(self) -> None:
        """The requester has no context for the class: the sub-operation is failed, listed and journaled FAILED."""
        link = self.link(["1.1"])
        responder = FakeResponder({})
        d = self.run_get(responder, self.relay(link))
        retrieve = self.only_retrieve()
        self.notify(retrieve.retrieve_id, "1.1")
        link.move_result.callback(get.SourceOutcome(0x0000, SubOperations(0, 1, 0, 0)))
        self.successResultOf(d)
        [final] = responder.finals
        self.assertEqual((final["status"], final["failed"]), (0xA702, ("1.1",)))
        self.assertEqual(self.store.progress(retrieve.retrieve_id).failed, 1)

    def test_source_refusing_the_move_with_nothing_sent_is_relayed(self) -> None:
        """The source does not know the gateway's AE (0xA801) and sends nothing: its status is the answer; the retrieve FAILED."""
        link = self.link(["1.1"])
        responder = FakeResponder({CT: 0x0000})
        d = self.run_get(responder, self.relay(link))
        retrieve = self.only_retrieve()
        link.move_result.callback(get.SourceOutcome(0xA801, SubOperations(0, 0, 0, 0)))
        self.successResultOf(d)
        self.assertEqual(responder.finals[0]["status"], 0xA801)
        self.assertEqual(self.store.get_retrieve(retrieve.retrieve_id).state, RetrieveState.FAILED)

    def test_no_match_at_the_source_asks_the_next(self) -> None:
        """A locating C-FIND with no match journals nothing and the next source is asked."""
        responder = FakeResponder({CT: 0x0000})
        second = FakeSource("b", [(CT, "2.1")])
        self.successResultOf(self.run_get(responder, self.relay(self.link([])), second))
        self.assertEqual(self.store.retrieves(), [])
        self.assertEqual(len(second.asked), 1)

    def test_cancel_reaches_the_source_and_ends_fe00(self) -> None:
        """C-CANCEL: the source's C-MOVE is cancelled; once it ends, final 0xFE00 with what remains; the retrieve CANCELLED."""
        link = self.link(["1.1", "1.2"])
        responder = FakeResponder({CT: 0x0000})
        d = self.run_get(responder, self.relay(link))
        retrieve = self.only_retrieve()
        self.notify(retrieve.retrieve_id, "1.1")
        responder.cancel()
        self.assertEqual(link.cancels, 1)
        link.move_result.callback(get.SourceOutcome(0xFE00, SubOperations(1, 1, 0, 0)))
        self.successResultOf(d)
        [final] = responder.finals
        self.assertEqual((final["status"], final["counts"]), (0xFE00, SubOperations(1, 1, 0, 0)))
        self.assertEqual(self.store.get_retrieve(retrieve.retrieve_id).state, RetrieveState.CANCELLED)

    def test_source_not_ending_after_cancel_is_aborted(self) -> None:
        """A source that never answers our C-CANCEL is aborted after SOURCE_END_WAIT; the C-GET still ends."""
        link = self.link(["1.1"])
        responder = FakeResponder({CT: 0x0000})
        d = self.run_get(responder, self.relay(link))
        responder.cancel()
        self.assertNoResult(d)
        self.clock.advance(get.SOURCE_END_WAIT)
        self.successResultOf(d)
        self.assertEqual(link.aborted, 1)
        self.assertEqual(responder.finals[0]["status"], 0xFE00)


class PolledRelayTests(RelayHarness, SynchronousTestCase):
    """Instances another node received (shared spool): nobody tells this process; the 1 s poll finds them."""

    def test_poll_finds_a_journaled_hand_over(self) -> None:
        """A hand-over file with its journal record is stored back at the next poll."""
        link = self.link(["1.1"])
        responder = FakeResponder({CT: 0x0000})
        d = self.run_get(responder, self.relay(link))
        retrieve = self.only_retrieve()
        self.hand_over(retrieve.retrieve_id, "1.1")
        self.assertEqual(responder.stored, [])
        self.clock.advance(get.POLL_INTERVAL)
        self.assertEqual(responder.stored, ["1.1"])
        link.move_result.callback(get.SourceOutcome(0x0000, SubOperations(0, 1, 0, 0)))
        self.successResultOf(d)
        self.assertEqual(self.store.progress(retrieve.retrieve_id).completed, 1)

    def test_hand_over_without_a_journal_record_is_not_sent(self) -> None:
        """A link whose journal write has not committed (never acknowledged) is not sent; at the source's end it counts failed."""
        link = self.link(["1.1"])
        responder = FakeResponder({CT: 0x0000})
        d = self.run_get(responder, self.relay(link))
        retrieve = self.only_retrieve()
        self.hand_over(retrieve.retrieve_id, "1.1", journal=False)
        self.clock.advance(get.POLL_INTERVAL * 3)
        self.assertEqual(responder.stored, [])
        link.move_result.callback(get.SourceOutcome(0x0000, SubOperations(0, 1, 0, 0)))
        self.successResultOf(d)
        self.assertEqual(responder.finals[0]["failed"], ("1.1",))
        self.assertEqual(os.listdir(self.scratch), [])  # the leg's leftovers are removed

    def test_final_look_after_the_source_ended(self) -> None:
        """The source's final response comes before the poll: one last look still finds what another node journaled."""
        link = self.link(["1.1"])
        responder = FakeResponder({CT: 0x0000})
        d = self.run_get(responder, self.relay(link))
        retrieve = self.only_retrieve()
        self.hand_over(retrieve.retrieve_id, "1.1")
        link.move_result.callback(get.SourceOutcome(0x0000, SubOperations(0, 1, 0, 0)))
        self.successResultOf(d)
        self.assertEqual(responder.finals[0]["status"], 0x0000)
        self.assertEqual(responder.stored, ["1.1"])


class FallbackTests(SynchronousTestCase):
    """:class:`GetOrMoveSource`: the source's own C-GET, or the relay when it has none."""

    def test_no_get_context_releases_and_relays(self) -> None:
        """NoGetContext from the direct source: it is closed and the relay leg answers."""
        direct = FakeSource("a", refuse=get.NoGetContext("no C-GET context accepted"))
        relay = FakeSource("a", [(CT, "1.1")])
        source = get.GetOrMoveSource(direct, lambda: relay)
        responder = FakeResponder({CT: 0x0000})
        self.successResultOf(ensureDeferred(get.retrieve(STUDY_GET, b"id", responder, ["a"], lambda n, c: source, lambda p: None)))
        self.assertEqual((direct.closed, len(relay.asked)), (1, 1))
        self.assertEqual(responder.finals[0]["counts"], SubOperations(0, 1, 0, 0))

    def test_cancel_while_switching_reaches_the_relay(self) -> None:
        """A C-CANCEL between the failed C-GET and the relay's start still cancels the relay."""
        direct = FakeSource("a", refuse=get.NoGetContext("no C-GET context accepted"))
        relay = FakeSource("a", [(CT, "1.1")])
        source = get.GetOrMoveSource(direct, lambda: relay)
        source.cancel()
        self.successResultOf(source.get(STUDY_GET, b"id", lambda i: succeed(0), lambda c: None))
        self.assertEqual(relay.cancels, 1)

    def test_other_unavailability_is_not_relayed(self) -> None:
        """A source that cannot be reached at all is left out, not C-MOVEd from."""
        direct = FakeSource("a", refuse=get.SourceUnavailable("association failed"))
        relays: list[Any] = []
        source = get.GetOrMoveSource(direct, lambda: relays.append(1) or FakeSource("a"))
        responder = FakeResponder({CT: 0x0000})
        self.successResultOf(ensureDeferred(get.retrieve(STUDY_GET, b"id", responder, ["a"], lambda n, c: source, lambda p: None)))
        self.assertEqual(relays, [])
        self.assertEqual(responder.finals[0]["status"], 0xA702)


class AbortingResponder(FakeResponder):
    """A requester that can be aborted (records the reason)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.aborts: list[str] = []

    def abort(self, detail: str) -> None:
        """Record the abort; the association's end cancels the request (as QRResponder's service does)."""
        self.aborts.append(detail)
        if not self._cancelled.called:
            self._cancelled.callback(None)


class StoreTimeoutTests(SynchronousTestCase):
    """A requester that never answers a sub-operation C-STORE does not hang the C-GET."""

    def test_missing_store_response_fails_the_instance_aborts_and_ends(self) -> None:
        """After the DIMSE timeout: the instance is failed and listed, the association aborted, the source cancelled, one final.

        The instance the source had not sent yet is failed too (its Remaining when it ended).
        """
        clock = Clock()
        responder = AbortingResponder({CT: 0x0000}, hold=True)
        source = FakeSource("a", [(CT, "1.1"), (CT, "1.2")])
        d = ensureDeferred(get.retrieve(STUDY_GET, b"id", responder, ["a"], lambda n, c: source, lambda p: None,
                                        clock, 3600.0, None, 30.0))
        clock.advance(29)
        self.assertEqual(responder.aborts, [])
        clock.advance(1)
        self.successResultOf(d)
        self.assertEqual(len(responder.aborts), 1)
        self.assertIn("no C-STORE-RSP", responder.aborts[0])
        self.assertEqual(responder.stored, ["1.1"])
        self.assertGreaterEqual(source.cancels, 1)
        [final] = responder.finals
        self.assertEqual((final["counts"], final["failed"]), (SubOperations(0, 0, 2, 0), ("1.1",)))
        self.assertIsNot(clock.getDelayedCalls(), None)
        self.assertEqual([c for c in clock.getDelayedCalls() if c.active()], [])

    def test_retrieve_timeout_sooner_than_the_dimse_timeout_bounds_the_store(self) -> None:
        """With 10 s of retrieve.timeout left and a 60 s DIMSE timeout, the store is bounded at 10 s."""
        clock = Clock()
        responder = AbortingResponder({CT: 0x0000}, hold=True)
        source = FakeSource("a", [(CT, "1.1")])
        d = ensureDeferred(get.retrieve(STUDY_GET, b"id", responder, ["a"], lambda n, c: source, lambda p: None,
                                        clock, 10.0, None, 60.0))
        clock.advance(10)
        self.successResultOf(d)
        self.assertEqual(len(responder.aborts), 1)

    def test_answer_in_time_is_counted(self) -> None:
        """An answer before the bound is the sub-operation's outcome; nothing is aborted."""
        clock = Clock()
        responder = AbortingResponder({CT: 0x0000}, hold=True)
        source = FakeSource("a", [(CT, "1.1")])
        d = ensureDeferred(get.retrieve(STUDY_GET, b"id", responder, ["a"], lambda n, c: source, lambda p: None,
                                        clock, 3600.0, None, 30.0))
        clock.advance(29)
        responder.waiting[0].callback(None)
        self.successResultOf(d)
        self.assertEqual(responder.aborts, [])
        self.assertEqual(responder.finals[0]["counts"], SubOperations(0, 1, 0, 0))


class ReadingResponder(FakeResponder):
    """A requester that reads what it is sent (the Institution Name and SOP Instance UID of each file)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.institutions: list[str] = []

    def store(self, path: str, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, dataset_offset: int) -> Deferred[int]:
        """Read the file; the offset given must be where its data set starts (what the association sends)."""
        self.offsets_right = getattr(self, "offsets_right", True) and get.read_part10_header(path).dataset_offset == dataset_offset
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        self.institutions.append(str(ds.get("InstitutionName", "")))
        assert str(ds.SOPInstanceUID) == sop_instance_uid
        return super().store(path, sop_class_uid, sop_instance_uid, transfer_syntax_uid, dataset_offset)


class RouteMorphTests(SynchronousTestCase):
    """``retrieve.route``: its morph plan is applied to what is stored back; the received file is left as it was."""

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def plan(self) -> Any:
        """The compiled plan of a route setting Institution Name."""
        from gateway.config.load import load_config_text

        config = load_config_text(
            "ae_title: GW\nlisten: [{host: 127.0.0.1, port: 0}]\nspool: spool\n"
            "destinations: {out: {folder: /data/out}}\n"
            "routes:\n  - name: research\n    forward: [out]\n    morph:\n      - set: {InstitutionName: Relayed}\n",
            "gateway.yaml", self.tmp,
        )
        return config.routes[0].morph

    def test_morphed_copy_is_sent_and_removed(self) -> None:
        """The requester reads the morphed Institution Name; the copy and the received file are both removed after."""
        from gateway.route import RoutingContext

        received = os.path.join(self.tmp, "get-1.dcm")
        shutil.copyfile(CT_FILE, received)
        header = get.read_part10_header(received)
        scratch = os.path.join(self.tmp, "scratch")
        prepare = get.RouteMorph(self.plan(), scratch, lambda f, *a: succeed(f(*a)), RoutingContext("V", "GW", "127.0.0.1", "qr"))

        class Source(FakeSource):
            async def _run(self, on_instance: Any, on_pending: Any) -> get.SourceOutcome:
                await on_instance(get.ReceivedInstance(received, header.sop_class_uid, header.sop_instance_uid,
                                                       header.transfer_syntax_uid, header.dataset_offset))
                return get.SourceOutcome(0, SubOperations(0, 1, 0, 0))

        responder = ReadingResponder({header.sop_class_uid: 0x0000})
        self.successResultOf(ensureDeferred(get.retrieve(
            STUDY_GET, b"id", responder, ["a"], lambda n, c: Source("a"), get._remove, None, None, prepare)))
        self.assertEqual(responder.institutions, ["Relayed"])
        self.assertTrue(responder.offsets_right)
        self.assertEqual(responder.finals[0]["status"], 0x0000)
        self.assertFalse(os.path.exists(received))
        self.assertEqual(os.listdir(scratch), [])

    def test_morph_failure_is_a_failed_sub_operation(self) -> None:
        """A file the morph cannot read is never sent unmorphed: the sub-operation fails."""
        from gateway.route import RoutingContext

        broken = os.path.join(self.tmp, "get-2.dcm")
        with open(broken, "wb") as f:
            f.write(b"not dicom")
        prepare = get.RouteMorph(self.plan(), os.path.join(self.tmp, "scratch"), lambda f, *a: ensureDeferred(_call(f, *a)),
                                 RoutingContext("V", "GW", "127.0.0.1", "qr"))

        class Source(FakeSource):
            async def _run(self, on_instance: Any, on_pending: Any) -> get.SourceOutcome:
                await on_instance(get.ReceivedInstance(broken, CT, "9.9", EXPLICIT_LE, 0))
                return get.SourceOutcome(0, SubOperations(0, 1, 0, 0))

        responder = FakeResponder({CT: 0x0000})
        self.successResultOf(ensureDeferred(get.retrieve(
            STUDY_GET, b"id", responder, ["a"], lambda n, c: Source("a"), get._remove, None, None, prepare)))
        self.assertEqual(responder.stored, [])
        self.assertEqual((responder.finals[0]["status"], responder.finals[0]["failed"]), (0xA702, ("9.9",)))


async def _call(f: Any, *args: Any) -> Any:
    """Run ``f`` (its exception becomes the Deferred's failure)."""
    return f(*args)


class SweepTests(SynchronousTestCase):
    """:func:`sweep_scratch` at start."""

    def test_only_c_get_files_are_removed_and_counted(self) -> None:
        """get-, getrelay- and getmorph- files go; another module's file stays; a missing folder is 0."""
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp, True)
        for name in ("get-a.dcm", "getrelay-3-1.2.dcm", "getmorph-x.dcm", "transcoded-1.dcm"):
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(b"x")
        self.assertEqual(get.sweep_scratch(tmp), 3)
        self.assertEqual(os.listdir(tmp), ["transcoded-1.dcm"])
        self.assertEqual(get.sweep_scratch(os.path.join(tmp, "absent")), 0)

    def test_shared_spool_keeps_files_younger_than_any_c_get(self) -> None:
        """With ``older_than`` (a shared spool) a recent file may be another node's live C-GET: kept; an old one goes."""
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp, True)
        for name, age in (("getrelay-3-1.2.dcm", 10.0), ("get-old.dcm", 7200.0)):
            path = os.path.join(tmp, name)
            with open(path, "wb") as f:
                f.write(b"x")
            os.utime(path, (100000.0 - age, 100000.0 - age))
        self.assertEqual(get.sweep_scratch(tmp, 3660.0, 100000.0), 1)
        self.assertEqual(os.listdir(tmp), ["getrelay-3-1.2.dcm"])


class HandoverPathTests(SynchronousTestCase):
    """Hand-over names are internal: a UID as it is, anything else hashed."""

    def test_hostile_uid_never_leaves_the_folder(self) -> None:
        """A SOP Instance UID with a slash or dots-only traversal is hashed; a UID is kept readable."""
        self.assertEqual(os.path.basename(get.handover_path("/s", 3, "1.2.3")), "getrelay-3-1.2.3.dcm")
        hostile = get.handover_path("/s", 3, "../../etc/passwd")
        self.assertEqual(os.path.dirname(hostile), "/s")
        self.assertNotIn("..", os.path.basename(hostile))


from tests.unit.qr import test_move_intake  # noqa: E402
from tests.unit.test_intake import INFO, IntakeTestsMixin  # noqa: E402


class IntakeHandoverTests(IntakeTestsMixin, SynchronousTestCase):
    """The intake's side: a C-GET relay's sub-operation is linked in scratch before its journal write, then announced."""

    setUp = test_move_intake.SubOperationTests.setUp
    writer_for = test_move_intake.SubOperationTests.writer_for
    make_intake = test_move_intake.SubOperationTests.make_intake

    def open_get(self) -> Any:
        """Journal a C-GET relay leg expecting CT_small's instance."""
        from gateway.queue.commitments import Reference
        from gateway.queue.retrieves import NewRetrieve

        new = NewRetrieve(
            kind="get", requester_ae_title="VIEWER", listener="qr", requester_message_id=7, destination="",
            mode="relay", level="STUDY", sources=("archive1",),
            expected=(Reference("", test_move_intake.CT_SMALL_UID),), deadline=self.now + 60,
        )
        return self.store.open_retrieve(new, self.now)

    def scratch(self) -> str:
        """The intake's scratch folder (beside ``unrouted``)."""
        return os.path.join(self.tmp, "scratch")

    def test_linked_journaled_and_announced(self) -> None:
        """The hand-over is the spool file's bytes; the registry hears of it with the record's class, syntax and offset."""
        retrieve = self.open_get()
        heard: list[get.HandedOver] = []
        get.RELAYS.register(retrieve.retrieve_id, heard.append)
        self.addCleanup(get.RELAYS.unregister, retrieve.retrieve_id)
        admission = self.successResultOf(self.intake.take(self.writer_for(), INFO, ("GW", retrieve.message_id)))
        self.assertEqual(admission.status, 0x0000)
        ((record, entries),) = self.store.find(sop_instance_uid=test_move_intake.CT_SMALL_UID)
        self.assertEqual(list(entries), [])
        [handed] = heard
        self.assertEqual(handed.path, get.handover_path(self.scratch(), retrieve.retrieve_id, record.sop_instance_uid))
        self.assertEqual(
            (handed.sop_class_uid, handed.transfer_syntax_uid, handed.dataset_offset),
            (record.sop_class_uid, record.transfer_syntax_uid, record.dataset_offset),
        )
        with open(handed.path, "rb") as a, open(record.path, "rb") as b:
            self.assertEqual(a.read(), b.read())

    def test_hand_over_outlives_the_spool_clean_up(self) -> None:
        """An instance with no entries is finished for the clean-up; deleting its spool file leaves the hand-over whole."""
        retrieve = self.open_get()
        self.successResultOf(self.intake.take(self.writer_for(), INFO, ("GW", retrieve.message_id)))
        finished = self.store.finished_instances(self.now + 1, 10, True)
        self.assertEqual([r.sop_instance_uid for r in finished], [test_move_intake.CT_SMALL_UID])
        os.unlink(finished[0].path)
        path = get.handover_path(self.scratch(), retrieve.retrieve_id, test_move_intake.CT_SMALL_UID)
        self.assertEqual(str(pydicom.dcmread(path).SOPInstanceUID), test_move_intake.CT_SMALL_UID)

    def test_nobody_waiting_keeps_the_link_for_a_poller(self) -> None:
        """No handler in this process: the link stays (another node's handler polls the shared scratch)."""
        retrieve = self.open_get()
        self.successResultOf(self.intake.take(self.writer_for(), INFO, ("GW", retrieve.message_id)))
        self.assertTrue(os.path.exists(get.handover_path(self.scratch(), retrieve.retrieve_id, test_move_intake.CT_SMALL_UID)))

    def test_link_that_cannot_be_made_refuses_the_instance(self) -> None:
        """A scratch folder that cannot be written: 0xA700 to the source and nothing journaled (never acknowledged unsent)."""
        retrieve = self.open_get()
        with open(self.scratch(), "wb") as f:
            f.write(b"a file where the folder should be")
        admission = self.successResultOf(self.intake.take(self.writer_for(), INFO, ("GW", retrieve.message_id)))
        self.assertEqual(admission.status & 0xFF00, 0xA700)
        self.assertEqual(self.store.find(sop_instance_uid=test_move_intake.CT_SMALL_UID), [])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)  # logged as a journal failure

    def test_move_entry_carries_the_retrieve_route_plan(self) -> None:
        """retrieve.route names a morphing route: the move.<name> entry gets its plan, not NO_MORPH."""
        from gateway.config.schema import RouteConfig
        from gateway.prepare import NO_MORPH, route_plan

        plan = RouteMorphTests.plan(self)  # type: ignore[arg-type]
        self.routes = [RouteConfig("everything", ("pacs", "folder")), RouteConfig("research", ("folder",), morph=plan)]
        self.intake._retrieve_route = lambda listener: "research" if listener == "qr" else ""
        retrieve = test_move_intake.SubOperationTests.open_retrieve(self)  # type: ignore[arg-type]
        self.successResultOf(self.intake.take(self.writer_for(), INFO, ("GW", retrieve.message_id)))
        ((_, (entry,)),) = self.store.find(sop_instance_uid=test_move_intake.CT_SMALL_UID)
        self.assertEqual(entry.destination, "move.ws1")
        self.assertEqual(entry.plan_hash, route_plan(self.routes[1]).plan_hash)
        self.assertNotEqual(entry.plan_hash, NO_MORPH.plan_hash)

    def test_without_retrieve_route_as_received(self) -> None:
        """No retrieve.route: the move.<name> entry is sent as received (NO_MORPH)."""
        from gateway.prepare import NO_MORPH

        retrieve = test_move_intake.SubOperationTests.open_retrieve(self)  # type: ignore[arg-type]
        self.successResultOf(self.intake.take(self.writer_for(), INFO, ("GW", retrieve.message_id)))
        ((_, (entry,)),) = self.store.find(sop_instance_uid=test_move_intake.CT_SMALL_UID)
        self.assertEqual(entry.plan_hash, NO_MORPH.plan_hash)


class SyntaxFitTests(SynchronousTestCase):
    """Relayed instances come in the source's syntax: re-encoded into a native one the requester accepted."""

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.scratch = os.path.join(self.tmp, "scratch")

    def contexts(self, *syntaxes: str) -> dict[int, Any]:
        """The requester's accepted contexts: CT Image Storage (SCP role) in each syntax."""
        from gateway.receive import AcceptedContext

        return {
            2 * i + 1: AcceptedContext(context_id=2 * i + 1, abstract_syntax=CT, transfer_syntax=ts, scu_role=False, scp_role=True)
            for i, ts in enumerate(syntaxes)
        }

    def received(self) -> get.ReceivedInstance:
        """CT_small (Explicit VR Little Endian) as received."""
        path = os.path.join(self.tmp, "get-1.dcm")
        shutil.copyfile(CT_FILE, path)
        header = get.read_part10_header(path)
        return get.ReceivedInstance(path, header.sop_class_uid, header.sop_instance_uid, header.transfer_syntax_uid, header.dataset_offset)

    def test_accepted_syntax_is_sent_as_it_is(self) -> None:
        """The requester accepted the instance's own syntax: no copy."""
        instance = self.received()
        fit = get.SyntaxFit(self.contexts(instance.transfer_syntax_uid), self.scratch, lambda f, *a: succeed(f(*a)))
        self.assertIs(self.successResultOf(fit(instance)), instance)

    def test_other_native_syntax_gets_a_re_encoded_copy(self) -> None:
        """Only Implicit VR accepted: the copy is Implicit VR, same SOP Instance, the values unchanged."""
        instance = self.received()
        self.assertNotEqual(instance.transfer_syntax_uid, "1.2.840.10008.1.2")
        fit = get.SyntaxFit(self.contexts("1.2.840.10008.1.2"), self.scratch, lambda f, *a: succeed(f(*a)))
        copy = self.successResultOf(fit(instance))
        self.assertEqual((copy.transfer_syntax_uid, copy.sop_instance_uid), ("1.2.840.10008.1.2", instance.sop_instance_uid))
        self.assertEqual(get.read_part10_header(copy.path).dataset_offset, copy.dataset_offset)
        self.assertEqual(pydicom.dcmread(copy.path).PixelData, pydicom.dcmread(instance.path).PixelData)

    def test_nothing_native_accepted_is_left_to_fail(self) -> None:
        """The requester accepted the class in no native syntax: sent as it is (and counted failed by the store)."""
        instance = self.received()
        fit = get.SyntaxFit(self.contexts("1.2.840.10008.1.2.4.50"), self.scratch, lambda f, *a: succeed(f(*a)))
        self.assertIs(self.successResultOf(fit(instance)), instance)

    def test_chain_removes_the_intermediate_copy_when_a_later_step_fails(self) -> None:
        """Morph then re-encode: a failing second step leaves no first copy behind, and the failure is the result."""
        instance = self.received()
        first = os.path.join(self.tmp, "getmorph-a.dcm")

        def morph(i: get.ReceivedInstance) -> Deferred[get.ReceivedInstance]:
            shutil.copyfile(i.path, first)
            return succeed(get.ReceivedInstance(first, i.sop_class_uid, i.sop_instance_uid, i.transfer_syntax_uid, i.dataset_offset))

        prepare = get.chain(morph, lambda i: fail(OSError("disk full")))
        assert prepare is not None
        self.failureResultOf(prepare(instance), OSError)
        self.assertFalse(os.path.exists(first))
        self.assertTrue(os.path.exists(instance.path))


class AnsweredEventTests(SynchronousTestCase):
    """The C-GET handler tells the observer how it ended (audit: DICOM Instances Transferred; metrics by outcome)."""

    def test_warning_with_counts_failed_uids_and_study(self) -> None:
        """One stored, one refused by the requester: RetrieveAnswered(verb get, warning, counts, failed UID, the study)."""
        from dataclasses import replace
        from types import SimpleNamespace

        from gateway.config.schema import RetrieveConfig
        from gateway.events import RetrieveAnswered
        from tests.unit.qr.test_get import HandlerTests

        seen: list[Any] = []
        source = FakeSource("a", [(CT, "1.1"), ("1.2.840.10008.5.1.4.1.1.4", "1.2")])
        ctx = HandlerTests.make_ctx(self, None, RetrieveConfig(sources=("a",)), source)  # type: ignore[arg-type]
        ctx = replace(ctx, observer=SimpleNamespace(observe=seen.append))
        responder = FakeResponder({CT: 0})
        rq = SimpleNamespace(affected_sop_class_uid=STUDY_GET, message_id=3)
        info = SimpleNamespace(listener="qr", contexts={}, calling_ae_title="VIEWER", peer_address="10.0.0.5:1234")
        self.successResultOf(get.get(info, rq, study_identifier("1.2.3"), responder, ctx))
        [event] = [e for e in seen if isinstance(e, RetrieveAnswered)]
        self.assertEqual(
            (event.verb, event.outcome, event.status, event.completed, event.failed, event.failed_uids, event.study_uids, event.calling_ae_title),
            ("get", "warning", 0xB000, 1, 1, ("1.2",), ("1.2.3",), "VIEWER"),
        )
