"""Configuration of TLS, access, user identity and audit (issue 5): values and collected errors with lines."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from gateway.config.errors import ConfigErrors
from gateway.config.load import load_config_text
from tests.support.identity_plugins import NAME, write_jwt_verifier
from gateway.config.schema import CertificateBinding, DestinationTLSConfig, ListenerTLSConfig

BASE = """\
ae_title: GW
spool: /tmp/spool
"""


def load(text: str):  # type: ignore[no-untyped-def]
    """Load ``BASE`` plus ``text`` from /etc/gw."""
    return load_config_text(BASE + text, "gw.yaml", "/etc/gw")


class ListenerSectionTests(SynchronousTestCase):
    """The ``tls``, ``access`` and ``user_identity`` keys of a listener."""

    def test_full_listener_is_converted(self) -> None:
        """Paths are made absolute, durations parsed, networks normalised, defaults applied."""
        config = load(
            """
listen:
  - host: 0.0.0.0
    port: 2762
    tls: {certificate: tls/gw.pem, private_key: tls/gw-key.pem, ca: tls/ca.pem,
          require_client_certificate: true, profile: bcp195-extended, handshake_timeout: 5s}
    access:
      networks: ["10.1.0.0/16", "::1/128"]
      certificates: {"CN=ct1,*": CT1, "CN=mr*": [MR1, MR2]}
    user_identity: {policy: required, users_file: users}
"""
        )
        listener = config.listen[0]
        self.assertEqual(
            listener.tls,
            ListenerTLSConfig("/etc/gw/tls/gw.pem", "/etc/gw/tls/gw-key.pem", "/etc/gw/tls/ca.pem", True, "bcp195-extended", 5.0),
        )
        self.assertEqual(listener.access.networks, ("10.1.0.0/16", "::1/128"))
        self.assertEqual(
            listener.access.certificates,
            (CertificateBinding("CN=ct1,*", ("CT1",)), CertificateBinding("CN=mr*", ("MR1", "MR2"))),
        )
        self.assertEqual((listener.user_identity.policy, listener.user_identity.users_file), ("required", "/etc/gw/users"))

    def test_plain_listener_has_no_tls_and_empty_access(self) -> None:
        """Without the keys: no TLS, no extra rules, identity off."""
        listener = load("listen: [{host: 0.0.0.0, port: 11112}]\n").listen[0]
        self.assertIsNone(listener.tls)
        self.assertEqual(listener.access.networks, ())
        self.assertEqual(listener.user_identity.policy, "off")

    def test_errors_are_collected_with_lines_and_paths(self) -> None:
        """Every problem is reported at once, each with its line and key path."""
        with self.assertRaises(ConfigErrors) as caught:
            load(
                """
listen:
  - host: 0.0.0.0
    port: 2762
    tls: {certificate: a.pem, private_key: k.pem, profile: bcp195}
    access: {networks: [10.0.0.1/8, nonsense]}
  - host: 0.0.0.0
    port: 2763
    tls: {certificate: a.pem, private_key: k.pem, require_client_certificate: true}
    access: {certificates: {"CN=x": []}}
    user_identity: {policy: required}
