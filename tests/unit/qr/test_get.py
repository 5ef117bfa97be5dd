"""Tests for :mod:`gateway.qr.get`: one C-GET driven with a fake requester and fake sources.

The fake source plays a C-GET SCP's side as :class:`gateway.qr.get.ISource`
describes it: it hands the instances it holds to ``on_instance`` one at a
time (waiting for each answer, as a source waits for its C-STORE-RSP),
reports pending counts, and ends with a final response. The fake requester
records the responses and answers each C-STORE sub-operation by SOP class,
or raises :class:`~gateway.associate.NoPresentationContext` for a class it
did not accept.
"""

from __future__ import annotations

from typing import Any, Sequence

from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from gateway.associate import AssociationRejected, NoPresentationContext
from gateway.qr import get
from gateway.qr.context import SubOperations

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
SR = "1.2.840.10008.5.1.4.1.1.88.22"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def study_identifier(study_uid: str = "1.2.3") -> bytes:
    """A Study Root C-GET identifier at STUDY level, Explicit VR Little Endian."""
    from pydicom.dataset import Dataset

    from gateway.dimse.identifier import encode_identifier

    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study_uid
    return encode_identifier(ds, EXPLICIT_LE)


class FakeResponder:
    """The requester's side: records responses; answers stores by SOP class.

    :ivar accepted: SOP class -> the status the requester answers; a class
        not in it has no presentation context.
    :ivar hold: when true, each store waits for the test to fire it.
    """

    def __init__(self, accepted: dict[str, int], hold: bool = False) -> None:
        self.accepted = accepted
        self.hold = hold
        self.pendings: list[SubOperations | None] = []
        self.finals: list[dict[str, Any]] = []
        self.stored: list[str] = []
        self.waiting: list[Deferred[int]] = []
        self._cancelled: Deferred[None] = Deferred()

    def pending(self, status: int, identifier: bytes | None = None, counts: SubOperations | None = None) -> None:
        """Record a pending response."""
        assert status in (0xFF00, 0xFF01)
        self.pendings.append(counts)

    def final(
        self,
        status: int,
        counts: SubOperations | None = None,
        error_comment: str = "",
        failed_uids: Sequence[str] = (),
        identifier: bytes | None = None,
        offending: Sequence[int] = (),
    ) -> None:
        """Record the final response."""
        self.finals.append(dict(status=int(status), counts=counts, comment=error_comment, failed=tuple(failed_uids)))
        self.offending = tuple(offending)

    @property
    def transfer_syntax(self) -> str:
        """Explicit VR Little Endian."""
        return EXPLICIT_LE

    @property
    def cancelled(self) -> Deferred[None]:
        """Fired by :meth:`cancel`."""
        return self._cancelled

    def cancel(self) -> None:
        """The requester sends C-CANCEL-RQ."""
        self._cancelled.callback(None)

    def store(self, path: str, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, dataset_offset: int) -> Deferred[int]:
        """Answer by class, or fail with NoPresentationContext."""
        if sop_class_uid not in self.accepted:
            return fail(NoPresentationContext(f"no context for {sop_class_uid}"))
        self.stored.append(sop_instance_uid)
        if self.hold:
            d: Deferred[int] = Deferred()
            d.addCallback(lambda _: self.accepted[sop_class_uid])
            self.waiting.append(d)
            return d
        return succeed(self.accepted[sop_class_uid])


