"""User identity negotiation on the acceptor side (PS3.7 D.3.3.7; HARDENING P18, decision 7).

A requestor may send a User Identity sub-item (0x58) in its A-ASSOCIATE-RQ:
a user name (type 1), a user name and passcode (type 2), a Kerberos ticket
(3), a SAML assertion (4) or a JSON Web Token (5), and ask for a positive
response. This module decides, per listener, what to do with it:

* policy ``off``: the sub-item is ignored; the association goes on as if it
  were absent, and no 0x59 is returned (PS3.7 D.3.3.7: an acceptor that does
  not support user identity negotiation ignores the sub-item);
* policy ``optional``: no identity is fine; an identity that is given must
  verify;
* policy ``required``: an identity must be given and verify.

A failure is answered with A-ASSOCIATE-RJ rejected-permanent, source
service-user, reason 1 no-reason-given (PS3.7 D.3.3.7: "the association
shall be rejected", with no dedicated reason code; DCMTK and pynetdicom use
the same triple). On success with the positive-response flag set, the
A-ASSOCIATE-AC carries a 0x59 sub-item (PS3.7 D.3.3.7.2) whose server
response is empty for types 1 and 2 and, for the assertion types, whatever
the verifying plugin returns.

Passcodes are checked against a file of salted scrypt hashes (RFC 7914),
one ``user:scrypt$N$r$p$salt$hash`` line per user, made with
:func:`hash_passcode` (``python -m gateway.identity_check USER`` prints a
line). Kerberos, SAML and JWT are checked by plugins
(:class:`IAssertionVerifier`), registered by identity type.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Mapping, Protocol

from zope.interface import Attribute, Interface

from gateway.ul.errors import RejectReasonUser, RejectResult, RejectSource
from gateway.ul.items import UserIdentityAC, UserIdentityRQ
from gateway.ul.pdu import AAssociateRJ, AAssociateRQ


class IdentityType(IntEnum):
    """User-Identity-Type (PS3.7 Table D.3-14)."""

    USERNAME = 1
    USERNAME_PASSCODE = 2
    KERBEROS = 3
    SAML = 4
    JWT = 5


class IdentityPolicy(Enum):
    """What a listener demands of user identity."""

    OFF = "off"
    OPTIONAL = "optional"
    REQUIRED = "required"


@dataclass(frozen=True)
class Verdict:
    """What a verifier concluded about one identity.

    :ivar accepted: whether the identity is good.
    :ivar username: who it names (never a passcode or token), for the audit trail.
    :ivar reason: why it was refused, or ``"accepted"``.
    :ivar server_response: the 0x59 server response (Kerberos server
        ticket, SAML response, JWT), empty for types 1 and 2.
    """

    accepted: bool
    username: str
    reason: str = "accepted"
    server_response: bytes = b""


class IAssertionVerifier(Protocol):
    """A plugin that checks a Kerberos ticket, SAML assertion or JWT (types 3 to 5)."""

    def verify(self, identity: UserIdentityRQ) -> Verdict:
        """Check one identity.

        :param identity: the 0x58 sub-item.
        :returns: the verdict.
        """


class IUserIdentityVerifier(Interface):
    """A drop-in plugin checking Kerberos tickets, SAML assertions or JWTs (types 3 to 5).

    Declared as a Twisted plugin in a plugin folder (``@implementer(IPlugin,
    IUserIdentityVerifier)``) and named by a listener's
    ``user_identity.verifiers`` (``{jwt: my_jwt_plugin}``).
    """

    name = Attribute("The plugin's name as the configuration writes it, a str.")

    def verify(identity: UserIdentityRQ) -> Verdict:  # type: ignore[misc]
        """Check one identity.

        :param identity: the 0x58 sub-item.
        :returns: the verdict (with the 0x59 server response on success).
        """


# -- passcodes -----------------------------------------------------------------------------

#: scrypt parameters (RFC 7914): N=2**14, r=8, p=1 costs about 16 MiB and
#: tens of milliseconds, once per association.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_passcode(passcode: str, *, salt: bytes | None = None, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """Hash a passcode for the users file.

    :param passcode: the passcode.
    :param salt: 16 random bytes by default.
    :param n: scrypt's cost parameter (a power of two).
    :param r: scrypt's block size.
    :param p: scrypt's parallelism.
    :returns: ``scrypt$N$r$p$salt$hash`` (base64 fields).
    """
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.scrypt(passcode.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_passcode(stored: str, passcode: bytes) -> bool:
    """Check a passcode against a stored hash, in constant time.

    :param stored: a value made by :func:`hash_passcode`.
    :param passcode: the passcode as sent (PS3.7 D.3.3.7.1: the secondary field).
    :returns: whether it matches; ``False`` for a malformed stored value.
    """
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return False
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt = base64.b64decode(parts[4], validate=True)
        expected = base64.b64decode(parts[5], validate=True)
        actual = hashlib.scrypt(passcode, salt=salt, n=n, r=r, p=p, dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


class UsersFileError(Exception):
    """The users file cannot be read or has a malformed line."""


def load_users(path: str) -> dict[str, str]:
    """Read a users file: ``user:scrypt$...`` lines; ``#`` comments and blank lines are skipped.

    A line with only a user name (``user:`` or ``user``) lets that user in
    with type 1 (user name only) but never with a passcode.

    :param path: the file.
    :returns: ``{user: stored hash or ""}``.
    :raises UsersFileError: when the file cannot be read or a line is malformed.
    """
    try:
        with open(path, encoding="utf-8") as stream:
            lines = stream.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UsersFileError(f"cannot read the users file {path}: {error}") from error
    users: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        user, _, stored = text.partition(":")
        if not user or (stored and not stored.startswith("scrypt$")):
            raise UsersFileError(f"{path}:{number}: expected 'user:scrypt$N$r$p$salt$hash'")
        users[user] = stored
    return users


# -- the policy ----------------------------------------------------------------------------


@dataclass(frozen=True)
class IdentityOutcome:
    """The answer to one request's user identity.

    :ivar rejection: the A-ASSOCIATE-RJ to send, or ``None`` to go on.
    :ivar ac_item: the 0x59 sub-item to put in the AC, or ``None``.
    :ivar verdict: the verifier's verdict, ``None`` when no identity was
        checked (absent, or policy off).
    :ivar identity_type: the type presented, 0 when none.
    """

    rejection: AAssociateRJ | None = None
    ac_item: UserIdentityAC | None = None
    verdict: Verdict | None = None
    identity_type: int = 0


#: PS3.7 D.3.3.7: user identity failure -> rejected-permanent, service-user, no-reason-given.
IDENTITY_REJECTION = AAssociateRJ(
    int(RejectResult.PERMANENT), int(RejectSource.SERVICE_USER), int(RejectReasonUser.NO_REASON)
)


@dataclass(frozen=True)
class UserIdentityChecker:
    """Applies a listener's user identity policy to A-ASSOCIATE-RQs.

    :ivar policy: off, optional or required.
    :ivar users: ``{user: stored hash}`` for types 1 and 2 (see :func:`load_users`).
    :ivar verifiers: plugins for types 3 to 5, by type.
    """

    policy: IdentityPolicy = IdentityPolicy.OFF
    users: Mapping[str, str] = field(default_factory=dict)
    verifiers: Mapping[int, IAssertionVerifier] = field(default_factory=dict)

    def verify(self, identity: UserIdentityRQ) -> Verdict:
        """Check one identity against the users file or a plugin.

        :param identity: the 0x58 sub-item.
        :returns: the verdict.
        """
        kind = identity.identity_type
        if kind in (IdentityType.USERNAME, IdentityType.USERNAME_PASSCODE):
            # PS3.7 D.3.3.7.1: the primary field is the user name, UTF-8.
            username = identity.primary_field.decode("utf-8", "replace")
            if username not in self.users:
                return Verdict(False, username, "unknown user")
            if kind == IdentityType.USERNAME:
                return Verdict(True, username)
            stored = self.users[username]
            if not stored:
                return Verdict(False, username, "no passcode is set for this user")
            if not verify_passcode(stored, identity.secondary_field):
                return Verdict(False, username, "wrong passcode")
            return Verdict(True, username)
        verifier = self.verifiers.get(kind)
        if verifier is None:
            return Verdict(False, "", f"user identity type {kind} is not supported here")
        return verifier.verify(identity)

    def check(self, rq: AAssociateRQ) -> IdentityOutcome:
        """Decide on a request's user identity (PS3.7 D.3.3.7).

        :param rq: the A-ASSOCIATE-RQ.
        :returns: the outcome: a rejection, or the 0x59 sub-item to return (if any).
        """
        identity = rq.user_information.user_identity_rq if rq.user_information is not None else None
        if self.policy is IdentityPolicy.OFF:
            # Not negotiated: ignored, and never answered with 0x59.
            return IdentityOutcome()
        if identity is None:
            if self.policy is IdentityPolicy.REQUIRED:
                return IdentityOutcome(
                    rejection=IDENTITY_REJECTION, verdict=Verdict(False, "", "no user identity given; one is required")
                )
            return IdentityOutcome()
        verdict = self.verify(identity)
        if not verdict.accepted:
            return IdentityOutcome(rejection=IDENTITY_REJECTION, verdict=verdict, identity_type=identity.identity_type)
        # PS3.7 D.3.3.7.2: the AC sub-item only when a positive response was requested.
        item = UserIdentityAC(verdict.server_response) if identity.positive_response_requested else None
        return IdentityOutcome(ac_item=item, verdict=verdict, identity_type=identity.identity_type)


def main(argv: list[str] | None = None) -> int:
    """Print a users-file line for a user, reading the passcode from the terminal.

    :param argv: ``[user]``.
    :returns: the exit status.
    """
    import getpass
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m gateway.identity_check USER", file=sys.stderr)
        return 2
    passcode = getpass.getpass(f"passcode for {args[0]}: ")
    print(f"{args[0]}:{hash_passcode(passcode)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