"""
            )
        text = str(caught.exception)
        self.assertIn("gw.yaml:7: listen[0].tls.profile: must be one of bcp195-nd, bcp195-extended", text)
        self.assertIn("gw.yaml:8: listen[0].access.networks[0]: not a network in CIDR notation", text)
        self.assertIn("listen[0].access.networks[1]: not a network", text)
        self.assertIn("listen[1].tls.require_client_certificate: needs 'ca'", text)
        self.assertIn("listen[1].access.certificates.CN=x: list at least one", text)

    def test_certificate_rules_need_tls(self) -> None:
        """Certificate rules on a plain listener are refused."""
        with self.assertRaises(ConfigErrors) as caught:
            load("listen: [{host: 0.0.0.0, port: 1, access: {certificates: {'CN=a': [A]}}}]\n")
        self.assertIn("certificate rules need a TLS listener", str(caught.exception))

    def test_identity_policy_needs_something_to_check_against(self) -> None:
        """A user identity policy without users file or verifiers is refused."""
        with self.assertRaises(ConfigErrors) as caught:
            load("listen: [{host: 0.0.0.0, port: 1, user_identity: {policy: optional}}]\n")
        self.assertIn("needs 'users_file' or 'verifiers'", str(caught.exception))

    def test_unquoted_off_is_explained(self) -> None:
        """YAML reads an unquoted off as a boolean; the error says to quote it."""
        with self.assertRaises(ConfigErrors) as caught:
            load("listen: [{host: 0.0.0.0, port: 1, user_identity: {policy: off}}]\n")
        self.assertIn("quote the value", str(caught.exception))

    def test_verifier_names_map_to_identity_types(self) -> None:
        """kerberos, saml and jwt name types 3, 4 and 5 and an installed plugin; other types are refused."""
        folder = write_jwt_verifier(self.mktemp())
        plugins = f"plugins: {{folders: [{os.path.abspath(folder)}]}}\n"
        listener = load(
            plugins + "listen: [{host: 0.0.0.0, port: 1, user_identity: {policy: optional, "
            f"verifiers: {{jwt: {NAME}, saml: {NAME}}}}}}}]\n"
        ).listen[0]
        self.assertEqual(listener.user_identity.verifiers, ((5, NAME), (4, NAME)))
        with self.assertRaises(ConfigErrors):
            load(plugins + f"listen: [{{host: 0.0.0.0, port: 1, user_identity: {{policy: optional, verifiers: {{ldap: {NAME}}}}}}}]\n")

    def test_unknown_verifier_plugin_is_refused_at_load(self) -> None:
        """A verifier name no plugin provides is a configuration error with its line, not a start-up failure."""
        with self.assertRaises(ConfigErrors) as caught:
            load("listen:\n  - {host: 0.0.0.0, port: 1, user_identity: {policy: optional, verifiers: {jwt: nosuch}}}\n")
        self.assertIn("gw.yaml:4: listen[0].user_identity.verifiers.jwt: no user identity verifier plugin named 'nosuch'",
                      str(caught.exception))

    def test_certificate_entry_with_issuer(self) -> None:
        """``{ae_titles, issuer}`` pins the CA; the patterns are kept as written."""
        listener = load(
            """
listen:
  - host: 0.0.0.0
    port: 1
    tls: {certificate: c.pem, private_key: k.pem, ca: ca.pem}
    access:
      certificates:
        "CN=mr*,O=Radiology": {ae_titles: ["MR*"], issuer: "CN=Radiology CA,O=Hospital"}
"""
        ).listen[0]
        self.assertEqual(
            listener.access.certificates,
            (CertificateBinding("CN=mr*,O=Radiology", ("MR*",), "CN=Radiology CA,O=Hospital"),),
        )

    def test_bad_certificate_patterns_are_errors_with_lines(self) -> None:
        """A subject that is not TYPE=VALUE, an unknown attribute type, a bad issuer and a stray key: each with its line."""
        with self.assertRaises(ConfigErrors) as caught:
            load(
                """
listen:
  - host: 0.0.0.0
    port: 1
    tls: {certificate: c.pem, private_key: k.pem, ca: ca.pem}
    access:
      certificates:
        "*Radiology*": [CT1]
        "XX=ct1": [CT1]
        "CN=mr*": {ae_titles: [MR1], issuer: "CN=a,,O=b"}
        "CN=us*": {ae_titles: [US1], isuer: "CN=a"}
