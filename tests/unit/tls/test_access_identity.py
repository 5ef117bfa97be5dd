"""Tests for the per-listener access rules and user identity negotiation (issue 5; HARDENING T07, P18)."""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from gateway.access import AccessPolicy, CertificateRule, NetworkRule, Peer, address_in_networks
from gateway.config.load import load_config_text
from gateway.config.schema import CertificateBinding
from gateway.identity_check import (
    IDENTITY_REJECTION,
    IdentityPolicy,
    UserIdentityChecker,
    UsersFileError,
    Verdict,
    hash_passcode,
    load_users,
    verify_passcode,
)
from gateway.security import listener_access
from gateway.ul.items import UserIdentityAC, UserIdentityRQ, UserInformation, encode_user_information
from gateway.ul.negotiate import AcceptorSettings, negotiate_acceptor
from gateway.ul.pdu import AAssociateRJ, AAssociateRQ, PresentationContextRQ

CALLING_NOT_RECOGNIZED = AAssociateRJ(1, 1, 3)
NO_REASON = AAssociateRJ(1, 1, 1)


def rq(calling: str = "CT1", identity: UserIdentityRQ | None = None) -> AAssociateRQ:
    """A request from ``calling`` to GW, optionally with a user identity sub-item."""
    info = UserInformation(max_length=16384, implementation_class_uid="1.2.3", user_identity_rq=identity)
    return AAssociateRQ("GW", calling, (PresentationContextRQ(1, "1.2.840.10008.1.1", ("1.2.840.10008.1.2",)),), info)


class NetworkRuleTests(SynchronousTestCase):
    """Source address networks (CIDR)."""

    def test_address_inside_network_passes(self) -> None:
        """10.1.2.3 is in 10.1.0.0/16."""
        self.assertIsNone(NetworkRule(("10.1.0.0/16",))(rq(), Peer(address="10.1.2.3")))

    def test_address_outside_network_is_rejected_no_reason(self) -> None:
        """An address outside every network gets RJ(1,1,1): Table 9-21 has no address reason."""
        self.assertEqual(NetworkRule(("10.1.0.0/16",))(rq(), Peer(address="10.2.0.1")), NO_REASON)

    def test_unknown_address_is_rejected(self) -> None:
        """No address at all never matches."""
        self.assertEqual(NetworkRule(("0.0.0.0/0",))(rq(), Peer()), NO_REASON)

    def test_ipv4_mapped_ipv6_is_compared_as_ipv4(self) -> None:
        """::ffff:127.0.0.1 (a dual-stack socket) is in 127.0.0.0/8."""
        self.assertTrue(address_in_networks("::ffff:127.0.0.1", ("127.0.0.0/8",)))

    def test_ipv6_network(self) -> None:
        """::1 is in ::1/128 and not in 127.0.0.0/8."""
        self.assertTrue(address_in_networks("::1", ("::1/128",)))
        self.assertFalse(address_in_networks("::1", ("127.0.0.0/8",)))


