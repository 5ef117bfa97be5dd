"""Query/Retrieve end to end against real peers (issue 16, PS3.4 Annex C).

:class:`QRHarnessTests` checks the harness itself with no gateway in the
path: DCMTK ``findscu -S`` / ``-P``, ``movescu`` as its own move destination
(``--port``, ``+B``) and ``getscu`` against Orthanc as the Q/R SCP (a source
preloaded with known studies, :func:`tests.support.qr.preload`), and a
pynetdicom requester against the synthetic Q/R SCP
(:class:`tests.support.qr.SyntheticQRScp`): lazily generated matches and
C-CANCEL (PS3.7 9.3.2.3: final status Cancel 0xFE00, and the source records
it). The gateway tests build on these peers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from twisted.trial.unittest import TestCase

from tests.support import dcmtk, orthanc
from tests.support.datasets import dataset_bytes
from tests.support.ports import free_port
from tests.support.qr import (
    STUDY_ROOT_FIND,
    Study,
    SyntheticQRScp,
    findscu,
    getscu,
    movescu,
    preload,
    qr_source,
    read_responses,
    write_study,
)

#: The source archive's AE title.
SOURCE_AET = "SOURCE1"
#: Study Root Query/Retrieve Information Model - GET (PS3.4 C.6.2.3).
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
#: MR Image Storage (PS3.4 B.5), the class the partial C-GET requester does not accept.
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
#: movescu's own AE title as the move destination.
MOVE_AET = "MOVEDEST"


def by_sop_instance(paths: list[Path]) -> dict[str, bytes]:
    """Index Part 10 files by SOP Instance UID, value the data set's bytes (file meta excluded).

    :param paths: the files.
    :returns: ``uid -> data set bytes``.
    """
    from pydicom import dcmread

    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): dataset_bytes(p) for p in paths}


class QRHarnessTests(TestCase):
    """The Q/R requesters and sources, checked directly (no gateway)."""

    skip = orthanc.skip_reason() or dcmtk.skip_reason("findscu", "movescu", "getscu")

    def setUp(self) -> None:
        self.root = Path(self.mktemp()).resolve()
        self.source = qr_source(self.root / "orthanc", SOURCE_AET)
        self.addCleanup(self.source.stop)
        self.source.start()
        self.studies: list[Study] = [
            write_study(self.root / "study-a", 3, study_description="A"),
            write_study(self.root / "study-b", 4, study_description="B", patient_id="INTEROP-2"),
        ]
        preload(self.source, self.studies)

    def test_findscu_study_root_study_level(self) -> None:
        """``findscu -S`` at STUDY level finds each preloaded study once, with its description."""
        out = self.root / "find"
        result = findscu(self.source.dicom_port, SOURCE_AET,
                         ["QueryRetrieveLevel=STUDY", "StudyInstanceUID", "StudyDescription",
                          "PatientID"], outdir=out)
        self.assertEqual(result.returncode, 0, result.describe())
        found = {str(ds.StudyInstanceUID): str(ds.StudyDescription) for ds in read_responses(out)}
        self.assertEqual(found, {self.studies[0].study_instance_uid: "A",
                                 self.studies[1].study_instance_uid: "B"}, result.describe())

    def test_findscu_patient_root_image_level(self) -> None:
        """``findscu -P`` at IMAGE level lists one study's instances (its patient, study and series keys given)."""
        study = self.studies[1]
        out = self.root / "find"
        result = findscu(self.source.dicom_port, SOURCE_AET,
                         ["QueryRetrieveLevel=IMAGE", "PatientID=INTEROP-2",
                          f"StudyInstanceUID={study.study_instance_uid}",
                          f"SeriesInstanceUID={study.series_instance_uid}", "SOPInstanceUID"],
                         outdir=out, model="patient")
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertEqual(sorted(str(ds.SOPInstanceUID) for ds in read_responses(out)),
                         sorted(by_sop_instance(list(study.files))), result.describe())

    def test_movescu_to_itself_byte_identical(self) -> None:
        """``movescu --port`` as the move destination receives the study bit-preserved, counts in the log."""
        listen = free_port()
        self.source.declare_modality("MOVEDEST", MOVE_AET, listen)
        study = self.studies[1]
        out = self.root / "moved"
        result = movescu(self.source.dicom_port, SOURCE_AET,
                         ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study.study_instance_uid}"],
                         outdir=out, listen_port=listen, move_aet=MOVE_AET)
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertEqual(by_sop_instance(sorted(out.iterdir())), by_sop_instance(list(study.files)),
                         result.describe())

    def test_getscu_series(self) -> None:
        """``getscu -S`` at SERIES level brings the series back as C-STORE sub-operations on its association."""
        study = self.studies[0]
        out = self.root / "got"
        result = getscu(self.source.dicom_port, SOURCE_AET,
                        ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study.study_instance_uid}",
                         f"SeriesInstanceUID={study.series_instance_uid}"], outdir=out)
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertEqual(by_sop_instance(sorted(out.iterdir())), by_sop_instance(list(study.files)),
                         result.describe())


