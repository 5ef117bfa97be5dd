"""The requestor's C-FIND, C-MOVE and C-GET (``gateway.associate``) against a pynetdicom Q/R SCP.

pynetdicom (test-only) plays the archive: its Study Root FIND/MOVE/GET
handlers answer from pydicom's bundled CT instance. Checked: matches
arrive and decode, C-CANCEL-RQ reaches the SCP (``event.is_cancelled``) and
the final status is Cancel (0xFE00, PS3.4 C.4.1.1.4), C-MOVE to an unknown
destination is 0xA801 and to a known one has counts that add up, and C-GET's
C-STORE sub-operations come back on our association through role selection
(PS3.4 C.4.3.3, PS3.7 D.3.3.4), byte-identical.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Iterator

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from twisted.internet import defer
from twisted.trial.unittest import TestCase

from gateway.ul.items import SCPSCURoleSelection
from tests.support.ports import free_port

CT_SMALL = get_testdata_file("CT_small.dcm", download=False)
FIND = str(StudyRootQueryRetrieveInformationModelFind)
MOVE = str(StudyRootQueryRetrieveInformationModelMove)
GET = str(StudyRootQueryRetrieveInformationModelGet)
CT = str(CTImageStorage)
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


def study_query(**keys: Any) -> Dataset:
    """A STUDY-level query."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    for name, value in keys.items():
        setattr(ds, name, value)
    return ds


