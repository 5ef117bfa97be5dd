"""The C-FIND handler (:func:`gateway.qr.find.find`) against real sources: pynetdicom Q/R SCPs (issue 16).

Two pynetdicom FIND SCPs (test-only) play two archives holding overlapping
studies; the real handler connects to them with ``connect_dicom`` (through
:class:`gateway.qr.find.DicomSourceQuery`), and a recording responder plays
the requester's association. Checked: a STUDY-level query merged from both
(each study once, the first source's version on a conflict), a source that
is down (non-strict: the other's matches and Success; strict: 0xC001), and a
C-CANCEL that reaches the running source (``event.is_cancelled``) while the
requester gets 0xFE00 at once.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Iterator

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind
from twisted.internet import defer
from twisted.trial.unittest import TestCase

from gateway import events
from gateway.blocking import SynchronousRunner
from gateway.config.schema import DicomDestination, QueryConfig
from gateway.dimse.identifier import decode_identifier, encode_identifier
from gateway.qr.context import QRContext
from gateway.qr.find import find
from gateway.send.dicom import connect_dicom
from tests.support.ports import free_port

FIND = str(StudyRootQueryRetrieveInformationModelFind)
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


class _Responder:
    """The requester's side: keeps the matches and fires ``done`` with the final."""

    transfer_syntax = EXPLICIT

    def __init__(self) -> None:
        self.matches: list[Dataset] = []
        self.done: defer.Deferred[tuple[int, str]] = defer.Deferred()
        self.cancelled: defer.Deferred[None] = defer.Deferred()
        self.first_match: defer.Deferred[None] = defer.Deferred()

    def pending(self, status: int, identifier: bytes | None = None, counts: Any = None) -> None:
        assert identifier is not None
        self.matches.append(decode_identifier(identifier, EXPLICIT))
        if not self.first_match.called:
            self.first_match.callback(None)

    def final(self, status: int, counts: Any = None, error_comment: str = "", failed_uids: Any = (), identifier: Any = None) -> None:
        self.done.callback((status, error_comment))


class _Listener:
    name = "dicom"
    query = None
    retrieve = None


class _Config:
    """The parts of GatewayConfig the handler reads."""

    def __init__(self, query: QueryConfig, destinations: tuple[DicomDestination, ...]) -> None:
        self.query = query
        self.listen = (_Listener(),)
        self.destinations = destinations

    def query_for(self, listener: Any) -> QueryConfig:
        return self.query


class _Info:
    assoc_id = "A1"
    peer_address = "127.0.0.1:40000"
    calling_ae_title = "WS01"
    called_ae_title = "DICOMGW"
    listener = "dicom"


class _RQ:
    message_id = 1
    affected_sop_class_uid = FIND


class _Observer:
    def __init__(self) -> None:
        self.seen: list[Any] = []

    def observe(self, event: Any) -> None:
        self.seen.append(event)


class FindAgainstArchivesTests(TestCase):
    """Real associations to two pynetdicom archives."""

    timeout = 120

    def setUp(self) -> None:
        """Archive ``a`` holds studies 1 and 2, ``b`` holds 2 and 3; ``slow`` answers every 50 ms until cancelled."""
        self.cancelled = threading.Event()
        self.ports: dict[str, int] = {}
        for name, studies in (("a", (1, 2)), ("b", (2, 3)), ("slow", tuple(range(1, 400)))):
            self.ports[name] = self._archive(name, studies)
        self.ports["down"] = free_port()
        self.observer = _Observer()

    def _archive(self, name: str, studies: tuple[int, ...]) -> int:
        ae = AE(ae_title=name.upper())
        ae.add_supported_context(FIND, [IMPLICIT, EXPLICIT])

        def on_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
            for n in studies:
                if event.is_cancelled:
                    self.cancelled.set()
                    yield 0xFE00, None
                    return
                match = Dataset()
                match.QueryRetrieveLevel = "STUDY"
                match.StudyInstanceUID = f"1.2.826.0.1.3680043.8.498.{n}"
                match.PatientName = name
                yield 0xFF00, match
                if name == "slow":
                    time.sleep(0.05)
            yield 0x0000, None

        port = free_port()
        server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_FIND, on_find)])
        self.addCleanup(server.shutdown)
        return port

    def run_find(self, sources: tuple[str, ...], **settings: Any) -> tuple[_Responder, defer.Deferred[None]]:
        from twisted.internet import reactor

        destinations = tuple(
            DicomDestination(name, name.upper(), "127.0.0.1", self.ports[name], "DICOMGW") for name in sources
        )
        config = _Config(QueryConfig(sources, **settings), destinations)
        ctx = QRContext(
            config=lambda: config,
            journal=None,
            run=SynchronousRunner(),
            reactor=reactor,
            wall=time.time,
            observer=self.observer,
            connect=lambda destination, proposals, role_selections=(): connect_dicom(
                reactor, destination, proposals, role_selections, verification=False
            ),
        )
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = ""
        ds.PatientName = ""
        responder = _Responder()
        settled = find(_Info(), _RQ(), encode_identifier(ds, EXPLICIT), responder, ctx)
        return responder, settled

    @defer.inlineCallbacks
    def test_study_query_merged_from_two_archives(self) -> Iterator[Any]:
        """Each study once; study 2, held by both, comes with archive ``a``'s (first listed) version."""
        responder, settled = self.run_find(("a", "b"))
        status, _ = yield responder.done
        yield settled
        self.assertEqual(status, 0x0000)
        seen = sorted((str(m.StudyInstanceUID).rsplit(".", 1)[1], str(m.PatientName)) for m in responder.matches)
        self.assertEqual(seen, [("1", "a"), ("2", "a"), ("3", "b")])

    @defer.inlineCallbacks
    def test_source_down_is_left_out_unless_strict(self) -> Iterator[Any]:
        """Non-strict: the other archive's matches and Success; strict: 0xC001 naming the source that is down."""
        responder, settled = self.run_find(("down", "b"))
        status, _ = yield responder.done
        yield settled
        self.assertEqual((status, len(responder.matches)), (0x0000, 2))
        [answered] = [e for e in self.observer.seen if isinstance(e, events.QueryAnswered)]
        self.assertEqual((answered.outcome, answered.failed_sources), ("partial", ("down",)))
        strict, settled = self.run_find(("down", "b"), strict=True)
        status, comment = yield strict.done
        yield settled
        self.assertEqual(status, 0xC001)
        self.assertIn("down", comment)

    @defer.inlineCallbacks
    def test_cancel_reaches_the_archive(self) -> Iterator[Any]:
        """The requester's C-CANCEL: final 0xFE00 at once, and the archive sees its C-CANCEL-RQ within a second."""
        responder, settled = self.run_find(("slow",))
        yield responder.first_match
        responder.cancelled.callback(None)
        self.assertTrue(responder.done.called)
        status, _ = yield responder.done
        self.assertEqual(status, 0xFE00)
        # The source's part ends with its own Cancel and the release.
        yield settled
        self.assertTrue(self.cancelled.is_set())
        self.assertLess(len(responder.matches), 100)
