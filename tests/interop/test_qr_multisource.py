"""A C-MOVE spread over several sources, end to end (issue 16, PS3.4 C.4.2).

:class:`TwoOrthancTests`: two Orthancs hold overlapping parts of one study
(series A and half of series B on the first, all of series B on the second);
the gateway (``retrieve.sources: [archive1, archive2]``, relay) locates at
both and moves each instance from the first source holding it. ``movescu``
(its own storage SCP as Move Destination, which waits for the sub-operation
association's release before it reads the final response) receives every
instance once, byte-identical, with pending counts that add up; a source whose
C-MOVE fails has its share counted failed, with the UIDs in (0008,0058),
while the other's share arrives; a source down at the request leaves the
other's share to arrive; a move destination down for longer than the stall
time is not reported failed before ``retrieve.timeout``, and the queue still
delivers afterwards. In ``pass_through`` each Orthanc moves its own share
straight to the destination and the requester sees the summed counts.

:class:`SyntheticSourceTests`: two synthetic pynetdicom sources
(:mod:`tests.support.qr_move_scp`). They move slowly and a C-CANCEL-RQ from
the requester reaches both within a second (each records when it saw its own
C-CANCEL), the second having been asked only for what the first lacks; and a
source failing the C-MOVE by UID list (0xC513) is asked for the series.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from twisted.trial.unittest import TestCase

from gateway.qr.move import STALL_AFTER_SOURCE
from tests.support import dcmtk, orthanc
from tests.support.gateway_process import GatewayProcess, dicom_destination
from tests.support.ports import free_port
from tests.support.qr import Study, movescu, preload, qr_source, write_study
from tests.support.qr_move_scp import SyntheticMoveScp
from tests.interop.test_qr import by_sop_instance, move_counts

GATEWAY_AET = "DICOMGW"
#: Study Root Query/Retrieve Information Model - MOVE (PS3.4 C.6.2.2).
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
#: movescu's own AE title as Move Destination.
MOVE_AET = "MOVEDEST"
#: A storescp Move Destination.
DEST_AET = "DEST"


def two_series(root: Path, a: int, b: int) -> tuple[Study, Study]:
    """One study of two series (``a`` and ``b`` CT instances), written under ``root``."""
    first = write_study(root / "A", a)
    second = write_study(root / "B", b, study_instance_uid=first.study_instance_uid)
    return first, second


def uids_of(paths: Any) -> list[str]:
    """The SOP Instance UIDs of Part 10 files, in order."""
    return [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]


def pynetdicom_move(port: int, study_uid: str, destination: str, *, cancel_after_pending: int | None = None,
                    ) -> tuple[list[Dataset], Dataset | None, Dataset | None, float | None]:
    """C-MOVE a study through the gateway with pynetdicom.

    :param cancel_after_pending: send C-CANCEL-RQ after this many pending responses.
    :returns: the pending statuses, the final status, its identifier, and the
        ``time.time()`` just before the C-CANCEL-RQ was sent (``None``: not sent).
    """
    from pynetdicom import AE

    ae = AE(ae_title="PYMOVE")
    ae.add_requested_context(STUDY_ROOT_MOVE)
    assoc = ae.associate("127.0.0.1", port, ae_title=GATEWAY_AET)
    assert assoc.is_established, "no association with the gateway"
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    pendings: list[Dataset] = []
    final: Dataset | None = None
    final_identifier: Dataset | None = None
    cancelled_at: float | None = None
    try:
        for status, identifier in assoc.send_c_move(query, destination, STUDY_ROOT_MOVE, msg_id=5):
            assert status is not None, "no C-MOVE response"
            if int(status.Status) in (0xFF00, 0xFF01):
                pendings.append(status)
                if cancel_after_pending is not None and len(pendings) == cancel_after_pending:
                    cancelled_at = time.time()
                    assoc.send_c_cancel(5, query_model=STUDY_ROOT_MOVE)
            else:
                final, final_identifier = status, identifier
    finally:
        assoc.release()
    return pendings, final, final_identifier, cancelled_at


def failed_list(identifier: Dataset | None) -> set[str]:
    """The Failed SOP Instance UID List (0008,0058) of a final response's identifier."""
    if identifier is None or "FailedSOPInstanceUIDList" not in identifier:
        return set()
    value = identifier.FailedSOPInstanceUIDList
    return {str(value)} if isinstance(value, str) else {str(v) for v in value}


def journaled_retrieves(gw: GatewayProcess) -> list[tuple[str, str]]:
    """``(sources, state)`` of every retrieve in the gateway's journal."""
    conn = sqlite3.connect(f"file:{gw.spool / 'queue.sqlite'}?mode=ro", uri=True, timeout=10)
    try:
        return [(str(s), str(st)) for s, st in conn.execute("SELECT sources, state FROM retrieves")]
    finally:
        conn.close()


