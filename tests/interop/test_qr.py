"""Query/Retrieve end to end against real peers (issue 16, PS3.4 Annex C).

:class:`QRHarnessTests` checks the harness itself with no gateway in the
path: DCMTK ``findscu -S`` / ``-P``, ``movescu`` as its own move destination
(``--port``, ``+B``) and ``getscu`` against Orthanc as the Q/R SCP (a source
preloaded with known studies, :func:`tests.support.qr.preload`), and a
pynetdicom requester against the synthetic Q/R SCP
(:class:`tests.support.qr.SyntheticQRScp`): lazily generated matches and
C-CANCEL (PS3.7 9.3.2.3: final status Cancel 0xFE00, and the source records
it). The gateway tests build on these peers.

:class:`GatewayQueryTests` runs the real gateway (``query.sources``: Orthanc
first, the synthetic SCP second): a merged STUDY query (each study once, the
first source's attributes on conflict), Patient Root, IMAGE level, a source
down (non-strict: Success, C-FIND having no warning status, PS3.4 C.4.1.1.4;
strict: 0xC001 with an Error Comment, PS3.7 9.1.2.1.6), C-CANCEL reaching
every source, and 100k generated matches through ``max_results`` (0xA700,
gateway RSS read from ``/proc``). :class:`GatewayRetrieveTests`: C-MOVE
relayed (200 instances, byte-identical, pending counts), pass_through,
0xA801, ``kill -9`` mid-move, and C-GET (a requester accepting only some SOP
classes; ``getscu``).
"""

from __future__ import annotations

import threading
import time
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
#: Study Root Query/Retrieve Information Model - MOVE (PS3.4 C.6.2.2).
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
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
            audit={"file": str(self.root / "audit.jsonl")},
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

    def test_kill_during_relayed_move(self) -> None:
        """``kill -9`` of the gateway mid relayed C-MOVE (destination down): after restart what it had received is delivered; the C-MOVE does not claim success."""
        self.dest.stop()
        study = write_study(self.root / "study", 200, size=2048)
        preload(self.source, [study])
        outcome: list[Any] = []
        mover = threading.Thread(target=lambda: outcome.append(movescu(
            self.gw.port, GATEWAY_AET,
            ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study.study_instance_uid}"],
            outdir=self.root / "moved", listen_port=free_port(), move_aet=DEST_AET, timeout=120)))
        mover.start()
        deadline = time.monotonic() + 60
        while len(self.gw.journaled_ids()) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        received = len(self.gw.journaled_ids())
        self.assertGreaterEqual(received, 20, self.gw.log_text()[-3000:])
        self.gw.kill()
        mover.join(150)
        self.assertEqual(len(outcome), 1)
        # Honest: the requester saw the association drop (or a failure), never a clean success.
        self.assertNotRegex(outcome[0].output, r"Final Move Response \(Success\)", outcome[0].describe()[-3000:])
        self.gw.start()
        self.dest.start()
        originals = by_sop_instance(list(study.files))
        deadline = time.monotonic() + 120
        while len(self.dest.files()) < received and time.monotonic() < deadline:
            time.sleep(0.2)
        delivered = by_sop_instance(self.dest.files())
        self.assertGreaterEqual(len(delivered), received, self.gw.log_text()[-3000:])
        for uid, data in delivered.items():
            self.assertEqual(data, originals[uid], uid)

    def test_move_pass_through(self) -> None:
        """``retrieve.mode: pass_through``: the source moves straight to the destination (byte-identical), nothing enters the gateway's custody."""
        from tests.support.gateway_process import GatewayProcess, dicom_destination

        gw = GatewayProcess(
            self.root / "gw-pass",
            http={"enabled": False},
            destinations={"archive": dicom_destination(self.source.dicom_port, SOURCE_AET)},
            routes=[],
            modalities={"dest": {"ae_title": DEST_AET, "host": "127.0.0.1", "port": self.dest.port}},
            retrieve={"sources": ["archive"], "mode": "pass_through", "timeout": "120s"},
        )
        self.addCleanup(gw.stop)
        gw.start()
        self.source.declare_modality("DEST", DEST_AET, self.dest.port)
        study = write_study(self.root / "study", 5)
        preload(self.source, [study])
        result = movescu(gw.port, GATEWAY_AET,
                         ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study.study_instance_uid}"],
                         outdir=self.root / "moved", listen_port=free_port(), move_aet=DEST_AET)
        self.assertIn("Final Move Response (Success)", result.output, result.describe()[-4000:])
        self.assertEqual(by_sop_instance(self.dest.files()), by_sop_instance(list(study.files)))
        self.assertEqual(gw.journaled_ids(), set())

    def test_move_cancel(self) -> None:
        """C-CANCEL of a relayed C-MOVE after its first pending response (destination down): final Cancel 0xFE00 with counts (PS3.4 C.4.2.1.5)."""
        from pynetdicom import AE

        self.dest.stop()
        study = write_study(self.root / "study", 20)
        preload(self.source, [study])
        ae = AE(ae_title="PYMOVE")
        ae.add_requested_context(STUDY_ROOT_MOVE)
        assoc = ae.associate("127.0.0.1", self.gw.port, ae_title=GATEWAY_AET)
        self.assertTrue(assoc.is_established)
        query = study_query(StudyInstanceUID=study.study_instance_uid)
        statuses: list[int] = []
        final: Dataset | None = None
        try:
            for status, _identifier in assoc.send_c_move(query, DEST_AET, STUDY_ROOT_MOVE, msg_id=9):
                self.assertIsNotNone(status, "no C-MOVE response")
                statuses.append(int(status.Status))
                if int(status.Status) == 0xFF00 and statuses.count(0xFF00) == 1:
                    assoc.send_c_cancel(9, query_model=STUDY_ROOT_MOVE)
                elif int(status.Status) != 0xFF00:
                    final = status
        finally:
            assoc.release()
        self.assertIn(0xFF00, statuses)
        self.assertIsNotNone(final)
        assert final is not None
        self.assertEqual(int(final.Status), 0xFE00, final)
        self.assertIn("NumberOfCompletedSuboperations", final)

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
        # Audited as DICOM Instances Transferred (PS3.15 A.5.3.7, event ID 110104).
        self.assertTrue(audited(self.root / "audit.jsonl", "110104"))


