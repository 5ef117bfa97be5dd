"""The test runner's summary parsing and its choice of what to re-run."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests import runner

FAILED_OUTPUT = """\
tests.interop.test_echo
  EchoTests
    test_accept ...                                                        [FAIL]
tests.unit.queue.test_policy
  PolicyTests
    test_backoff ...                                                         [OK]
tests.interop.test_echo
  EchoTests
    test_accept ...                                                        [FAIL]
===============================================================================
[FAIL]
Traceback (most recent call last):
  File "x.py", line 1, in test_accept
twisted.trial.unittest.FailTest: 1 != 0

tests.interop.test_echo.EchoTests.test_accept
===============================================================================
[ERROR]
Traceback (most recent call last):
builtins.OSError: boom

tests.interop.test_echo.EchoTests.test_accept
tests.unit.test_x.XTests.test_y
-------------------------------------------------------------------------------
Ran 3 tests in 0.1s

FAILED (failures=1, errors=1, successes=1)
"""


class RunnerTests(SynchronousTestCase):
    """Parsing trial's output."""

    def test_summary_counts_failures_and_errors(self) -> None:
        """FAILED (failures=1, errors=1, successes=1) is 1 passed, 2 failed."""
        summary = runner.parse_summary(FAILED_OUTPUT)
        self.assertEqual((summary.passed, summary.failed, summary.skipped), (1, 2, 0))
        self.assertEqual(summary.line(), "1 passed, 2 failed")

    def test_failed_ids_are_listed_once_in_order(self) -> None:
        """Each failed test id appears once, in the order trial reported it; module names in the result tree are not ids."""
        self.assertEqual(
            runner.failed_tests(FAILED_OUTPUT),
            ["tests.interop.test_echo.EchoTests.test_accept", "tests.unit.test_x.XTests.test_y"],
        )

    def test_a_unit_failure_is_never_rerun(self) -> None:
        """With a unit test among the failures, the first summary stands (no re-run is attempted)."""
        calls: list[list[str]] = []

        def fake_run_trial(targets: list[str], jobs: int = 2) -> tuple[runner.Summary, str]:
            calls.append(targets)
            return runner.parse_summary(FAILED_OUTPUT), FAILED_OUTPUT  # type: ignore[return-value]

        self.patch(runner, "run_trial", fake_run_trial)
        summary = runner.run(["tests"])
        self.assertEqual(summary.failed, 2)
        self.assertEqual(calls, [["tests"]])

    def test_a_flaky_interop_failure_passes_on_rerun_and_is_named(self) -> None:
        """One interop failure that passes alone makes the run green, with the re-run's pass counted."""
        output = FAILED_OUTPUT.replace("tests.unit.test_x.XTests.test_y\n", "")
        calls: list[tuple[list[str], int]] = []

        def fake_run_trial(targets: list[str], jobs: int = 2) -> tuple[runner.Summary, str]:
            calls.append((targets, jobs))
            if len(calls) == 1:
                return runner.Summary(passed=10, failed=1, skipped=0), output
            return runner.Summary(passed=1, failed=0, skipped=0), "PASSED (successes=1)\n"

        self.patch(runner, "run_trial", fake_run_trial)
        summary = runner.run(["tests"])
        self.assertEqual((summary.passed, summary.failed), (11, 0))
        self.assertEqual(calls[1], (["tests.interop.test_echo.EchoTests.test_accept"], 1))

    def test_an_interop_failure_that_fails_again_stays_failed(self) -> None:
        """A re-run that fails again leaves the original failure count."""
        output = FAILED_OUTPUT.replace("tests.unit.test_x.XTests.test_y\n", "")

        def fake_run_trial(targets: list[str], jobs: int = 2) -> tuple[runner.Summary, str]:
            return runner.Summary(passed=0 if jobs == 1 else 10, failed=1, skipped=0), output

        self.patch(runner, "run_trial", fake_run_trial)
        self.assertEqual(runner.run(["tests"]).failed, 1)
