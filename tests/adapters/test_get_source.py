"""A C-GET through :mod:`gateway.qr.get` from a real pynetdicom C-GET SCP source (issue 16).

pynetdicom (test-only) listens on loopback in its own threads as the
archive: a Study Root C-GET SCP holding a few instances of several SOP
classes, which it sends back as C-STORE sub-operations on the gateway's
association (the gateway proposes the storage classes in the SCP role,
PS3.7 D.3.3.4, PS3.4 C.4.3.3). The requester is a fake responder that
accepted only CT and MR in the SCP role: the SR instance reaches the gateway
and is counted failed by it; the VL photographic instance, a class the
gateway did not propose, is counted failed by the source; both are in the
final Failed SOP Instance UID List. The gateway side runs on the global
reactor (real sockets), so the tests are trial ``TestCase``s.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.trial.unittest import TestCase

from gateway.config.schema import DicomDestination
from gateway.qr import get
from gateway.qr.context import QRContext, SubOperations
from gateway.send.dicom import connect_dicom
from gateway.ul.negotiate import AcceptedContext
from tests.support.ports import free_port
from tests.unit.qr.test_get import FakeResponder, study_identifier

STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
SR = "1.2.840.10008.5.1.4.1.1.88.22"
VL_PHOTO = "1.2.840.10008.5.1.4.1.1.77.1.4"
STUDY = "1.2.826.0.1.3680043.8.498.1"


def instance(sop_class: str, uid: str) -> Dataset:
    """A small instance of ``sop_class`` in the study, Explicit VR Little Endian."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = STUDY
    ds.PatientID = "P1"
    ds.ImageComments = "payload " + uid
    return ds


class GetSource:
    """A pynetdicom Study Root C-GET SCP holding ``instances``; records cancels."""

    def __init__(self, instances: list[Dataset], hold: threading.Event | None = None) -> None:
        self.instances = instances
        self.port = free_port()
        self.hold = hold
        self.cancelled = threading.Event()
        self.sent = 0
        self._server: Any = None

    def _on_get(self, event: Any) -> Any:
        """Yield the count, then each instance (pynetdicom thread)."""
        yield len(self.instances)
        for ds in self.instances:
            if event.is_cancelled:
                self.cancelled.set()
                yield (0xFE00, None)
                return
            yield (0xFF00, ds)
            self.sent += 1
            if self.hold is not None:
                self.hold.wait(10)

    def start(self) -> "GetSource":
        """Listen (background threads)."""
        from pynetdicom import AE, evt

        ae = AE(ae_title="ARCHIVE")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        ae.add_supported_context(STUDY_GET, [ExplicitVRLittleEndian, "1.2.840.10008.1.2"])
        for sop_class in (CT, MR, SR):
            # As acceptor: scp_role=True accepts the requestor's proposed SCP role (PS3.7 D.3.3.4).
            ae.add_supported_context(sop_class, [ExplicitVRLittleEndian], scu_role=False, scp_role=True)
        self._server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_GET, self._on_get)])
        return self

    def stop(self) -> None:
        """Stop listening."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()


class ReadingResponder(FakeResponder):
    """A requester that also keeps the data set bytes of each stored instance."""

    def __init__(self, accepted: dict[str, int]) -> None:
        super().__init__(accepted)
        self.datasets: dict[str, bytes] = {}

    def store(self, path: str, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, dataset_offset: int) -> Deferred[int]:
        """Read the scratch file's data set (for an accepted class), then answer as the fake does."""
        if sop_class_uid in self.accepted:
            with open(path, "rb") as f:
                f.seek(dataset_offset)
                self.datasets[sop_instance_uid] = f.read()
        return super().store(path, sop_class_uid, sop_instance_uid, transfer_syntax_uid, dataset_offset)


REQUESTER_CONTEXTS = {
    1: AcceptedContext(1, STUDY_GET, ExplicitVRLittleEndian, True, False),
    3: AcceptedContext(3, CT, ExplicitVRLittleEndian, False, True),
    5: AcceptedContext(5, MR, ExplicitVRLittleEndian, False, True),
}


