"""The ``Authorization`` of the gateway's requests to a DICOMweb destination (issue 17).

One :class:`Authenticator` per destination, made by :func:`authenticator_for`
from its ``auth`` section:

- ``none``: no header;
- ``basic`` (RFC 7617): user name and a password read from a file;
- ``bearer`` (RFC 6750): a static token read from a file, read again when
  the file changes (its size, modification time or inode), so an operator
  or a sidecar can rotate it without a reload;
- ``oauth2`` (RFC 6749 4.4, client credentials grant): the token is asked
  from the token endpoint with the client id and a secret read from a file
  (HTTP Basic client authentication, RFC 6749 2.3.1), cached, and asked
  again :data:`REFRESH_MARGIN` of its lifetime before it expires; after a
  401 the sender calls :meth:`Authenticator.invalidate` and tries once more
  before it reports the destination down.

Secrets are read when needed and kept only in memory: the configuration
holds file paths, and no message of :class:`AuthError` holds a secret (a
token endpoint's answer contributes only its ``error`` code, RFC 6749 5.2).
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Final, Mapping, Protocol
from urllib.parse import urlencode

from twisted.internet.interfaces import IReactorTime

from gateway.blocking import IBlockingRunner
from gateway.config.schema import DicomWebAuth
from gateway.dicomweb.stow_response import printable

__all__ = [
    "Answer",
    "AuthError",
    "Authenticator",
    "BasicAuth",
    "BearerAuth",
    "Fetch",
    "NoAuth",
    "OAuth2ClientCredentials",
    "authenticator_for",
]

#: The largest secret file read (a token or password longer than this is a mistake).
MAX_SECRET: Final = 64 * 1024
#: Fraction of a token's lifetime left when it is renewed.
REFRESH_MARGIN: Final = 0.1
#: ...but at least this many seconds before it expires.
REFRESH_AT_LEAST: Final = 30.0
#: The lifetime assumed when the token endpoint gives none (RFC 6749 5.1: expires_in is recommended).
DEFAULT_LIFETIME: Final = 300.0


class AuthError(Exception):
    """Credentials could not be had (a file missing or empty, the token endpoint refusing): the destination's fault."""


@dataclass(frozen=True)
class Answer:
    """An HTTP response as the sender's client returns it.

    :ivar code: the status code.
    :ivar headers: lower-case names -> the last value.
    :ivar body: the body, bounded by the client.
    """

    code: int
    headers: Mapping[str, str]
    body: bytes


#: ``fetch(method, url, headers, body)``: one HTTP request (the sender's client).
Fetch = Callable[[bytes, str, Mapping[bytes, bytes], bytes], Awaitable[Answer]]


class Authenticator(Protocol):
    """Gives the ``Authorization`` header of the next request."""

    async def header(self) -> bytes | None:
        """The header's value, ``None`` for no header.

        :raises AuthError: no credentials can be had.
        """

    def invalidate(self) -> bool:
        """The server answered 401: forget what is cached.

        :returns: whether asking again may give other credentials (a new
            OAuth2 token, a bearer file changed meanwhile).
        """


class NoAuth:
    """No ``Authorization`` header."""

    async def header(self) -> bytes | None:
        """No header."""
        return None

    def invalidate(self) -> bool:
        """Nothing to renew."""
        return False


class _SecretFile:
    """A secret in a file, read again when the file changes (size, mtime or inode).

    :param path: the file.
    :param runner: runs the stat and the read (blocking).
    """

    def __init__(self, path: str, runner: IBlockingRunner) -> None:
        self.path = path
        self.runner = runner
        self._stamp: tuple[int, int, int] | None = None
        self._value = b""

    def _read(self) -> tuple[tuple[int, int, int], bytes] | None:
        info = os.stat(self.path)
        stamp = (info.st_ino, info.st_size, info.st_mtime_ns)
        if stamp == self._stamp:
            return None
        with open(self.path, "rb") as handle:
            data = handle.read(MAX_SECRET + 1)
        return stamp, data

    async def value(self) -> bytes:
        """The secret, whitespace around it removed.

        :raises AuthError: the file is missing, unreadable, empty or too long.
        """
        try:
            read = await self.runner.run(self._read)
        except OSError as e:
            raise AuthError(f"cannot read {self.path}: {e.strerror or type(e).__name__}") from None
        if read is not None:
            stamp, data = read
            if len(data) > MAX_SECRET:
                raise AuthError(f"{self.path} is longer than {MAX_SECRET} bytes")
            value = data.strip()
            if not value or b"\n" in value or b"\r" in value:
                raise AuthError(f"{self.path} must hold one line, not empty")
            self._stamp, self._value = stamp, value
        return self._value

    def changed_since_read(self) -> bool:
        """Whether the file differs from what was read (blocking stat; cheap)."""
        try:
            info = os.stat(self.path)
        except OSError:
            return True
        return (info.st_ino, info.st_size, info.st_mtime_ns) != self._stamp


