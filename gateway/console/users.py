"""The console's users file: ``name:role:scrypt$n$r$p$salt$hash[:phi]`` lines (issue 18).

One user per line; blank lines and lines starting with ``#`` are ignored.
The password hash is scrypt (RFC 7914) through :func:`hashlib.scrypt` with
n=2**14, r=8, p=1 (the parameters are stored in the line, so a later change
of the defaults keeps older lines valid) and a random 16-byte salt; it is
compared in constant time (:func:`hmac.compare_digest`). A bad line is an
error naming ``file:line``: that user is skipped (and logged), the others
still sign in. :class:`UsersFile` re-reads the file when its modification
time or size changes, so adding a user or changing a password needs no
reload.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from typing import Callable

from twisted.logger import Logger

from gateway.config.schema import ConsoleUser

__all__ = [
    "ROLES",
    "UserProblem",
    "hash_password",
    "verify_password",
    "fingerprint",
    "parse_users",
    "format_user",
    "UsersFile",
    "write_user",
]

#: Roles, lowest first: a viewer reads, an operator also retries/purges/pauses, an admin also reloads.
ROLES = ("viewer", "operator", "admin")

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_BYTES = 16
_HASH_BYTES = 32
# scrypt needs 128 * n * r bytes; allow the stored parameters up to 2**20 * 8 (1 GiB would be hostile).
_MAX_MEMORY = 128 * 2**17 * 8 + 1024 * 1024

_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_HASH = re.compile(r"^scrypt\$(\d+)\$(\d+)\$(\d+)\$([0-9a-f]{2,128})\$([0-9a-f]{32,128})$")

_log = Logger(namespace="gateway.console.users")


@dataclass(frozen=True)
class UserProblem:
    """A line of the users file that was skipped (``file:line: message``)."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def hash_password(password: str, salt: bytes | None = None) -> str:
    """The stored form of a password: ``scrypt$n$r$p$<salt hex>$<hash hex>``."""
    salt = salt if salt is not None else secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=_HASH_BYTES, maxmem=_MAX_MEMORY
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def _hash_problem(stored: str) -> str | None:
    match = _HASH.match(stored)
    if match is None:
        return "expected the password as scrypt$<n>$<r>$<p>$<salt hex>$<hash hex> (made by dicom-gateway console-user)"
    n, r, p = (int(match.group(i)) for i in (1, 2, 3))
    if n < 2 or n & (n - 1) or r < 1 or p < 1 or p > 16 or 128 * n * r > _MAX_MEMORY:
        return f"unusable scrypt parameters n={n} r={r} p={p}"
    return None


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches the stored hash (constant-time compare of the digests)."""
    match = _HASH.match(stored)
    if match is None or _hash_problem(stored) is not None:
        return False
    n, r, p = (int(match.group(i)) for i in (1, 2, 3))
    salt, expected = bytes.fromhex(match.group(4)), bytes.fromhex(match.group(5))
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=len(expected), maxmem=_MAX_MEMORY)
    return hmac.compare_digest(digest, expected)


def fingerprint(user: ConsoleUser) -> str:
    """A short digest of the user's stored hash and role: a session carries it, so a password change ends it."""
    return hashlib.sha256(f"{user.role}\0{user.password_hash}".encode("utf-8")).hexdigest()[:16]


def format_user(name: str, role: str, password_hash: str, show_phi: bool = False) -> str:
    """One line of the users file (without its newline)."""
    return f"{name}:{role}:{password_hash}" + (":phi" if show_phi else "")


def parse_users(text: str, path: str) -> tuple[dict[str, ConsoleUser], list[UserProblem]]:
    """The users of a users file's text and the lines that were skipped."""
    users: dict[str, ConsoleUser] = {}
    problems: list[UserProblem] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) not in (3, 4):
            problems.append(UserProblem(path, number, "expected name:role:scrypt$...[:phi]"))
            continue
        name, role, stored = fields[0], fields[1], fields[2]
        if not _NAME.match(name):
            problems.append(UserProblem(path, number, f"bad user name {name[:64]!r} (letters, digits, . _ @ -)"))
            continue
        if role not in ROLES:
            problems.append(UserProblem(path, number, f"user {name}: role must be one of {', '.join(ROLES)}, got {role[:32]!r}"))
            continue
        problem = _hash_problem(stored)
        if problem is not None:
            problems.append(UserProblem(path, number, f"user {name}: {problem}"))
            continue
        if len(fields) == 4 and fields[3] != "phi":
            problems.append(UserProblem(path, number, f"user {name}: the only flag after the hash is 'phi'"))
            continue
        if name in users:
            problems.append(UserProblem(path, number, f"user {name} is listed twice (the first line counts)"))
            continue
        users[name] = ConsoleUser(name, role, stored, show_phi=len(fields) == 4)
    return users, problems


class UsersFile:
    """The users file, re-read when its modification time or size changes.

    :param path: the file (``console.users_file``); empty: no users.
    :param stat: :func:`os.stat` (tests inject one).
    """

    def __init__(self, path: str, stat: Callable[[str], os.stat_result] = os.stat) -> None:
        self.path = path
        self._stat = stat
        self._seen: tuple[int, int] | None = None
        self._users: dict[str, ConsoleUser] = {}
        self.problems: list[UserProblem] = []
        self.error = ""

    def _refresh(self) -> None:
        if not self.path:
            self._users, self.error = {}, "no users file is configured (console.users_file)"
            return
        try:
            info = self._stat(self.path)
        except OSError as error:
            if self._seen is not None or not self.error:
                _log.error("console users file {path}: {error}", path=self.path, error=error.strerror)
            self._users, self._seen, self.error = {}, None, f"cannot read the users file: {error.strerror}"
            return
        key = (info.st_mtime_ns, info.st_size)
        if key == self._seen:
            return
        try:
            with open(self.path, encoding="utf-8") as handle:
                text = handle.read(4 * 1024 * 1024)
        except (OSError, UnicodeDecodeError) as error:
            self._users, self._seen, self.error = {}, None, f"cannot read the users file: {error}"
            return
        self._users, self.problems = parse_users(text, self.path)
        self._seen, self.error = key, ""
        for problem in self.problems:
            _log.error("console user skipped: {problem}", problem=str(problem))

    def users(self) -> dict[str, ConsoleUser]:
        """The users now (re-reading the file when it changed)."""
        self._refresh()
        return dict(self._users)

    def get(self, name: str) -> ConsoleUser | None:
        """One user, or ``None``."""
        self._refresh()
        return self._users.get(name)

    def refresh(self) -> None:
        """Re-read the file if it changed (blocking: ``stat``, and the read and parse of a changed file)."""
        self._refresh()

    def known(self) -> dict[str, ConsoleUser]:
        """The users as last read by :meth:`refresh` (no file access: for the reactor thread)."""
        return dict(self._users)

    def known_user(self, name: str) -> ConsoleUser | None:
        """One user as last read by :meth:`refresh`, or ``None`` (no file access)."""
        return self._users.get(name)


def write_user(path: str, line: str, name: str) -> None:
    """Replace ``name``'s line in ``path`` (or add it), keeping the file private (mode 0600)."""
    lines: list[str] = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    kept = [existing for existing in lines if existing.split(":", 1)[0] != name]
    kept.append(line)
    temporary = f"{path}.tmp-{os.getpid()}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("\n".join(kept) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)