class GetFromPynetdicomTests(TestCase):
    """``DicomGetSource`` and :func:`gateway.qr.get.retrieve` against a real C-GET SCP."""

    def setUp(self) -> None:
        """A scratch folder."""
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def source(self, instances: list[Dataset], **kwargs: Any) -> GetSource:
        """A started source, stopped at clean-up."""
        source = GetSource(instances, **kwargs).start()
        self.addCleanup(source.stop)
        return source

    def run_get(self, port: int, responder: FakeResponder) -> Deferred[None]:
        """A C-GET of the study through a DicomGetSource to the archive at ``port``."""
        destination = DicomDestination("arch", "ARCHIVE", "127.0.0.1", port, "GATEWAY", acse_timeout=10, dimse_timeout=10)
        ctx = QRContext(
            config=lambda: None, journal=None, run=None, reactor=reactor, wall=time.time,
            connect=lambda dest, proposals, role_selections=(): connect_dicom(reactor, dest, proposals, role_selections),
        )
        proposals, roles = get.source_proposals(STUDY_GET, REQUESTER_CONTEXTS)
        scratch = os.path.join(self.tmp, "scratch")

        def open_source(name: str, sop_class: str) -> get.ISource:
            return get.DicomGetSource(name, destination, ctx, proposals, roles, scratch, ExplicitVRLittleEndian)

        def remove(path: str) -> None:
            os.unlink(path)

        return ensureDeferred(get.retrieve(STUDY_GET, study_identifier(STUDY), responder, ["arch"], open_source, remove))

    async def test_classes_the_requester_did_not_accept_are_failed_and_listed(self) -> None:
        """CT and MR stored byte-for-byte; SR (gateway-side) and VL photographic (source-side) failed and listed; 0xB000."""
        instances = [instance(CT, "1.2.3.1"), instance(SR, "1.2.3.2"), instance(MR, "1.2.3.3"), instance(VL_PHOTO, "1.2.3.4")]
        source = self.source(instances)
        responder = ReadingResponder({CT: 0x0000, MR: 0x0000})
        await self.run_get(source.port, responder)
        [final] = responder.finals
        self.assertEqual(final["status"], 0xB000)
        self.assertEqual(final["counts"], SubOperations(0, 2, 2, 0))
        self.assertEqual(sorted(final["failed"]), ["1.2.3.2", "1.2.3.4"])
        self.assertEqual(sorted(responder.datasets), ["1.2.3.1", "1.2.3.3"])
        for uid, data in responder.datasets.items():
            ds = dcmread(BytesIO(data), force=True)
            self.assertEqual((ds.SOPInstanceUID, ds.ImageComments), (uid, "payload " + uid))
        self.assertEqual([p.completed for p in responder.pendings if p][-1], 2)
        self.assertEqual(os.listdir(os.path.join(self.tmp, "scratch")), [], "scratch files removed")

    async def test_all_accepted_is_success(self) -> None:
        """Every instance accepted by the requester: 0x0000, all completed."""
        source = self.source([instance(CT, f"1.2.4.{i}") for i in range(5)])
        responder = ReadingResponder({CT: 0x0000})
        await self.run_get(source.port, responder)
        self.assertEqual(responder.finals[0]["status"], 0)
        self.assertEqual(responder.finals[0]["counts"], SubOperations(0, 5, 0, 0))

    async def test_cancel_reaches_the_source(self) -> None:
        """A C-CANCEL from the requester reaches the archive (its handler sees is_cancelled); final 0xFE00."""
        hold = threading.Event()
        source = self.source([instance(CT, f"1.2.5.{i}") for i in range(4)], hold=hold)
        responder = ReadingResponder({CT: 0x0000})
        d = self.run_get(source.port, responder)
        while not responder.stored:
            await _later(0.05)
        responder.cancel()
        await _later(0.2)
        hold.set()
        await d
        self.assertTrue(source.cancelled.wait(5))
        [final] = responder.finals
        self.assertEqual(final["status"], 0xFE00)
        self.assertLess(final["counts"].completed, 4)

    async def test_archive_without_c_get_is_skipped_for_the_next(self) -> None:
        """An archive that accepts no GET context (FIND only) is left out; the next source's instances are stored."""
        from pynetdicom import AE

        ae = AE(ae_title="ARCHIVE")
        ae.add_supported_context("1.2.840.10008.5.1.4.1.2.2.1", [ExplicitVRLittleEndian])
        find_only_port = free_port()
        server = ae.start_server(("127.0.0.1", find_only_port), block=False)
        self.addCleanup(server.shutdown)
        source = self.source([instance(CT, "1.2.7.1")])
        responder = ReadingResponder({CT: 0x0000})
        destinations = {
            "findonly": DicomDestination("findonly", "ARCHIVE", "127.0.0.1", find_only_port, "GATEWAY", acse_timeout=10, dimse_timeout=10),
            "arch": DicomDestination("arch", "ARCHIVE", "127.0.0.1", source.port, "GATEWAY", acse_timeout=10, dimse_timeout=10),
        }
        ctx = QRContext(
            config=lambda: None, journal=None, run=None, reactor=reactor, wall=time.time,
            connect=lambda dest, proposals, role_selections=(): connect_dicom(reactor, dest, proposals, role_selections),
        )
        proposals, roles = get.source_proposals(STUDY_GET, REQUESTER_CONTEXTS)

        def open_source(name: str, sop_class: str) -> get.ISource:
            return get.DicomGetSource(name, destinations[name], ctx, proposals, roles, self.tmp, ExplicitVRLittleEndian)

        await ensureDeferred(get.retrieve(STUDY_GET, study_identifier(STUDY), responder, ["findonly", "arch"], open_source, os.unlink))
        [final] = responder.finals
        self.assertEqual((final["status"], final["counts"]), (0, SubOperations(0, 1, 0, 0)))
        self.assertEqual(list(responder.datasets), ["1.2.7.1"])

    async def test_archive_down_is_a702(self) -> None:
        """Nobody listening: 0xA702 with an Error Comment naming the source."""
        responder = ReadingResponder({CT: 0x0000})
        await self.run_get(free_port(), responder)
        [final] = responder.finals
        self.assertEqual(final["status"], 0xA702)
        self.assertIn("arch", final["comment"])


