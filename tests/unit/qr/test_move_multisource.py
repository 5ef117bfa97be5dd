"""Tests for :mod:`gateway.qr.move`: a C-MOVE spread over several sources, the stall rule, C-CANCEL to every source (issue 16).

Same fakes as :mod:`tests.unit.qr.test_move` (scripted sources, a journal in
dicts, a :class:`task.Clock`); nothing sleeps.
"""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from gateway.qr import move as qrmove
from gateway.qr.context import SubOperations
from gateway.queue.commitments import Reference
from gateway.queue.retrieves import ItemState, RetrieveState
from tests.unit.qr.test_move import CT, STUDY_MOVE, FakeLink, FakeMoveRQ, MoveTestsMixin

PATIENT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"


def image(uid: str, series: str = "1.2.3.1", study: str = "1.2.3", patient: str = "P1") -> Dataset:
    """A locating C-FIND match naming instance ``uid`` with its series, study and patient."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.PatientID = patient
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.SOPInstanceUID = uid
    ds.SOPClassUID = CT
    return ds


def located(uid: str, series: str = "S1") -> qrmove.Located:
    """A :class:`~gateway.qr.move.Located` in study ``ST``."""
    return qrmove.Located(Reference(CT, uid), "P1", "ST", series)


def uid_list(value: Any) -> list[str]:
    """A UID element's value as a list (one value or many)."""
    return [str(value)] if isinstance(value, str) else [str(v) for v in value]


class ShareTests(SynchronousTestCase):
    """:func:`assign_shares` and :func:`share_requests`: who moves what."""

    def test_first_source_in_the_list_wins_and_later_ones_only_move_what_earlier_ones_lack(self) -> None:
        """An instance held by two sources goes to the earlier; the later gets only the rest; a source with nothing left is left out."""
        shares = qrmove.assign_shares([
            ("a", [located("1"), located("2")]),
            ("b", [located("2"), located("3"), located("3")]),
            ("c", [located("1"), located("3")]),
        ])
        self.assertEqual([(s.source, [i.uid for i in s.instances], s.whole) for s in shares],
                         [("a", ["1", "2"], True), ("b", ["3"], False)])

    def test_a_whole_share_keeps_the_request_identifier(self) -> None:
        """A source moving all it located is sent the requester's own identifier (one C-MOVE)."""
        request = Dataset()
        request.QueryRetrieveLevel = "STUDY"
        request.StudyInstanceUID = "ST"
        [only] = qrmove.share_requests(request, qrmove.Share("a", (located("1"), located("2")), True), False)
        self.assertIs(only.identifier, request)
        self.assertEqual((only.uids, only.series), (("1", "2"), None))

    def test_a_partial_share_is_one_image_level_uid_list_per_series(self) -> None:
        """Per series: IMAGE level, the SOP Instance UIDs as a list, the single Study and Series UID above (PS3.4 C.4.2.2.1)."""
        share = qrmove.Share("b", (located("1", "S1"), located("2", "S2"), located("3", "S1")), False)
        requests = qrmove.share_requests(Dataset(), share, False)
        self.assertEqual([r.uids for r in requests], [("1", "3"), ("2",)])
        first, second = (r.identifier for r in requests)
        self.assertEqual((first.QueryRetrieveLevel, first.StudyInstanceUID, first.SeriesInstanceUID), ("IMAGE", "ST", "S1"))
        self.assertEqual(uid_list(first.SOPInstanceUID), ["1", "3"])
        self.assertEqual(uid_list(second.SOPInstanceUID), ["2"])
        self.assertNotIn("PatientID", first)  # Study Root: no PATIENT level

    def test_patient_root_adds_the_patient_id(self) -> None:
        """In the Patient Root model the PATIENT level's unique key, Patient ID, is part of the identifier (PS3.4 C.6.1.2.1)."""
        [request] = qrmove.share_requests(Dataset(), qrmove.Share("b", (located("1"),), False), True)
        self.assertEqual(request.identifier.PatientID, "P1")
        fallback = qrmove.series_fallback(Dataset(), request, True)
        self.assertEqual((fallback.QueryRetrieveLevel, fallback.PatientID, fallback.SeriesInstanceUID), ("SERIES", "P1", "S1"))
        self.assertNotIn("SOPInstanceUID", fallback)

    def test_which_answers_call_for_the_series_fallback(self) -> None:
        """0xA900 and 0xCxxx with nothing sent fall back; a success or a partial failure does not."""
        def result(status: int, completed: int = 0) -> qrmove.SourceMoveResult:
            return qrmove.SourceMoveResult(status, SubOperations(0, completed, 0, 0))

        self.assertTrue(qrmove.refuses_uid_list(result(0xA900)))
        self.assertTrue(qrmove.refuses_uid_list(result(0xC000)))
        self.assertTrue(qrmove.refuses_uid_list(result(0xC512)))
        self.assertFalse(qrmove.refuses_uid_list(result(0xC000, completed=1)))
        self.assertFalse(qrmove.refuses_uid_list(result(0xA801)))
        self.assertFalse(qrmove.refuses_uid_list(result(0x0000)))


