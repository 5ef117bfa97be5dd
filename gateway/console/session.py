"""Console sessions: a signed cookie, idle timeout and absolute lifetime, CSRF tokens (issue 18).

The session lives in the cookie ``gw_console`` itself, signed with
HMAC-SHA256 by the console key (``console.session_key_file``, else
``<spool>/console-key`` made at first start with mode 0600). Nothing is kept
on the node, so with several nodes behind a load balancer a session works on
every node that shares the key (give every node the same
``session_key_file``). The cookie carries the session id, the user, the
fingerprint of the user's password hash and role (a password or role change
ends every session of that user), when the session began (absolute lifetime)
and when it was last used (idle timeout); the last-use time is renewed by
re-issuing the cookie on each page.

The CSRF token of a session is HMAC-SHA256(key, ``"csrf:" + session id``):
every form carries it in a hidden input ``csrf`` and every POST is checked
against it (a cross-site page cannot read it; SameSite=Strict is the second
line). The sign-in form uses a pre-session token bound to a cookie of its own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass

__all__ = ["COOKIE", "Session", "SessionSigner", "load_or_create_key"]

COOKIE = b"gw_console"
_KEY_BYTES = 32


@dataclass(frozen=True)
class Session:
    """A signed-in user's session, as the cookie says."""

    sid: str
    user: str
    fingerprint: str
    started: float
    last_used: float


def load_or_create_key(path: str) -> bytes:
    """The key in ``path``; created (random, mode 0600) when the file does not exist."""
    try:
        with open(path, "rb") as handle:
            key = handle.read().strip()
    except FileNotFoundError:
        key = secrets.token_hex(_KEY_BYTES).encode("ascii")
        # Written whole under a temporary name, then linked in place: nodes of a shared spool starting
        # together all end up with the first key written (os.link fails for the others, which read it).
        temporary = f"{path}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return load_or_create_key(path)
        finally:
            os.unlink(temporary)
        return key
    if len(key) < 16:
        raise ValueError(f"{path}: the console session key must be at least 16 bytes")
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    """Makes and checks session cookies and CSRF tokens.

    :param key: the signing key.
    :param timeout: seconds a session lasts without a request.
    :param lifetime: seconds a session lasts at most.
    """

    def __init__(self, key: bytes, timeout: float, lifetime: float) -> None:
        self._key = key
        self.timeout = timeout
        self.lifetime = lifetime

    def _sign(self, purpose: str, data: bytes) -> str:
        return hmac.new(self._key, purpose.encode("ascii") + b"\0" + data, hashlib.sha256).hexdigest()

    def new(self, user: str, fingerprint: str, now: float) -> Session:
        """A fresh session (new id: a sign-in never reuses one, against fixation)."""
        return Session(secrets.token_urlsafe(18), user, fingerprint, now, now)

    def encode(self, session: Session) -> bytes:
        """The cookie value of ``session``."""
        payload = json.dumps(
            [session.sid, session.user, session.fingerprint, round(session.started, 3), round(session.last_used, 3)],
            separators=(",", ":"),
        ).encode("utf-8")
        body = _b64(payload)
        return f"{body}.{self._sign('session', body.encode('ascii'))}".encode("ascii")

    def decode(self, value: bytes | None, now: float) -> Session | None:
        """The session of a cookie, or ``None`` (missing, forged, idle too long, too old)."""
        if not value or len(value) > 1024:
            return None
        try:
            body, _, signature = value.decode("ascii").rpartition(".")
        except UnicodeDecodeError:
            return None
        if not body or not hmac.compare_digest(signature, self._sign("session", body.encode("ascii"))):
            return None
        try:
            sid, user, fp, started, last_used = json.loads(_unb64(body))
            session = Session(str(sid), str(user), str(fp), float(started), float(last_used))
        except (ValueError, TypeError):
            return None
        if now - session.last_used > self.timeout or now - session.started > self.lifetime:
            return None
        if session.last_used > now + 300:
            return None
        return session

    def csrf(self, sid: str) -> str:
        """The CSRF token of a session (or of a pre-session id for the sign-in form)."""
        return self._sign("csrf", sid.encode("utf-8"))

    def csrf_ok(self, sid: str, given: str | None) -> bool:
        """Whether ``given`` is the session's CSRF token (constant-time)."""
        return bool(given) and hmac.compare_digest(given.encode("utf-8"), self.csrf(sid).encode("ascii"))  # type: ignore[union-attr]
