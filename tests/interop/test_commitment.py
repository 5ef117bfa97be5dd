"""Storage Commitment through the gateway, against real peers (issue 15).

The peers:

- Orthanc (Debian ``orthanc``), which implements the Storage Commitment Push
  Model (PS3.4 Annex J) in both roles: as the requesting modality (REST
  ``POST /modalities/{id}/storage-commitment`` sends the N-ACTION, ``GET
  /storage-commitment/{transaction}`` shows the report it received) and as an
  archive that commits (its SCP answers from its own index);
- :mod:`tests.support.commitment_peer`, a pynetdicom requester and report
  receiver run as its own process, scripted where Orthanc cannot be (taken
  down and brought back on the same port, reports counted per Transaction UID).

:class:`HarnessTests` proves the harness itself against Orthanc, before any
gateway is involved: the peer's N-ACTION is answered by Orthanc, whose report
arrives on a new association with the SCP/SCU Role Selection item
(SCU-role 0, SCP-role 1: PS3.4 J.3.3.1.3, PS3.7 D.3.3.4); Orthanc's N-ACTION is
answered by the peer as SCP, whose report Orthanc reads back.  Were the peer
to misread a report (sequences, reason, roles), the gateway tests below
would prove nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from twisted.trial.unittest import TestCase

from tests.support import orthanc
from tests.support.commitment_peer import (
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH,
    CommitmentPeer,
    request_commitment,
)
from tests.support.datasets import ct_dataset
from tests.support.gateway_process import wait_until
from tests.support.orthanc import Orthanc

#: CT Image Storage (PS3.4 Annex B): the SOP class of the instances sent.
CT = "1.2.840.10008.5.1.4.1.1.2"
#: Failure Reasons (PS3.3 C.14.1.1).
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112


class PeerMixin:
    """Start peers in a fresh folder of the test, stopped in cleanups."""

    def peer(self, ae_title: str = "MODALITY", **kwargs: object) -> CommitmentPeer:
        """Start a :class:`CommitmentPeer`, stopped in a cleanup.

        :param ae_title: its AE title.
        :param kwargs: more constructor arguments.
        :returns: the running peer.
        """
        peer = CommitmentPeer(Path(self.mktemp()).resolve() / ae_title.lower(),  # type: ignore[attr-defined]
                              ae_title, **kwargs)  # type: ignore[arg-type]
        self.addCleanup(peer.stop)  # type: ignore[attr-defined]
        return peer.start()

    def orthanc(self, aet: str = "ORTHANC") -> Orthanc:
        """Start a private Orthanc, stopped in a cleanup.

        :param aet: its AE title.
        :returns: the running Orthanc.
        """
        archive = Orthanc(Path(self.mktemp()).resolve() / aet.lower(), aet=aet)  # type: ignore[attr-defined]
        self.addCleanup(archive.stop)  # type: ignore[attr-defined]
        return archive.start()


def upload_new_ct(archive: Orthanc, folder: Path) -> tuple[str, str]:
    """Store one CT instance with fresh UIDs in Orthanc through its REST API.

    :param archive: the Orthanc process.
    :param folder: a scratch folder (created).
    :returns: ``(SOP Class UID, SOP Instance UID)``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ds = ct_dataset(64, 64)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    archive.upload(path.read_bytes())
    return str(ds.SOPClassUID), str(ds.SOPInstanceUID)


class HarnessTests(PeerMixin, TestCase):
    """The pynetdicom peer and Orthanc understand each other in both roles (no gateway)."""

    skip = orthanc.skip_reason()
    timeout = 120

    def test_peer_request_to_orthanc_report_on_new_association_with_role_selection(self) -> None:
        """Peer asks Orthanc about one stored and one unknown instance: N-ACTION 0x0000, then event 2 with 0x0112 on a new association proposing SCU 0 / SCP 1."""
        archive = self.orthanc()
        receiver = self.peer("MODALITY")
        archive.declare_modality("MOD", "MODALITY", receiver.port)
        stored = upload_new_ct(archive, Path(self.mktemp()))
        missing = (CT, generate_uid())
        transaction = generate_uid()

        outcome = request_commitment(archive.dicom_port, transaction, [stored, missing],
                                     called_ae="ORTHANC", calling_ae="MODALITY")

        self.assertTrue(outcome.established)
        self.assertEqual(outcome.status, 0x0000)
        reports = wait_until(lambda: receiver.reports_for(transaction), 60,
                             lambda: f"Orthanc's report\n{archive.log_text()[-3000:]}")
        self.assertEqual(len(reports), 1)
        report = reports[0]
        self.assertEqual(report.event_type, 2)
        self.assertEqual(report.committed, (stored,))
        self.assertEqual(report.failed, ((*missing, NO_SUCH_OBJECT_INSTANCE),))
        self.assertEqual((report.calling_ae, report.called_ae, report.channel), ("ORTHANC", "MODALITY", "new"))
        self.assertEqual((report.affected_sop_class_uid, report.affected_sop_instance_uid),
                         (STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE))
        self.assertIn((STORAGE_COMMITMENT_PUSH, False, True), report.roles)

    def test_orthanc_request_to_peer_scp_reads_back_the_report(self) -> None:
        """Orthanc asks the peer (as SCP) about two instances; the peer fails one (0x0112); Orthanc's REST shows Failure with that one."""
        archive = self.orthanc()
        ok, bad = (CT, generate_uid()), (CT, generate_uid())
        scp = self.peer("PEERSCP", scp=True, peers={"ORTHANC": ("127.0.0.1", archive.dicom_port)},
                        fail=[bad[1]])
        archive.declare_modality("PEERSCP", "PEERSCP", scp.port)

        transaction = archive.request_commitment("PEERSCP", [ok, bad])
        result = archive.wait_commitment(transaction, 60)

        self.assertEqual(result["Status"], "Failure")
        self.assertEqual([(s["SOPClassUID"], s["SOPInstanceUID"]) for s in result["Success"]], [ok])
        self.assertEqual([(f["SOPClassUID"], f["SOPInstanceUID"], f["FailureReason"]) for f in result["Failures"]],
                         [(*bad, NO_SUCH_OBJECT_INSTANCE)])
        actions = scp.actions()
        self.assertEqual([(a["transaction_uid"], a["calling_ae"], a["action_type"]) for a in actions],
                         [(transaction, "ORTHANC", 1)])
        self.assertEqual([tuple(r) for r in actions[0]["references"]], [ok, bad])
