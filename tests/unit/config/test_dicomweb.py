"""The ``dicomweb`` section (issue 17): the STOW-RS service, checked at load with file, line and key."""

from __future__ import annotations

import os
import tempfile

from gateway.config.schema import DicomWebClientCertificate
from tests.unit.config.test_load import LoadTestCase

TOKEN = "a-long-enough-token-123"

HEAD = """\
ae_title: GW
listen:
  - {host: 127.0.0.1, port: 0}
spool: spool
dicomweb:
"""


class DicomWebConfigTests(LoadTestCase):
    """``dicomweb``: addresses, auth, limits, Retrieve URL."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.tokens = os.path.join(self.dir, "tokens")
        with open(self.tokens, "w") as fp:
            fp.write(f"alice:{TOKEN}\n")

    def text(self, body: str) -> str:
        return HEAD + body.replace("TOKENS", self.tokens)

    def test_defaults_and_tokens_read_at_load(self) -> None:
        """One address and a tokens file: 4 GiB, 64 connections, 30 s headers, no Retrieve URL; tokens read."""
        config = self.load(self.text("  listen: [{port: 8080}]\n  auth: {tokens_file: TOKENS}\n"))
        web = config.dicomweb  # type: ignore[attr-defined]
        self.assertEqual((web.listen[0].host, web.listen[0].port), ("127.0.0.1", 8080))
        self.assertEqual((web.max_request_size, web.max_connections, web.header_timeout, web.retrieve_url), (4 * 1024**3, 64, 30.0, ""))
        self.assertEqual([t.name for t in web.auth.tokens], ["alice"])

    def test_absent_section_is_none(self) -> None:
        """Without ``dicomweb`` the service is not served."""
        self.assertIsNone(self.load(HEAD.replace("dicomweb:\n", "")).dicomweb)  # type: ignore[attr-defined]

    def test_no_auth_is_an_error(self) -> None:
        """An auth block with neither tokens nor certificates is refused (the service is never open)."""
        self.assertOneError(self.text("  listen: [{port: 8080}]\n  auth: {}\n"), 7, "dicomweb.auth", "never open")

    def test_bad_token_line_is_named_in_the_tokens_file(self) -> None:
        """A bad line of the tokens file is reported with that file and line."""
        with open(self.tokens, "a") as fp:
            fp.write("bob:short\n")
        errors = self.errors(self.text("  listen: [{port: 8080}]\n  auth: {tokens_file: TOKENS}\n"))
        self.assertEqual([(e.file, e.line, e.key_path) for e in errors], [(self.tokens, 2, "dicomweb.auth.tokens_file")])

    def test_certificates_need_a_tls_address_with_a_ca(self) -> None:
        """Certificate rules on plain addresses could never match: refused."""
        self.assertOneError(
            self.text('  listen: [{port: 8080}]\n  auth:\n    certificates: {"CN=up*": uploader}\n'),
            8, "dicomweb.auth.certificates", "tls.ca",
        )

    def test_certificate_rules_name_clients(self) -> None:
        """``"SUBJECT": name`` and ``"SUBJECT": {name, issuer}`` become client certificate rules."""
        ca = os.path.join(self.dir, "ca.pem")
        config = self.load(self.text(
            f"  listen: [{{port: 8443, tls: {{certificate: {ca}, private_key: {ca}, ca: {ca}}}}}]\n"
            '  auth:\n    certificates:\n      "CN=up*": uploader\n      "CN=ai": {name: ai, issuer: "CN=Root"}\n'
        ))
        self.assertEqual(config.dicomweb.auth.certificates, (  # type: ignore[attr-defined]
            DicomWebClientCertificate("CN=up*", "uploader"), DicomWebClientCertificate("CN=ai", "ai", "CN=Root"),
        ))

    def test_limits_and_retrieve_url_are_checked(self) -> None:
        """Sizes, counts, durations and the URL are validated with their key paths."""
        self.assertOneError(self.text("  listen: [{port: 1}]\n  auth: {tokens_file: TOKENS}\n  max_request_size: 12\n"),
                            8, "dicomweb.max_request_size", "at least")
        self.assertOneError(self.text("  listen: [{port: 1}]\n  auth: {tokens_file: TOKENS}\n  retrieve_url: ftp://x\n"),
                            8, "dicomweb.retrieve_url", "http")
        config = self.load(self.text("  listen: [{port: 1}]\n  auth: {tokens_file: TOKENS}\n  max_request_size: 1GiB\n"
                                     "  header_timeout: 5s\n  retrieve_url: https://pacs/dicomweb/\n"))
        web = config.dicomweb  # type: ignore[attr-defined]
        self.assertEqual((web.max_request_size, web.header_timeout, web.retrieve_url), (1024**3, 5.0, "https://pacs/dicomweb"))

    def test_unknown_key_is_an_error(self) -> None:
        """A misspelt key is reported at its line."""
        self.assertOneError(self.text("  listen: [{port: 1}]\n  auth: {tokens_file: TOKENS}\n  max_conections: 3\n"),
                            8, "dicomweb.max_conections", "")
