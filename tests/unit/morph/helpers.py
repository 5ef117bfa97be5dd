"""Shared helpers for the morph tests: compile YAML, a recording error sink, a context."""

from __future__ import annotations

from typing import Any

import yaml

from gateway.config.morph import compile_morph
from gateway.morph import MorphPlan
from gateway.route import RoutingContext

CONTEXT = RoutingContext("CT01", "GATEWAY", "10.0.0.5", "main", 11112)


class Sink:
    """Records configuration errors as ``(line, key_path, message)``."""

    def __init__(self) -> None:
        self.errors: list[tuple[int | None, str, str]] = []

    def error(self, node: yaml.Node | None, key_path: str, message: str) -> None:
        """Record one error."""
        self.errors.append((None if node is None else node.start_mark.line + 1, key_path, message))


def compile_text(text: str, base_dir: str = "", plugins: Any = None) -> tuple[MorphPlan | None, Sink]:
    """Compile a YAML ``morph:`` list written as text."""
    sink = Sink()
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    return compile_morph(node, "routes[0].morph", sink, plugins, base_dir=base_dir), sink


def plan_of(text: str) -> MorphPlan:
    """Compile text that must be valid."""
    plan, sink = compile_text(text)
    assert plan is not None, sink.errors
    return plan