def audited(path: Path, event_id: str, timeout: float = 15.0) -> list[dict[str, Any]]:
    """The audit records of one event ID, once at least one is written.

    :param path: the gateway's audit file.
    :param event_id: e.g. ``"110112"`` (Query).
    :param timeout: seconds to wait for the first.
    :returns: the records (empty when none came in time).
    """
    from gateway.audit import read_records

    deadline = time.monotonic() + timeout
    while True:
        records = [r for r in read_records(str(path)) if r.get("event_id") == event_id] if path.exists() else []
        if records or time.monotonic() >= deadline:
            return records
        time.sleep(0.1)


def study_query(*return_keys: str, **values: str) -> Dataset:
    """A Study Root STUDY-level identifier: return keys empty, matching keys set.

    :param return_keys: keywords asked for.
    :param values: matching keys.
    :returns: the identifier.
    """
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    for keyword in return_keys:
        setattr(query, keyword, "")
    for keyword, value in values.items():
        setattr(query, keyword, value)
    return query


class GatewayQueryTests(TestCase):
    """C-FIND through the real gateway: Orthanc (first) and the synthetic SCP (second), merged."""

    skip = orthanc.skip_reason() or dcmtk.skip_reason("findscu")

    def setUp(self) -> None:
        self.root = Path(self.mktemp()).resolve()
        self.source = qr_source(self.root / "orthanc", SOURCE_AET)
        self.addCleanup(self.source.stop)
        self.source.start()
        self.study_a = write_study(self.root / "a", 2, study_description="FROM-ORTHANC")
        self.study_b = write_study(self.root / "b", 3, study_description="ONLY-ORTHANC")
        preload(self.source, [self.study_a, self.study_b])
        self.study_c_uid = "1.2.826.0.1.3680043.10.543.16.900"

    def synthetic(self, **kwargs: Any) -> SyntheticQRScp:
        """Start the second source: study A again (a conflicting description) and study C.

        :param kwargs: :class:`SyntheticQRScp` options (``generate``, ``delay``).
        :returns: it, started.
        """
        identifiers = [
            {"QueryRetrieveLevel": "STUDY", "PatientID": "INTEROP-1",
             "StudyInstanceUID": self.study_a.study_instance_uid, "StudyDescription": "FROM-SYNTH"},
            {"QueryRetrieveLevel": "STUDY", "PatientID": "INTEROP-9",
             "StudyInstanceUID": self.study_c_uid, "StudyDescription": "ONLY-SYNTH"},
        ]
        scp = SyntheticQRScp(self.root / "synth", identifiers=identifiers, **kwargs)
        self.addCleanup(scp.stop)
        scp.start()
        return scp

    def gateway(self, synth_port: int, *, more: dict[str, int] | None = None, **query: Any) -> Any:
        """Start the gateway with ``query.sources: [orthanc, synth]`` (merge unless overridden).

        :param synth_port: the second source's port.
        :param more: more destinations (``name -> port`` of a synthetic SCP, AE title ``SYNTH``).
        :param query: more ``query`` keys.
        :returns: the gateway.
        """
        from tests.support.gateway_process import GatewayProcess, dicom_destination

        gw = GatewayProcess(
            self.root / "gw",
            http={"enabled": False},
            destinations={"orthanc": dicom_destination(self.source.dicom_port, SOURCE_AET),
                          "synth": dicom_destination(synth_port, "SYNTH"),
                          **{name: dicom_destination(port, "SYNTH") for name, port in (more or {}).items()}},
            routes=[],
            query={"sources": ["orthanc", "synth"], "mode": "merge", "timeout": "20s", **query},
            audit={"file": str(self.root / "audit.jsonl")},
        )
        self.addCleanup(gw.stop)
        gw.start()
        return gw

    def test_study_query_merged(self) -> None:
        """``findscu -S`` STUDY query merged from two sources: each study once, the first source's description on conflict."""
        scp = self.synthetic()
        gw = self.gateway(scp.port)
        out = self.root / "find"
        result = findscu(gw.port, GATEWAY_AET, ["QueryRetrieveLevel=STUDY", "StudyInstanceUID",
                                                "StudyDescription", "PatientID"], outdir=out)
        self.assertEqual(result.returncode, 0, result.describe())
        uids = [str(ds.StudyInstanceUID) for ds in read_responses(out)]
        self.assertEqual(sorted(uids), sorted(set(uids)), "a study came twice")
        found = {str(ds.StudyInstanceUID): str(ds.StudyDescription) for ds in read_responses(out)}
        self.assertEqual(found, {self.study_a.study_instance_uid: "FROM-ORTHANC",
                                 self.study_b.study_instance_uid: "ONLY-ORTHANC",
                                 self.study_c_uid: "ONLY-SYNTH"}, result.describe())
        # Audited as a Query (PS3.15 A.5.3.10, event ID 110112).
        self.assertEqual(len(audited(self.root / "audit.jsonl", "110112")), 1)

    def test_source_down_not_strict(self) -> None:
        """Second source down, non-strict: the first's studies and Success (C-FIND has no warning); the gateway logs it."""
        gw = self.gateway(free_port())
        out = self.root / "find"
        result = findscu(gw.port, GATEWAY_AET, ["QueryRetrieveLevel=STUDY", "StudyInstanceUID"], outdir=out)
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertEqual({str(ds.StudyInstanceUID) for ds in read_responses(out)},
                         {self.study_a.study_instance_uid, self.study_b.study_instance_uid})
        self.assertIn("synth", gw.log_text())

    def test_source_down_strict(self) -> None:
        """Second source down, ``strict: true``: the query fails 0xC001 with an Error Comment naming it."""
        gw = self.gateway(free_port(), strict=True)
        final, _pendings, _ = pynetdicom_find_full(gw.port, GATEWAY_AET, study_query("StudyInstanceUID"))
        self.assertEqual(int(final.Status), 0xC001, final)
        # PS3.7 9.1.2.1.6: a failure status may carry an Error Comment; it names the failed source.
        self.assertIn("synth", str(final.get("ErrorComment", "")), final)

    def test_image_level_query(self) -> None:
        """``findscu -S`` at IMAGE level (study and series keys given) lists the series' instances."""
        scp = self.synthetic()
        gw = self.gateway(scp.port)
        out = self.root / "find"
        study = self.study_b
        result = findscu(gw.port, GATEWAY_AET,
                         ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study.study_instance_uid}",
                          f"SeriesInstanceUID={study.series_instance_uid}", "SOPInstanceUID"], outdir=out)
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertEqual(sorted(str(ds.SOPInstanceUID) for ds in read_responses(out)),
                         sorted(by_sop_instance(list(study.files))), result.describe())

    def test_uid_remap_both_ways(self) -> None:
        """``response_morph: uid_remap``: responses carry remapped Study UIDs only, and a query for a remapped UID finds the original at the source."""
        gw = self.gateway(free_port(), sources=["orthanc"],
                          response_morph=[{"uid_remap": {"salt": "interop-qr", "root": "2.25"}}])
        out = self.root / "find"
        result = findscu(gw.port, GATEWAY_AET, ["QueryRetrieveLevel=STUDY", "StudyInstanceUID",
                                                "StudyDescription"], outdir=out)
        self.assertEqual(result.returncode, 0, result.describe())
        remapped = {str(ds.StudyDescription): str(ds.StudyInstanceUID) for ds in read_responses(out)}
        self.assertEqual(set(remapped), {"FROM-ORTHANC", "ONLY-ORTHANC"}, result.describe())
        originals = {self.study_a.study_instance_uid, self.study_b.study_instance_uid}
        self.assertFalse(set(remapped.values()) & originals, remapped)
        self.assertTrue(all(uid.startswith("2.25.") for uid in remapped.values()), remapped)
        again = self.root / "again"
        result = findscu(gw.port, GATEWAY_AET, ["QueryRetrieveLevel=STUDY",
                                                f"StudyInstanceUID={remapped['ONLY-ORTHANC']}",
                                                "StudyDescription"], outdir=again)
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertEqual([(str(ds.StudyInstanceUID), str(ds.StudyDescription)) for ds in read_responses(again)],
                         [(remapped["ONLY-ORTHANC"], "ONLY-ORTHANC")], result.describe())

    def test_patient_root_study_query(self) -> None:
        """``findscu -P`` (Patient Root) at STUDY level for one patient: that patient's studies from both sources, once each."""
        scp = self.synthetic()
        gw = self.gateway(scp.port)
        out = self.root / "find"
        result = findscu(gw.port, GATEWAY_AET, ["QueryRetrieveLevel=STUDY", "PatientID=INTEROP-1",
                                                "StudyInstanceUID", "StudyDescription"],
                         outdir=out, model="patient")
        self.assertEqual(result.returncode, 0, result.describe())
        found = {str(ds.StudyInstanceUID): str(ds.StudyDescription) for ds in read_responses(out)}
        self.assertEqual(len(read_responses(out)), len(found), "a study came twice")
        # Study C (ONLY-SYNTH) belongs to INTEROP-9: not matched.
        self.assertEqual(found, {self.study_a.study_instance_uid: "FROM-ORTHANC",
                                 self.study_b.study_instance_uid: "ONLY-ORTHANC"}, result.describe())

    def test_cancel_mid_query(self) -> None:
        """C-CANCEL after 10 pendings through the gateway (two generating sources, merged): final 0xFE00, and each source saw a C-CANCEL within 1 s."""
        scps = []
        for name in ("gen1", "gen2"):
            scp = SyntheticQRScp(self.root / name, generate=100_000, delay=0.001)
            self.addCleanup(scp.stop)
            scp.start()
            scps.append(scp)
        gw = self.gateway(scps[0].port, more={"synth2": scps[1].port}, sources=["synth", "synth2"])
        final, pendings, cancelled_at = pynetdicom_find_full(gw.port, GATEWAY_AET, study_query("StudyInstanceUID"),
                                                             cancel_after=10)
        assert cancelled_at is not None
        self.assertEqual(int(final.Status), 0xFE00, final)
        self.assertLess(len(pendings), 100_000)
        for scp in scps:
            deadline = time.monotonic() + 30
            while "cancel" not in [e["event"] for e in scp.events()] and time.monotonic() < deadline:
                time.sleep(0.1)
            [seen] = [e["t"] for e in scp.events() if e["event"] == "cancel"]
            # The bound: the requester's C-CANCEL reaches every source within a second.
            self.assertLess(seen - cancelled_at, 1.0, scp.dir)

    def test_max_results_bounded_memory(self) -> None:
        """A 100k-match query against ``max_results: 20000``: 0xA700 with an Error Comment, gateway RSS bounded."""
        from tests.support.procstat import rss_kib

        scp = SyntheticQRScp(self.root / "gen", generate=100_000)
        self.addCleanup(scp.stop)
        scp.start()
        gw = self.gateway(scp.port, sources=["synth"], max_results=20_000, timeout="600s")
        before = rss_kib(gw.pid)
        peak = [before]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], rss_kib(gw.pid))
                stop.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            final, pendings, _ = pynetdicom_find_full(gw.port, GATEWAY_AET, study_query("StudyInstanceUID", "PatientID"))
        finally:
            stop.set()
            sampler.join()
        self.assertEqual(int(final.Status), 0xA700, final)
        self.assertIn("20000", str(final.get("ErrorComment", "")), final)
        self.assertEqual(len(pendings), 20_000)
        # 20k identifiers held at once would be tens of MiB in the gateway; streaming keeps it flat.
        self.assertLess(peak[0] - before, 48 * 1024, f"RSS grew from {before} KiB to {peak[0]} KiB")


