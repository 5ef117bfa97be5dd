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

The users file
--------------
One user per line; ``#`` comments and blank lines are skipped::

    # USER:scrypt$N$r$p$salt$hash   type 2 (user name and passcode) only
    alice:scrypt$16384$8$1$...$...
    # USER:name-only                type 1 (user name only), never a passcode
    ct-console:name-only

A salted scrypt hash (RFC 7914, made by :func:`hash_passcode`;
``python -m gateway.identity_check USER`` prints a line) admits that user
with identity type 2 and the right passcode, and never with type 1: a
requestor that knows only the name does not get in. ``name-only`` admits
type 1 and never type 2. Anything else (an empty value, a bare name, a
clear-text passcode, a malformed hash, a user listed twice) is refused when
the configuration is loaded, with the file and line.

Passcode checks off the reactor
-------------------------------
scrypt costs tens of milliseconds of CPU and 16 MiB by design, so a listener
never runs it on the reactor thread: :class:`PasscodePool` runs at most
``max(1, cores - 1)`` checks at a time on threads of its own (hashlib
releases the GIL while scrypt runs) at the lowest CPU priority (nice 19,
per thread), keeps a short queue, and refuses a
check beyond it at once; the acceptor answers that A-ASSOCIATE-RJ transient,
local limit exceeded (2, 3, 2; PS3.8 Table 9-21), so a flood of wrong
passcodes costs at most those cores and cannot grow a backlog. Every type 2
identity costs exactly one scrypt: an unknown user and a ``name-only`` user
are checked against a fixed dummy hash with the same parameters as the
file's, so how long a refusal takes does not tell which user names exist.

Kerberos, SAML and JWT are checked by plugins
(:class:`~gateway.interfaces.IUserIdentityVerifier`), named per listener and
identity type; a type without one is refused.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import os
import threading
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Any, Callable, Mapping, Protocol

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.python.failure import Failure

from gateway.blocking import IBlockingRunner, ThreadPoolRunner
from gateway.interfaces import IUserIdentityVerifier
from gateway.ul.errors import RejectReasonPresentation, RejectReasonUser, RejectResult, RejectSource
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
    """The shape of a verifier plugin as the checker calls it (see :class:`IUserIdentityVerifier`)."""

    def verify(self, identity: UserIdentityRQ) -> "Verdict | Deferred[Verdict]":
        """Check one identity.

        :param identity: the 0x58 sub-item.
        :returns: the verdict, or a Deferred firing with it.
        """


# -- passcodes -----------------------------------------------------------------------------

#: scrypt parameters (RFC 7914): N=2**14, r=8, p=1 costs about 16 MiB and
#: tens of milliseconds, once per association.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1

#: The most memory one check may use (128 * r * N bytes, RFC 7914 section 6);
#: a users file asking for more is refused at load.
SCRYPT_MAX_MEMORY = 2**26

#: The value of a users-file line for a user who may give only a user name (type 1).
NAME_ONLY = "name-only"


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
    digest = hashlib.scrypt(passcode.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=32, maxmem=2 * SCRYPT_MAX_MEMORY)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


@dataclass(frozen=True)
class ScryptHash:
    """A parsed ``scrypt$N$r$p$salt$hash`` value.

    :ivar n: the cost parameter, a power of two.
    :ivar r: the block size.
    :ivar p: the parallelism.
    :ivar salt: the salt.
    :ivar digest: the expected output.
    """

    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes


def parse_hash(stored: str) -> ScryptHash:
    """Parse and bound-check a stored hash.

    :param stored: ``scrypt$N$r$p$salt$hash``.
    :returns: its fields.
    :raises ValueError: saying what is wrong.
    """
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("expected scrypt$N$r$p$salt$hash")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except ValueError as error:
        raise ValueError(f"malformed scrypt hash ({error})") from None
    if n < 2 or n & (n - 1):
        raise ValueError(f"scrypt N must be a power of two, got {n}")
    if not 1 <= r <= 64 or not 1 <= p <= 16:
        raise ValueError(f"scrypt r must be 1-64 and p 1-16, got r={r} p={p}")
    if 128 * r * n > SCRYPT_MAX_MEMORY:
        raise ValueError(f"scrypt N={n} r={r} needs {128 * r * n >> 20} MiB per check; at most {SCRYPT_MAX_MEMORY >> 20} MiB")
    if len(salt) < 8 or len(digest) < 16:
        raise ValueError("the scrypt salt must have at least 8 bytes and the hash at least 16")
    return ScryptHash(n, r, p, salt, digest)


