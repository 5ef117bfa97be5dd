"""The distribution installs as a real (non-editable) package.

A copy of the repository (without ``.git``, ``.venv`` and build debris) is
installed with ``pip install --no-deps --no-build-isolation --target`` into a
temporary directory; then, from that installed copy alone (``PYTHONPATH`` is
the target directory, the working directory is elsewhere), ``import gateway``
must work, the ``dicom-gateway`` console script must be declared and
installed, and ``dicom-gateway --help`` must exit 0.

No network is needed: the build backend (setuptools, wheel) comes from the
virtualenv running the tests, and dependencies are not installed (the venv
already has them).
"""

from __future__ import annotations

import atexit
import configparser
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from twisted.trial.unittest import SkipTest, TestCase

#: The repository root.
ROOT: Path = Path(__file__).resolve().parents[2]

#: What is never copied into the build tree.
_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "venv", "_trial_temp*", "build", "dist", "*.egg-info",
    "__pycache__", "*.pyc", ".hypothesis", "var",
)


def _have_build_backend() -> str | None:
    """Check that setuptools and wheel are importable without a download.

    :returns: a skip reason, or ``None`` if both are present.
    """
    for name in ("setuptools", "wheel"):
        try:
            __import__(name)
        except ImportError:
            return f"{name} is not installed in this venv (make test installs it)"
    return None


@dataclass(frozen=True)
class _Install:
    """One temporary install of the distribution.

    :param work: the temporary directory (source copy and target).
    :param target: the ``pip --target`` directory.
    :param result: pip's finished process.
    """

    work: Path
    target: Path
    result: subprocess.CompletedProcess[str]


@functools.cache
def _shared_install() -> _Install:
    """Copy the repository and pip-install it into a temporary target, once per process.

    :returns: where it was installed and how pip fared.
    """
    work = Path(tempfile.mkdtemp(prefix="gw-packaging-"))
    atexit.register(shutil.rmtree, work, True)
    source = work / "src"
    shutil.copytree(ROOT, source, ignore=_IGNORE)
    target = work / "site"
    result = subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
            "--no-build-isolation", "--no-index", "--disable-pip-version-check",
            "--target", str(target), str(source),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=240,
        check=False,
    )
    return _Install(work, target, result)


class InstalledPackageTests(TestCase):
    """Installing the distribution gives an importable package and a working CLI."""

    timeout = 300

    def setUp(self) -> None:
        """Install a copy of the repository, once for the whole class (trial has no setUpClass)."""
        reason = _have_build_backend()
        if reason:
            raise SkipTest(reason)
        install = _shared_install()
        self.work, self.target, self.install = install.work, install.target, install.result

    def _env(self) -> dict[str, str]:
        """Build an environment that sees only the installed copy of ``gateway``.

        :returns: the environment.
        """
        env = dict(os.environ)
        env["PYTHONPATH"] = str(self.target)
        env.pop("PYTHONHOME", None)
        return env

    def _command(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run a command from a directory outside the source tree.

        :param argv: the command.
        :returns: the finished process.
        """
        return subprocess.run(
            list(argv),
            cwd=str(self.work),
            env=self._env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=120,
            check=False,
        )

    def test_pip_install_succeeds(self) -> None:
        """A non-editable pip install of the repository finishes without error."""
        self.assertEqual(self.install.returncode, 0, self.install.stdout)
        self.assertTrue((self.target / "gateway" / "__init__.py").is_file())

    def test_setup_cfg_declares_console_script(self) -> None:
        """setup.cfg declares the dicom-gateway console script on gateway.cli:main."""
        parser = configparser.ConfigParser()
        parser.read(ROOT / "setup.cfg")
        scripts = parser.get("options.entry_points", "console_scripts")
        entries = dict(
            (part.strip() for part in line.split("=", 1))
            for line in scripts.strip().splitlines()
        )
        self.assertEqual(entries.get("dicom-gateway"), "gateway.cli:main")

    def test_installed_metadata_declares_console_script(self) -> None:
        """The installed dist-info lists dicom-gateway under console_scripts."""
        self.assertEqual(self.install.returncode, 0, self.install.stdout)
        infos = list(self.target.glob("dicom_gateway-*.dist-info"))
        self.assertEqual(len(infos), 1, infos)
        entry_points = (infos[0] / "entry_points.txt").read_text()
        self.assertIn("[console_scripts]", entry_points)
        self.assertRegex(entry_points, r"dicom-gateway\s*=\s*gateway\.cli:main")

    def test_import_gateway_from_installed_copy(self) -> None:
        """``import gateway`` works from the installed copy, not the source tree."""
        result = self._command(sys.executable, "-c", "import gateway; print(gateway.__file__)")
        self.assertEqual(result.returncode, 0, result.stdout)
        self.assertTrue(
            Path(result.stdout.strip()).resolve().is_relative_to(self.target.resolve()),
            result.stdout,
        )

    def test_installed_package_excludes_tests_and_data_folders(self) -> None:
        """Only gateway is installed: tests/, routes/ and plugins/ never become import names."""
        self.assertEqual(self.install.returncode, 0, self.install.stdout)
        for name in ("tests", "routes", "plugins", "bench"):
            self.assertFalse((self.target / name).exists(), name)

    def test_console_script_help_exits_zero(self) -> None:
        """The installed ``dicom-gateway --help`` prints usage and exits 0."""
        script = self.target / "bin" / "dicom-gateway"
        self.assertTrue(script.is_file(), f"no console script in {self.target / 'bin'}")
        # pip --target writes a script whose shebang is this interpreter.
        result = self._command(sys.executable, str(script), "--help")
        self.assertEqual(result.returncode, 0, result.stdout)
        self.assertIn("usage: dicom-gateway", result.stdout)
        self.assertIn("run", result.stdout)

    def test_installed_copy_renders_the_conformance_statement(self) -> None:
        """The installed copy finds its conformance template (package data) and renders the statement as the tree does."""
        from gateway import conformance

        result = subprocess.run(
            [sys.executable, "-m", "gateway.conformance"],
            cwd=str(self.work),
            env=self._env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue((self.target / "gateway" / "templates" / "conformance-statement.md.in").is_file())
        self.assertEqual(result.stdout, conformance.render())