def pynetdicom_find(port: int, aet: str, query: Dataset, *, cancel_after: int | None = None,
                    model: str = STUDY_ROOT_FIND) -> tuple[int, list[Dataset], int]:
    """C-FIND with pynetdicom (test-only requester), optionally sending C-CANCEL-RQ after some pendings.

    :param port: the SCP's port.
    :param aet: its AE title.
    :param query: the identifier.
    :param cancel_after: send C-CANCEL after this many pending responses.
    :param model: the FIND SOP class.
    :returns: (final status, pending identifiers, pendings seen after the cancel).
    """
    from pynetdicom import AE

    ae = AE(ae_title="PYFIND")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", port, ae_title=aet)
    if not assoc.is_established:
        raise AssertionError(f"association to {aet} at {port} not established")
    pendings: list[Dataset] = []
    after_cancel = 0
    final = -1
    try:
        msg_id = 7
        for status, identifier in assoc.send_c_find(query, model, msg_id=msg_id):
            if status is None or "Status" not in status:
                raise AssertionError("no C-FIND response (timeout or abort)")
            code = int(status.Status)
            if code in (0xFF00, 0xFF01):
                if cancel_after is not None and len(pendings) >= cancel_after:
                    after_cancel += 1
                pendings.append(identifier)
                if cancel_after is not None and len(pendings) == cancel_after:
                    assoc.send_c_cancel(msg_id, query_model=model)
            else:
                final = code
    finally:
        assoc.release()
    return final, pendings, after_cancel


class SyntheticSourceTests(TestCase):
    """The synthetic pynetdicom Q/R SCP: generated matches and C-CANCEL."""

    def setUp(self) -> None:
        self.scp = SyntheticQRScp(Path(self.mktemp()), generate=2000)
        self.addCleanup(self.scp.stop)
        self.scp.start()

    @staticmethod
    def study_query() -> Dataset:
        """A STUDY-level universal query returning the study's UID and Patient ID.

        :returns: the identifier.
        """
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        query.PatientID = ""
        return query

    def test_generates_all_matches(self) -> None:
        """A universal STUDY query gets every generated match, each UID once, then Success."""
        final, pendings, _ = pynetdicom_find(self.scp.port, self.scp.aet, self.study_query())
        self.assertEqual(final, 0x0000)
        self.assertEqual(len({str(ds.StudyInstanceUID) for ds in pendings}), 2000)
        self.assertEqual([e["event"] for e in self.scp.events()], ["find", "done"])

    def test_cancel_mid_query(self) -> None:
        """C-CANCEL after 10 pendings ends with Cancel 0xFE00 well before 2000, and the source records the cancel."""
        final, pendings, _ = pynetdicom_find(self.scp.port, self.scp.aet, self.study_query(),
                                             cancel_after=10)
        self.assertEqual(final, 0xFE00)
        self.assertLess(len(pendings), 2000)
        self.assertIn("cancel", [e["event"] for e in self.scp.events()])


#: The gateway's AE title (the default of tests.support.gateway_process).
GATEWAY_AET = "DICOMGW"
#: The move destination's AE title (a storescp, in the gateway's ``modalities`` table).
DEST_AET = "DEST"


def move_counts(output: str) -> list[tuple[int, int, int, int]]:
    """The (remaining, completed, failed, warning) counts ``movescu -d`` printed for each response.

    :param output: movescu's output.
    :returns: one tuple per response that carried counts, in order.
    """
    import re

    counts = []
    fields = ("Remaining", "Completed", "Failed", "Warning")
    for block in re.split(r"Received (?:Final )?Move Response", output)[1:]:
        found = [re.search(rf"{name} Suboperations\s*:\s*(\d+)", block) for name in fields]
        if all(found):
            counts.append(tuple(int(m.group(1)) for m in found if m))  # type: ignore[misc]
    return counts  # type: ignore[return-value]