class MultiSourceMixin(MoveTestsMixin):
    """archive1 holds 1.1-1.3 (series A), archive2 holds 1.2 and 2.1, 2.2 (series B): its share is 2.1, 2.2."""

    def setUp(self) -> None:
        """Overlapping sources."""
        super().setUp()
        self.links = {
            "archive1": FakeLink("archive1", matches=[image("1.1", "A"), image("1.2", "A"), image("1.3", "A")]),
            "archive2": FakeLink("archive2", matches=[image("1.2", "A"), image("2.1", "B"), image("2.2", "B")]),
        }


class RelayMultiSourceTests(MultiSourceMixin, SynchronousTestCase):
    """``relay`` over two sources: one retrieve, one Message ID, one C-MOVE per source used."""

    def test_one_retrieve_listing_every_source_used_and_every_uid_once(self) -> None:
        """The journal holds one retrieve whose sources are both and whose items are every UID once, in source order."""
        self.run_move()
        [new] = self.journal.opened
        self.assertEqual(new.sources, ("archive1", "archive2"))
        self.assertEqual([r.sop_instance_uid for r in new.expected], ["1.1", "1.2", "1.3", "2.1", "2.2"])

    def test_each_source_is_asked_for_its_own_share_under_the_one_message_id(self) -> None:
        """archive1 moves the whole request; archive2 only 2.1 and 2.2 by UID list; both to GW with Message ID 101, in parallel."""
        self.run_move()
        one, two = self.links["archive1"], self.links["archive2"]
        self.assertEqual(one.moves, [(STUDY_MOVE, "GW", 101)])
        self.assertEqual(two.moves, [(STUDY_MOVE, "GW", 101)])  # started without waiting for archive1
        self.assertEqual(one.move_identifiers[0].QueryRetrieveLevel, "STUDY")
        asked = two.move_identifiers[0]
        self.assertEqual((asked.QueryRetrieveLevel, asked.StudyInstanceUID, asked.SeriesInstanceUID), ("IMAGE", "1.2.3", "B"))
        self.assertEqual(uid_list(asked.SOPInstanceUID), ["2.1", "2.2"])

    def test_counts_add_up_over_both_sources(self) -> None:
        """Pending counts are the retrieve's (5 in all); success once both sources' instances are delivered."""
        d = self.run_move()
        items = self.journal.items[1]
        items.update({"1.1": ItemState.COMPLETED, "2.1": ItemState.COMPLETED})
        self.clock.advance(1)
        self.assertEqual(self.responder.pendings[-1], SubOperations(3, 2, 0, 0))
        for uid in ("1.2", "1.3", "2.2"):
            items[uid] = ItemState.COMPLETED
        self.links["archive1"].move_result.callback(qrmove.SourceMoveResult(0x0000, SubOperations(0, 3, 0, 0)))
        self.links["archive2"].move_result.callback(qrmove.SourceMoveResult(0x0000, SubOperations(0, 2, 0, 0)))
        self.clock.advance(qrmove.RELEASE_GRACE)
        self.successResultOf(d)
        self.assertEqual(self.responder.finals, [(0x0000, SubOperations(0, 5, 0, 0), "", ())])
        self.assertEqual((self.links["archive1"].released, self.links["archive2"].released), (1, 1))
        self.assertEqual(self.answered().sources, ("archive1", "archive2"))

    def test_a_refused_uid_list_falls_back_to_the_series(self) -> None:
        """archive2 answers 0xC000 to the UID list: it is asked again at SERIES level for series B."""
        self.run_move()
        two = self.links["archive2"]
        two.move_result.callback(qrmove.SourceMoveResult(0xC000, SubOperations(None, 0, 0, 0)))
        self.assertEqual(len(two.moves), 2)
        again = two.move_identifiers[1]
        self.assertEqual((again.QueryRetrieveLevel, again.StudyInstanceUID, again.SeriesInstanceUID), ("SERIES", "1.2.3", "B"))
        self.assertNotIn("SOPInstanceUID", again)
        self.assertEqual(self.journal.items[1]["2.1"], ItemState.EXPECTED)  # the refusal failed nothing

    def test_a_source_refusing_fails_its_share_with_uids_and_the_other_goes_on(self) -> None:
        """archive2 refuses outright (0xA801): 2.1, 2.2 failed and listed; archive1's share completes; 0xB000."""
        d = self.run_move()
        self.links["archive2"].move_result.callback(qrmove.SourceMoveResult(0xA801, SubOperations(None, 0, 0, 0)))
        self.assertEqual(self.links["archive2"].moves[1:], [])  # 0xA801 is no UID-list refusal: no fallback
        for uid in ("1.1", "1.2", "1.3"):
            self.journal.items[1][uid] = ItemState.COMPLETED
        self.links["archive1"].move_result.callback(qrmove.SourceMoveResult(0x0000, SubOperations(0, 3, 0, 0)))
        self.clock.advance(qrmove.RELEASE_GRACE)
        self.successResultOf(d)
        self.assertEqual(self.responder.finals, [(0xB000, SubOperations(0, 3, 2, 0), "", ("2.1", "2.2"))])

    def test_a_source_listing_an_instance_in_custody_as_failed_does_not_fail_it(self) -> None:
        """archive2 says 2.1, 2.2 failed after the gateway already holds 2.2 (RECEIVED): only 2.1 ends failed."""
        self.run_move()
        self.journal.items[1]["2.2"] = ItemState.RECEIVED  # acknowledged to the source, queued
        self.links["archive2"].move_result.callback(
            qrmove.SourceMoveResult(0xB000, SubOperations(0, 1, 1, 0), failed_uids=("2.1", "2.2")))
        self.assertEqual(self.journal.items[1]["2.1"], ItemState.FAILED)
        self.assertEqual(self.journal.items[1]["2.2"], ItemState.RECEIVED)

    def test_a_source_that_breaks_has_its_unsent_share_failed_at_the_stall(self) -> None:
        """archive2's association breaks: once both are done and nothing moves, its never-received items end failed, listed."""
        d = self.run_move()
        self.links["archive2"].move_result.errback(ConnectionResetError("gone"))
        for uid in ("1.1", "1.2", "1.3"):
            self.journal.items[1][uid] = ItemState.COMPLETED
        self.links["archive1"].move_result.callback(qrmove.SourceMoveResult(0x0000, SubOperations(0, 3, 0, 0)))
        self.clock.advance(1)
        self.assertNoResult(d)
        self.clock.pump([1.0] * (int(qrmove.STALL_AFTER_SOURCE) + 2))
        self.successResultOf(d)
        [(status, counts, comment, failed)] = self.responder.finals
        self.assertEqual((status, counts, failed), (0xB000, SubOperations(0, 3, 2, 0), ("2.1", "2.2")))
        self.assertIn("Source finished", comment)
        self.assertEqual(self.links["archive2"].aborted, 0)

    def test_cancel_reaches_every_source_at_once(self) -> None:
        """C-CANCEL-RQ: every source moving gets its C-CANCEL at once (no clock advance), the final is 0xFE00."""
        d = self.run_move()
        self.responder.cancelled.callback(None)
        self.assertEqual((self.links["archive1"].cancels, self.links["archive2"].cancels), (1, 1))
        self.assertEqual([f[0] for f in self.responder.finals], [0xFE00])
        self.assertEqual(self.journal.finished, {1: RetrieveState.CANCELLED})
        self.links["archive1"].move_result.callback(qrmove.SourceMoveResult(0xFE00, SubOperations(3, 0, 0, 0)))
        self.assertNoResult(d)  # archive2 still moving: given SOURCE_END_WAIT
        self.clock.advance(qrmove.SOURCE_END_WAIT)
        self.successResultOf(d)
        self.assertEqual((self.links["archive1"].released, self.links["archive2"].aborted), (1, 1))


