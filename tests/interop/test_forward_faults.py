"""Store-and-forward with misbehaving destinations (HARDENING section C).

The destination is the recording pynetdicom SCP of :mod:`tests.support.scp`,
scripted to answer 0xA700, to accept only another SOP class, to check its
called AE title, or to A-ABORT in the middle of a batch.  The modality is
DCMTK ``storescu``.  Each test checks the class of the fault decides the
outcome, as the store-and-forward issue and HARDENING decision 9 pin it:

- a transient fault of one send (0xA700, A-ABORT mid-transfer): retried with
  backoff until delivered;
- a permanent fault of one instance (no accepted presentation context): dead
  letter with a readable reason, and ``queue retry`` delivers it once the
  destination is fixed;
- a fault of the destination as a whole (association rejected permanent,
  wrong AE title): circuit open, nothing dead-lettered, everything delivered
  once the configuration is fixed and reloaded (SIGHUP).

Retry delays are short (``initial_delay`` 200 ms, ``max_delay`` 2 s) so each
test takes seconds; every wait polls with a bound.
"""

from __future__ import annotations

from pathlib import Path

from pydicom.uid import MRImageStorage
from twisted.trial.unittest import TestCase

from tests.support import dcmtk
from tests.support.gateway_process import dicom_destination
from tests.support.interop import ForwardTestMixin, make_series, shared_series
from tests.support.invariants import check_forward_invariants

#: C-STORE status "Refused: Out of Resources" (PS3.4 Annex B.2.3).
OUT_OF_RESOURCES = 0xA700


class TransientFaultTests(ForwardTestMixin, TestCase):
    """Faults of one send are retried until the instance is delivered."""

    skip = dcmtk.skip_reason("storescu")
    timeout = 120

    def test_out_of_resources_for_the_first_attempts_is_retried_until_success(self) -> None:
        """An SCP answering 0xA700 twice per instance, then 0x0000, ends with everything delivered, nothing dead."""
        recorder = self.recorder(
            status_for=lambda uid, attempt: OUT_OF_RESOURCES if attempt <= 2 else 0x0000)
        gateway = self.start_gateway(
            destinations={"pacs": dicom_destination(recorder.port, recorder.ae_title)},
            routes=[{"name": "all", "forward": ["pacs"]}],
        )
        source = Path(self.mktemp()).resolve()
        make_series(source, 5, 8 * 1024)
        result = dcmtk.storescu(gateway.port, [source], extra=["+sd"])
        self.assertEqual(result.returncode, 0, result.describe())
        self.wait_for(gateway, lambda: len(recorder.successes()) == 5, 60,
                      "5 instances acknowledged by the SCP")
        self.assertEqual(set(recorder.counts().values()), {3})
        self.assertEqual(set(recorder.successes().values()), {1})
        rows = self.wait_for(gateway, lambda: (r := gateway.queue_rows())["pacs"]["delivered"] == 5
                             and r, 10, "5 delivered")
        self.assertEqual(rows["pacs"]["dead"], 0)
        self.assertEqual(gateway.dead_letters(), [])
        check_forward_invariants(self, gateway, destinations={"pacs": recorder}, accepted=5)

    def test_abort_in_the_middle_of_a_batch_resends_the_rest_and_loses_nothing(self) -> None:
        """An SCP aborting on its 5th receipt of a 20-instance batch gets all 20, with at most the cut one twice.

        The aborted instance reached the SCP but its outcome is unknown to the
        gateway, so it is sent again (at-least-once): that is the only
        duplicate allowed.  The instances after it in the batch were never
        answered and must be re-sent on a fresh association.
        """
        recorder = self.recorder(abort_on={5})
        gateway = self.start_gateway(
            destinations={"pacs": dicom_destination(recorder.port, recorder.ae_title,
                                                    max_associations=1, batch_size=20)},
            routes=[{"name": "all", "forward": ["pacs"]}],
        )
        # Queue all 20 before the destination may start, so they form one batch.
        self.assertEqual(gateway.cli("queue", "pause", "pacs").returncode, 0)
        source = Path(self.mktemp()).resolve()
        make_series(source, 20, 8 * 1024)
        result = dcmtk.storescu(gateway.port, [source], extra=["+sd"])
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertEqual(gateway.cli("queue", "resume", "pacs").returncode, 0)
        self.wait_for(gateway, lambda: len(recorder.successes()) == 20 and self.idle(gateway), 60,
                      "20 instances acknowledged by the SCP")
        receipts = recorder.receipts
        aborted = receipts[4]
        self.assertIsNone(aborted.status)
        # The first association carried 5 receipts (the 5th aborted); the rest came on later ones.
        self.assertEqual([r.association for r in receipts[:5]], [1] * 5)
        self.assertTrue(all(r.association > 1 for r in receipts[5:]), receipts)
        self.assertLessEqual(recorder.duplicates(), 1)
        self.assertEqual({uid for uid, n in recorder.counts().items() if n > 1},
                         {aborted.sop_instance_uid} if recorder.duplicates() else set())
        rows = gateway.queue_rows()
        self.assertEqual((rows["pacs"]["delivered"], rows["pacs"]["dead"]), (20, 0))
        # One ambiguous fault: the A-ABORT after the 5th data set was read.
        check_forward_invariants(self, gateway, destinations={"pacs": recorder},
                                 ambiguous_faults={"pacs": 1}, accepted=20)


