"""Tests for :mod:`gateway.qr.find`: fan-out, merge, strict, timeout, cancel, ``max_results``, morphs.

The sources are fakes the test drives (matches, final status, failure), the
clock is a :class:`twisted.internet.task.Clock`, the journal's runner is
synchronous: every test is deterministic and never sleeps.
"""

from __future__ import annotations

from typing import Any, Callable

from pydicom.dataset import Dataset
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway import events
from gateway.blocking import SynchronousRunner
from gateway.config.schema import QueryConfig
from gateway.dimse.identifier import decode_identifier, encode_identifier
from gateway.qr import find as find_module
from gateway.qr.context import QRContext
from gateway.qr.find import SourceFailed, find

STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


class _Destination:
    """A DICOM destination's name and AE title."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ae_title = name.upper()


class _Listener:
    """The listener the request came in on (no override)."""

    name = "dicom"
    query = None
    retrieve = None


class _Config:
    """The parts of GatewayConfig :func:`find` reads."""

    def __init__(self, query: QueryConfig, destinations: tuple[str, ...] = ("a", "b", "c")) -> None:
        self.query = query
        self.retrieve = None
        self.listen = (_Listener(),)
        self.destinations = tuple(_Destination(n) for n in destinations)

    def query_for(self, listener: Any) -> Any:
        return self.query


class _Info:
    """The requester's association."""

    assoc_id = "A1"
    peer_address = "10.0.0.7:40000"
    calling_ae_title = "WS01"
    called_ae_title = "DICOMGW"
    listener = "dicom"
    listener_port = 11112
    tls_subject = ""
    relational_queries: frozenset[str] = frozenset()


class _RQ:
    """A C-FIND-RQ's fields."""

    message_id = 3
    affected_sop_class_uid = STUDY_FIND


class _Responder:
    """Keeps the responses."""

    transfer_syntax = EXPLICIT_LE

    def __init__(self) -> None:
        self.matches: list[Dataset] = []
        self.statuses: list[int] = []
        self.finals: list[tuple[int, str]] = []
        self.offending: list[tuple[int, ...]] = []
        self.cancelled: Deferred[None] = Deferred()

    def final(
        self, status: int, counts: Any = None, error_comment: str = "", failed_uids: Any = (), identifier: Any = None,
        offending: Any = (),
    ) -> None:
        self.finals.append((status, error_comment))
        self.offending.append(tuple(offending))

    def pending(self, status: int, identifier: bytes | None = None, counts: Any = None) -> None:
        assert status in (0xFF00, 0xFF01) and identifier is not None
        self.statuses.append(status)
        self.matches.append(decode_identifier(identifier, EXPLICIT_LE))


class _Source:
    """A fake source: the test feeds its matches and ends it."""

    def __init__(self, name: str, query: Dataset) -> None:
        self.name = name
        self.query = query
        self.on_match: Callable[[Dataset], None] | None = None
        self.done: Deferred[int] = Deferred()
        self.cancels = 0

    def start(self, on_match: Callable[[Dataset], None]) -> Deferred[int]:
        self.on_match = on_match
        return self.done

    def cancel(self) -> None:
        self.cancels += 1

    def study(self, uid: str, name: str = "", status: int | None = None) -> None:
        """One STUDY-level match (with its pending status when given)."""
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = uid
        ds.PatientName = name or self.name
        assert self.on_match is not None
        if status is None:
            self.on_match(ds)
        else:
            self.on_match(ds, status)


class _Journal:
    """The journal's remapped-UID table."""

    def __init__(self) -> None:
        self.table: dict[str, str] = {}

    def remember_uids(self, pairs: Any, now: float) -> None:
        self.table.update(dict(pairs))

    def original_uids(self, remapped: Any, now: float | None = None) -> dict[str, str]:
        self.looked_up_at = now
        return {u: self.table[u] for u in remapped if u in self.table}