class FakeSource:
    """A source's C-GET: sends ``instances`` ((class, uid) pairs) then a final response.

    :ivar refuse: the association fails (an exception given) before anything.
    :ivar final_status: the final status when nothing was cancelled.
    :ivar source_failed: UIDs the source itself could not send (counted failed in its responses).
    """

    def __init__(
        self,
        name: str,
        instances: Sequence[tuple[str, str]] = (),
        refuse: Exception | None = None,
        final_status: int | None = None,
        source_failed: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.instances = list(instances)
        self.refuse = refuse
        self.final_status = final_status
        self.source_failed = tuple(source_failed)
        self.answers: list[int] = []
        self.cancels = 0
        self.closed = 0
        self.asked: list[tuple[str, bytes]] = []

    def get(self, sop_class_uid: str, identifier: bytes, on_instance: Any, on_pending: Any) -> Deferred[get.SourceOutcome]:
        """Run the scripted C-GET."""
        self.asked.append((sop_class_uid, identifier))
        if self.refuse is not None:
            return fail(self.refuse)
        return ensureDeferred(self._run(on_instance, on_pending))

    async def _run(self, on_instance: Any, on_pending: Any) -> get.SourceOutcome:
        total = len(self.instances) + len(self.source_failed)
        done = 0
        for sop_class, uid in self.instances:
            if self.cancels:
                return get.SourceOutcome(0xFE00, SubOperations(total - done, done, 0, 0))
            self.answers.append(await on_instance(get.ReceivedInstance(f"/scratch/{uid}", sop_class, uid, EXPLICIT_LE)))
            done += 1
            on_pending(SubOperations(total - done, done, 0, 0))
        failed = len(self.source_failed)
        status = self.final_status if self.final_status is not None else (0xB000 if failed else 0x0000)
        return get.SourceOutcome(status, SubOperations(0, done, failed, 0), self.source_failed)

    def cancel(self) -> None:
        """Record the C-CANCEL-RQ."""
        self.cancels += 1

    def close(self) -> Deferred[None]:
        """Record the release."""
        self.closed += 1
        return succeed(None)


class RetrieveTests(SynchronousTestCase):
    """:func:`gateway.qr.get.retrieve` against fakes."""

    def run_get(self, responder: FakeResponder, *sources: FakeSource) -> list[str]:
        """Run a C-GET over ``sources``; returns the scratch files removed."""
        by_name = {s.name: s for s in sources}
        removed: list[str] = []
        d = ensureDeferred(
            get.retrieve(STUDY_GET, b"identifier", responder, [s.name for s in sources], lambda n, c: by_name[n], removed.append)
        )
        self.successResultOf(d)
        return removed

    def test_all_stored_is_success_with_counts(self) -> None:
        """Every instance stored on the requester: pending counts step down, final 0x0000 with 3 completed."""
        responder = FakeResponder({CT: 0x0000})
        source = FakeSource("a", [(CT, "1.1"), (CT, "1.2"), (CT, "1.3")])
        removed = self.run_get(responder, source)
        self.assertEqual(responder.stored, ["1.1", "1.2", "1.3"])
        self.assertEqual([c.remaining for c in responder.pendings if c], [2, 1, 0])
        self.assertEqual([c.completed for c in responder.pendings if c], [1, 2, 3])
        self.assertEqual(responder.finals, [dict(status=0, counts=SubOperations(0, 3, 0, 0), comment="", failed=())])
        self.assertEqual(removed, ["/scratch/1.1", "/scratch/1.2", "/scratch/1.3"])
        self.assertEqual(source.answers, [0, 0, 0])
        self.assertEqual(source.closed, 1)

    def test_class_not_accepted_by_requester_is_failed_and_listed(self) -> None:
        """An SR the requester accepted no context for is a failed sub-operation in the Failed SOP Instance UID List, final 0xB000 (PS3.4 C.4.3.1.4)."""
        responder = FakeResponder({CT: 0x0000, MR: 0x0000})
        source = FakeSource("a", [(CT, "1.1"), (SR, "1.2"), (MR, "1.3")])
        removed = self.run_get(responder, source)
        self.assertEqual(responder.stored, ["1.1", "1.3"])
        self.assertEqual(responder.finals, [dict(status=0xB000, counts=SubOperations(0, 2, 1, 0), comment="", failed=("1.2",))])
        self.assertIn("/scratch/1.2", removed)

    def test_requester_failure_and_warning_statuses_are_counted(self) -> None:
        """A requester's 0xA700 counts failed (listed) and 0xB007 counts warning; final 0xB000."""
        responder = FakeResponder({CT: 0xA700, MR: 0xB007})
        source = FakeSource("a", [(CT, "1.1"), (MR, "1.2")])
        self.run_get(responder, source)
        self.assertEqual(responder.finals, [dict(status=0xB000, counts=SubOperations(0, 0, 1, 1), comment="", failed=("1.1",))])

    def test_source_failures_are_added_and_listed(self) -> None:
        """What the source could not send is counted failed with its UIDs, after the gateway's own."""
        responder = FakeResponder({CT: 0x0000})
        source = FakeSource("a", [(CT, "1.1"), (SR, "1.2")], source_failed=["1.9"])
        self.run_get(responder, source)
        self.assertEqual(responder.finals, [dict(status=0xB000, counts=SubOperations(0, 1, 2, 0), comment="", failed=("1.2", "1.9"))])

    def test_first_source_down_second_used(self) -> None:
        """A source that cannot be associated is left out; the next one's instances are stored."""
        responder = FakeResponder({CT: 0x0000})
        down = FakeSource("a", refuse=get.SourceUnavailable("connection refused"))
        up = FakeSource("b", [(CT, "1.1")])
        self.run_get(responder, down, up)
        self.assertEqual(responder.finals[0]["status"], 0)
        self.assertEqual(responder.finals[0]["counts"], SubOperations(0, 1, 0, 0))
        self.assertEqual(len(up.asked), 1)

    def test_first_source_without_matches_then_second(self) -> None:
        """A source answering Success with no sub-operation has no match: the next is asked."""
        responder = FakeResponder({CT: 0x0000})
        empty = FakeSource("a")
        full = FakeSource("b", [(CT, "1.1")])
        self.run_get(responder, empty, full)
        self.assertEqual(responder.stored, ["1.1"])
        self.assertEqual(responder.finals[0]["counts"], SubOperations(0, 1, 0, 0))

    def test_source_with_instances_stops_the_search(self) -> None:
        """Once a source has sent instances, later sources are not asked."""
        responder = FakeResponder({CT: 0x0000})
        first = FakeSource("a", [(CT, "1.1")])
        second = FakeSource("b", [(CT, "1.2")])
        self.run_get(responder, first, second)
        self.assertEqual(second.asked, [])

    def test_every_source_down_is_a702_with_comment(self) -> None:
        """No source reachable: 0xA702 (Unable to perform sub-operations) with an Error Comment naming them."""
        responder = FakeResponder({CT: 0x0000})
        self.run_get(
            responder,
            FakeSource("a", refuse=AssociationRejected.__new__(AssociationRejected)),
            FakeSource("b", refuse=get.SourceUnavailable("no C-GET context")),
        )
        [final] = responder.finals
        self.assertEqual(final["status"], 0xA702)
        self.assertIn("b: no C-GET context", final["comment"])
        self.assertLessEqual(len(final["comment"]), 64)

    def test_single_source_refusal_is_relayed(self) -> None:
        """A source's own failure status (0xA900) with nothing done is relayed as it is."""
        responder = FakeResponder({CT: 0x0000})
        self.run_get(responder, FakeSource("a", final_status=0xA900))
        self.assertEqual(responder.finals[0]["status"], 0xA900)

    def test_no_match_anywhere_is_success_with_zero_counts(self) -> None:
        """No source has a match: Success with every count zero."""
        responder = FakeResponder({CT: 0x0000})
        self.run_get(responder, FakeSource("a"), FakeSource("b"))
        self.assertEqual(responder.finals, [dict(status=0, counts=SubOperations(0, 0, 0, 0), comment="", failed=())])

    def test_cancel_reaches_the_source_and_ends_fe00(self) -> None:
        """C-CANCEL mid-retrieve: the source hears C-CANCEL, no further store is made, final 0xFE00 with the counts so far."""
        responder = FakeResponder({CT: 0x0000}, hold=True)
        source = FakeSource("a", [(CT, "1.1"), (CT, "1.2"), (CT, "1.3")])
        removed: list[str] = []
        d = ensureDeferred(get.retrieve(STUDY_GET, b"id", responder, ["a"], lambda n, c: source, removed.append))
        self.assertEqual(responder.stored, ["1.1"])
        responder.cancel()
        self.assertEqual(source.cancels, 1)
        responder.waiting[0].callback(None)
        self.successResultOf(d)
        self.assertEqual(responder.stored, ["1.1"])
        [final] = responder.finals
        self.assertEqual(final["status"], 0xFE00)
        self.assertEqual(final["counts"], SubOperations(2, 1, 0, 0))

    def test_every_sub_operation_failed_is_a702_with_the_list(self) -> None:
        """The requester took none: one final, a Failure (0xA702: the SCU reads it as all unsuccessful, PS3.4 C.4.3.2) listing them; the next source is not asked."""
        responder = FakeResponder({})
        second = FakeSource("b", [(CT, "1.3")])
        self.run_get(responder, FakeSource("a", [(CT, "1.1"), (MR, "1.2")]), second)
        self.assertEqual(responder.finals, [dict(status=0xA702, counts=SubOperations(0, 0, 2, 0), comment="", failed=("1.1", "1.2"))])
        self.assertEqual(second.asked, [])


class DeadlineTests(SynchronousTestCase):
    """``retrieve.timeout`` ends a C-GET that runs too long."""

    def test_deadline_cancels_the_source_and_counts_the_rest_failed(self) -> None:
        """Past the deadline the source is cancelled; what it had left is failed; final 0xB000 with an Error Comment."""
        from twisted.internet.task import Clock

        clock = Clock()
        responder = FakeResponder({CT: 0x0000}, hold=True)
        source = FakeSource("a", [(CT, "1.1"), (CT, "1.2"), (CT, "1.3")])
        d = ensureDeferred(get.retrieve(STUDY_GET, b"id", responder, ["a"], lambda n, c: source, lambda p: None, clock, 30.0))
        clock.advance(29)
        self.assertEqual(source.cancels, 0)
        clock.advance(1)
        self.assertEqual(source.cancels, 1)
        responder.waiting[0].callback(None)
        self.successResultOf(d)
        [final] = responder.finals
        self.assertEqual(final["status"], 0xB000)
        self.assertEqual(final["counts"], SubOperations(0, 1, 2, 0))
        self.assertIn("retrieve.timeout", final["comment"])

    def test_finished_in_time_leaves_no_timer(self) -> None:
        """A C-GET done before its deadline cancels the timer."""
        from twisted.internet.task import Clock

        clock = Clock()
        responder = FakeResponder({CT: 0x0000})
        d = ensureDeferred(get.retrieve(STUDY_GET, b"id", responder, ["a"], lambda n, c: FakeSource("a", [(CT, "1.1")]), lambda p: None, clock, 30.0))
        self.successResultOf(d)
        self.assertEqual(clock.getDelayedCalls(), [])


class ProposalTests(SynchronousTestCase):
    """:func:`gateway.qr.get.source_proposals`."""

    def test_requester_classes_first_with_their_syntaxes_and_scp_role(self) -> None:
        """The GET class, then the requester's SCP-role classes in its syntaxes, then the common ones; every storage class SCP role."""
        from gateway.ul.negotiate import AcceptedContext

        contexts = {
            1: AcceptedContext(1, STUDY_GET, EXPLICIT_LE, True, False),
            3: AcceptedContext(3, MR, "1.2.840.10008.1.2.4.50", False, True),
            5: AcceptedContext(5, MR, EXPLICIT_LE, False, True),
            7: AcceptedContext(7, SR, EXPLICIT_LE, True, False),  # SCU only: not a sub-operation class
        }
        proposals, roles = get.source_proposals(STUDY_GET, contexts)
        self.assertEqual(proposals[0][0], STUDY_GET)
        self.assertEqual(proposals[1], (MR, ["1.2.840.10008.1.2.4.50", EXPLICIT_LE]))
        self.assertIn((CT, [EXPLICIT_LE, "1.2.840.10008.1.2"]), proposals)
        self.assertEqual(len([p for p in proposals if p[0] == MR]), 1)
        self.assertEqual({r.sop_class_uid for r in roles}, {c for c, _ in proposals[1:]})
        self.assertTrue(all(r.scp_role and not r.scu_role for r in roles))
        self.assertLessEqual(len(proposals), 127)


class HandlerTests(SynchronousTestCase):
    """:func:`gateway.qr.get.get`, the handler ``scp.py`` calls."""

    def make_ctx(self, listener_retrieve: Any, top_retrieve: Any, source: FakeSource) -> Any:
        """A QRContext with a minimal configuration and a fake source opener."""
        from types import SimpleNamespace

        from gateway.qr.context import QRContext

        listener = SimpleNamespace(name="qr", retrieve=listener_retrieve)
        config = SimpleNamespace(
            listen=(listener,),
            retrieve=top_retrieve,
            retrieve_for=lambda item: item.retrieve if item.retrieve is not None else top_retrieve,
            spool=SimpleNamespace(path="/nonexistent"),
            destinations=(),
        )
        self.opened: list[str] = []

        def open_source(name: str, sop_class: str) -> FakeSource:
            self.opened.append(name)
            return source

        from twisted.internet.task import Clock

        return QRContext(config=lambda: config, journal=None, run=None, reactor=Clock(), wall=lambda: 0.0, extra={"get.open_source": open_source})

    def test_listener_sources_override_the_top_level(self) -> None:
        """The listener's ``retrieve.sources`` are used over the top level's."""
        from types import SimpleNamespace

        from gateway.config.schema import RetrieveConfig

        source = FakeSource("b", [(CT, "1.1")])
        ctx = self.make_ctx(RetrieveConfig(sources=("b",)), RetrieveConfig(sources=("a",)), source)
        responder = FakeResponder({CT: 0})
        rq = SimpleNamespace(affected_sop_class_uid=STUDY_GET, message_id=3)
        self.successResultOf(get.get(SimpleNamespace(listener="qr", contexts={}), rq, study_identifier(), responder, ctx))
        self.assertEqual(self.opened, ["b"])
        self.assertEqual(responder.finals[0]["status"], 0)

    def test_no_retrieve_configured_is_a702(self) -> None:
        """Without ``retrieve`` the C-GET is refused 0xA702 with an Error Comment."""
        from types import SimpleNamespace

        ctx = self.make_ctx(None, None, FakeSource("a"))
        responder = FakeResponder({})
        rq = SimpleNamespace(affected_sop_class_uid=STUDY_GET, message_id=3)
        self.successResultOf(get.get(SimpleNamespace(listener="qr", contexts={}), rq, study_identifier(), responder, ctx))
        self.assertEqual(responder.finals[0]["status"], 0xA702)
        self.assertTrue(responder.finals[0]["comment"])

    def test_identifier_without_the_study_uid_is_refused_before_any_source(self) -> None:
        """A STUDY-level C-GET without a Study Instance UID is refused 0xC000-class with an Error Comment; no source is opened (PS3.4 C.4.3.1.4)."""
        from types import SimpleNamespace

        from pydicom.dataset import Dataset

        from gateway.config.schema import RetrieveConfig
        from gateway.dimse.identifier import encode_identifier

        ctx = self.make_ctx(None, RetrieveConfig(sources=("a",)), FakeSource("a", [(CT, "1.1")]))
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        responder = FakeResponder({CT: 0})
        rq = SimpleNamespace(affected_sop_class_uid=STUDY_GET, message_id=3)
        self.successResultOf(get.get(SimpleNamespace(listener="qr", contexts={}), rq, encode_identifier(ds, EXPLICIT_LE), responder, ctx))
        [final] = responder.finals
        self.assertEqual(final["status"] & 0xF000, 0xC000)
        self.assertTrue(final["comment"])
        self.assertEqual(responder.offending, (0x0020000D,))  # (0000,0901), PS3.7 9.1.3.1
        self.assertEqual(self.opened, [])


class BrokenSource(FakeSource):
    """Sends its first instance, reports a pending response, then its association aborts."""

    async def _run(self, on_instance: Any, on_pending: Any) -> get.SourceOutcome:
        sop_class, uid = self.instances[0]
        self.answers.append(await on_instance(get.ReceivedInstance(f"/scratch/{uid}", sop_class, uid, EXPLICIT_LE)))
        on_pending(SubOperations(len(self.instances) - 1, 1, 0, 0))
        from gateway.associate import AssociationAborted

        raise AssociationAborted("peer aborted")


class PartWayTests(SynchronousTestCase):
    """A source that fails after sending some instances."""

    def test_source_failing_part_way_is_not_replaced_and_counts_the_rest_failed(self) -> None:
        """No duplicates from the next source: the C-GET ends 0xB000, what the source had left counted failed, with an Error Comment."""
        responder = FakeResponder({CT: 0x0000})
        broken = BrokenSource("a", [(CT, "1.1"), (CT, "1.2"), (CT, "1.3")])
        spare = FakeSource("b", [(CT, "1.1"), (CT, "1.2"), (CT, "1.3")])
        by_name = {"a": broken, "b": spare}
        d = ensureDeferred(get.retrieve(STUDY_GET, b"id", responder, ["a", "b"], lambda n, c: by_name[n], lambda p: None))
        self.successResultOf(d)
        self.assertEqual(spare.asked, [])
        self.assertEqual(broken.closed, 1)
        [final] = responder.finals
        self.assertEqual(final["status"], 0xB000)
        self.assertEqual(final["counts"], SubOperations(0, 1, 2, 0))
        self.assertIn("a", final["comment"])


class JournalTests(SynchronousTestCase):
    """A C-GET is journaled as a retrieve (kind ``get``) and finished with its outcome."""

    def run_with_store(self, source: FakeSource, accepted: dict[str, int]) -> tuple[Any, FakeResponder]:
        """Run a C-GET with a MemoryQueueStore journal; returns the store and the responder."""
        from types import SimpleNamespace

        from twisted.internet.task import Clock

        from gateway.blocking import SynchronousRunner
        from gateway.config.schema import RetrieveConfig
        from gateway.qr.context import QRContext
        from gateway.queue.memory import MemoryQueueStore

        store = MemoryQueueStore()
        settings = RetrieveConfig(sources=("a",))
        config = SimpleNamespace(listen=(), retrieve=settings, spool=SimpleNamespace(path="/nonexistent"), destinations=())
        ctx = QRContext(
            config=lambda: config, journal=store, run=SynchronousRunner(), reactor=Clock(), wall=lambda: 1000.0,
            extra={"get.open_source": lambda n, c: source},
        )
        responder = FakeResponder(accepted)
        rq = SimpleNamespace(affected_sop_class_uid=STUDY_GET, message_id=9)
        info = SimpleNamespace(listener="qr", contexts={}, calling_ae_title="VIEWER")
        self.successResultOf(get.get(info, rq, study_identifier(), responder, ctx))
        return store, responder

    def test_done_retrieve_on_record(self) -> None:
        """A completed C-GET is on record DONE, kind get, with the requester, level and sources."""
        from gateway.queue.retrieves import RetrieveState

        store, responder = self.run_with_store(FakeSource("a", [(CT, "1.1")]), {CT: 0})
        [record] = store.retrieves()
        self.assertEqual(record.state, RetrieveState.DONE)
        self.assertEqual(
            (record.request.kind, record.request.requester_ae_title, record.request.level, record.request.sources, record.request.requester_message_id),
            ("get", "VIEWER", "STUDY", ("a",), 9),
        )
        self.assertEqual(responder.finals[0]["status"], 0)

    def test_failed_retrieve_on_record_with_its_reason(self) -> None:
        """A C-GET that could not be done is on record FAILED with the Error Comment."""
        from gateway.queue.retrieves import RetrieveState

        store, _ = self.run_with_store(FakeSource("a", refuse=get.SourceUnavailable("down")), {CT: 0})
        [record] = store.retrieves()
        self.assertEqual(record.state, RetrieveState.FAILED)
        self.assertIn("down", record.error)
