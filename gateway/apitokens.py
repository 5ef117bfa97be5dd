"""Bearer tokens of the HTTP admin API: the token file format, and the token generated at first start.

``/api`` is never open to an unauthenticated request (issue 11). A token
comes from one of three places, first match wins:

* ``http.token``: one token in the configuration, named ``http.token``;
* ``http.token_file``: a file of ``NAME:TOKEN`` lines, so the audit trail
  can say *who* retried, purged or paused (blank lines and ``#`` comments
  are ignored; a name is 1-64 of ``A-Z a-z 0-9 . _ @ -``, a token at least
  :data:`MIN_TOKEN_LENGTH` printable ASCII characters without spaces);
* otherwise ``<spool>/http-token``, written by the gateway at its first
  start in the same format with the name :data:`GENERATED_NAME`, mode 0600,
  created with ``O_EXCL | O_NOFOLLOW`` so a planted file or symbolic link is
  refused rather than followed. Its path is logged, never its value.

The ``dicom-gateway`` commands that call the API (``api``, ``reload``) read
the token the same way (:func:`client_token`).
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from typing import Final

from gateway.config.schema import ApiToken, HttpConfig
from gateway.durable import create_durably

__all__ = [
    "GENERATED_FILE",
    "GENERATED_NAME",
    "MIN_TOKEN_LENGTH",
    "TokenFileError",
    "parse_token_text",
    "read_token_file",
    "ensure_generated_token",
    "generated_token_path",
    "client_token",
    "configured_tokens",
    "token_problem",
]

#: The generated token's file, in the spool folder.
GENERATED_FILE: Final = "http-token"

#: The name the generated token's holder has in the audit trail.
GENERATED_NAME: Final = "local-admin"

#: Tokens shorter than this are refused (a guessable token is no token).
MIN_TOKEN_LENGTH: Final = 16

#: A token file is small; a mistyped path such as ``/dev/zero`` must not be read whole.
MAX_TOKEN_FILE_BYTES: Final = 64 * 1024

_NAME: Final = re.compile(r"[A-Za-z0-9._@-]{1,64}")


class TokenFileError(Exception):
    """A token file cannot be used.

    :param message: what is wrong.
    :param line: the 1-based line, or ``None`` for the whole file.
    """

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


def token_problem(token: str) -> str | None:
    """Say what makes a token unusable (too short, spaces, non-ASCII).

    :param token: the candidate.
    :returns: a message, or ``None`` when it is acceptable.
    """
    if len(token) < MIN_TOKEN_LENGTH:
        return f"the token must be at least {MIN_TOKEN_LENGTH} characters long, got {len(token)}"
    if not all("!" <= char <= "~" for char in token):
        return "the token must be printable ASCII without spaces"
    return None


def parse_token_text(text: str) -> tuple[tuple[ApiToken, ...], list[TokenFileError]]:
    """Parse ``NAME:TOKEN`` lines.

    :param text: the file's text.
    :returns: the tokens, and one error per bad line (with its line number);
        names and tokens must be unique, and at least one token is needed.
    """
    tokens: list[ApiToken] = []
    errors: list[TokenFileError] = []
    names: dict[str, int] = {}
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, token = line.partition(":")
        if not colon:
            errors.append(TokenFileError("expected NAME:TOKEN", number))
            continue
        if not _NAME.fullmatch(name):
            errors.append(TokenFileError("the name must be 1 to 64 of A-Z a-z 0-9 . _ @ -", number))
            continue
        problem = token_problem(token)
        if problem is not None:
            errors.append(TokenFileError(problem, number))
            continue
        if name in names:
            errors.append(TokenFileError(f"duplicate name {name!r} (first on line {names[name]})", number))
            continue
        if token in seen:
            errors.append(TokenFileError(f"the same token as line {seen[token]}; give each holder their own", number))
            continue
        names[name] = seen[token] = number
        tokens.append(ApiToken(name, token))
    if not tokens and not errors:
        errors.append(TokenFileError("no token in the file (expected NAME:TOKEN lines)"))
    return tuple(tokens), errors


def _read_fd(fd: int, path: str, private: bool) -> str:
    """Read a token file from an open descriptor, checking its type and mode."""
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise TokenFileError("not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if private and mode & 0o077:
            raise TokenFileError(f"mode {mode:04o} lets others read it; it must be 0600")
        if not private and mode & 0o026:
            raise TokenFileError(
                f"mode {mode:04o} lets others read it or write to it; chmod 600 (or 640) it"
            )
        data = os.read(fd, MAX_TOKEN_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise TokenFileError(f"larger than {MAX_TOKEN_FILE_BYTES} bytes")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise TokenFileError("not ASCII text") from None


def read_token_file(path: str) -> tuple[tuple[ApiToken, ...], list[TokenFileError]]:
    """Read a configured ``http.token_file`` (symbolic links followed: mounted secrets are links).

    :param path: the file.
    :returns: the tokens, and the problems (each with its line, or none for the whole file).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        text = _read_fd(fd, path, private=False)
    except TokenFileError as error:
        return (), [error]
    except OSError as error:
        return (), [TokenFileError(f"cannot read it: {error.strerror or error}")]
    return parse_token_text(text)


