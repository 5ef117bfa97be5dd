"""Access control, user identity and the audit trail against real peers (issue 5; HARDENING T07, P18, decision 7).

* Access control: an allowed AE title from a network that is not allowed,
  and a certificate that may not use the calling AE title it presents, are
  each rejected with the right A-ASSOCIATE-RJ (DCMTK prints the result,
  source and reason).
* User identity (PS3.7 D.3.3.7) from a pynetdicom requestor, read from
  the bytes the gateway sends: positive response on success (and only
  when asked), rejection on a wrong passcode, a missing identity, a user
  name alone for a user with a passcode, and Kerberos, SAML or JWT with
  no verifier plugin; a JWT verifier plugin from a plugin folder; policy
  off ignoring an identity.
* Certificate subjects matched attribute by attribute, with an issuer pin
  (issue 11), with certificates the test makes.
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


def user_information_items(ac: bytes) -> list[tuple[int, bytes]]:
    """The sub-items of an A-ASSOCIATE-AC's User Information item, read from its bytes (PS3.8 9.3.3, D.1).

    Parsed here by hand, not by our codec or pynetdicom's, so the test sees
    what went over the wire.

    :param ac: one whole A-ASSOCIATE-AC PDU.
    :returns: ``[(item type, value), ...]``.
    """
    assert ac[0] == 0x02, f"not an A-ASSOCIATE-AC: {ac[:10].hex()}"
    offset, end = 74, 6 + int.from_bytes(ac[2:6], "big")
    while offset < end:
        kind, length = ac[offset], int.from_bytes(ac[offset + 2 : offset + 4], "big")
        if kind == 0x50:
            items, inner, stop = [], offset + 4, offset + 4 + length
            while inner < stop:
                sub, size = ac[inner], int.from_bytes(ac[inner + 2 : inner + 4], "big")
                items.append((sub, ac[inner + 4 : inner + 4 + size]))
                inner += 4 + size
            return items
        offset += 4 + length
    raise AssertionError("no User Information item in the A-ASSOCIATE-AC")


class CertificateSubjectTests(TLSGatewayMixin, TestCase):
    """``access.certificates`` matches parsed subject attributes, and can pin the issuer (issue 11; HARDENING T07)."""

    timeout = 120

    def setUp(self) -> None:
        from tests.support.certs import subject_material

        self.s = subject_material()

    def echo_as(self, stem: str) -> dcmtk.Result:
        """``echoscu +tls`` as MR1 with ``<stem>.pem`` of the subject material."""
        return self.echo_tls(getattr(self.s, f"{stem.replace('-', '_')}_key"), getattr(self.s, stem.replace("-", "_")),
                             calling="MR1")

    def rejections(self) -> list[tuple[str, str]]:
        """``(rejection triple, certificate subject)`` of each audited rejection."""
        return [(r["extra"]["rejection"], r["participants"][0]["certificate_subject"])
                for r in self.audit() if r.get("disposition") == "rejected"]

    def test_comma_in_common_name_is_refused_and_right_certificate_accepted(self) -> None:
        """CN ``mr1,O=Radiology`` is refused RJ(1,1,3) by ``CN=mr*,O=Radiology``; CN mr1 with O Radiology gets in.

        Without an issuer pin, the same subject from the other CA (which this
        listener trusts too) gets in as well: the control for the pin below.
        """
        self.start_tls_gateway(tls={"ca": self.s.both_ca}, access={"certificates": {"CN=mr*,O=Radiology": ["MR1"]}})
        refused = self.echo_as("crafted-client")
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("Calling AE Title Not Recognized", refused.output)
        for stem in ("mr1-client", "other-mr1-client"):
            accepted = self.echo_as(stem)
            self.assertEqual(accepted.returncode, 0, accepted.describe())
        self.assertEqual(self.rejections(), [("1,1,3", "CN=mr1\\,O=Radiology")])

    def test_issuer_pin_refuses_a_certificate_from_another_ca(self) -> None:
        """With ``issuer`` naming the test CA, the same subject from the other CA is refused RJ(1,1,3)."""
        pin = "CN=dicom-gateway test CA,O=dicom-gateway tests"
        self.start_tls_gateway(
            tls={"ca": self.s.both_ca},
            access={"certificates": {"CN=mr*,O=Radiology": {"ae_titles": ["MR1"], "issuer": pin}}},
        )
        accepted = self.echo_as("mr1-client")
        self.assertEqual(accepted.returncode, 0, accepted.describe())
        refused = self.echo_as("other-mr1-client")
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("Calling AE Title Not Recognized", refused.output)
        self.assertEqual(self.rejections(), [("1,1,3", "CN=mr1,O=Radiology")])


class UserIdentityTests(ForwardTestMixin, TestCase):
    """User identity negotiation with a pynetdicom requestor, read from the wire (HARDENING P18; issue 11).

    Three listeners: ``required`` (users file with alice, who has a
    passcode, and bob, written name-only; a JWT verifier plugin from a
    plugin folder), ``noplugin`` (the same users, no verifier) and
    ``off`` (policy off). Every answer is checked in the bytes the gateway
    sent: the A-ASSOCIATE-RJ's result, source and reason, and the
    A-ASSOCIATE-AC's user information sub-items.
    """

    timeout = 120

    def setUp(self) -> None:
        from tests.support.identity_plugins import NAME, write_jwt_verifier
        from tests.support.ports import free_port

        users = Path(self.mktemp())
        users.write_text("alice:" + hash_passcode("pw", n=2**10) + "\nbob:name-only\n")
        plugins = write_jwt_verifier(str(Path(self.mktemp()).resolve()))
        gw = GatewayProcess(self.mktemp(), http={"enabled": False}, plugins={"folders": [plugins]})
        self.ports = {"required": gw.port}
        for name in ("noplugin", "off"):
            port = free_port("127.0.0.1")
            while port in self.ports.values():
                port = free_port("127.0.0.1")
            self.ports[name] = port
        path = str(users.resolve())
        gw.config["listen"] = [
            {"host": "127.0.0.1", "port": gw.port, "name": "required",
             "user_identity": {"policy": "required", "users_file": path, "verifiers": {"jwt": NAME}}},
            {"host": "127.0.0.1", "port": self.ports["noplugin"], "name": "noplugin",
             "user_identity": {"policy": "required", "users_file": path}},
            {"host": "127.0.0.1", "port": self.ports["off"], "name": "off",
             "user_identity": {"policy": "off"}},
        ]
        gw.config["audit"] = {"file": str(gw.dir / "audit.jsonl")}
        gw.config_path.write_text(yaml.safe_dump(gw.config, sort_keys=False))
        self.addCleanup(self._stop_gateway, gw)
        self.gw = gw.start()
        from tests.support.gateway_process import wait_until
        from tests.support.ports import port_is_open

        wait_until(lambda: all(port_is_open("127.0.0.1", p) for p in self.ports.values()), 10, lambda: gw.log_text())

    def associate(
        self,
        identity_type: int | None,
        primary: bytes = b"",
        secondary: bytes = b"",
        positive: bool = True,
        listener: str = "required",
    ) -> tuple[Any, bytes]:
        """Request an association with an optional user identity sub-item.

        :returns: pynetdicom's association and the first PDU the gateway sent, as bytes.
        """
        from pynetdicom import AE, evt
        from pynetdicom.pdu_primitives import UserIdentityNegotiation
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        received: list[bytes] = []
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
        assoc = ae.associate(
            "127.0.0.1", self.ports[listener], ae_title="DICOMGW", ext_neg=ext,
            evt_handlers=[(evt.EVT_DATA_RECV, lambda event: received.append(bytes(event.data)))],
        )
        self.addCleanup(lambda: assoc.release() if assoc.is_established else None)
        raw = b"".join(received)
        self.assertGreaterEqual(len(raw), 6, "the gateway answered nothing")
        first = raw[: 6 + int.from_bytes(raw[2:6], "big")]
        return assoc, first

    def assert_rejected(self, answer: bytes, result: int, source: int, reason: int) -> None:
        """The answer is exactly A-ASSOCIATE-RJ(result, source, reason) (PS3.8 9.3.4)."""
        self.assertEqual(answer, bytes([0x03, 0, 0, 0, 0, 4, 0, result, source, reason]), answer.hex())

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
        """Type 2 with the right passcode, response requested: the AC carries one empty 0x59, audited as success."""
        assoc, answer = self.associate(2, b"alice", b"pw")
        self.assertTrue(assoc.is_established)
        items = user_information_items(answer)
        self.assertEqual([value for kind, value in items if kind == 0x59], [b"\x00\x00"])
        self.assertEqual(self.audited()[0]["outcome"], 0)
        self.assertEqual(self.audited()[0]["participants"][0]["alternative_user_id"], "alice")

    def test_no_0x59_when_no_positive_response_was_requested(self) -> None:
        """Type 2 accepted without the positive-response flag: the AC has no 0x59 sub-item (PS3.7 D.3.3.7.2)."""
        assoc, answer = self.associate(2, b"alice", b"pw", positive=False)
        self.assertTrue(assoc.is_established)
        kinds = [kind for kind, _ in user_information_items(answer)]
        self.assertIn(0x51, kinds)
        self.assertNotIn(0x59, kinds)

    def test_wrong_passcode_is_rejected(self) -> None:
        """Type 2 with a wrong passcode: A-ASSOCIATE-RJ(1,1,1), audited as a failure."""
        assoc, answer = self.associate(2, b"alice", b"wrong")
        self.assertFalse(assoc.is_established)
        self.assert_rejected(answer, 1, 1, 1)
        record = self.audited()[0]
        self.assertEqual((record["outcome"], record["description"]), (4, "wrong passcode"))

    def test_user_name_alone_is_refused_for_a_user_with_a_passcode(self) -> None:
        """Type 1 naming alice, who has a passcode: RJ(1,1,1); bob, written name-only, gets in with type 1."""
        assoc, answer = self.associate(1, b"alice")
        self.assertFalse(assoc.is_established)
        self.assert_rejected(answer, 1, 1, 1)
        self.assertIn("has a passcode", self.audited()[0]["description"])
        bob, answer = self.associate(1, b"bob")
        self.assertTrue(bob.is_established)
        self.assertEqual([value for kind, value in user_information_items(answer) if kind == 0x59], [b"\x00\x00"])

    def test_kerberos_saml_jwt_refused_without_a_verifier(self) -> None:
        """Types 3 and 4 on a listener with only a JWT verifier, and 3, 4, 5 on one with none: each RJ(1,1,1), audited."""
        cases = [("required", 3), ("required", 4), ("noplugin", 3), ("noplugin", 4), ("noplugin", 5)]
        for listener, kind in cases:
            assoc, answer = self.associate(kind, b"an-assertion", listener=listener)
            self.assertFalse(assoc.is_established, (listener, kind))
            self.assert_rejected(answer, 1, 1, 1)
        records = self.audited(len(cases))
        self.assertEqual([(r["extra"]["identity_type"], r["outcome"]) for r in records],
                         [(str(kind), 4) for _, kind in cases])

    def test_verifier_plugin_accepts_a_jwt(self) -> None:
        """The test plugin accepts its token: AC with 0x59 carrying the plugin's server response; another token is RJ(1,1,1)."""
        from tests.support.identity_plugins import GOOD_TOKEN, SERVER_RESPONSE

        assoc, answer = self.associate(5, GOOD_TOKEN)
        self.assertTrue(assoc.is_established)
        response = [value for kind, value in user_information_items(answer) if kind == 0x59]
        self.assertEqual(response, [len(SERVER_RESPONSE).to_bytes(2, "big") + SERVER_RESPONSE])
        self.assertEqual(self.audited()[0]["participants"][0]["alternative_user_id"], "jwt-user")
        expired, answer = self.associate(5, b"eyJ.expired.token")
        self.assertFalse(expired.is_established)
        self.assert_rejected(answer, 1, 1, 1)

    def test_policy_off_ignores_a_present_identity(self) -> None:
        """Policy off: a wrong passcode with a response requested is ignored: accepted, no 0x59, nothing audited for it."""
        assoc, answer = self.associate(2, b"alice", b"wrong", listener="off")
        self.assertTrue(assoc.is_established)
        self.assertNotIn(0x59, [kind for kind, _ in user_information_items(answer)])
        for kind in (1, 3, 5):
            other, answer = self.associate(kind, b"x", listener="off")
            self.assertTrue(other.is_established, kind)
            self.assertNotIn(0x59, [k for k, _ in user_information_items(answer)])
        path = self.gw.dir / "audit.jsonl"
        from gateway.audit import read_records

        from tests.support.gateway_process import wait_until

        wait_until(lambda: len([r for r in read_records(str(path)) if r.get("disposition") == "accepted"]) >= 4, 10,
                   "4 accepted associations audited")
        self.assertEqual([r for r in read_records(str(path)) if r.get("disposition") == "user_identity"], [])

    def test_missing_identity_is_rejected_when_required(self) -> None:
        """No identity under policy required: A-ASSOCIATE-RJ(1,1,1) on the wire, and audited too."""
        assoc, answer = self.associate(None)
        self.assertFalse(assoc.is_established)
        self.assert_rejected(answer, 1, 1, 1)
        self.assertEqual(len(self.audited()), 1)


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
