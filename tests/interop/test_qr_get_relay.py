"""C-GET from an archive without C-GET, and routes morphing relayed instances, end to end (issue 16).

The source is the synthetic pynetdicom Q/R SCP (:class:`tests.support.qr.SyntheticQRScp`)
serving a folder of files with FIND and MOVE only (no GET context: "a source
that has no C-GET"), knowing the gateway as a move destination. The gateway
C-MOVEs to itself, takes the sub-operations into custody and stores them
back on the requester's association: ``getscu`` (bit-preserved), a
pynetdicom requester accepting only CT (the MR sub-operations failed and
listed), ``retrieve.route``'s morph visible to the requester and at a
``storescp +B`` move destination, and a ``kill -9`` mid relay (the retrieve
ends at restart, the scratch folder is swept and the spool cleaned).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from twisted.trial.unittest import TestCase

from tests.support import dcmtk, orthanc
from tests.support.ports import free_port
from tests.support.qr import Study, SyntheticQRScp, getscu, movescu, write_study

GATEWAY_AET = "DICOMGW"
SOURCE_AET = "NOGET"
DEST_AET = "DEST"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
#: The morph of the route ``retrieve.route`` names.
MORPHED_INSTITUTION = "RELAYED BY GATEWAY"


def dataset_bytes_by_uid(paths: list[Path]) -> dict[str, bytes]:
    """``SOP Instance UID -> data set bytes`` (file meta excluded) of Part 10 files."""
    from tests.support.datasets import dataset_bytes

    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): dataset_bytes(p) for p in paths}


def institutions(paths: list[Path]) -> dict[str, str]:
    """``SOP Instance UID -> Institution Name`` of Part 10 files."""
    found = {}
    for path in paths:
        ds = dcmread(path, stop_before_pixels=True)
        found[str(ds.SOPInstanceUID)] = str(ds.get("InstitutionName", ""))
    return found


class GetRelayTests(TestCase):
    """The real gateway between DCMTK/pynetdicom requesters and an archive without C-GET."""

    skip = dcmtk.skip_reason("getscu", "movescu", "storescp")

    def setUp(self) -> None:
        self.root = Path(self.mktemp()).resolve()
        self.archive = self.root / "archive"
        self.archive.mkdir(parents=True)
        self.gw_port = free_port()
        self.dest = dcmtk.Storescp(self.root / "dest", ae_title=DEST_AET)
        self.addCleanup(self.dest.stop)
        self.dest.start()

    def start(self, *, route: bool = False, move_delay: float = 0.0, dimse_timeout: str = "30s", **retrieve: Any) -> None:
        """The synthetic source (knowing the gateway's AE), then the gateway retrieving from it."""
        from tests.support.gateway_process import GatewayProcess, default_config, dicom_destination

        self.source = SyntheticQRScp(self.root / "source", aet=SOURCE_AET, instances=self.archive,
                                     move_destinations={GATEWAY_AET: ("127.0.0.1", self.gw_port)},
                                     move_delay=move_delay)
        self.addCleanup(self.source.stop)
        self.source.start()
        settings: dict[str, Any] = {"sources": ["archive"], "timeout": "120s", **retrieve}
        routes: list[dict[str, Any]] = []
        if route:
            routes = [{"name": "research", "forward": ["unused"], "morph": [{"set": {"InstitutionName": MORPHED_INSTITUTION}}]}]
            settings["route"] = "research"
        config = default_config(self.gw_port, self.root / "gw" / "spool")
        self.gw = GatewayProcess(
            self.root / "gw",
            listen=[{"host": "127.0.0.1", "port": self.gw_port}],
            http={"enabled": False},
            spool={"path": str(self.root / "gw" / "spool"), "clean_interval": "1s"},
            destinations={
                "archive": dicom_destination(self.source.port, SOURCE_AET),
                "unused": {"folder": str(self.root / "unused")},
            },
            routes=routes,
            modalities={"dest": {"ae_title": DEST_AET, "host": "127.0.0.1", "port": self.dest.port}},
            retrieve=settings,
            limits={**config["limits"], "dimse_timeout": dimse_timeout},
            audit={"file": str(self.root / "audit.jsonl")},
        )
        self.gw.port = self.gw_port  # the listener above (the source already knows it)
        self.addCleanup(self.gw.stop)
        self.gw.start()

    def study(self, count: int, name: str = "study") -> Study:
        """A CT study written into the archive's folder (before :meth:`start`: the source reads it at start)."""
        study = write_study(self.root / name, count)
        for path in study.files:
            (self.archive / f"{name}-{path.name}").write_bytes(path.read_bytes())
        return study

    def retrieves(self) -> list[tuple[str, str, str]]:
        """``(kind, state, error)`` of the journal's retrieves, oldest first (read-only)."""
        conn = sqlite3.connect(f"file:{self.gw.spool / 'queue.sqlite'}?mode=ro", uri=True, timeout=10)
        try:
            return [tuple(row) for row in conn.execute("SELECT kind, state, error FROM retrieves ORDER BY retrieve_id")]
        finally:
            conn.close()

    def scratch(self) -> list[str]:
        """The files in the spool's scratch folder."""
        folder = self.gw.spool / "scratch"
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def wait_for(self, condition: Any, timeout: float = 30.0) -> bool:
        """Poll ``condition`` until true or ``timeout`` (bounded wait; never a timed assertion)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.1)
        return bool(condition())

    def test_getscu_series_through_a_c_move_to_the_gateway(self) -> None:
        """``getscu`` gets a series from a source without C-GET, bit-preserved; the source saw the gateway's C-MOVE; nothing stays in scratch."""
        study = self.study(6)
        self.start()
        out = self.root / "got"
        result = getscu(self.gw_port, GATEWAY_AET,
                        ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study.study_instance_uid}",
                         f"SeriesInstanceUID={study.series_instance_uid}"], outdir=out)
        self.assertEqual(result.returncode, 0, result.describe()[-4000:] + self.gw.log_text()[-3000:])
        self.assertEqual(dataset_bytes_by_uid(sorted(out.iterdir())), dataset_bytes_by_uid(list(study.files)),
                         result.describe()[-3000:])
        moves = [e for e in self.source.events() if e["event"] == "move"]
        self.assertEqual([(e["calling_aet"], e["destination"]) for e in moves], [(GATEWAY_AET, GATEWAY_AET)])
        # The C-GET's own record and its relay leg's, both ended DONE.
        self.assertTrue(self.wait_for(lambda: [r[:2] for r in self.retrieves()] == [("get", "done"), ("get", "done")]),
                        self.retrieves())
        self.assertEqual(self.scratch(), [])
        # Audited as DICOM Instances Transferred (PS3.15 A.5.3.7, event ID 110104).
        from tests.interop.test_qr import audited

        self.assertTrue(audited(self.root / "audit.jsonl", "110104"))
        # Sent back: the relayed instances are finished for the spool's clean-up (keep_delivered 0).
        self.assertTrue(self.wait_for(lambda: self.gw.instances() == []), self.gw.instances())

    def test_requester_accepting_only_ct(self) -> None:
        """A pynetdicom requester taking CT only: CT stored, MR failed and listed (0008,0058), final 0xB000."""
        from pynetdicom import AE, build_role, evt
        from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

        study = self.study(5)
        mr_uids: set[str] = set()
        for path in sorted(self.archive.iterdir())[3:]:
            ds = dcmread(path)
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
            ds.Modality = "MR"
            ds.save_as(path, enforce_file_format=True)
            mr_uids.add(str(ds.SOPInstanceUID))
        self.start()  # the source reads its folder at start
        all_uids = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in study.files}
        received: set[str] = set()

        def on_store(event: Any) -> int:
            received.add(str(event.dataset.SOPInstanceUID))
            return 0x0000

        ae = AE(ae_title="PYGET")
        ae.add_requested_context(STUDY_ROOT_GET)
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", self.gw_port, ae_title=GATEWAY_AET,
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
        self.assertEqual(received, all_uids - mr_uids, self.gw.log_text()[-3000:])
        [(status, identifier)] = finals
        self.assertEqual(int(status.Status), 0xB000, status)
        self.assertEqual((int(status.NumberOfCompletedSuboperations), int(status.NumberOfFailedSuboperations)),
                         (3, 2), status)
        failed = identifier.FailedSOPInstanceUIDList if identifier is not None else []
        self.assertEqual(set([failed] if isinstance(failed, str) else failed), mr_uids, identifier)

    def test_route_morph_on_c_get_store_back(self) -> None:
        """``retrieve.route`` sets Institution Name: the requester gets the morphed copy of every instance."""
        study = self.study(3)
        self.start(route=True)
        out = self.root / "got"
        result = getscu(self.gw_port, GATEWAY_AET,
                        ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study.study_instance_uid}"], outdir=out)
        self.assertEqual(result.returncode, 0, result.describe()[-4000:])
        got = institutions(sorted(out.iterdir()))
        self.assertEqual(got, {uid: MORPHED_INSTITUTION for uid in dataset_bytes_by_uid(list(study.files))})
        self.assertEqual(self.scratch(), [])

    def test_route_morph_on_relayed_c_move(self) -> None:
        """A relayed C-MOVE with ``retrieve.route``: ``storescp +B`` receives the instances with the route's change, nothing else altered."""
        study = self.study(4)
        self.start(route=True)
        result = movescu(self.gw_port, GATEWAY_AET,
                         ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study.study_instance_uid}"],
                         outdir=self.root / "moved", listen_port=free_port(), move_aet=DEST_AET)
        self.assertIn("Final Move Response (Success)", result.output, result.describe()[-4000:])
        self.assertTrue(self.wait_for(lambda: len(self.dest.files()) == 4), self.dest.files())
        originals = {str(dcmread(p).SOPInstanceUID): dcmread(p) for p in study.files}
        for path in self.dest.files():
            ds = dcmread(path)
            self.assertEqual(str(ds.InstitutionName), MORPHED_INSTITUTION)
            original = originals[str(ds.SOPInstanceUID)]
            self.assertEqual(ds.PixelData, original.PixelData)
            self.assertEqual(str(ds.PatientID), str(original.PatientID))

    def test_without_route_move_is_as_received(self) -> None:
        """No ``retrieve.route``: the move destination gets the instances byte-identical."""
        study = self.study(3)
        self.start()
        result = movescu(self.gw_port, GATEWAY_AET,
                         ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study.study_instance_uid}"],
                         outdir=self.root / "moved", listen_port=free_port(), move_aet=DEST_AET)
        self.assertIn("Final Move Response (Success)", result.output, result.describe()[-4000:])
        self.assertTrue(self.wait_for(lambda: len(self.dest.files()) == 3), self.dest.files())
        self.assertEqual(dataset_bytes_by_uid(self.dest.files()), dataset_bytes_by_uid(list(study.files)))

    def test_kill_during_get_relay_leaves_nothing_stuck(self) -> None:
        """``kill -9`` mid C-GET relay: the requester is not told success; after restart the retrieves are ended, scratch swept, spool cleaned."""
        study = self.study(40)
        self.start(move_delay=0.2)
        out = self.root / "got"
        outcome: list[Any] = []
        getter = threading.Thread(target=lambda: outcome.append(getscu(
            self.gw_port, GATEWAY_AET,
            ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study.study_instance_uid}"], outdir=out, timeout=120)))
        getter.start()
        self.assertTrue(self.wait_for(lambda: out.is_dir() and len(list(out.iterdir())) >= 3, 60), self.gw.log_text()[-3000:])
        self.gw.kill()
        getter.join(150)
        self.assertEqual(len(outcome), 1)
        self.assertLess(len(list(out.iterdir())), 40)
        self.assertNotEqual(outcome[0].returncode, 0, outcome[0].describe()[-3000:])
        self.gw.start()
        self.assertTrue(self.wait_for(lambda: all(state != "open" for _, state, _ in self.retrieves())), self.retrieves())
        self.assertEqual(self.scratch(), [])
        self.assertTrue(self.wait_for(lambda: self.gw.instances() == [], 30), self.gw.instances())
        self.assertTrue(self.retrieves())

    def test_requester_never_answering_a_sub_operation_is_aborted(self) -> None:
        """A requester that never answers a sub-operation C-STORE: after ``limits.dimse_timeout`` its association is aborted and the retrieves end."""
        from pynetdicom import AE, build_role, evt
        from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

        study = self.study(3)
        self.start(dimse_timeout="2s")
        release = threading.Event()
        self.addCleanup(release.set)

        def on_store(event: Any) -> int:
            release.wait(20)  # never answers in time
            return 0x0000

        ae = AE(ae_title="SILENT")
        ae.add_requested_context(STUDY_ROOT_GET)
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", self.gw_port, ae_title=GATEWAY_AET,
                             ext_neg=[build_role(CTImageStorage, scp_role=True)],
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
        self.assertTrue(assoc.is_established)
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study.study_instance_uid
        statuses = []
        for status, _identifier in assoc.send_c_get(query, STUDY_ROOT_GET):
            statuses.append(status)
            if not status:
                break
        release.set()
        self.assertTrue(self.wait_for(lambda: assoc.is_aborted or not assoc.is_alive(), 30))
        self.assertTrue(assoc.is_aborted, statuses)
        self.assertTrue(self.wait_for(lambda: len(self.retrieves()) == 2 and all(state != "open" for _, state, _ in self.retrieves())),
                        self.retrieves())
        self.assertIn("no C-STORE-RSP", self.gw.log_text())
        self.assertTrue(self.wait_for(lambda: self.scratch() == []), self.scratch())


class ClusterGetRelayTests(TestCase):
    """Two nodes sharing a spool and a PostgreSQL queue behind HAProxy: the sub-operations reach the other node."""

    skip = dcmtk.skip_reason("getscu")

    def test_sub_operations_received_by_another_node_are_stored_back(self) -> None:
        """The C-GET is taken by one node, the source's C-MOVE lands on the other (leastconn): found by the poll, stored back bit-preserved."""
        from tests.support.cluster import Cluster
        from tests.support.gateway_process import dicom_destination

        root = Path(self.mktemp()).resolve()
        archive = root / "archive"
        archive.mkdir(parents=True)
        study = write_study(root / "study", 5)
        for path in study.files:
            (archive / path.name).write_bytes(path.read_bytes())
        source_port = free_port()
        cluster = Cluster(self, count=2, node_config={
            "destinations": {"archive": dicom_destination(source_port, SOURCE_AET)},
            "routes": [],
            "retrieve": {"sources": ["archive"], "timeout": "120s"},
        })
        source = SyntheticQRScp(root / "source", aet=SOURCE_AET, instances=archive, port=source_port,
                                move_destinations={GATEWAY_AET: ("127.0.0.1", cluster.haproxy.dicom_port)})
        self.addCleanup(source.stop)
        source.start()
        cluster.start()
        out = root / "got"
        result = getscu(cluster.haproxy.dicom_port, GATEWAY_AET,
                        ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study.study_instance_uid}",
                         f"SeriesInstanceUID={study.series_instance_uid}"], outdir=out)
        logs = "\n".join(f"== {n.node}\n{n.log_text()[-2500:]}" for n in cluster.nodes)
        self.assertEqual(result.returncode, 0, result.describe()[-3000:] + logs)
        self.assertEqual(dataset_bytes_by_uid(sorted(out.iterdir())), dataset_bytes_by_uid(list(study.files)), logs)
        requester_node = [n for n in cluster.nodes if "GETSCU -> DICOMGW" in n.log_text()]
        receiving_node = [n for n in cluster.nodes if f"{SOURCE_AET} -> DICOMGW" in n.log_text()]
        self.assertEqual(len(requester_node), 1, logs)
        self.assertEqual(len(receiving_node), 1, logs)
        self.assertIsNot(requester_node[0], receiving_node[0], logs)
        scratch = cluster.spool / "scratch"
        self.assertEqual(sorted(p.name for p in scratch.iterdir()) if scratch.is_dir() else [], [])


