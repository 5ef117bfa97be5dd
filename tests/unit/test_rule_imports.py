"""Architecture rule for the routing rules (issue 12): rules compile in config, run in the rule modules.

The modules that evaluate routes and morph instances (the *rule* modules:
:data:`RULE_MODULES`) import nothing from ``gateway.config`` and no YAML,
anywhere in the file (a lazy import inside a function counts too): the YAML
compilers live in ``gateway/config/match.py`` and ``gateway/config/morph.py``
and hand the rules compiled objects. And the rule modules import one another
without a cycle (``morph`` and ``deidentify`` used to need each other, broken
by a lazy import), so every one of them can be imported on its own.

As in ``test_rules``, the checker is tested against small snippets first (so
the rule itself can fail) and then run over the real tree.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping

from twisted.trial.unittest import SynchronousTestCase

from tests.unit.test_rules import ROOT

#: The rule modules, by dotted name (the parts ``morph.py`` was split into included).
RULE_MODULES: tuple[str, ...] = (
    "gateway.match",
    "gateway.values",
    "gateway.morph",
    "gateway.vr",
    "gateway.splice",
    "gateway.route",
    "gateway.deidentify",
    "gateway.uidremap",
)

#: What the rule modules must not import (a module or anything under it).
BANNED_IN_RULES: tuple[str, ...] = ("gateway.config", "yaml")


def imported_names(source: str) -> Iterator[tuple[int, str]]:
    """Yield every module an import statement anywhere in ``source`` brings in.

    ``from a.b import c`` yields both ``a.b`` and ``a.b.c`` (``c`` may be a
    submodule, as in ``from gateway import config``); relative imports are
    resolved against nothing and yielded with their leading dots, so they
    never look like ``gateway.config``.

    :param source: module source text.
    :returns: (line, dotted name) pairs.
    """
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}" if node.module else base + alias.name


def _is_under(name: str, package: str) -> bool:
    """Whether dotted ``name`` is ``package`` or inside it."""
    return name == package or name.startswith(package + ".")


def rule_import_violations(source: str, name: str = "<string>") -> list[str]:
    """Find imports of ``gateway.config`` or ``yaml`` in a rule module (one message per statement).

    :param source: module source text.
    :param name: a name for messages.
    :returns: one message per violation.
    """
    found: list[str] = []
    reported: set[int] = set()
    for line, module in imported_names(source):
        if line not in reported and any(_is_under(module, banned) for banned in BANNED_IN_RULES):
            reported.add(line)
            found.append(f"{name}:{line}: imports {module}")
    return found


def import_graph(sources: Mapping[str, str]) -> dict[str, set[str]]:
    """The imports among some modules, lazy ones included.

    :param sources: ``{dotted name: source text}``.
    :returns: ``{module: the modules of ``sources`` it imports}``.
    """
    graph: dict[str, set[str]] = {}
    for module, source in sources.items():
        graph[module] = {
            other
            for _line, imported in imported_names(source)
            for other in sources
            if other != module and imported == other
        }
    return graph


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Find import cycles (one path per cycle found by a depth-first walk).

    :param graph: ``{module: modules it imports}``.
    :returns: each cycle as ``[a, b, ..., a]``; empty when there is none.
    """
    found: list[list[str]] = []
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            found.append(path[path.index(module):] + [module])
            return
        if module in done:
            return
        for other in sorted(graph.get(module, ())):
            visit(other, path + [module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    return found


def _rule_sources() -> dict[str, str]:
    """The rule modules' source text, by dotted name."""
    return {
        module: (ROOT / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8")
        for module in RULE_MODULES
    }


class RuleImportTests(SynchronousTestCase):
    """The rule modules import no configuration, no YAML, and not each other in a circle."""

    def test_checker_flags_config_and_yaml(self) -> None:
        """Every spelling of an import of the configuration or of YAML is reported, lazy ones too."""
        source = (
            "import yaml\n"
            "from yaml.constructor import SafeConstructor\n"
            "from gateway.config.schema import RouteConfig\n"
            "from gateway import config\n"
            "import gateway.config.load as load\n"
            "def f():\n"
            "    from gateway.config.durations import parse_duration\n"
        )
        found = rule_import_violations(source, "m")
        self.assertEqual([int(v.split(":")[1]) for v in found], [1, 2, 3, 4, 5, 7])

    def test_checker_accepts_neighbours(self) -> None:
        """Modules whose names only begin like the banned ones, and the other gateway modules, are fine."""
        source = (
            "import yamlish\n"
            "from gateway.configure import x\n"
            "from gateway.tags import parse_path\n"
            "from gateway import morph\n"
            "from . import config\n"
        )
        self.assertEqual(rule_import_violations(source, "m"), [])

    def test_cycle_finder(self) -> None:
        """A cycle through a lazy import is found; a tree of imports has none."""
        sources = {
            "a": "import b\n",
            "b": "def f():\n    from a import thing\n",
            "c": "import b\n",
        }
        self.assertEqual(cycles(import_graph(sources)), [["a", "b", "a"]])
        self.assertEqual(cycles(import_graph({"a": "import b\n", "b": "", "c": "import a, b\n"})), [])

    def test_rule_modules_exist(self) -> None:
        """Each listed rule module is a file (a rename must update the list, not empty the rule)."""
        for module in RULE_MODULES:
            self.assertTrue((ROOT / (module.replace(".", "/") + ".py")).is_file(), module)

    def test_rule_modules_import_no_config_and_no_yaml(self) -> None:
        """gateway/match.py, morph.py (and vr.py, splice.py), route.py, deidentify.py, uidremap.py, values.py."""
        found: list[str] = []
        for module, source in _rule_sources().items():
            found.extend(rule_import_violations(source, module))
        self.assertEqual(found, [])

    def test_rule_modules_import_each_other_without_a_cycle(self) -> None:
        """morph and deidentify no longer need each other (no lazy import to break a cycle)."""
        self.assertEqual(cycles(import_graph(_rule_sources())), [])
