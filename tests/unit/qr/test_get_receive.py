"""A C-GET through :mod:`gateway.receive` and :mod:`gateway.qr.get`, in PDVs.

The requester's part is played with PDVs (as in
:mod:`tests.unit.qr.test_receive_qr`): it sends a C-GET-RQ on a Study Root
GET context and accepted CT Image Storage, only, in the SCP role (PS3.7
D.3.3.4). The source is a fake :class:`gateway.qr.get.ISource` that writes
each instance to a scratch file, as the DICOM adapter does. The test answers
each C-STORE sub-operation the gateway sends and reads every response: the
MR instance the requester did not accept is never sent and is counted failed
and listed in the final response's Failed SOP Instance UID List (PS3.4
C.4.3.1.3.2, C.4.3.3).
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.blocking import SynchronousRunner
from gateway.config.schema import RetrieveConfig
from gateway.dimse import commands as dimse
from gateway.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from gateway.qr import get
from gateway.qr.context import QRContext
from gateway.receive import AssociationInfo, StorageService
from gateway.spool import Spool
from gateway.ul.negotiate import AcceptedContext
from tests.unit.qr.test_get import FakeSource, study_identifier
from tests.unit.qr.test_receive_qr import _Peer, pdvs, request

STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_LE = "1.2.840.10008.1.2.1"

CONTEXTS = {
    1: AcceptedContext(1, STUDY_GET, EXPLICIT_LE, True, False),
    3: AcceptedContext(3, CT, EXPLICIT_LE, False, True),
}
INFO = AssociationInfo("A1", "10.0.0.7:40000", "WS01", "DICOMGW", "dicom", CONTEXTS)
IDENTIFIER = study_identifier("1.2")


class ScratchSource(FakeSource):
    """A fake source whose instances are real scratch files (data set only)."""

    def __init__(self, folder: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.folder = folder

    async def _run(self, on_instance: Any, on_pending: Any) -> get.SourceOutcome:
        async def writing(instance: get.ReceivedInstance) -> int:
            path = os.path.join(self.folder, instance.sop_instance_uid)
            with open(path, "wb") as f:
                f.write(b"DATASET " + instance.sop_instance_uid.encode())
            result: int = await on_instance(get.ReceivedInstance(path, instance.sop_class_uid, instance.sop_instance_uid, EXPLICIT_LE))
            return result

        return await super()._run(writing, on_pending)


class _FilePeer(_Peer):
    """A peer that also streams files: the data set read from the offset is kept as the message's data set."""

    def send_file(self, context_id: int, path: str, offset: int) -> Deferred[None]:
        """Read the data set and record it with the last command."""
        with open(path, "rb") as f:
            f.seek(offset)
            self.send_dataset(context_id, f.read())
        return succeed(None)


def _field(elements: dict[int, bytes], tag: int) -> int:
    return int(struct.unpack("<H", elements[tag])[0])