class TwoOrthancTests(TestCase):
    """Two Orthanc sources with overlapping parts of one study, relay mode."""

    skip = orthanc.skip_reason() or dcmtk.skip_reason("movescu", "storescp")

    def setUp(self) -> None:
        """Two Orthancs loaded with overlapping halves; a storescp; the gateway is built per test."""
        self.root = Path(self.mktemp()).resolve()
        self.sources = [qr_source(self.root / "orthanc1", "SOURCE1"), qr_source(self.root / "orthanc2", "SOURCE2")]
        for source in self.sources:
            self.addCleanup(source.stop)
            source.start()
        self.series_a, self.series_b = two_series(self.root / "study", 6, 6)
        # archive1: all of A and the first half of B; archive2: all of B.
        preload(self.sources[0], [self.series_a, Study(self.series_b.study_instance_uid,
                                                        self.series_b.series_instance_uid, self.series_b.files[:3])])
        preload(self.sources[1], [self.series_b])
        self.all_files = list(self.series_a.files) + list(self.series_b.files)
        self.dest = dcmtk.Storescp(self.root / "dest", ae_title=DEST_AET)
        self.addCleanup(self.dest.stop)
        self.dest.start()
        self.move_port = free_port()

    def gateway(self, timeout: str = "120s", mode: str = "relay") -> GatewayProcess:
        """The gateway with both Orthancs as retrieve sources (archive1 first), started."""
        gw = GatewayProcess(
            self.root / "gw",
            http={"enabled": False},
            destinations={
                "archive1": dicom_destination(self.sources[0].dicom_port, "SOURCE1"),
                "archive2": dicom_destination(self.sources[1].dicom_port, "SOURCE2"),
            },
            routes=[],
            modalities={
                "movescu": {"ae_title": MOVE_AET, "host": "127.0.0.1", "port": self.move_port},
                "dest": {"ae_title": DEST_AET, "host": "127.0.0.1", "port": self.dest.port},
            },
            retrieve={"sources": ["archive1", "archive2"], "timeout": timeout, "mode": mode},
        )
        self.addCleanup(gw.stop)
        gw.start()
        return gw

    def test_pass_through_each_source_moves_its_share_counts_summed(self) -> None:
        """pass_through: each Orthanc moves its own share straight to the destination; the final sums to 12 completed; nothing in custody."""
        gw = self.gateway(mode="pass_through")
        for source in self.sources:
            source.declare_modality("DEST", DEST_AET, self.dest.port)
        pendings, final, _, _ = pynetdicom_move(gw.port, self.series_a.study_instance_uid, DEST_AET)
        assert final is not None
        self.assertEqual(int(final.Status), 0x0000, final)
        self.assertEqual((int(final.NumberOfCompletedSuboperations), int(final.NumberOfFailedSuboperations)), (12, 0), final)
        for status in pendings:
            total = sum(int(status.get(k, 0) or 0) for k in (
                "NumberOfRemainingSuboperations", "NumberOfCompletedSuboperations",
                "NumberOfFailedSuboperations", "NumberOfWarningSuboperations"))
            self.assertEqual(total, 12, status)
        received = self.dest.files()
        self.assertEqual(len(received), 12, [p.name for p in received])
        self.assertEqual(by_sop_instance(received), by_sop_instance(self.all_files))
        self.assertEqual(gw.journaled_ids(), set())

    def test_a_source_down_leaves_the_others_share_to_arrive(self) -> None:
        """archive1 is down (stopped): archive2's series B arrives in full, byte-identical; success for what could be located."""
        gw = self.gateway()
        self.sources[1].declare_modality("GW", GATEWAY_AET, gw.port)
        self.sources[0].stop()
        _, final, _, _ = pynetdicom_move(gw.port, self.series_a.study_instance_uid, DEST_AET)
        assert final is not None
        self.assertEqual((int(final.Status), int(final.NumberOfCompletedSuboperations)), (0x0000, 6), final)
        deadline = time.monotonic() + 30
        while len(self.dest.files()) < 6 and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual(by_sop_instance(self.dest.files()), by_sop_instance(list(self.series_b.files)))
        [(sources, _)] = journaled_retrieves(gw)
        self.assertNotIn("archive1", sources)

    def test_overlapping_sources_each_instance_once_byte_identical(self) -> None:
        """movescu gets all 12 instances once, byte-identical; pending counts add up to 12; both sources used."""
        gw = self.gateway()
        for source in self.sources:
            source.declare_modality("GW", GATEWAY_AET, gw.port)
        out = self.root / "moved"
        result = movescu(gw.port, GATEWAY_AET,
                         ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={self.series_a.study_instance_uid}"],
                         outdir=out, listen_port=self.move_port, move_aet=MOVE_AET, extra=("-d",))
        self.assertEqual(result.returncode, 0, result.describe()[-4000:])
        self.assertRegex(result.output, r"Received Final Move Response.*\n(.*\n){0,40}.*Status\s*: 0x0000",
                         result.describe()[-4000:])
        received = sorted(p for p in out.iterdir() if p.is_file())
        self.assertEqual(len(received), 12, [p.name for p in received])
        self.assertEqual(by_sop_instance(received), by_sop_instance(self.all_files))
        # Each instance entered custody once: archive2 was asked only for what archive1 lacks.
        self.assertEqual(len(gw.journaled_ids()), 12, gw.log_text()[-3000:])
        counts = move_counts(result.output)
        self.assertTrue(counts, result.describe()[-4000:])
        for remaining, completed, failed, warning in counts[:-1]:
            self.assertEqual(remaining + completed + failed + warning, 12, counts)
        self.assertEqual(counts[-1][1:], (12, 0, 0), counts)
        [(sources, state)] = journaled_retrieves(gw)
        self.assertIn("archive1", sources)
        self.assertIn("archive2", sources)
        self.assertEqual(state, "done")

    def test_a_source_whose_move_fails_counts_its_share_failed_with_uids(self) -> None:
        """archive2 does not know the gateway's AE (its C-MOVE fails): archive1's 9 arrive, archive2's 3 count failed, listed."""
        gw = self.gateway()
        self.sources[0].declare_modality("GW", GATEWAY_AET, gw.port)  # archive2 is not told: its C-MOVE fails
        _, final, identifier, _ = pynetdicom_move(gw.port, self.series_a.study_instance_uid, DEST_AET)
        assert final is not None
        only_in_2 = set(uids_of(self.series_b.files[3:]))
        self.assertEqual(int(final.Status), 0xB000, final)
        self.assertEqual((int(final.NumberOfCompletedSuboperations), int(final.NumberOfFailedSuboperations)), (9, 3), final)
        self.assertEqual(failed_list(identifier), only_in_2)
        delivered = by_sop_instance(self.dest.files())
        self.assertEqual(set(delivered), set(uids_of(self.all_files)) - only_in_2)
        originals = by_sop_instance(self.all_files)
        for uid, data in delivered.items():
            self.assertEqual(data, originals[uid], uid)

    def test_destination_down_longer_than_the_stall_is_not_failed_before_the_timeout(self) -> None:
        """The destination is down: the instances wait in custody past STALL_AFTER_SOURCE, counted remaining (not failed); the final comes at retrieve.timeout, and the queue delivers later."""
        stall = int(STALL_AFTER_SOURCE)
        self.dest.stop()
        gw = self.gateway(timeout=f"{stall + 15}s")
        for source in self.sources:
            source.declare_modality("GW", GATEWAY_AET, gw.port)
        started = time.monotonic()
        pendings, final, identifier, _ = pynetdicom_move(gw.port, self.series_a.study_instance_uid, DEST_AET)
        assert final is not None
        # Every instance was received into custody (the sources are done), none delivered.
        self.assertEqual(len(gw.journaled_ids()), 12, gw.log_text()[-3000:])
        self.assertGreater(len(pendings), stall, "the move ended at the stall, not at retrieve.timeout")
        # Past the stall the pending responses still count them remaining, none failed.
        late = pendings[stall + 2:]
        self.assertTrue(late)
        for status in late:
            self.assertEqual((int(status.NumberOfRemainingSuboperations), int(status.NumberOfFailedSuboperations)),
                             (12, 0), status)
        # At the deadline they count failed (0xA702: none completed), by count: none is known failed one by one.
        self.assertEqual(int(final.Status), 0xA702, final)
        self.assertEqual(int(final.NumberOfFailedSuboperations), 12, final)
        self.assertIn("timeout", str(final.get("ErrorComment", "")), final)
        self.assertEqual(failed_list(identifier), set())
        self.assertGreaterEqual(time.monotonic() - started, stall)
        # The queue still delivers them once the destination is back.
        self.dest.start()
        deadline = time.monotonic() + 120
        while len(self.dest.files()) < 12 and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertEqual(by_sop_instance(self.dest.files()), by_sop_instance(self.all_files), gw.log_text()[-3000:])


