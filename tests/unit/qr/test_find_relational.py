"""Relational queries and 0xFF01 through :mod:`gateway.qr.find` with its real :class:`DicomSourceQuery` (issue 16).

``ctx.connect`` is a fake that records what each source association
proposes (the SOP Class Extended Negotiation sub-item, PS3.7 D.3.3.5) and
hands back a fake association whose extended negotiation answer the test
chooses (PS3.4 C.5.1.1, byte 1 relational-queries). Everything fires
synchronously: no reactor, no sleeping.
"""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway import events
from gateway.blocking import SynchronousRunner
from gateway.config.schema import QueryConfig
from gateway.dimse.identifier import encode_identifier
from gateway.qr.context import QRContext
from gateway.qr.find import find, relational_item
from tests.unit.qr.test_find import EXPLICIT_LE, STUDY_FIND, _Config, _Info, _Observer, _Responder, _RQ, query


class _Response:
    """A source's C-FIND-RSP as :class:`gateway.associate.QRResponse` shows it."""

    def __init__(self, status: int, ds: Dataset | None = None) -> None:
        self.status = status
        self.pending = status in (0xFF00, 0xFF01)
        self.identifier = b"x" if ds is not None else None
        self._ds = ds

    def dataset(self) -> Dataset:
        assert self._ds is not None
        return self._ds


class _Stream:
    """A QRStream handing out canned responses."""

    def __init__(self, responses: list[_Response]) -> None:
        self.responses = list(responses)

    def next(self) -> Deferred[Any]:
        return succeed(self.responses.pop(0) if self.responses else None)

    def cancel(self) -> None:
        pass


class _Association:
    """A ClientAssociation: one FIND context; relational granted or not."""

    def __init__(self, granted: bool, responses: list[_Response]) -> None:
        self.granted = granted
        self.responses = responses
        self.asked: list[bytes] = []
        self.released = 0

    def context_for_class(self, sop_class: str) -> Any:
        return type("Ctx", (), {"transfer_syntax": EXPLICIT_LE})()

    def relational_queries(self, sop_class: str) -> bool:
        return self.granted

    def find(self, sop_class: str, data: bytes) -> _Stream:
        self.asked.append(data)
        return _Stream(self.responses)

    def release(self) -> Deferred[None]:
        self.released += 1
        return succeed(None)