class _Observer:
    """Keeps the events."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def observe(self, event: Any) -> None:
        self.seen.append(event)


class _RemapStudy:
    """A response morph standing in for ``uid_remap``: Study UID ``X`` becomes ``9.X``."""

    def apply(self, ds: Dataset, context: Any) -> list[Any]:
        ds.StudyInstanceUID = "9." + ds.StudyInstanceUID
        return []


def query(level: str = "STUDY", **keys: Any) -> bytes:
    """A query identifier."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    ds.StudyInstanceUID = ""
    ds.PatientName = ""
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return encode_identifier(ds, EXPLICIT_LE)


class FindTests(SynchronousTestCase):
    """One query against fake sources."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.sources: dict[str, _Source] = {}
        self.journal = _Journal()
        self.observer = _Observer()
        self.responder = _Responder()

    def run_find(
        self, identifier: bytes | None = None, fail_open: tuple[str, ...] = (), info: Any = None, **settings: Any
    ) -> None:
        settings.setdefault("sources", ("a", "b"))
        config = _Config(QueryConfig(**settings))

        def open_source(ctx: Any, destination: Any, sop_class: str, ds: Dataset) -> _Source:
            if destination.name in fail_open:
                raise SourceFailed("refused")
            source = _Source(destination.name, ds)
            self.sources[destination.name] = source
            return source

        ctx = QRContext(
            config=lambda: config,
            journal=self.journal,
            run=SynchronousRunner(),
            reactor=self.clock,
            wall=lambda: 1000.0,
            observer=self.observer,
            extra={"open_source": open_source},
        )
        find(info or _Info(), _RQ(), identifier if identifier is not None else query(), self.responder, ctx)

    def uids(self) -> list[str]:
        """The Study UIDs relayed, in order."""
        return [str(ds.StudyInstanceUID) for ds in self.responder.matches]

    def answered(self) -> events.QueryAnswered:
        """The one QueryAnswered event."""
        [event] = [e for e in self.observer.seen if isinstance(e, events.QueryAnswered)]
        return event

    def test_merge_streams_removes_duplicates_and_the_first_source_wins(self) -> None:
        """Overlapping studies come once, with the first source's version; the first source's matches leave at once."""
        self.run_find()
        a, b = self.sources["a"], self.sources["b"]
        b.study("1.1")
        a.study("1.1")
        a.study("1.2")
        self.assertEqual(self.uids(), ["1.1", "1.2"])
        b.study("1.3")
        a.done.callback(0)
        b.done.callback(0)
        self.assertEqual(self.uids(), ["1.1", "1.2", "1.3"])
        self.assertEqual([str(ds.PatientName) for ds in self.responder.matches], ["a", "a", "b"])
        self.assertEqual(self.responder.finals, [(0x0000, "")])
        self.assertEqual((self.answered().outcome, self.answered().results, self.answered().level), ("success", 3, "STUDY"))

    def test_non_strict_leaves_a_failed_source_out(self) -> None:
        """A source that fails is left out: the other's matches, Success, outcome ``partial`` and a source event."""
        self.run_find()
        self.sources["b"].study("2.1")
        self.sources["a"].done.errback(ConnectionRefusedError("refused"))
        self.sources["b"].done.callback(0)
        self.assertEqual(self.uids(), ["2.1"])
        self.assertEqual(self.responder.finals, [(0x0000, "")])
        self.assertEqual((self.answered().outcome, self.answered().failed_sources), ("partial", ("a",)))
        failed = [e for e in self.observer.seen if isinstance(e, events.QuerySourceAnswered) and not e.ok]
        self.assertEqual([(e.destination, e.reason.split(":")[0]) for e in failed], [("a", "ConnectionRefusedError")])

    def test_strict_fails_the_query_and_cancels_the_others(self) -> None:
        """With ``strict`` a failed source fails the query (0xC001, comment naming it) and the others are cancelled."""
        self.run_find(strict=True)
        self.sources["b"].done.callback(0xA700)
        self.assertEqual(self.responder.finals, [(0xC001, "source b failed: status 0xA700")])
        self.assertEqual(self.sources["a"].cancels, 1)
        self.sources["a"].done.callback(0xFE00)
        self.assertEqual(len(self.responder.finals), 1)

    def test_slow_source_is_cancelled_at_the_timeout(self) -> None:
        """A source still running at ``timeout`` gets C-CANCEL and is left out; the query ends with the rest."""
        self.run_find(timeout=30.0)
        self.sources["a"].study("3.1")
        self.sources["a"].done.callback(0)
        self.clock.advance(29)
        self.assertEqual(self.responder.finals, [])
        self.clock.advance(1)
        self.assertEqual(self.sources["b"].cancels, 1)
        self.assertEqual(self.responder.finals, [(0x0000, "")])
        self.assertEqual(self.answered().failed_sources, ("b",))

    def test_cancel_reaches_every_source_and_answers_cancel_at_once(self) -> None:
        """The requester's C-CANCEL cancels every running source and the final is 0xFE00 with no waiting."""
        self.run_find(sources=("a", "b", "c"))
        self.sources["a"].study("4.1")
        self.responder.cancelled.callback(None)
        self.assertEqual([s.cancels for s in self.sources.values()], [1, 1, 1])
        self.assertEqual(self.responder.finals, [(0xFE00, "")])
        self.sources["a"].study("4.2")
        self.assertEqual(self.uids(), ["4.1"])
        self.assertEqual(self.answered().outcome, "cancelled")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_max_results_cancels_the_sources_and_refuses_out_of_resources(self) -> None:
        """After ``max_results`` matches the next one cancels the sources; the final is 0xA700 naming the limit."""
        self.run_find(sources=("a",), max_results=2)
        for n in range(3):
            self.sources["a"].study(f"5.{n}")
        self.assertEqual(self.uids(), ["5.0", "5.1"])
        self.assertEqual(self.sources["a"].cancels, 1)
        self.assertEqual(self.responder.finals, [(0xA700, "more than max_results 2 matches")])
        self.assertEqual(self.answered().outcome, "limited")

    def test_first_mode_asks_in_order_and_stops_at_the_first_with_matches(self) -> None:
        """``first``: a source without matches passes to the next; the first with matches ends the query."""
        self.run_find(sources=("a", "b", "c"), mode="first")
        self.assertEqual(list(self.sources), ["a"])
        self.sources["a"].done.callback(0)
        self.assertEqual(list(self.sources), ["a", "b"])
        self.sources["b"].study("6.1")
        self.sources["b"].study("6.1")
        self.sources["b"].done.callback(0)
        self.assertEqual(list(self.sources), ["a", "b"])
        self.assertEqual(self.uids(), ["6.1", "6.1"])
        self.assertEqual(self.responder.finals, [(0x0000, "")])

    def test_every_source_failing_fails_the_query(self) -> None:
        """Non-strict, but no source answered: 0xC001 with an Error Comment naming them."""
        self.run_find(fail_open=("a",))
        self.sources["b"].done.errback(SourceFailed("no FIND context"))
        [(status, comment)] = self.responder.finals
        self.assertEqual(status, 0xC001)
        self.assertIn("a (refused)", comment)
        self.assertIn("b (no FIND context)", comment)

    def test_malformed_identifier_is_refused_with_a_comment(self) -> None:
        """An identifier without a Query/Retrieve Level is 0xC000 with an Error Comment; no source is asked."""
        ds = Dataset()
        ds.PatientName = "X"
        self.run_find(identifier=encode_identifier(ds, EXPLICIT_LE))
        [(status, comment)] = self.responder.finals
        self.assertEqual(status, 0xC000)
        self.assertIn("Query/Retrieve Level", comment)
        self.assertEqual(self.sources, {})
        self.assertEqual(self.answered().outcome, "invalid")

    def test_patient_level_in_study_root_does_not_match_the_sop_class(self) -> None:
        """PATIENT level in the Study Root model is 0xA900 (PS3.4 C.6.2.1)."""
        self.run_find(identifier=query("PATIENT"))
        self.assertEqual(self.responder.finals[0][0], 0xA900)

    def test_image_level_query_is_passed_on(self) -> None:
        """A hierarchical IMAGE-level query (study and series UIDs given) reaches the sources with its keys."""
        self.run_find(identifier=query("IMAGE", StudyInstanceUID="1.2", SeriesInstanceUID="1.2.3", SOPInstanceUID=""))
        self.assertEqual(str(self.sources["a"].query.QueryRetrieveLevel), "IMAGE")
        self.assertEqual(str(self.sources["b"].query.SeriesInstanceUID), "1.2.3")

    def test_relational_query_without_negotiation_is_refused_naming_the_missing_keys(self) -> None:
        """IMAGE level without study and series UIDs, relational not granted: 0xC000, (0000,0901) names both; no source asked."""
        self.run_find(identifier=query("IMAGE", SeriesInstanceUID="", SOPInstanceUID=""))
        [(status, comment)] = self.responder.finals
        self.assertEqual(status, 0xC000)
        self.assertIn("relational", comment)
        self.assertLessEqual(len(comment), 64)
        self.assertEqual(self.responder.offending, [(0x0020000D, 0x0020000E)])
        self.assertEqual(self.sources, {})
        self.assertEqual(self.answered().outcome, "invalid")

    def test_relational_query_granted_is_passed_on(self) -> None:
        """The same query from a requester granted relational-queries for the class reaches the sources."""
        info = _Info()
        info.relational_queries = frozenset({STUDY_FIND})
        self.run_find(identifier=query("IMAGE", SeriesInstanceUID="", SOPInstanceUID=""), info=info)
        self.assertEqual(sorted(self.sources), ["a", "b"])
        self.assertEqual(self.responder.finals, [])

    def test_level_error_carries_the_offending_element(self) -> None:
        """A level the model lacks: 0xA900 with (0008,0052) as Offending Element."""
        self.run_find(identifier=query("PATIENT"))
        self.assertEqual(self.responder.offending, [(0x00080052,)])

    def test_pending_warning_from_a_source_is_relayed_as_ff01(self) -> None:
        """A source's 0xFF01 match leaves as 0xFF01, also when held behind a source listed before it; 0xFF00 stays 0xFF00."""
        self.run_find()
        self.sources["b"].study("2.1", status=0xFF01)  # held: a is still running
        self.sources["a"].study("1.1", status=0xFF01)
        self.sources["a"].study("1.2")
        self.assertEqual(self.responder.statuses, [0xFF01, 0xFF00])
        self.sources["a"].done.callback(0)
        self.sources["b"].done.callback(0)
        self.assertEqual(self.uids(), ["1.1", "1.2", "2.1"])
        self.assertEqual(self.responder.statuses, [0xFF01, 0xFF00, 0xFF01])
        self.assertEqual(self.responder.finals, [(0x0000, "")])

    def test_remapped_uids_are_recorded_and_turned_back_in_later_queries(self) -> None:
        """Response morph UIDs are remembered; a query for a remapped UID reaches the sources as the original."""
        self.run_find(sources=("a",), response_morph=_RemapStudy())
        self.sources["a"].study("7.1")
        self.sources["a"].done.callback(0)
        self.assertEqual(self.uids(), ["9.7.1"])
        self.assertEqual(self.journal.table, {"9.7.1": "7.1"})
        self.sources.clear()
        self.responder = _Responder()
        self.run_find(identifier=query(StudyInstanceUID="9.7.1"), sources=("a",))
        self.assertEqual(str(self.sources["a"].query.StudyInstanceUID), "7.1")
        self.assertEqual(self.journal.looked_up_at, 1000.0)  # the lookup is a use (retention.remapped_uids)

    def test_query_morph_changes_what_the_sources_see(self) -> None:
        """``query_morph`` applies to the identifier before it leaves."""

        class _Blank:
            def apply(self, ds: Dataset, context: Any) -> list[Any]:
                ds.PatientName = "MASKED"
                return []

        self.run_find(query_morph=_Blank())
        self.assertEqual(str(self.sources["a"].query.PatientName), "MASKED")

    def test_source_opener_error_is_a_failed_source_not_a_hang(self) -> None:
        """A source whose query cannot even start is left out; the query still ends."""
        self.run_find(fail_open=("a",))
        self.sources["b"].done.callback(0)
        self.assertEqual(self.responder.finals, [(0x0000, "")])


