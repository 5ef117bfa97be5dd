"""Roles and the sign-in throttle (issue 18)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.console.auth import SignInThrottle, role_at_least


class RoleTests(SynchronousTestCase):
    """Role ordering."""
    def test_order(self) -> None:
        """Roles are ordered viewer < operator < admin; an unknown role may do nothing."""
        self.assertTrue(role_at_least("admin", "operator"))
        self.assertTrue(role_at_least("operator", "operator"))
        self.assertFalse(role_at_least("viewer", "operator"))
        self.assertFalse(role_at_least("operator", "admin"))
        self.assertFalse(role_at_least("root", "viewer"))


class ThrottleTests(SynchronousTestCase):
    """The sign-in throttle."""
    def setUp(self) -> None:
        self.now = 0.0
        self.throttle = SignInThrottle(lambda: self.now)

    def test_five_failures_within_five_minutes_lock_for_a_minute(self) -> None:
        """Five failures within five minutes lock the user (from anywhere) and the address (for any user) for a minute."""
        for _ in range(4):
            self.throttle.failed("ada", "10.0.0.1")
            self.now += 60
        self.assertFalse(self.throttle.locked("ada", "10.0.0.2"))
        self.throttle.failed("ada", "10.0.0.1")
        self.assertTrue(self.throttle.locked("ada", "10.0.0.2"))  # the user, from anywhere
        self.assertTrue(self.throttle.locked("bob", "10.0.0.1"))  # the address, for any user
        self.assertFalse(self.throttle.locked("bob", "10.0.0.2"))
        self.now += 60.5
        self.assertFalse(self.throttle.locked("ada", "10.0.0.1"))

    def test_old_failures_forgotten(self) -> None:
        """Failures older than the window do not count."""
        for _ in range(4):
            self.throttle.failed("ada", "10.0.0.1")
        self.now += 301
        self.throttle.failed("ada", "10.0.0.1")
        self.assertFalse(self.throttle.locked("ada", "10.0.0.1"))

    def test_success_forgets_the_users_failures(self) -> None:
        """A successful sign-in forgets the user's earlier failures."""
        for _ in range(4):
            self.throttle.failed("ada", f"10.0.0.{_}")
        self.throttle.succeeded("ada")
        self.throttle.failed("ada", "10.0.0.9")
        self.assertFalse(self.throttle.locked("ada", "10.0.0.9"))
