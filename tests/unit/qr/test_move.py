"""Tests for :mod:`gateway.qr.move`: C-MOVE through the gateway (issue 16).

The sources are fakes (:class:`FakeLink`: scripted C-FIND matches, a C-MOVE
whose final response the test fires); the journal is :class:`FakeJournal`, a
small stand-in for :class:`~gateway.queue.retrieves.IRetrieveJournal` whose
items the test moves on as the intake and the queue would. Time is a
:class:`task.Clock`; nothing sleeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence
from unittest import mock

from pydicom.dataset import Dataset
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.blocking import SynchronousRunner
from gateway.config.load import load_config_text
from gateway.config.schema import RetrieveConfig
from gateway.dimse.identifier import encode_identifier
from gateway.qr import move as qrmove
from gateway.qr.context import QRContext, SubOperations
from gateway.queue.retrieves import (
    ItemState,
    NewRetrieve,
    Retrieve,
    RetrieveIdsExhausted,
    RetrieveProgress,
    RetrieveState,
)

IMPLICIT = "1.2.840.10008.1.2"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
CT = "1.2.840.10008.5.1.4.1.1.2"

CONFIG_TEXT = """\
ae_title: GW
listen:
  - host: 127.0.0.1
    port: 0
    name: qr
spool: spool
destinations:
  archive1: {ae_title: ARCH1, host: 10.0.0.1, port: 104}
  archive2: {ae_title: ARCH2, host: 10.0.0.2, port: 104}
modalities:
  ws1: {ae_title: WS1, host: 10.0.1.1, port: 104}
  research: {ae_title: RESEARCH, host: 10.0.1.2, port: 104}
"""


def make_config(**retrieve: Any) -> Any:
    """The test configuration with a top-level ``retrieve`` built from ``retrieve``."""
    config = load_config_text(CONFIG_TEXT, "gateway.yaml", "/srv/gw/etc")
    settings = {"sources": ("archive1", "archive2"), **retrieve}
    return replace(config, retrieve=RetrieveConfig(**settings))


def identifier(level: str = "STUDY", **keys: str) -> bytes:
    """A C-MOVE (or C-FIND response) identifier in Implicit VR Little Endian."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return encode_identifier(ds, IMPLICIT)


