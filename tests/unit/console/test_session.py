"""Console session cookies, CSRF tokens and the session key file (issue 18)."""

from __future__ import annotations

import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from gateway.console.session import SessionSigner, load_or_create_key


class SignerTests(SynchronousTestCase):
    """Session cookies and CSRF tokens."""
    def setUp(self) -> None:
        self.signer = SessionSigner(b"k" * 32, timeout=100.0, lifetime=1000.0)

    def test_round_trip(self) -> None:
        """A session survives encoding and decoding."""
        session = self.signer.new("ada", "fp", 5000.0)
        decoded = self.signer.decode(self.signer.encode(session), 5050.0)
        self.assertEqual(decoded, session)

    def test_new_ids_differ(self) -> None:
        """Every new session has a new id."""
        self.assertNotEqual(self.signer.new("ada", "fp", 0.0).sid, self.signer.new("ada", "fp", 0.0).sid)

    def test_idle_and_lifetime(self) -> None:
        """The idle timeout and the absolute lifetime are enforced."""
        session = self.signer.new("ada", "fp", 5000.0)
        cookie = self.signer.encode(session)
        self.assertIsNone(self.signer.decode(cookie, 5100.5))
        renewed = self.signer.encode(session.__class__(session.sid, "ada", "fp", 5000.0, 5990.0))
        self.assertIsNotNone(self.signer.decode(renewed, 5999.0))
        self.assertIsNone(self.signer.decode(renewed, 6000.5))

    def test_other_key_or_tampering_refused(self) -> None:
        """A cookie signed with another key, tampered with or malformed is refused."""
        cookie = self.signer.encode(self.signer.new("ada", "fp", 0.0))
        other = SessionSigner(b"j" * 32, 100.0, 1000.0)
        self.assertIsNone(other.decode(cookie, 1.0))
        body, _, signature = cookie.partition(b".")
        forged = SessionSigner(b"j" * 32, 100.0, 1000.0).encode(other.new("root", "fp", 0.0)).partition(b".")[0]
        self.assertIsNone(self.signer.decode(forged + b"." + signature, 1.0))
        for junk in (b"", b"x", b".", b"a" * 2000, b"\xff.\xff"):
            self.assertIsNone(self.signer.decode(junk, 1.0))

    def test_shared_key_works_on_every_node(self) -> None:
        """Nodes sharing the key accept each other's sessions and CSRF tokens."""
        node_b = SessionSigner(b"k" * 32, 100.0, 1000.0)
        session = self.signer.new("ada", "fp", 0.0)
        self.assertEqual(node_b.decode(self.signer.encode(session), 1.0), session)
        self.assertTrue(node_b.csrf_ok(session.sid, self.signer.csrf(session.sid)))

    def test_csrf(self) -> None:
        """The CSRF token belongs to its session only."""
        token = self.signer.csrf("sid-1")
        self.assertTrue(self.signer.csrf_ok("sid-1", token))
        self.assertFalse(self.signer.csrf_ok("sid-2", token))
        self.assertFalse(self.signer.csrf_ok("sid-1", None))
        self.assertFalse(self.signer.csrf_ok("sid-1", ""))
        self.assertFalse(self.signer.csrf_ok("sid-1", token[:-1] + "0"))


class KeyFileTests(SynchronousTestCase):
    """The session key file."""
    def test_created_private_then_reused(self) -> None:
        """The generated key file is mode 0600 and reused at the next start."""
        path = os.path.abspath(self.mktemp())
        key = load_or_create_key(path)
        self.assertEqual(len(key), 64)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(load_or_create_key(path), key)

    def test_a_key_written_meanwhile_wins(self) -> None:
        """When another node wrote the key between our read and our write, its key is used (shared spool)."""
        import gateway.console.session as session_module

        path = os.path.abspath(self.mktemp())
        real_link = os.link

        def racing_link(source: str, target: str) -> None:
            with open(target, "wb") as handle:
                handle.write(b"0123456789abcdef-other-node\n")
            real_link(source, target)

        self.patch(session_module.os, "link", racing_link)
        self.assertEqual(load_or_create_key(path), b"0123456789abcdef-other-node")
        self.assertEqual(os.listdir(os.path.dirname(path)), [os.path.basename(path)])

    def test_short_key_refused(self) -> None:
        """A key shorter than 16 bytes is refused."""
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as handle:
            handle.write(b"short")
        self.assertRaises(ValueError, load_or_create_key, path)
