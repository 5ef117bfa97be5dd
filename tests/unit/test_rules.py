"""Architecture rules enforced by walking the source's AST (DESIGN.md 8).

- ``gateway/ul/`` and ``gateway/dimse/`` are sans-IO: no import of twisted,
  socket, threading, time, logging, asyncio, select (and friends), and no
  call to ``open(``.
- No module in ``gateway/`` imports ``twisted.internet.reactor`` at module
  level (scrapy PR #6835): the reactor is always injected.
- No ``time.sleep`` under ``tests/unit/`` or ``tests/adapters/``.
- Every ``test_*`` method of a ``TestCase`` class under ``tests/`` has a
  docstring.
- Every call of pydicom's ``get_testdata_file``/``get_testdata_files`` under
  ``tests/`` and ``bench/`` passes ``download=False``: the suite uses only
  the files pydicom bundles and never reaches for the network.

Each rule has a checker function that returns violations as text, tested
here against small snippets (so the rule itself can fail) and then run over
the real tree.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

#: The repository root.
ROOT: Path = Path(__file__).resolve().parents[2]

#: Top-level modules the sans-IO core must not import (DESIGN.md 1.1).
BANNED_IN_SANS_IO: frozenset[str] = frozenset(
    {
        "twisted",
        "socket",
        "socketserver",
        "ssl",
        "threading",
        "_thread",
        "multiprocessing",
        "concurrent",
        "subprocess",
        "time",
        "logging",
        "asyncio",
        "select",
        "selectors",
        "signal",
        "shutil",
        "tempfile",
        "os",
        "io",
        "pathlib",
    }
)

#: Directories that must stay sans-IO.
SANS_IO_DIRS: tuple[str, ...] = ("gateway/ul", "gateway/dimse")

#: Directories where tests must not sleep.
NO_SLEEP_DIRS: tuple[str, ...] = ("tests/unit", "tests/adapters")


def python_files(*relative_dirs: str) -> list[Path]:
    """List the ``.py`` files under some repository directories.

    :param relative_dirs: directories relative to the repository root.
    :returns: the files, sorted.
    """
    files: list[Path] = []
    for rel in relative_dirs:
        files.extend((ROOT / rel).rglob("*.py"))
    return sorted(files)


def parse(path: Path) -> ast.Module:
    """Parse one source file.

    :param path: the file.
    :returns: its AST.
    """
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imported_modules(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Yield every module an import statement names, anywhere in the tree.

    ``from a.b import c`` yields ``a.b``; relative imports stay inside the
    package and are not reported.

    :param tree: an AST.
    :returns: (line, dotted module name) pairs.
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


def sans_io_violations(source: str, name: str = "<string>") -> list[str]:
    """Find banned imports, dynamic imports and ``open(`` calls in sans-IO code.

    :param source: module source text.
    :param name: a name for messages.
    :returns: one message per violation.
    """
    tree = ast.parse(source, filename=name)
    found: list[str] = []
    for line, module in _imported_modules(tree):
        top = module.split(".")[0]
        if top in BANNED_IN_SANS_IO:
            found.append(f"{name}:{line}: imports {module}")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("open", "__import__"):
            found.append(f"{name}:{node.lineno}: calls {func.id}()")
        elif isinstance(func, ast.Attribute) and func.attr in ("open", "import_module"):
            # io.open, os.open, pathlib's .open(), importlib.import_module
            found.append(f"{name}:{node.lineno}: calls .{func.attr}()")
    return sorted(set(found))


def _is_reactor_import(node: ast.stmt) -> bool:
    """Tell whether one statement imports the global reactor.

    :param node: a statement.
    :returns: ``True`` for ``from twisted.internet import reactor`` and
        ``import twisted.internet.reactor`` (with or without ``as``).
    """
    if isinstance(node, ast.ImportFrom) and node.level == 0:
        if node.module == "twisted.internet" and any(a.name == "reactor" for a in node.names):
            return True
        if node.module == "twisted.internet.reactor":
            return True
    if isinstance(node, ast.Import):
        return any(a.name == "twisted.internet.reactor" for a in node.names)
    return False


def _module_level_statements(body: Iterable[ast.stmt]) -> Iterator[ast.stmt]:
    """Yield statements that run at import time, descending into if/try/with.

    Function and class bodies are skipped except class bodies, which also run
    at import time.

    :param body: a module's (or block's) statements.
    :returns: the statements executed when the module is imported.
    """
    for node in body:
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for field in ("body", "orelse", "finalbody", "handlers"):
            children = getattr(node, field, None)
            if isinstance(children, list):
                stmts = [c for c in children if isinstance(c, ast.stmt)]
                handlers = [c for c in children if isinstance(c, ast.ExceptHandler)]
                yield from _module_level_statements(stmts)
                for handler in handlers:
                    yield from _module_level_statements(handler.body)


def reactor_import_violations(source: str, name: str = "<string>") -> list[str]:
    """Find import-time imports of ``twisted.internet.reactor``.

    Imports inside functions are allowed (the CLI's ``main`` may pick the
    reactor); a module-level one would install the reactor on import.

    :param source: module source text.
    :param name: a name for messages.
    :returns: one message per violation.
    """
    tree = ast.parse(source, filename=name)
    return [
        f"{name}:{node.lineno}: module-level import of twisted.internet.reactor"
        for node in _module_level_statements(tree.body)
        if _is_reactor_import(node)
    ]


def sleep_violations(source: str, name: str = "<string>") -> list[str]:
    """Find ``time.sleep`` calls and ``from time import sleep`` imports.

    :param source: module source text.
    :param name: a name for messages.
    :returns: one message per violation.
    """
    tree = ast.parse(source, filename=name)
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "time":
            if any(a.name == "sleep" for a in node.names):
                found.append(f"{name}:{node.lineno}: imports time.sleep")
        elif isinstance(node, ast.Attribute) and node.attr == "sleep":
            if isinstance(node.value, ast.Name) and node.value.id == "time":
                found.append(f"{name}:{node.lineno}: uses time.sleep")
    return found


#: pydicom's test-data look-ups, which download missing files unless told not to.
TESTDATA_FUNCTIONS: frozenset[str] = frozenset({"get_testdata_file", "get_testdata_files"})


def download_violations(source: str, name: str = "<string>") -> list[str]:
    """Find calls of pydicom's test-data look-ups that may download.

    A call passes only with the keyword ``download=False`` written out: the
    default (``True``) fetches a file pydicom does not bundle from the network.

    :param source: module source text.
    :param name: a name for messages.
    :returns: one message per violation.
    """
    tree = ast.parse(source, filename=name)
    found: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if called not in TESTDATA_FUNCTIONS:
            continue
        ok = any(
            k.arg == "download" and isinstance(k.value, ast.Constant) and k.value.value is False
            for k in node.keywords
        )
        if not ok:
            found.append(f"{name}:{node.lineno}: {called}() without download=False")
    return found


def _looks_like_test_case(cls: ast.ClassDef) -> bool:
    """Guess whether a class is a test case from its bases or name.

    A class counts when a base's name ends in ``TestCase``, ``Tests`` or
    ``Mixin`` (trial mixins), or the class name itself does.

    :param cls: a class definition.
    :returns: ``True`` if its ``test_*`` methods are tests.
    """
    names = [cls.name]
    for base in cls.bases:
        if isinstance(base, ast.Name):
            names.append(base.id)
        elif isinstance(base, ast.Attribute):
            names.append(base.attr)
    return any(n.endswith(("TestCase", "Tests", "Test", "Mixin")) for n in names)


def docstring_violations(source: str, name: str = "<string>") -> list[str]:
    """Find ``test_*`` methods of test-case classes without a docstring.

    :param source: module source text.
    :param name: a name for messages.
    :returns: one message per violation.
    """
    tree = ast.parse(source, filename=name)
    found: list[str] = []
    for cls in ast.walk(tree):
        if not isinstance(cls, ast.ClassDef) or not _looks_like_test_case(cls):
            continue
        for node in cls.body:
            if (
                isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and node.name.startswith("test")
                and not (ast.get_docstring(node) or "").strip()
            ):
                found.append(f"{name}:{node.lineno}: {cls.name}.{node.name} has no docstring")
    return found


def _check_tree(checker: object, files: Iterable[Path]) -> list[str]:
    """Run a checker over files.

    :param checker: one of the ``*_violations`` functions.
    :param files: the files to check.
    :returns: all violations.
    """
    found: list[str] = []
    for path in files:
        rel = str(path.relative_to(ROOT))
        found.extend(checker(path.read_text(encoding="utf-8"), rel))  # type: ignore[operator]
    return found


class SansIOImportTests(SynchronousTestCase):
    """``gateway/ul`` and ``gateway/dimse`` do no I/O and know no clock."""

    def test_checker_flags_banned_imports(self) -> None:
        """Each banned module is reported, whether imported plainly or from a package."""
        source = (
            "import socket\n"
            "import os.path\n"
            "from twisted.internet import defer\n"
            "import logging.handlers\n"
            "from time import monotonic\n"
            "def f():\n"
            "    import threading\n"
        )
        found = sans_io_violations(source)
        self.assertEqual(len(found), 6, found)
        for module in ("socket", "os.path", "twisted.internet", "logging.handlers", "time",
                       "threading"):
            self.assertTrue(any(f"imports {module}" in v for v in found), (module, found))

    def test_checker_flags_open_calls(self) -> None:
        """Calling open(), io.open() or Path.open() counts as doing I/O."""
        source = "open('x')\nio.open('y')\np.open()\nx = opener()\n"
        found = sans_io_violations(source)
        self.assertEqual(len(found), 3, found)

    def test_checker_accepts_pure_code(self) -> None:
        """Dataclasses, enums, struct and typing are fine in the core."""
        source = (
            "from __future__ import annotations\n"
            "import struct\nimport enum\nfrom dataclasses import dataclass\n"
            "from typing import Final\nfrom gateway.ul.errors import LocalProtocolError\n"
            "data = struct.pack('>H', 1)\n"
        )
        self.assertEqual(sans_io_violations(source), [])

    def test_sans_io_packages_exist(self) -> None:
        """The rule below is not vacuous: both packages contain modules."""
        for rel in SANS_IO_DIRS:
            self.assertTrue(python_files(rel), f"{rel} has no Python files")

    def test_sans_io_packages_import_no_io(self) -> None:
        """No module under gateway/ul or gateway/dimse imports I/O, time or logging, or opens files."""
        self.assertEqual(_check_tree(sans_io_violations, python_files(*SANS_IO_DIRS)), [])


class ReactorImportTests(SynchronousTestCase):
    """The global reactor is never imported when a gateway module loads."""

    def test_checker_flags_both_spellings(self) -> None:
        """``from twisted.internet import reactor`` and ``import twisted.internet.reactor`` are flagged."""
        source = (
            "from twisted.internet import reactor\n"
            "import twisted.internet.reactor as r\n"
            "from twisted.internet import defer, reactor as R\n"
        )
        self.assertEqual(len(reactor_import_violations(source)), 3)

    def test_checker_flags_guarded_module_level_imports(self) -> None:
        """An import inside a module-level if/try still runs at import time."""
        source = (
            "try:\n    from twisted.internet import reactor\nexcept ImportError:\n    pass\n"
            "if True:\n    import twisted.internet.reactor\n"
        )
        self.assertEqual(len(reactor_import_violations(source)), 2)

    def test_checker_allows_imports_inside_functions(self) -> None:
        """Importing the reactor inside a function (e.g. a CLI main) is allowed."""
        source = (
            "from twisted.internet import defer, task\n"
            "def main():\n    from twisted.internet import reactor\n    return reactor\n"
        )
        self.assertEqual(reactor_import_violations(source), [])

    def test_gateway_never_imports_reactor_at_module_level(self) -> None:
        """No module in gateway/ imports twisted.internet.reactor at import time."""
        files = python_files("gateway")
        self.assertTrue(files)
        self.assertEqual(_check_tree(reactor_import_violations, files), [])


class NoSleepTests(SynchronousTestCase):
    """Unit and adapter tests use fake clocks, never real sleeps."""

    def test_checker_flags_sleep(self) -> None:
        """Both ``time.sleep(...)`` and ``from time import sleep`` are flagged."""
        source = "import time\ntime.sleep(1)\nfrom time import sleep\n"
        self.assertEqual(len(sleep_violations(source)), 2)

    def test_checker_allows_other_time_functions(self) -> None:
        """``time.monotonic`` and a clock's own ``sleep`` attribute are not flagged."""
        source = "import time\ntime.monotonic()\nclock.sleep(1)\n"
        self.assertEqual(sleep_violations(source), [])

    def test_unit_and_adapter_tests_never_sleep(self) -> None:
        """No file under tests/unit or tests/adapters calls time.sleep."""
        self.assertEqual(_check_tree(sleep_violations, python_files(*NO_SLEEP_DIRS)), [])