def _later(seconds: float) -> Deferred[None]:
    """A Deferred firing after ``seconds`` on the global reactor."""
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


class RequesterThroughTheGatewayTests(TestCase):
    """A pynetdicom C-GET requester accepting only CT in the SCP role, the gateway's real listener, a pynetdicom archive.

    The listener is an :class:`~gateway.listen.AcceptorFactory` on a loopback
    port with the settings :func:`gateway.service.acceptor_settings` makes
    where ``retrieve`` applies (the GET classes, and the storage classes in
    the requester's SCP role, PS3.7 D.3.3.4); its
    :class:`~gateway.qr.scp.QueryRetrieveSCP` hands the C-GET to
    :func:`gateway.qr.get.get`. The sub-operations go back on the
    requester's association (``StorageService.store_sub_operation``).
    """

    def setUp(self) -> None:
        """The archive and the gateway's listener."""
        from gateway.access import AccessPolicy
        from gateway.blocking import SynchronousRunner
        from gateway.config.schema import AcceptConfig, GatewayConfig, LimitsConfig, ListenerConfig, RetrieveConfig, SpoolConfig
        from gateway.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
        from gateway.listen import AcceptorFactory, AcceptorLimits
        from gateway.qr.scp import QueryRetrieveSCP
        from gateway.service import acceptor_settings
        from gateway.spool import Spool

        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.archive = GetSource([instance(CT, "1.2.6.1"), instance(MR, "1.2.6.2"), instance(CT, "1.2.6.3")]).start()
        self.addCleanup(self.archive.stop)
        destination = DicomDestination("arch", "ARCHIVE", "127.0.0.1", self.archive.port, "GATEWAY", acse_timeout=10, dimse_timeout=10)
        config = GatewayConfig(
            source="test.yaml",
            ae_title="GATEWAY",
            listen=(ListenerConfig("127.0.0.1", 0, name="dicom"),),
            accept=AcceptConfig(calling_ae_titles=("*",)),
            limits=LimitsConfig(),
            spool=SpoolConfig(self.tmp),
            destinations=(destination,),
            retrieve=RetrieveConfig(sources=("arch",)),
        )
        ctx = QRContext(
            config=lambda: config, journal=None, run=None, reactor=reactor, wall=time.time,
            connect=lambda dest, proposals, role_selections=(): connect_dicom(reactor, dest, proposals, role_selections),
        )

        # The listener's real settings: retrieve applies, so the GET classes and the storage classes' SCP role.
        settings = acceptor_settings(config, config.listen[0])
        factory = AcceptorFactory(
            name="dicom",
            acceptor_settings=settings,
            access=AccessPolicy("GATEWAY"),
            spool=Spool(
                self.tmp, SynchronousRunner(), implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                implementation_version_name=IMPLEMENTATION_VERSION_NAME, max_instance_size=1 << 20,
            ),
            clock=reactor,
            limits=AcceptorLimits(),
            qr=QueryRetrieveSCP(ctx),
        )
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    def c_get(self) -> tuple[list[Any], list[str]]:
        """The requester's C-GET of the study (a pynetdicom thread): its responses and the UIDs it stored."""
        from pynetdicom import AE, build_role, evt

        stored: list[str] = []

        def on_store(event: Any) -> int:
            stored.append(event.request.AffectedSOPInstanceUID)
            return 0x0000

        ae = AE(ae_title="VIEWER")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        ae.add_requested_context(STUDY_GET, [ExplicitVRLittleEndian])
        ae.add_requested_context(CT, [ExplicitVRLittleEndian])
        assoc = ae.associate(
            "127.0.0.1", self.port.getHost().port, ae_title="GATEWAY",
            ext_neg=[build_role(CT, scp_role=True)], evt_handlers=[(evt.EVT_C_STORE, on_store)],
        )
        assert assoc.is_established, "association refused"
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = STUDY
        responses = [(status, ds) for status, ds in assoc.send_c_get(identifier, STUDY_GET)]
        assoc.release()
        return responses, stored

    async def test_requester_accepting_only_ct(self) -> None:
        """Both CTs reach the requester; the MR is a failed sub-operation, listed in (0008,0058); the final is 0xB000 with the counts."""
        from twisted.internet.threads import deferToThread

        responses, stored = await deferToThread(self.c_get)
        self.assertEqual(sorted(stored), ["1.2.6.1", "1.2.6.3"])
        status, failed_list = responses[-1]
        self.assertEqual(status.Status, 0xB000)
        self.assertEqual(
            (status.NumberOfCompletedSuboperations, status.NumberOfFailedSuboperations, status.NumberOfWarningSuboperations), (2, 1, 0)
        )
        self.assertEqual(failed_list.FailedSOPInstanceUIDList, "1.2.6.2")
        self.assertTrue(all(s.Status in (0xFF00, 0xFF01) for s, _ in responses[:-1]))

    def getscu(self, output: str) -> Any:
        """DCMTK ``getscu -S`` (Study Root) of the study into ``output`` (a thread): the completed process."""
        import subprocess

        return subprocess.run(
            [
                "getscu", "-S", "-aet", "VIEWER", "-aec", "GATEWAY", "-od", output, "-k", "QueryRetrieveLevel=STUDY",
                "-k", f"StudyInstanceUID={STUDY}", "-d", "127.0.0.1", str(self.port.getHost().port),
            ],
            capture_output=True, text=True, timeout=60,
        )

    async def test_dcmtk_getscu(self) -> None:
        """DCMTK getscu (it accepts CT and MR among its fixed storage classes): all three stored with their content, exit 0."""
        from twisted.internet.threads import deferToThread

        output = os.path.join(self.tmp, "getscu")
        os.mkdir(output)
        done = await deferToThread(self.getscu, output)
        self.assertEqual(done.returncode, 0, done.stderr[-2000:])
        files = sorted(os.listdir(output))
        self.assertEqual(len(files), 3, files)
        stored = sorted((ds.SOPInstanceUID, ds.ImageComments) for ds in (dcmread(os.path.join(output, f)) for f in files))
        self.assertEqual(stored, [(uid, "payload " + uid) for uid in ("1.2.6.1", "1.2.6.2", "1.2.6.3")])
