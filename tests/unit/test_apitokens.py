"""Tests for :mod:`gateway.apitokens` and the ``http`` section's token keys (issue 11).

The token file format (``NAME:TOKEN`` lines) is checked at load with the
token file's own line numbers; the token generated at first start is created
0600 with ``O_EXCL | O_NOFOLLOW``, whatever the umask, and a symbolic link or
a readable file planted in its place is refused.
"""

from __future__ import annotations

import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from gateway.apitokens import (
    GENERATED_NAME,
    TokenFileError,
    client_token,
    ensure_generated_token,
    generated_token_path,
    parse_token_text,
)
from gateway.config.errors import ConfigErrors
from gateway.config.load import load_config
from gateway.config.schema import ApiToken, HttpConfig

GOOD = "alice:alice-token-0123456789\n# the RIS\nris-bridge:ris-token-0123456789abc\n\n"


class ParseTests(SynchronousTestCase):
    """The ``NAME:TOKEN`` format."""

    def test_names_and_tokens_with_comments_and_blank_lines(self) -> None:
        """Each line gives a holder's name and token; comments and blank lines are skipped."""
        tokens, errors = parse_token_text(GOOD)
        self.assertEqual(errors, [])
        self.assertEqual(tokens, (ApiToken("alice", "alice-token-0123456789"), ApiToken("ris-bridge", "ris-token-0123456789abc")))

    def test_every_bad_line_is_reported_with_its_number(self) -> None:
        """Short tokens, missing colons, bad names, duplicate names and shared tokens are each named by line."""
        text = "ok:long-enough-token-1\nnocolon\nbob:short\nbad name:long-enough-token-2\nok:long-enough-token-3\nx:long-enough-token-1\n"
        _tokens, errors = parse_token_text(text)
        self.assertEqual([e.line for e in errors], [2, 3, 4, 5, 6])
        self.assertIn("at least 16", errors[1].message)
        self.assertIn("duplicate name 'ok'", errors[3].message)
        self.assertIn("same token as line 1", errors[4].message)

    def test_empty_file_is_an_error(self) -> None:
        """A file with no token is refused, not read as 'no token needed'."""
        _tokens, errors = parse_token_text("# nothing yet\n")
        self.assertEqual(len(errors), 1)
        self.assertIsNone(errors[0].line)


class GeneratedTokenTests(SynchronousTestCase):
    """The token written to the spool at first start."""

    def setUp(self) -> None:
        self.spool = self.mktemp()
        os.makedirs(self.spool)

    def test_created_0600_under_umask_022_and_read_back(self) -> None:
        """The first start creates the file 0600 even with umask 022; the next start reads the same token."""
        old = os.umask(0o022)
        try:
            path, created, tokens = ensure_generated_token(self.spool)
        finally:
            os.umask(old)
        self.assertTrue(created)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(tokens[0].name, GENERATED_NAME)
        self.assertGreaterEqual(len(tokens[0].token), 32)
        again = ensure_generated_token(self.spool)
        self.assertEqual((again[1], again[2]), (False, tokens))
        self.assertEqual(client_token(HttpConfig(), self.spool), tokens[0].token)

    def test_symbolic_link_in_its_place_is_refused(self) -> None:
        """A link planted at the token's name is neither followed for writing nor for reading."""
        target = self.mktemp()
        with open(target, "w") as f:
            f.write("attacker:attacker-chosen-token-000\n")
        os.chmod(target, 0o600)
        os.symlink(target, generated_token_path(self.spool))
        error = self.assertRaises(TokenFileError, ensure_generated_token, self.spool)
        self.assertIn("symbolic link", error.message)
        with open(target) as f:
            self.assertEqual(f.read(), "attacker:attacker-chosen-token-000\n")

    def test_readable_planted_file_is_refused(self) -> None:
        """A file others can read is not a secret: refused rather than trusted."""
        path = generated_token_path(self.spool)
        with open(path, "w") as f:
            f.write("x:readable-token-000000000\n")
        os.chmod(path, 0o644)
        self.assertRaises(TokenFileError, ensure_generated_token, self.spool)

    def test_client_without_the_file_says_to_start_the_gateway(self) -> None:
        """Before the first start there is no token to send, and the message says why."""
        error = self.assertRaises(TokenFileError, client_token, HttpConfig(), self.spool)
        self.assertIn("start the gateway once", error.message)

    def test_configured_tokens_win_and_can_be_chosen_by_name(self) -> None:
        """http.token or http.token_file tokens are what the client sends; --token-name picks one."""
        http = HttpConfig(tokens=(ApiToken("alice", "a" * 20), ApiToken("bob", "b" * 20)))
        self.assertEqual(client_token(http, self.spool), "a" * 20)
        self.assertEqual(client_token(http, self.spool, "bob"), "b" * 20)
        self.assertEqual(client_token(HttpConfig(token="t" * 20), self.spool), "t" * 20)


