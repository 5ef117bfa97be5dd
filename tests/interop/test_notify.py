"""Study notifications end to end (issue 18): the real gateway, storescu/storescp, a webhook receiver.

The gateway forwards to a DICOM destination ``pacs`` and notifies the
webhook sink ``hook`` (:mod:`tests.support.webhook_receiver`, a process of
its own that checks every signature and records every request in order).
Quiet periods are 1 s and retry delays 200 ms-2 s, so each scenario takes a
few seconds. What the receiver got is compared with the journal
(``dicom-gateway find --study --json``: one ``hook`` entry per completion).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from tests.support import dcmtk
from tests.support.gateway_process import GatewayProcess, dicom_destination
from tests.support.interop import ForwardTestMixin, make_series
from tests.support.scp import _always_success
from tests.support.webhook_receiver import Received, WebhookReceiverProcess


def webhook_sink(receiver: WebhookReceiverProcess, phi: bool = False) -> dict[str, Any]:
    """The ``hook`` sink towards ``receiver``, short retries."""
    return {
        "webhook": {"url": receiver.url, "secret_file": receiver.secret_file, "phi": phi, "timeout": "10s"},
        "retry": {"initial_delay": "200ms", "max_delay": "2s"},
        "circuit": {"failures": 5},
    }


class NotifyWebhookTests(ForwardTestMixin, TestCase):
    """A study's webhook notifications: complete, retried, amended, forced, with failures."""

    def receiver(self, steps: dict[int, dict[str, Any]] | None = None) -> WebhookReceiverProcess:
        """Start a webhook receiver (stopped in a cleanup)."""
        receiver = WebhookReceiverProcess(self.mktemp(), steps)
        self.addCleanup(receiver.stop)
        return receiver.start()

    def gateway(self, pacs_port: int, receiver: WebhookReceiverProcess, *, max_wait: str = "60s",
                phi: bool = False, **overrides: Any) -> GatewayProcess:
        """A gateway forwarding everything to pacs and notifying hook after 1 s of quiet."""
        return self.start_gateway(
            destinations={"pacs": dicom_destination(pacs_port, "STORESCP" if pacs_port else "X"),
                          "hook": webhook_sink(receiver, phi)},
            routes=[{"name": "all", "forward": ["pacs"],
                     "notify": {"sinks": ["hook"], "quiet_period": "1s", "max_wait": max_wait}}],
            **overrides,
        )

    def send(self, gateway: GatewayProcess, count: int, study: str | None = None) -> str:
        """storescu ``count`` new instances (of ``study``, or a new one) to the gateway; the study UID."""
        source = Path(self.mktemp()).resolve()
        study, _ = make_series(source, count, 4096, study_instance_uid=study)
        result = dcmtk.storescu(gateway.port, [source], extra=["+sd"])
        self.assertEqual(result.returncode, 0, result.describe())
        return study

    def delivered(self, receiver: WebhookReceiverProcess, n: int) -> list[Received]:
        """The requests answered 2xx, once there are at least ``n`` (else an empty list)."""
        ok = [r for r in receiver.received() if 200 <= r.answered < 300]
        return ok if len(ok) >= n else []

    def hook_entries(self, gateway: GatewayProcess, study: str) -> list[dict[str, Any]]:
        """The journal's ``hook`` entries of the study's notification records."""
        found = gateway.cli("find", "--study", study, "--json")
        self.assertEqual(found.returncode, 0, found.describe())
        return [e for item in found.json() for e in item["entries"] if e["destination"] == "hook"]

    def test_complete_retried_then_amended(self) -> None:
        """3 instances: one complete notification (after a 500 and a 429, same key, signed, no PHI); a late one: amended."""
        receiver = self.receiver({0: {"status": 500}, 1: {"status": 429, "retry_after": "1"}})
        pacs = self.storescp("pacs")
        gateway = self.gateway(pacs.port, receiver)
        study = self.send(gateway, 3)
        self.wait_for(gateway, lambda: self.delivered(receiver, 1), 60, "the complete notification delivered")
        requests = receiver.received()
        self.assertEqual([r.answered for r in requests[:3]], [500, 429, 204])
        self.assertTrue(all(r.signature_ok for r in requests))
        # Retries of one notification carry one idempotency key.
        self.assertEqual(len({r.key for r in requests[:3]}), 1)
        body = requests[2].body
        self.assertEqual((requests[2].event, body["event"], body["sequence"]), ("complete", "complete", 1))
        self.assertEqual(body["study_instance_uid"], study)
        self.assertEqual(body["counts"]["instances"], 3)
        self.assertEqual(body["destinations"], [
            {"destination": "pacs", "outcome": "delivered", "delivered": 3, "failed": 0, "duplicates": 0}])
        self.assertFalse(body["forced"])
        self.assertFalse(body["with_failures"])
        # phi: false: no patient object, and the Patient ID nowhere in the body.
        self.assertNotIn("patient", body)
        self.assertNotIn("INTEROP-1", json.dumps(body))
        # A late instance reopens the study: amended, sequence 2, a new key.
        self.send(gateway, 1, study)
        self.wait_for(gateway, lambda: self.delivered(receiver, 2), 60, "the amended notification delivered")
        amended = self.delivered(receiver, 2)[1]
        self.assertEqual((amended.event, amended.body["sequence"], amended.body["counts"]["instances"]), ("amended", 2, 4))
        self.assertNotEqual(amended.key, requests[2].key)
        self.assertTrue(amended.signature_ok)
        # The journal holds exactly one hook entry per completion, both delivered.
        self.wait_for(gateway, lambda: self.idle(gateway), 30, "queues idle")
        self.assertEqual(sorted(e["state"] for e in self.hook_entries(gateway, study)), ["delivered", "delivered"])
        # `dicom-gateway studies` lists the study complete, twice.
        listed = gateway.cli("studies", "--state", "complete", "--json")
        self.assertEqual(listed.returncode, 0, listed.describe())
        (row,) = [r for r in listed.json() if r["study_instance_uid"] == study]
        self.assertEqual((row["route"], row["completions"], row["instances"]), ("all", 2, 4))

    def test_destination_down_forced(self) -> None:
        """pacs never answers and max_wait is 3 s: a forced notification naming pacs's outstanding entries."""
        receiver = self.receiver()
        gateway = self.gateway(self.storescp("pacs", start=False).port, receiver, max_wait="3s")
        self.send(gateway, 2)
        self.wait_for(gateway, lambda: self.delivered(receiver, 1), 60, "the forced notification delivered")
        body = self.delivered(receiver, 1)[0].body
        self.assertTrue(body["forced"])
        self.assertEqual(body["extra"]["outstanding"], {"pacs": 2})
        self.assertEqual(body["destinations"][0]["outcome"], "failed")

    def test_dead_letter_with_failures_and_phi(self) -> None:
        """pacs refuses one instance for good: complete with_failures; a sink with phi gets the Patient ID."""
        refused: list[str] = []

        def status_for(uid: str, attempt: int) -> int:
            if not refused:
                refused.append(uid)
            return 0xA900 if uid == refused[0] else _always_success(uid, attempt)

        pacs = self.recorder(ae_title="STORESCP", status_for=status_for)
        receiver = self.receiver()
        gateway = self.gateway(pacs.port, receiver, phi=True)
        self.send(gateway, 3)
        self.wait_for(gateway, lambda: self.delivered(receiver, 1), 60, "the notification delivered")
        body = self.delivered(receiver, 1)[0].body
        self.assertTrue(body["with_failures"])
        self.assertEqual((body["destinations"][0]["failed"], body["destinations"][0]["outcome"]), (1, "partial"))
        self.assertEqual(body["patient"]["patient_id"], "INTEROP-1")

    def test_killed_before_delivery_delivers_after_restart(self) -> None:
        """The gateway killed -9 while the receiver holds the notification: after restart it comes again, same key."""
        receiver = self.receiver({0: {"hold": True}})
        pacs = self.storescp("pacs")
        # Short leases and heartbeats: the restarted node takes its notification back at once.
        gateway = self.gateway(pacs.port, receiver, cluster={"lease": "5s", "heartbeat": "1s"})
        study = self.send(gateway, 2)
        self.wait_for(gateway, lambda: receiver.received(), 60, "the notification sent (and held)")
        gateway.kill()
        gateway.start()
        self.wait_for(gateway, lambda: self.delivered(receiver, 1), 60, "the notification delivered after restart")
        requests = receiver.received()
        # At least once: the held request and its re-send carry the same idempotency key.
        self.assertEqual(len({r.key for r in requests}), 1)
        self.assertEqual([r.body["sequence"] for r in requests], [1] * len(requests))
        self.assertTrue(all(r.signature_ok for r in requests))
        self.wait_for(gateway, lambda: self.idle(gateway), 30, "queues idle")
        self.assertEqual([e["state"] for e in self.hook_entries(gateway, study)], ["delivered"])