def verify_passcode(stored: str, passcode: bytes) -> bool:
    """Check a passcode against a stored hash, in constant time (this blocks: run it in a :class:`PasscodePool`).

    :param stored: a value made by :func:`hash_passcode`.
    :param passcode: the passcode as sent (PS3.7 D.3.3.7.1: the secondary field).
    :returns: whether it matches; ``False`` for a malformed stored value.
    """
    try:
        parsed = parse_hash(stored)
        actual = hashlib.scrypt(
            passcode, salt=parsed.salt, n=parsed.n, r=parsed.r, p=parsed.p, dklen=len(parsed.digest),
            maxmem=2 * SCRYPT_MAX_MEMORY,
        )
    except (ValueError, TypeError, MemoryError):
        return False
    return hmac.compare_digest(actual, parsed.digest)


def dummy_hash(users: Mapping[str, str]) -> str:
    """A hash no passcode matches, with the scrypt parameters most of ``users`` use.

    Unknown and ``name-only`` users are checked against it, so a refusal
    costs what a wrong passcode for a real user costs.

    :param users: ``{user: stored hash or ""}``.
    :returns: ``scrypt$...`` with a random salt and digest (the defaults' parameters when no user has a hash).
    """
    counts: collections.Counter[tuple[int, int, int]] = collections.Counter()
    for stored in users.values():
        try:
            parsed = parse_hash(stored)
        except ValueError:
            continue
        counts[(parsed.n, parsed.r, parsed.p)] += 1
    n, r, p = max(counts, key=lambda k: (counts[k], k)) if counts else (SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${n}${r}${p}${_b64(os.urandom(16))}${_b64(os.urandom(32))}"


class UsersFileError(Exception):
    """The users file cannot be read or has a malformed line."""


def load_users(path: str) -> dict[str, str]:
    """Read a users file (see the module documentation for its lines).

    :param path: the file.
    :returns: ``{user: stored hash, or "" for a name-only user}``.
    :raises UsersFileError: when the file cannot be read or a line is malformed, naming ``path:line``.
    """
    try:
        with open(path, encoding="utf-8") as stream:
            lines = stream.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UsersFileError(f"cannot read the users file {path}: {error}") from error
    users: dict[str, str] = {}
    seen: dict[str, int] = {}
    expected = f"expected 'USER:scrypt$N$r$p$salt$hash' or 'USER:{NAME_ONLY}'"
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        user, colon, stored = text.partition(":")
        user, stored = user.strip(), stored.strip()
        where = f"{path}:{number}"
        if not colon:
            raise UsersFileError(f"{where}: {expected} (a bare user name no longer means name-only)")
        if not user or any(c.isspace() or not c.isprintable() for c in user):
            raise UsersFileError(f"{where}: the user name must be non-empty, without spaces or control characters")
        if user in seen:
            raise UsersFileError(f"{where}: user {user!r} is already listed on line {seen[user]}")
        if stored == NAME_ONLY:
            stored = ""
        elif not stored:
            raise UsersFileError(f"{where}: no passcode hash; {expected}")
        elif not stored.startswith("scrypt$"):
            raise UsersFileError(f"{where}: {expected} (never a clear-text passcode)")
        else:
            try:
                parse_hash(stored)
            except ValueError as error:
                raise UsersFileError(f"{where}: {error}") from None
        seen[user] = number
        users[user] = stored
    return users


class PoolFull(Exception):
    """Every passcode check slot and every queue place is taken."""


class PasscodePool:
    """Runs scrypt checks off the reactor thread, a bounded number at a time.

    At most ``workers`` checks are handed to ``runner`` at once; up to
    ``queue`` more wait here, first come first served; one more is refused
    with :class:`PoolFull` rather than queued. The runner's own queue is
    never used, so the bound holds whatever the runner (a thread pool in
    production, a controllable runner in tests).

    :param runner: where checks run (:meth:`for_reactor` makes a thread pool).
    :param workers: checks at a time.
    :param queue: checks that may wait.
    :param check: the blocking check (:func:`verify_passcode`).
    """

    def __init__(
        self,
        runner: IBlockingRunner,
        workers: int,
        queue: int,
        check: Callable[[str, bytes], bool] = verify_passcode,
    ) -> None:
        self._runner = runner
        self.workers = max(1, workers)
        self.queue = max(0, queue)
        self._check = check
        self.running = 0
        self._waiting: collections.deque[tuple[Deferred[bool], str, bytes]] = collections.deque()
        #: Checks refused because the pool was full, since start.
        self.refused = 0
        #: Checks run (each one scrypt), since start.
        self.checked = 0

    @classmethod
    def for_reactor(cls, reactor: Any, cores: int | None = None, queue: int | None = None) -> "PasscodePool":
        """A pool of ``max(1, cores - 1)`` threads started and stopped with ``reactor``.

        :param reactor: the reactor.
        :param cores: CPUs to count (``os.cpu_count()`` by default).
        :param queue: checks that may wait (twice the workers by default).
        :returns: the pool.
        """
        workers = max(1, (cores or os.cpu_count() or 1) - 1)
        runner = ThreadPoolRunner.dedicated(reactor, name="passcode", minthreads=0, maxthreads=workers)
        return cls(runner, workers, 2 * workers if queue is None else queue, check=background_verify)

    @property
    def waiting(self) -> int:
        """Checks waiting for a free worker."""
        return len(self._waiting)

    def submit(self, stored: str, passcode: bytes) -> "Deferred[bool]":
        """Check ``passcode`` against ``stored`` when a worker is free.

        :param stored: the hash (a real user's, or the dummy).
        :param passcode: the passcode given.
        :returns: a Deferred firing with whether it matches.
        :raises PoolFull: when ``workers`` checks run and ``queue`` wait already.
        """
        result: Deferred[bool] = Deferred()
        if self.running < self.workers:
            self._start(result, stored, passcode)
        elif len(self._waiting) < self.queue:
            self._waiting.append((result, stored, passcode))
        else:
            self.refused += 1
            raise PoolFull(f"{self.running} passcode checks running and {len(self._waiting)} waiting")
        return result

    def _start(self, result: "Deferred[bool]", stored: str, passcode: bytes) -> None:
        self.running += 1
        self.checked += 1
        running = self._runner.run(self._check, stored, passcode)

        def done(outcome: object) -> None:
            self.running -= 1
            if self._waiting:
                self._start(*self._waiting.popleft())
            if isinstance(outcome, Failure):
                result.callback(False)
            else:
                result.callback(bool(outcome))

        running.addBoth(done)


#: How much nicer (Linux ``nice``, per thread, capped at 19) than the process the scrypt threads run.
#: bench/identity.py measured nice +10 and 19 on a loaded 2-core machine: with 19 the C-STORE
#: median of another listener moved within the noise under six wrong-passcode clients.
SCRYPT_NICENESS = 19

_thread_state = threading.local()


def background_verify(stored: str, passcode: bytes) -> bool:
    """:func:`verify_passcode` at a lower CPU priority than the reactor thread.

    The first call on a thread raises that thread's nice value by
    :data:`SCRYPT_NICENESS` (Linux schedules threads separately, and an
    unprivileged process may always lower its own priority), so a flood of
    passcode checks uses the CPU the reactor leaves over rather than
    competing with it for a core. Where that is not possible the check runs
    at normal priority. On a machine busy with other work the checks then
    take longer; a check still queued after ``acse_timeout`` is answered
    A-ASSOCIATE-RJ (2, 3, 1) by the acceptor.

    :param stored: the hash.
    :param passcode: the passcode given.
    :returns: whether it matches.
    """
    if not getattr(_thread_state, "niced", False):
        _thread_state.niced = True
        try:
            native = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, native, min(19, os.getpriority(os.PRIO_PROCESS, native) + SCRYPT_NICENESS))
        except (OSError, AttributeError):
            pass
    return verify_passcode(stored, passcode)