class GetThroughReceiveTests(SynchronousTestCase):
    """C-GET-RQ in; C-STORE-RQ sub-operations, pending and final C-GET-RSPs out."""

    def setUp(self) -> None:
        """A service on an association with the GET context and CT in the SCP role; a source with CT, MR, CT."""
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.peer = _FilePeer()
        self.source = ScratchSource(self.tmp, "arch", [(CT, "1.2.1"), (MR, "1.2.2"), (CT, "1.2.3")])
        config = type(
            "Config",
            (),
            {
                "listen": (),
                "retrieve": RetrieveConfig(sources=("arch",)),
                "spool": type("S", (), {"path": self.tmp})(),
                "destinations": (),
            },
        )()
        ctx = QRContext(
            config=lambda: config, journal=None, run=None, reactor=Clock(), wall=lambda: 0.0,
            extra={"get.open_source": lambda name, sop_class: self.source},
        )
        self.done: list[Deferred[None]] = []

        outer = self

        class GetSCP:
            """Dispatches the C-GET to :func:`gateway.qr.get.get`."""

            def handle(self, verb: str, info: Any, rq: Any, identifier: bytes, responder: Any) -> None:
                outer.done.append(get.get(info, rq, identifier, responder, ctx))

        spool = Spool(
            self.tmp, SynchronousRunner(), implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME, max_instance_size=1 << 20,
        )
        self.service = StorageService(self.peer, INFO, spool, admit=lambda w, i: Deferred(), qr=GetSCP())

    def answer_store(self, status: int) -> None:
        """Answer the last C-STORE-RQ the gateway sent with ``status``."""
        context_id, elements, _ = self.peer.sent[-1]
        message_id = _field(elements, dimse.Tag.MESSAGE_ID)
        self.service.pdata(pdvs(context_id, dimse.CStoreRSP(message_id, CT, None, status)))

    def test_partially_accepted_classes_count_failed_and_are_listed(self) -> None:
        """Two CT stored on context 3 in order, the MR never sent but failed and listed; pending counts, then 0xB000."""
        self.service.pdata(pdvs(1, request(dimse.CommandField.C_GET_RQ, 7, STUDY_GET), IDENTIFIER))
        [(context_id, elements, data)] = self.peer.sent
        self.assertEqual(context_id, 3)
        self.assertEqual(_field(elements, dimse.Tag.COMMAND_FIELD), 0x0001)
        self.assertEqual(data, b"DATASET 1.2.1")
        self.answer_store(0x0000)
        # The pending response after the first, the MR's (no C-STORE), then the second C-STORE-RQ.
        kinds = [_field(e, dimse.Tag.COMMAND_FIELD) for _, e, _ in self.peer.sent]
        self.assertEqual(kinds, [0x0001, 0x8010, 0x8010, 0x0001])
        self.assertEqual(self.peer.sent[-1][2], b"DATASET 1.2.3")
        first_pending = self.peer.sent[1][1]
        self.assertEqual(_field(first_pending, dimse.Tag.STATUS), 0xFF00)
        self.assertEqual(_field(first_pending, dimse.Tag.MESSAGE_ID_BEING_RESPONDED_TO), 7)
        self.assertEqual(
            [_field(first_pending, t) for t in (0x00001020, 0x00001021, 0x00001022, 0x00001023)], [2, 1, 0, 0]
        )
        second_pending = self.peer.sent[2][1]
        self.assertEqual([_field(second_pending, t) for t in (0x00001020, 0x00001021, 0x00001022)], [1, 1, 1])
        self.answer_store(0x0000)
        self.successResultOf(self.done[0])
        context_id, final, identifier = self.peer.sent[-1]
        self.assertEqual(context_id, 1)
        self.assertEqual(_field(final, dimse.Tag.COMMAND_FIELD), 0x8010)
        self.assertEqual(_field(final, dimse.Tag.STATUS), 0xB000)
        self.assertEqual([_field(final, t) for t in (0x00001021, 0x00001022, 0x00001023)], [2, 1, 0])
        assert identifier is not None
        self.assertIn(b"1.2.2", identifier)
        self.assertEqual(identifier[:4], b"\x08\x00\x58\x00")
        self.assertEqual([f for f in os.listdir(self.tmp) if f.startswith("1.2.")], [], "scratch files removed")

    def test_cancel_reaches_the_source(self) -> None:
        """C-CANCEL-RQ for the C-GET while a sub-operation is out: the source hears it; after the answer, 0xFE00 and no further C-STORE."""
        self.service.pdata(pdvs(1, request(dimse.CommandField.C_GET_RQ, 7, STUDY_GET), IDENTIFIER))
        self.service.pdata(pdvs(1, dimse.UnknownCommand(dimse.CommandField.C_CANCEL_RQ, 7, {}, False)))
        self.assertEqual(self.source.cancels, 1)
        self.answer_store(0x0000)
        self.successResultOf(self.done[0])
        kinds = [(_field(e, dimse.Tag.COMMAND_FIELD), _field(e, dimse.Tag.STATUS) if dimse.Tag.STATUS in e else None) for _, e, _ in self.peer.sent]
        self.assertEqual(kinds, [(0x0001, None), (0x8010, 0xFE00)])
