"""The arrows between the gateway's parts (issue 12, item 6): an AST walk of ``gateway/``.

The README's architecture section names four rules; each is checked here
(or, for two of them, by the test that already held it):

- **The protocol core imports no I/O**: ``gateway/ul`` and ``gateway/dimse``
  (:class:`tests.unit.test_rules.SansIOImportTests`; here only a check that
  it still covers both packages).
- **Rules import no config and no network**: the rule modules of
  :mod:`tests.unit.test_rule_imports` (matching, values, morph actions, VR
  facts, the splice writer, routing, de-identification, UID remapping; that
  test holds their direct imports of config and YAML, and their cycles)
  reach, here through every ``gateway`` module they import, neither
  ``gateway.config`` nor YAML nor the network (``twisted.internet``,
  ``socket``, ``ssl``, ``gateway.associate``, ``gateway.send``). Config
  compiles rules; rules never read config.
- **The queue imports no network**: ``gateway/queue/``
  (:mod:`tests.unit.queue.test_arrows`, which walks with
  :func:`arrow_violations`; here only a check that its banned list still
  names the network).
- **Config is data**: ``gateway/config/`` reaches nothing of
  ``twisted.internet``, the network, the stores or the services
  (``gateway.service``, ``gateway.forward``, ``gateway.listen``,
  ``gateway.queue.sqlite``, ``gateway.queue.memory``).

Every import counts, at module level or inside a function (a lazy import
is still an arrow), and the walk follows each ``gateway`` module imported,
so a forbidden arrow reached through a helper is reported with its chain.
Each checker is tested on snippets first, so a rule can fail, then run over
the real tree.
"""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.unit.test_rule_imports import BANNED_IN_RULES as CONFIG_AND_YAML, RULE_MODULES
from tests.unit.test_rules import ROOT, SANS_IO_DIRS, parse, python_files

#: The network, as the rules, the queue and config must not reach it.
NETWORK: tuple[str, ...] = ("twisted.internet", "socket", "ssl", "gateway.associate", "gateway.send")

#: What rules must not reach: config and YAML (the direct-import rule of
#: :mod:`tests.unit.test_rule_imports`), and the network.
BANNED_IN_RULES: tuple[str, ...] = CONFIG_AND_YAML + NETWORK

#: What config must not reach: the network, the stores and the services.
BANNED_IN_CONFIG: tuple[str, ...] = NETWORK + (
    "gateway.queue.sqlite",
    "gateway.queue.memory",
    "gateway.service",
    "gateway.forward",
    "gateway.listen",
)


def banned(module: str, names: tuple[str, ...]) -> bool:
    """Whether ``module`` is one of ``names`` or inside one of them.

    :param module: a dotted module name.
    :param names: dotted names of the forbidden modules and packages.
    :returns: ``True`` when ``module`` equals one or starts with one and a dot.
    """
    return any(module == name or module.startswith(name + ".") for name in names)


def imports_of(tree: ast.AST) -> list[tuple[int, list[str]]]:
    """Every absolute module each import statement names, anywhere in the tree.

    ``from a import b`` names ``a`` and ``a.b`` (``b`` may be a submodule).
    Relative imports are not used in ``gateway/`` and are not reported.

    :param tree: an AST.
    :returns: (line, dotted names) per statement.
    """
    found: list[tuple[int, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.append((node.lineno, [alias.name for alias in node.names]))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]))
    return found


def source_of(module: str, root: Path) -> Path | None:
    """The file of a ``gateway`` module under ``root``, if it is one.

    :param module: a dotted module name.
    :param root: the directory holding the ``gateway`` package.
    :returns: the module's ``.py`` file or package ``__init__.py``, else ``None``.
    """
    if module != "gateway" and not module.startswith("gateway."):
        return None
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def arrow_violations(files: list[Path], root: Path, forbidden: tuple[str, ...]) -> list[str]:
    """Follow the imports of ``files`` through ``gateway`` modules; report each forbidden one reached.

    :param files: the modules of one part.
    :param root: the directory holding the ``gateway`` package.
    :param forbidden: dotted names the part must not reach (a package bans its submodules).
    :returns: one message per violation, naming the chain that reaches it.
    """
    found: set[str] = set()
    seen: set[Path] = set()
    todo: list[tuple[Path, str]] = [(f, str(f.relative_to(root))) for f in files]
    while todo:
        path, chain = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for line, modules in imports_of(parse(path)):
            hits = [m for m in modules if banned(m, forbidden)]
            if hits:
                found.add(f"{chain}:{line}: imports {hits[0]}")
                continue
            for module in modules:
                source = source_of(module, root)
                if source is not None and source not in seen:
                    todo.append((source, f"{chain}:{line} -> {module}"))
    return sorted(found)


def rule_violations(root: Path) -> list[str]:
    """The forbidden arrows out of the rule modules under ``root``.

    :param root: the directory holding the ``gateway`` package.
    :returns: one message per violation.
    """
    paths = [root / (module.replace(".", "/") + ".py") for module in RULE_MODULES]
    files = [path for path in paths if path.is_file()]
    return arrow_violations(files, root, BANNED_IN_RULES)