def image(uid: str) -> Dataset:
    """An IMAGE-level match."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.SOPInstanceUID = uid
    return ds


class RelationalSourcesTests(SynchronousTestCase):
    """A relational query goes only to sources that granted relational-queries."""

    def setUp(self) -> None:
        self.proposed: dict[str, tuple[Any, ...]] = {}
        self.associations = {
            "a": _Association(True, [_Response(0xFF00, image("1.1")), _Response(0x0000)]),
            "b": _Association(False, [_Response(0xFF00, image("2.1")), _Response(0x0000)]),
        }
        self.responder = _Responder()
        self.observer = _Observer()

    def run_find(self, identifier: bytes, granted: bool = True, **settings: Any) -> None:
        settings.setdefault("sources", ("a", "b"))
        config = _Config(QueryConfig(**settings))

        def connect(destination: Any, proposals: Any, role_selections: Any = (), **kwargs: Any) -> Deferred[Any]:
            self.proposed[destination.name] = tuple(kwargs.get("extended_negotiations", ()))
            return succeed(self.associations[destination.name])

        ctx = QRContext(
            config=lambda: config, journal=None, run=SynchronousRunner(), reactor=Clock(), wall=lambda: 0.0,
            observer=self.observer, connect=connect,
        )
        info = _Info()
        info.relational_queries = frozenset({STUDY_FIND}) if granted else frozenset()
        find(info, _RQ(), identifier, self.responder, ctx)

    def failures(self) -> dict[str, str]:
        """Source name -> reason, for the sources that failed."""
        return {e.destination: e.reason for e in self.observer.seen if isinstance(e, events.QuerySourceAnswered) and not e.ok}

    def test_relational_is_proposed_to_every_source_when_configured(self) -> None:
        """``relational: true``: each source association carries the FIND class's extended negotiation item, byte 1 = 1."""
        self.run_find(query("STUDY", StudyInstanceUID="1.2"), relational=True)
        self.assertEqual(self.proposed, {"a": (relational_item(STUDY_FIND),), "b": (relational_item(STUDY_FIND),)})
        self.assertEqual(relational_item(STUDY_FIND).application_information, b"\x01")

    def test_nothing_is_proposed_by_default(self) -> None:
        """Without ``relational`` no extended negotiation is proposed (sources see the request as before)."""
        self.run_find(query("STUDY", StudyInstanceUID="1.2"))
        self.assertEqual(self.proposed, {"a": (), "b": ()})

    def test_relational_query_skips_a_source_that_refused_relational(self) -> None:
        """Non-strict: the source that did not grant relational is never asked, released, left out; Success with the others' matches."""
        self.run_find(query("IMAGE", SOPInstanceUID=""), relational=True)
        self.assertEqual(len(self.associations["a"].asked), 1)
        self.assertEqual(self.associations["b"].asked, [])
        self.assertEqual(self.associations["b"].released, 1)
        self.assertEqual([str(ds.SOPInstanceUID) for ds in self.responder.matches], ["1.1"])
        self.assertEqual(self.responder.finals, [(0x0000, "")])
        self.assertIn("relational", self.failures()["b"])

    def test_relational_query_strict_fails_when_a_source_refused_relational(self) -> None:
        """Strict: a source without relational fails the query 0xC001 with an Error Comment naming it."""
        # a never answers: the failure of b decides.
        self.associations["a"].find = lambda sop, data: type("Silent", (), {"next": lambda s: Deferred(), "cancel": lambda s: None})()  # type: ignore[method-assign]
        self.run_find(query("IMAGE", SOPInstanceUID=""), relational=True, strict=True)
        [(status, comment)] = self.responder.finals
        self.assertEqual(status, 0xC001)
        self.assertIn("b", comment)

    def test_hierarchical_query_goes_to_every_source(self) -> None:
        """A hierarchical query is sent to a source whatever it answered to relational."""
        self.run_find(query("STUDY", StudyInstanceUID=""), relational=True)
        self.assertEqual((len(self.associations["a"].asked), len(self.associations["b"].asked)), (1, 1))
        self.assertEqual(self.responder.finals, [(0x0000, "")])
        self.assertEqual(self.failures(), {})

    def test_relational_query_without_grant_reaches_no_source(self) -> None:
        """A requester not granted relational-queries: 0xC000 and no association is opened."""
        self.run_find(query("IMAGE", SOPInstanceUID=""), granted=False, relational=True)
        self.assertEqual(self.responder.finals[0][0], 0xC000)
        self.assertEqual(self.proposed, {})


class PendingWarningTests(SynchronousTestCase):
    """0xFF01 from a source's stream reaches the requester as 0xFF01 (PS3.4 C.4.1.1.4)."""

    def test_source_ff01_is_relayed_as_ff01(self) -> None:
        """The source's pending statuses are kept, match by match."""
        association = _Association(False, [
            _Response(0xFF01, image("1.1")), _Response(0xFF00, image("1.2")), _Response(0x0000),
        ])
        config = _Config(QueryConfig(sources=("a",)))
        ctx = QRContext(
            config=lambda: config, journal=None, run=SynchronousRunner(), reactor=Clock(), wall=lambda: 0.0,
            observer=_Observer(), connect=lambda destination, proposals, role_selections=(): succeed(association),
        )
        responder = _Responder()
        ds = Dataset()
        ds.QueryRetrieveLevel = "IMAGE"
        ds.StudyInstanceUID = "1.2"
        ds.SeriesInstanceUID = "1.2.3"
        ds.SOPInstanceUID = ""
        find(_Info(), _RQ(), encode_identifier(ds, EXPLICIT_LE), responder, ctx)
        self.assertEqual(responder.statuses, [0xFF01, 0xFF00])
        self.assertEqual(responder.finals, [(0x0000, "")])
