"""The STOW-RS service's tokens file: format, hashed lines, constant-time check, re-read on change."""

from __future__ import annotations

import hashlib
import os

from twisted.trial.unittest import SynchronousTestCase

from gateway.dicomweb.tokens import RECHECK_SECONDS, TokenStore, hash_line, new_token, parse_tokens

TOKEN = "abcdefghijklmnop0123"


class ParseTests(SynchronousTestCase):
    """``NAME:TOKEN`` and ``NAME:sha256$<hex>`` lines."""

    def test_plain_and_hashed_lines(self) -> None:
        """A plain token and a hashed one are both kept as SHA-256 digests under their names."""
        hashed = hash_line("bob", "another-long-token-1")
        tokens, errors = parse_tokens(f"# comment\n\nalice:{TOKEN}\n{hashed}\n")
        self.assertEqual(errors, [])
        self.assertEqual([t.name for t in tokens], ["alice", "bob"])
        self.assertEqual(tokens[0].digest, hashlib.sha256(TOKEN.encode()).digest())
        self.assertEqual(tokens[1].digest, hashlib.sha256(b"another-long-token-1").digest())
        self.assertNotIn(TOKEN, repr(tokens))

    def test_bad_lines_are_named_by_number(self) -> None:
        """Short tokens, bad names, malformed hashes, duplicates: each error has its line."""
        text = f"alice:{TOKEN}\nshort:abc\nbad name:{TOKEN}x\nh:sha256$zz\nalice:{TOKEN}yy\ncopy:{TOKEN}\nnocolon\n"
        _, errors = parse_tokens(text)
        self.assertEqual([e.line for e in errors], [2, 3, 4, 5, 6, 7])

    def test_empty_file_is_an_error(self) -> None:
        """A file with no token is refused (the service would be closed to everyone)."""
        self.assertEqual(len(parse_tokens("# nothing\n")[1]), 1)

    def test_new_tokens_are_long_random_and_hash_to_their_line(self) -> None:
        """``dicomweb-token`` material: distinct tokens of 43 characters whose line parses back."""
        first, second = new_token(), new_token()
        self.assertNotEqual(first, second)
        self.assertEqual(len(first), 43)
        tokens, errors = parse_tokens(hash_line("ci", first))
        self.assertEqual((errors, tokens[0].name), ([], "ci"))


class StoreTests(SynchronousTestCase):
    """:class:`TokenStore`: authentication and re-reading."""

    def setUp(self) -> None:
        self.path = self.mktemp()
        with open(self.path, "w") as fp:
            fp.write(f"alice:{TOKEN}\n")
        self.now = 100.0
        self.store = TokenStore(self.path, lambda: self.now)

    def test_authenticate_names_the_client(self) -> None:
        """The right token gives its name; any other gives ``None``."""
        self.assertEqual(self.store.authenticate(TOKEN), "alice")
        self.assertIsNone(self.store.authenticate(TOKEN + "x"))
        self.assertIsNone(self.store.authenticate(""))

    def test_file_change_is_picked_up(self) -> None:
        """A client added to the file is accepted once the recheck period has passed."""
        self.assertIsNone(self.store.authenticate("bobs-token-0123456789"))
        with open(self.path, "w") as fp:
            fp.write(f"alice:{TOKEN}\n{hash_line('bob', 'bobs-token-0123456789')}\n")
        os.utime(self.path, ns=(1, 1))  # a different stamp whatever the file system's resolution
        self.now += RECHECK_SECONDS + 0.1
        self.assertEqual(self.store.authenticate("bobs-token-0123456789"), "bob")

    def test_broken_file_keeps_the_last_tokens(self) -> None:
        """A file made invalid keeps the tokens read before (a typo does not lock every client out)."""
        self.assertEqual(self.store.authenticate(TOKEN), "alice")
        with open(self.path, "w") as fp:
            fp.write("garbage\n")
        os.utime(self.path, ns=(2, 2))
        self.now += RECHECK_SECONDS + 0.1
        self.assertEqual(self.store.authenticate(TOKEN), "alice")

    def test_emptying_the_file_revokes_every_client(self) -> None:
        """The last client's line removed (the file empty, or comments only): its token no longer authenticates (fail closed)."""
        self.assertEqual(self.store.authenticate(TOKEN), "alice")
        with open(self.path, "w") as fp:
            fp.write("# alice revoked 2026-12-02\n\n")
        os.utime(self.path, ns=(3, 3))
        self.now += RECHECK_SECONDS + 0.1
        self.assertIsNone(self.store.authenticate(TOKEN))
        self.assertEqual(self.store.tokens(), ())