class NotifyFhirTests(ForwardTestMixin, TestCase):
    """The FHIR sink through the real gateway: a complete study becomes one ImagingStudy (conditional update)."""

    def test_imaging_study_after_completion(self) -> None:
        """2 instances delivered to pacs: one valid ImagingStudy for the study, with its instance count."""
        from tests.support.fhir_server import FhirServerProcess

        server = FhirServerProcess(self.mktemp())
        self.addCleanup(server.stop)
        server.start()
        pacs = self.storescp("pacs")
        gateway = self.start_gateway(
            destinations={
                "pacs": dicom_destination(pacs.port),
                "fhir": {"fhir": {"url": server.url, "subject": "identifier", "patient_system": "urn:oid:1.2.3",
                                  "timeout": "10s"},
                         "retry": {"initial_delay": "200ms", "max_delay": "2s"}},
            },
            routes=[{"name": "all", "forward": ["pacs"],
                     "notify": {"sinks": ["fhir"], "quiet_period": "1s", "max_wait": "60s"}}],
        )
        source = Path(self.mktemp()).resolve()
        study, _ = make_series(source, 2, 4096)
        result = dcmtk.storescu(gateway.port, [source], extra=["+sd"])
        self.assertEqual(result.returncode, 0, result.describe())
        self.wait_for(gateway, lambda: server.studies(), 60, "the ImagingStudy stored")
        puts = [r for r in server.requests() if r.method == "PUT"]
        self.assertTrue(puts)
        self.assertEqual(puts[-1].problems, "")
        (stored,) = server.studies()
        self.assertIn(study, json.dumps(stored.resource["identifier"]))
        self.assertEqual(stored.resource["numberOfInstances"], 2)