def generated_token_path(spool: str) -> str:
    """Where the generated token lives.

    :param spool: the spool folder.
    :returns: ``<spool>/http-token``.
    """
    return os.path.join(spool, GENERATED_FILE)


def _read_generated(path: str) -> tuple[ApiToken, ...]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        if os.path.islink(path):
            raise TokenFileError("is a symbolic link; refusing to follow it") from None
        raise TokenFileError(f"cannot read it: {error.strerror or error}") from None
    tokens, errors = parse_token_text(_read_fd(fd, path, private=True))
    if errors:
        raise errors[0]
    return tokens


def ensure_generated_token(spool: str) -> tuple[str, bool, tuple[ApiToken, ...]]:
    """Create the generated token at first start, or read the one already there.

    The file is created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` and mode 0600:
    a symbolic link or a file planted in its place is never followed or
    trusted (a planted file must still be ours, a regular file, mode 0600).

    :param spool: the spool folder (it exists).
    :returns: ``(path, created, tokens)``.
    :raises TokenFileError: the file is a link, not private, or malformed.
    """
    path = generated_token_path(spool)
    token = ApiToken(GENERATED_NAME, secrets.token_urlsafe(32))
    text = f"# dicom-gateway admin API token (generated; NAME:TOKEN)\n{token.name}:{token.token}\n"
    try:
        # The new entry is made durable too (fsync of the spool folder): a
        # token shown at first start must still be there after a power cut.
        create_durably(path, text.encode("ascii"), mode=0o600)
    except FileExistsError:
        return path, False, _read_generated(path)
    return path, True, (token,)


def configured_tokens(http: HttpConfig) -> tuple[ApiToken, ...]:
    """The tokens the configuration gives (``token`` or ``token_file``), none when it gives none.

    :param http: the ``http`` section.
    :returns: the tokens.
    """
    if http.tokens:
        return http.tokens
    if http.token:
        return (ApiToken("http.token", http.token),)
    return ()


def client_token(http: HttpConfig, spool: str, name: str = "") -> str:
    """The token a ``dicom-gateway`` command sends to the API.

    :param http: the ``http`` section.
    :param spool: the spool folder (for the generated token).
    :param name: which token of ``token_file`` to use; the first when empty.
    :returns: the token.
    :raises TokenFileError: no usable token (the generated one is missing
        until the gateway first ran, or unreadable for this user).
    """
    tokens = configured_tokens(http)
    if not tokens:
        path = generated_token_path(spool)
        if not os.path.lexists(path):
            raise TokenFileError(f"{path} does not exist yet; start the gateway once, or set http.token_file")
        tokens = _read_generated(path)
    if name:
        for token in tokens:
            if token.name == name:
                return token.token
        raise TokenFileError(f"no token named {name!r}")
    return tokens[0].token
