"""The queue imports nothing of the network (issue 12): an AST walk of ``gateway/queue/``.

The queue is storage and policy: what an outcome means for the journal.
What a destination's answer means (C-STORE statuses, connection errors) is
the senders' (:mod:`gateway.send.classify`). So no module under
``gateway/queue/`` may import ``twisted.internet``, ``socket``, ``ssl`` or
``gateway.associate``, directly or through another ``gateway`` module it
imports (followed transitively, imports inside functions included).

The checker is tested on snippets first, so the rule itself can fail, then
run over the real tree (the walk of ``tests/unit/test_rules.py``).
"""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.unit.test_rules import ROOT, parse, python_files

#: Modules (and their submodules) the queue must not reach.
BANNED_IN_QUEUE: tuple[str, ...] = ("twisted.internet", "socket", "ssl", "gateway.associate", "gateway.send")


def _banned(module: str) -> bool:
    """Whether ``module`` is one of :data:`BANNED_IN_QUEUE` or inside one."""
    return any(module == b or module.startswith(b + ".") for b in BANNED_IN_QUEUE)


def imports_of(tree: ast.AST) -> list[tuple[int, list[str]]]:
    """Every absolute module each import statement names, anywhere in the tree.

    ``from a import b`` names ``a`` and ``a.b`` (``b`` may be a submodule).

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


def _source_of(module: str, root: Path) -> Path | None:
    """The file of a ``gateway`` module under ``root``, if it is one."""
    if not module.startswith("gateway"):
        return None
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def queue_violations(files: list[Path], root: Path) -> list[str]:
    """Follow the imports of ``files`` through ``gateway`` modules; report each banned one reached.

    :param files: the queue's modules.
    :param root: the directory holding the ``gateway`` package.
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
            banned = [m for m in modules if _banned(m)]
            if banned:
                found.add(f"{chain}:{line}: imports {banned[0]}")
                continue
            for module in modules:
                source = _source_of(module, root)
                if source is not None and source not in seen:
                    todo.append((source, f"{chain}:{line} -> {module}"))
    return sorted(found)


class QueueArrowTests(SynchronousTestCase):
    """``gateway/queue/`` imports nothing of the network."""

    def write(self, files: dict[str, str]) -> Path:
        """A throw-away tree of modules."""
        root = Path(self.mktemp())
        for name, text in files.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        return root

    def test_checker_finds_a_direct_network_import(self) -> None:
        """``from twisted.internet import error`` in a queue module is reported."""
        root = self.write({"gateway/__init__.py": "", "gateway/queue/__init__.py": "",
                           "gateway/queue/policy.py": "from twisted.internet import error\n"})
        found = queue_violations([root / "gateway/queue/policy.py"], root)
        self.assertEqual(found, ["gateway/queue/policy.py:1: imports twisted.internet"])

    def test_checker_finds_associate_inside_a_function(self) -> None:
        """An import of gateway.associate inside a function is still an arrow."""
        root = self.write({"gateway/queue/policy.py": "def f():\n    from gateway.associate import X\n"})
        found = queue_violations([root / "gateway/queue/policy.py"], root)
        self.assertEqual(found, ["gateway/queue/policy.py:2: imports gateway.associate"])

    def test_checker_follows_gateway_modules(self) -> None:
        """A queue module importing a gateway module that imports socket is reported with the chain."""
        root = self.write({"gateway/queue/store.py": "from gateway import helper\n",
                           "gateway/helper.py": "import socket\n"})
        found = queue_violations([root / "gateway/queue/store.py"], root)
        self.assertEqual(found, ["gateway/queue/store.py:1 -> gateway.helper:1: imports socket"])

    def test_checker_accepts_pure_modules(self) -> None:
        """Imports of the standard library and of pure gateway modules are fine."""
        root = self.write({"gateway/queue/store.py": "import json\nfrom gateway.queue.outcome import Retry\n",
                           "gateway/queue/outcome.py": "from dataclasses import dataclass\n"})
        self.assertEqual(queue_violations([root / "gateway/queue/store.py"], root), [])

    def test_queue_imports_no_network(self) -> None:
        """No module under gateway/queue/ reaches twisted.internet, socket, ssl, gateway.associate or the senders."""
        files = python_files("gateway/queue")
        self.assertTrue(files)
        self.assertEqual(queue_violations(files, ROOT), [])