class SyntheticSourceTests(TestCase):
    """Two synthetic sources: C-CANCEL reaches both within a second; a source refusing UID lists is asked per series."""

    skip = dcmtk.skip_reason("storescp")

    def test_cancel_reaches_every_source_within_a_second(self) -> None:
        """Both synthetic sources are moving; each sees its own C-CANCEL less than 1 s after the requester's C-CANCEL-RQ."""
        root = Path(self.mktemp()).resolve()
        study = write_study(root / "study", 50, size=1024)
        first, second = root / "s1", root / "s2"
        for folder, files in ((first, study.files[:30]), (second, study.files[20:])):
            folder.mkdir(parents=True)
            for path in files:
                (folder / path.name).write_bytes(path.read_bytes())
        dest = dcmtk.Storescp(root / "dest", ae_title=DEST_AET)
        self.addCleanup(dest.stop)
        dest.start()
        scps = [SyntheticMoveScp(root / "scp1", first, aet="SYNTH1", delay=0.2),
                SyntheticMoveScp(root / "scp2", second, aet="SYNTH2", delay=0.2)]
        gw = GatewayProcess(
            root / "gw",
            http={"enabled": False},
            destinations={f"archive{i + 1}": dicom_destination(scp.port, scp.aet) for i, scp in enumerate(scps)},
            routes=[],
            modalities={"dest": {"ae_title": DEST_AET, "host": "127.0.0.1", "port": dest.port}},
            retrieve={"sources": ["archive1", "archive2"], "timeout": "120s"},
        )
        self.addCleanup(gw.stop)
        for scp in scps:
            scp.destinations[GATEWAY_AET] = ("127.0.0.1", gw.port)
            self.addCleanup(scp.stop)
            scp.start()
        gw.start()
        pendings, final, _, cancelled_at = pynetdicom_move(gw.port, study.study_instance_uid, DEST_AET,
                                                          cancel_after_pending=1)
        assert final is not None and cancelled_at is not None
        self.assertEqual(int(final.Status), 0xFE00, final)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not all(
                any(e["event"] == "cancel" for e in scp.events()) for scp in scps):
            time.sleep(0.1)
        for scp in scps:
            events = scp.events()
            [cancel] = [e for e in events if e["event"] == "cancel"]
            self.assertEqual(cancel["verb"], "move", events)
            self.assertLess(cancel["time"] - cancelled_at, 1.0, (scp.aet, events))
            self.assertLess(cancel["sent"], 30, events)  # it was still moving
        # The second source was asked only for what the first lacks (instances 30-49).
        [move2] = [e for e in scps[1].events() if e["event"] == "move"]
        self.assertEqual(set(move2["uids"]), set(uids_of(study.files[30:])))
        [move1] = [e for e in scps[0].events() if e["event"] == "move"]
        self.assertEqual(set(move1["uids"]), set(uids_of(study.files[:30])))

    def test_a_source_refusing_uid_lists_is_asked_for_the_series(self) -> None:
        """The second source fails the C-MOVE by UID list (0xC513): it is asked for its series instead; every instance arrives once."""
        root = Path(self.mktemp()).resolve()
        series_a, series_b = two_series(root / "study", 4, 5)
        first, second = root / "s1", root / "s2"
        # The first source holds series A; the second holds 2 of A and all of B: its share is B.
        for folder, files in ((first, series_a.files), (second, series_a.files[:2] + series_b.files)):
            folder.mkdir(parents=True)
            for path in files:
                (folder / f"{path.parent.name}-{path.name}").write_bytes(path.read_bytes())
        dest = dcmtk.Storescp(root / "dest", ae_title=DEST_AET)
        self.addCleanup(dest.stop)
        dest.start()
        scps = [SyntheticMoveScp(root / "scp1", first, aet="SYNTH1"),
                SyntheticMoveScp(root / "scp2", second, aet="SYNTH2", refuse_uid_lists=True)]
        gw = GatewayProcess(
            root / "gw",
            http={"enabled": False},
            destinations={f"archive{i + 1}": dicom_destination(scp.port, scp.aet) for i, scp in enumerate(scps)},
            routes=[],
            modalities={"dest": {"ae_title": DEST_AET, "host": "127.0.0.1", "port": dest.port}},
            retrieve={"sources": ["archive1", "archive2"], "timeout": "120s"},
        )
        self.addCleanup(gw.stop)
        for scp in scps:
            scp.destinations[GATEWAY_AET] = ("127.0.0.1", gw.port)
            self.addCleanup(scp.stop)
            scp.start()
        gw.start()
        _, final, _, _ = pynetdicom_move(gw.port, series_a.study_instance_uid, DEST_AET)
        assert final is not None
        self.assertEqual((int(final.Status), int(final.NumberOfCompletedSuboperations)), (0x0000, 9), final)
        moves = [e for e in scps[1].events() if e["event"] in ("move", "refused")]
        self.assertEqual([(e["event"], e.get("level")) for e in moves],
                         [("move", "IMAGE"), ("refused", None), ("move", "SERIES")], moves)
        self.assertEqual(set(moves[2]["uids"]), set(uids_of(series_b.files)))
        self.assertEqual(len(gw.journaled_ids()), 9)
        self.assertEqual(set(by_sop_instance(dest.files())), set(uids_of(list(series_a.files) + list(series_b.files))))