def match(uid: str, study: str = "1.2.3") -> Dataset:
    """A locating C-FIND pending identifier naming instance ``uid``."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID = study
    ds.SOPInstanceUID = uid
    ds.SOPClassUID = CT
    return ds


@dataclass
class FakeLink:
    """A scripted source association."""

    name: str
    matches: Sequence[Dataset] = ()
    find_status: int = 0x0000
    finds: list[Dataset] = field(default_factory=list)
    moves: list[tuple[str, str, int | None]] = field(default_factory=list)
    move_result: "Deferred[Any]" = field(default_factory=Deferred)
    #: The results of the second and later C-MOVEs (a new Deferred each), fired by the test.
    later_results: list["Deferred[Any]"] = field(default_factory=list)
    move_identifiers: list[Dataset] = field(default_factory=list)
    on_pending: Callable[[SubOperations], None] | None = None
    cancels: int = 0
    released: int = 0
    aborted: int = 0

    def find(self, sop_class_uid: str, data: Dataset, on_match: Callable[[Dataset], None]) -> "Deferred[int]":
        """Hand every scripted match over, then the final status."""
        self.finds.append(data)
        for m in self.matches:
            on_match(m)
        return succeed(self.find_status)

    def move(self, sop_class_uid: str, destination: str, data: Dataset, message_id: int | None,
             on_pending: Callable[[SubOperations], None]) -> "Deferred[Any]":
        """Record the C-MOVE; the test fires :attr:`move_result`."""
        self.moves.append((sop_class_uid, destination, message_id))
        self.move_identifiers.append(data)
        self.on_pending = on_pending
        if len(self.moves) == 1:
            return self.move_result
        self.later_results.append(Deferred())
        return self.later_results[-1]

    def cancel(self) -> None:
        """Count C-CANCELs."""
        self.cancels += 1

    def release(self) -> "Deferred[None]":
        """Count releases."""
        self.released += 1
        return succeed(None)

    def abort(self) -> None:
        """Count aborts."""
        self.aborted += 1


class FakeJournal:
    """The retrieve side of the journal, in dicts (items moved on by the test)."""

    node = "n1"

    def __init__(self, exhausted: bool = False) -> None:
        self.exhausted = exhausted
        self.opened: list[NewRetrieve] = []
        self.items: dict[int, dict[str, ItemState]] = {}
        self.reasons: dict[tuple[int, str], str] = {}
        self.finished: dict[int, RetrieveState] = {}

    def open_retrieve(self, new: NewRetrieve, now: float) -> Retrieve:
        """Journal it with message ID 100 + its index."""
        if self.exhausted:
            raise RetrieveIdsExhausted()
        self.opened.append(new)
        retrieve_id = len(self.opened)
        self.items[retrieve_id] = {r.sop_instance_uid: ItemState.EXPECTED for r in new.expected}
        return Retrieve(retrieve_id, new, 100 + retrieve_id, self.node, RetrieveState.OPEN, now)

    def item_outcome(
        self, retrieve_id: int, uid: str, state: ItemState, reason: str, now: float, expected_only: bool = False
    ) -> None:
        """Record an item's end (only for an item not ended yet; with ``expected_only``, never received)."""
        allowed = (ItemState.EXPECTED,) if expected_only else (ItemState.EXPECTED, ItemState.RECEIVED)
        if self.items[retrieve_id].get(uid) in allowed:
            self.items[retrieve_id][uid] = state
            self.reasons[(retrieve_id, uid)] = reason

    def fail_expected(self, retrieve_id: int, reason: str, now: float) -> tuple[str, ...]:
        """End the EXPECTED items FAILED; their UIDs."""
        ended = tuple(uid for uid, s in self.items[retrieve_id].items() if s is ItemState.EXPECTED)
        for uid in ended:
            self.items[retrieve_id][uid] = ItemState.FAILED
            self.reasons[(retrieve_id, uid)] = reason
        return ended

    def progress(self, retrieve_id: int) -> RetrieveProgress:
        """The counts from the items' states."""
        states = list(self.items[retrieve_id].items())
        return RetrieveProgress(
            remaining=sum(1 for _, s in states if s in (ItemState.EXPECTED, ItemState.RECEIVED)),
            completed=sum(1 for _, s in states if s is ItemState.COMPLETED),
            failed=sum(1 for _, s in states if s is ItemState.FAILED),
            warning=sum(1 for _, s in states if s is ItemState.WARNING),
            failed_uids=tuple(uid for uid, s in states if s is ItemState.FAILED),
        )

    def finish_retrieve(self, retrieve_id: int, state: RetrieveState, error: str, now: float) -> None:
        """Record the end."""
        self.finished[retrieve_id] = state


@dataclass
class FakeResponder:
    """Collects the responses; :attr:`cancel` fires ``cancelled``."""

    transfer_syntax: str = IMPLICIT
    pendings: list[SubOperations | None] = field(default_factory=list)
    finals: list[tuple[int, SubOperations | None, str, tuple[str, ...]]] = field(default_factory=list)
    cancelled: "Deferred[None]" = field(default_factory=Deferred)

    def pending(self, status: int, identifier: bytes | None = None, counts: SubOperations | None = None) -> None:
        """Keep a pending response's counts."""
        self.pendings.append(counts)

    def final(self, status: int, counts: SubOperations | None = None, error_comment: str = "",
              failed_uids: Sequence[str] = (), identifier: bytes | None = None, offending: Sequence[int] = ()) -> None:
        """Keep the final response (and its Offending Element tags)."""
        self.finals.append((status, counts, error_comment, tuple(failed_uids)))
        self.offending = tuple(offending)

    def store(self, *args: Any) -> "Deferred[int]":
        """Not used by C-MOVE."""
        raise AssertionError("C-MOVE never stores on the requester's association")


@dataclass(frozen=True)
class FakeMoveRQ:
    """The C-MOVE-RQ fields move.py reads."""

    message_id: int = 7
    affected_sop_class_uid: str = STUDY_MOVE
    move_destination: str = "WS1"


@dataclass(frozen=True)
class FakeInfo:
    """The association fields move.py reads."""

    calling_ae_title: str = "VIEWER"
    listener: str = "qr"


