"""The console's users file, its ``console`` configuration section and ``dicom-gateway console-user`` (issue 18)."""

from __future__ import annotations

import io
import os
import stat
from types import SimpleNamespace

from twisted.trial.unittest import SynchronousTestCase

from gateway.cli import _console_user
from gateway.config.errors import ConfigErrors
from gateway.config.load import load_config_text
from gateway.config.schema import ConsoleConfig
from gateway.console.users import (
    UsersFile,
    fingerprint,
    format_user,
    hash_password,
    parse_users,
    verify_password,
    write_user,
)

GOOD = hash_password("correct horse")
MINIMAL = "ae_title: GW\nlisten:\n  - host: 127.0.0.1\n    port: 0\nspool: spool\n"
BASE_DIR = os.path.abspath(os.sep + os.path.join("srv", "gw", "etc"))


class HashTests(SynchronousTestCase):
    """Password hashes."""
    def test_scrypt_parameters_and_verify(self) -> None:
        """Hashes are scrypt n=2**14 r=8 p=1 and verify only the right password."""
        self.assertTrue(GOOD.startswith("scrypt$16384$8$1$"))
        self.assertTrue(verify_password("correct horse", GOOD))
        self.assertFalse(verify_password("correct horsf", GOOD))
        self.assertFalse(verify_password("correct horse", "plain"))

    def test_salted(self) -> None:
        """Two hashes of one password differ (salted)."""
        self.assertNotEqual(hash_password("same"), hash_password("same"))

    def test_fingerprint_changes_with_password_and_role(self) -> None:
        """The session fingerprint changes with the password and with the role."""
        users, _ = parse_users(f"a:viewer:{GOOD}\nb:admin:{GOOD}\nc:viewer:{hash_password('x' * 8)}\n", "f")
        self.assertNotEqual(fingerprint(users["a"]), fingerprint(users["b"]))
        self.assertNotEqual(fingerprint(users["a"]), fingerprint(users["c"]))


class ParseTests(SynchronousTestCase):
    """Users file lines."""
    def test_lines(self) -> None:
        """Users, roles and the phi flag are read; the hash is not in repr."""
        text = f"# comment\n\nada:admin:{GOOD}\nphil:viewer:{GOOD}:phi\n"
        users, problems = parse_users(text, "/etc/gw/users")
        self.assertEqual(problems, [])
        self.assertEqual((users["ada"].role, users["ada"].show_phi), ("admin", False))
        self.assertTrue(users["phil"].show_phi)
        self.assertNotIn(GOOD, repr(users["ada"]))

    def test_bad_lines_are_skipped_with_file_and_line(self) -> None:
        """Bad lines are skipped with file:line and why; the others are kept."""
        text = "\n".join([
            f"ok:viewer:{GOOD}",
            "nocolons",
            f"bob:root:{GOOD}",
            "carl:viewer:md5$abc",
            f"dan:viewer:{GOOD}:admin",
            f"ok:admin:{GOOD}",
            f"bad name:viewer:{GOOD}",
            "eve:viewer:scrypt$3$8$1$00$" + "00" * 32,
        ])
        users, problems = parse_users(text, "/etc/gw/users")
        self.assertEqual(list(users), ["ok"])
        self.assertEqual(users["ok"].role, "viewer")  # the first line counts
        self.assertEqual([p.line for p in problems], [2, 3, 4, 5, 6, 7, 8])
        self.assertTrue(str(problems[1]).startswith("/etc/gw/users:3: user bob: role must be one of"))
        self.assertIn("scrypt$", problems[2].message)
        self.assertIn("unusable scrypt parameters", problems[6].message)