class StallRuleTests(MultiSourceMixin, SynchronousTestCase):
    """The stall rule: only items never received count failed at the stall; those in custody wait for ``retrieve.timeout``."""

    def test_an_item_in_custody_is_not_failed_at_the_stall_but_at_the_deadline(self) -> None:
        """The destination is down: 2.2 is RECEIVED (queued); at the stall only the never-received 1.3 fails; the final comes at retrieve.timeout."""
        d = self.run_move(timeout=300.0)
        items = self.journal.items[1]
        items.update({"1.1": ItemState.COMPLETED, "1.2": ItemState.COMPLETED, "2.1": ItemState.COMPLETED,
                      "2.2": ItemState.RECEIVED})
        self.links["archive1"].move_result.callback(qrmove.SourceMoveResult(0x0000, SubOperations(0, 2, 0, 0)))
        self.links["archive2"].move_result.callback(qrmove.SourceMoveResult(0x0000, SubOperations(0, 2, 0, 0)))
        self.clock.pump([1.0] * (int(qrmove.STALL_AFTER_SOURCE) + 5))
        self.assertEqual(items["1.3"], ItemState.FAILED)  # never received
        self.assertEqual(items["2.2"], ItemState.RECEIVED)  # in custody: waits
        self.assertEqual(self.responder.finals, [])
        self.assertEqual(self.responder.pendings[-1], SubOperations(1, 3, 1, 0))
        self.clock.pump([1.0] * int(299 - self.clock.seconds()))
        self.assertEqual(self.clock.seconds(), 299.0)
        self.assertEqual(self.responder.finals, [])  # still before retrieve.timeout
        self.clock.pump([1.0, 1.0])
        self.successResultOf(d)
        [(status, counts, comment, failed)] = self.responder.finals
        # At the deadline the one in custody counts failed too (the queue still delivers it later).
        self.assertEqual((status, counts, failed), (0xB000, SubOperations(0, 3, 2, 0), ("1.3",)))
        self.assertIn("timeout", comment)

    def test_custody_item_delivered_before_the_deadline_ends_the_move(self) -> None:
        """After the stall, the custody item's delivery (destination back) ends the move with the true counts."""
        d = self.run_move(timeout=300.0)
        items = self.journal.items[1]
        items.update({"1.1": ItemState.COMPLETED, "1.2": ItemState.RECEIVED, "1.3": ItemState.COMPLETED,
                      "2.1": ItemState.COMPLETED, "2.2": ItemState.COMPLETED})
        for name in ("archive1", "archive2"):
            self.links[name].move_result.callback(qrmove.SourceMoveResult(0x0000, SubOperations(0, 2, 0, 0)))
        self.clock.pump([1.0] * (int(qrmove.STALL_AFTER_SOURCE) + 20))
        self.assertEqual(self.responder.finals, [])
        items["1.2"] = ItemState.COMPLETED
        self.clock.pump([1.0, qrmove.RELEASE_GRACE])
        self.successResultOf(d)
        self.assertEqual(self.responder.finals, [(0x0000, SubOperations(0, 5, 0, 0), "", ())])


