"""Run the test suite under trial and print a one-line summary.

``python -m tests.runner [MODULE ...]`` runs ``python -m twisted.trial --jobs=2``
over ``tests`` (or the modules given), streams trial's output unchanged, then
parses trial's closing summary line (``PASSED (successes=N)`` or
``FAILED (failures=F, errors=E, successes=S, skips=K, ...)``) and prints, as
the very last line of output::

    N passed, M failed[, K skipped]

where ``failed`` counts failures, errors and unexpected successes.  The exit
status is non-zero when anything failed, when no test ran, or when trial
crashed without a summary (reported as ``0 passed, 1 failed``).

Every test runs once. A failure fails the run: there is no re-run that could
turn it green, because a test that fails once and passes the next time is a
bug (in the gateway or in the test) to fix at its cause, not a timeout to
widen. A module that cannot be imported is reported by trial as an error and
counts as a failure.

When the environment variable ``CI`` is set to anything but ``""``, ``0`` or
``false`` (CI sets ``CI=true``), a skipped test also fails the run: ``make
test`` installs every tool the suite needs, so a skip there means an install
step is missing, and it must not look green. Outside CI, skips are reported in
the closing line and do not fail the run.

The suite always runs against the source tree: the repository root is put
first on ``PYTHONPATH`` so trial's worker processes (and the gateway
processes the interop tests start) import this checkout, not an installed
copy.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

#: The repository root (the directory holding ``gateway/`` and ``tests/``).
REPO_ROOT: Path = Path(__file__).resolve().parent.parent

#: Trial's closing line, e.g. ``FAILED (failures=1, successes=3)``; a run of
#: zero tests ends with a bare ``PASSED``.
_SUMMARY = re.compile(r"^(PASSED|FAILED)(?:\s*\((?P<counts>[^)]*)\))?\s*$")

#: One ``key=value`` pair inside the summary's parentheses.
_COUNT = re.compile(r"(\w+)=(\d+)")

@dataclass(frozen=True)
class Summary:
    """Counts parsed from trial's summary line.

    :param passed: successful tests (plus expected failures).
    :param failed: failures, errors and unexpected successes.
    :param skipped: skipped tests.
    """

    passed: int
    failed: int
    skipped: int

    def line(self) -> str:
        """Render the one-line summary the CI log ends with.

        :returns: ``"N passed, M failed"`` with ``", K skipped"`` if any.
        """
        text = f"{self.passed} passed, {self.failed} failed"
        if self.skipped:
            text += f", {self.skipped} skipped"
        return text

    @property
    def ok(self) -> bool:
        """Whether the run counts as green: nothing failed and something ran.

        :returns: ``True`` for a green run.
        """
        return self.failed == 0 and self.passed > 0


#: What a crashed or unparseable run reports.
CRASHED: Summary = Summary(passed=0, failed=1, skipped=0)


def parse_summary(output: str) -> Summary | None:
    """Find trial's last summary line in its output and count it.

    :param output: everything trial wrote to stdout and stderr.
    :returns: the parsed counts, or ``None`` if no summary line is present.
    """
    for raw in reversed(output.splitlines()):
        match = _SUMMARY.match(raw.strip())
        if match is None:
            continue
        counts = {key: int(value) for key, value in _COUNT.findall(match["counts"] or "")}
        passed = counts.get("successes", 0) + counts.get("expectedFailures", 0)
        failed = (
            counts.get("failures", 0)
            + counts.get("errors", 0)
            + counts.get("unexpectedSuccesses", 0)
        )
        if match.group(1) == "FAILED" and failed == 0:
            # A FAILED verdict with no counted failure still is a failure.
            failed = 1
        return Summary(passed=passed, failed=failed, skipped=counts.get("skips", 0))
    return None


def trial_command(targets: list[str], jobs: int = 2) -> list[str]:
    """Build the trial command line.

    :param targets: test modules or packages; ``["tests"]`` when empty.
    :param jobs: trial worker processes.
    :returns: the argv to execute.
    """
    return [
        sys.executable,
        "-m",
        "twisted.trial",
        f"--jobs={jobs}",
        *(targets or ["tests"]),
    ]


def in_ci(environ: dict[str, str] | os._Environ[str] | None = None) -> bool:
    """Whether this run is a CI run (``CI`` set and not ``""``, ``0`` or ``false``).

    :param environ: the environment to read (defaults to ``os.environ``).
    :returns: ``True`` in CI.
    """
    value = (os.environ if environ is None else environ).get("CI", "")
    return value.strip().lower() not in ("", "0", "false", "no")


def verdict(summary: Summary, ci: bool) -> Summary:
    """The summary that counts: in CI every skipped test is also a failure.

    :param summary: what trial reported.
    :param ci: whether this is a CI run (:func:`in_ci`).
    :returns: ``summary`` itself outside CI; in CI, with skips added to the failures.
    """
    if not ci or summary.skipped == 0:
        return summary
    return Summary(passed=summary.passed, failed=summary.failed + summary.skipped, skipped=summary.skipped)


def run(targets: list[str], ci: bool | None = None) -> Summary:
    """Run the tests once (see the module docstring) and judge the result.

    :param targets: test modules or packages to run.
    :param ci: treat skips as failures; defaults to :func:`in_ci`.
    :returns: the summary that counts.
    """
    summary, _ = run_trial(targets)
    judged = verdict(summary, in_ci() if ci is None else ci)
    if judged is not summary:
        print(f"runner: CI is set, so the {summary.skipped} skipped test(s) count as failures "
              "(make test installs every tool; a skip means an install step is missing)", flush=True)
    return judged


def run_trial(targets: list[str], jobs: int = 2) -> tuple[Summary, str]:
    """Run trial, stream its output to our stdout, and parse the result.

    :param targets: test modules or packages to run.
    :param jobs: trial worker processes.
    :returns: the parsed summary (:data:`CRASHED` when none was found) and the output.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])]
    )
    env.setdefault("PYTHONUNBUFFERED", "1")
    # One folder of port reservations for the whole run (tests.support.ports.free_port), so
    # trial's two workers never hand the same listening port to two tests.
    ports = tempfile.mkdtemp(prefix="gateway-test-ports-")
    env["GATEWAY_TEST_PORT_DIR"] = ports
    captured: list[str] = []
    try:
        proc = subprocess.Popen(
            trial_command(targets, jobs),
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
    except OSError as exc:
        shutil.rmtree(ports, ignore_errors=True)
        print(f"runner: could not start trial: {exc}", flush=True)
        return CRASHED, ""
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        captured.append(line)
    returncode = proc.wait()
    shutil.rmtree(ports, ignore_errors=True)
    output = "".join(captured)
    summary = parse_summary(output)
    if summary is None:
        print(f"runner: trial exited {returncode} without a summary", flush=True)
        return CRASHED, output
    if returncode != 0 and summary.failed == 0:
        # Trial said PASSED but exited non-zero: do not report green.
        return Summary(passed=summary.passed, failed=1, skipped=summary.skipped), output
    return summary, output


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m tests.runner``.

    :param argv: modules to test (defaults to ``sys.argv[1:]``).
    :returns: the process exit status (0 only for a green run).
    """
    summary = run(list(sys.argv[1:] if argv is None else argv))
    print(summary.line(), flush=True)
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