class DicomSourceQueryTests(SynchronousTestCase):
    """:class:`gateway.qr.find.DicomSourceQuery` over a fake association."""

    def test_no_connector_fails_the_source(self) -> None:
        """Without ``ctx.connect`` the source fails (never hangs)."""
        ctx = QRContext(config=lambda: None, journal=None, run=None, reactor=Clock(), wall=lambda: 0.0)
        d = find_module.DicomSourceQuery(ctx, _Destination("a"), STUDY_FIND, Dataset()).start(lambda ds: None)
        self.failureResultOf(d, SourceFailed)

    def test_connection_failure_fails_the_source(self) -> None:
        """A refused connection fails the source's Deferred."""
        ctx = QRContext(
            config=lambda: None, journal=None, run=None, reactor=Clock(), wall=lambda: 0.0,
            connect=lambda destination, proposals, role_selections=(): fail(ConnectionRefusedError()),
        )
        d = find_module.DicomSourceQuery(ctx, _Destination("a"), STUDY_FIND, Dataset()).start(lambda ds: None)
        self.failureResultOf(d, ConnectionRefusedError)


class _Stream:
    """A fake QRStream: hands out the responses it is given, counting reads."""

    def __init__(self, responses: list[Any]) -> None:
        self.responses = responses
        self.reads = 0

    def next(self) -> Deferred[Any]:
        self.reads += 1
        return _fired(self.responses.pop(0))

    def cancel(self) -> None:
        pass


