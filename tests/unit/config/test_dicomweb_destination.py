"""Tests for the ``dicomweb:`` destinations of :mod:`gateway.config.destinations` (issue 17)."""

from __future__ import annotations

from gateway.codecs import TransferSyntaxPolicy
from gateway.config.schema import DicomWebAuth, DicomWebBatch, DicomWebDestination
from tests.unit.config.test_load import MINIMAL, LoadTestCase


def config(destination: str) -> str:
    """A configuration with destination ``cloud`` written as ``destination`` (indented under it) and a route to it."""
    body = "\n".join("    " + line for line in destination.strip("\n").splitlines())
    return MINIMAL + f"destinations:\n  cloud:\n{body}\nroutes:\n  - name: all\n    forward: [cloud]\n"


class DicomWebDestinationTests(LoadTestCase):
    """A destination with ``dicomweb:`` is a STOW-RS destination; every key is checked with its line and path."""

    def test_full(self) -> None:
        """Every key: URL (trailing slash dropped), OAuth2 auth with an absolute secret path, batch, timeout, policy."""
        loaded = self.load(config("""
dicomweb:
  url: https://dicom.example/dicomWeb/
  auth: {kind: oauth2, token_url: https://idp.example/token, client_id: gw, client_secret_file: secret, scope: s}
  batch: {max_instances: 10, max_bytes: 10MB}
  timeout: 30s
  connections: 2
  probe_url: https://dicom.example/health
  transfer_syntax: jpeg2000-lossless
"""))
        (destination,) = loaded.destinations  # type: ignore[attr-defined]
        self.assertEqual(destination, DicomWebDestination(
            name="cloud",
            url="https://dicom.example/dicomWeb",
            auth=DicomWebAuth("oauth2", token_url="https://idp.example/token", client_id="gw",
                              client_secret_file="/srv/gw/etc/secret", scope="s"),
            batch=DicomWebBatch(10, 10_000_000),
            timeout=30.0,
            connections=2,
            probe_url="https://dicom.example/health",
            policy=TransferSyntaxPolicy("jpeg2000-lossless"),
        ))

    def test_defaults(self) -> None:
        """Only a URL: no auth, 50 instances / 100 MB per request, preserve."""
        (destination,) = self.load(config("dicomweb: {url: 'http://127.0.0.1:8042/dicom-web'}")).destinations  # type: ignore[attr-defined]
        self.assertEqual(destination.auth.kind, "none")
        self.assertEqual(destination.batch, DicomWebBatch(50, 100_000_000))
        self.assertEqual(destination.policy.target, "preserve")

    def test_user_information_in_the_url_is_refused_without_echoing_it(self) -> None:
        """https://user:pw@host: an error at the url's line that does not repeat the password."""
        error = self.assertOneError(config("dicomweb: {url: 'https://u:hunter2@x/'}"), 8, "destinations.cloud.dicomweb.url",
                                    "user information")
        self.assertNotIn("hunter2", str(error))

    def test_scheme(self) -> None:
        """ftp:// is refused."""
        self.assertOneError(config("dicomweb: {url: 'ftp://x/'}"), 8, "destinations.cloud.dicomweb.url", "http:// or https://")

    def test_auth_kind_keys(self) -> None:
        """basic without password_file, and a bearer with a username: one error each, with their paths."""
        self.assertOneError(config("dicomweb: {url: 'http://x', auth: {kind: basic, username: a}}"), 8,
                            "destinations.cloud.dicomweb.auth.password_file", "required for kind basic")
        self.assertOneError(config("dicomweb: {url: 'http://x', auth: {kind: bearer, token_file: t, username: u}}"), 8,
                            "destinations.cloud.dicomweb.auth.username", "does not apply to kind bearer")
        self.assertOneError(config("dicomweb: {url: 'http://x', auth: {kind: kerberos}}"), 8,
                            "destinations.cloud.dicomweb.auth.kind", "must be one of")

    def test_lossy_target_needs_lossy_true(self) -> None:
        """transfer_syntax jpeg2000 (lossy) without lossy: true is refused (PS3.3 C.7.6.1.1.5)."""
        self.assertOneError(config("dicomweb: {url: 'http://x', transfer_syntax: jpeg2000}"), 8,
                            "destinations.cloud.dicomweb.transfer_syntax", "lossy: true")

    def test_keys_beside_dicomweb_are_refused(self) -> None:
        """ae_title beside dicomweb: the error says the settings go inside dicomweb:."""
        self.assertOneError(config("ae_title: X\ndicomweb: {url: 'http://x'}"), 7, "destinations.cloud", "inside dicomweb:")

    def test_unknown_key_and_tls_on_http(self) -> None:
        """An unknown key gets a suggestion; tls with an http:// URL is an error."""
        self.assertOneError(config("dicomweb: {url: 'http://x', timout: 5s}"), 8, "destinations.cloud.dicomweb.timout", "timeout")
        self.assertOneError(config("dicomweb: {url: 'http://x', tls: {ca: ca.pem}}"), 8, "destinations.cloud.dicomweb.tls", "https://")
        self.assertOneError(config("dicomweb: {url: 'https://x', tls: {certificate: c.pem}}"), 8,
                            "destinations.cloud.dicomweb.tls", "go together")