class LocateTests(MultiSourceMixin, SynchronousTestCase):
    """Locating at every source in parallel, bounded by ``query.timeout``."""

    def test_a_slow_source_is_cancelled_and_left_out_at_the_query_timeout(self) -> None:
        """archive2 never answers its C-FIND: at query.timeout (30 s without ``query``) it is cancelled and released; archive1's share is moved."""
        slow: Deferred[int] = Deferred()
        two = self.links["archive2"]
        two.find = lambda sop_class, data, on_match: slow  # type: ignore[method-assign]
        self.run_move()
        self.assertEqual(self.journal.opened, [])
        self.clock.advance(qrmove.locate_timeout(self.config_in_use(), "qr"))
        self.assertEqual(two.cancels, 1)
        slow.callback(0xFE00)
        [new] = self.journal.opened
        self.assertEqual(new.sources, ("archive1",))
        self.assertEqual(two.released, 1)
        [late] = [e for e in self.events if type(e).__name__ == "QuerySourceAnswered" and e.destination == "archive2"]
        self.assertEqual((late.ok, late.reason), (False, "timeout"))

    def test_a_source_ignoring_the_cancel_is_aborted(self) -> None:
        """A source that answers neither its C-FIND nor the C-CANCEL is aborted SOURCE_END_WAIT after the timeout; the others go on."""
        slow: Deferred[int] = Deferred()
        two = self.links["archive2"]
        two.find = lambda sop_class, data, on_match: slow  # type: ignore[method-assign]
        two.abort = lambda: slow.errback(ConnectionAbortedError("aborted"))  # type: ignore[method-assign]
        self.run_move()
        self.clock.advance(qrmove.locate_timeout(self.config_in_use(), "qr"))
        self.assertEqual(self.journal.opened, [])
        self.clock.advance(qrmove.SOURCE_END_WAIT)
        [new] = self.journal.opened
        self.assertEqual(new.sources, ("archive1",))

    def test_a_source_naming_too_many_instances_is_cancelled_and_the_move_refused(self) -> None:
        """Past MAX_LOCATED instances a source's C-FIND is cancelled and the C-MOVE ends 0xA702 with an Error Comment; nothing journaled."""
        self.patch(qrmove, "MAX_LOCATED", 2)
        self.links["archive2"].matches = [image("2.1", "B")]  # within the bound
        self.successResultOf(self.run_move())
        [(status, _, comment, _)] = self.responder.finals
        self.assertEqual(status, 0xA702)
        self.assertIn("archive1", comment)
        self.assertEqual((self.links["archive1"].cancels, self.links["archive2"].cancels), (1, 0))
        self.assertEqual(self.journal.opened, [])
        self.assertEqual([link.released for link in self.links.values()], [1, 1])

    def config_in_use(self) -> Any:
        """The test configuration (no ``query``: the locate timeout is 30 s)."""
        from tests.unit.qr.test_move import make_config

        return make_config()

    def test_cancel_while_locating_reaches_every_source(self) -> None:
        """A C-CANCEL during the locating C-FINDs cancels each of them and ends 0xFE00 without moving."""
        pending = {name: Deferred() for name in self.links}
        for name, link in self.links.items():
            link.find = (lambda d: lambda sop_class, data, on_match: d)(pending[name])  # type: ignore[method-assign]
        d = self.run_move()
        self.responder.cancelled.callback(None)
        self.assertEqual([link.cancels for link in self.links.values()], [1, 1])
        for deferred in pending.values():
            deferred.callback(0xFE00)
        self.successResultOf(d)
        self.assertEqual(self.responder.finals, [(0xFE00, SubOperations(0, 0, 0, 0), "", ())])
        self.assertEqual([link.moves for link in self.links.values()], [[], []])