class TestDocstringTests(SynchronousTestCase):
    """Every test says its intent in a docstring."""

    def test_checker_flags_missing_docstring(self) -> None:
        """A test method without a docstring, or with a blank one, is reported."""
        source = (
            "class FooTests(SynchronousTestCase):\n"
            "    def test_a(self):\n        pass\n"
            "    def test_b(self):\n        ''' '''\n"
            "    def test_c(self):\n        '''Says why.'''\n"
            "    def helper(self):\n        pass\n"
        )
        found = docstring_violations(source)
        self.assertEqual(len(found), 2, found)
        self.assertIn("FooTests.test_a", found[0])

    def test_checker_ignores_non_test_classes(self) -> None:
        """Methods named test_* on helper classes are not tests."""
        source = "class Builder:\n    def test_thing(self):\n        pass\n"
        self.assertEqual(docstring_violations(source), [])

    def test_every_test_method_has_a_docstring(self) -> None:
        """Every test_* method of every test case under tests/ has a docstring."""
        files = python_files("tests")
        self.assertTrue(files)
        self.assertEqual(_check_tree(docstring_violations, files), [])


class NoDownloadTests(SynchronousTestCase):
    """Test data comes from what pydicom bundles, never from the network."""

    def test_checker_flags_calls_that_may_download(self) -> None:
        """A call without ``download``, or with ``download=True``, is reported; ``download=False`` is not."""
        source = (
            "get_testdata_file('a.dcm')\n"
            "pydicom.data.get_testdata_files('*.dcm', download=True)\n"
            "get_testdata_file('b.dcm', download=False)\n"
        )
        found = download_violations(source)
        self.assertEqual(len(found), 2, found)
        self.assertIn(":1:", found[0])
        self.assertIn(":2:", found[1])

    def test_tests_and_benches_never_download(self) -> None:
        """No file under tests/ or bench/ calls get_testdata_file(s) without download=False."""
        self.assertEqual(_check_tree(download_violations, python_files("tests", "bench")), [])