class MoveTestsMixin:
    """Building a C-MOVE with fakes."""

    def setUp(self) -> None:
        """A clock, a journal, two scripted sources."""
        self.clock = Clock()
        self.journal = FakeJournal()
        self.links = {
            "archive1": FakeLink("archive1", matches=[match("1.1"), match("1.2"), match("1.3")]),
            # archive2 holds only what archive1 (first in the list) holds: it has no share.
            "archive2": FakeLink("archive2", matches=[match("1.2")]),
        }
        self.responder = FakeResponder()
        self.opened: list[str] = []
        self.events: list[Any] = []
        self.observer = mock.Mock(observe=self.events.append)

    def answered(self) -> Any:
        """The one RetrieveAnswered observed."""
        [answered] = [e for e in self.events if type(e).__name__ == "RetrieveAnswered"]
        return answered

    def open_source(self, ctx: QRContext, destination: Any, classes: Sequence[str]) -> "Deferred[Any]":
        """Hand out the scripted link of ``destination``; one named ``down`` cannot be reached."""
        self.opened.append(destination.name)
        link = self.links.get(destination.name)
        if link is None:
            return fail(ConnectionRefusedError(destination.name))
        return succeed(link)

    def run_move(self, rq: FakeMoveRQ = FakeMoveRQ(), **retrieve: Any) -> "Deferred[None]":
        """Start ``move.move`` with the fakes and the configuration's ``retrieve`` from ``retrieve``."""
        config = make_config(**retrieve)
        ctx = QRContext(
            config=lambda: config,
            journal=self.journal,
            run=SynchronousRunner(),
            reactor=self.clock,
            wall=self.clock.seconds,
            ae_title="GW",
            extra={"open_source": self.open_source},
            observer=self.observer,
        )
        return qrmove.move(FakeInfo(), rq, identifier(StudyInstanceUID="1.2.3"), self.responder, ctx)


class DestinationTests(MoveTestsMixin, SynchronousTestCase):
    """The Move Destination check (PS3.4 C.4.2.1.5)."""

    def test_unknown_destination_is_a801(self) -> None:
        """A Move Destination that is no ``modalities`` entry's AE title gets 0xA801 and no source is asked."""
        self.successResultOf(self.run_move(FakeMoveRQ(move_destination="NOBODY")))
        self.assertEqual([f[0] for f in self.responder.finals], [0xA801])
        self.assertEqual(self.opened, [])
        self.assertEqual((self.answered().outcome, self.answered().move_destination), ("refused", "NOBODY"))

    def test_destination_outside_allowed_destinations_is_a801(self) -> None:
        """An entry the ``allowed_destinations`` patterns do not match is refused as unknown."""
        self.successResultOf(self.run_move(FakeMoveRQ(move_destination="RESEARCH"), allowed_destinations=("ws*",)))
        self.assertEqual([f[0] for f in self.responder.finals], [0xA801])

    def test_allowed_destination_padded_ae_title(self) -> None:
        """A padded Move Destination matching an allowed entry is accepted (trailing spaces are not significant)."""
        config = make_config(allowed_destinations=("ws*",))
        retrieve = config.retrieve
        self.assertEqual(qrmove.find_modality(config, retrieve, "WS1 ").name, "ws1")  # type: ignore[union-attr]


class IdentifierTests(MoveTestsMixin, SynchronousTestCase):
    """The request's identifier is checked before any source is asked (PS3.4 C.4.2.2.1)."""

    def test_study_level_without_study_uid_is_refused(self) -> None:
        """A STUDY-level C-MOVE without Study Instance UID: a 0xC000-class failure with an Error Comment, no source asked."""
        config = make_config()
        ctx = QRContext(config=lambda: config, journal=self.journal, run=SynchronousRunner(), reactor=self.clock,
                        wall=self.clock.seconds, ae_title="GW", extra={"open_source": self.open_source})
        self.successResultOf(qrmove.move(FakeInfo(), FakeMoveRQ(), identifier(PatientID="P1"), self.responder, ctx))
        [(status, _, comment, _)] = self.responder.finals
        self.assertEqual(status & 0xF000, 0xC000)
        self.assertTrue(comment)
        self.assertEqual(self.responder.offending, (0x0020000D,))  # (0000,0901), PS3.7 9.1.4.1
        self.assertEqual(self.opened, [])