"""
            )
        text = str(caught.exception)
        self.assertIn("gw.yaml:10: listen[0].access.certificates.*Radiology*: not a certificate name pattern", text)
        self.assertIn("is not TYPE=VALUE", text)
        self.assertIn("gw.yaml:11: listen[0].access.certificates.XX=ct1: not a certificate name pattern: unknown attribute type 'XX'", text)
        self.assertIn("gw.yaml:12: listen[0].access.certificates.CN=mr*.issuer: not a certificate name pattern: an empty attribute", text)
        self.assertIn("gw.yaml:13: listen[0].access.certificates.CN=us*.isuer: unknown key", text)


class DestinationAndAuditTests(SynchronousTestCase):
    """A destination's ``tls`` and the top-level ``audit`` section."""

    def test_destination_tls(self) -> None:
        """A DICOM destination's tls block needs a ca and resolves its paths."""
        config = load(
            """
listen: [{host: 0.0.0.0, port: 1}]
destinations:
  pacs: {ae_title: PACS, host: pacs.example, port: 2762, tls: {ca: ca.pem, server_name: pacs.example}}
"""
        )
        self.assertEqual(config.destinations[0].tls, DestinationTLSConfig("/etc/gw/ca.pem", "pacs.example"))  # type: ignore[union-attr]

    def test_tls_on_a_folder_destination_is_refused(self) -> None:
        """A folder has no TLS; the message says the key belongs to DICOM destinations."""
        with self.assertRaises(ConfigErrors) as caught:
            load("listen: [{host: 0.0.0.0, port: 1}]\ndestinations: {f: {folder: /srv/out, tls: {ca: x}}}\n")
        self.assertIn("'tls' applies only to DICOM destinations", str(caught.exception))

    def test_destination_tls_without_ca_is_refused(self) -> None:
        """The server certificate must be checked against something."""
        with self.assertRaises(ConfigErrors) as caught:
            load("listen: [{host: 0.0.0.0, port: 1}]\ndestinations: {p: {ae_title: P, host: h, port: 1, tls: {server_name: h}}}\n")
        self.assertIn("destinations.p.tls.ca: required key is missing", str(caught.exception))

    def test_audit_section(self) -> None:
        """The audit file, its rotation and syslog settings are read; syslog needs host and ca."""
        config = load(
            "listen: [{host: 0.0.0.0, port: 1}]\n"
            "audit: {file: audit.jsonl, rotate: {size: 1MB, keep: 2}, syslog: {host: siem, ca: ca.pem}}\n"
        )
        self.assertEqual(config.audit.file, "/etc/gw/audit.jsonl")
        self.assertEqual((config.audit.rotate.size, config.audit.rotate.keep), (1000000, 2))
        self.assertEqual((config.audit.syslog.host, config.audit.syslog.port), ("siem", 6514))

    def test_audit_defaults_to_no_file(self) -> None:
        """Without the section there is no audit file."""
        self.assertEqual(load("listen: [{host: 0.0.0.0, port: 1}]\n").audit.file, "")


class MaterialCheckTests(SynchronousTestCase):
    """``run`` and ``check`` open every TLS and identity file before starting (no start-up traceback)."""

    def test_missing_and_mismatched_files_are_listed(self) -> None:
        """A missing listener certificate and a destination key that does not match are both reported."""
        from gateway.security import check_material
        from tests.support.certs import material

        m = material()
        config = load(
            f"""
listen:
  - {{host: 0.0.0.0, port: 1, tls: {{certificate: /nonexistent.pem, private_key: {m.server_key}}}}}
  - {{host: 0.0.0.0, port: 2, user_identity: {{policy: required, users_file: /nonexistent-users}}}}
destinations:
  pacs: {{ae_title: P, host: h, port: 1, tls: {{ca: {m.ca}, certificate: {m.server}, private_key: {m.client_key}}}}}
"""
        )
        problems = check_material(config)
        self.assertEqual(len(problems), 3, problems)
        self.assertIn("cannot read the certificate /nonexistent.pem", problems[0])
        self.assertIn("cannot read the users file", problems[1])
        self.assertTrue(problems[2].startswith("destination pacs:"))

    def test_good_files_pass(self) -> None:
        """The test material passes."""
        from gateway.security import check_material
        from tests.support.certs import material

        m = material()
        config = load(
            f"listen: [{{host: 0.0.0.0, port: 1, tls: {{certificate: {m.server}, private_key: {m.server_key}, ca: {m.ca}}}}}]\n"
        )
        self.assertEqual(check_material(config), [])