class LoadTests(SynchronousTestCase):
    """``http.token``, ``http.token_file``, ``http.allowed_hosts`` and ``http.tls`` at load."""

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def load(self, http: str, token_text: str | None = None, mode: int = 0o600) -> object:
        if token_text is not None:
            path = os.path.join(self.dir, "tokens")
            with open(path, "w") as f:
                f.write(token_text)
            os.chmod(path, mode)
        config = os.path.join(self.dir, "gateway.yaml")
        with open(config, "w") as f:
            f.write(f"ae_title: GW\nlisten: [{{host: 127.0.0.1, port: 0}}]\nspool: spool\nhttp:\n{http}")
        return load_config(config)

    def errors(self, http: str, token_text: str | None = None, mode: int = 0o600) -> list[str]:
        return [str(e) for e in self.assertRaises(ConfigErrors, self.load, http, token_text, mode).errors]

    def test_token_file_is_read_into_named_tokens(self) -> None:
        """A valid token file gives named tokens; allowed hosts are lower-cased without brackets."""
        config: object = self.load("  token_file: tokens\n  allowed_hosts: [GW.Example.org, '[fe80::1]']\n", GOOD)
        http = config.http  # type: ignore[attr-defined]
        self.assertEqual([t.name for t in http.tokens], ["alice", "ris-bridge"])
        self.assertEqual(http.allowed_hosts, ("gw.example.org", "fe80::1"))
        self.assertNotIn("alice-token", repr(http))

    def test_bad_token_file_lines_are_named_with_file_line_and_key(self) -> None:
        """Each bad line is reported as tokens:LINE: http.token_file: ..."""
        errors = self.errors("  token_file: tokens\n", "alice:alice-token-0123456789\nbob:short\n")
        self.assertEqual(len(errors), 1)
        self.assertTrue(errors[0].startswith(os.path.join(self.dir, "tokens") + ":2: http.token_file:"), errors[0])

    def test_token_file_others_can_read_is_refused(self) -> None:
        """A world-readable token file is refused at the key's line."""
        (error,) = self.errors("  token_file: tokens\n", GOOD, mode=0o644)
        self.assertIn("gateway.yaml:5: http.token_file:", error)
        self.assertIn("mode 0644", error)

    def test_short_inline_token_and_both_keys_are_refused(self) -> None:
        """http.token must be long enough; token and token_file together are ambiguous."""
        (error,) = self.errors("  token: abc\n")
        self.assertIn("http.token: the token must be at least 16", error)
        errors = self.errors("  token: long-enough-token-123\n  token_file: tokens\n", GOOD)
        self.assertIn("not both", errors[0])

    def test_allowed_host_with_scheme_or_path_is_refused(self) -> None:
        """allowed_hosts are names, not URLs."""
        (error,) = self.errors("  allowed_hosts: ['https://gw.example.org/']\n")
        self.assertIn("http.allowed_hosts[0]", error)

    def test_tls_block_is_a_listener_tls_block(self) -> None:
        """http.tls takes the DICOM listener's settings (certificate and private_key required)."""
        config: object = self.load("  tls: {certificate: cert.pem, private_key: key.pem, profile: bcp195-extended}\n")
        tls = config.http.tls  # type: ignore[attr-defined]
        self.assertEqual((tls.certificate, tls.profile), (os.path.join(self.dir, "cert.pem"), "bcp195-extended"))
        (error,) = self.errors("  tls: {certificate: cert.pem}\n")
        self.assertIn("http.tls.private_key: required key is missing", error)
