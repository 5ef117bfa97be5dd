"""Bearer tokens of the STOW-RS service: the ``dicomweb.auth.tokens_file`` format, its checks and its reload.

One ``NAME:SECRET`` line per client (blank lines and ``#`` comments
ignored; a name is 1-64 of ``A-Z a-z 0-9 . _ @ -``, as the admin API's
token file). ``SECRET`` is either the token itself (at least 16 printable
ASCII characters) or ``sha256$<64 hex digits>``, the SHA-256 of the token,
which ``dicom-gateway dicomweb-token NAME`` prints with a new random token.
Tokens are long random strings, so a plain SHA-256 compared in constant time
(:func:`hmac.compare_digest`) is enough: there is nothing to brute-force that
a slow hash would protect, and it costs nothing per request (issue 17).

The file is re-read when its modification time, size or inode changes
(:class:`TokenStore`, checked at most once a second): a client added or
revoked takes effect without a reload. A file that became unreadable or
invalid keeps the tokens last read, and the problem is logged once; a file
left without any token line revokes every client (fail closed).
The secrets are never logged nor kept in ``repr``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass, field
from typing import Callable, Final

from twisted.logger import Logger

from gateway.apitokens import MAX_TOKEN_FILE_BYTES, TokenFileError, token_problem

__all__ = ["ClientToken", "TokenStore", "hash_line", "new_token", "parse_tokens", "read_tokens"]

_NAME: Final = re.compile(r"[A-Za-z0-9._@-]{1,64}")
_HASHED: Final = re.compile(r"sha256\$([0-9a-fA-F]{64})")

#: The problem of a file without any token line (refused at load; at run time, every client revoked).
NO_TOKEN: Final = "no token in the file (expected NAME:TOKEN lines)"

#: Seconds between two looks at the file's metadata.
RECHECK_SECONDS: Final = 1.0


@dataclass(frozen=True)
class ClientToken:
    """One client's token, kept as its SHA-256 digest.

    :ivar name: the client's name (the audit trail's and the routes' ``calling_ae_title``).
    :ivar digest: SHA-256 of the token (32 bytes); never logged.
    """

    name: str
    digest: bytes = field(repr=False)


def token_digest(token: str) -> bytes:
    """The SHA-256 of a token's UTF-8 bytes."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def new_token() -> str:
    """A new random token: 32 bytes from the system's CSPRNG, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def hash_line(name: str, token: str) -> str:
    """The ``tokens_file`` line that holds ``token`` hashed: ``name:sha256$<hex>``.

    :raises ValueError: for a name the file format refuses.
    """
    if not _NAME.fullmatch(name):
        raise ValueError("the name must be 1 to 64 of A-Z a-z 0-9 . _ @ -")
    return f"{name}:sha256${hashlib.sha256(token.encode('utf-8')).hexdigest()}"


def parse_tokens(text: str) -> tuple[tuple[ClientToken, ...], list[TokenFileError]]:
    """Parse ``NAME:TOKEN`` and ``NAME:sha256$<hex>`` lines.

    :param text: the file's text.
    :returns: the tokens, and one error per bad line (with its number);
        names and secrets must be unique, and at least one line is needed.
    """
    tokens: list[ClientToken] = []
    errors: list[TokenFileError] = []
    names: dict[str, int] = {}
    digests: dict[bytes, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, secret = line.partition(":")
        if not colon:
            errors.append(TokenFileError("expected NAME:TOKEN or NAME:sha256$<hex>", number))
            continue
        if not _NAME.fullmatch(name):
            errors.append(TokenFileError("the name must be 1 to 64 of A-Z a-z 0-9 . _ @ -", number))
            continue
        hashed = _HASHED.fullmatch(secret)
        if hashed is not None:
            digest = bytes.fromhex(hashed.group(1))
        elif secret.startswith("sha256$"):
            errors.append(TokenFileError("sha256$ must be followed by 64 hexadecimal digits", number))
            continue
        else:
            problem = token_problem(secret)
            if problem is not None:
                errors.append(TokenFileError(problem, number))
                continue
            digest = token_digest(secret)
        if name in names:
            errors.append(TokenFileError(f"duplicate name {name!r} (first on line {names[name]})", number))
            continue
        if digest in digests:
            errors.append(TokenFileError(f"the same token as line {digests[digest]}; give each client their own", number))
            continue
        names[name] = digests[digest] = number
        tokens.append(ClientToken(name, digest))
    if not tokens and not errors:
        errors.append(TokenFileError(NO_TOKEN))
    return tuple(tokens), errors


def read_tokens(path: str) -> tuple[tuple[ClientToken, ...], list[TokenFileError]]:
    """Read a tokens file (symbolic links followed; bounded size; ASCII).

    :param path: the file.
    :returns: the tokens and the problems.
    """
    try:
        with open(path, "rb") as fp:
            data = fp.read(MAX_TOKEN_FILE_BYTES + 1)
    except OSError as error:
        return (), [TokenFileError(f"cannot read it: {error.strerror or error}")]
    if len(data) > MAX_TOKEN_FILE_BYTES:
        return (), [TokenFileError(f"larger than {MAX_TOKEN_FILE_BYTES} bytes")]
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return (), [TokenFileError("not ASCII text")]
    return parse_tokens(text)


class TokenStore:
    """The tokens of a file, re-read when the file changes.

    :param path: the tokens file.
    :param clock: seconds, monotonic (the metadata is looked at most once per :data:`RECHECK_SECONDS`).
    :param initial: the tokens read at configuration load (so a request never waits for a read).
    """

    log = Logger(namespace="gateway.dicomweb")

    def __init__(self, path: str, clock: Callable[[], float], initial: tuple[ClientToken, ...] | None = None) -> None:
        self.path = path
        self._clock = clock
        self._tokens: tuple[ClientToken, ...] = ()
        self._stamp: tuple[int, int, int] | None = None
        self._checked = float("-inf")
        self._warned = False
        if initial is not None:
            self._tokens = initial
            self._stamp = self._file_stamp()
            self._checked = clock()

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_size, info.st_ino)

    def tokens(self) -> tuple[ClientToken, ...]:
        """The tokens in force (re-reading the file when it changed)."""
        now = self._clock()
        if now - self._checked < RECHECK_SECONDS:
            return self._tokens
        self._checked = now
        stamp = self._file_stamp()
        if stamp is not None and stamp == self._stamp:
            return self._tokens
        tokens, problems = read_tokens(self.path)
        if [p.message for p in problems] == [NO_TOKEN]:
            # Every line removed: the operator revoked every client. Fail closed (keeping the
            # tokens read before would leave a revoked client in); the load refuses such a file.
            problems = []
            if self._tokens:
                self.log.warn("dicomweb tokens file {path} holds no token: every client is refused", path=self.path)
        if problems:
            if not self._warned:
                self._warned = True
                self.log.error(
                    "dicomweb tokens file {path}: {problems}; keeping the {n} token(s) read before",
                    path=self.path,
                    problems="; ".join(f"line {p.line}: {p.message}" if p.line else p.message for p in problems),
                    n=len(self._tokens),
                )
            return self._tokens
        self._warned = False
        if self._stamp is not None:
            self.log.info("dicomweb tokens file {path} re-read: {n} client(s)", path=self.path, n=len(tokens))
        self._stamp = stamp
        self._tokens = tokens
        return tokens

    def authenticate(self, presented: str) -> str | None:
        """The name of the client whose token is ``presented``, or ``None``.

        Every configured digest is compared, in constant time each
        (:func:`hmac.compare_digest`), so the time taken says nothing about
        which token came close.
        """
        digest = token_digest(presented)
        found: str | None = None
        for token in self.tokens():
            if hmac.compare_digest(digest, token.digest) and found is None:
                found = token.name
        return found
