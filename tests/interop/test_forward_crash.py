"""Store-and-forward across crashes and a full spool disk (HARDENING F10, F11, F13, F15).

The promise under test: once the gateway answered a modality "success", the
instance reaches every destination, whatever happens to the gateway process
(``kill -9``) or its disk (ENOSPC, the free-space floor).  Destinations are
the recording pynetdicom SCP of :mod:`tests.support.scp`, which counts every
receipt, so duplicates can be counted exactly.

The spool-full test mounts a 20 MiB tmpfs over the spool (the test runs as
root in CI); it falls back to a loop-mounted ext4 image, and skips with the
reason only if neither can be mounted.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest, TestCase

from gateway.queue.interfaces import UNRECORDED_DELIVERIES
from tests.support import dcmtk
from tests.support.datasets import ct_dataset
from tests.support.gateway_process import GatewayProcess, dicom_destination
from tests.support.interop import (
    ForwardTestMixin,
    make_series,
    pynetdicom_store,
    sop_instance_uid,
)
from tests.support.invariants import check_forward_invariants

#: C-STORE status "Refused: Out of Resources" (PS3.4 Annex B.2.3).
OUT_OF_RESOURCES = 0xA700


def _background_storescu(port: int, source: Path) -> tuple[threading.Thread, list[dcmtk.Result]]:
    """Run ``storescu -v +sd`` in a thread, so the test can kill the gateway meanwhile.

    :param port: the gateway's port.
    :param source: the directory to send.
    :returns: the thread and a list that receives the result when it ends.
    """
    results: list[dcmtk.Result] = []
    thread = threading.Thread(
        target=lambda: results.append(dcmtk.storescu(port, [source], extra=["-v", "+sd"])),
        daemon=True,
    )
    thread.start()
    return thread, results


def _acknowledged(result: dcmtk.Result) -> int:
    """Count the C-STORE responses with status Success that ``storescu -v`` logged.

    :param result: the finished ``storescu``.
    :returns: the number of successes.
    """
    return len(re.findall(r"Received Store Response \(Success\)", result.output))


def resends_per_kill(slots: int, batch_size: int) -> int:
    """How many instances one ``kill -9`` can make the forwarder send twice (issue 13).

    Each slot writes its deliveries in batches (:mod:`gateway.forward`): at
    most ``UNRECORDED_DELIVERIES`` of them, the send on the wire included,
    and never more than one lease (``batch_size``), are unwritten at a kill.

    :param slots: the destination's ``max_associations``.
    :param batch_size: its ``batch_size``.
    :returns: the bound.
    """
    return slots * min(batch_size, UNRECORDED_DELIVERIES)


def noted_in_flight_per_kill(slots: int, batch_size: int) -> int:
    """How many entries recovery can note as in flight (ambiguous) after one ``kill -9``.

    The lowest ``UNRECORDED_DELIVERIES + 1`` leased entries of each slot's
    lease (:meth:`gateway.queue.interfaces.IQueueStore.recover`): a bound on
    the redeliveries counted, as :func:`resends_per_kill` is on the copies.

    :param slots: the destination's ``max_associations``.
    :param batch_size: its ``batch_size``.
    :returns: the bound.
    """
    return slots * min(batch_size, UNRECORDED_DELIVERIES + 1)


class KillTests(ForwardTestMixin, TestCase):
    """``kill -9`` of the gateway while it receives and while it forwards."""

    skip = dcmtk.skip_reason("storescu")
    timeout = 240

    def test_kill_while_receiving_then_resend_delivers_every_instance(self) -> None:
        """Killed mid-receive: the modality saw a failure; after a restart and a full re-send all 150 arrive.

        Duplicates at the destination are bounded by what each of the
        ``max_associations`` (2) slots had sent without the delivery written
        when the gateway died (F13, :func:`resends_per_kill`); an instance
        committed but unacknowledged and re-sent by the modality is
        deduplicated (F11, decision 5).
        """
        recorder = self.recorder()
        gateway = self.start_gateway(
            destinations={"pacs": dicom_destination(recorder.port, recorder.ae_title)},
            routes=[{"name": "all", "forward": ["pacs"]}],
            duplicates={"window": "1h"},
        )
        source = Path(self.mktemp()).resolve()
        make_series(source, 150, 128 * 1024)
        uids = {sop_instance_uid(p) for p in source.iterdir()}
        thread, results = _background_storescu(gateway.port, source)
        self.wait_for(gateway, lambda: len(recorder.receipts) >= 30, 60, "30 forwarded instances")
        gateway.kill()
        thread.join(120)
        self.assertFalse(thread.is_alive())
        first = results[0]
        # The modality never got a success for at least the cut instance.
        self.assertLess(_acknowledged(first), 150, first.describe())
        gateway.start()
        # F10: partial receptions are cleaned up at start-up.
        self.wait_for(gateway, lambda: gateway.incoming() == [], 10, "incoming/ emptied")
        again = dcmtk.storescu(gateway.port, [source], extra=["-v", "+sd"])
        self.assertEqual(_acknowledged(again), 150, again.describe())
        self.wait_for(gateway, lambda: set(recorder.successes()) == uids and self.idle(gateway),
                      90, "all 150 instances acknowledged by the destination")
        self.assertLessEqual(recorder.duplicates(), resends_per_kill(2, 50), recorder.counts().most_common(5))
        # Killed once with max_associations 2 (batch_size 50): what recovery noted as in flight.
        check_forward_invariants(self, gateway, destinations={"pacs": recorder},
                                 ambiguous_faults={"pacs": noted_in_flight_per_kill(2, 50)},
                                 # What storescu saw acknowledged, both runs (re-sent ones are journaled as duplicates).
                                 # storescu's one association had at most one C-STORE in flight at the kill.
                                 accepted=_acknowledged(first) + _acknowledged(again), unanswered=1,
                                 restarted=True)

    def test_kill_while_forwarding_a_queue_of_500_loses_nothing(self) -> None:
        """Killed while draining 500 queued instances: after restart all 500 arrive; duplicates <= in-flight bound.

        Bound: each association slot sends one C-STORE at a time and writes
        its deliveries to the journal in batches (issue 13), so when the
        process dies at most ``min(batch_size, UNRECORDED_DELIVERIES)``
        instances per slot are sent but not recorded (F13,
        :func:`resends_per_kill`); with ``max_associations`` 2 and
        ``batch_size`` 10 that is 2 x 10. The test prints the exact count.
        """
        recorder = self.recorder()
        gateway = self.start_gateway(
            destinations={"pacs": dicom_destination(recorder.port, recorder.ae_title,
                                                    max_associations=2, batch_size=10)},
            routes=[{"name": "all", "forward": ["pacs"]}],
        )
        self.assertEqual(gateway.cli("queue", "pause", "pacs").returncode, 0)
        source = Path(self.mktemp()).resolve()
        # Five studies, so both association slots (sharded by study) are busy.
        for i in range(5):
            make_series(source, 100, 4 * 1024, prefix=f"s{i}-")
        uids = {sop_instance_uid(p) for p in source.iterdir()}
        result = dcmtk.storescu(gateway.port, [source], extra=["+sd"])
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertEqual(gateway.queue_rows()["pacs"]["queued"], 500)
        self.assertEqual(gateway.cli("queue", "resume", "pacs").returncode, 0)
        self.wait_for(gateway, lambda: len(recorder.receipts) >= 150, 60, "150 forwarded")
        gateway.kill()
        before = len(recorder.receipts)
        self.assertLess(before, 500, "the kill came too late to cut the forwarding")
        gateway.start()
        self.wait_for(gateway, lambda: set(recorder.successes()) == uids and self.idle(gateway),
                      90, "all 500 instances at the destination")
        duplicates = recorder.duplicates()
        print(f"kill -9 at {before} receipts: {duplicates} redelivered")
        self.assertLessEqual(duplicates, resends_per_kill(2, 10), recorder.counts().most_common(5))
        rows = gateway.queue_rows()
        self.assertEqual((rows["pacs"]["delivered"], rows["pacs"]["dead"]), (500, 0))
        check_forward_invariants(self, gateway, destinations={"pacs": recorder},
                                 ambiguous_faults={"pacs": noted_in_flight_per_kill(2, 10)}, accepted=500,
                                 restarted=True)


def _mount_small_filesystem(target: Path, megabytes: int) -> str:
    """Mount a small filesystem at ``target``: a tmpfs, else a loop-mounted ext4 image.

    :param target: an existing empty directory.
    :param megabytes: its size.
    :returns: how it was mounted (``tmpfs`` or ``loop``).
    :raises SkipTest: if neither can be mounted, with both errors.
    """
    tmpfs = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs",
                            str(target)], capture_output=True, text=True, check=False)
    if tmpfs.returncode == 0:
        return "tmpfs"
    image = target.parent / f"{target.name}.img"
    with open(image, "wb") as f:
        f.truncate(megabytes * 1024 * 1024)
    mkfs = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True,
                          check=False)
    loop = subprocess.run(["mount", "-o", "loop", str(image), str(target)], capture_output=True,
                          text=True, check=False)
    if mkfs.returncode == 0 and loop.returncode == 0:
        return "loop"
    raise SkipTest(f"cannot mount a small filesystem: tmpfs: {tmpfs.stderr.strip()}; "
                   f"mkfs.ext4: {mkfs.stderr.strip()}; loop mount: {loop.stderr.strip()}")


class SpoolFullTests(ForwardTestMixin, TestCase):
    """A full spool disk: 0xA700 to the modality, nothing acknowledged lost, recovery when space returns."""

    timeout = 180

    def test_spool_floor_refuses_with_a700_keeps_acknowledged_and_recovers(self) -> None:
        """Below min_free C-STOREs get 0xA700; every 0x0000 one is delivered; after freeing space all are accepted."""
        recorder = self.recorder()
        gateway = GatewayProcess(
            self.mktemp(),
            destinations={"pacs": dicom_destination(recorder.port, recorder.ae_title)},
            routes=[{"name": "all", "forward": ["pacs"]}],
        )
        gateway.spool.mkdir(parents=True)
        how = _mount_small_filesystem(gateway.spool, 20)
        self.addCleanup(subprocess.run, ["umount", "-l", str(gateway.spool)], check=False)
        gateway.rewrite_config(spool={"path": str(gateway.spool), "min_free": "2MiB",
                                      "resume_margin": "1MiB"})
        self.addCleanup(gateway.stop)
        gateway.start()
        # Hold forwarding so acknowledged instances stay in the spool and fill it.
        self.assertEqual(gateway.cli("queue", "pause", "pacs").returncode, 0)
        filler = gateway.spool / "filler.bin"
        free = shutil.disk_usage(gateway.spool).free
        with open(filler, "wb") as f:
            f.truncate(0)
            f.write(b"\0" * max(0, free - 6 * 1024 * 1024))
            f.flush()
            os.fsync(f.fileno())
        datasets = [ct_dataset(512, 512, seed=i) for i in range(16)]  # 512 KiB each
        statuses = pynetdicom_store(gateway.port, datasets)
        acknowledged = [ds for ds, s in zip(datasets, statuses) if s == 0x0000]
        refused = [ds for ds, s in zip(datasets, statuses) if s == OUT_OF_RESOURCES]
        self.assertTrue(acknowledged, f"{how}: nothing acknowledged: {statuses}")
        self.assertTrue(refused, f"{how}: nothing refused with 0xA700: {statuses}")
        self.assertEqual(len(acknowledged) + len(refused), 16, statuses)
        # Acknowledged ones come first: once below the floor, everything is refused.
        self.assertEqual(statuses, [0x0000] * len(acknowledged) + [OUT_OF_RESOURCES] * len(refused))
        filler.unlink()
        self.assertEqual(gateway.cli("queue", "resume", "pacs").returncode, 0)
        ack_uids = {str(ds.SOPInstanceUID) for ds in acknowledged}
        self.wait_for(gateway, lambda: set(recorder.successes()) >= ack_uids, 60,
                      "every acknowledged instance at the destination")
        # Service resumes: the refused ones are accepted now (retry until the floor check clears).
        def resend() -> Any:
            try:
                return all(s == 0x0000 for s in pynetdicom_store(gateway.port, refused))
            except AssertionError:
                return False
        self.wait_for(gateway, resend, 30, "the refused instances to be accepted")
        all_uids = {str(ds.SOPInstanceUID) for ds in datasets}
        self.wait_for(gateway, lambda: set(recorder.successes()) == all_uids, 60,
                      "all 16 instances at the destination")
        check_forward_invariants(self, gateway, destinations={"pacs": recorder}, accepted=16)