class PassThroughMultiSourceTests(MultiSourceMixin, SynchronousTestCase):
    """``pass_through`` over two sources: each moves its share straight to the destination; counts summed."""

    def test_pending_and_final_counts_are_summed(self) -> None:
        """Both sources move to WS1; the requester's pending responses add their counts; the final sums them."""
        d = self.run_move(mode="pass_through")
        one, two = self.links["archive1"], self.links["archive2"]
        self.assertEqual((one.moves, two.moves), ([(STUDY_MOVE, "WS1", None)], [(STUDY_MOVE, "WS1", None)]))
        assert one.on_pending is not None and two.on_pending is not None
        one.on_pending(SubOperations(2, 1, 0, 0))
        two.on_pending(SubOperations(1, 1, 0, 0))
        self.assertEqual(self.responder.pendings, [SubOperations(4, 1, 0, 0), SubOperations(3, 2, 0, 0)])
        one.move_result.callback(qrmove.SourceMoveResult(0x0000, SubOperations(0, 3, 0, 0)))
        self.assertEqual(self.responder.finals, [])
        two.move_result.callback(qrmove.SourceMoveResult(0x0000, SubOperations(0, 2, 0, 0)))
        self.successResultOf(d)
        self.assertEqual(self.responder.finals, [(0x0000, SubOperations(0, 5, 0, 0), "", ())])
        self.assertEqual(self.journal.opened, [])

    def test_a_source_down_counts_its_share_failed_with_uids(self) -> None:
        """archive2's association breaks before sending anything: its 2 count failed, listed; archive1's 3 complete: 0xB000."""
        d = self.run_move(mode="pass_through")
        self.links["archive2"].move_result.errback(ConnectionResetError("gone"))
        self.links["archive1"].move_result.callback(qrmove.SourceMoveResult(0x0000, SubOperations(0, 3, 0, 0)))
        self.successResultOf(d)
        [(status, counts, _, failed)] = self.responder.finals
        self.assertEqual((status, counts, failed), (0xB000, SubOperations(0, 3, 2, 0), ("2.1", "2.2")))

    def test_cancel_reaches_both_and_ends_fe00(self) -> None:
        """C-CANCEL: both sources get theirs at once; the final is 0xFE00 with the summed counts."""
        d = self.run_move(mode="pass_through")
        one, two = self.links["archive1"], self.links["archive2"]
        assert one.on_pending is not None
        one.on_pending(SubOperations(2, 1, 0, 0))
        self.responder.cancelled.callback(None)
        self.assertEqual((one.cancels, two.cancels), (1, 1))
        self.assertEqual(self.responder.finals, [(0xFE00, SubOperations(4, 1, 0, 0), "", ())])
        one.move_result.callback(qrmove.SourceMoveResult(0xFE00, SubOperations(2, 1, 0, 0)))
        two.move_result.callback(qrmove.SourceMoveResult(0xFE00, SubOperations(2, 0, 0, 0)))
        self.successResultOf(d)
        self.assertEqual((one.released, two.released), (1, 1))


