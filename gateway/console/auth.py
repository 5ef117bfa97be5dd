"""Roles, the sign-in throttle and the console's audit records (issue 18).

The throttle (against password guessing): after :data:`MAX_FAILURES` failed
sign-ins for one user name or from one address within :data:`WINDOW`
seconds, sign-in is answered 429 for :data:`LOCKOUT` seconds. It is kept in
memory per node (a restart or another node behind the load balancer starts
afresh); with N nodes an attacker gets at most N times the attempts, which
scrypt's cost still makes slow.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from gateway.console.users import ROLES

__all__ = ["MAX_FAILURES", "WINDOW", "LOCKOUT", "role_at_least", "SignInThrottle", "audit_sign_in", "audit_refusal"]

MAX_FAILURES = 5
WINDOW = 300.0
LOCKOUT = 60.0


def role_at_least(role: str, needed: str) -> bool:
    """Whether ``role`` may do what ``needed`` may (viewer < operator < admin)."""
    if role not in ROLES or needed not in ROLES:
        return False
    return ROLES.index(role) >= ROLES.index(needed)


class SignInThrottle:
    """Failed sign-ins per user name and per address; locks either out after too many.

    :param clock: returns the time now (seconds).
    """

    def __init__(self, clock: Callable[[], float], max_failures: int = MAX_FAILURES, window: float = WINDOW, lockout: float = LOCKOUT) -> None:
        self._clock = clock
        self.max_failures = max_failures
        self.window = window
        self.lockout = lockout
        self._failures: dict[str, deque[float]] = {}
        self._locked: dict[str, float] = {}

    def _keys(self, user: str, address: str) -> tuple[str, str]:
        return ("user:" + user.lower()[:64], "addr:" + address)

    def locked(self, user: str, address: str) -> bool:
        """Whether sign-in for this user or from this address is refused now."""
        now = self._clock()
        for key in self._keys(user, address):
            until = self._locked.get(key)
            if until is not None:
                if now < until:
                    return True
                del self._locked[key]
        return False

    def failed(self, user: str, address: str) -> None:
        """Count a failed sign-in."""
        now = self._clock()
        for key in self._keys(user, address):
            times = self._failures.setdefault(key, deque())
            times.append(now)
            while times and now - times[0] > self.window:
                times.popleft()
            if len(times) >= self.max_failures:
                self._locked[key] = now + self.lockout
                times.clear()
        if len(self._failures) > 10000:  # bounded memory under a spray of names
            for key in [k for k, v in self._failures.items() if not v or now - v[-1] > self.window]:
                del self._failures[key]

    def succeeded(self, user: str) -> None:
        """Forget the user's failures."""
        self._failures.pop(self._keys(user, "")[0], None)


def audit_sign_in(trail: Any, peer: str, username: str, success: bool, description: str) -> None:
    """Record a console sign-in (User Authentication, Login; PS3.15 A.5.3.14) on the gateway's trail."""
    if trail is None:
        return
    # identity_type 2: user name and password (PS3.7 D.3.3.7's numbering, as the DIMSE user identities).
    trail.user_authentication(
        peer=peer, calling_ae_title="", username=username, identity_type=2, success=success,
        description=description, listener="console",
    )


def audit_refusal(trail: Any, peer: str, username: str, reason: str, path: str) -> None:
    """Record a refused console request (Security Alert, Use of Restricted Function; PS3.15 A.5.3.11)."""
    if trail is None:
        return
    from gateway.audit import SECURITY_ALERT, SOURCE, USE_OF_RESTRICTED_FUNCTION, Outcome, Participant

    trail.emit(
        SECURITY_ALERT,
        "E",
        Outcome.MINOR_FAILURE,
        event_type=USE_OF_RESTRICTED_FUNCTION,
        description=f"console request refused: {reason}",
        disposition="console_refused",
        participants=(
            Participant(user_id=username, role=SOURCE.meaning, network_access_point=peer, requestor=True),
        ),
        extra={"reason": reason, "path": path[:200]},
    )
