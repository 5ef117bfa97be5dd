"""Fan-out with one destination permanently down (HARDENING F17).

"Two deliver; the spool copy is kept until all are done or dead-lettered; a
spool usage alert fires before the watermark."

- Custody: 20 instances fan out to two recording SCPs and to a port where
  nothing listens.  The two get all 20, byte-identical; the third keeps 20
  queued.  The spool clean-up runs every second (``spool.clean_interval``)
  with a short ``retention.keep_delivered``; a marker instance routed to one
  healthy destination only has its file removed (so the clean-up ran) while
  the 20 fanned-out files stay.  Connection refusals are destination-wide
  faults, which never dead-letter (HARDENING decision 9), so the third is then
  brought up refusing every instance with 0xC000 (PS3.4 Annex B.2.3, "Error:
  Cannot understand"): each is dead-lettered with a reason after
  ``max_attempts``, the files are still kept (dead letters keep their files),
  and once the operator purges the dead letters (``queue purge``) the next
  clean-up removes them.
- Alert before the watermark: on a 24 MiB tmpfs spool, the shipped
  ``DicomGatewaySpoolLow`` ratio (``spool_free_bytes / spool_capacity_bytes
  < 0.10``, ``etc/prometheus/alerts.yml``) is true from ``/metrics`` while
  free space is still above ``spool.min_free``, and C-STOREs are accepted
  there; below ``min_free`` a C-STORE is answered 0xA700 and a new
  association A-ASSOCIATE-RJ (2, 3, 1) (PS3.8 9.3.4, temporary congestion).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.interop.test_forward_crash import _mount_small_filesystem
from tests.support.datasets import ct_dataset
from tests.support.gateway_process import GatewayProcess, dicom_destination
from tests.support.interop import ForwardTestMixin, pynetdicom_store
from tests.support.invariants import check_forward_invariants
from tests.support.ports import free_port
from tests.support.metrics import metrics_text, sample

#: C-STORE "Error: Cannot understand" (PS3.4 Annex B.2.3): a failure of this instance.
CANNOT_UNDERSTAND = 0xC000

#: C-STORE "Refused: Out of Resources" (PS3.4 Annex B.2.3).
OUT_OF_RESOURCES = 0xA700

#: The threshold of the shipped DicomGatewaySpoolLow alert (etc/prometheus/alerts.yml).
SPOOL_LOW_RATIO = 0.10


class DownDestinationCustodyTests(ForwardTestMixin, TestCase):
    """F17: the spool copy is kept until every destination is done or dead-lettered."""

    timeout = 120

    def test_two_deliver_the_third_keeps_the_spool_copies_until_its_dead_letters_are_purged(self) -> None:
        """20 fanned out: two SCPs get 20 identical copies, the down one keeps 20 queued and the files through clean-ups; purged dead letters free them."""
        first, second = self.recorder(ae_title="FIRST"), self.recorder(ae_title="SECOND")
        down_port = free_port()
        http_port = free_port()
        gateway = GatewayProcess(
            self.mktemp(),
            retention={"keep_delivered": "1s"},
            http={"host": "127.0.0.1", "port": http_port},
            destinations={"first": dicom_destination(first.port, first.ae_title),
                          "second": dicom_destination(second.port, second.ae_title),
                          "down": dicom_destination(down_port, "DOWN", retry={"max_attempts": 2})},
            routes=[{"name": "marker", "match": {"PatientID": "MARKER"}, "forward": ["first"],
                     "final": True},
                    {"name": "all", "forward": ["first", "second", "down"]}],
        )
        gateway.rewrite_config(spool={"path": str(gateway.spool), "clean_interval": "1s"})
        self.addCleanup(gateway.stop)
        gateway.start()
        study = "1.2.826.0.1.3680043.8.498.17017"
        datasets = [ct_dataset(64, 64, study_instance_uid=study, seed=i) for i in range(20)]
        marker = ct_dataset(64, 64, seed=99)
        marker.PatientID = "MARKER"
        self.assertEqual(pynetdicom_store(gateway.port, datasets + [marker]), [0x0000] * 21)
        uids = {str(ds.SOPInstanceUID) for ds in datasets}
        self.wait_for(gateway, lambda: set(first.successes()) == uids | {str(marker.SOPInstanceUID)}
                      and set(second.successes()) == uids, 30, "20 instances at both healthy destinations")
        # Hash-identical at both healthy destinations.
        self.assertEqual({r.sop_instance_uid: r.digest for r in second.receipts},
                         {r.sop_instance_uid: r.digest for r in first.receipts
                          if r.sop_instance_uid in uids})
        # The marker was delivered everywhere it goes: the clean-up removes its file, not the 20.
        # (Instance files, not the empty slot files the spool keeps ready: issue 13.)
        def spooled() -> list[Path]:
            return sorted(gateway.instances())

        self.wait_for(gateway, lambda: len(spooled()) == 20, 15, "the clean-up to remove the marker's spool file")
        self.wait_for(gateway, lambda: gateway.queue_rows()["down"]["circuit"] == "open", 15,
                      "the circuit of 'down' to open")
        rows = gateway.queue_rows()
        self.assertEqual(rows["down"]["queued"] + rows["down"]["in_flight"], 20)
        self.assertEqual((rows["down"]["dead"], rows["first"]["delivered"], rows["second"]["delivered"]),
                         (0, 21, 20))
        kept = spooled()
        # Three more clean-up periods: still every file (they have a queued entry).
        self.wait_for(gateway, lambda: sample(metrics_text(http_port), "dicom_gateway_queue_depth",
                                              destination="down") == 20, 10, "queue_depth{down} == 20")
        check_forward_invariants(self, gateway, destinations={"first": first, "second": second,
                                                              "down": lambda: []},
                                 accepted={"first": 21, "second": 20, "down": 20})
        self.assertEqual(spooled(), kept)
        # The third answers now, refusing every instance: dead letters with a reason.
        refusing = self.recorder(port=down_port, ae_title="DOWN",
                                 status_for=lambda _uid, _attempt: CANNOT_UNDERSTAND)
        dead = self.wait_for(gateway, lambda: len(d := gateway.dead_letters()) == 20 and d, 30,
                             "20 dead letters at 'down'")
        self.assertTrue(all(d["dead_reason"] and d["destination"] == "down" for d in dead), dead[:2])
        self.assertEqual(set(refusing.counts()), uids)
        check_forward_invariants(self, gateway, destinations={"first": first, "second": second,
                                                              "down": lambda: []},
                                 accepted={"first": 21, "second": 20, "down": 20})
        # Dead letters keep their files through clean-ups (until the operator purges them).
        self.wait_for(gateway, lambda: sample(metrics_text(http_port), "dicom_gateway_dead_letters",
                                              destination="down") == 20, 10, "dead_letters{down} == 20")
        self.assertEqual(spooled(), kept)
        purge = gateway.cli("queue", "purge", *(str(d["entry_id"]) for d in dead))
        self.assertEqual(purge.returncode, 0, purge.describe())
        self.wait_for(gateway, lambda: spooled() == [], 15,
                      "the clean-up to remove the 20 files once nothing is queued or dead")
        self.assertEqual(gateway.dead_letters(), [])


class SpoolAlertTests(ForwardTestMixin, TestCase):
    """F17: the shipped spool-usage alert is true while the gateway still accepts."""

    timeout = 90

    def test_spool_low_alert_ratio_is_crossed_while_still_accepting_then_refused_below_min_free(self) -> None:
        """On a 24 MiB tmpfs: free/capacity < 0.10 with free > min_free accepts C-STOREs; below min_free 0xA700 and RJ."""
        recorder = self.recorder()
        http_port = free_port()
        gateway = GatewayProcess(
            self.mktemp(),
            destinations={"pacs": dicom_destination(recorder.port, recorder.ae_title)},
            routes=[{"name": "all", "forward": ["pacs"]}],
            http={"host": "127.0.0.1", "port": http_port},
        )
        gateway.spool.mkdir(parents=True)
        how = _mount_small_filesystem(gateway.spool, 24)
        self.addCleanup(subprocess.run, ["umount", "-l", str(gateway.spool)], check=False)
        gateway.rewrite_config(spool={"path": str(gateway.spool), "min_free": "1MiB",
                                      "resume_margin": "512KiB"})
        self.addCleanup(gateway.stop)
        gateway.start()
        capacity = shutil.disk_usage(gateway.spool).total
        # Leave 6% of the filesystem free: under the alert's 10%, over min_free (1 MiB).
        filler = gateway.spool / "filler.bin"
        target_free = int(capacity * 0.06)
        with open(filler, "wb") as f:
            f.write(b"\0" * max(0, shutil.disk_usage(gateway.spool).free - target_free))
            f.flush()
            os.fsync(f.fileno())

        def ratio() -> tuple[float, float, float] | None:
            text = metrics_text(http_port)
            free = sample(text, "dicom_gateway_spool_free_bytes")
            total = sample(text, "dicom_gateway_spool_capacity_bytes")
            return (free / total, free, total) if total and free / total < SPOOL_LOW_RATIO else None

        low, free, total = self.wait_for(gateway, ratio, 15, f"the spool-low ratio in /metrics ({how})")
        self.assertGreater(free, 1024 * 1024, "the alert must fire above the min_free watermark")
        self.assertLess(low, SPOOL_LOW_RATIO)
        # The alert fires, yet the gateway still accepts, on a new association.
        from pydicom.dataset import FileMetaDataset
        from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
        from pynetdicom import AE

        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        assoc = ae.associate("127.0.0.1", gateway.port, ae_title="DICOMGW")
        self.assertTrue(assoc.is_established, "refused while free space is above min_free")
        datasets = [ct_dataset(64, 64, seed=i) for i in range(3)]
        for ds in datasets:
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        try:
            self.assertEqual(int(assoc.send_c_store(datasets[0]).Status), 0x0000)
            # Below the watermark: 0xA700 on the open association (PS3.4 Annex B.2.3).
            with open(filler, "ab") as f:
                f.write(b"\0" * max(0, shutil.disk_usage(gateway.spool).free - 512 * 1024))
                f.flush()
                os.fsync(f.fileno())
            # The free space is re-read at most once a second: send until the refusal comes.
            spare = iter(range(100, 140))

            def refused() -> bool:
                ds = ct_dataset(64, 64, seed=next(spare))
                ds.file_meta = datasets[0].file_meta
                status = int(assoc.send_c_store(ds).Status)
                if status == 0x0000:
                    datasets.append(ds)
                    return False
                self.assertEqual(status, OUT_OF_RESOURCES)
                return True

            self.wait_for(gateway, refused, 10, "0xA700 below min_free")
        finally:
            if assoc.is_established:
                assoc.release()
        # ... and A-ASSOCIATE-RJ (2, 3, 1) for a new association (PS3.8 9.3.4).
        def rejected() -> object:
            # Free space is re-read at most once a second (the A700 may have been ENOSPC).
            attempt = ae.associate("127.0.0.1", gateway.port, ae_title="DICOMGW")
            if attempt.is_established:
                attempt.release()
            return attempt.is_rejected and attempt

        again = self.wait_for(gateway, rejected, 10, "A-ASSOCIATE-RJ below min_free")
        rj = again.acceptor.primitive
        self.assertEqual((rj.result, rj.result_source, rj.diagnostic), (2, 3, 1))
        accepted = [datasets[0], *datasets[3:]]
        filler.unlink()
        self.wait_for(gateway, lambda: set(recorder.successes()) == {str(d.SOPInstanceUID) for d in accepted},
                      30, "the 3 accepted instances at the destination")
        check_forward_invariants(self, gateway, destinations={"pacs": recorder}, accepted=len(accepted))