class CertificateRuleTests(SynchronousTestCase):
    """Certificate subject to calling AE title binding (HARDENING T07)."""

    rule = CertificateRule.from_config(
        (CertificateBinding("CN=modality1,O=*", ("CT1", "CT1B")), CertificateBinding("CN=mr*", ("MR*",)))
    )

    def test_mapped_subject_may_use_its_title(self) -> None:
        """modality1 may call as CT1."""
        self.assertIsNone(self.rule(rq("CT1"), Peer(certificate_subject="CN=modality1,O=Site")))

    def test_mapped_subject_may_not_use_another_title(self) -> None:
        """modality1 calling as MR1 is RJ(1,1,3): a stolen AE title alone does not get in."""
        self.assertEqual(self.rule(rq("MR1"), Peer(certificate_subject="CN=modality1,O=Site")), CALLING_NOT_RECOGNIZED)

    def test_unmapped_subject_is_rejected(self) -> None:
        """A subject matching no pattern is rejected."""
        self.assertEqual(self.rule(rq("CT1"), Peer(certificate_subject="CN=laptop,O=Site")), CALLING_NOT_RECOGNIZED)

    def test_no_certificate_is_rejected(self) -> None:
        """Without a certificate the binding cannot hold."""
        self.assertEqual(self.rule(rq("CT1"), Peer(address="127.0.0.1")), CALLING_NOT_RECOGNIZED)

    def test_comma_in_common_name_does_not_make_an_organisation(self) -> None:
        """Issue 11: CN ``mr1,O=Radiology`` (escaped in RFC 4514) is refused by ``CN=mr*,O=Radiology``; CN mr1, O Radiology is not."""
        rule = CertificateRule.from_config((CertificateBinding("CN=mr*,O=Radiology", ("MR1",)),))
        crafted = Peer(certificate_subject="CN=mr1\\,O=Radiology")
        self.assertEqual(rule(rq("MR1"), crafted), CALLING_NOT_RECOGNIZED)
        self.assertIsNone(rule(rq("MR1"), Peer(certificate_subject="CN=mr1,O=Radiology")))

    def test_issuer_pin_refuses_another_ca(self) -> None:
        """With ``issuer``, the same subject from another CA is RJ(1,1,3)."""
        rule = CertificateRule.from_config((CertificateBinding("CN=mr1", ("MR1",), "CN=Radiology CA"),))
        ours = Peer(certificate_subject="CN=mr1", certificate_issuer="CN=Radiology CA,O=H")
        theirs = Peer(certificate_subject="CN=mr1", certificate_issuer="CN=Some CA,O=H")
        self.assertIsNone(rule(rq("MR1"), ours))
        self.assertEqual(rule(rq("MR1"), theirs), CALLING_NOT_RECOGNIZED)


class ListenerPolicyTests(SynchronousTestCase):
    """The policy built from a listener's ``access`` block, with reasons in words."""

    def policy(self) -> AccessPolicy:
        """The policy of the second listener of a small configuration."""
        config = load_config_text(
            """
ae_title: GW
listen:
  - {host: 127.0.0.1, port: 0}
  - host: 127.0.0.1
    port: 0
    name: secure
    tls: {certificate: c.pem, private_key: k.pem, ca: ca.pem}
    access:
      calling_ae_titles: ["CT*"]
      networks: [10.0.0.0/8]
      certificates: {"CN=modality1,*": [CT1]}
spool: spool
""",
            "test.yaml",
            "/tmp",
        )
        return listener_access(config, config.listen[1])

    def test_everything_right_passes(self) -> None:
        """Right AE, address and certificate: accepted."""
        verdict = self.policy().judge(rq("CT1"), Peer("10.0.0.5", "CN=modality1,O=x"))
        self.assertEqual(verdict, (None, ""))

    def test_ae_allowed_but_address_not(self) -> None:
        """An allowed AE title from the wrong network: RJ(1,1,1), and the reason names the address."""
        rejection, why = self.policy().judge(rq("CT1"), Peer("192.168.1.1", "CN=modality1,O=x"))
        self.assertEqual(rejection, NO_REASON)
        self.assertIn("192.168.1.1", why)

    def test_address_allowed_but_certificate_not_mapped(self) -> None:
        """Right network, but the certificate may not use that AE: RJ(1,1,3)."""
        rejection, why = self.policy().judge(rq("CT2"), Peer("10.0.0.5", "CN=modality1,O=x"))
        self.assertEqual(rejection, CALLING_NOT_RECOGNIZED)
        self.assertIn("may not use calling AE title 'CT2'", why)

    def test_listener_titles_apply_on_top_of_global(self) -> None:
        """The listener's CT* list refuses MR1 although the global list allows any."""
        rejection, why = self.policy().judge(rq("MR1"), Peer("10.0.0.5", "CN=modality1,O=x"))
        self.assertEqual(rejection, CALLING_NOT_RECOGNIZED)
        self.assertIn("not allowed", why)


class PasscodeTests(SynchronousTestCase):
    """Salted scrypt passcode hashes."""

    def test_right_passcode_verifies(self) -> None:
        """The passcode hashed is the passcode accepted."""
        stored = hash_passcode("s3cret", n=2**4)
        self.assertTrue(verify_passcode(stored, b"s3cret"))

    def test_wrong_passcode_fails(self) -> None:
        """Another passcode is refused."""
        self.assertFalse(verify_passcode(hash_passcode("s3cret", n=2**4), b"s3cret!"))

    def test_salt_differs_between_hashes(self) -> None:
        """Two hashes of one passcode differ (random salt)."""
        self.assertNotEqual(hash_passcode("a", n=2**4), hash_passcode("a", n=2**4))

    def test_malformed_stored_value_never_verifies(self) -> None:
        """A stored value that is not ours fails closed."""
        self.assertFalse(verify_passcode("plain:text", b"text"))
        self.assertFalse(verify_passcode("scrypt$x$8$1$AA==$AA==", b""))