def pynetdicom_find_full(port: int, aet: str, query: Dataset, *, cancel_after: int | None = None,
                         model: str = STUDY_ROOT_FIND) -> tuple[Dataset, list[Dataset], float | None]:
    """Like :func:`pynetdicom_find`, returning the final response's status data set (Error Comment included).

    :param port: the SCP's port.
    :param aet: its AE title.
    :param query: the identifier.
    :param cancel_after: send C-CANCEL after this many pending responses.
    :param model: the FIND SOP class.
    :returns: (final status data set, pending identifiers, the wall-clock time the C-CANCEL-RQ
        was sent or ``None``).
    """
    from pynetdicom import AE

    ae = AE(ae_title="PYFIND")
    ae.add_requested_context(model)
    ae.dimse_timeout = 120
    assoc = ae.associate("127.0.0.1", port, ae_title=aet)
    if not assoc.is_established:
        raise AssertionError(f"association to {aet} at {port} not established")
    pendings: list[Dataset] = []
    final: Dataset | None = None
    msg_id = 7
    cancelled_at: float | None = None
    try:
        for status, identifier in assoc.send_c_find(query, model, msg_id=msg_id):
            if status is None or "Status" not in status:
                raise AssertionError("no C-FIND response (timeout or abort)")
            if int(status.Status) in (0xFF00, 0xFF01):
                pendings.append(identifier)
                if cancel_after is not None and len(pendings) == cancel_after:
                    cancelled_at = time.time()
                    assoc.send_c_cancel(msg_id, query_model=model)
            else:
                final = status
    finally:
        assoc.release()
    if final is None:
        raise AssertionError("no final C-FIND response")
    return final, pendings, cancelled_at