class RequestorQRTests(TestCase):
    """find/move/get of ClientAssociation against pynetdicom's Q/R SCP."""

    timeout = 120

    def setUp(self) -> None:
        """A pynetdicom Q/R SCP (FIND, MOVE, GET, CT storage with roles) and a storage SCP as move destination."""
        assert CT_SMALL is not None
        self.instance = dcmread(CT_SMALL)
        self.cancelled = threading.Event()
        self.stored: dict[str, bytes] = {}
        # The move destination: a pynetdicom storage SCP.
        store_ae = AE(ae_title="DEST")
        store_ae.add_supported_context(CTImageStorage, [IMPLICIT, EXPLICIT])
        self.dest_port = free_port()

        def on_store(event: Any) -> int:
            self.stored[str(event.request.AffectedSOPInstanceUID)] = event.request.DataSet.getvalue()
            return 0x0000

        dest = store_ae.start_server(("127.0.0.1", self.dest_port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        self.addCleanup(dest.shutdown)

        ae = AE(ae_title="ARCHIVE")
        for sop in (FIND, MOVE, GET):
            ae.add_supported_context(sop, [IMPLICIT, EXPLICIT])
        # The C-GET requester takes the SCP role for CT (PS3.7 D.3.3.4).
        ae.add_supported_context(CTImageStorage, [IMPLICIT, EXPLICIT], scu_role=True, scp_role=True)
        ae.add_requested_context(CTImageStorage, [IMPLICIT, EXPLICIT])
        self.port = free_port()
        handlers = [
            (evt.EVT_C_FIND, self.on_find),
            (evt.EVT_C_MOVE, self.on_move),
            (evt.EVT_C_GET, self.on_get),
        ]
        server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)
        self.addCleanup(server.shutdown)

    # -- the archive's handlers (pynetdicom threads) ---------------------------------------

    def on_find(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        """Three matches, or for PatientID SLOW a match every 50 ms until cancelled."""
        slow = getattr(event.identifier, "PatientID", "") == "SLOW"
        for i in range(1000 if slow else 3):
            if event.is_cancelled:
                self.cancelled.set()
                yield 0xFE00, None
                return
            match = Dataset()
            match.QueryRetrieveLevel = "STUDY"
            match.StudyInstanceUID = f"1.2.826.0.1.3680043.8.498.{i + 1}"
            yield 0xFF00, match
            if slow:
                time.sleep(0.05)
        yield 0x0000, None

    def on_move(self, event: Any) -> Iterator[Any]:
        """Known destination DEST gets the CT instance; any other is unknown."""
        if event.move_destination.strip() != b"DEST" and str(event.move_destination).strip() != "DEST":
            yield None, None
            return
        yield "127.0.0.1", self.dest_port
        yield 1
        yield 0xFF00, self.instance

    def on_get(self, event: Any) -> Iterator[Any]:
        """The CT instance, as one C-STORE sub-operation."""
        yield 1
        yield 0xFF00, self.instance

    # -- helpers ----------------------------------------------------------------------------

    async def connect(self, role_selections: tuple[SCPSCURoleSelection, ...] = ()) -> Any:
        """Our association to the archive, proposing the Q/R classes (and CT for C-GET)."""
        from twisted.internet import reactor

        from gateway.associate import connect_tcp

        proposals = [(FIND, [IMPLICIT]), (MOVE, [IMPLICIT]), (GET, [IMPLICIT]), (CT, [EXPLICIT, IMPLICIT])]
        return await connect_tcp(
            reactor, "127.0.0.1", self.port, calling_ae_title="DICOMGW", called_ae_title="ARCHIVE",
            proposals=proposals, timeout=30.0, role_selections=role_selections,
        )

    # -- tests ------------------------------------------------------------------------------

    def test_find_streams_matches(self) -> defer.Deferred[None]:
        """Three matches, each decodable, then a success final."""

        async def run() -> None:
            assoc = await self.connect()
            try:
                responses = [r async for r in assoc.find(FIND, study_query())]
            finally:
                await assoc.release()
            self.assertEqual([r.status for r in responses], [0xFF00] * 3 + [0x0000])
            self.assertEqual(
                [r.dataset().StudyInstanceUID for r in responses[:3]],
                [f"1.2.826.0.1.3680043.8.498.{i}" for i in (1, 2, 3)],
            )

        return defer.Deferred.fromCoroutine(run())

    def test_cancel_reaches_the_scp(self) -> defer.Deferred[None]:
        """After two matches, cancel(): the SCP sees is_cancelled and the final status is 0xFE00."""

        async def run() -> None:
            assoc = await self.connect()
            stream = assoc.find(FIND, study_query(PatientID="SLOW"))
            seen = 0
            statuses = []
            try:
                async for response in stream:
                    statuses.append(response.status)
                    seen += 1
                    if seen == 2:
                        stream.cancel()
            finally:
                await assoc.release()
            self.assertEqual(statuses[-1], 0xFE00)
            self.assertLess(len(statuses), 100)
            self.assertTrue(self.cancelled.is_set())

        return defer.Deferred.fromCoroutine(run())

    def test_move_unknown_destination_and_known(self) -> defer.Deferred[None]:
        """C-MOVE to an unknown AE ends 0xA801; to DEST the instance arrives and the counts add up."""

        async def run() -> None:
            assoc = await self.connect()
            try:
                unknown = [r async for r in assoc.move(MOVE, "NOBODY", study_query(StudyInstanceUID="1.2.3"))]
                known = [r async for r in assoc.move(MOVE, "DEST", study_query(StudyInstanceUID="1.2.3"), message_id=777)]
            finally:
                await assoc.release()
            self.assertEqual(unknown[-1].status, 0xA801)
            final = known[-1].command
            self.assertEqual((final.status, final.completed, final.failed or 0, final.warning or 0), (0x0000, 1, 0, 0))
            self.assertIn(str(self.instance.SOPInstanceUID), self.stored)

        return defer.Deferred.fromCoroutine(run())

    def test_get_sub_operations_arrive_on_our_association(self) -> defer.Deferred[None]:
        """C-GET with the CT SCP role: the instance is written by FileStoreSink and the final counts it."""
        from gateway.associate import FileStoreSink
        from gateway.meta import read_part10_header

        folder = self.mktemp()
        os.makedirs(folder)
        files: list[tuple[str, int]] = []

        def on_store(rq: Any, context: Any) -> FileStoreSink:
            path = os.path.join(folder, rq.affected_sop_instance_uid)
            return FileStoreSink(path, rq, context, lambda p, offset: files.append((p, offset)) or 0x0000)

        async def run() -> None:
            assoc = await self.connect((SCPSCURoleSelection(CT, scu_role=False, scp_role=True),))
            try:
                identifier = Dataset()
                identifier.QueryRetrieveLevel = "STUDY"
                identifier.StudyInstanceUID = str(self.instance.StudyInstanceUID)
                responses = [r async for r in assoc.get(GET, identifier, on_store)]
            finally:
                await assoc.release()
            final = responses[-1].command
            self.assertEqual((final.status, final.completed), (0x0000, 1))
            ((path, offset),) = files
            header = read_part10_header(path)
            self.assertEqual(header.sop_instance_uid, str(self.instance.SOPInstanceUID))
            got = dcmread(path)
            self.assertEqual(got.PixelData, self.instance.PixelData)

        return defer.Deferred.fromCoroutine(run())