class UsersFileTests(SynchronousTestCase):
    """The users file."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)
        self.path = os.path.join(self.dir, "users")

    def write(self, text: str) -> None:
        """Write the users file."""
        with open(self.path, "w") as stream:
            stream.write(text)

    def test_comments_and_name_only_lines(self) -> None:
        """Comments and blank lines are skipped; ``USER:name-only`` has no passcode."""
        self.write("# users\n\nalice:" + hash_passcode("pw", n=2**4) + "\nbob:name-only\n")
        users = load_users(self.path)
        self.assertEqual(sorted(users), ["alice", "bob"])
        self.assertEqual(users["bob"], "")

    def test_malformed_line_names_its_line(self) -> None:
        """A line with a clear-text passcode is refused with its line number."""
        self.write("alice:password\n")
        error = self.assertRaises(UsersFileError, load_users, self.path)
        self.assertIn(":1:", str(error))

    def test_bare_name_and_empty_hash_are_refused(self) -> None:
        """``bob`` and ``bob:`` no longer mean name-only silently: the line must say ``name-only``."""
        for text in ("# x\nbob\n", "# x\nbob:\n"):
            self.write(text)
            error = self.assertRaises(UsersFileError, load_users, self.path)
            self.assertIn(f"{self.path}:2:", str(error))
            self.assertIn("name-only", str(error))

    def test_duplicate_user_and_bad_parameters_are_refused(self) -> None:
        """A user listed twice, and a hash whose N is not a power of two, each name their line."""
        good = hash_passcode("pw", n=2**4)
        self.write(f"alice:{good}\nalice:{good}\n")
        self.assertIn(":2: user 'alice' is already listed on line 1", str(self.assertRaises(UsersFileError, load_users, self.path)))
        self.write("alice:" + good.replace("scrypt$16$", "scrypt$15$") + "\n")
        self.assertIn(":1: scrypt N must be a power of two", str(self.assertRaises(UsersFileError, load_users, self.path)))

    def test_check_material_reports_the_line(self) -> None:
        """``run`` and ``check`` refuse a listener whose users file has a bad line, naming file and line."""
        from gateway.security import check_material

        self.write("alice\n")
        config = load_config_text(
            f"ae_title: GW\nspool: /tmp/s\nlisten: [{{host: 0.0.0.0, port: 1, user_identity: {{policy: required, users_file: {self.path}}}}}]\n",
            "gw.yaml",
            "/tmp",
        )
        (problem,) = check_material(config)
        self.assertIn(f"{self.path}:1:", problem)


class FakeJWTVerifier:
    """Accepts the token b"good" and returns a server response."""

    def verify(self, identity: UserIdentityRQ) -> Verdict:
        """Accept only b"good"."""
        if identity.primary_field == b"good":
            return Verdict(True, "jwt-user", server_response=b"signed-response")
        return Verdict(False, "", "token expired")


class UserIdentityPolicyTests(SynchronousTestCase):
    """User identity negotiation decisions (PS3.7 D.3.3.7; HARDENING P18)."""

    users = {"alice": hash_passcode("pw", n=2**4), "bob": ""}

    def checker(self, policy: IdentityPolicy) -> UserIdentityChecker:
        """A checker with the test users and a JWT plugin."""
        return UserIdentityChecker(policy, self.users, {5: FakeJWTVerifier()})

    def test_wrong_passcode_is_rejected_1_1_1(self) -> None:
        """Type 2 with a wrong passcode: A-ASSOCIATE-RJ(1,1,1)."""
        outcome = self.checker(IdentityPolicy.OPTIONAL).check(rq(identity=UserIdentityRQ(2, True, b"alice", b"nope")))
        self.assertEqual(outcome.rejection, IDENTITY_REJECTION)
        self.assertEqual(outcome.rejection, NO_REASON)
        self.assertEqual(outcome.verdict.reason if outcome.verdict else "", "wrong passcode")

    def test_right_passcode_with_positive_response_requested_gets_0x59(self) -> None:
        """Success with the flag set: an empty 0x59 server response for type 2."""
        outcome = self.checker(IdentityPolicy.REQUIRED).check(rq(identity=UserIdentityRQ(2, True, b"alice", b"pw")))
        self.assertIsNone(outcome.rejection)
        self.assertEqual(outcome.ac_item, UserIdentityAC(b""))

    def test_success_without_flag_has_no_0x59(self) -> None:
        """Success without the flag: no AC sub-item."""
        outcome = self.checker(IdentityPolicy.REQUIRED).check(rq(identity=UserIdentityRQ(1, False, b"bob")))
        self.assertIsNone(outcome.rejection)
        self.assertIsNone(outcome.ac_item)

    def test_expired_jwt_is_rejected(self) -> None:
        """Type 5 refused by its plugin: rejected, with the plugin's reason."""
        outcome = self.checker(IdentityPolicy.OPTIONAL).check(rq(identity=UserIdentityRQ(5, True, b"old")))
        self.assertEqual(outcome.rejection, NO_REASON)
        self.assertEqual(outcome.verdict.reason if outcome.verdict else "", "token expired")

    def test_jwt_accepted_returns_the_plugin_response(self) -> None:
        """Type 5 accepted: the 0x59 carries the plugin's server response."""
        outcome = self.checker(IdentityPolicy.OPTIONAL).check(rq(identity=UserIdentityRQ(5, True, b"good")))
        self.assertEqual(outcome.ac_item, UserIdentityAC(b"signed-response"))

    def test_identity_absent_while_required_is_rejected(self) -> None:
        """No sub-item under policy required: rejected, with a verdict for the audit record."""
        outcome = self.checker(IdentityPolicy.REQUIRED).check(rq())
        self.assertEqual(outcome.rejection, NO_REASON)
        self.assertIsNotNone(outcome.verdict)

    def test_identity_absent_while_optional_passes(self) -> None:
        """No sub-item under policy optional: accepted, nothing to audit."""
        outcome = self.checker(IdentityPolicy.OPTIONAL).check(rq())
        self.assertIsNone(outcome.rejection)
        self.assertIsNone(outcome.verdict)

    def test_identity_present_while_policy_off_is_ignored(self) -> None:
        """Policy off: even a wrong passcode is ignored and no 0x59 is sent."""
        outcome = self.checker(IdentityPolicy.OFF).check(rq(identity=UserIdentityRQ(2, True, b"alice", b"nope")))
        self.assertEqual((outcome.rejection, outcome.ac_item), (None, None))

    def test_unknown_user_is_rejected(self) -> None:
        """Type 1 with a user not in the file is refused."""
        outcome = self.checker(IdentityPolicy.OPTIONAL).check(rq(identity=UserIdentityRQ(1, False, b"mallory")))
        self.assertEqual(outcome.rejection, NO_REASON)

    def test_unsupported_type_is_rejected(self) -> None:
        """Kerberos without a plugin is refused rather than waved through."""
        outcome = self.checker(IdentityPolicy.OPTIONAL).check(rq(identity=UserIdentityRQ(3, False, b"ticket")))
        self.assertEqual(outcome.rejection, NO_REASON)