class NotifyHl7Tests(ForwardTestMixin, TestCase):
    """The HL7 sink through the real gateway: a complete study becomes one valid ORU^R01, acknowledged."""

    def test_oru_after_completion_rejected_once(self) -> None:
        """The receiver answers AR then AA: the message is sent again and acknowledged; hl7apy finds no problem."""
        from tests.support.mllp_receiver import ReceiverProcess

        receiver = ReceiverProcess(self.mktemp(), ["AR", "AA"])
        self.addCleanup(receiver.stop)
        receiver.start()
        pacs = self.storescp("pacs")
        gateway = self.start_gateway(
            destinations={
                "pacs": dicom_destination(pacs.port),
                "ris": {"hl7": {"host": "127.0.0.1", "port": receiver.port, "receiving_application": "RIS",
                                "timeout": "10s"},
                        "retry": {"initial_delay": "200ms", "max_delay": "2s"}},
            },
            routes=[{"name": "all", "forward": ["pacs"],
                     "notify": {"sinks": ["ris"], "quiet_period": "1s", "max_wait": "60s"}}],
        )
        source = Path(self.mktemp()).resolve()
        study, _ = make_series(source, 2, 4096)
        result = dcmtk.storescu(gateway.port, [source], extra=["+sd"])
        self.assertEqual(result.returncode, 0, result.describe())
        self.wait_for(gateway, lambda: len(receiver.messages()) >= 2, 60, "the ORU sent again after AR")
        messages = receiver.messages()
        self.assertEqual([m["answer"] for m in messages[:2]], ["AR", "AA"])
        self.assertEqual([m["problem"] for m in messages[:2]], ["", ""])
        self.assertIn(study, messages[1]["message"])
        self.wait_for(gateway, lambda: self.idle(gateway), 30, "queues idle")