class UsersFileTests(SynchronousTestCase):
    """Re-reading the users file."""
    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())

    def write(self, text: str, mtime_ns: int) -> None:
        with open(self.path, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.utime(self.path, ns=(mtime_ns, mtime_ns))

    def test_reread_when_changed(self) -> None:
        """The file is re-read when its modification time or size changes."""
        self.write(f"ada:admin:{GOOD}\n", 10**18)
        users = UsersFile(self.path)
        self.assertEqual(users.get("ada").role, "admin")
        self.assertIsNone(users.get("bob"))
        self.write(f"ada:admin:{GOOD}\nbob:viewer:{GOOD}\n", 10**18 + 10**9)
        self.assertEqual(users.get("bob").role, "viewer")

    def test_not_reread_when_unchanged(self) -> None:
        """The file is not re-read while its modification time and size stay."""
        self.write(f"ada:admin:{GOOD}\n", 10**18)
        reads = []
        real_stat = os.stat
        users = UsersFile(self.path, stat=lambda p: reads.append(p) or real_stat(p))
        users.get("ada")
        # Same size and mtime: the same users, even though the content was swapped underneath.
        self.write(f"ada:viewr:{GOOD}\n", 10**18)
        self.assertEqual(users.get("ada").role, "admin")
        self.assertEqual(len(reads), 2)

    def test_bad_line_logged_others_kept(self) -> None:
        """A bad line is reported with its line; the other users sign in."""
        self.write(f"ada:admin:{GOOD}\nbob:viewer\n", 10**18)
        users = UsersFile(self.path)
        self.assertEqual(list(users.users()), ["ada"])
        self.assertEqual([(p.path, p.line) for p in users.problems], [(self.path, 2)])

    def test_missing_file_means_no_users(self) -> None:
        """A missing file is no users, until it appears."""
        users = UsersFile(self.path)
        self.assertEqual(users.users(), {})
        self.assertIn("cannot read", users.error)
        self.write(f"ada:admin:{GOOD}\n", 10**18)
        self.assertEqual(list(users.users()), ["ada"])


class CommandTests(SynchronousTestCase):
    """dicom-gateway console-user."""
    def args(self, **kw: object) -> SimpleNamespace:
        return SimpleNamespace(**{"name": "ada", "role": "admin", "show_phi": False, "file": "", **kw})

    def test_prints_the_line(self) -> None:
        """console-user prints a valid line with the phi flag."""
        out = io.StringIO()
        self.assertEqual(_console_user(self.args(show_phi=True), stdin=io.StringIO("long-password\n"), stdout=out), 0)
        users, problems = parse_users(out.getvalue(), "-")
        self.assertEqual(problems, [])
        self.assertTrue(users["ada"].show_phi)
        self.assertTrue(verify_password("long-password", users["ada"].password_hash))

    def test_file_replaces_the_users_line_mode_0600(self) -> None:
        """console-user --file replaces the user's line, keeps the others, mode 0600."""
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as handle:
            handle.write(f"bob:viewer:{GOOD}\nada:viewer:{GOOD}\n")
        self.assertEqual(_console_user(self.args(file=path), stdin=io.StringIO("new-password\n"), stdout=io.StringIO()), 0)
        users, problems = parse_users(open(path).read(), path)
        self.assertEqual(problems, [])
        self.assertEqual(sorted(users), ["ada", "bob"])
        self.assertEqual(users["ada"].role, "admin")
        self.assertTrue(verify_password("new-password", users["ada"].password_hash))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

    def test_short_password_and_bad_name_refused(self) -> None:
        """Short passwords and bad names are refused."""
        self.assertEqual(_console_user(self.args(), stdin=io.StringIO("short\n"), stdout=io.StringIO()), 1)
        self.assertEqual(_console_user(self.args(name="a:b"), stdin=io.StringIO("long-password\n"), stdout=io.StringIO()), 2)

    def test_write_user_creates_the_file(self) -> None:
        """Writing a user creates a missing file."""
        path = os.path.abspath(self.mktemp())
        write_user(path, format_user("x", "viewer", GOOD), "x")
        self.assertEqual(list(parse_users(open(path).read(), path)[0]), ["x"])


class ConfigTests(SynchronousTestCase):
    """The console configuration section."""
    def load(self, section: str):
        return load_config_text(MINIMAL + section, "gw.yaml", BASE_DIR)

    def test_defaults(self) -> None:
        """Without a console section the defaults apply."""
        self.assertEqual(load_config_text(MINIMAL, "gw.yaml", BASE_DIR).console, ConsoleConfig())

    def test_keys(self) -> None:
        """Every key of the section is read (durations, size, absolute path)."""
        config = self.load(
            "console:\n  users_file: users\n  session_timeout: 30m\n  session_lifetime: 12h\n"
            "  upload_limit: 10MiB\n  refresh: 2s\n  enabled: false\n"
        )
        self.assertEqual(
            config.console,
            ConsoleConfig(False, os.path.join(BASE_DIR, "users"), "", 1800.0, 43200.0, 10 * 2**20, 2.0),
        )

    def test_errors_name_file_line_and_key(self) -> None:
        """Errors name the file, line and key; unknown keys are errors."""
        raised = self.assertRaises(ConfigErrors, self.load, "console:\n  refresh: soon\n  colour: blue\n")
        found = {(e.file, e.line, e.key_path) for e in raised.errors}
        self.assertIn(("gw.yaml", 7, "console.refresh"), found)
        self.assertIn("console.colour", {e.key_path for e in raised.errors})

    def test_lifetime_shorter_than_timeout(self) -> None:
        """A lifetime shorter than the timeout is an error."""
        raised = self.assertRaises(ConfigErrors, self.load, "console:\n  session_timeout: 2h\n  session_lifetime: 1h\n")
        self.assertEqual([(e.line, e.key_path) for e in raised.errors], [(8, "console.session_lifetime")])

    def test_session_key_file_must_exist_and_be_long_enough(self) -> None:
        """The session key file must exist and hold 16 bytes or more."""
        short = os.path.abspath(self.mktemp())
        with open(short, "w") as handle:
            handle.write("abc")
        raised = self.assertRaises(ConfigErrors, self.load, f"console:\n  session_key_file: {short}\n")
        self.assertIn("at least 16 bytes", raised.errors[0].message)
        raised = self.assertRaises(ConfigErrors, self.load, f"console:\n  session_key_file: {short}-missing\n")
        self.assertEqual(raised.errors[0].key_path, "console.session_key_file")
