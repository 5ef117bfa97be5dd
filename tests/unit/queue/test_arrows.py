"""The queue imports nothing of the network (issue 12): an AST walk of ``gateway/queue/``.

The queue is storage and policy: what an outcome means for the journal.
What a destination's answer means (C-STORE statuses, connection errors) is
the senders' (:mod:`gateway.send.classify`). So no module under
``gateway/queue/`` may import ``twisted.internet``, ``socket``, ``ssl`` or
``gateway.associate``, directly or through another ``gateway`` module it
imports (followed transitively, imports inside functions included).

The checker is tested on snippets first, so the rule itself can fail, then
run over the real tree (the walk of ``tests/unit/test_arrows.py``).
"""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.unit.test_arrows import arrow_violations
from tests.unit.test_rules import ROOT, python_files

#: Modules (and their submodules) the queue must not reach.
BANNED_IN_QUEUE: tuple[str, ...] = ("twisted.internet", "socket", "ssl", "gateway.associate", "gateway.send")


def queue_violations(files: list[Path], root: Path) -> list[str]:
    """Follow the imports of ``files`` through ``gateway`` modules; report each banned one reached.

    The walk is :func:`tests.unit.test_arrows.arrow_violations`, shared with
    the other arrows of issue 12.

    :param files: the queue's modules.
    :param root: the directory holding the ``gateway`` package.
    :returns: one message per violation, naming the chain that reaches it.
    """
    return arrow_violations(files, root, BANNED_IN_QUEUE)


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