class PatientRootTests(MultiSourceMixin, SynchronousTestCase):
    """A Patient Root C-MOVE's share identifiers carry Patient ID."""

    def test_patient_root_share_has_patient_id(self) -> None:
        """archive2's UID-list C-MOVE in the Patient Root model names the patient (PS3.4 C.6.1.2.1)."""
        from gateway.dimse.identifier import encode_identifier

        request = Dataset()
        request.QueryRetrieveLevel = "STUDY"
        request.PatientID = "P1"
        request.StudyInstanceUID = "1.2.3"
        config = self.config()
        ctx = self.context(config)
        rq = FakeMoveRQ(affected_sop_class_uid=PATIENT_MOVE)
        qrmove.move(type("Info", (), {"calling_ae_title": "VIEWER", "listener": "qr"})(), rq,
                    encode_identifier(request, "1.2.840.10008.1.2"), self.responder, ctx)
        asked = self.links["archive2"].move_identifiers[0]
        self.assertEqual((asked.PatientID, asked.QueryRetrieveLevel), ("P1", "IMAGE"))

    def config(self) -> Any:
        """The test configuration."""
        from tests.unit.qr.test_move import make_config

        return make_config()

    def context(self, config: Any) -> Any:
        """A QRContext over the fakes."""
        from gateway.blocking import SynchronousRunner
        from gateway.qr.context import QRContext

        return QRContext(config=lambda: config, journal=self.journal, run=SynchronousRunner(), reactor=self.clock,
                         wall=self.clock.seconds, ae_title="GW", extra={"open_source": self.open_source},
                         observer=self.observer)