class InlinePasscodes:
    """Runs each check at once on the caller's thread (tests, and ``check`` without a pool)."""

    def submit(self, stored: str, passcode: bytes) -> "Deferred[bool]":
        """Check now.

        :param stored: the hash.
        :param passcode: the passcode.
        :returns: a fired Deferred.
        """
        return succeed(verify_passcode(stored, passcode))


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

#: Too many passcode checks at once: rejected-transient, service-provider (presentation),
#: local-limit-exceeded (PS3.8 Table 9-21), so the requestor retries later.
BUSY_REJECTION = AAssociateRJ(
    int(RejectResult.TRANSIENT),
    int(RejectSource.SERVICE_PROVIDER_PRESENTATION),
    int(RejectReasonPresentation.LOCAL_LIMIT_EXCEEDED),
)


def _username(identity: UserIdentityRQ) -> str:
    """PS3.7 D.3.3.7.1: the primary field of types 1 and 2 is the user name, UTF-8."""
    return identity.primary_field.decode("utf-8", "replace")


@dataclass(frozen=True)
class UserIdentityChecker:
    """Applies a listener's user identity policy to A-ASSOCIATE-RQs.

    :ivar policy: off, optional or required.
    :ivar users: ``{user: stored hash, or "" for name-only}`` for types 1 and 2 (see :func:`load_users`).
    :ivar verifiers: plugins for types 3 to 5, by type.
    :ivar passcodes: where scrypt runs (a :class:`PasscodePool`); at once on
        the caller's thread when not given.
    :ivar dummy: the hash unknown and name-only users are checked against
        (:func:`dummy_hash` of ``users`` when empty).
    """

    policy: IdentityPolicy = IdentityPolicy.OFF
    users: Mapping[str, str] = field(default_factory=dict)
    verifiers: Mapping[int, IAssertionVerifier] = field(default_factory=dict)
    passcodes: Any = None
    dummy: str = ""

    def __post_init__(self) -> None:
        """Make the dummy hash when none was given."""
        if not self.dummy:
            object.__setattr__(self, "dummy", dummy_hash(self.users))

    def verify(self, identity: UserIdentityRQ) -> "Deferred[Verdict]":
        """Check one identity against the users file or a plugin.

        :param identity: the 0x58 sub-item.
        :returns: a Deferred firing with the verdict.
        :raises PoolFull: when a passcode check cannot even wait.
        """
        kind = identity.identity_type
        if kind == IdentityType.USERNAME:
            username = _username(identity)
            stored = self.users.get(username)
            if stored is None:
                return succeed(Verdict(False, username, "unknown user"))
            if stored:
                # The user has a passcode: the name alone is not enough.
                return succeed(Verdict(False, username, "this user has a passcode; a user name alone is refused"))
            return succeed(Verdict(True, username))
        if kind == IdentityType.USERNAME_PASSCODE:
            return self._verify_passcode(identity)
        verifier = self.verifiers.get(kind)
        if verifier is None:
            return succeed(Verdict(False, "", f"user identity type {kind} has no verifier here"))
        return maybeDeferred(verifier.verify, identity).addCallbacks(
            _checked_verdict, lambda failure: Verdict(False, "", f"the verifier failed: {failure.getErrorMessage()}")
        )

    def _verify_passcode(self, identity: UserIdentityRQ) -> "Deferred[Verdict]":
        """Type 2: one scrypt, against the user's hash or the dummy (same cost either way)."""
        username = _username(identity)
        stored = self.users.get(username)
        if stored is None:
            target, why = self.dummy, "unknown user"
        elif not stored:
            target, why = self.dummy, "this user may give a user name only (no passcode is set)"
        else:
            target, why = stored, "wrong passcode"
        real = bool(stored)
        passcodes = self.passcodes if self.passcodes is not None else InlinePasscodes()
        checked: Deferred[bool] = passcodes.submit(target, identity.secondary_field)
        return checked.addCallback(
            lambda match: Verdict(True, username) if match and real else Verdict(False, username, why)
        )

    def decide(self, rq: AAssociateRQ) -> "Deferred[IdentityOutcome]":
        """Decide on a request's user identity (PS3.7 D.3.3.7).

        :param rq: the A-ASSOCIATE-RQ.
        :returns: a Deferred firing with the outcome: a rejection, or the
            0x59 sub-item to return (if any). Already fired unless a
            passcode check or a plugin has to run.
        """
        identity = rq.user_information.user_identity_rq if rq.user_information is not None else None
        if self.policy is IdentityPolicy.OFF:
            # Not negotiated: ignored, and never answered with 0x59.
            return succeed(IdentityOutcome())
        if identity is None:
            if self.policy is IdentityPolicy.REQUIRED:
                return succeed(
                    IdentityOutcome(
                        rejection=IDENTITY_REJECTION, verdict=Verdict(False, "", "no user identity given; one is required")
                    )
                )
            return succeed(IdentityOutcome())
        kind = identity.identity_type
        try:
            verdict = self.verify(identity)
        except PoolFull:
            busy = Verdict(False, _username(identity), "too many passcode checks at once; try again later")
            return succeed(IdentityOutcome(rejection=BUSY_REJECTION, verdict=busy, identity_type=kind))

        def outcome(verdict: Verdict) -> IdentityOutcome:
            if not verdict.accepted:
                return IdentityOutcome(rejection=IDENTITY_REJECTION, verdict=verdict, identity_type=kind)
            # PS3.7 D.3.3.7.2: the AC sub-item only when a positive response was requested.
            item = UserIdentityAC(verdict.server_response) if identity.positive_response_requested else None
            return IdentityOutcome(ac_item=item, verdict=verdict, identity_type=kind)

        return verdict.addCallback(outcome)

    def check(self, rq: AAssociateRQ) -> IdentityOutcome:
        """:meth:`decide`, for callers that need the answer now (no pool, synchronous plugins).

        :param rq: the A-ASSOCIATE-RQ.
        :returns: the outcome.
        :raises RuntimeError: when the decision has to wait (a pool or an asynchronous plugin).
        """
        results: list[Any] = []
        self.decide(rq).addBoth(results.append)
        if not results:
            raise RuntimeError("the user identity decision is asynchronous; use decide()")
        if isinstance(results[0], Failure):
            results[0].raiseException()
        outcome: IdentityOutcome = results[0]
        return outcome


def _checked_verdict(result: object) -> Verdict:
    """A plugin's answer, refused unless it is a :class:`Verdict`."""
    if isinstance(result, Verdict):
        return result
    return Verdict(False, "", f"the verifier returned {type(result).__name__}, not a Verdict")


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