class OrthancRetrieveByMoveTests(TestCase):
    """``retrieve_by: move`` with Orthanc (which has C-GET): the C-GET is still done by a C-MOVE to the gateway."""

    skip = orthanc.skip_reason() or dcmtk.skip_reason("getscu")

    def test_getscu_through_orthanc_c_move(self) -> None:
        """``getscu`` gets a series bit-preserved; the journal shows the relay leg beside the C-GET (two retrieves, both done)."""
        from tests.support.gateway_process import GatewayProcess, dicom_destination
        from tests.support.qr import preload, qr_source

        root = Path(self.mktemp()).resolve()
        source = qr_source(root / "orthanc", "ORTHANC1")
        self.addCleanup(source.stop)
        source.start()
        study = write_study(root / "study", 4)
        preload(source, [study])
        gw = GatewayProcess(
            root / "gw",
            http={"enabled": False},
            destinations={"archive": dicom_destination(source.dicom_port, "ORTHANC1", retrieve_by="move")},
            routes=[],
            retrieve={"sources": ["archive"], "timeout": "120s"},
        )
        self.addCleanup(gw.stop)
        gw.start()
        source.declare_modality("GW", GATEWAY_AET, gw.port)
        out = root / "got"
        result = getscu(gw.port, GATEWAY_AET,
                        ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study.study_instance_uid}",
                         f"SeriesInstanceUID={study.series_instance_uid}"], outdir=out)
        self.assertEqual(result.returncode, 0, result.describe()[-3000:] + gw.log_text()[-3000:])
        self.assertEqual(dataset_bytes_by_uid(sorted(out.iterdir())), dataset_bytes_by_uid(list(study.files)))
        conn = sqlite3.connect(f"file:{gw.spool / 'queue.sqlite'}?mode=ro", uri=True, timeout=10)
        try:
            rows = [tuple(r) for r in conn.execute("SELECT kind, state, refs FROM retrieves ORDER BY retrieve_id")]
        finally:
            conn.close()
        self.assertEqual([(kind, state) for kind, state, _ in rows], [("get", "done"), ("get", "done")], rows)
        self.assertEqual(rows[0][2], "[]")  # the request's own record; the leg's lists the located instances
        self.assertEqual(len(json.loads(rows[1][2])), 4)
