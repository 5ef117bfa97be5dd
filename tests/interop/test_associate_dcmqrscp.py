"""The requestor's C-FIND, C-MOVE and C-GET (``gateway.associate``) against DCMTK's ``dcmqrscp``.

A second, independent Q/R SCP besides pynetdicom (``test_associate_qr``):
DCMTK's image archive, with three CT instances of one study indexed by
``dcmqridx``. Checked: a STUDY query answered once, an IMAGE query with the
three SOP Instance UIDs, a C-MOVE to a pynetdicom storage SCP listed in
dcmqrscp's host table with counts that add up and byte-identical pixel
data, an unknown move destination failing, and a C-GET whose sub-operations
come back on our association through role selection (PS3.4 C.4.3.3).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage
from twisted.internet import defer
from twisted.trial.unittest import TestCase

from gateway.ul.items import SCPSCURoleSelection
from tests.support import dcmtk
from tests.support.peerprocess import PeerProcess
from tests.support.ports import free_port, port_is_open

CT_SMALL = get_testdata_file("CT_small.dcm", download=False)
FIND = "1.2.840.10008.5.1.4.1.2.2.1"
MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
GET = "1.2.840.10008.5.1.4.1.2.2.3"
CT = str(CTImageStorage)
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


class DcmQRSCP(PeerProcess):
    """``dcmqrscp`` serving one storage area (AE ARCHIVE), with DEST in its host table."""

    def __init__(self, folder: Path, port: int, dest_port: int) -> None:
        super().__init__("dcmqrscp", folder / "dcmqrscp.log")
        self.folder = folder
        self.port = port
        self.db = folder / "db"
        self.db.mkdir(parents=True)
        self.config = folder / "dcmqrscp.cfg"
        self.config.write_text(
            f"NetworkTCPPort = {port}\n"
            "MaxPDUSize = 16384\n"
            "MaxAssociations = 16\n"
            "HostTable BEGIN\n"
            f"dest = (DEST, 127.0.0.1, {dest_port})\n"
            "HostTable END\n"
            "VendorTable BEGIN\n"
            "VendorTable END\n"
            "AETable BEGIN\n"
            f"ARCHIVE {self.db} RW (100, 64mb) ANY\n"
            "AETable END\n"
        )

    def index(self, files: list[Path]) -> None:
        """Register ``files`` in the storage area with ``dcmqridx``."""
        result = dcmtk._run([dcmtk.require_tool("dcmqridx"), os.fspath(self.db), *map(os.fspath, files)], 60.0, None)
        assert result.returncode == 0, result

    def start(self) -> "DcmQRSCP":
        """Start it and wait for its port."""
        self.spawn(
            [dcmtk.require_tool("dcmqrscp"), "-c", os.fspath(self.config), "--disable-host-lookup", str(self.port)],
            lambda: port_is_open("127.0.0.1", self.port),
            30.0,
        )
        return self


class RequestorDcmqrscpTests(TestCase):
    """find/move/get of ClientAssociation against dcmqrscp."""

    timeout = 120

    def setUp(self) -> None:
        """Three CT instances of one study in dcmqrscp; a pynetdicom storage SCP as DEST."""
        assert CT_SMALL is not None
        folder = Path(self.mktemp()).resolve()
        (folder / "files").mkdir(parents=True)
        self.study = generate_uid()
        self.series = generate_uid()
        self.uids: list[str] = []
        files = []
        for i in range(3):
            ds = dcmread(CT_SMALL)
            ds.StudyInstanceUID = self.study
            ds.SeriesInstanceUID = self.series
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.PatientID = "DIMSE16"
            ds.InstanceNumber = i + 1
            path = folder / "files" / f"ct{i}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
            self.uids.append(str(ds.SOPInstanceUID))
        self.pixels = dcmread(files[0]).PixelData
        self.stored: dict[str, bytes] = {}
        store_ae = AE(ae_title="DEST")
        store_ae.add_supported_context(CTImageStorage, [IMPLICIT, EXPLICIT, "1.2.840.10008.1.2.2"])

        def on_store(event: Any) -> int:
            self.stored[str(event.request.AffectedSOPInstanceUID)] = event.request.DataSet.getvalue()
            return 0x0000

        dest_port = free_port()
        dest = store_ae.start_server(("127.0.0.1", dest_port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        self.addCleanup(dest.shutdown)
        self.archive = DcmQRSCP(folder, free_port(), dest_port)
        self.archive.index(files)
        self.archive.start()
        self.addCleanup(self.archive.stop)

    async def connect(self, role_selections: tuple[SCPSCURoleSelection, ...] = ()) -> Any:
        """Our association to dcmqrscp."""
        from twisted.internet import reactor

        from gateway.associate import connect_tcp

        proposals = [(FIND, [IMPLICIT]), (MOVE, [IMPLICIT]), (GET, [IMPLICIT]), (CT, [EXPLICIT, IMPLICIT])]
        return await connect_tcp(
            reactor, "127.0.0.1", self.archive.port, calling_ae_title="DICOMGW", called_ae_title="ARCHIVE",
            proposals=proposals, timeout=30.0, role_selections=role_selections,
        )

    def identifier(self, level: str, **keys: Any) -> Dataset:
        """An identifier at ``level``."""
        ds = Dataset()
        ds.QueryRetrieveLevel = level
        for name, value in keys.items():
            setattr(ds, name, value)
        return ds

    def test_find_study_and_image(self) -> defer.Deferred[None]:
        """A STUDY query finds the study once; an IMAGE query finds the three instances."""

        async def run() -> None:
            assoc = await self.connect()
            try:
                studies = [r async for r in assoc.find(FIND, self.identifier("STUDY", StudyInstanceUID="", PatientID="DIMSE16"))]
                images = [
                    r async for r in assoc.find(
                        FIND, self.identifier("IMAGE", StudyInstanceUID=self.study, SeriesInstanceUID=self.series, SOPInstanceUID="")
                    )
                ]
            finally:
                await assoc.release()
            self.assertEqual([r.status for r in studies], [0xFF00, 0x0000])
            self.assertEqual(studies[0].dataset().StudyInstanceUID, self.study)
            self.assertEqual(images[-1].status, 0x0000)
            self.assertEqual(sorted(r.dataset().SOPInstanceUID for r in images[:-1]), sorted(self.uids))

        return defer.Deferred.fromCoroutine(run())

    def test_move_known_and_unknown_destination(self) -> defer.Deferred[None]:
        """C-MOVE of the study to DEST: three completed, pixels identical; to NOBODY: a failure status."""

        async def run() -> None:
            assoc = await self.connect()
            try:
                moved = [r async for r in assoc.move(MOVE, "DEST", self.identifier("STUDY", StudyInstanceUID=self.study))]
                unknown = [r async for r in assoc.move(MOVE, "NOBODY", self.identifier("STUDY", StudyInstanceUID=self.study))]
            finally:
                await assoc.release()
            final = moved[-1].command
            self.assertEqual((final.status, final.completed, final.failed or 0), (0x0000, 3, 0))
            for pending in moved[:-1]:
                c = pending.command
                self.assertEqual(c.remaining + c.completed + c.failed + c.warning, 3)
            self.assertEqual(sorted(self.stored), sorted(self.uids))
            self.assertEqual(unknown[-1].status, 0xA801)

        return defer.Deferred.fromCoroutine(run())

    def test_get_sub_operations(self) -> defer.Deferred[None]:
        """C-GET of the series with the CT SCP role: three Part 10 files, the final counts three."""
        from gateway.associate import FileStoreSink

        folder = Path(self.mktemp())
        folder.mkdir()
        files: list[str] = []

        def on_store(rq: Any, context: Any) -> FileStoreSink:
            return FileStoreSink(os.fspath(folder / rq.affected_sop_instance_uid), rq, context,
                                 lambda p, offset: files.append(p) or 0x0000)

        async def run() -> None:
            assoc = await self.connect((SCPSCURoleSelection(CT, scu_role=False, scp_role=True),))
            try:
                responses = [
                    r async for r in assoc.get(
                        GET, self.identifier("SERIES", StudyInstanceUID=self.study, SeriesInstanceUID=self.series), on_store
                    )
                ]
            finally:
                await assoc.release()
            final = responses[-1].command
            self.assertEqual((final.status, final.completed), (0x0000, 3))
            self.assertEqual(sorted(os.path.basename(f) for f in files), sorted(self.uids))
            self.assertEqual(dcmread(files[0]).PixelData, self.pixels)

        return defer.Deferred.fromCoroutine(run())
