"""Query/Retrieve through the acceptor adapter, in bytes (issue 16).

The requester's part is played with PDUs built by our codec (as in
:mod:`tests.adapters.test_listen`); behind the
:class:`~gateway.listen.AcceptorFactory` are the listener's real negotiation
settings (:func:`gateway.service.acceptor_settings`: the FIND classes are
accepted because ``query`` applies) and a real
:class:`~gateway.qr.scp.QueryRetrieveSCP` with the real C-FIND handler; only
the sources are fakes. A C-GET sub-operation's data set is streamed from a
file through the same adapter (:meth:`AcceptorProtocol.send_file`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Callable

from pydicom.dataset import Dataset
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gateway.access import AccessPolicy
from gateway.blocking import SynchronousRunner
from gateway.config.schema import (
    AcceptConfig,
    DicomDestination,
    GatewayConfig,
    LimitsConfig,
    ListenerConfig,
    QueryConfig,
    SpoolConfig,
)
from gateway.dimse import commands as dimse
from gateway.dimse.identifier import decode_identifier, encode_identifier
from gateway.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from gateway.listen import AcceptorFactory, AcceptorLimits
from gateway.qr.context import QRContext
from gateway.qr.scp import QueryRetrieveSCP
from gateway.queue.memory import MemoryQueueStore
from gateway.service import acceptor_settings
from gateway.spool import Spool
from gateway.ul import pdu
from tests.adapters.test_listen import Modality

STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"


class _Source:
    """A fake source the test feeds."""

    def __init__(self) -> None:
        self.on_match: Callable[[Dataset], None] | None = None
        self.done: Deferred[int] = Deferred()
        self.cancels = 0

    def start(self, on_match: Callable[[Dataset], None]) -> Deferred[int]:
        self.on_match = on_match
        return self.done

    def cancel(self) -> None:
        self.cancels += 1


class QueryThroughTheAcceptorTests(SynchronousTestCase):
    """C-FIND-RQ in, pending C-FIND-RSPs out as the source answers, C-CANCEL, then the final."""

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.config = GatewayConfig(
            source="test.yaml",
            ae_title="DICOMGW",
            listen=(ListenerConfig("127.0.0.1", 0, name="dicom"),),
            accept=AcceptConfig(calling_ae_titles=("WS*",)),
            limits=LimitsConfig(),
            spool=SpoolConfig(self.tmp),
            destinations=(DicomDestination("pacs", "PACS", "127.0.0.1", 104, "DICOMGW"),),
            query=QueryConfig(("pacs",)),
        )
        self.sources: list[_Source] = []

        def open_source(ctx: Any, destination: Any, sop_class: str, query: Dataset) -> _Source:
            source = _Source()
            self.sources.append(source)
            return source

        self.clock = Clock()
        ctx = QRContext(
            config=lambda: self.config, journal=MemoryQueueStore(), run=SynchronousRunner(), reactor=self.clock,
            wall=lambda: 0.0, extra={"open_source": open_source},
        )
        self.factory = AcceptorFactory(
            name="dicom",
            acceptor_settings=acceptor_settings(self.config, self.config.listen[0]),
            access=AccessPolicy("DICOMGW", ("WS*",)),
            spool=Spool(
                self.tmp, SynchronousRunner(), implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                implementation_version_name=IMPLEMENTATION_VERSION_NAME, max_instance_size=1 << 20,
            ),
            clock=self.clock,
            limits=AcceptorLimits(),
            qr=QueryRetrieveSCP(ctx),
        )
        self.modality = Modality(calling="WS01")
        self.proto = self.factory.buildProtocol(None)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.proto.makeConnection(self.transport)
        self.proto.dataReceived(self.modality.associate_rq(((1, STUDY_FIND, (IMPLICIT_LE,)),)))
        (ac,) = self.modality.read(self.transport)
        self.assertEqual([c.result for c in ac.presentation_contexts], [pdu.ContextResult.ACCEPTANCE])

    def find(self, message_id: int = 5) -> None:
        """Send a STUDY-level C-FIND-RQ with its identifier."""
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = ""
        rq = dimse.CFindRQ(message_id, STUDY_FIND)
        self.proto.dataReceived(self.modality.command(1, rq) + self.modality.dataset(1, encode_identifier(ds, IMPLICIT_LE), 16))

    def messages(self) -> list[tuple[Any, bytes | None]]:
        """Each DIMSE message sent since the last read: (command, data set)."""
        out: list[tuple[Any, bytes | None]] = []
        parts: list[bytes] = []
        for item in self.modality.read(self.transport):
            assert isinstance(item, pdu.PDataTF)
            for p in item.pdvs:
                parts.append(p.data)
                if p.is_last:
                    data = b"".join(parts)
                    parts = []
                    if p.is_command:
                        out.append((dimse.decode_command(data), None))
                    else:
                        out[-1] = (out[-1][0], data)
        return out

    def test_matches_stream_as_the_source_answers(self) -> None:
        """Each source match leaves as a pending C-FIND-RSP with its identifier at once; the final follows the source's."""
        self.find()
        [source] = self.sources
        self.assertEqual(self.messages(), [])
        match = Dataset()
        match.QueryRetrieveLevel = "STUDY"
        match.StudyInstanceUID = "1.2.3"
        assert source.on_match is not None
        source.on_match(match)
        [(rsp, data)] = self.messages()
        self.assertEqual((type(rsp).__name__, rsp.message_id_being_responded_to, rsp.status), ("CFindRSP", 5, 0xFF00))
        assert data is not None
        self.assertEqual(str(decode_identifier(data, IMPLICIT_LE).StudyInstanceUID), "1.2.3")
        source.done.callback(0)
        [(final, none)] = self.messages()
        self.assertEqual((final.status, none), (0x0000, None))

    def test_cancel_reaches_the_source_and_answers_cancel(self) -> None:
        """C-CANCEL-RQ for the open C-FIND cancels the source and the final is 0xFE00."""
        self.find()
        self.proto.dataReceived(self.modality.command(1, dimse.CCancelRQ(5)))
        self.assertEqual(self.sources[0].cancels, 1)
        [(final, _)] = self.messages()
        self.assertEqual((final.message_id_being_responded_to, final.status), (5, 0xFE00))

    def test_send_file_streams_the_data_set_from_its_offset(self) -> None:
        """``send_file`` sends the file's bytes after the offset as data set PDVs, the last flagged last."""
        path = os.path.join(self.tmp, "x.dcm")
        payload = bytes(range(256)) * 200
        with open(path, "wb") as fp:
            fp.write(b"M" * 132 + payload)
        d = self.proto.send_file(1, path, 132)
        for _ in range(100):
            self.clock.advance(0)
        self.successResultOf(d)
        pdvs = [p for item in self.modality.read(self.transport) if isinstance(item, pdu.PDataTF) for p in item.pdvs]
        self.assertEqual(b"".join(p.data for p in pdvs), payload)
        self.assertEqual([p.is_last for p in pdvs].count(True), 1)
        self.assertTrue(pdvs[-1].is_last)
        self.assertFalse(any(p.is_command for p in pdvs))
