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
is looked up by the requester's AE title; an N-ACTION from an AE it does not
know is refused with an A-ABORT. The tests use that to hold the report back
while they delete an instance in Orthanc.

:class:`CommittedPolicyTests` closes the loop of the ``committed`` policy
with a second Orthanc as the requesting modality: it pushes a study to the
gateway and asks the gateway (``POST /modalities/{id}/storage-commitment``);
the gateway's report to it (read back with ``GET /storage-commitment/{id}``)
says committed only for what the archive itself committed.
:class:`CommittedPolicyRemappedTests` does it through a route that
de-identifies (new UIDs): the modality asks about its UIDs, the archive
committed the copies under theirs.
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


def declare_gateway(peer: Orthanc, gw: GatewayProcess) -> None:
    """Declare the gateway in ``peer``'s ``DicomModalities`` as ``GW``, Storage Commitment allowed both ways.

    :param peer: an Orthanc.
    :param gw: the gateway.
    """
    peer.request(
        "PUT",
        "/modalities/GW",
        {
            "AET": GATEWAY_AET,
            "Host": "127.0.0.1",
            "Port": gw.port,
            "AllowEcho": True,
            "AllowStore": True,
            "AllowStorageCommitment": True,
        },
    )


def copies_of(gw: GatewayProcess, uids: list[str]) -> dict[str, list[Any]]:
    """What the gateway's journal records of each UID's copies for ``archive``: ``uid -> [CopyCommitment]``.

    :param gw: the gateway (its SQLite journal, read beside the running process).
    :param uids: SOP Instance UIDs.
    """
    store = SqliteQueueStore(os.fspath(gw.spool / "queue.sqlite"))
    try:
        found = store.received(uids, 0.0)
    finally:
        store.close()
    return {uid: [c for r in found.get(uid, []) for c in r.copies if c.destination == "archive"] for uid in uids}


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
        """Tell the archive who the gateway is: where its reports go."""
        declare_gateway(self.archive, self.gw)

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
        return copies_of(self.gw, uids)

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


class CommittedPolicyMixin:
    """Two Orthancs, the modality and the archive, around a gateway with the ``committed`` policy.

    :cvar route: the gateway's one route (to ``archive``).
    """

    route: dict[str, Any] = {"name": "all", "forward": ["archive"]}

    def setUp(self) -> None:
        root = Path(self.mktemp()).resolve()  # type: ignore[attr-defined]
        self.archive = Orthanc(root / "archive", aet=ARCHIVE_AET)
        self.modality = Orthanc(root / "modality", aet="MODALITY")
        for peer in (self.archive, self.modality):
            self.addCleanup(peer.stop)  # type: ignore[attr-defined]
            peer.start()
        self.gw = GatewayProcess(
            root / "gw",
            http={"enabled": False},
            destinations={
                "archive": dicom_destination(
                    self.archive.dicom_port, ARCHIVE_AET, storage_commitment=True, commitment_timeout=COMMITMENT_TIMEOUT
                ),
            },
            routes=[self.route],
            modalities={"modality": {"ae_title": "MODALITY", "host": "127.0.0.1", "port": self.modality.dicom_port}},
            commitment={"policy": "committed", "deadline": "5m", "retry": {"initial": "300ms", "max": "1s"}},
        )
        self.addCleanup(self.gw.stop)  # type: ignore[attr-defined]
        self.gw.start()
        declare_gateway(self.modality, self.gw)
        self.files = root / "files"
        self.files.mkdir()

    def push(self, count: int) -> list[tuple[str, str]]:
        """Upload ``count`` new CT instances to the modality and have it push them to the gateway; their references."""
        ids, references = [], []
        for i in range(count):
            path = write_instance(self.files / f"ct{i:03d}.dcm", ExplicitVRLittleEndian, 2048, seed=100 + i)
            ids.append(self.modality.upload(path.read_bytes()))
            references.append(("1.2.840.10008.5.1.4.1.1.2", sop_instance_uid(path)))
        self.modality.store("GW", ids)
        return references

    def ask(self, references: list[tuple[str, str]]) -> dict[str, Any]:
        """The modality's Storage Commitment request to the gateway, and the report it received."""
        answer = self.modality.request(
            "POST",
            "/modalities/GW/storage-commitment",
            {"DicomInstances": [{"SOPClassUID": c, "SOPInstanceUID": i} for c, i in references], "Timeout": 20},
            timeout=50,
        )
        transaction_uid = self.transaction_uid = str(answer["ID"])

        def reported() -> dict[str, Any] | None:
            result: dict[str, Any] = self.modality.get(f"/storage-commitment/{transaction_uid}")
            return result if result.get("Status") != "Pending" else None

        result: dict[str, Any] = wait_until(
            reported, WAIT, lambda: f"the report of {transaction_uid}\n{self.gw.log_text()[-3000:]}"
        )
        return result