def config_violations(root: Path) -> list[str]:
    """The forbidden arrows out of ``gateway/config/`` under ``root``.

    :param root: the directory holding the ``gateway`` package.
    :returns: one message per violation.
    """
    return arrow_violations(sorted((root / "gateway" / "config").rglob("*.py")), root, BANNED_IN_CONFIG)


class ArrowTestCase(SynchronousTestCase):
    """Writes throw-away trees of modules for the checkers."""

    def write(self, files: dict[str, str]) -> Path:
        """A throw-away tree of modules.

        :param files: relative path -> source text.
        :returns: the tree's root.
        """
        root = Path(self.mktemp())
        for name, text in files.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        return root


class RuleArrowTests(ArrowTestCase):
    """Rules import no config and no network."""

    def test_checker_finds_config_in_a_rule(self) -> None:
        """A rule module importing gateway.config.schema is reported."""
        root = self.write({"gateway/route.py": "from gateway.config.schema import Route\n"})
        self.assertEqual(rule_violations(root), ["gateway/route.py:1: imports gateway.config.schema"])

    def test_checker_finds_yaml_inside_a_function(self) -> None:
        """``import yaml`` inside a function of a rule module is still an arrow."""
        root = self.write({"gateway/match.py": "def compile(text):\n    import yaml\n    return yaml\n"})
        self.assertEqual(rule_violations(root), ["gateway/match.py:2: imports yaml"])

    def test_checker_finds_the_network_through_a_helper(self) -> None:
        """A rule reaching twisted.internet through another gateway module is reported with the chain."""
        root = self.write({"gateway/morph.py": "from gateway import helper\n",
                           "gateway/helper.py": "from twisted.internet import defer\n"})
        self.assertEqual(rule_violations(root), ["gateway/morph.py:1 -> gateway.helper:1: imports twisted.internet"])

    def test_checker_finds_the_senders(self) -> None:
        """``from gateway.send.dicom import X`` in a rule module is reported."""
        root = self.write({"gateway/splice.py": "from gateway.send.dicom import DicomSender\n"})
        self.assertEqual(rule_violations(root), ["gateway/splice.py:1: imports gateway.send.dicom"])

    def test_checker_accepts_pure_rules(self) -> None:
        """Rules importing the standard library, pydicom and each other are fine."""
        root = self.write({"gateway/morph.py": "import re\nfrom pydicom import Dataset\nfrom gateway.vr import check_value\n",
                           "gateway/vr.py": "from dataclasses import dataclass\n"})
        self.assertEqual(rule_violations(root), [])

    def test_rules_import_no_config_and_no_network(self) -> None:
        """No rule module reaches gateway.config, yaml or the network, even lazily or through a helper."""
        self.assertEqual(rule_violations(ROOT), [])


class ConfigArrowTests(ArrowTestCase):
    """Config is data: it reaches nothing of the network, the stores or the services."""

    def test_checker_finds_the_store(self) -> None:
        """A config module importing the SQLite store is reported."""
        root = self.write({"gateway/config/load.py": "from gateway.queue.sqlite import SqliteQueueStore\n"})
        self.assertEqual(config_violations(root), ["gateway/config/load.py:1: imports gateway.queue.sqlite"])

    def test_checker_finds_a_service_imported_lazily(self) -> None:
        """``from gateway import forward`` inside a function of config is reported."""
        root = self.write({"gateway/config/routes.py": "def check():\n    from gateway import forward\n"})
        self.assertEqual(config_violations(root), ["gateway/config/routes.py:2: imports gateway.forward"])

    def test_checker_finds_the_reactor_through_a_helper(self) -> None:
        """Config reaching twisted.internet through a gateway module is reported with the chain."""
        root = self.write({"gateway/config/load.py": "import gateway.helper\n",
                           "gateway/helper.py": "from twisted.internet.task import LoopingCall\n"})
        self.assertEqual(config_violations(root),
                         ["gateway/config/load.py:1 -> gateway.helper:1: imports twisted.internet.task"])

    def test_checker_accepts_rules_and_schema(self) -> None:
        """Config may import the rule modules it compiles into and its own schema."""
        root = self.write({"gateway/config/match.py": "import yaml\nfrom gateway.match import Predicate\n",
                           "gateway/match.py": "import re\n"})
        self.assertEqual(config_violations(root), [])

    def test_config_is_data(self) -> None:
        """No module under gateway/config/ reaches twisted.internet, the network, the stores or the services."""
        self.assertTrue(list((ROOT / "gateway" / "config").rglob("*.py")))
        self.assertEqual(config_violations(ROOT), [])


class OtherArrowTests(SynchronousTestCase):
    """The two rules held elsewhere still cover what the README says."""

    def test_protocol_core_rule_covers_ul_and_dimse(self) -> None:
        """tests.unit.test_rules' sans-IO walk covers gateway/ul and gateway/dimse."""
        self.assertEqual(set(SANS_IO_DIRS), {"gateway/ul", "gateway/dimse"})
        self.assertTrue(python_files(*SANS_IO_DIRS))

    def test_queue_rule_bans_the_network(self) -> None:
        """tests.unit.queue.test_arrows bans every network module the other rules ban."""
        from tests.unit.queue.test_arrows import BANNED_IN_QUEUE

        self.assertEqual(set(NETWORK) - set(BANNED_IN_QUEUE), set())