@dataclass
class FakeResponse:
    """A QRResponse as :class:`gateway.associate.QRStream` yields it."""

    command: Any
    identifier: bytes | None = None
    transfer_syntax: str = IMPLICIT

    @property
    def status(self) -> int:
        """The command's status."""
        return int(self.command.status)

    @property
    def pending(self) -> bool:
        """0xFF00/0xFF01."""
        return self.status in (0xFF00, 0xFF01)

    def dataset(self) -> Dataset:
        """The identifier decoded."""
        from gateway.dimse.identifier import decode_identifier

        assert self.identifier is not None
        return decode_identifier(self.identifier, self.transfer_syntax)


class FakeStream:
    """Scripted responses, handed out by ``next``."""

    def __init__(self, responses: Sequence[FakeResponse]) -> None:
        self.responses = list(responses)
        self.cancelled = 0

    def next(self) -> "Deferred[Any]":
        """The next scripted response."""
        return succeed(self.responses.pop(0) if self.responses else None)

    def cancel(self) -> None:
        """Count C-CANCELs."""
        self.cancelled += 1


class AssociationLinkTests(SynchronousTestCase):
    """:class:`gateway.qr.move.AssociationLink` over a ClientAssociation's Q/R streams."""

    def test_find_relays_matches_and_returns_the_final_status(self) -> None:
        """Each pending response's identifier reaches on_match as a Dataset; the final's status is the result."""
        from gateway.dimse.commands import CFindRSP

        stream = FakeStream([
            FakeResponse(CFindRSP(1, 0xFF00, has_dataset=True), identifier("IMAGE", SOPInstanceUID="1.1")),
            FakeResponse(CFindRSP(1, 0x0000)),
        ])
        association = mock.Mock(find=mock.Mock(return_value=stream), is_open=True)
        link = qrmove.AssociationLink(association)
        seen: list[str] = []
        status = self.successResultOf(link.find(STUDY_FIND, Dataset(), lambda ds: seen.append(ds.SOPInstanceUID)))
        self.assertEqual((status, seen), (0x0000, ["1.1"]))

    def test_move_uses_our_message_id_and_reads_the_failed_uid_list(self) -> None:
        """The journal's Message ID goes on the C-MOVE-RQ; pending counts are relayed; the final's Failed SOP Instance UID List is read."""
        from gateway.dimse.commands import CMoveRSP

        failed = Dataset()
        failed.FailedSOPInstanceUIDList = ["1.2", "1.3"]
        stream = FakeStream([
            FakeResponse(CMoveRSP(101, 0xFF00, remaining=2, completed=1, failed=0, warning=0)),
            FakeResponse(CMoveRSP(101, 0xB000, completed=1, failed=2, warning=0, has_dataset=True), encode_identifier(failed, IMPLICIT)),
        ])
        association = mock.Mock(move=mock.Mock(return_value=stream), is_open=True)
        link = qrmove.AssociationLink(association)
        pendings: list[SubOperations] = []
        result = self.successResultOf(link.move(STUDY_MOVE, "GW", Dataset(), 101, pendings.append))
        association.move.assert_called_once_with(STUDY_MOVE, "GW", mock.ANY, message_id=101)
        self.assertEqual(pendings, [SubOperations(2, 1, 0, 0)])
        self.assertEqual((result.status, result.counts, result.failed_uids), (0xB000, SubOperations(None, 1, 2, 0), ("1.2", "1.3")))
        link.cancel()
        self.assertEqual(stream.cancelled, 1)


