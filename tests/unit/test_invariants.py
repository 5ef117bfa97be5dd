"""The forwarding-invariant check itself cannot degrade to a check that cannot fail (issue 11)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.trial.unittest import FailTest, SynchronousTestCase

from tests.support.invariants import check_forward_invariants


class _Gateway:
    """Just enough of a GatewayProcess for the check's preconditions."""

    def __init__(self, returncode: int | None, config: dict[str, Any], log: str = "") -> None:
        self.returncode = returncode
        self.config = config
        self.spool = Path("/nonexistent-spool")
        self._log = log

    def log_text(self) -> str:
        """The process log."""
        return self._log


class PreconditionTests(SynchronousTestCase):
    """The check refuses to run on figures it cannot cross-check."""

    def test_an_exited_gateway_fails_the_check(self) -> None:
        """Without restarted=True, a gateway that has exited fails instead of switching to journal-only counting."""
        gateway = _Gateway(returncode=-9, config={"http": {"port": 9102}})
        with self.assertRaises(FailTest) as caught:
            check_forward_invariants(self, gateway, destinations={})  # type: ignore[arg-type]
        self.assertIn("exited", str(caught.exception))

    def test_an_unknown_http_port_fails_the_check(self) -> None:
        """A running gateway whose HTTP port is unknown (http disabled, or no bound line yet) fails the check."""
        gateway = _Gateway(returncode=None, config={"http": {"enabled": False}})
        with self.assertRaises(FailTest) as caught:
            check_forward_invariants(self, gateway, destinations={})  # type: ignore[arg-type]
        self.assertIn("HTTP port is unknown", str(caught.exception))

    def test_journal_only_mode_needs_the_tests_own_count(self) -> None:
        """restarted=True without an accepted count fails: the journal cannot vouch for its own totals."""
        gateway = _Gateway(returncode=None, config={})
        with self.assertRaises(FailTest) as caught:
            check_forward_invariants(self, gateway, destinations={}, restarted=True)  # type: ignore[arg-type]
        self.assertIn("accepted count", str(caught.exception))