class NegotiateUserIdentityTests(SynchronousTestCase):
    """The A-ASSOCIATE-AC carries sub-item 0x59 only when given one (PS3.7 D.3.3.7.2)."""

    settings = AcceptorSettings(
        ae_title="GW",
        max_pdu_length=16384,
        implementation_class_uid="1.2.3",
        implementation_version_name="GW",
        abstract_syntaxes=frozenset({"1.2.840.10008.1.1"}),
        transfer_syntaxes=("1.2.840.10008.1.2",),
    )

    def test_ac_carries_0x59_when_given(self) -> None:
        """With a response, the encoded user information holds a 0x59 item with it."""
        negotiation = negotiate_acceptor(rq(), self.settings, UserIdentityAC(b"tok"))
        info = negotiation.ac.user_information
        self.assertEqual(info.user_identity_ac, UserIdentityAC(b"tok"))
        self.assertIn(b"\x59\x00\x00\x05\x00\x03tok", encode_user_information(info))

    def test_ac_has_no_0x59_by_default(self) -> None:
        """Without one, no 0x59 item is encoded."""
        info = negotiate_acceptor(rq(), self.settings).ac.user_information
        self.assertIsNone(info.user_identity_ac)
        self.assertNotIn(b"\x59\x00", encode_user_information(info))