class RelayTests(MoveTestsMixin, SynchronousTestCase):
    """``relay``: the source moves to the gateway; the journal counts."""

    def test_relay_journals_located_instances_and_moves_to_the_gateway(self) -> None:
        """The retrieve expects the located UIDs of the first source; the source is asked to move to GW with the journal's message ID."""
        self.run_move()
        [new] = self.journal.opened
        self.assertEqual([r.sop_instance_uid for r in new.expected], ["1.1", "1.2", "1.3"])
        self.assertEqual(new.destination, "ws1")
        self.assertEqual(new.sources, ("archive1",))
        self.assertEqual(new.requester_message_id, 7)
        self.assertEqual(self.links["archive1"].moves, [(STUDY_MOVE, "GW", 101)])
        self.assertEqual(self.links["archive2"].moves, [])
        # Every source is asked (in parallel); archive2, with nothing archive1 lacks, is released unused.
        self.assertEqual(self.opened, ["archive1", "archive2"])
        self.assertEqual(self.links["archive2"].released, 1)

    def test_locating_identifier_is_image_level(self) -> None:
        """The locating C-FIND keeps the request's keys at IMAGE level and asks for SOP Instance UID."""
        self.run_move()
        ds = self.links["archive1"].finds[0]
        self.assertEqual(ds.QueryRetrieveLevel, "IMAGE")
        self.assertEqual(ds.StudyInstanceUID, "1.2.3")
        self.assertIn("SOPInstanceUID", ds)

    def test_pending_counts_then_final_success(self) -> None:
        """Pending responses carry the journal's counts every second; the final comes when nothing remains."""
        d = self.run_move()
        items = self.journal.items[1]
        items["1.1"] = ItemState.COMPLETED
        self.clock.advance(1)
        self.assertEqual(self.responder.pendings[-1], SubOperations(2, 1, 0, 0))
        items["1.2"] = ItemState.COMPLETED
        items["1.3"] = ItemState.COMPLETED
        self.clock.advance(1)
        self.assertNoResult(d)  # the grace for the move destination's release
        self.links["archive1"].move_result.callback(qrmove.SourceMoveResult(0x0000, SubOperations(0, 3, 0, 0)))
        self.clock.advance(qrmove.RELEASE_GRACE)
        self.successResultOf(d)
        self.assertEqual(self.responder.finals, [(0x0000, SubOperations(0, 3, 0, 0), "", ())])
        self.assertEqual(self.journal.finished, {1: RetrieveState.DONE})
        self.assertEqual(self.links["archive1"].released, 1)
        answered = self.answered()
        self.assertEqual(
            (answered.outcome, answered.completed, answered.destination, answered.sources, answered.study_uids, answered.level),
            ("success", 3, "ws1", ("archive1",), ("1.2.3",), "STUDY"),
        )
        located = [e for e in self.events if type(e).__name__ == "QuerySourceAnswered"]
        self.assertEqual(
            [(e.destination, e.ok, e.results) for e in located], [("archive1", True, 3), ("archive2", True, 1)]
        )

    def test_failures_give_b000_and_the_failed_uid_list(self) -> None:
        """A failed sub-operation makes the final 0xB000 with the Failed SOP Instance UID List."""
        d = self.run_move()
        items = self.journal.items[1]
        items.update({"1.1": ItemState.COMPLETED, "1.2": ItemState.FAILED, "1.3": ItemState.COMPLETED})
        self.clock.advance(1)
        self.clock.advance(qrmove.RELEASE_GRACE)
        self.assertEqual(len(self.responder.finals), 1)  # answered; the source's association waits for its end
        self.links["archive1"].move_result.callback(qrmove.SourceMoveResult(0xB000, SubOperations(0, 2, 1, 0)))
        self.successResultOf(d)
        self.assertEqual(self.responder.finals, [(0xB000, SubOperations(0, 2, 1, 0), "", ("1.2",))])

    def test_source_failed_uids_are_recorded_failed(self) -> None:
        """The UIDs the source's final response lists as failed end FAILED at once, not at the deadline."""
        d = self.run_move()
        items = self.journal.items[1]
        items.update({"1.1": ItemState.COMPLETED, "1.2": ItemState.COMPLETED})
        self.links["archive1"].move_result.callback(qrmove.SourceMoveResult(0xB000, SubOperations(0, 2, 1, 0), ("1.3",)))
        self.clock.advance(qrmove.RELEASE_GRACE)
        self.successResultOf(d)
        self.assertEqual(self.responder.finals, [(0xB000, SubOperations(0, 2, 1, 0), "", ("1.3",))])

    def test_source_move_refused_fails_every_item(self) -> None:
        """A source that refuses the C-MOVE outright (nothing sent) fails all items: 0xA702, every UID listed."""
        d = self.run_move()
        self.links["archive1"].move_result.callback(qrmove.SourceMoveResult(0xA801, SubOperations(None, 0, 0, 0)))
        self.clock.advance(qrmove.RELEASE_GRACE)
        self.successResultOf(d)
        [(status, counts, _, failed)] = self.responder.finals
        self.assertEqual((status, counts, failed), (0xA702, SubOperations(0, 0, 3, 0), ("1.1", "1.2", "1.3")))

    def test_timeout_fails_the_remaining(self) -> None:
        """At ``retrieve.timeout`` the final response counts what remains as failed."""
        d = self.run_move(timeout=5.0)
        self.journal.items[1]["1.1"] = ItemState.COMPLETED
        self.clock.advance(3)
        self.assertNoResult(d)
        self.clock.advance(3)
        [(status, counts, comment, _)] = self.responder.finals
        self.assertEqual((status, counts), (0xB000, SubOperations(0, 1, 2, 0)))
        self.assertIn("timeout", comment)
        # The source, still moving, is cancelled and given SOURCE_END_WAIT, then aborted.
        self.assertEqual(self.links["archive1"].cancels, 1)
        self.clock.advance(qrmove.SOURCE_END_WAIT)
        self.successResultOf(d)
        self.assertEqual(self.links["archive1"].aborted, 1)

    def test_source_done_but_instances_missing_ends_after_the_stall(self) -> None:
        """The source ended (here: its association broke) and nothing moves for STALL_AFTER_SOURCE: the rest count failed, long before the timeout."""
        d = self.run_move()
        self.journal.items[1]["1.1"] = ItemState.COMPLETED
        self.links["archive1"].move_result.errback(ConnectionResetError("gone"))
        self.clock.advance(1)
        self.assertEqual(self.journal.items[1]["1.2"], ItemState.EXPECTED)  # nothing marked one by one
        self.journal.items[1]["1.2"] = ItemState.COMPLETED  # a change restarts the stall
        for _ in range(int(qrmove.STALL_AFTER_SOURCE) - 1):
            self.clock.advance(1)
        self.assertNoResult(d)
        for _ in range(3):
            self.clock.advance(1)
        self.successResultOf(d)
        [(status, counts, comment, failed)] = self.responder.finals
        self.assertEqual((status, counts), (0xB000, SubOperations(0, 2, 1, 0)))
        self.assertIn("Source finished", comment)
        self.assertEqual(failed, ("1.3",))  # never received: ended failed one by one, so listed

    def test_cancel_reaches_the_source_and_ends_fe00(self) -> None:
        """C-CANCEL cancels the source's C-MOVE and ends 0xFE00 with the counts so far."""
        d = self.run_move()
        self.journal.items[1]["1.1"] = ItemState.COMPLETED
        self.responder.cancelled.callback(None)
        self.assertEqual(self.links["archive1"].cancels, 1)
        self.assertEqual(self.responder.finals, [(0xFE00, SubOperations(2, 1, 0, 0), "", ())])
        self.assertEqual(self.journal.finished, {1: RetrieveState.CANCELLED})
        # The source's association is released once its C-MOVE has ended (0xFE00), not before.
        self.assertEqual(self.links["archive1"].released, 0)
        self.links["archive1"].move_result.callback(qrmove.SourceMoveResult(0xFE00, SubOperations(2, 1, 0, 0)))
        self.successResultOf(d)
        self.assertEqual((self.links["archive1"].released, self.links["archive1"].aborted), (1, 0))

    def test_source_that_ignores_cancel_is_aborted(self) -> None:
        """A source that does not end its C-MOVE within SOURCE_END_WAIT of the C-CANCEL is aborted, not released."""
        d = self.run_move()
        self.responder.cancelled.callback(None)
        self.assertEqual([f[0] for f in self.responder.finals], [0xFE00])
        self.assertNoResult(d)
        self.clock.advance(qrmove.SOURCE_END_WAIT)
        self.successResultOf(d)
        self.assertEqual((self.links["archive1"].released, self.links["archive1"].aborted), (0, 1))

    def test_message_ids_exhausted_is_a702(self) -> None:
        """No free outgoing message ID: 0xA702 and the source is released, never asked to move."""
        self.journal.exhausted = True
        self.successResultOf(self.run_move())
        self.assertEqual([f[0] for f in self.responder.finals], [0xA702])
        self.assertEqual(self.links["archive1"].moves, [])
        self.assertEqual(self.links["archive1"].released, 1)

    def test_first_source_down_locates_at_the_next(self) -> None:
        """A source that cannot be reached is skipped; the next one with matches is retrieved from."""
        self.links.pop("archive1")
        self.run_move()
        self.assertEqual(self.opened, ["archive1", "archive2"])
        self.assertEqual([r.sop_instance_uid for r in self.journal.opened[0].expected], ["1.2"])
        self.assertEqual(self.journal.opened[0].sources, ("archive2",))

    def test_no_source_reachable_is_c000(self) -> None:
        """Every source down: 0xC000 (unable to process) with an Error Comment, nothing journaled."""
        self.links.clear()
        self.successResultOf(self.run_move())
        [(status, _, comment, _)] = self.responder.finals
        self.assertEqual((status, bool(comment)), (0xC000, True))
        self.assertEqual(self.journal.opened, [])
        self.assertEqual(self.answered().outcome, "failed")

    def test_a_failed_locate_is_not_an_empty_answer(self) -> None:
        """A source that fails the locating C-FIND (and another down) is not 'no matches': 0xC000."""
        self.links.pop("archive2")
        self.links["archive1"].find_status = 0xA700
        self.successResultOf(self.run_move())
        self.assertEqual([f[0] for f in self.responder.finals], [0xC000])

    def test_no_match_is_success_with_zero_counts(self) -> None:
        """Nothing located anywhere: success with zero sub-operations, no retrieve journaled."""
        for link in self.links.values():
            link.matches = ()
        self.successResultOf(self.run_move())
        self.assertEqual(self.responder.finals, [(0x0000, SubOperations(0, 0, 0, 0), "", ())])
        self.assertEqual(self.journal.opened, [])


