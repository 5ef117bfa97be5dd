"""Retrieves in the journal through the real gateway (issue 16): ``retrieve list/show``, then the retention clean-up.

A relayed C-MOVE (DCMTK ``movescu``) of a three-instance study from Orthanc
through the gateway to a ``storescp``; ``dicom-gateway retrieve list`` and
``retrieve show`` (separate processes on the running gateway's journal) show
it DONE with its counts and instances (``retention.retrieves: 1h``); a reload
(SIGHUP) with ``retention.retrieves: 2s`` and a one-second housekeeping
interval, and the running gateway deletes it: ``retrieve show`` then says
clearly that it is not on record and why (exit 1).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.interop.test_qr import DEST_AET, GATEWAY_AET, by_sop_instance
from tests.support import dcmtk, orthanc
from tests.support.ports import free_port
from tests.support.qr import movescu, preload, qr_source, write_study

#: The source archive's AE title.
SOURCE_AET = "HKSOURCE"


class RetrieveHousekeepingTests(TestCase):
    """A C-MOVE seen by the operator's commands, then cleaned up after ``retention.retrieves``."""

    skip = orthanc.skip_reason() or dcmtk.skip_reason("movescu", "storescp")

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
            spool={"path": str(self.root / "gw" / "spool"), "clean_interval": "1s"},
            retention={"retrieves": "1h"},
            destinations={"archive": dicom_destination(self.source.dicom_port, SOURCE_AET)},
            routes=[],
            modalities={"dest": {"ae_title": DEST_AET, "host": "127.0.0.1", "port": self.dest.port}},
            retrieve={"sources": ["archive"], "timeout": "120s"},
        )
        self.addCleanup(self.gw.stop)
        self.gw.start()
        # relay: the source moves to the gateway, so it must know the gateway's AE title.
        self.source.declare_modality("GW", GATEWAY_AET, self.gw.port)

    def test_move_listed_shown_then_cleaned_up(self) -> None:
        """list/show show the DONE move (requester, destination, 3 completed, each instance); reloaded with a 2 s retention it goes and show says so."""
        study = write_study(self.root / "study", 3)
        preload(self.source, [study])
        result = movescu(self.gw.port, GATEWAY_AET,
                         ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study.study_instance_uid}"],
                         outdir=self.root / "moved", listen_port=free_port(), move_aet=DEST_AET, timeout=120)
        self.assertIn("Final Move Response (Success)", result.output, result.describe()[-4000:])
        self.assertEqual(by_sop_instance(self.dest.files()), by_sop_instance(list(study.files)))

        listed = self.gw.cli("retrieve", "list", "--json")
        self.assertEqual(listed.returncode, 0, listed.describe())
        (row,) = json.loads(listed.stdout)
        self.assertEqual(
            (row["kind"], row["state"], row["destination"], row["mode"], row["sources"], row["completed"], row["failed"]),
            ("move", "done", "dest", "relay", ["archive"], 3, 0),
            row,
        )
        self.assertEqual(row["requester_ae_title"].strip(), "MOVESCU")
        table = self.gw.cli("retrieve", "list", "--state", "done")
        self.assertRegex(table.stdout, rf"\s{row['retrieve_id']} move done\s+MOVESCU\s+dest\s+relay")
        self.assertEqual(self.gw.cli("retrieve", "list", "--state", "open", "--json").stdout.strip(), "[]")

        shown = self.gw.cli("retrieve", "show", str(row["retrieve_id"]))
        self.assertEqual(shown.returncode, 0, shown.describe())
        self.assertIn(f"retrieve {row['retrieve_id']}: C-MOVE done", shown.stdout)
        self.assertIn("instances    3: 3 completed, 0 warning, 0 failed, 0 remaining", shown.stdout)
        for uid in by_sop_instance(list(study.files)):
            self.assertIn(uid, shown.stdout)

        # Still there on the next rounds with 1 h; reloaded with 2 s, the housekeeping (every second) deletes it.
        time.sleep(2)
        self.assertEqual(self.gw.cli("retrieve", "show", str(row["retrieve_id"])).returncode, 0)
        self.gw.rewrite_config(retention={"retrieves": "2s"})
        self.gw.reload()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            gone = self.gw.cli("retrieve", "show", str(row["retrieve_id"]))
            if gone.returncode != 0:
                break
            time.sleep(0.5)
        self.assertEqual(gone.returncode, 1, gone.describe() + self.gw.log_text()[-3000:])
        self.assertIn(
            f"no retrieve {row['retrieve_id']} on record (finished retrieves are kept 2s after they end: retention.retrieves",
            gone.stderr,
        )
        self.assertEqual(self.gw.cli("retrieve", "list", "--json").stdout.strip(), "[]")
        # What was delivered stays delivered: the clean-up touches the journal's retrieve rows only.
        self.assertEqual(len(self.dest.files()), 3)