def _fired(value: Any) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.callback(value)
    return d


class _Response:
    """A source response."""

    def __init__(self, status: int, ds: Dataset | None = None) -> None:
        self.status = status
        self.pending = status in (0xFF00, 0xFF01)
        self.identifier = b"x" if ds is not None else None
        self._ds = ds

    def dataset(self) -> Dataset:
        assert self._ds is not None
        return self._ds


class _Association:
    """A fake ClientAssociation with one accepted FIND context."""

    def __init__(self, stream: _Stream) -> None:
        self.stream = stream
        self.released = 0

    def context_for_class(self, sop_class: str) -> Any:
        return type("Ctx", (), {"transfer_syntax": EXPLICIT_LE})()

    def find(self, sop_class: str, data: bytes) -> _Stream:
        return self.stream

    def release(self) -> Deferred[None]:
        self.released += 1
        return _fired(None)


class DicomSourceBackpressureTests(SynchronousTestCase):
    """The source is read no faster than the requester takes responses."""

    def test_source_is_not_read_while_the_requester_is_not_writable(self) -> None:
        """While ``writable`` has not fired, no further response is read from the source; then it goes on and releases."""
        match = Dataset()
        match.StudyInstanceUID = "1.2"
        stream = _Stream([_Response(0xFF00, match), _Response(0x0000)])
        association = _Association(stream)
        ctx = QRContext(
            config=lambda: None, journal=None, run=None, reactor=Clock(), wall=lambda: 0.0,
            connect=lambda destination, proposals, role_selections=(): _fired(association),
        )
        query = find_module.DicomSourceQuery(ctx, _Destination("a"), STUDY_FIND, Dataset())
        gate: list[Deferred[None]] = []

        def writable() -> Deferred[None]:
            d: Deferred[None] = Deferred()
            gate.append(d)
            return d

        query.writable = writable
        seen: list[Dataset] = []
        d = query.start(lambda ds, status: seen.append(ds))
        self.assertEqual(stream.reads, 0)
        gate[0].callback(None)
        self.assertEqual((stream.reads, len(seen)), (1, 1))
        gate[1].callback(None)
        self.assertEqual(self.successResultOf(d), 0)
        self.assertEqual(association.released, 1)
