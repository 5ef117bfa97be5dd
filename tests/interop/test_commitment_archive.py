"""Orthanc as an archive that commits, behind the real gateway (issue 15, the ``committed`` policy's base).

The gateway process forwards everything it receives to an Orthanc
(Debian ``orthanc`` 1.10) declared ``storage_commitment: true``. Once
delivered, the gateway asks Orthanc (N-ACTION-RQ, Storage Commitment Push
Model, PS3.4 J.3.2) about the copies; Orthanc's Storage Commitment SCP
checks each in its own index and reports (N-EVENT-REPORT-RQ, PS3.4 J.3.3)
on a **new association** it opens to the gateway (the gateway's log shows
that association, calling AE title Orthanc's); the gateway records the
answer per copy in its journal, read here through the store itself
(:meth:`~gateway.queue.commitments.ICommitmentJournal.received`).

Orthanc answers Storage Commitment only for a modality it knows
(``DicomModalities``, ``AllowStorageCommitment``): the report's destination
is looked up by the requester's AE title. The second test uses that to hold
the report back while it deletes an instance in Orthanc.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian
from twisted.trial.unittest import TestCase

from gateway.queue.commitments import CopyState
from gateway.queue.sqlite import SqliteQueueStore
from tests.support import dcmtk, orthanc
from tests.support.datasets import write_instance
from tests.support.gateway_process import GatewayProcess, dicom_destination, wait_until
from tests.support.interop import sop_instance_uid
from tests.support.orthanc import Orthanc

#: Orthanc's AE title (the destination's called AE title; the calling AE title of its reports).
ARCHIVE_AET = "ARCHIVE"
#: The gateway's AE title (the default of tests.support.gateway_process).
GATEWAY_AET = "DICOMGW"
#: Seconds before an unanswered request is asked again (short, so a test sees it).
COMMITMENT_TIMEOUT = "3s"
#: The longest a test waits for a report (the committer looks every 5 s; Orthanc's job runs at once).
WAIT = 60.0


class OrthancCommittingArchiveTests(TestCase):
    """The gateway as Storage Commitment SCU towards Orthanc, on real processes."""

    skip = orthanc.skip_reason() or dcmtk.skip_reason("storescu")

    def setUp(self) -> None:
        root = Path(self.mktemp()).resolve()
        self.archive = Orthanc(root / "orthanc", aet=ARCHIVE_AET)
        self.addCleanup(self.archive.stop)
        self.archive.start()
        self.gw = GatewayProcess(
            root / "gw",
            http={"enabled": False},
            destinations={
                "archive": dicom_destination(
                    self.archive.dicom_port, ARCHIVE_AET, storage_commitment=True, commitment_timeout=COMMITMENT_TIMEOUT
                ),
            },
            routes=[{"name": "all", "forward": ["archive"]}],
        )
        self.addCleanup(self.gw.stop)
        self.gw.start()
        self.files = root / "files"
        self.files.mkdir()

    # -- helpers -------------------------------------------------------------------------

    def declare_gateway(self) -> None:
        """Tell Orthanc who the gateway is: where its reports go (``AllowStorageCommitment``)."""
        self.archive.request(
            "PUT",
            "/modalities/GW",
            {
                "AET": GATEWAY_AET,
                "Host": "127.0.0.1",
                "Port": self.gw.port,
                "AllowEcho": True,
                "AllowStore": True,
                "AllowStorageCommitment": True,
            },
        )

    def send(self, count: int) -> list[str]:
        """Send ``count`` new CT instances to the gateway with storescu; their SOP Instance UIDs."""
        paths = []
        for i in range(len(list(self.files.iterdir())), len(list(self.files.iterdir())) + count):
            path = self.files / f"ct{i:03d}.dcm"
            write_instance(path, ExplicitVRLittleEndian, 2048, seed=i)
            paths.append(path)
        result = dcmtk.storescu(self.gw.port, paths, called_ae=GATEWAY_AET, calling_ae="MODALITY")
        self.assertEqual(result.returncode, 0, result)
        return [sop_instance_uid(p) for p in paths]

    def copies(self, uids: list[str]) -> dict[str, list[Any]]:
        """What the gateway's journal records of each UID's copies for the archive: ``uid -> [CopyCommitment]``."""
        store = SqliteQueueStore(os.fspath(self.gw.spool / "queue.sqlite"))
        try:
            found = store.received(uids, 0.0)
        finally:
            store.close()
        return {uid: [c for r in found.get(uid, []) for c in r.copies if c.destination == "archive"] for uid in uids}

    def wait_states(self, uids: list[str], wanted: dict[str, CopyState]) -> dict[str, list[Any]]:
        """Wait until each UID's copy is in its wanted state; the copies."""

        def reached() -> dict[str, list[Any]] | None:
            copies = self.copies(uids)
            ok = all(len(copies[u]) == 1 and copies[u][0].state is wanted[u] for u in uids)
            return copies if ok else None

        result: dict[str, list[Any]] = wait_until(
            reached, WAIT, lambda: f"copies {wanted}: {self.copies(uids)}\n{self.gw.log_text()[-3000:]}"
        )
        return result

    def in_archive(self, uids: list[str]) -> dict[str, str]:
        """Wait until Orthanc holds every UID; its ids by UID."""
        return dict(
            wait_until(
                lambda: all(self.archive.find_instance(u) for u in uids) and {u: self.archive.find_instance(u) for u in uids},
                WAIT,
                "the instances in Orthanc",
            )
        )

    # -- tests ---------------------------------------------------------------------------

    def test_orthanc_commits_what_it_stored_and_reports_on_a_new_association(self) -> None:
        """Three instances through the gateway: Orthanc's report, on an association it opened, makes each copy COMMITTED."""
        self.declare_gateway()
        uids = self.send(3)
        self.in_archive(uids)
        copies = self.wait_states(uids, {u: CopyState.COMMITTED for u in uids})
        transactions = {copies[u][0].transaction_uid for u in uids}
        self.assertEqual(len(transactions), 1, "one N-ACTION for the three copies")
        (transaction_uid,) = transactions
        self.assertTrue(transaction_uid.startswith("2.25."), transaction_uid)
        log = self.gw.log_text()
        # The report came on a new association Orthanc opened (calling AE title
        # ARCHIVE, called DICOMGW; its one context, Storage Commitment with
        # Orthanc as SCP, accepted), not on the gateway's N-ACTION association.
        self.assertRegex(log, rf"association from \S+ {ARCHIVE_AET} -> {GATEWAY_AET}: 1/1 contexts accepted")
        self.assertIn(f"archive reported on storage commitment request {transaction_uid}: 3 committed, 0 failed", log)

    def test_an_instance_orthanc_no_longer_has_is_failed_with_its_reason(self) -> None:
        """Orthanc lost one of two copies before it could report: that one FAILED with 0x0112, the other COMMITTED."""
        uids = self.send(2)
        ids = self.in_archive(uids)
        # Orthanc does not know the gateway yet: no report; the copies stay REQUESTED.
        self.wait_states(uids, {u: CopyState.REQUESTED for u in uids})
        self.archive.request("DELETE", f"/instances/{ids[uids[1]]}")
        self.assertIsNone(self.archive.find_instance(uids[1]))
        self.declare_gateway()
        # Asked again after commitment_timeout, under a new Transaction UID; answered now.
        copies = self.wait_states(uids, {uids[0]: CopyState.COMMITTED, uids[1]: CopyState.FAILED})
        self.assertEqual(copies[uids[1]][0].failure_reason, 0x0112)  # No such object instance (PS3.3 C.14.1.1)
        # The first N-ACTION, from an AE Orthanc did not know, was refused (A-ABORT): asked again.
        self.assertGreaterEqual(copies[uids[1]][0].requests, 2)
        self.assertIn("failed: AssociationAborted", self.gw.log_text())