class PermanentInstanceFaultTests(ForwardTestMixin, TestCase):
    """A fault of one instance dead-letters it; an operator retry delivers it once fixed."""

    skip = dcmtk.skip_reason("storescu")
    timeout = 120

    def test_rejected_sop_class_is_dead_lettered_then_retry_delivers_after_the_fix(self) -> None:
        """An SCP accepting only MR dead-letters CT with a reason; restarted accepting CT, queue retry --all delivers."""
        wrong = self.recorder(abstract_syntaxes=[MRImageStorage])
        gateway = self.start_gateway(
            destinations={"pacs": dicom_destination(wrong.port, wrong.ae_title)},
            routes=[{"name": "all", "forward": ["pacs"]}],
        )
        source = Path(self.mktemp()).resolve()
        make_series(source, 3, 8 * 1024)
        result = dcmtk.storescu(gateway.port, [source], extra=["+sd"])
        self.assertEqual(result.returncode, 0, result.describe())
        dead = self.wait_for(gateway, lambda: len(d := gateway.dead_letters()) == 3 and d, 30,
                             "3 dead letters")
        self.assertEqual(wrong.receipts, [])
        for letter in dead:
            self.assertEqual(letter["destination"], "pacs")
            # Readable: says the SOP class was not accepted.
            self.assertIn("1.2.840.10008.5.1.4.1.1.2", letter["dead_reason"])
            self.assertIn("context", letter["dead_reason"].lower())
        wrong.stop()
        fixed = self.recorder(port=wrong.port)
        retry = gateway.cli("queue", "retry", "--all")
        self.assertEqual(retry.returncode, 0, retry.describe())
        self.wait_for(gateway, lambda: len(fixed.successes()) == 3, 30, "3 instances after the retry")
        self.assertEqual(set(fixed.counts().values()), {1})
        self.wait_for(gateway, lambda: gateway.dead_letters() == [], 10, "no dead letters left")
        check_forward_invariants(self, gateway, destinations={"pacs": fixed}, accepted=3)


class DestinationFaultTests(ForwardTestMixin, TestCase):
    """A fault of the destination as a whole opens its circuit and keeps every item."""

    skip = dcmtk.skip_reason("storescu")
    timeout = 120

    def test_wrong_ae_title_keeps_items_queued_until_the_config_is_fixed_and_reloaded(self) -> None:
        """Association rejected permanent (called AE): nothing dead-lettered; fixed config + SIGHUP delivers all."""
        recorder = self.recorder(ae_title="RIGHT", require_called_aet=True)
        wrong = dicom_destination(recorder.port, "WRONG")
        gateway = self.start_gateway(
            destinations={"pacs": wrong},
            routes=[{"name": "all", "forward": ["pacs"]}],
        )
        source, _study = shared_series(10, 8 * 1024)
        result = dcmtk.storescu(gateway.port, [source], extra=["+sd"])
        self.assertEqual(result.returncode, 0, result.describe())
        # Consecutive rejections open the circuit (circuit.failures: 3); queue list shows it.
        rows = self.wait_for(gateway, lambda: (r := gateway.queue_rows())["pacs"]["circuit"] == "open"
                             and r, 30, "the circuit to open")
        self.assertIn("reject", rows["pacs"]["circuit_reason"].lower())
        self.assertEqual(rows["pacs"]["dead"], 0)
        self.assertEqual(rows["pacs"]["queued"] + rows["pacs"]["in_flight"], 10)
        self.assertEqual(gateway.dead_letters(), [])
        self.assertEqual(recorder.receipts, [])
        gateway.rewrite_config(destinations={"pacs": dicom_destination(recorder.port, "RIGHT")})
        gateway.reload()
        self.wait_for(gateway, lambda: len(recorder.successes()) == 10, 30,
                      "10 instances after the reload")
        rows = self.wait_for(gateway, lambda: (r := gateway.queue_rows())["pacs"]["delivered"] == 10
                             and r, 10, "10 delivered")
        self.assertEqual(rows["pacs"]["dead"], 0)
        # Deliveries succeed again, so queue list must stop reporting the circuit open.
        self.wait_for(gateway, lambda: gateway.queue_rows()["pacs"]["circuit"] == "closed", 10,
                      "queue list to show the circuit closed after successful deliveries")
        check_forward_invariants(self, gateway, destinations={"pacs": recorder}, accepted=10)