class GatewayRetrieveTests(TestCase):
    """C-MOVE and C-GET through the real gateway, Orthanc as the source (relay mode)."""

    skip = orthanc.skip_reason() or dcmtk.skip_reason("movescu", "getscu", "storescp")

    def setUp(self) -> None:
        from tests.support.gateway_process import GatewayProcess, dicom_destination

        self.root = Path(self.mktemp()).resolve()
        self.source = qr_source(self.root / "orthanc", SOURCE_AET)
        self.addCleanup(self.source.stop)
        self.source.start()
        self.dest = dcmtk.Storescp(self.root / "dest", ae_title=DEST_AET)
        self.addCleanup(self.dest.stop)
        self.dest.start()
        self.gw = GatewayProcess(
            self.root / "gw",
            http={"enabled": False},
            destinations={"archive": dicom_destination(self.source.dicom_port, SOURCE_AET)},
            routes=[],
            modalities={"dest": {"ae_title": DEST_AET, "host": "127.0.0.1", "port": self.dest.port}},
            retrieve={"sources": ["archive"], "timeout": "120s"},
        )
        self.addCleanup(self.gw.stop)
        self.gw.start()
        # relay: the source moves to the gateway, so it must know the gateway's AE title.
        self.source.declare_modality("GW", GATEWAY_AET, self.gw.port)

    def mixed_series(self, ct: int, mr: int) -> tuple[Study, set[str], set[str]]:
        """Preload one series of ``ct`` CT and ``mr`` MR Image Storage instances.

        :param ct: CT instances.
        :param mr: instances re-labelled MR Image Storage (1.2.840.10008.5.1.4.1.1.4).
        :returns: the study, the CT UIDs and the MR UIDs.
        """
        from pydicom import dcmread

        study = write_study(self.root / "mixed", ct + mr)
        mr_uids: set[str] = set()
        for path in study.files[ct:]:
            ds = dcmread(path)
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
            ds.Modality = "MR"
            ds.save_as(path, enforce_file_format=True)
            mr_uids.add(str(ds.SOPInstanceUID))
        preload(self.source, [study])
        return study, set(by_sop_instance(list(study.files))) - mr_uids, mr_uids

    def test_get_partial_acceptance(self) -> None:
        """C-GET of a series by a requester accepting CT only: CT stored, the MR sub-operations failed and listed (0008,0058)."""
        from pynetdicom import AE, build_role, evt
        from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

        study, ct_uids, mr_uids = self.mixed_series(3, 2)
        received: dict[str, bytes] = {}

        def on_store(event: Any) -> int:
            received[str(event.dataset.SOPInstanceUID)] = b""
            return 0x0000

        ae = AE(ae_title="PYGET")
        ae.add_requested_context(STUDY_ROOT_GET)
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", self.gw.port, ae_title=GATEWAY_AET,
                             ext_neg=[build_role(CTImageStorage, scp_role=True)],
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
        self.assertTrue(assoc.is_established)
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = study.study_instance_uid
        query.SeriesInstanceUID = study.series_instance_uid
        finals = []
        try:
            for status, identifier in assoc.send_c_get(query, STUDY_ROOT_GET):
                self.assertIsNotNone(status, "no C-GET response")
                if int(status.Status) not in (0xFF00, 0xFF01):
                    finals.append((status, identifier))
        finally:
            assoc.release()
        self.assertEqual(set(received), ct_uids)
        self.assertEqual(len(finals), 1)
        status, identifier = finals[0]
        # PS3.4 C.4.3.1.4: some sub-operations failed -> 0xB000 (Warning) with the counts.
        self.assertEqual(int(status.Status), 0xB000, status)
        self.assertEqual(int(status.NumberOfCompletedSuboperations), len(ct_uids), status)
        self.assertEqual(int(status.NumberOfFailedSuboperations), len(mr_uids), status)
        failed = identifier.FailedSOPInstanceUIDList if identifier is not None else []
        self.assertEqual(set([failed] if isinstance(failed, str) else failed), mr_uids, identifier)

    def test_getscu_series(self) -> None:
        """``getscu -S`` through the gateway gets a CT series back bit-preserved."""
        study = write_study(self.root / "study", 5)
        preload(self.source, [study])
        out = self.root / "got"
        result = getscu(self.gw.port, GATEWAY_AET,
                        ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study.study_instance_uid}",
                         f"SeriesInstanceUID={study.series_instance_uid}"], outdir=out)
        self.assertEqual(result.returncode, 0, result.describe()[-4000:])
        self.assertEqual(by_sop_instance(sorted(out.iterdir())), by_sop_instance(list(study.files)),
                         result.describe()[-4000:])

    def test_move_unknown_destination(self) -> None:
        """C-MOVE naming an AE title missing from ``modalities`` ends 0xA801 (PS3.4 C.4.2.1.5), nothing moved."""
        study = write_study(self.root / "study", 2)
        preload(self.source, [study])
        result = movescu(self.gw.port, GATEWAY_AET,
                         ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study.study_instance_uid}"],
                         outdir=self.root / "moved", listen_port=free_port(), move_aet="NOBODY")
        self.assertIn("Final Move Response (Refused: MoveDestinationUnknown)", result.output,
                      result.describe())
        self.assertEqual(self.dest.files(), [])

    def test_move_200_relayed_byte_identical(self) -> None:
        """A 200-instance study C-MOVEd through the gateway (relay) reaches ``storescp +B`` byte-identical; counts add up."""
        study = write_study(self.root / "study", 200, size=2048)
        preload(self.source, [study])
        result = movescu(self.gw.port, GATEWAY_AET,
                         ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study.study_instance_uid}"],
                         outdir=self.root / "moved", listen_port=free_port(), move_aet=DEST_AET,
                         extra=("-d",))
        self.assertEqual(result.returncode, 0, result.describe()[-4000:])
        self.assertRegex(result.output, r"Received Final Move Response.*\n(.*\n){0,40}.*Status\s*: 0x0000",
                         result.describe()[-4000:])
        self.assertEqual(by_sop_instance(self.dest.files()), by_sop_instance(list(study.files)))
        counts = move_counts(result.output)
        self.assertTrue(counts, result.describe()[-4000:])
        for remaining, completed, failed, warning in counts[:-1]:
            self.assertEqual(remaining + completed + failed + warning, 200, counts)
        self.assertEqual(counts[-1][1:], (200, 0, 0), counts)