class BasicAuth:
    """HTTP basic (RFC 7617): ``user:password``, the password from a file.

    :param username: the user name (no ``:``, RFC 7617 2).
    :param password_file: the password's file.
    :param runner: runs the file reads.
    """

    def __init__(self, username: str, password_file: str, runner: IBlockingRunner) -> None:
        self.username = username.encode("utf-8")
        self.password = _SecretFile(password_file, runner)

    async def header(self) -> bytes | None:
        """``Basic base64(user:password)``."""
        return b"Basic " + base64.b64encode(self.username + b":" + await self.password.value())

    def invalidate(self) -> bool:
        """The password file may have changed: say so."""
        return self.password.changed_since_read()


class BearerAuth:
    """A static bearer token (RFC 6750 2.1) from a file, read again when it changes.

    :param token_file: the token's file.
    :param runner: runs the file reads.
    """

    def __init__(self, token_file: str, runner: IBlockingRunner) -> None:
        self.token = _SecretFile(token_file, runner)

    async def header(self) -> bytes | None:
        """``Bearer <token>``."""
        return b"Bearer " + await self.token.value()

    def invalidate(self) -> bool:
        """Worth another try only when the file changed."""
        return self.token.changed_since_read()


class OAuth2ClientCredentials:
    """An OAuth2 access token from the client credentials grant (RFC 6749 4.4), cached until near its expiry.

    :param config: the ``auth`` section (token URL, client id, secret file, scope).
    :param fetch: makes the token request.
    :param clock: says when the token expires.
    :param runner: runs the secret file's reads.
    """

    def __init__(self, config: DicomWebAuth, fetch: Fetch, clock: IReactorTime, runner: IBlockingRunner) -> None:
        self.config = config
        self.fetch = fetch
        self.clock = clock
        self.secret = _SecretFile(config.client_secret_file, runner)
        self._token: bytes | None = None
        self._renew_at = 0.0
        #: Token requests made (for tests and metrics).
        self.requests = 0

    async def header(self) -> bytes | None:
        """``Bearer <access token>``, asking a new token when none is cached or it is about to expire."""
        if self._token is None or self.clock.seconds() >= self._renew_at:
            await self._renew()
        assert self._token is not None
        return b"Bearer " + self._token

    def invalidate(self) -> bool:
        """Forget the token: the next request asks a new one."""
        self._token = None
        return True

    async def _renew(self) -> None:
        secret = await self.secret.value()
        # RFC 6749 2.3.1: client id and secret form-encoded, then HTTP Basic.
        credentials = _form(self.config.client_id) + b":" + _form(secret.decode("utf-8", "replace"))
        form = {"grant_type": "client_credentials"}
        if self.config.scope:
            form["scope"] = self.config.scope
        self.requests += 1
        asked = self.clock.seconds()
        try:
            answer = await self.fetch(
                b"POST",
                self.config.token_url,
                {
                    b"Authorization": b"Basic " + base64.b64encode(credentials),
                    b"Content-Type": b"application/x-www-form-urlencoded",
                    b"Accept": b"application/json",
                },
                urlencode(form).encode("ascii"),
            )
        except Exception as e:
            raise AuthError(f"token endpoint unreachable: {type(e).__name__}") from None
        document = _json_object(answer.body)
        if answer.code != 200:
            # RFC 6749 5.2: the error code is safe to show; the description may echo input, keep it short.
            error = printable(str(document.get("error", "")), 60)
            raise AuthError(f"token endpoint answered {answer.code}" + (f" ({error})" if error else ""))
        token = document.get("access_token")
        if not isinstance(token, str) or not token or any(c in token for c in "\r\n "):
            raise AuthError("token endpoint answered without a usable access_token")
        lifetime = document.get("expires_in", DEFAULT_LIFETIME)
        try:
            lifetime = max(1.0, float(lifetime))
        except (TypeError, ValueError):
            lifetime = DEFAULT_LIFETIME
        # Renew ahead of the expiry: REFRESH_MARGIN of the lifetime, at least
        # REFRESH_AT_LEAST seconds, but never sooner than half the lifetime.
        margin = min(max(lifetime * REFRESH_MARGIN, REFRESH_AT_LEAST), lifetime / 2)
        self._token = token.encode("ascii", "replace")
        self._renew_at = asked + lifetime - margin


def _form(value: str) -> bytes:
    """``application/x-www-form-urlencoded`` of one value (RFC 6749 Appendix B)."""
    return urlencode({"": value})[1:].encode("ascii")


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body[:65536]) if body else {}
    except (ValueError, RecursionError):
        return {}
    return document if isinstance(document, dict) else {}


def authenticator_for(config: DicomWebAuth, fetch: Fetch, clock: IReactorTime, runner: IBlockingRunner) -> Authenticator:
    """The authenticator of a destination's ``auth`` section.

    :param config: the section.
    :param fetch: the destination's HTTP client (for an OAuth2 token endpoint).
    :param clock: the clock.
    :param runner: runs secret file reads.
    """
    if config.kind == "basic":
        return BasicAuth(config.username, config.password_file, runner)
    if config.kind == "bearer":
        return BearerAuth(config.token_file, runner)
    if config.kind == "oauth2":
        return OAuth2ClientCredentials(config, fetch, clock, runner)
    return NoAuth()
