"""``dicom-gateway dicomweb-token NAME``: a new token and its hashed tokens-file line."""

from __future__ import annotations

import contextlib
import hashlib
import io

from twisted.trial.unittest import SynchronousTestCase

from gateway.cli import main
from gateway.dicomweb.tokens import parse_tokens


def run(*argv: str) -> tuple[int, str, str]:
    """Run the CLI; its exit status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(argv))
            code = 0
        except SystemExit as exit_:
            code = int(exit_.code or 0)
    return code, out.getvalue(), err.getvalue()


class DicomWebTokenTests(SynchronousTestCase):
    """The printed line holds the SHA-256 of the printed token, never the token itself."""

    def test_prints_a_token_and_its_hashed_line(self) -> None:
        """Exit 0; the line parses as a tokens-file line named NAME whose digest is the token's SHA-256."""
        code, out, _ = run("dicomweb-token", "uploader")
        self.assertEqual(code, 0)
        token = out.splitlines()[0].rsplit(" ", 1)[1]
        line = out.splitlines()[1].rsplit(" ", 1)[1]
        self.assertNotIn(token, line)
        tokens, errors = parse_tokens(line)
        self.assertEqual((errors, tokens[0].name), ([], "uploader"))
        self.assertEqual(tokens[0].digest, hashlib.sha256(token.encode()).digest())

    def test_bad_name_exits_2(self) -> None:
        """A name the file format refuses is an error, and nothing is printed on stdout."""
        code, out, err = run("dicomweb-token", "two words")
        self.assertEqual((code, out), (2, ""))
        self.assertIn("name", err)
