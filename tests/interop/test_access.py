"""Access control, user identity and the audit trail against real peers (issue 5; HARDENING T07, P18, decision 7).

* Access control: an allowed AE title from a network that is not allowed,
  and a certificate that may not use the calling AE title it presents, are
  each rejected with the right A-ASSOCIATE-RJ (DCMTK prints the result,
  source and reason).
* User identity (PS3.7 D.3.3.7) from a pynetdicom requestor: positive
  response on success, rejection on a wrong passcode or a missing identity.
* The audit file after mixed traffic (accepted, rejected, received,
  forwarded, dead-lettered) holds exactly the expected records.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from twisted.trial.unittest import TestCase

from gateway.identity_check import hash_passcode
from tests.support import dcmtk
from tests.support.datasets import write_instance
from tests.support.gateway_process import GatewayProcess, dicom_destination
from tests.support.interop import ForwardTestMixin, sop_instance_uid
from tests.interop.test_tls import TLSGatewayMixin


class AccessControlTests(TLSGatewayMixin, TestCase):
    """Per-listener networks and certificate-to-AE bindings (HARDENING T07)."""

    skip = dcmtk.skip_reason("echoscu")
    timeout = 120

    def test_ae_allowed_but_address_not(self) -> None:
        """CT1 is allowed, but 127.0.0.1 is not in 10.0.0.0/8: RJ(1,1,1), audited as a Security Alert."""
        self.start_tls_gateway(access={"calling_ae_titles": ["CT*"], "networks": ["10.0.0.0/8"]})
        result = self.echo_tls(self.m.client_key, self.m.client, calling="CT1")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("Rejected Permanent", result.output)
        self.assertIn("No Reason", result.output)
        alerts = [r for r in self.audit() if r.get("disposition") == "rejected"]
        self.assertEqual(len(alerts), 1)
        self.assertEqual(alerts[0]["extra"]["rejection"], "1,1,1")
        self.assertIn("not in an allowed network", alerts[0]["description"])

    def test_address_allowed_but_certificate_not_mapped_to_the_ae(self) -> None:
        """From 127.0.0.0/8, modality1 may call as CT1 but not as CT2, and modality2 not as CT1: RJ(1,1,3)."""
        self.start_tls_gateway(
            access={"networks": ["127.0.0.0/8"], "certificates": {"CN=modality1,*": ["CT1"], "CN=modality2,*": ["MR1"]}}
        )
        ok = self.echo_tls(self.m.client_key, self.m.client, calling="CT1")
        self.assertEqual(ok.returncode, 0, ok.describe())
        for key, cert, calling in ((self.m.client_key, self.m.client, "CT2"), (self.m.client2_key, self.m.client2, "CT1")):
            refused = self.echo_tls(key, cert, calling=calling)
            self.assertNotEqual(refused.returncode, 0)
            self.assertIn("Calling AE Title Not Recognized", refused.output)
        alerts = [r for r in self.audit() if r.get("disposition") == "rejected"]
        self.assertEqual([a["extra"]["rejection"] for a in alerts], ["1,1,3", "1,1,3"])
        self.assertEqual(
            [a["participants"][0]["certificate_subject"] for a in alerts],
            [self.m.subject("client"), self.m.subject("client2")],
        )


class UserIdentityTests(ForwardTestMixin, TestCase):
    """User identity negotiation with a pynetdicom requestor (HARDENING P18)."""

    timeout = 120

    def setUp(self) -> None:
        users = Path(self.mktemp())
        users.write_text("alice:" + hash_passcode("pw", n=2**10) + "\n")
        gw = GatewayProcess(self.mktemp(), http={"enabled": False})
        gw.config["listen"] = [
            {"host": "127.0.0.1", "port": gw.port, "user_identity": {"policy": "required", "users_file": str(users.resolve())}}
        ]
        gw.config["audit"] = {"file": str(gw.dir / "audit.jsonl")}
        gw.config_path.write_text(yaml.safe_dump(gw.config, sort_keys=False))
        self.addCleanup(self._stop_gateway, gw)
        self.gw = gw.start()

    def associate(self, identity_type: int | None, primary: bytes = b"", secondary: bytes = b"", positive: bool = True) -> Any:
        """Request an association with an optional user identity sub-item."""
        from pynetdicom import AE
        from pynetdicom.pdu_primitives import UserIdentityNegotiation
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        ae = AE(ae_title="PYNET")
        ae.add_requested_context(Verification)
        ext = []
        if identity_type is not None:
            item = UserIdentityNegotiation()
            item.user_identity_type = identity_type
            item.positive_response_requested = positive
            item.primary_field = primary
            if secondary:
                item.secondary_field = secondary
            ext.append(item)
        assoc = ae.associate("127.0.0.1", self.gw.port, ae_title="DICOMGW", ext_neg=ext)
        self.addCleanup(lambda: assoc.release() if assoc.is_established else None)
        return assoc

    def audited(self, at_least: int = 1) -> list[dict[str, Any]]:
        """The user identity audit records, once at least ``at_least`` are written.

        The gateway writes the record right after it answers, so the peer may
        see the answer first: poll briefly instead of reading once.
        """
        from gateway.audit import read_records
        from tests.support.gateway_process import wait_until

        def records() -> list[dict[str, Any]]:
            path = self.gw.dir / "audit.jsonl"
            if not path.exists():
                return []
            return [r for r in read_records(str(path)) if r.get("disposition") == "user_identity"]

        wait_until(lambda: len(records()) >= at_least, 10, f"{at_least} user identity audit record(s)")
        return records()

    def test_right_passcode_with_positive_response_requested(self) -> None:
        """Type 2 with the right passcode: accepted, the AC carries a 0x59 sub-item, audited as success."""
        assoc = self.associate(2, b"alice", b"pw")
        self.assertTrue(assoc.is_established)
        response = [item for item in assoc.acceptor.user_information if type(item).__name__ == "UserIdentityNegotiation"]
        self.assertEqual(len(response), 1)
        self.assertEqual(self.audited()[0]["outcome"], 0)
        self.assertEqual(self.audited()[0]["participants"][0]["alternative_user_id"], "alice")

    def test_wrong_passcode_is_rejected(self) -> None:
        """Type 2 with a wrong passcode: A-ASSOCIATE-RJ(1,1,1), audited as a failure."""
        assoc = self.associate(2, b"alice", b"wrong")
        self.assertTrue(assoc.is_rejected)
        record = self.audited()[0]
        self.assertEqual((record["outcome"], record["description"]), (4, "wrong passcode"))

    def test_missing_identity_is_rejected_when_required(self) -> None:
        """No identity under policy required: A-ASSOCIATE-RJ(1,1,1), and audited too.

        The gateway sends the RJ and pynetdicom closes the connection at once;
        pynetdicom now and then reports that as an abort rather than a
        rejection (seen once in CI), so the RJ itself is read from the
        gateway's association log line.
        """
        assoc = self.associate(None)
        self.assertFalse(assoc.is_established)
        self.assertEqual(len(self.audited()), 1)
        from tests.support.gateway_process import wait_until

        wait_until(lambda: "PYNET -> DICOMGW ended: rejected (1,1,1)" in self.gw.log_text(), 10,
                   lambda: f"the RJ(1,1,1) in the gateway's log:\n{self.gw.log_text()[-2000:]}")


class AuditTrailTests(ForwardTestMixin, TestCase):
    """The audit file after mixed traffic holds exactly the expected records."""

    skip = dcmtk.skip_reason("storescu", "echoscu")
    timeout = 180

    def test_mixed_traffic_produces_exactly_the_expected_records(self) -> None:
        """Accepted + rejected associations, 2 received, 2 forwarded, 2 dead-lettered, start and stop."""
        good = self.recorder(ae_title="PACS")
        bad = self.recorder(ae_title="BAD", status_for=lambda uid, attempt: 0xA900)
        gw = GatewayProcess(
            self.mktemp(),
            http={"enabled": False},
            accept={"calling_ae_titles": ["CT*"]},
            destinations={"pacs": dicom_destination(good.port, good.ae_title),
                          "bad": dicom_destination(bad.port, bad.ae_title)},
            routes=[{"name": "all", "forward": ["pacs", "bad"]}],
        )
        gw.config["audit"] = {"file": str(gw.dir / "audit.jsonl")}
        gw.config_path.write_text(yaml.safe_dump(gw.config, sort_keys=False))
        self.addCleanup(self._stop_gateway, gw)
        gw.start()
        source = Path(self.mktemp())
        source.mkdir()
        for index in range(2):
            write_instance(source / f"ct{index}.dcm", "1.2.840.10008.1.2.1", 8000, seed=index)
        uids = sorted(sop_instance_uid(p) for p in source.iterdir())
        sent = dcmtk.storescu(gw.port, sorted(source.iterdir()), calling_ae="CT1")
        self.assertEqual(sent.returncode, 0, sent.describe())
        refused = dcmtk.echoscu(gw.port, calling_ae="MR1")
        self.assertNotEqual(refused.returncode, 0)
        self.wait_for(gw, lambda: gw.queue_rows()["bad"]["dead"] == 2 and gw.queue_rows()["pacs"]["delivered"] == 2,
                      60, "2 delivered to pacs and 2 dead letters for bad")
        self.assertEqual(gw.stop(), 0)

        from gateway.audit import read_records

        records = read_records(str(gw.dir / "audit.jsonl"))

        def key(record: dict[str, Any]) -> tuple[str, ...]:
            objects = record.get("objects", [])
            uid = objects[0]["sop_instance_uids"][0] if objects else ""
            return (record["event"], record.get("disposition", ""), uid,
                    record.get("extra", {}).get("destination", ""), str(record["outcome"]))

        expected = Counter(
            [("Application Activity", "start", "", "", "0"),
             ("User Authentication", "accepted", "", "", "0"),
             ("Security Alert", "rejected", "", "", "4"),
             ("Application Activity", "stop", "", "", "0")]
            + [("DICOM Instances Transferred", "received", uid, "", "0") for uid in uids]
            + [("DICOM Instances Transferred", "forwarded", uid, "pacs", "0") for uid in uids]
            + [("DICOM Instances Transferred", "dead_letter", uid, "bad", "8") for uid in uids]
        )
        self.assertEqual(Counter(key(r) for r in records), expected)
        self.assertEqual(records[0]["disposition"], "start")
        self.assertEqual(records[-1]["disposition"], "stop")
        received = [r for r in records if r.get("disposition") == "received"]
        self.assertTrue(all(r["objects"][1]["kind"] == "patient" for r in received))
        self.assertEqual({r["participants"][0]["user_id"] for r in received}, {"CT1"})