class CommittedPolicyTests(CommittedPolicyMixin, TestCase):
    """Policy ``committed``: Orthanc the modality asks the gateway; Orthanc the archive commits behind it."""

    skip = orthanc.skip_reason()

    def test_the_modality_is_told_committed_once_the_archive_committed(self) -> None:
        """Two instances: the modality's report (event type 1) comes after the archive's own report made both copies COMMITTED."""
        declare_gateway(self.archive, self.gw)
        references = self.push(2)
        result = self.ask(references)
        self.assertEqual(result["Status"], "Success", result)
        self.assertEqual(sorted((s["SOPClassUID"], s["SOPInstanceUID"]) for s in result["Success"]), sorted(references))
        copies = copies_of(self.gw, [i for _, i in references])
        self.assertEqual({c[0].state for c in copies.values()}, {CopyState.COMMITTED})
        # Never more than is true: the report was decided after the archive's answers came.
        store = SqliteQueueStore(os.fspath(self.gw.spool / "queue.sqlite"))
        try:
            transaction = store.get_transaction(self.transaction_uid)
        finally:
            store.close()
        assert transaction.decided_at is not None
        self.assertGreaterEqual(transaction.decided_at, max(c[0].answered_at for c in copies.values()))

    def test_an_instance_the_archive_lost_is_reported_failed_to_the_modality(self) -> None:
        """The archive lost one copy before it could commit it: the modality hears 0x0110 for that one, committed for the other."""
        references = self.push(2)
        uids = [i for _, i in references]
        ids = dict(
            wait_until(
                lambda: all(self.archive.find_instance(u) for u in uids) and {u: self.archive.find_instance(u) for u in uids},
                WAIT,
                "the instances in the archive",
            )
        )
        # The archive does not know the gateway yet: its N-ACTION is refused, the copies wait REQUESTED.
        wait_until(
            lambda: all(c and c[0].state is CopyState.REQUESTED for c in copies_of(self.gw, uids).values()),
            WAIT,
            "the refused request",
        )
        self.archive.request("DELETE", f"/instances/{ids[uids[1]]}")
        declare_gateway(self.archive, self.gw)
        result = self.ask(references)
        self.assertEqual(result["Status"], "Failure", result)
        self.assertEqual([(s["SOPClassUID"], s["SOPInstanceUID"]) for s in result["Success"]], [references[0]])
        self.assertEqual(
            [(f["SOPClassUID"], f["SOPInstanceUID"], f["FailureReason"]) for f in result["Failures"]],
            [(*references[1], 0x0110)],  # processing failure: the archive did not commit it (PS3.3 C.14.1.1)
        )
        self.assertEqual(copies_of(self.gw, uids)[uids[1]][0].failure_reason, 0x0112)


class CommittedPolicyRemappedTests(CommittedPolicyMixin, TestCase):
    """Policy ``committed`` through a route that de-identifies: the archive holds copies under new UIDs."""

    skip = orthanc.skip_reason()
    route = {"name": "deid", "morph": [{"deidentify": "basic"}], "forward": ["archive"]}

    def test_the_modality_asks_about_its_uids_and_the_archive_committed_the_copies(self) -> None:
        """The modality asks about the UIDs it sent; the archive committed copies under other UIDs; the report says committed."""
        declare_gateway(self.archive, self.gw)
        references = self.push(2)
        uids = [i for _, i in references]
        result = self.ask(references)
        self.assertEqual(result["Status"], "Success", result)
        self.assertEqual(sorted((s["SOPClassUID"], s["SOPInstanceUID"]) for s in result["Success"]), sorted(references))
        copies = copies_of(self.gw, uids)
        sent = [c[0].sop_instance_uid for c in copies.values()]
        self.assertEqual({c[0].state for c in copies.values()}, {CopyState.COMMITTED})
        self.assertFalse(set(sent) & set(uids), "the copies kept the received UIDs")
        self.assertTrue(all(self.archive.find_instance(u) for u in sent))
        self.assertFalse(any(self.archive.find_instance(u) for u in uids))
