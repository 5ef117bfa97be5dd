"""The test runner's summary parsing, its CI verdict, and a real trial run."""

from __future__ import annotations

import os

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

    def test_a_failure_is_never_rerun(self) -> None:
        """An interop failure stands: trial runs once and the run is red (no re-run turns it green)."""
        output = FAILED_OUTPUT.replace("tests.unit.test_x.XTests.test_y\n", "")
        calls: list[list[str]] = []

        def fake_run_trial(targets: list[str], jobs: int = 2) -> tuple[runner.Summary, str]:
            calls.append(targets)
            return runner.Summary(passed=10, failed=1, skipped=0), output

        self.patch(runner, "run_trial", fake_run_trial)
        summary = runner.run(["tests"], ci=False)
        self.assertEqual((summary.passed, summary.failed), (10, 1))
        self.assertFalse(summary.ok)
        self.assertEqual(calls, [["tests"]])

    def test_skips_fail_the_run_in_ci(self) -> None:
        """Under CI, 2 skipped tests count as 2 failures; outside CI they are only reported."""

        def fake_run_trial(targets: list[str], jobs: int = 2) -> tuple[runner.Summary, str]:
            return runner.Summary(passed=10, failed=0, skipped=2), ""

        self.patch(runner, "run_trial", fake_run_trial)
        in_ci = runner.run(["tests"], ci=True)
        self.assertEqual((in_ci.passed, in_ci.failed, in_ci.skipped), (10, 2, 2))
        self.assertFalse(in_ci.ok)
        outside = runner.run(["tests"], ci=False)
        self.assertEqual((outside.passed, outside.failed), (10, 0))
        self.assertTrue(outside.ok)

    def test_ci_variable_spellings(self) -> None:
        """CI=true and CI=1 are CI runs; unset, empty, 0 and false are not."""
        self.assertTrue(runner.in_ci({"CI": "true"}))
        self.assertTrue(runner.in_ci({"CI": "1"}))
        self.assertFalse(runner.in_ci({}))
        self.assertFalse(runner.in_ci({"CI": ""}))
        self.assertFalse(runner.in_ci({"CI": "0"}))
        self.assertFalse(runner.in_ci({"CI": "false"}))


class RealTrialTests(SynchronousTestCase):
    """The runner against a real trial process on a throw-away package of tests."""

    def write_package(self, files: dict[str, str]) -> tuple[str, str]:
        """Write a package of test modules into a temporary folder.

        :param files: module name -> source.
        :returns: the folder to put on ``PYTHONPATH`` and the package name.
        """
        root = os.path.abspath(self.mktemp())
        package = os.path.join(root, "runnerprobe")
        os.makedirs(package)
        with open(os.path.join(package, "__init__.py"), "w") as fp:
            fp.write("")
        for name, source in files.items():
            with open(os.path.join(package, f"{name}.py"), "w") as fp:
                fp.write(source)
        return root, "runnerprobe"

    def test_a_module_that_fails_to_import_is_counted_as_a_failure(self) -> None:
        """A broken import beside a passing test makes trial's summary, and so the run, fail."""
        root, package = self.write_package({
            "test_good": "from twisted.trial.unittest import SynchronousTestCase\n"
                         "class GoodTests(SynchronousTestCase):\n"
                         "    def test_ok(self):\n        pass\n",
            "test_broken": "import module_that_does_not_exist_anywhere\n",
        })
        self.patch(os, "environ", {**os.environ, "PYTHONPATH": root})
        summary, output = runner.run_trial([package], jobs=1)
        self.assertIn("module_that_does_not_exist_anywhere", output)
        self.assertEqual(summary.passed, 1)
        self.assertGreaterEqual(summary.failed, 1)
        self.assertFalse(summary.ok)
