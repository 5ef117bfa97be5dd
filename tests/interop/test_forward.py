"""Store-and-forward against real peers: fan-out, a late destination, duplicates, find and replay, crafted UIDs.

The gateway runs as a real process (``python -m gateway run``); modalities
are DCMTK ``storescu`` or a pynetdicom SCU; destinations are DCMTK
``storescp +B`` (bit-preserving, so the data set bytes it writes are exactly
what the gateway put on the wire), folders, and the recording pynetdicom SCP
of :mod:`tests.support.scp`, which counts every receipt (``storescp``
overwrites a file when a SOP Instance UID arrives twice).

Every wait polls state (files on disk, receipts, ``queue list --json``)
with a bound; nothing sleeps for a fixed time.  The failure, fault and crash
cases are in :mod:`tests.interop.test_forward_faults` and
:mod:`tests.interop.test_forward_crash` so trial's jobs can split them.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian
from twisted.trial.unittest import TestCase

from tests.support import dcmtk
from tests.support.datasets import ct_dataset, dataset_digest, write_instance
from tests.support.gateway_process import dicom_destination, folder_destination
from tests.support.interop import (
    ForwardTestMixin,
    digests_by_sop_instance,
    make_series,
    part10_files,
    pynetdicom_store,
    shared_series,
)
from tests.support.invariants import check_forward_invariants


class FanOutTests(ForwardTestMixin, TestCase):
    """One route to several destinations: everything everywhere, no head-of-line blocking."""

    skip = dcmtk.skip_reason("storescu", "storescp")
    timeout = 240

    def _reference(self, source: Path) -> dict[str, str]:
        """Send ``source`` straight to a ``storescp +B`` and digest what it wrote.

        ``storescu`` may re-encode while sending, so the data set bytes the
        gateway received are those a direct send delivers.

        :param source: the directory sent with ``storescu +sd``.
        :returns: SOP Instance UID -> data set digest.
        """
        scp = self.storescp("reference")
        result = dcmtk.storescu(scp.port, [source], called_ae=scp.ae_title, extra=["+sd"])
        self.assertEqual(result.returncode, 0, result.describe())
        scp.stop()
        return digests_by_sop_instance(scp.files())

    def test_fan_out_to_two_storescp_and_a_folder_delivers_identical_bytes(self) -> None:
        """100 instances routed to two storescp and a folder arrive at all three with the received bytes."""
        source, _study = shared_series(100, 16 * 1024)
        reference = self._reference(source)
        self.assertEqual(len(reference), 100)
        first, second = self.storescp("first"), self.storescp("second")
        folder = Path(self.mktemp()).resolve() / "folder"
        gateway = self.start_gateway(
            destinations={
                "first": dicom_destination(first.port),
                "second": dicom_destination(second.port),
                "folder": folder_destination(folder),
            },
            routes=[{"name": "all", "forward": ["first", "second", "folder"]}],
        )
        result = dcmtk.storescu(gateway.port, [source], extra=["+sd"])
        self.assertEqual(result.returncode, 0, result.describe())
        self.wait_for(gateway, lambda: (len(first.files()) == 100 and len(second.files()) == 100
                                        and len(part10_files(folder)) == 100),
                      90, "100 files at each destination")
        for name, files in (("first", first.files()), ("second", second.files()),
                            ("folder", part10_files(folder))):
            self.assertEqual(digests_by_sop_instance(files), reference, name)
        rows = self.wait_for(gateway, lambda: (r := gateway.queue_rows()) and all(
            row["delivered"] == 100 for row in r.values()) and r, 10, "delivered == 100 everywhere")
        self.assertEqual({name: row["dead"] for name, row in rows.items()},
                         {"first": 0, "second": 0, "folder": 0})
        check_forward_invariants(self, gateway, destinations={"first": first, "second": second,
                                                              "folder": folder}, accepted=100)

    def test_destination_started_late_gets_everything_without_delaying_the_others(self) -> None:
        """A destination down for 10 s receives every instance later; the other two were not held back."""
        source, _study = shared_series(100, 16 * 1024)
        early = self.storescp("early")
        late = self.storescp("late", start=False)
        folder = Path(self.mktemp()).resolve() / "folder"
        gateway = self.start_gateway(
            destinations={
                "early": dicom_destination(early.port),
                "late": dicom_destination(late.port),
                "folder": folder_destination(folder),
            },
            routes=[{"name": "all", "forward": ["early", "late", "folder"]}],
        )
        sent_at = time.monotonic()
        result = dcmtk.storescu(gateway.port, [source], extra=["+sd"])
        self.assertEqual(result.returncode, 0, result.describe())
        self.wait_for(gateway, lambda: len(early.files()) == 100 and len(part10_files(folder)) == 100,
                      10, "the healthy destinations to receive everything while 'late' is down")
        others_done = time.monotonic() - sent_at
        # The healthy destinations finished within the 10 s the late one was down.
        self.assertLess(others_done, 10.0)
        self.assertEqual(late.files() if late.outdir.exists() else [], [])
        self.assertEqual(gateway.queue_rows()["late"]["queued"]
                         + gateway.queue_rows()["late"]["in_flight"], 100)
        self.wait_for(gateway, lambda: time.monotonic() - sent_at >= 10.0, 11, "10 s of outage")
        late.start()
        # The circuit probe runs at the capped backoff (max_delay 2 s).
        self.wait_for(gateway, lambda: len(late.files()) == 100, 60, "100 files at 'late'")
        self.assertEqual(gateway.queue_rows()["late"]["dead"], 0)
        self.wait_for(gateway, lambda: gateway.queue_rows()["late"]["circuit"] == "closed", 10,
                      "the circuit of 'late' to close once it answers")
        check_forward_invariants(self, gateway, destinations={"early": early, "late": late,
                                                              "folder": folder}, accepted=100)


class DuplicateTests(ForwardTestMixin, TestCase):
    """HARDENING decision 5: identical re-sends within the window are not forwarded again."""

    skip = dcmtk.skip_reason("storescu")
    timeout = 120

    def test_identical_resend_within_window_is_forwarded_once_and_counted(self) -> None:
        """The same file sent twice reaches the recording SCP once; queue list counts a duplicate."""
        recorder = self.recorder()
        gateway = self.start_gateway(
            destinations={"pacs": dicom_destination(recorder.port, recorder.ae_title)},
            routes=[{"name": "all", "forward": ["pacs"]}],
            duplicates={"window": "1h"},
        )
        path = write_instance(Path(self.mktemp() + ".dcm"), ExplicitVRLittleEndian, 8 * 1024)
        uid = str(pydicom.dcmread(path).SOPInstanceUID)
        for _ in range(2):
            result = dcmtk.storescu(gateway.port, [path])
            self.assertEqual(result.returncode, 0, result.describe())
            self.wait_for(gateway, lambda: self.idle(gateway), 30, "an idle queue")
        rows = self.wait_for(gateway, lambda: (r := gateway.queue_rows())["pacs"]["duplicates"] and r,
                             10, "a duplicate counted")
        self.assertEqual(rows["pacs"]["duplicates"], 1)
        self.assertEqual(rows["pacs"]["delivered"], 1)
        self.assertEqual(recorder.counts(), {uid: 1})

    def test_different_bytes_under_the_same_uid_are_forwarded_again(self) -> None:
        """A re-send with other bytes but the same SOP Instance UID is forwarded a second time."""
        recorder = self.recorder()
        gateway = self.start_gateway(
            destinations={"pacs": dicom_destination(recorder.port, recorder.ae_title)},
            routes=[{"name": "all", "forward": ["pacs"]}],
            duplicates={"window": "1h"},
        )
        base = Path(self.mktemp())
        base.mkdir()
        one = write_instance(base / "one.dcm", ExplicitVRLittleEndian, 8 * 1024, seed=1)
        uid = str(pydicom.dcmread(one).SOPInstanceUID)
        two = write_instance(base / "two.dcm", ExplicitVRLittleEndian, 8 * 1024, uid, seed=2)
        self.assertNotEqual(dataset_digest(one), dataset_digest(two))
        for path, expected in ((one, 1), (two, 2)):
            result = dcmtk.storescu(gateway.port, [path])
            self.assertEqual(result.returncode, 0, result.describe())
            self.wait_for(gateway, lambda: len(recorder.receipts) == expected, 30,
                          f"{expected} receipt(s)")
        receipts = recorder.receipts
        self.assertEqual([r.sop_instance_uid for r in receipts], [uid, uid])
        self.assertNotEqual(receipts[0].digest, receipts[1].digest)
        self.assertEqual(gateway.queue_rows()["pacs"]["duplicates"], 0)


class FindReplayTests(ForwardTestMixin, TestCase):
    """Operations: ``find --study`` answers where things went; ``replay`` sends a kept study again."""

    skip = dcmtk.skip_reason("storescu")
    timeout = 120

    def test_find_reports_each_destination_and_replay_sends_the_study_again(self) -> None:
        """find --study lists every instance delivered at both destinations; replay --to re-sends all of them."""
        recorder = self.recorder()
        folder = Path(self.mktemp()).resolve() / "folder"
        source = Path(self.mktemp()).resolve()
        study, _series = make_series(source, 3, 8 * 1024)
        gateway = self.start_gateway(
            destinations={"pacs": dicom_destination(recorder.port, recorder.ae_title),
                          "folder": folder_destination(folder)},
            routes=[{"name": "all", "forward": ["pacs", "folder"]}],
            retention={"keep_delivered": "1h"},
        )
        result = dcmtk.storescu(gateway.port, [source], extra=["+sd"])
        self.assertEqual(result.returncode, 0, result.describe())
        self.wait_for(gateway, lambda: len(recorder.receipts) == 3
                      and len(part10_files(folder)) == 3 and self.idle(gateway), 30,
                      "3 instances delivered to both destinations")
        found = gateway.cli("find", "--study", study, "--json")
        self.assertEqual(found.returncode, 0, found.describe())
        where = {item["instance"]["sop_instance_uid"]:
                 sorted((e["destination"], e["state"]) for e in item["entries"])
                 for item in found.json()}
        self.assertEqual(set(where), set(recorder.counts()))
        self.assertEqual(set(map(tuple, where.values())),
                         {(("folder", "delivered"), ("pacs", "delivered"))})
        replay = gateway.cli("replay", "--study", study, "--to", "pacs")
        self.assertEqual(replay.returncode, 0, replay.describe())
        self.wait_for(gateway, lambda: len(recorder.receipts) == 6, 30, "the replayed study")
        self.assertEqual(set(recorder.counts().values()), {2})


class CraftedUidTests(ForwardTestMixin, TestCase):
    """HARDENING decision 3: a crafted UID is acknowledged but never becomes a path."""

    timeout = 60

    def test_folder_destination_dead_letters_a_path_traversal_uid(self) -> None:
        """SOP Instance UID '../../x' is acknowledged, dead-lettered by the folder, and nothing escapes it."""
        base = Path(self.mktemp()).resolve()
        folder = base / "a" / "b" / "archive"
        gateway = self.start_gateway(
            destinations={"folder": folder_destination(folder)},
            routes=[{"name": "all", "forward": ["folder"]}],
        )
        with warnings.catch_warnings():
            # pydicom warns that '../../x' is not a valid UI value: that is the point.
            warnings.simplefilter("ignore", UserWarning)
            crafted = ct_dataset(8, 8, sop_instance_uid="../../x")
        crafted.StudyInstanceUID = "1.2.3"
        crafted.SeriesInstanceUID = "1.2.3.4"
        normal = ct_dataset(8, 8)
        statuses = pynetdicom_store(gateway.port, [crafted, normal])
        self.assertEqual(statuses, [0x0000, 0x0000])
        dead = self.wait_for(gateway, gateway.dead_letters, 30, "a dead letter")
        self.assertEqual([(d["destination"], d["instance"]["sop_instance_uid"]) for d in dead],
                         [("folder", "../../x")])
        self.assertTrue(dead[0]["dead_reason"], dead[0])
        # Readable: names the element and why it was refused.
        self.assertIn("SOPInstanceUID", dead[0]["dead_reason"])
        self.assertIn("not a valid UID", dead[0]["dead_reason"])
        self.wait_for(gateway, lambda: len(part10_files(folder)) == 1, 30, "the normal instance")
        # Nothing named x anywhere under the test's directory (gateway dir included).
        escaped = [p for p in base.parents[1].rglob("*") if p.name in ("x", "x.dcm")]
        self.assertEqual(escaped, [])
        self.assertEqual([p.name for p in part10_files(folder)], [f"{normal.SOPInstanceUID}.dcm"])