class PassThroughTests(MoveTestsMixin, SynchronousTestCase):
    """``pass_through``: the source moves straight to the requester's destination."""

    def test_pass_through_relays_the_sources_responses(self) -> None:
        """The source is asked to move to the requester's Move Destination; its pending and final responses are relayed."""
        d = self.run_move(mode="pass_through")
        link = self.links["archive1"]
        self.assertEqual(link.moves, [(STUDY_MOVE, "WS1", None)])
        assert link.on_pending is not None
        link.on_pending(SubOperations(2, 1, 0, 0))
        link.move_result.callback(qrmove.SourceMoveResult(0x0000, SubOperations(0, 3, 0, 0)))
        self.successResultOf(d)
        self.assertEqual(self.responder.pendings, [SubOperations(2, 1, 0, 0)])
        self.assertEqual(self.responder.finals, [(0x0000, SubOperations(0, 3, 0, 0), "", ())])
        self.assertEqual(self.journal.opened, [])


class MoveDestinationTests(SynchronousTestCase):
    """The ``move.<name>`` queue destinations of the ``modalities`` table."""

    def test_one_destination_per_modality_when_retrieve_is_configured(self) -> None:
        """Each modality becomes move.<name>, called with the gateway's AE title and released as soon as idle."""
        destinations = qrmove.move_destinations(make_config())
        self.assertEqual([d.name for d in destinations], ["move.ws1", "move.research"])
        ws1 = destinations[0]
        self.assertEqual((ws1.ae_title, ws1.host, ws1.port, ws1.calling_ae_title, ws1.idle_release), ("WS1", "10.0.1.1", 104, "GW", 0.0))

    def test_none_without_retrieve(self) -> None:
        """Without ``retrieve`` anywhere the modalities table makes no workers."""
        self.assertEqual(qrmove.move_destinations(replace(make_config(), retrieve=None)), ())

    def test_intake_names_agree(self) -> None:
        """The intake journals to the names the workers serve."""
        from gateway import intake

        self.assertEqual((intake.MOVE_DESTINATION_PREFIX, intake.RETRIEVE_ROUTE), (qrmove.MOVE_DESTINATION_PREFIX, qrmove.RETRIEVE_ROUTE))


class FinalStatusTests(SynchronousTestCase):
    """:func:`gateway.qr.move.final_status` (PS3.4 C.4.2.1.5)."""

    def test_final_status(self) -> None:
        """Success, warning 0xB000 for some failures, 0xA702 when all failed."""
        self.assertEqual(qrmove.final_status(3, 0, 0), 0x0000)
        self.assertEqual(qrmove.final_status(2, 1, 0), 0xB000)
        self.assertEqual(qrmove.final_status(0, 1, 1), 0xB000)
        self.assertEqual(qrmove.final_status(0, 3, 0), 0xA702)
